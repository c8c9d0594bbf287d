//! The frame codec: a u32 big-endian length followed by that many payload bytes.

use bytes::{Bytes, BytesMut};

use crate::error::TransportError;

/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;
/// The absolute frame ceiling (OAP/1): 1 MiB.
pub const MAX_FRAME_CEILING: u64 = 1024 * 1024;

/// Appends `payload` to `out` as one frame. Fails with `TooLarge` if `payload.len() > max`.
pub fn encode_frame(out: &mut BytesMut, payload: &[u8], max: u64) -> Result<(), TransportError> {
    let _ = (out, payload, max);
    todo!("limits helper")
}

/// Incremental decoder. Feed it a read buffer; it yields every complete frame in it and
/// rejects an announced length above `max` as soon as the 4 header bytes are seen, before
/// reserving any memory for the body.
#[derive(Debug)]
pub struct FrameDecoder {
    max: u64,
}

impl FrameDecoder {
    /// A decoder with ceiling `max` (≤ [`MAX_FRAME_CEILING`]).
    pub fn new(max: u64) -> Self {
        Self { max }
    }

    /// Changes the ceiling (live reload). Applies from the next frame header.
    pub fn set_max(&mut self, max: u64) {
        self.max = max;
    }

    /// Takes the next complete frame payload out of `buf`, if one is there.
    /// `Ok(None)`: need more bytes. `Err(TooLarge)`: the announced length exceeds the ceiling.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, TransportError> {
        let _ = buf;
        todo!("limits helper")
    }

    /// True if `buf` holds a partially received frame (header or body started).
    pub fn in_progress(&self, buf: &BytesMut) -> bool {
        !buf.is_empty()
    }
}
