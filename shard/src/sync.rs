//! The atomics of the cross-thread pieces (`doorbell`, `wake`). Those files name them through
//! `crate::sync::atomic`, so the loom harness in `shard/loom/` can include them by path with
//! its own `sync` module mapping to loom's atomics (see `.ci/loom`).
#![forbid(unsafe_code)]

/// std's atomics (loom's in the harness).
pub(crate) mod atomic {
    pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
}
