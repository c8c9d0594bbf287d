//! Length-prefixed frame decoding (u32 big-endian length, then the payload), sans-IO.
//!
//! [`FrameDecoder`] consumes received chunks and reports each complete frame either *in place*
//! (an offset range inside the chunk, so a frame that arrived whole in one receive buffer is
//! never copied) or *assembled* (a frame that spanned chunks, copied once into an exact-size
//! buffer allocated only after its length passed the ceiling check). It owns no socket, no
//! clock and no policy beyond the ceiling it is given.
//!
//! Assembly buffers of large frames come from a small per-thread pool ([`recycle`] gives a
//! finished frame's buffer back): allocating and freeing a fresh 64 KiB buffer per frame made
//! the allocator hand the pages back to the kernel (`madvise`) and fault them in again on the
//! next copy, which cost more server CPU than the copy itself (see docs/perf.md).
//!
//! **Direct receive.** For large frames the driver can skip the assembly copy: it lends the
//! body buffer out ([`FrameDecoder::take_body`]) so the rest of the payload is received straight
//! into it, and gives it back with the new bytes ([`FrameDecoder::put_body`]); and it can feed a
//! whole owned receive buffer ([`FrameDecoder::decode_owned`]) whose frames are handed out as
//! slices of that buffer (and whose partial last frame keeps growing in it when it has room).
#![forbid(unsafe_code)]

use std::cell::RefCell;

use bytes::{Buf, Bytes, BytesMut};

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// A decoded frame, relative to the chunk passed to [`FrameDecoder::decode`].
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The payload is `chunk[start..start + len]`.
    InPlace {
        /// Offset of the payload in the chunk.
        start: usize,
        /// Payload length.
        len: usize,
    },
    /// The payload spanned chunks and was assembled.
    Assembled(Bytes),
}

/// A peer violated framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header announced `len` bytes, above the configured ceiling `max`.
    #[error("frame of {len} bytes exceeds the {max}-byte ceiling")]
    TooLarge {
        /// Announced length.
        len: u32,
        /// The ceiling.
        max: u32,
    },
}

impl FrameError {
    /// Stable reason string (`too_large`).
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
        }
    }
}

#[derive(Debug)]
enum State {
    /// Collecting the 4-byte header (`have` bytes so far).
    Header { buf: [u8; HEADER_LEN], have: usize },
    /// Collecting a payload that spans chunks. `buf` holds `skip` bytes (the header, when the
    /// buffer was adopted from an owned receive) before the payload; `need` is the payload length.
    Body {
        buf: BytesMut,
        need: usize,
        skip: usize,
    },
    /// The body buffer is lent to a receive ([`FrameDecoder::take_body`]).
    Lent {
        need: usize,
        missing: usize,
        skip: usize,
    },
}

/// Incremental frame decoder with a length ceiling checked before any allocation.
#[derive(Debug)]
pub struct FrameDecoder {
    max: u32,
    state: State,
}

