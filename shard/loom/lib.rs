//! loom models of ron-shard's cross-thread pieces (issue 12 item 10), on the real code where it
//! is lock-free and self-contained (included by path) and on a faithful replica where the real
//! code is tangled with the shard loop (the inbox push protocol of `port.rs`, named as such).
//!
//! - `doorbell`: a message posted while the shard parks is never left without an eventfd
//!   write (no lost wake-up), with one or two posters.
//! - `wake`: bits posted by two threads to one connection are all delivered, and the connection
//!   sits in its shard's wake queue at most once at a time.
//! - `inbox`: off-shard senders pushing into a bounded writer inbox under its lock, the
//!   lock-free length hint the shard reads, and the wake word: every accepted frame is taken,
//!   `Busy` only when the inbox was full, the hint matches the inbox when all is done.
//! - `balance`: the accept balancer's hand-off accounting while target shards adopt
//!   concurrently and one hand-off is refused (undo): the books balance.
#![cfg(loom)]
#![allow(dead_code)]

mod sync {
    pub(crate) mod atomic {
        pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
    }
}

mod sys {
    /// The eventfd write is counted by the doorbell itself (`rings`); nothing to do here.
    pub(crate) fn eventfd_notify(_efd: &std::fs::File) {}
}

#[path = "../src/balance.rs"]
mod balance;
#[path = "../src/doorbell.rs"]
mod doorbell;
#[path = "../src/wake.rs"]
mod wake;

#[cfg(test)]
mod models;
