//! Length-prefixed frame decoding (u32 big-endian length, then the payload), sans-IO.
//!
//! [`FrameDecoder`] consumes received chunks and reports each complete frame either *in place*
//! (an offset range inside the chunk, so a frame that arrived whole in one receive buffer is
//! never copied) or *assembled* (a frame that spanned chunks, copied once into an exact-size
//! buffer allocated only after its length passed the ceiling check). It owns no socket, no
//! clock and no policy beyond the ceiling it is given.
#![forbid(unsafe_code)]

use bytes::{Bytes, BytesMut};

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
    /// Collecting a payload that spans chunks.
    Body { buf: BytesMut, need: usize },
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
                State::Body { buf, need } => {
                    let take = (*need - buf.len()).min(chunk.len() - pos);
                    buf.extend_from_slice(&chunk[pos..pos + take]);
                    pos += take;
                    if buf.len() == *need {
                        let frame = std::mem::take(buf).freeze();
                        self.reset();
                        out(Decoded::Assembled(frame));
                    }
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
            // Exact-size allocation, only after the ceiling check.
            let mut buf = BytesMut::with_capacity(len);
            buf.extend_from_slice(&chunk[pos..]);
            self.state = State::Body { buf, need: len };
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
}
