//! The allocation observer shared by the frame-decoder fuzz targets: a global allocator that
//! forwards to `System` and, while armed, counts allocations and records the largest one (the
//! fuzz loop is single-threaded). Included with `#[path = "common/alloc.rs"] mod alloc_observer;`.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// `bytes` allocates a small fixed header (`Shared`, 40 bytes on 64-bit) the first time a
/// vector-backed buffer is frozen or split; that is bookkeeping, not frame memory.
pub const BOOKKEEPING: usize = 64;

struct Observing;

pub static ARMED: AtomicBool = AtomicBool::new(false);
pub static ALLOCS: AtomicUsize = AtomicUsize::new(0);
pub static LARGEST: AtomicUsize = AtomicUsize::new(0);

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

/// Runs `f` with the observer armed; returns its result, the number of allocations and the
/// largest one.
pub fn observed<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    ALLOCS.store(0, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
    let r = f();
    ARMED.store(false, Ordering::Relaxed);
    (
        r,
        ALLOCS.load(Ordering::Relaxed),
        LARGEST.load(Ordering::Relaxed),
    )
}
