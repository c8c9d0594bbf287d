//! The frame codec: a u32 big-endian length followed by that many payload bytes (OAP/1's `len`).
//!
//! [`FrameDecoder`] is the pre-read length guard of spec/IDB I-8: the announced length is checked
//! against the ceiling as soon as the 4 header bytes are present, and a too-long frame is refused
//! *before* a single byte is reserved for its body. The decoder is pure: it neither reads a clock
//! nor counts metrics — the engine that receives `Err(TooLarge)` counts
//! `rejected_total{reason="too_large"}` and closes the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::TransportError;

/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;
/// The absolute frame ceiling (OAP/1): 1 MiB.
pub const MAX_FRAME_CEILING: u64 = 1024 * 1024;

/// Appends `payload` to `out` as one frame. Fails with `TooLarge` if `payload.len() > max`
/// (or above `u32::MAX`, which no valid ceiling allows); `out` is untouched on failure.
/// A zero-length payload is a valid frame.
pub fn encode_frame(out: &mut BytesMut, payload: &[u8], max: u64) -> Result<(), TransportError> {
    let len = payload.len() as u64;
    if len > max || len > u64::from(u32::MAX) {
        return Err(TransportError::TooLarge { len, max });
    }
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.put_u32(len as u32);
    out.extend_from_slice(payload);
    Ok(())
}

/// The frame header for a payload of `len` bytes, or `TooLarge` above `max`.
/// For writers that send header and payload as separate (zero-copy) segments.
pub fn frame_header(len: usize, max: u64) -> Result<[u8; FRAME_HEADER_LEN], TransportError> {
    let l = len as u64;
    if l > max || l > u64::from(u32::MAX) {
        return Err(TransportError::TooLarge { len: l, max });
    }
    Ok((len as u32).to_be_bytes())
}

/// Incremental decoder. Feed it a read buffer; it yields every complete frame in it and
/// rejects an announced length above `max` as soon as the 4 header bytes are seen, before
/// reserving any memory for the body.
///
/// Memory discipline: when a frame's body is only partly present, `decode` makes sure `buf` can
/// hold the rest of *that* frame and no more — it reclaims already-consumed space if possible
/// and otherwise allocates exactly `4 + len` bytes (never `Vec`-style doubling), so a buffer's
/// capacity is bounded by `max(capacity before, 4 + max)`.
///
/// Metrics: the decoder counts nothing. Engines count `rejected_total{reason="too_large"}` on
/// `Err(TooLarge)`.
#[derive(Debug)]
pub struct FrameDecoder {
    max: u64,
    /// Body length of the frame whose header (still at the front of the buffer) was already
    /// accepted; lets `set_max` apply from the *next* header only.
    accepted: Option<usize>,
}

impl FrameDecoder {
    /// A decoder with ceiling `max` (clamped to ≤ [`MAX_FRAME_CEILING`]).
    pub fn new(max: u64) -> Self {
        Self {
            max: max.min(MAX_FRAME_CEILING),
            accepted: None,
        }
    }

    /// The current ceiling.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Changes the ceiling (live reload; clamped to ≤ [`MAX_FRAME_CEILING`]). Applies from the
    /// next frame header: a frame whose header was already accepted completes under the old one.
    pub fn set_max(&mut self, max: u64) {
        self.max = max.min(MAX_FRAME_CEILING);
    }

    /// Takes the next complete frame payload out of `buf`, if one is there (zero-copy: the
    /// payload is split off `buf` and frozen).
    /// `Ok(None)`: need more bytes. `Err(TooLarge)`: the announced length exceeds the ceiling;
    /// the stream is unusable afterwards (the caller closes the connection).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, TransportError> {
        let len = match self.accepted {
            Some(len) => len,
            None => {
                if buf.len() < FRAME_HEADER_LEN {
                    return Ok(None);
                }
                let announced = u64::from(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                if announced > self.max {
                    return Err(TransportError::TooLarge {
                        len: announced,
                        max: self.max,
                    });
                }
                // announced ≤ max ≤ 1 MiB, so it fits any usize.
                let len = announced as usize;
                self.accepted = Some(len);
                len
            }
        };
        let needed = FRAME_HEADER_LEN + len;
        if buf.len() >= needed {
            self.accepted = None;
            buf.advance(FRAME_HEADER_LEN);
            return Ok(Some(buf.split_to(len).freeze()));
        }
        Self::ensure_room(buf, needed);
        Ok(None)
    }

