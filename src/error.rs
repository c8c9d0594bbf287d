//! The error taxonomy: one closed, `#[non_exhaustive]` enum for everything the transport can
//! refuse or fail at, each variant with a stable machine-readable [`TransportError::kind`].
//!
//! It also owns [`RejectReason`], the bounded label set of `rejected_total{reason}`. Both string
//! sets are part of the observability contract (spec/IDB I-13, spec/OBSERVABILITY §1.1) and are
//! snapshot-tested: changing a literal fails CI.

use std::fmt;

use crate::config::ConfigError;

/// The operation whose deadline expired, carried by [`TransportError::Timeout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutOp {
    /// Establishing an outbound connection (`DialOptions::deadline`).
    Dial,
    /// The TLS handshake did not finish in time (slow-loris protection).
    Handshake,
    /// A started frame did not complete within `read_timeout`.
    Read,
    /// Buffered output made no progress within `write_timeout` (peer not reading).
    Write,
    /// No byte moved in either direction for `idle_timeout`.
    Idle,
    /// A graceful close or engine shutdown did not drain in time.
    Shutdown,
}

impl TimeoutOp {
    /// Stable lower-case name, used in `Display` and in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Dial => "dial",
            Self::Handshake => "handshake",
            Self::Read => "read",
            Self::Write => "write",
            Self::Idle => "idle",
            Self::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for TimeoutOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every way a transport operation can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A deadline expired during `op`.
    #[error("timeout during {op}")]
    Timeout {
        /// Which deadline expired.
        op: TimeoutOp,
    },
    /// The global connection cap or the per-peer connection cap is full.
    #[error("peer limit exceeded")]
    PeerLimit,
    /// A token bucket (per connection, per peer, global ingress or egress) is empty.
    #[error("rate limited")]
    RateLimited,
    /// A frame length exceeds `max_frame_bytes`, or inflation exceeds the 8x guard.
    #[error("message too large: {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced or produced length.
        len: u64,
        /// The ceiling it broke.
        max: u64,
    },
    /// The TLS handshake or a TLS record failed (bad certificate, alert, protocol error).
    /// `detail` is rustls's description; it never contains key material.
    #[error("tls handshake failed: {detail}")]
    Tls {
        /// Human-readable cause from rustls.
        detail: String,
    },
    /// The Arti (Tor) client has not bootstrapped yet.
    #[error("arti not ready")]
    ArtiBootstrap,
    /// The connection is closed (by the peer, by `close`, or after an earlier error).
    #[error("io closed")]
    IoClosed,
    /// The bounded writer inbox (capacity 256) is full; retry later or use `send().await`.
    #[error("writer inbox full")]
    Busy,
    /// The connection or engine was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Configuration was rejected; the error names the offending key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The requested engine or operation is not available here (no io_uring, missing feature).
    #[error("unsupported: {what}")]
    Unsupported {
        /// What was asked for and why it cannot be given.
        what: String,
    },
    /// An operating-system I/O error not covered by a more specific variant.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    /// The QUIC path failed: the peer stopped answering (QUIC idle timeout), a stateless reset,
    /// a QUIC protocol violation or no common version (spec/INTEROP.md §5 `quic_path_error`).
    #[error("quic path error: {detail}")]
    QuicPath {
        /// What quinn reported.
        detail: String,
    },
}

impl TransportError {
    /// Stable, machine-parsable kind. Never changes for an existing variant.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::PeerLimit => "peer_limit",
            Self::RateLimited => "rate_limited",
            Self::TooLarge { .. } => "too_large",
            Self::Tls { .. } => "tls",
            Self::ArtiBootstrap => "arti_bootstrap",
            Self::IoClosed => "io_closed",
            Self::Busy => "busy",
            Self::Cancelled => "cancelled",
            Self::Config(_) => "config",
            Self::Unsupported { .. } => "unsupported",
            Self::Io(_) => "io",
            Self::QuicPath { .. } => "quic_path_error",
        }
    }

    /// The `rejected_total{reason}` label this error is counted under, if it is a reject.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            Self::Timeout { .. } => Some(RejectReason::Timeout),
            Self::PeerLimit => Some(RejectReason::PeerLimit),
            Self::RateLimited => Some(RejectReason::RateLimited),
            Self::TooLarge { .. } => Some(RejectReason::TooLarge),
            Self::Tls { .. } => Some(RejectReason::Tls),
            Self::ArtiBootstrap => Some(RejectReason::ArtiBootstrap),
            Self::Busy => Some(RejectReason::Busy),
            Self::QuicPath { .. } => Some(RejectReason::QuicPathError),
            _ => None,
        }
    }

    /// Shorthand for a [`TransportError::Timeout`].
    pub const fn timeout(op: TimeoutOp) -> Self {
        Self::Timeout { op }
    }
}

/// The bounded label set of `rejected_total{reason}`: every early rejection is one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// A deadline expired (read, write, idle, handshake, dial).
    Timeout,
    /// A TLS handshake failed.
    Tls,
    /// A frame or inflation exceeded its ceiling.
    TooLarge,
    /// A token bucket was empty.
    RateLimited,
    /// A connection cap (global or per peer) was full.
    PeerLimit,
    /// Arti had not bootstrapped.
    ArtiBootstrap,
    /// The writer inbox was full.
    Busy,
    /// A QUIC path failed (spec/INTEROP.md §5).
    QuicPathError,
}

impl RejectReason {
    /// Every reason, in label order (used to pre-create the label values).
    pub const ALL: [RejectReason; 8] = [
        Self::Timeout,
        Self::Tls,
        Self::TooLarge,
        Self::RateLimited,
        Self::PeerLimit,
        Self::ArtiBootstrap,
        Self::Busy,
        Self::QuicPathError,
    ];

    /// The exact label value. These literals are part of the contract.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::PeerLimit => "peer_limit",
            Self::ArtiBootstrap => "arti_bootstrap",
            Self::Busy => "busy",
            Self::QuicPathError => "quic_path_error",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshot of the reason canon: any change to a literal must fail here.
    #[test]
    fn reason_strings_snapshot() {
        let got: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            got,
            [
                "timeout",
                "tls",
                "too_large",
                "rate_limited",
                "peer_limit",
                "arti_bootstrap",
                "busy",
                "quic_path_error"
            ]
        );
    }

    /// Snapshot of `kind()` for every variant.
    #[test]
    fn kind_snapshot() {
        let cases: Vec<(TransportError, &str)> = vec![
            (TransportError::timeout(TimeoutOp::Read), "timeout"),
            (TransportError::PeerLimit, "peer_limit"),
            (TransportError::RateLimited, "rate_limited"),
            (TransportError::TooLarge { len: 2, max: 1 }, "too_large"),
            (TransportError::Tls { detail: "x".into() }, "tls"),
            (TransportError::ArtiBootstrap, "arti_bootstrap"),
            (TransportError::IoClosed, "io_closed"),
            (TransportError::Busy, "busy"),
            (TransportError::Cancelled, "cancelled"),
            (
                TransportError::Unsupported { what: "x".into() },
                "unsupported",
            ),
            (TransportError::Io(std::io::Error::other("x")), "io"),
            (
                TransportError::QuicPath { detail: "x".into() },
                "quic_path_error",
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err:?}");
            if let Some(reason) = err.reject_reason() {
                assert_eq!(reason.as_str(), kind, "reason and kind agree for rejects");
            }
        }
        assert_eq!(
            TransportError::timeout(TimeoutOp::Write).to_string(),
            "timeout during write"
        );
    }
}
