//! The inflate guard (spec/IDB I-8b, spec/INTEROP §4.3): decompression may expand at most 8x
//! the compressed size and never beyond the absolute bound of 8 × `max_frame_bytes`
//! (INTEROP §4.3: inflated ≤ 8 × 1 MiB is fine, above is `413 FrameTooLarge`, our
//! [`TransportError::TooLarge`]).
//!
//! Two layers:
//! - [`InflateGuard::inflate`] drives a real codec (flate2's [`flate2::Decompress`], zlib-wrapped
//!   RFC 1950 streams by default, raw RFC 1951 deflate with [`Codec::RawDeflate`]) into an output
//!   buffer that never grows beyond the budget; decompression stops the moment one byte more
//!   than the budget would be produced.
//! - [`GuardedReader`] bounds *any* `std::io::Read` decoder the same way, so the property
//!   "cannot produce more than 8× expansion" does not depend on which codec sits underneath.
//!
//! Pure and clock-free; counts no metrics (the engine counts `rejected_total{reason="too_large"}`).

use std::io::{self, Read};

use bytes::Bytes;
use flate2::{Decompress, FlushDecompress, Status};

use crate::error::TransportError;

/// Fixed maximum inflation ratio. Not configurable.
pub const INFLATE_RATIO_MAX: u64 = 8;

/// The compressed stream format [`InflateGuard::inflate`] decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Codec {
    /// zlib (RFC 1950: 2-byte header, deflate body, Adler-32 trailer). The default.
    #[default]
    Zlib,
    /// Raw deflate (RFC 1951, no header or trailer).
    RawDeflate,
}

/// Bounds a decompressor's output to `min(8 × compressed_len, 8 × max_frame_bytes)`.
#[derive(Clone, Copy, Debug)]
pub struct InflateGuard {
    max_frame_bytes: u64,
}

impl InflateGuard {
    /// A guard for frames of at most `max_frame_bytes` (the absolute output bound is
    /// `8 × max_frame_bytes`).
    pub fn new(max_frame_bytes: u64) -> Self {
        Self { max_frame_bytes }
    }

    /// The absolute output bound, `8 × max_frame_bytes`.
    pub fn absolute_max(&self) -> u64 {
        self.max_frame_bytes.saturating_mul(INFLATE_RATIO_MAX)
    }

    /// The output budget for `compressed_len` input bytes:
    /// `min(8 × compressed_len, 8 × max_frame_bytes)`.
    pub fn budget(&self, compressed_len: usize) -> u64 {
        (compressed_len as u64)
            .saturating_mul(INFLATE_RATIO_MAX)
            .min(self.absolute_max())
    }

    /// Decompresses one complete `compressed` payload. `TooLarge { len, max }` as soon as the
    /// output would exceed [`budget`](Self::budget) (`len` is the output produced so far, at
    /// least `max + 1`); nothing beyond the budget is ever allocated. A corrupt or truncated
    /// stream, or trailing bytes after its end, is `Io(InvalidData)`.
    pub fn inflate(&self, compressed: &[u8], codec: Codec) -> Result<Bytes, TransportError> {
        let budget = self.budget(compressed.len());
        // budget ≤ 8 × max_frame_bytes, far below usize::MAX on 64-bit.
        let budget_usize = usize::try_from(budget).unwrap_or(usize::MAX);
        let mut d = Decompress::new(codec == Codec::Zlib);
        // Start modestly and grow (doubling) up to exactly the budget.
        let mut out: Vec<u8> =
            Vec::with_capacity(budget_usize.min(compressed.len().saturating_mul(2).max(256)));
        loop {
            if out.len() == out.capacity() {
                if out.len() == budget_usize {
                    // Full: would the stream produce one more byte?
                    let pos = consumed(&d);
                    return match probe_one_more(&mut d, &compressed[pos..])? {
                        Probe::Ended => finish(&d, compressed, out),
                        Probe::More => Err(TransportError::TooLarge {
                            len: out.len() as u64 + 1,
                            max: budget,
                        }),
                    };
                }
                let grow = out.capacity().max(256).min(budget_usize - out.len());
                out.reserve_exact(grow);
            }
            let before_in = d.total_in();
            let before_out = d.total_out();
            let status = d
                .decompress_vec(&compressed[consumed(&d)..], &mut out, FlushDecompress::None)
                .map_err(invalid)?;
            match status {
                Status::StreamEnd => return finish(&d, compressed, out),
                Status::Ok | Status::BufError => {
                    let progressed = d.total_in() != before_in || d.total_out() != before_out;
                    if !progressed && out.len() < out.capacity() {
                        return Err(invalid_msg("truncated compressed stream"));
                    }
                }
            }
        }
    }
}

