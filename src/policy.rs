//! Admission and pacing policy shared by every engine: the global and per-peer connection caps
//! and the token buckets (per connection, per peer, global ingress, global egress), checked
//! *before work* — a refused peer costs no TLS handshake and no buffer.
//!
//! NOTE(skeleton): the helper that owns `src/policy.rs` and `src/rate.rs` replaces the `todo!()`s.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigHandle, ValidConfig};
use crate::error::TransportError;
use crate::metrics::TransportMetrics;

/// Monotonic nanoseconds since the first call in this process (the clock fed to buckets).
pub fn now_ns() -> u64 {
    todo!("rate helper")
}

/// The shared policy of one transport instance.
#[derive(Debug)]
pub struct Policy {
    config: ConfigHandle,
    metrics: Arc<TransportMetrics>,
}

impl Policy {
    /// Policy over a live config handle, counting into `metrics`.
    pub fn new(config: ConfigHandle, metrics: Arc<TransportMetrics>) -> Arc<Self> {
        Arc::new(Self { config, metrics })
    }

    /// The current config snapshot.
    pub fn config(&self) -> Arc<ValidConfig> {
        self.config.load()
    }

    /// The config handle (for reload).
    pub fn config_handle(&self) -> &ConfigHandle {
        &self.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<TransportMetrics> {
        &self.metrics
    }

    /// Admits one connection from `peer`: global cap, per-peer cap, per-peer and global
    /// ingress rate state. On refusal returns `PeerLimit` or `RateLimited` and has already
    /// counted `rejected_total{reason}`. The permit releases the caps when dropped.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnPermit, TransportError> {
        let _ = peer;
        todo!("rate helper")
    }
}

/// Proof of admission for one connection; owns its per-connection bucket. Drop releases caps.
#[derive(Debug)]
pub struct ConnPermit {
    _private: (),
}

impl ConnPermit {
    /// Accounts `n` received bytes against per-conn, per-peer and global ingress buckets and
    /// returns how long the reader must pause before reading again (zero if none).
    pub fn pace_ingress(&self, n: u64, now_ns: u64) -> Duration {
        let _ = (n, now_ns);
        todo!("rate helper")
    }

    /// Accounts `n` bytes about to be written against per-conn, per-peer and global egress
    /// buckets and returns how long the writer must wait first (zero if none).
    pub fn pace_egress(&self, n: u64, now_ns: u64) -> Duration {
        let _ = (n, now_ns);
        todo!("rate helper")
    }

    /// Non-waiting egress check for `try_send`: false ⇒ the caller returns `RateLimited`
    /// (and counts it). Does not consume tokens when refusing.
    pub fn egress_available(&self, n: u64, now_ns: u64) -> bool {
        let _ = (n, now_ns);
        todo!("rate helper")
    }
}
