//! Fuzz target `fuzz_length_guard` (spec/TESTS.md §1.4): adversarial byte sequences fed in
//! arbitrary splits to `FrameDecoder` under an arbitrary ceiling. Invariants: never a panic,
//! never a frame above the ceiling, a refused header neither allocates nor grows the buffer, and
//! one `decode` call allocates at most once and at most `4 + ceiling` bytes (or the
//! few bytes of `bytes`' shared header) (observed by a
//! wrapping global allocator).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::BytesMut;
use ron_transport::limits::{FrameDecoder, FRAME_HEADER_LEN, MAX_FRAME_CEILING};
use ron_transport::TransportError;

/// `bytes` allocates a small fixed header (`Shared`, 40 bytes on 64-bit) the first time a
/// vector-backed `BytesMut` is split; that is bookkeeping, not buffer memory.
const BOOKKEEPING: usize = 64;

/// Records allocations while armed (the fuzz loop is single-threaded).
struct Observing;

static ARMED: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    if ARMED.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is exactly `System`'s; `note` only touches atomics (no allocation).
unsafe impl GlobalAlloc for Observing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded verbatim; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded verbatim; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded verbatim; `ptr` was allocated by `System` via this wrapper.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded verbatim; `ptr` was allocated by `System` via this wrapper.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Observing = Observing;

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
            ALLOCS.store(0, Ordering::Relaxed);
            LARGEST.store(0, Ordering::Relaxed);
            ARMED.store(true, Ordering::Relaxed);
            let r = d.decode(&mut buf);
            ARMED.store(false, Ordering::Relaxed);
            let allocs = ALLOCS.load(Ordering::Relaxed);
            let largest = LARGEST.load(Ordering::Relaxed);
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
