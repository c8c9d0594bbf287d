//! Fuzz target `fuzz_length_guard` (spec/TESTS.md §1.4): adversarial byte sequences fed in
//! arbitrary splits to `FrameDecoder` under an arbitrary ceiling. Invariants: never a panic,
//! never a frame above the ceiling, a refused header neither allocates nor grows the buffer, and
//! one `decode` call allocates at most once and at most `4 + ceiling` bytes (or the
//! few bytes of `bytes`' shared header) (observed by a
//! wrapping global allocator).
#![no_main]

use bytes::BytesMut;
use ron_transport::limits::{FrameDecoder, FRAME_HEADER_LEN, MAX_FRAME_CEILING};
use ron_transport::TransportError;

#[path = "common/alloc.rs"]
mod alloc_observer;
use alloc_observer::BOOKKEEPING;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Bytes 0..3: ceiling (mod 1 MiB + 1); byte 3: split-size seed; then the stream.
    if data.len() < 4 {
        return;
    }
    let max =
        u64::from(u32::from_be_bytes([0, data[0], data[1], data[2]])) % (MAX_FRAME_CEILING + 1);
    let mut seed = u32::from(data[3]) | 1;
    let mut stream = &data[4..];
    let mut d = FrameDecoder::new(max);
    let mut buf = BytesMut::new();
    while !stream.is_empty() {
        // Piece sizes 1..=64 from a small LCG: covers byte-by-byte through multi-frame reads.
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((seed >> 16) as usize % 64 + 1).min(stream.len());
        buf.extend_from_slice(&stream[..n]);
        stream = &stream[n..];
        loop {
            let cap = buf.capacity();
            let (r, allocs, largest) = alloc_observer::observed(|| d.decode(&mut buf));
            assert!(allocs <= 1, "{allocs} allocations in one decode");
            assert!(
                largest <= (FRAME_HEADER_LEN + max as usize).max(BOOKKEEPING),
                "allocated {largest}"
            );
            match r {
                Ok(Some(frame)) => assert!(frame.len() as u64 <= max, "frame above ceiling"),
                Ok(None) => break,
                Err(TransportError::TooLarge { len, max: m }) => {
                    assert_eq!(m, max);
                    assert!(len > max);
                    assert_eq!(allocs, 0, "refusal allocated");
                    assert_eq!(buf.capacity(), cap, "refusal reserved memory");
                    return;
                }
                Err(other) => panic!("unexpected error {other:?}"),
            }
        }
    }
});
