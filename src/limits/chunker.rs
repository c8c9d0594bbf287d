//! The write chunker: splits a byte stream into chunks of at most `chunk_bytes`.

use bytes::Bytes;

/// Splits `Bytes` into zero-copy chunks of at most `chunk_bytes` each; their concatenation is
/// the input.
#[derive(Debug, Clone, Copy)]
pub struct Chunker {
    chunk_bytes: usize,
}

impl Chunker {
    /// A chunker with the given target (must be > 0).
    pub fn new(chunk_bytes: usize) -> Self {
        Self { chunk_bytes }
    }

    /// Iterates over the chunks of `data`.
    pub fn chunks(&self, data: Bytes) -> impl Iterator<Item = Bytes> {
        let _ = data;
        let _ = self.chunk_bytes;
        todo!("limits helper");
        #[allow(unreachable_code)]
        std::iter::empty()
    }
}
