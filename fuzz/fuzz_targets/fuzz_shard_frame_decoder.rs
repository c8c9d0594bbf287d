//! Fuzz target `fuzz_shard_frame_decoder`: `ron_shard::frame::FrameDecoder` fed one byte stream
//! through its three receive paths — ring-style `decode` on borrowed chunks, direct receives
//! into a lent body (`take_body` / `put_body`) and owned buffers (`decode_owned`) — interleaved
//! at split points the input chooses, as the shard's receive loop mixes them.
//!
//! Invariants: the frames produced equal a reference decode of the whole stream in one
//! `decode` call (same payloads, in order, and the same error after the same frames); the
//! decoders end in the same state (mid frame, missing and announced lengths); no frame exceeds
//! the ceiling; a lent body always has room for exactly the missing bytes; no decoder call
//! allocates more than `4 + ceiling` bytes (or the small bookkeeping header of `bytes`), so the
//! ceiling is enforced before allocation (observed by a wrapping global allocator); never a
//! panic. Assembled frames are optionally given back to the per-thread pool (`recycle`) so
//! pooled buffers are reused by later frames.
#![no_main]

use std::sync::atomic::Ordering;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use ron_shard::frame::{self, Decoded, FrameDecoder, FrameError, HEADER_LEN};

#[path = "common/alloc.rs"]
mod alloc_observer;
use alloc_observer::{ARMED, BOOKKEEPING};

/// Runs `f` with the allocation observer armed; returns its result and the largest allocation.
fn observed<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let (r, _, largest) = alloc_observer::observed(f);
    (r, largest)
}

/// Collects a frame from inside a decoder callback without counting the copy.
fn collect(got: &mut Vec<Vec<u8>>, bytes: &[u8], keep: &mut Vec<Bytes>, b: Option<Bytes>) {
    let armed = ARMED.swap(false, Ordering::Relaxed);
    got.push(bytes.to_vec());
    if let Some(b) = b {
        keep.push(b);
    }
    ARMED.store(armed, Ordering::Relaxed);
}

#[derive(Arbitrary, Debug)]
enum Part {
    /// A well-formed frame: header then `len` bytes of `fill` (length up to ~192 KiB so large,
    /// pooled and direct-receive sizes are reached).
    Frame { len: u32, fill: u8 },
    /// Arbitrary bytes (any header, any garbage).
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Ring-style: `decode` on the next `n` bytes (borrowed chunk).
    Ring(u32),
    /// Direct receive: lend the body and append up to `n` bytes (falls back to `Ring` when no
    /// body is in progress).
    Direct(u32),
    /// Owned buffer: the next `n` bytes in a buffer with `extra` spare bytes of capacity.
    Owned { n: u32, extra: u32 },
    /// Give the frames collected so far back to the pool.
    Recycle,
}

#[derive(Arbitrary, Debug)]
struct Input {
    max: u32,
    parts: Vec<Part>,
    ops: Vec<Op>,
}

const MAX_STREAM: usize = 4 << 20;

