#!/usr/bin/env python3
"""OAP/1-over-QUIC peer built on aioquic (another QUIC implementation than ours and quinn), for
tests/interop_quic_aioquic.rs.

OAP/1 over QUIC (src/quic/mod.rs): ALPN "oap/1"; the dialer opens a bidirectional stream and
writes the 4-byte preface b"OAP1" first, then u32 big-endian length-prefixed frames.

Modes (every wait is bounded by --timeout; the process always exits by itself):

  server --cert C --key K [--conns N]
      Listens on 127.0.0.1, port 0, and prints `PORT <n>` on stdout. For every bidirectional
      stream: checks the preface (a wrong one: the stream is reset with code 1), then echoes
      each frame back and finishes the stream when the peer finishes its side. Exits 0 after N
      connections have ended, printing
      `DONE conns=<n> streams=<n> refused=<n> frames=<n> bytes=<n> close_codes=<c,...>`.

  client --port P --ca CA [--host H] [--server-name S] [--alpn A] [--sizes 0,1,1024]
         [--expect-close] [--no-preface | --expect-handshake-failure]
      Connects, opens one stream, writes the preface and one frame per size (the payload of
      size n and index i is bytes((k * 31 + i) & 0xff for k in range(n))), reads each echo back
      and compares it byte for byte, finishes the stream, expects the peer to finish too.
      With --expect-close, waits for the peer to close the connection (our listener does when
      the connection's last stream ended). Prints `OK frames=<n> bytes=<n> close_code=<c>`
      (None without --expect-close) and exits 0.
      --no-preface: writes one frame with no preface; expects the stream (or the connection)
      to be refused with nothing echoed; prints `REFUSED reset=<c> stop=<c> close=<c>`.
      --expect-handshake-failure: expects the handshake to fail; prints
      `HANDSHAKE_FAILED code=<hex> reason=<text>`.

Exit codes: 0 as expected, 1 an expectation failed (message on stderr), 2 a timeout.
Tested with aioquic 1.7.2 (the version .ci/run installs).
"""

import argparse
import asyncio
import struct
import sys

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

PREFACE = b"OAP1"
ALPN = "oap/1"
REFUSED = 1

# What the run is waiting for (named in the timeout message).
STAGE = ["starting"]


def at(stage):
    STAGE[0] = stage


class Failure(Exception):
    """An expectation failed (exit 1)."""


class StreamReset(Exception):
    """The peer reset a stream we were reading."""

    def __init__(self, code):
        super().__init__(f"stream reset by the peer with code {code}")
        self.code = code


def payload(n, seed):
    return bytes(((k * 31 + seed) & 0xFF) for k in range(n))