impl FrameDecoder {
    /// A decoder rejecting frames longer than `max` bytes.
    pub fn new(max: u32) -> Self {
        Self {
            max,
            state: State::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            },
        }
    }

    /// The ceiling.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// True if a frame has started (some header or payload bytes seen) but is not complete.
    pub fn mid_frame(&self) -> bool {
        !matches!(self.state, State::Header { have: 0, .. })
    }

    /// Bytes of heap held for a partial frame.
    pub fn buffered(&self) -> usize {
        match &self.state {
            State::Header { .. } => 0,
            State::Body { buf, .. } => buf.capacity(),
            State::Lent { need, .. } => *need,
        }
    }

    /// Payload bytes still missing from the frame in progress (0 between frames or while the
    /// header is incomplete).
    pub fn missing(&self) -> usize {
        match &self.state {
            State::Header { .. } => 0,
            State::Body { buf, need, skip } => skip + need - buf.len(),
            State::Lent { missing, .. } => *missing,
        }
    }

    /// Announced payload length of the frame in progress (0 between frames).
    pub fn body_len(&self) -> usize {
        match &self.state {
            State::Header { .. } => 0,
            State::Body { need, .. } | State::Lent { need, .. } => *need,
        }
    }

    /// Lends the body buffer of the frame in progress, with spare capacity for exactly the
    /// missing bytes, so they can be received straight into it. Returns the buffer and how many
    /// bytes are missing; `None` between frames (or if already lent). The buffer must come back
    /// through [`put_body`](Self::put_body) before anything else is decoded.
    pub fn take_body(&mut self) -> Option<(BytesMut, usize)> {
        let State::Body { need, skip, .. } = self.state else {
            return None;
        };
        let missing = self.missing();
        let lent = State::Lent {
            need,
            missing,
            skip,
        };
        let State::Body { buf, .. } = std::mem::replace(&mut self.state, lent) else {
            unreachable!("matched just above")
        };
        debug_assert!(buf.capacity() - buf.len() >= missing && skip <= HEADER_LEN);
        Some((buf, missing))
    }

    /// Takes back a buffer lent by [`take_body`](Self::take_body), now holding its old bytes
    /// plus whatever the receive appended (at most the missing bytes). Calls `out` with the
    /// frame if it is now complete.
    pub fn put_body(&mut self, buf: BytesMut, mut out: impl FnMut(Decoded)) {
        let State::Lent { need, skip, .. } = self.state else {
            debug_assert!(false, "put_body without take_body");
            return;
        };
        debug_assert!(buf.len() <= skip + need);
        self.state = State::Body { buf, need, skip };
        self.finish_body(&mut out);
    }

    /// Feeds an owned receive buffer. Complete frames come out as [`Decoded::Assembled`] slices
    /// of it (no copy). If it starts at a frame boundary and ends inside a frame whose header
    /// and payload fit the capacity left after it, the rest of the buffer becomes that frame's
    /// body buffer (no copy; continue with [`take_body`](Self::take_body)); otherwise a
    /// trailing partial frame is copied as usual.
    pub fn decode_owned(
        &mut self,
        mut buf: BytesMut,
        mut out: impl FnMut(Decoded),
    ) -> Result<(), FrameError> {
        if !matches!(self.state, State::Header { have: 0, .. }) {
            // Finishing a frame that started elsewhere: the plain path, frames as slices.
            let all = buf.freeze();
            return self.decode(&all, |d| match d {
                Decoded::InPlace { start, len } => {
                    out(Decoded::Assembled(all.slice(start..start + len)))
                }
                d => out(d),
            });
        }
        // Walk the complete frames (ceiling checked on every header before going on; frames
        // before an oversized header are still handed out, as `decode` does).
        let mut off = 0;
        let mut tail_len = None;
        let mut too_large = None;
        while buf.len() - off >= HEADER_LEN {
            let h = &buf[off..off + HEADER_LEN];
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            if len > self.max {
                too_large = Some(FrameError::TooLarge { len, max: self.max });
                break;
            }
            let total = HEADER_LEN + len as usize;
            if buf.len() - off < total {
                tail_len = Some(len as usize);
                break;
            }
            off += total;
        }
        if off > 0 {
            let front = if off == buf.len() {
                std::mem::take(&mut buf)
            } else {
                buf.split_to(off)
            }
            .freeze();
            let mut p = 0;
            while p < off {
                let h = &front[p..p + HEADER_LEN];
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                out(Decoded::Assembled(
                    front.slice(p + HEADER_LEN..p + HEADER_LEN + len),
                ));
                p += HEADER_LEN + len;
            }
        }
        if let Some(e) = too_large {
            return Err(e);
        }
        match tail_len {
            Some(len) if buf.capacity() >= HEADER_LEN + len => {
                self.state = State::Body {
                    buf,
                    need: len,
                    skip: HEADER_LEN,
                };
                Ok(())
            }
            // A partial header, or a frame too big for the room left: copied (no frame can
            // complete here, so nothing comes out).
            _ => self.decode(&buf, |_| {}),
        }
    }

    fn finish_body(&mut self, out: &mut impl FnMut(Decoded)) {
        if let State::Body { buf, need, skip } = &mut self.state {
            if buf.len() == *skip + *need {
                let mut frame = std::mem::take(buf);
                let skip = *skip;
                frame.advance(skip);
                self.reset();
                out(Decoded::Assembled(frame.freeze()));
            }
        }
    }

    /// Feeds `chunk`, calling `out` for every complete frame in order. Stops at the first
    /// framing error (the connection must then be closed; later bytes are not examined).
    pub fn decode(&mut self, chunk: &[u8], mut out: impl FnMut(Decoded)) -> Result<(), FrameError> {
        let mut pos = 0;
        while pos < chunk.len() {
            match &mut self.state {
                State::Header { buf, have } => {
                    if *have == 0 && chunk.len() - pos >= HEADER_LEN {
                        let len = u32::from_be_bytes([
                            chunk[pos],
                            chunk[pos + 1],
                            chunk[pos + 2],
                            chunk[pos + 3],
                        ]);
                        pos += HEADER_LEN;
                        pos = self.start_body(len, chunk, pos, &mut out)?;
                    } else {
                        let take = (HEADER_LEN - *have).min(chunk.len() - pos);
                        buf[*have..*have + take].copy_from_slice(&chunk[pos..pos + take]);
                        *have += take;
                        pos += take;
                        if *have == HEADER_LEN {
                            let len = u32::from_be_bytes(*buf);
                            pos = self.start_body(len, chunk, pos, &mut out)?;
                        }
                    }
                }
                State::Body { buf, need, skip } => {
                    let take = (*skip + *need - buf.len()).min(chunk.len() - pos);
                    buf.extend_from_slice(&chunk[pos..pos + take]);
                    pos += take;
                    self.finish_body(&mut out);
                }
                State::Lent { .. } => {
                    debug_assert!(false, "decode while the body buffer is lent");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Header complete with `len`; payload starts at `chunk[pos..]`. Returns the new position.
    fn start_body(
        &mut self,
        len: u32,
        chunk: &[u8],
        pos: usize,
        out: &mut impl FnMut(Decoded),
    ) -> Result<usize, FrameError> {
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        let len = len as usize;
        let avail = chunk.len() - pos;
        if avail >= len {
            self.reset();
            out(Decoded::InPlace { start: pos, len });
            Ok(pos + len)
        } else {
            // Allocation (or pooled reuse) only after the ceiling check.
            let mut buf = take_buf(len);
            buf.extend_from_slice(&chunk[pos..]);
            self.state = State::Body {
                buf,
                need: len,
                skip: 0,
            };
            Ok(chunk.len())
        }
    }

    fn reset(&mut self) {
        self.state = State::Header {
            buf: [0; HEADER_LEN],
            have: 0,
        };
    }
}

/// Frames at least this long are assembled in pooled buffers; smaller ones are allocated
/// exactly (small allocations are served from the allocator's caches without page faults).
pub const POOL_MIN: usize = 16 * 1024;
/// At most this many buffers are kept per thread.
pub const POOL_MAX_BUFS: usize = 32;
/// At most this many bytes of capacity are kept per thread.
pub const POOL_MAX_BYTES: usize = 8 << 20;

#[derive(Default)]
struct Pool {
    bufs: Vec<BytesMut>,
    bytes: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// An empty buffer able to hold `len` bytes: a pooled one whose capacity is between `len` and
/// `2 × len`, else a new exact-size one. Callers check the frame ceiling first.
pub fn take_buf(len: usize) -> BytesMut {
    if len >= POOL_MIN {
        let hit = POOL.with(|p| {
            let mut p = p.borrow_mut();
            let i = p
                .bufs
                .iter()
                .rposition(|b| b.capacity() >= len && b.capacity() / 2 <= len)?;
            let b = p.bufs.swap_remove(i);
            p.bytes -= b.capacity();
            Some(b)
        });
        if let Some(b) = hit {
            return b;
        }
    }
    BytesMut::with_capacity(len)
}

/// Gives a finished frame's buffer back to this thread's pool, if nothing else references it
/// and it is large enough to be worth keeping (and the pool has room). Returns true if kept.
pub fn recycle(b: Bytes) -> bool {
    if b.len() < POOL_MIN {
        return false;
    }
    let Ok(mut m) = b.try_into_mut() else {
        return false;
    };
    m.clear();
    // A frame handed out without its header (direct receive) starts a few bytes into its
    // allocation: take those bytes back (never allocates).
    let _ = m.try_reclaim(m.capacity() + HEADER_LEN);
    let cap = m.capacity();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.bufs.len() >= POOL_MAX_BUFS || p.bytes + cap > POOL_MAX_BYTES {
            return false;
        }
        p.bytes += cap;
        p.bufs.push(m);
        true
    })
}

/// Buffers and bytes of capacity in this thread's pool.
pub fn pooled() -> (usize, usize) {
    POOL.with(|p| {
        let p = p.borrow();
        (p.bufs.len(), p.bytes)
    })
}

/// Encodes `payload` as a frame (header + payload) into a new buffer.
pub fn encode(payload: &[u8]) -> Option<Bytes> {
    let len = u32::try_from(payload.len()).ok()?;
    let mut b = BytesMut::with_capacity(HEADER_LEN + payload.len());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(payload);
    Some(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::test_runner::TestCaseError;
    use proptest::{prop_assert, prop_assert_eq};

    fn frames(d: &mut FrameDecoder, chunk: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut v = Vec::new();
        d.decode(chunk, |f| match f {
            Decoded::InPlace { start, len } => v.push(chunk[start..start + len].to_vec()),
            Decoded::Assembled(b) => v.push(b.to_vec()),
        })?;
        Ok(v)
    }

    #[test]
    fn whole_frames_in_one_chunk_are_in_place() {
        let mut d = FrameDecoder::new(1024);
        let mut wire = encode(b"abc").unwrap().to_vec();
        wire.extend_from_slice(&encode(b"").unwrap());
        wire.extend_from_slice(&encode(b"hello").unwrap());
        let mut kinds = Vec::new();
        d.decode(&wire, |f| kinds.push(f)).unwrap();
        assert_eq!(
            kinds,
            vec![
                Decoded::InPlace { start: 4, len: 3 },
                Decoded::InPlace { start: 11, len: 0 },
                Decoded::InPlace { start: 15, len: 5 },
            ]
        );
        assert!(!d.mid_frame());
    }

    #[test]
    fn every_split_point_yields_the_same_frames() {
        let mut wire = Vec::new();
        for p in [&b"one"[..], b"", b"three33", &[7u8; 300]] {
            wire.extend_from_slice(&encode(p).unwrap());
        }
        let expect = frames(&mut FrameDecoder::new(1024), &wire).unwrap();
        assert_eq!(expect.len(), 4);
        for a in 0..wire.len() {
            for b in a..wire.len() {
                let mut d = FrameDecoder::new(1024);
                let mut got = frames(&mut d, &wire[..a]).unwrap();
                got.extend(frames(&mut d, &wire[a..b]).unwrap());
                got.extend(frames(&mut d, &wire[b..]).unwrap());
                assert_eq!(got, expect, "split at {a},{b}");
                assert!(!d.mid_frame());
            }
        }
    }

    #[test]
    fn ceiling_is_checked_before_allocating() {
        let mut d = FrameDecoder::new(16);
        let hdr = 17u32.to_be_bytes();
        // Header split across chunks: no buffer is allocated for the body.
        assert_eq!(frames(&mut d, &hdr[..2]).unwrap().len(), 0);
        assert_eq!(d.buffered(), 0);
        let err = frames(&mut d, &hdr[2..]).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { len: 17, max: 16 });
        assert_eq!(err.reason(), "too_large");
        assert_eq!(d.buffered(), 0);
        // u32::MAX announced: rejected, nothing allocated.
        let mut d = FrameDecoder::new(1 << 20);
        assert!(frames(&mut d, &u32::MAX.to_be_bytes()).is_err());
        assert_eq!(d.buffered(), 0);
        // Exactly the ceiling passes.
        let mut d = FrameDecoder::new(16);
        let ok = frames(&mut d, &encode(&[1; 16]).unwrap()).unwrap();
        assert_eq!(ok, vec![vec![1; 16]]);
    }

    #[test]
    fn partial_frame_buffers_exactly_its_length() {
        let mut d = FrameDecoder::new(1 << 20);
        let wire = encode(&[9u8; 1000]).unwrap();
        frames(&mut d, &wire[..10]).unwrap();
        assert!(d.mid_frame());
        assert_eq!(d.buffered(), 1000);
        let got = frames(&mut d, &wire[10..]).unwrap();
        assert_eq!(got, vec![vec![9u8; 1000]]);
        assert_eq!(d.buffered(), 0);
    }

    fn assembled(d: &mut FrameDecoder, chunks: &[&[u8]]) -> Vec<Bytes> {
        let mut v = Vec::new();
        for c in chunks {
            d.decode(c, |f| match f {
                Decoded::Assembled(b) => v.push(b),
                Decoded::InPlace { .. } => panic!("expected an assembled frame"),
            })
            .unwrap();
        }
        v
    }

    #[test]
    fn large_assembly_buffers_are_pooled_and_reused() {
        // Runs on its own test thread, so the thread's pool starts empty.
        assert_eq!(pooled(), (0, 0));
        let len = POOL_MIN + 100;
        let wire = encode(&vec![3u8; len]).unwrap();
        let mut d = FrameDecoder::new(1 << 20);
        let mut got = assembled(&mut d, &[&wire[..7], &wire[7..]]);
        let b = got.pop().unwrap();
        assert_eq!(&b[..], &wire[4..]);
        let ptr = b.as_ptr();
        // A buffer still referenced elsewhere (e.g. queued for sending) is not taken.
        let held = b.clone();
        assert!(!recycle(b));
        assert_eq!(pooled(), (0, 0));
        assert!(recycle(held));
        assert_eq!(pooled().0, 1);
        assert!(pooled().1 >= len);
        // The next large frame is assembled in the same memory, with the right content.
        let wire2 = encode(&vec![5u8; len]).unwrap();
        let got = assembled(&mut d, &[&wire2[..POOL_MIN], &wire2[POOL_MIN..]]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ptr(), ptr);
        assert_eq!(&got[0][..], &wire2[4..]);
        assert_eq!(pooled(), (0, 0));
        // A frame more than twice smaller than the pooled buffer does not take it.
        assert!(recycle(got.into_iter().next().unwrap()));
        let small = encode(&vec![1u8; POOL_MIN / 2]).unwrap();
        let got = frames(&mut d, &small[..5]).unwrap();
        assert!(got.is_empty());
        assert_eq!(pooled().0, 1);
        assert_eq!(d.buffered(), POOL_MIN / 2);
        // Small frames are never pooled.
        assert!(!recycle(Bytes::from(vec![0u8; POOL_MIN - 1])));
    }

    #[test]
    fn pool_is_bounded() {
        for _ in 0..POOL_MAX_BUFS + 8 {
            recycle(Bytes::from(vec![0u8; 64 * 1024]));
        }
        let (n, bytes) = pooled();
        assert!(n <= POOL_MAX_BUFS && bytes <= POOL_MAX_BYTES, "{n} {bytes}");
        let big = 1 << 20;
        for _ in 0..16 {
            recycle(Bytes::from(vec![0u8; big]));
        }
        assert!(pooled().1 <= POOL_MAX_BYTES);
    }

    #[test]
    fn large_frames_straddling_chunks_at_every_offset_decode_exactly() {
        // Three 20 KiB frames (pooled sizes), fed as 32 KiB chunks shifted by every offset
        // (stepped) so header and body boundaries fall at every position of a chunk.
        let mut wire = Vec::new();
        let mut expect = Vec::new();
        for k in 0..3u8 {
            let p: Vec<u8> = (0..POOL_MIN + 4096).map(|i| (i as u8) ^ k).collect();
            wire.extend_from_slice(&encode(&p).unwrap());
            expect.push(p);
        }
        for first in (1..wire.len()).step_by(997).chain(1..9) {
            let mut d = FrameDecoder::new(1 << 20);
            let mut got = Vec::new();
            let mut pos = 0;
            let mut step = first;
            while pos < wire.len() {
                let end = (pos + step).min(wire.len());
                got.extend(frames(&mut d, &wire[pos..end]).unwrap());
                pos = end;
                step = 32 * 1024;
            }
            assert_eq!(got, expect, "first chunk {first}");
            assert!(!d.mid_frame());
        }
    }
    /// Simulates a direct receive: lends the body, appends up to `max` bytes of `src`, gives
    /// it back. Returns how many bytes were appended.
    fn direct(d: &mut FrameDecoder, src: &[u8], max: usize, out: &mut Vec<Bytes>) -> usize {
        let (mut buf, missing) = d.take_body().expect("a body in progress");
        assert!(buf.capacity() - buf.len() >= missing);
        let n = missing.min(max).min(src.len());
        buf.extend_from_slice(&src[..n]);
        d.put_body(buf, |f| match f {
            Decoded::Assembled(b) => out.push(b),
            Decoded::InPlace { .. } => panic!("lent bodies complete as owned frames"),
        });
        n
    }

    #[test]
    fn lent_body_receives_the_rest_in_place() {
        let payload: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let wire = encode(&payload).unwrap();
        let mut d = FrameDecoder::new(1 << 20);
        assert!(d.take_body().is_none(), "nothing to lend between frames");
        // A ring chunk brings the header and the start of the body.
        assert!(frames(&mut d, &wire[..32 * 1024]).unwrap().is_empty());
        assert_eq!(d.body_len(), payload.len());
        assert_eq!(d.missing(), wire.len() - 32 * 1024);
        let mut out = Vec::new();
        let mut pos = 32 * 1024;
        // Two partial direct receives, then the rest.
        for max in [1000, 20_000, usize::MAX] {
            assert!(d.mid_frame());
            pos += direct(&mut d, &wire[pos..], max, &mut out);
            assert_eq!(d.missing(), wire.len() - pos);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][..], &payload[..]);
        assert!(!d.mid_frame());
        // The decoder goes on with ring chunks afterwards.
        assert_eq!(
            frames(&mut d, &encode(b"next").unwrap()).unwrap(),
            vec![b"next".to_vec()]
        );
    }

    #[test]
    fn owned_buffer_holding_one_frame_is_handed_out_without_copy() {
        let wire = encode(&[7u8; 40_000]).unwrap();
        let mut d = FrameDecoder::new(1 << 20);
        let mut buf = take_buf(wire.len());
        buf.extend_from_slice(&wire);
        let base = buf.as_ptr();
        let mut out = Vec::new();
        d.decode_owned(buf, |f| out.push(f)).unwrap();
        let [Decoded::Assembled(b)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(&b[..], &wire[4..]);
        assert_eq!(
            b.as_ptr(),
            base.wrapping_add(HEADER_LEN),
            "a view of the receive buffer"
        );
        // Back in the pool, the header offset is reclaimed: a same-size buffer is reusable.
        let b = b.clone();
        out.clear();
        assert!(recycle(b));
        let again = take_buf(wire.len());
        assert_eq!(again.as_ptr(), base);
        assert!(again.capacity() >= wire.len());
    }

    #[test]
    fn owned_buffer_ending_mid_frame_becomes_its_body_buffer() {
        let payload = vec![3u8; 50_000];
        let wire = encode(&payload).unwrap();
        let mut d = FrameDecoder::new(1 << 20);
        let mut buf = BytesMut::with_capacity(wire.len());
        buf.extend_from_slice(&wire[..10_000]);
        let base = buf.as_ptr();
        d.decode_owned(buf, |_| panic!("incomplete")).unwrap();
        assert_eq!(d.missing(), wire.len() - 10_000);
        let mut out = Vec::new();
        direct(&mut d, &wire[10_000..], usize::MAX, &mut out);
        assert_eq!(&out[0][..], &payload[..]);
        assert_eq!(
            out[0].as_ptr(),
            base.wrapping_add(HEADER_LEN),
            "adopted, not copied"
        );
    }

    #[test]
    fn owned_buffer_with_several_frames_and_a_tail_decodes_like_slices() {
        let mut wire = Vec::new();
        for p in [&b"ab"[..], &[1u8; 300], b""] {
            wire.extend_from_slice(&encode(p).unwrap());
        }
        let tail = encode(&[9u8; 100]).unwrap();
        wire.extend_from_slice(&tail[..30]);
        let mut d = FrameDecoder::new(1 << 20);
        let mut out = Vec::new();
        d.decode_owned(BytesMut::from(&wire[..]), |f| match f {
            Decoded::Assembled(b) => out.push(b.to_vec()),
            Decoded::InPlace { .. } => panic!("owned input yields owned frames"),
        })
        .unwrap();
        assert_eq!(out, vec![b"ab".to_vec(), vec![1u8; 300], vec![]]);
        assert_eq!(d.missing(), 100 - 26);
        assert_eq!(frames(&mut d, &tail[30..]).unwrap(), vec![vec![9u8; 100]]);
    }

    #[test]
    fn owned_buffer_checks_the_ceiling_before_adopting() {
        let mut d = FrameDecoder::new(100);
        let mut buf = BytesMut::with_capacity(1 << 16);
        buf.extend_from_slice(&101u32.to_be_bytes());
        buf.extend_from_slice(&[0; 50]);
        assert_eq!(
            d.decode_owned(buf, |_| panic!("no frame")).unwrap_err(),
            FrameError::TooLarge { len: 101, max: 100 }
        );
        assert_eq!(d.buffered(), 0);
    }
    #[test]
    fn owned_buffer_with_large_frames_adopts_the_partial_tail_in_its_spare_room() {
        let (a, b) = (vec![1u8; 30_000], vec![2u8; 30_000]);
        let mut wire = encode(&a).unwrap().to_vec();
        wire.extend_from_slice(&encode(&b).unwrap());
        let mut buf = BytesMut::with_capacity(2 * wire.len());
        buf.extend_from_slice(&wire[..40_000]);
        let base = buf.as_ptr();
        let mut d = FrameDecoder::new(1 << 20);
        let mut out = Vec::new();
        d.decode_owned(buf, |f| match f {
            Decoded::Assembled(f) => out.push(f),
            Decoded::InPlace { .. } => panic!("owned input yields owned frames"),
        })
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][..], &a[..]);
        assert_eq!(out[0].as_ptr(), base.wrapping_add(HEADER_LEN));
        // The second frame continues in the same allocation, right after the first.
        assert_eq!(d.missing(), wire.len() - 40_000);
        direct(&mut d, &wire[40_000..], usize::MAX, &mut out);
        assert_eq!(&out[1][..], &b[..]);
        assert_eq!(out[1].as_ptr(), base.wrapping_add(2 * HEADER_LEN + a.len()));
    }
    /// Drives a decoder the way the shard does, mixing ring chunks, direct body receives and
    /// fresh owned buffers at random sizes, and checks every frame comes out whole, in order.
    fn drive_mixed(lens: &[usize], seed: u64) -> Result<(), TestCaseError> {
        const MIN: usize = 16 * 1024;
        let mut rng = seed | 1;
        let mut next = |bound: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % bound.max(1) as u64) as usize
        };
        let mut wire = Vec::new();
        let mut expect = Vec::new();
        for (i, &n) in lens.iter().enumerate() {
            let p: Vec<u8> = (0..n).map(|j| (i * 7 + j) as u8).collect();
            wire.extend_from_slice(&encode(&p).unwrap());
            expect.push(p);
        }
        let mut d = FrameDecoder::new(1 << 20);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut pos = 0;
        let mut direct = false;
        let mut last_len = 0usize;
        while pos < wire.len() {
            if !direct {
                let k = (1 + next(32 * 1024)).min(wire.len() - pos);
                let chunk = &wire[pos..pos + k];
                pos += k;
                d.decode(chunk, |f| match f {
                    Decoded::InPlace { start, len } => got.push(chunk[start..start + len].to_vec()),
                    Decoded::Assembled(b) => got.push(b.to_vec()),
                })
                .unwrap();
                if d.missing() >= MIN {
                    direct = true;
                    last_len = d.body_len();
                }
            } else if let Some((mut buf, missing)) = d.take_body() {
                prop_assert!(buf.capacity() - buf.len() >= missing);
                let k = (1 + next(missing)).min(wire.len() - pos);
                buf.extend_from_slice(&wire[pos..pos + k]);
                pos += k;
                d.put_body(buf, |f| match f {
                    Decoded::Assembled(b) => got.push(b.to_vec()),
                    Decoded::InPlace { .. } => panic!("lent bodies complete as owned frames"),
                });
            } else if d.mid_frame() {
                // A partial header: the shard goes back to the ring.
                direct = false;
            } else {
                let one = HEADER_LEN + last_len;
                let cap = one * (1 + next(3));
                let mut buf = BytesMut::with_capacity(cap);
                let k = (1 + next(cap)).min(wire.len() - pos);
                buf.extend_from_slice(&wire[pos..pos + k]);
                pos += k;
                let mut frames = Vec::new();
                d.decode_owned(buf, |f| match f {
                    Decoded::Assembled(b) => frames.push(b.to_vec()),
                    Decoded::InPlace { .. } => panic!("owned input yields owned frames"),
                })
                .unwrap();
                let all_large = frames.iter().all(|f| f.len() >= MIN);
                if all_large && (d.missing() >= MIN || !d.mid_frame()) {
                    if d.missing() > 0 {
                        last_len = d.body_len();
                    } else if let Some(f) = frames.last() {
                        last_len = f.len();
                    }
                } else {
                    direct = false;
                }
                got.extend(frames);
            }
        }
        prop_assert!(!d.mid_frame());
        prop_assert_eq!(got.len(), expect.len());
        for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
            prop_assert!(
                g == e,
                "frame {} differs ({} vs {} bytes)",
                i,
                g.len(),
                e.len()
            );
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn ring_direct_and_owned_receives_mixed_yield_the_same_frames(
            lens in proptest::collection::vec(
                proptest::prop_oneof![0usize..64, 16_384usize..92_160, 92_160usize..307_200],
                1..24,
            ),
            seed in proptest::prelude::any::<u64>(),
        ) {
            drive_mixed(&lens, seed)?;
        }
    }
    #[test]
    fn owned_buffer_hands_out_frames_before_an_oversized_header() {
        let mut wire = encode(b"first").unwrap().to_vec();
        wire.extend_from_slice(&encode(b"second").unwrap());
        wire.extend_from_slice(&1000u32.to_be_bytes());
        wire.extend_from_slice(&[0; 10]);
        let mut d = FrameDecoder::new(100);
        let mut got = Vec::new();
        let err = d
            .decode_owned(BytesMut::from(&wire[..]), |f| match f {
                Decoded::Assembled(b) => got.push(b.to_vec()),
                Decoded::InPlace { .. } => panic!("owned input yields owned frames"),
            })
            .unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 1000,
                max: 100
            }
        );
        assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
        // The same bytes through the ring path: the same frames, the same error.
        let mut d = FrameDecoder::new(100);
        let mut ring = Vec::new();
        let e2 = d
            .decode(&wire, |f| match f {
                Decoded::InPlace { start, len } => ring.push(wire[start..start + len].to_vec()),
                Decoded::Assembled(b) => ring.push(b.to_vec()),
            })
            .unwrap_err();
        assert_eq!((ring, e2), (got, err));
    }
}