libfuzzer_sys::fuzz_target!(|input: Input| {
    // Ceilings from 0 to 1 MiB + a bit; mostly small enough that both outcomes happen.
    let max = input.max % ((1 << 20) + 17);
    let mut wire = Vec::new();
    for p in &input.parts {
        match p {
            Part::Frame { len, fill } => {
                let len = (*len % (192 * 1024)) as usize;
                wire.extend_from_slice(&(len as u32).to_be_bytes());
                wire.resize(wire.len() + len, *fill);
            }
            Part::Raw(b) => wire.extend_from_slice(b),
        }
        if wire.len() > MAX_STREAM {
            return;
        }
    }

    // Reference: the whole stream in one call.
    let mut reference = FrameDecoder::new(max);
    let mut ref_frames = Vec::new();
    let ref_err = reference
        .decode(&wire, |d| match d {
            Decoded::InPlace { start, len } => ref_frames.push(wire[start..start + len].to_vec()),
            Decoded::Assembled(b) => ref_frames.push(b.to_vec()),
        })
        .err();

    // Mixed: the ops pick path and split; when they run out, ring chunks of 4 KiB.
    let mut d = FrameDecoder::new(max);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut keep: Vec<Bytes> = Vec::new();
    let mut err: Option<FrameError> = None;
    let mut pos = 0;
    let limit = (HEADER_LEN + max as usize).max(BOOKKEEPING);
    let mut ops = input.ops.iter();
    while pos < wire.len() && err.is_none() {
        let op = ops.next().unwrap_or(&Op::Ring(4096));
        let rest = wire.len() - pos;
        match *op {
            Op::Recycle => {
                for b in keep.drain(..) {
                    let _ = frame::recycle(b);
                }
                continue;
            }
            Op::Direct(n) if d.missing() > 0 => {
                let (buf, missing) = d.take_body().expect("missing > 0 means a body in progress");
                let mut buf = buf;
                assert!(
                    buf.capacity() - buf.len() >= missing,
                    "lent body has no room for the missing bytes"
                );
                assert_eq!(missing, d.missing());
                let k = ((n as usize) % missing + 1).min(rest);
                // The receive writes into the spare capacity: must not reallocate.
                let before = buf.as_ptr();
                buf.extend_from_slice(&wire[pos..pos + k]);
                assert_eq!(before, buf.as_ptr(), "direct receive reallocated the body");
                pos += k;
                let ((), largest) = observed(|| {
                    d.put_body(buf, |f| match f {
                        Decoded::Assembled(b) => collect(&mut got, &b, &mut keep, Some(b.clone())),
                        Decoded::InPlace { .. } => panic!("a lent body completes as owned"),
                    })
                });
                assert!(largest <= limit, "put_body allocated {largest} (max {max})");
            }
            Op::Owned { n, extra } => {
                let k = ((n as usize) % (256 * 1024) + 1).min(rest);
                let extra = (extra as usize) % (256 * 1024);
                let mut buf = BytesMut::with_capacity(k + extra);
                buf.extend_from_slice(&wire[pos..pos + k]);
                pos += k;
                let (r, largest) = observed(|| {
                    d.decode_owned(buf, |f| match f {
                        Decoded::Assembled(b) => collect(&mut got, &b, &mut keep, Some(b.clone())),
                        Decoded::InPlace { .. } => panic!("owned input yields owned frames"),
                    })
                });
                assert!(
                    largest <= limit,
                    "decode_owned allocated {largest} (max {max})"
                );
                err = r.err();
            }
            Op::Ring(n) | Op::Direct(n) => {
                let k = ((n as usize) % (64 * 1024) + 1).min(rest);
                let chunk = &wire[pos..pos + k];
                pos += k;
                let (r, largest) = observed(|| {
                    d.decode(chunk, |f| match f {
                        Decoded::InPlace { start, len } => {
                            collect(&mut got, &chunk[start..start + len], &mut keep, None)
                        }
                        Decoded::Assembled(b) => collect(&mut got, &b, &mut keep, Some(b.clone())),
                    })
                });
                assert!(largest <= limit, "decode allocated {largest} (max {max})");
                err = r.err();
            }
        }
    }

    for f in &got {
        assert!(
            f.len() <= max as usize,
            "frame of {} above ceiling {max}",
            f.len()
        );
    }
    assert_eq!(
        got.len(),
        ref_frames.len(),
        "frame count differs from the reference"
    );
    for (i, (g, r)) in got.iter().zip(&ref_frames).enumerate() {
        assert!(
            g == r,
            "frame {i} differs ({} vs {} bytes)",
            g.len(),
            r.len()
        );
    }
    assert_eq!(err, ref_err, "error differs from the reference");
    if let Some(e) = err {
        assert_eq!(e.reason(), "too_large");
    } else {
        assert_eq!(d.mid_frame(), reference.mid_frame());
        assert_eq!(d.missing(), reference.missing());
        assert_eq!(d.body_len(), reference.body_len());
    }
});