enum Probe {
    Ended,
    More,
}

fn consumed(d: &Decompress) -> usize {
    // total_in ≤ input length, which is a usize.
    usize::try_from(d.total_in()).unwrap_or(usize::MAX)
}

/// Runs the decompressor into a 1-byte scratch buffer to learn whether output continues.
fn probe_one_more(d: &mut Decompress, input: &[u8]) -> Result<Probe, TransportError> {
    let mut input = input;
    loop {
        let mut one = [0u8; 1];
        let before_in = d.total_in();
        let before_out = d.total_out();
        let status = d
            .decompress(input, &mut one, FlushDecompress::None)
            .map_err(invalid)?;
        if d.total_out() != before_out {
            return Ok(Probe::More);
        }
        if status == Status::StreamEnd {
            return Ok(Probe::Ended);
        }
        let used = usize::try_from(d.total_in() - before_in).unwrap_or(input.len());
        if used == 0 {
            return Err(invalid_msg("truncated compressed stream"));
        }
        input = &input[used.min(input.len())..];
    }
}

fn finish(d: &Decompress, compressed: &[u8], out: Vec<u8>) -> Result<Bytes, TransportError> {
    if consumed(d) != compressed.len() {
        return Err(invalid_msg("trailing bytes after the compressed stream"));
    }
    Ok(Bytes::from(out))
}

fn invalid(e: flate2::DecompressError) -> TransportError {
    TransportError::Io(io::Error::new(io::ErrorKind::InvalidData, e))
}

fn invalid_msg(msg: &'static str) -> TransportError {
    TransportError::Io(io::Error::new(io::ErrorKind::InvalidData, msg))
}

/// The error a [`GuardedReader`] returns (inside an `io::Error` of kind `InvalidData`) once its
/// inner reader produced more than the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("inflated output exceeds the budget of {budget} bytes")]
pub struct InflateLimitExceeded {
    /// The budget that was exceeded.
    pub budget: u64,
}

/// Bounds any decoder (`std::io::Read` producing decompressed bytes) to a fixed output budget.
///
/// Reads pass through until `budget` bytes have been produced. After that, the guard asks the
/// inner reader for one more byte (into a 1-byte buffer): end of stream is a clean EOF, anything
/// else fails with [`InflateLimitExceeded`] — and so does every later read. The caller's buffers
/// are handed down truncated to the remaining budget, so the inner decoder can never write more
/// than the budget into them.
#[derive(Debug)]
pub struct GuardedReader<R> {
    inner: R,
    budget: u64,
    produced: u64,
    exceeded: bool,
}

impl<R: Read> GuardedReader<R> {
    /// Guards `inner` with an explicit output budget.
    pub fn with_budget(inner: R, budget: u64) -> Self {
        Self {
            inner,
            budget,
            produced: 0,
            exceeded: false,
        }
    }

    /// Guards `inner` decoding `compressed_len` bytes under `guard`'s 8× rule.
    pub fn new(inner: R, guard: &InflateGuard, compressed_len: usize) -> Self {
        Self::with_budget(inner, guard.budget(compressed_len))
    }

    /// Bytes produced so far (never more than the budget).
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// The budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn exceeded_error(&mut self) -> io::Error {
        self.exceeded = true;
        io::Error::new(
            io::ErrorKind::InvalidData,
            InflateLimitExceeded {
                budget: self.budget,
            },
        )
    }

    /// Reads everything, returning the output or `TooLarge { len: budget + 1, max: budget }`.
    /// The output buffer never grows beyond the budget. Other I/O errors map to `Io`.
    pub fn read_to_end_bounded(mut self) -> Result<Vec<u8>, TransportError> {
        let budget = usize::try_from(self.budget).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(budget.min(64 * 1024));
        let mut chunk = [0u8; 8 * 1024];
        loop {
            match self.read(&mut chunk) {
                Ok(0) => return Ok(out),
                Ok(n) => {
                    if out.capacity() - out.len() < n {
                        let want = out.capacity().max(n).min(budget - out.len());
                        out.reserve_exact(want.max(n));
                    }
                    out.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(if self.exceeded {
                        TransportError::TooLarge {
                            len: self.budget.saturating_add(1),
                            max: self.budget,
                        }
                    } else {
                        TransportError::Io(e)
                    })
                }
            }
        }
    }
}

