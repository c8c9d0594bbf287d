//! A shard's doorbell: how other threads wake a shard that may be asleep in `io_uring_enter`.
//!
//! The shard keeps a read armed on an eventfd; ringing writes it. A write is a syscall, so it
//! is made only when it can matter: while the shard is **parked** (about to wait, or waiting,
//! for completions) and nobody has rung since it last woke. A shard that is running checks its
//! queues before it parks, so a message posted while it runs costs no syscall at all.
//!
//! Ordering (a Dekker pair, both sides `SeqCst`): the poster publishes its message, then reads
//! `parked`; the shard sets `parked`, then re-checks its queues. One of the two sees the other.
#![forbid(unsafe_code)]

use crate::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::fs::File;

use crate::sys;

/// The eventfd doorbell of one shard (shared with every thread that posts to it).
#[derive(Debug)]
pub(crate) struct Doorbell {
    efd: File,
    /// The shard is about to wait or waiting for completions.
    parked: AtomicBool,
    /// A write is outstanding (reset when the shard's eventfd read completes).
    notified: AtomicBool,
    /// Eventfd writes made (for tests and the perf rig's accounting).
    rings: AtomicU64,
}

impl Doorbell {
    /// A doorbell over `efd` (the shard arms reads on a clone of it).
    pub(crate) fn new(efd: File) -> Self {
        Self {
            efd,
            parked: AtomicBool::new(false),
            notified: AtomicBool::new(false),
            rings: AtomicU64::new(0),
        }
    }

    /// Called by a poster after it published its message: wakes the shard if it is parked.
    pub(crate) fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) && !self.notified.swap(true, Ordering::AcqRel) {
            self.rings.fetch_add(1, Ordering::Relaxed);
            sys::eventfd_notify(&self.efd);
        }
    }

    /// The shard is about to wait. The caller must re-check its queues afterwards and call
    /// [`unpark`](Self::unpark) instead of waiting if any has work.
    pub(crate) fn park(&self) {
        self.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// The shard is running again.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::Relaxed);
    }

    /// The shard's eventfd read completed: the next ring writes again.
    pub(crate) fn rearmed(&self) {
        self.notified.store(false, Ordering::Release);
    }

    /// Eventfd writes made so far.
    pub(crate) fn rings(&self) -> u64 {
        self.rings.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn rings_only_while_parked_and_once_per_wake() {
        let bell = Doorbell::new(sys::eventfd().expect("eventfd"));
        bell.ring();
        bell.ring();
        assert_eq!(bell.rings(), 0, "a running shard is not woken");
        bell.park();
        bell.ring();
        bell.ring();
        assert_eq!(bell.rings(), 1, "one write per park, however many posters");
        bell.unpark();
        bell.rearmed();
        bell.ring();
        assert_eq!(bell.rings(), 1);
        bell.park();
        bell.ring();
        assert_eq!(bell.rings(), 2, "re-armed: the next park is woken again");
    }
}
