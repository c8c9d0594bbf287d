//! Rate limits (spec/IDB I-12): lock-free token buckets taking `now` as an argument, and the
//! set of buckets an engine consults (per connection, per peer, global ingress, global egress;
//! a rate of 0 disables a bucket).
//!
//! NOTE(skeleton): the helper that owns `src/rate.rs` replaces the `todo!()`s.

use std::time::Duration;

/// A lock-free token bucket (bytes per second). `now_ns` is monotonic nanoseconds from any
/// fixed origin chosen by the caller; the bucket never reads a clock.
#[derive(Debug)]
pub struct TokenBucket {
    _private: (),
}

impl TokenBucket {
    /// A bucket refilling at `rate` bytes/s holding at most `burst` bytes. `rate == 0` disables
    /// it (every request passes).
    pub fn new(rate: u64, burst: u64) -> Self {
        let _ = (rate, burst);
        todo!("rate helper")
    }

    /// Takes `n` tokens if available. Never blocks.
    pub fn try_consume(&self, n: u64, now_ns: u64) -> bool {
        let _ = (n, now_ns);
        todo!("rate helper")
    }

    /// Takes `n` tokens, going into debt if needed, and returns how long the caller must wait
    /// before acting so that the long-run rate holds (zero if none). Used for pacing.
    pub fn consume_paced(&self, n: u64, now_ns: u64) -> Duration {
        let _ = (n, now_ns);
        todo!("rate helper")
    }
}