impl<R: Read> Read for GuardedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.exceeded {
            return Err(self.exceeded_error());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let remaining = self.budget - self.produced;
        if remaining == 0 {
            let mut one = [0u8; 1];
            return loop {
                match self.inner.read(&mut one) {
                    Ok(0) => break Ok(0),
                    Ok(_) => break Err(self.exceeded_error()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Err(e),
                }
            };
        }
        let limit = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..limit])?;
        // A well-behaved reader returns ≤ limit; clamp a misbehaving one.
        let n = n.min(limit);
        self.produced += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, ZlibEncoder};
    use flate2::Compression;
    use std::io::Write;

    const MIB: u64 = 1024 * 1024;

    /// Deterministic incompressible bytes (xorshift64*).
    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn budget_rule() {
        let g = InflateGuard::new(MIB);
        assert_eq!(g.absolute_max(), 8 * MIB);
        assert_eq!(g.budget(100), 800);
        assert_eq!(g.budget(2 * MIB as usize), 8 * MIB);
    }

    #[test]
    fn roundtrip_within_ratio() {
        let g = InflateGuard::new(MIB);
        // Incompressible-ish data: ratio ≈ 1.
        let data = noise(50_000);
        let c = zlib(&data);
        assert_eq!(&g.inflate(&c, Codec::Zlib).unwrap()[..], &data[..]);
        let c = raw(&data);
        assert_eq!(&g.inflate(&c, Codec::RawDeflate).unwrap()[..], &data[..]);
        assert!(
            g.inflate(b"", Codec::Zlib).is_err(),
            "empty input is truncated"
        );
    }

    #[test]
    fn bomb_rejected() {
        let g = InflateGuard::new(MIB);
        let data = vec![0u8; 1 << 20];
        let c = zlib(&data);
        assert!(c.len() * 8 < data.len());
        let err = g.inflate(&c, Codec::Zlib).unwrap_err();
        let budget = g.budget(c.len());
        assert!(
            matches!(err, TransportError::TooLarge { len, max } if max == budget && len == budget + 1)
        );
        assert_eq!(err.kind(), "too_large");
    }

    /// Output of exactly 8× the compressed length passes; one byte more is refused.
    #[test]
    fn exactly_eight_times_edge() {
        let g = InflateGuard::new(MIB);
        let prefix = noise(600);
        let stream = |zeros: usize| {
            let mut d = prefix.clone();
            d.resize(prefix.len() + zeros, 0);
            (zlib(&d), d)
        };
        // Fixed-point search for `zeros` with output == 8 × compressed and a compressed size
        // that does not change with one more zero.
        let mut k = 0usize;
        let mut found = None;
        for _ in 0..64 {
            let (c, _) = stream(k);
            let target = 8 * c.len() - prefix.len();
            if target == k {
                let (c1, _) = stream(k + 1);
                if c1.len() == c.len() {
                    found = Some(k);
                    break;
                }
                k += 1;
            } else {
                k = target;
            }
        }
        let k = found.expect("an exact 8x stream exists near the fixed point");
        let (c, d) = stream(k);
        assert_eq!(d.len(), 8 * c.len());
        assert_eq!(&g.inflate(&c, Codec::Zlib).unwrap()[..], &d[..]);
        let (c, d) = stream(k + 1);
        assert_eq!(d.len(), 8 * c.len() + 1);
        let err = g.inflate(&c, Codec::Zlib).unwrap_err();
        assert!(
            matches!(err, TransportError::TooLarge { len, max } if max == 8 * c.len() as u64 && len == max + 1)
        );
    }

    #[test]
    fn generic_guard_edge() {
        let inner = io::repeat(7).take(80);
        let out = GuardedReader::with_budget(inner, 80)
            .read_to_end_bounded()
            .unwrap();
        assert_eq!(out.len(), 80);
        let inner = io::repeat(7).take(81);
        let err = GuardedReader::with_budget(inner, 80)
            .read_to_end_bounded()
            .unwrap_err();
        assert!(matches!(err, TransportError::TooLarge { len: 81, max: 80 }));
        // A real codec behind the generic guard.
        let c = zlib(&[0u8; 100_000]);
        let dec = flate2::read::ZlibDecoder::new(&c[..]);
        let g = InflateGuard::new(MIB);
        let err = GuardedReader::new(dec, &g, c.len())
            .read_to_end_bounded()
            .unwrap_err();
        assert_eq!(err.kind(), "too_large");
    }

    #[test]
    fn corrupt_and_trailing_rejected() {
        let g = InflateGuard::new(MIB);
        let mut c = zlib(b"hello hello hello hello");
        c.push(0);
        assert_eq!(g.inflate(&c, Codec::Zlib).unwrap_err().kind(), "io");
        assert_eq!(
            g.inflate(&[0x78, 0x9c, 0xff, 0xff, 0xff], Codec::Zlib)
                .unwrap_err()
                .kind(),
            "io"
        );
        let c = zlib(b"hello hello hello hello");
        assert_eq!(
            g.inflate(&c[..c.len() - 2], Codec::Zlib)
                .unwrap_err()
                .kind(),
            "io"
        );
    }
}
