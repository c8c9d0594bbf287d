//! # ron-transport
//!
//! An io_uring, thread-per-core transport engine carrying length-prefixed frames (≤ 1 MiB) over
//! TCP and TLS 1.3, with hard limits, rate limits, connection caps, timeouts, Prometheus metrics
//! and readiness states. Engines (tokio, uring) sit behind one set of adapter traits in
//! [`engine`] and behave identically (same limits, metrics and reason strings).
//!
//! `src/` is policy; the io_uring mechanism lives in the `ron-shard` crate.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "arti")]
pub mod arti;
pub mod blocking;
pub mod config;
pub mod error;
pub mod metrics;
pub mod readiness;

pub use bytes::Bytes;
/// rustls types, re-exported through `tokio_rustls` (spec/IDB I-3).
pub use tokio_rustls::rustls;

pub use config::{
    Backend, Config, ConfigError, ConfigHandle, Congestion, PqMode, TrustStore, ValidConfig,
};
pub use error::{RejectReason, TimeoutOp, TransportError};
pub use metrics::{PqLabel, TransportMetrics};
pub use readiness::{Readiness, ReadyState, TransportHealth};
pub mod engine;
pub mod limits;
pub mod log_writer;
pub mod logging;
pub mod policy;
#[cfg(feature = "quic")]
pub mod quic;
pub mod rate;
#[cfg(feature = "test-util")]
pub mod testing;
#[cfg(feature = "tls")]
pub mod tls;

pub use engine::{
    Conn, ConnInfo, DialOptions, DialTarget, Engine, EngineKind, FrameSender, ListenTarget,
    Listener,
};

/// Compiles the README's example as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
