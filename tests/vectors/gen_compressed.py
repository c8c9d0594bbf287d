#!/usr/bin/env python3
"""Regenerates the two zlib payloads of oap1.json (spec/INTEROP.md §4.3, ratio bound).

A payload is 600 pseudo-random bytes (Python's random.Random(11)) followed by Z zero bytes,
zlib level 9; Z is the smallest count for which the inflated size is exactly 8 x the
compressed size (at the bound) or 8 x + 1 (one byte over). Any zlib stream with those sizes
would do: the test only inflates it. Prints the JSON fields to paste into oap1.json.
"""
import json
import random
import zlib

RANDOM_LEN, SEED = 600, 11


def stream(zeros):
    rnd = random.Random(SEED)
    data = bytes(rnd.getrandbits(8) for _ in range(RANDOM_LEN)) + bytes(zeros)
    return data, zlib.compress(data, 9)


for name, extra in (("at_bound", 0), ("over_bound", 1)):
    for zeros in range(0, 100_000):
        data, comp = stream(zeros)
        if len(data) == 8 * len(comp) + extra:
            print(json.dumps({"name": name, "zeros": zeros, "compressed_len": len(comp),
                              "inflated_len": len(data), "payload_hex": comp.hex()}))
            break
