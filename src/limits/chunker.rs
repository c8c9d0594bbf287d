//! The write chunker: splits a byte stream into chunks of at most `chunk_bytes`
//! (spec/IDB I-8: stream in ~64 KiB chunks), and the [`WriteCoalescer`] that turns queued frames
//! into write-sized chunks (small frames are copied together, large payloads are split
//! zero-copy).

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::TransportError;
use crate::limits::frame::{frame_header, FRAME_HEADER_LEN};

/// Splits `Bytes` into zero-copy chunks of at most `chunk_bytes` each; their concatenation is
/// the input. Every chunk but the last is exactly `chunk_bytes` long; empty input yields no
/// chunk.
#[derive(Debug, Clone, Copy)]
pub struct Chunker {
    chunk_bytes: usize,
}

impl Chunker {
    /// A chunker with the given target (must be > 0; 0 is treated as 1).
    pub fn new(chunk_bytes: usize) -> Self {
        Self {
            chunk_bytes: chunk_bytes.max(1),
        }
    }

    /// The chunk size.
    pub fn chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    /// Iterates over the chunks of `data`.
    pub fn chunks(&self, data: Bytes) -> impl Iterator<Item = Bytes> {
        Chunks {
            rest: data,
            chunk_bytes: self.chunk_bytes,
        }
    }
}

/// Iterator returned by [`Chunker::chunks`].
#[derive(Debug)]
struct Chunks {
    rest: Bytes,
    chunk_bytes: usize,
}

impl Iterator for Chunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.rest.is_empty() {
            return None;
        }
        let n = self.chunk_bytes.min(self.rest.len());
        Some(self.rest.split_to(n))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.rest.len().div_ceil(self.chunk_bytes);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Chunks {}

/// Turns queued frames into a byte stream of write-sized chunks (each ≤ `chunk_bytes`).
///
/// Frames are appended with [`WriteCoalescer::push_frame`] (header added here). Bytes that fit
/// in the current chunk are copied into a staging buffer so that many small frames become one
/// write; a payload larger than a chunk first tops up the staging chunk, then its middle is
/// emitted zero-copy in `chunk_bytes` slices, and its tail (< `chunk_bytes`) starts the next
/// staging chunk. Copying is therefore bounded by `2 × chunk_bytes` per frame, whatever its size.
/// The concatenation of all chunks equals the concatenation of the encoded frames.
#[derive(Debug)]
pub struct WriteCoalescer {
    chunk_bytes: usize,
    staging: BytesMut,
    ready: VecDeque<Bytes>,
    queued: usize,
}

impl WriteCoalescer {
    /// A coalescer producing chunks of at most `chunk_bytes` (0 is treated as 1).
    pub fn new(chunk_bytes: usize) -> Self {
        Self {
            chunk_bytes: chunk_bytes.max(1),
            staging: BytesMut::new(),
            ready: VecDeque::new(),
            queued: 0,
        }
    }

    /// Bytes queued (headers included) and not yet taken out.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Appends one frame (`u32` BE length + `payload`). `TooLarge` if `payload.len() > max`;
    /// nothing is queued then.
    pub fn push_frame(&mut self, payload: Bytes, max: u64) -> Result<(), TransportError> {
        let header = frame_header(payload.len(), max)?;
        self.queued += FRAME_HEADER_LEN + payload.len();
        self.stage(&header);
        let mut payload = payload;
        // Top up the current staging chunk by copying.
        let room = self.chunk_bytes - self.staging.len();
        let head = payload.split_to(room.min(payload.len()));
        self.stage(&head);
        // Whole chunks go out zero-copy; the tail is staged.
        while payload.len() >= self.chunk_bytes {
            self.ready.push_back(payload.split_to(self.chunk_bytes));
        }
        self.stage(&payload);
        Ok(())
    }

    /// Copies `data` (which fits in the room left, or spills into fresh chunks) into staging.
    fn stage(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.staging.capacity() == 0 {
                self.staging.reserve(self.chunk_bytes);
            }
            let room = self.chunk_bytes - self.staging.len();
            let n = room.min(data.len());
            self.staging.put_slice(&data[..n]);
            data = &data[n..];
            if self.staging.len() == self.chunk_bytes {
                let full = self.staging.split().freeze();
                self.ready.push_back(full);
            }
        }
    }

    /// The next chunk to write, including a partially filled staging chunk (a flush).
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        let chunk = match self.ready.pop_front() {
            Some(c) => c,
            None if !self.staging.is_empty() => self.staging.split().freeze(),
            None => return None,
        };
        self.queued -= chunk.len();
        Some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::frame::{FrameDecoder, MAX_FRAME_CEILING};

    #[test]
    fn chunks_cover_input() {
        let c = Chunker::new(4);
        let data = Bytes::from_static(b"0123456789");
        let chunks: Vec<Bytes> = c.chunks(data.clone()).collect();
        assert_eq!(chunks, [&b"0123"[..], &b"4567"[..], &b"89"[..]]);
        assert_eq!(c.chunks(Bytes::new()).count(), 0);
        assert_eq!(Chunker::new(0).chunks(data.clone()).count(), 10);
        // Zero-copy: chunks point into the input.
        let first = c.chunks(data.clone()).next().unwrap();
        assert_eq!(first.as_ptr(), data.as_ptr());
    }

    #[test]
    fn coalescer_roundtrips_through_decoder() {
        let mut w = WriteCoalescer::new(64 * 1024);
        let sizes = [0usize, 1, 100, 70_000, 3, 200_000, 65_532, 65_536];
        for (i, &n) in sizes.iter().enumerate() {
            w.push_frame(Bytes::from(vec![i as u8; n]), MAX_FRAME_CEILING)
                .unwrap();
        }
        let total: usize = sizes.iter().map(|n| n + 4).sum();
        assert_eq!(w.queued_bytes(), total);
        let mut stream = BytesMut::new();
        while let Some(c) = w.next_chunk() {
            assert!(!c.is_empty() && c.len() <= 64 * 1024);
            stream.extend_from_slice(&c);
        }
        assert!(w.is_empty());
        assert_eq!(stream.len(), total);
        let mut d = FrameDecoder::new(MAX_FRAME_CEILING);
        for (i, &n) in sizes.iter().enumerate() {
            let f = d.decode(&mut stream).unwrap().unwrap();
            assert_eq!(f.len(), n);
            assert!(f.iter().all(|&b| b == i as u8));
        }
        assert!(stream.is_empty());
        assert!(w.push_frame(Bytes::from(vec![0; 11]), 10).is_err());
        assert!(w.is_empty());
    }
}