class Protocol(QuicConnectionProtocol):
    """aioquic's stream-reader protocol, plus: a stream reset or STOP_SENDING is surfaced to the
    reader, and the connection's end (error code, reason) is recorded."""

    def __init__(self, *args, on_terminated=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.reset_codes = {}
        self.stop_codes = {}
        self.terminated = None
        self._on_terminated = on_terminated

    def quic_event_received(self, event):
        if isinstance(event, events.StreamReset):
            self.reset_codes[event.stream_id] = event.error_code
            reader = self._stream_readers.get(event.stream_id)
            if reader is not None:
                reader.set_exception(StreamReset(event.error_code))
        elif isinstance(event, events.StopSendingReceived):
            self.stop_codes[event.stream_id] = event.error_code
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = (event.error_code, event.reason_phrase)
            if self._on_terminated is not None:
                self._on_terminated(self)
        super().quic_event_received(event)


async def read_frame(reader):
    """The next frame, or None at a clean end of stream (before a header)."""
    try:
        hdr = await reader.readexactly(4)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise Failure(f"stream ended inside a frame header ({len(e.partial)} bytes)")
        return None
    (n,) = struct.unpack(">I", hdr)
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        raise Failure(f"stream ended inside a frame: {len(e.partial)} of {n} bytes")


# ---------------------------------------------------------------------------------------------
# server


class Stats:
    def __init__(self):
        self.conns = 0
        self.streams = 0
        self.refused = 0
        self.frames = 0
        self.bytes = 0
        self.close_codes = []
        self.errors = []


async def echo_stream(proto, reader, writer, stats):
    stream_id = writer.get_extra_info("stream_id")
    stats.streams += 1
    try:
        try:
            preface = await reader.readexactly(len(PREFACE))
        except asyncio.IncompleteReadError as e:
            preface = e.partial
        if preface != PREFACE:
            stats.refused += 1
            proto._quic.stop_stream(stream_id, REFUSED)
            proto._quic.reset_stream(stream_id, REFUSED)
            proto.transmit()
            # The stream is gone: the writer must not try to finish it when collected.
            writer.transport._closing = True
            return
        while True:
            frame = await read_frame(reader)
            if frame is None:
                break
            writer.write(struct.pack(">I", len(frame)) + frame)
            stats.frames += 1
            stats.bytes += len(frame)
        writer.write_eof()
    except (Failure, StreamReset) as e:
        stats.errors.append(f"stream {stream_id}: {e}")


async def run_server(args):
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    config.idle_timeout = args.timeout
    config.load_cert_chain(args.cert, args.key)
    stats = Stats()
    done = asyncio.Event()
    tasks = set()

    def terminated(proto):
        stats.conns += 1
        stats.close_codes.append(proto.terminated[0])
        if stats.conns >= args.conns:
            done.set()

    def create_protocol(*a, **kw):
        proto = Protocol(*a, on_terminated=terminated, **kw)

        def on_stream(reader, writer):
            t = asyncio.ensure_future(echo_stream(proto, reader, writer, stats))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

        proto._stream_handler = on_stream
        return proto

    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=create_protocol)
    port = server._transport.get_extra_info("sockname")[1]
    print(f"PORT {port}", flush=True)
    at(f"serving: waiting for {args.conns} connection(s) to end")
    try:
        await asyncio.wait_for(done.wait(), args.timeout)
    finally:
        server.close()
    if stats.errors:
        raise Failure("; ".join(stats.errors))
    codes = ",".join(str(c) for c in stats.close_codes)
    print(
        f"DONE conns={stats.conns} streams={stats.streams} refused={stats.refused} "
        f"frames={stats.frames} bytes={stats.bytes} close_codes={codes}",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------
# client


async def run_client(args):
    config = QuicConfiguration(
        is_client=True, alpn_protocols=[args.alpn], server_name=args.server_name
    )
    config.idle_timeout = args.timeout
    config.load_verify_locations(cafile=args.ca)
    made = []

    def create_protocol(*a, **kw):
        proto = Protocol(*a, **kw)
        made.append(proto)
        return proto

    at("handshake")
    try:
        async with connect(
            args.host, args.port, configuration=config, create_protocol=create_protocol
        ) as proto:
            if args.expect_handshake_failure:
                raise Failure("the handshake succeeded")
            if args.no_preface:
                await client_without_preface(proto)
            else:
                await client_echo(proto, args)
    except ConnectionError:
        if not args.expect_handshake_failure or not made or made[0].terminated is None:
            raise
        code, reason = made[0].terminated
        print(f"HANDSHAKE_FAILED code={code:#x} reason={reason}", flush=True)


async def client_echo(proto, args):
    sizes = [int(s) for s in args.sizes.split(",") if s != ""]
    reader, writer = await proto.create_stream()
    writer.write(PREFACE)
    total = 0
    for i, n in enumerate(sizes):
        sent = payload(n, i & 0xFF)
        writer.write(struct.pack(">I", n) + sent)
        at(f"the echo of frame {i} ({n} bytes)")
        got = await read_frame(reader)
        if got is None:
            raise Failure(f"stream ended before the echo of frame {i} ({n} bytes)")
        if got != sent:
            first = next((k for k in range(min(len(got), n)) if got[k] != sent[k]), None)
            raise Failure(
                f"echo of frame {i} differs: {len(got)} bytes back for {n} sent, "
                f"first difference at {first}"
            )
        total += n
    writer.write_eof()
    at("the end of the echo stream")
    extra = await read_frame(reader)
    if extra is not None:
        raise Failure(f"an unexpected frame of {len(extra)} bytes after the echoes")
    code = None
    if args.expect_close:
        # Our listener closes the connection when its last stream ended.
        at("the peer closing the connection")
        await proto.wait_closed()
        code = proto.terminated[0] if proto.terminated else None
    print(f"OK frames={len(sizes)} bytes={total} close_code={code}", flush=True)


async def client_without_preface(proto):
    reader, writer = await proto.create_stream()
    stream_id = writer.get_extra_info("stream_id")
    writer.write(struct.pack(">I", 5) + b"hello")
    at("the refusal of a stream without the preface")
    try:
        got = await reader.read(65536)
        if got:
            raise Failure(f"{len(got)} bytes came back on a stream without the preface")
    except StreamReset:
        pass
    # Refused: the stream is reset, or the connection closed (it had no other stream).
    if stream_id not in proto.reset_codes:
        await proto.wait_closed()
    reset = proto.reset_codes.get(stream_id)
    stop = proto.stop_codes.get(stream_id)
    close = proto.terminated[0] if proto.terminated else None
    if reset is None and stop is None and close is None:
        raise Failure("the stream ended cleanly instead of being refused")
    for what, code in (("reset", reset), ("stop", stop)):
        if code is not None and code != REFUSED:
            raise Failure(f"{what} code {code}, expected {REFUSED}")
    print(f"REFUSED reset={reset} stop={stop} close={close}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("--timeout", type=float, default=30.0, help="bound on the whole run (s)")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int)
    p.add_argument("--ca")
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--alpn", default=ALPN)
    p.add_argument("--sizes", default="0,1,1024")
    p.add_argument("--expect-close", action="store_true")
    p.add_argument("--no-preface", action="store_true")
    p.add_argument("--expect-handshake-failure", action="store_true")
    args = p.parse_args()
    if args.mode == "server":
        if not (args.cert and args.key):
            p.error("server needs --cert and --key")
        run = run_server(args)
    else:
        if args.port is None or not args.ca:
            p.error("client needs --port and --ca")
        run = run_client(args)

    async def bounded():
        await asyncio.wait_for(run, args.timeout)

    try:
        asyncio.run(bounded())
    except asyncio.TimeoutError:
        print(
            f"aioquic_oap {args.mode}: timed out after {args.timeout} s waiting for {STAGE[0]}",
            file=sys.stderr,
        )
        sys.exit(2)
    except (Failure, ConnectionError, StreamReset) as e:
        print(f"aioquic_oap {args.mode}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
