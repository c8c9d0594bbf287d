//! A connection's wake word: the bits other threads ask its handler to be woken with, and
//! whether the connection already sits in its shard's wake queue. Lock-free, one word per
//! connection; model-checked with loom (`shard/loom`, `.ci/loom`): no bit is ever lost and a
//! connection is queued at most once at a time.
#![forbid(unsafe_code)]

use crate::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Bits OR-ed by any thread, taken by the owning shard.
#[derive(Debug, Default)]
pub(crate) struct WakeWord {
    bits: AtomicU32,
    queued: AtomicBool,
}

impl WakeWord {
    /// ORs `bits` in. True if the caller must put the connection in the shard's wake queue
    /// (it was not queued); the queue push must be followed by ringing the shard's doorbell.
    pub(crate) fn post(&self, bits: u32) -> bool {
        self.bits.fetch_or(bits, Ordering::SeqCst);
        !self.queued.swap(true, Ordering::SeqCst)
    }

    /// The shard took the connection from its wake queue: clears `queued`, then takes every
    /// bit posted so far. A post racing with this either lands in the bits taken here or
    /// finds `queued` clear and queues the connection again (a later take, maybe of no bits).
    ///
    /// Both sides are `SeqCst` (this used to be a Release store and AcqRel RMWs): under the
    /// C++ memory model a post's `queued.swap` may then read `true` (ordered before the clear)
    /// while this `bits.swap` misses its `fetch_or`, leaving the bit behind with nothing
    /// queued — a lost wake-up on weakly ordered hardware (x86's locked RMWs drain the store
    /// buffer, so not there). loom's RMWs always read the latest value, so its model checks the
    /// protocol but cannot show this case either way.
    pub(crate) fn take(&self) -> u32 {
        self.queued.store(false, Ordering::SeqCst);
        self.bits.swap(0, Ordering::SeqCst)
    }
}