    /// True if `buf` holds a partially received frame (header or body started).
    pub fn in_progress(&self, buf: &BytesMut) -> bool {
        self.accepted.is_some() || !buf.is_empty()
    }

    /// Makes `buf` able to hold `needed` bytes in total (it currently holds fewer, all of them
    /// belonging to the frame in progress) without over-allocating.
    fn ensure_room(buf: &mut BytesMut, needed: usize) {
        if buf.capacity() >= needed {
            return;
        }
        let missing = needed - buf.len();
        if buf.try_reclaim(missing) {
            return;
        }
        let mut exact = BytesMut::with_capacity(needed);
        exact.extend_from_slice(buf);
        *buf = exact;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        encode_frame(&mut b, payload, MAX_FRAME_CEILING).unwrap();
        b
    }

    #[test]
    fn encode_layout_and_limit() {
        let b = frame(b"abc");
        assert_eq!(&b[..], &[0, 0, 0, 3, b'a', b'b', b'c']);
        let mut out = BytesMut::new();
        let err = encode_frame(&mut out, &[0u8; 11], 10).unwrap_err();
        assert!(matches!(err, TransportError::TooLarge { len: 11, max: 10 }));
        assert_eq!(err.kind(), "too_large");
        assert!(out.is_empty(), "nothing written on failure");
        encode_frame(&mut out, &[0u8; 10], 10).unwrap();
        assert_eq!(out.len(), 14);
        assert_eq!(frame_header(5, 10).unwrap(), [0, 0, 0, 5]);
        assert!(frame_header(11, 10).is_err());
    }

    #[test]
    fn decodes_multiple_and_empty_frames() {
        let mut b = frame(b"one");
        b.extend_from_slice(&frame(b""));
        b.extend_from_slice(&frame(b"three"));
        let mut d = FrameDecoder::new(MAX_FRAME_CEILING);
        assert_eq!(d.decode(&mut b).unwrap().unwrap(), &b"one"[..]);
        assert_eq!(d.decode(&mut b).unwrap().unwrap(), &b""[..]);
        assert_eq!(d.decode(&mut b).unwrap().unwrap(), &b"three"[..]);
        assert_eq!(d.decode(&mut b).unwrap(), None);
        assert!(!d.in_progress(&b));
    }

    #[test]
    fn byte_by_byte() {
        let src = frame(b"hello world");
        let mut d = FrameDecoder::new(64);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &byte in src.iter() {
            buf.put_u8(byte);
            if let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![Bytes::from_static(b"hello world")]);
    }

    #[test]
    fn too_large_rejected_before_reserving() {
        let mut d = FrameDecoder::new(1024);
        let mut buf = BytesMut::with_capacity(4);
        buf.extend_from_slice(&(1025u32).to_be_bytes());
        let cap = buf.capacity();
        let err = d.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            TransportError::TooLarge {
                len: 1025,
                max: 1024
            }
        ));
        assert_eq!(buf.capacity(), cap, "no reservation for a refused frame");
        // u32::MAX announced, far above the ceiling.
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            FrameDecoder::new(MAX_FRAME_CEILING).decode(&mut buf),
            Err(TransportError::TooLarge {
                len: 4_294_967_295,
                max: 1_048_576
            })
        ));
        // Exactly the ceiling is fine.
        let mut buf = BytesMut::from(&(1024u32).to_be_bytes()[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(d.in_progress(&buf));
    }

    #[test]
    fn partial_body_reserves_exactly_the_frame() {
        let mut d = FrameDecoder::new(MAX_FRAME_CEILING);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(100_000u32).to_be_bytes());
        buf.extend_from_slice(&[7u8; 10]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(buf.capacity(), 100_004);
        assert_eq!(buf.len(), 14);
        buf.extend_from_slice(&[7u8; 99_990]);
        assert_eq!(buf.capacity(), 100_004, "no regrowth while filling");
        let f = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.len(), 100_000);
        assert!(buf.is_empty());
    }

    #[test]
    fn set_max_applies_from_next_header() {
        let mut d = FrameDecoder::new(100);
        let mut buf = frame(&[1u8; 80]);
        let tail = buf.split_off(40);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        d.set_max(50);
        buf.unsplit(tail);
        assert_eq!(d.decode(&mut buf).unwrap().unwrap().len(), 80);
        let mut buf = frame(&[1u8; 80]);
        assert!(d.decode(&mut buf).is_err());
        d.set_max(u64::MAX);
        assert_eq!(d.max(), MAX_FRAME_CEILING);
    }
}
