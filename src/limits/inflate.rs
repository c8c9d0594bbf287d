//! The inflate guard (spec/IDB I-8b, spec/INTEROP §4.3): decompression may expand at most 8x
//! the compressed size and never beyond the absolute frame ceiling.

/// Fixed maximum inflation ratio. Not configurable.
pub const INFLATE_RATIO_MAX: u64 = 8;

/// Bounds a decompressor's output.
#[derive(Debug)]
pub struct InflateGuard {
    _private: (),
}

impl InflateGuard {
    /// Placeholder constructor; the limits helper defines the real API.
    pub fn new() -> Self {
        Self { _private: () }
    }
}

impl Default for InflateGuard {
    fn default() -> Self {
        Self::new()
    }
}
