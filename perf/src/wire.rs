//! The rig's wire format: frames of a u32 big-endian length followed by that many bytes
//! (the same framing as ron-transport). Owns frame building and the "complete prefix" scan
//! the echo servers use to send every complete frame back whole; does no I/O.

/// Largest payload any rig echo server accepts (ron-transport's `max_frame_bytes` ceiling).
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Bytes of the length prefix.
pub const HEADER: usize = 4;

/// Why a byte stream is not a valid frame stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A length prefix above [`MAX_PAYLOAD`].
    TooLarge(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge(n) => write!(f, "too_large: frame of {n} bytes above {MAX_PAYLOAD}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// The scan result over a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Bytes at the start of the buffer that form complete frames.
    pub complete_bytes: usize,
    /// How many complete frames those are.
    pub frames: usize,
    /// Total size (header + payload) of the first incomplete frame, once its header is known;
    /// the buffer must be able to hold `complete_bytes + this` to finish it.
    pub next_frame_len: Option<usize>,
}

/// Scans `buf` for the longest prefix of complete frames.
pub fn scan(buf: &[u8]) -> Result<Scan, FrameError> {
    let mut off = 0;
    let mut frames = 0;
    loop {
        let rest = &buf[off..];
        if rest.len() < HEADER {
            return Ok(Scan {
                complete_bytes: off,
                frames,
                next_frame_len: None,
            });
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        let total = HEADER + len;
        if rest.len() < total {
            return Ok(Scan {
                complete_bytes: off,
                frames,
                next_frame_len: Some(total),
            });
        }
        off += total;
        frames += 1;
    }
}

/// One frame carrying `payload` bytes of a fixed pattern.
pub fn frame(payload: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + payload);
    v.extend_from_slice(&(payload as u32).to_be_bytes());
    v.extend((0..payload).map(|i| (i % 251) as u8));
    v
}

/// `count` copies of [`frame`]`(payload)` back to back, so a batch goes out in one write.
pub fn frames(payload: usize, count: usize) -> Vec<u8> {
    let one = frame(payload);
    let mut v = Vec::with_capacity(one.len() * count);
    for _ in 0..count {
        v.extend_from_slice(&one);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_complete_prefix_and_next_length() {
        let mut buf = frames(10, 2);
        buf.extend_from_slice(&frame(100)[..7]);
        let s = scan(&buf).unwrap();
        assert_eq!(s.complete_bytes, 28);
        assert_eq!(s.frames, 2);
        assert_eq!(s.next_frame_len, Some(104));
    }

    #[test]
    fn scan_partial_header_and_empty() {
        assert_eq!(
            scan(&[0, 0]).unwrap(),
            Scan {
                complete_bytes: 0,
                frames: 0,
                next_frame_len: None
            }
        );
        assert_eq!(scan(&[]).unwrap().frames, 0);
        let z = scan(&[0, 0, 0, 0]).unwrap();
        assert_eq!((z.complete_bytes, z.frames), (4, 1));
    }

    #[test]
    fn scan_rejects_oversized_length() {
        let len = (MAX_PAYLOAD as u32 + 1).to_be_bytes();
        assert_eq!(scan(&len), Err(FrameError::TooLarge(MAX_PAYLOAD + 1)));
    }

    #[test]
    fn frame_layout() {
        let f = frame(3);
        assert_eq!(f, vec![0, 0, 0, 3, 0, 1, 2]);
        assert_eq!(frames(3, 3).len(), 21);
    }
}
