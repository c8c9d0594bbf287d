//! The JSON log events every engine emits (spec/OBSERVABILITY §3), formatted in one place so
//! the engines speak alike: `listen`, `accept`, `handshake` (done or failed), `reject` (a
//! connection that failed with a reason from the canon: timeouts, oversized frames, TLS),
//! `close` (with bytes, duration and the reason) and `shutdown`. Every event carries `backend`
//! and `engine` (`"tokio"`, `"uring"`, `"arti"`); connection events carry `conn_id` as 16 hex
//! digits and `peer_addr`. Dial events and accept refusals live with the code that decides them
//! ([`admission`](crate::engine::admission)). Nothing here logs payload bytes or secrets.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Backend;
use crate::engine::EngineKind;
use crate::error::RejectReason;
use crate::metrics::PqLabel;

/// The facts every per-connection event carries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnFacts<'a> {
    /// Process-unique connection id (logged as 16 hex digits).
    pub(crate) conn_id: u64,
    /// Caller-provided correlation id (dials), logged verbatim.
    pub(crate) corr_id: Option<&'a str>,
    /// `tcp` / `tls` / `arti`.
    pub(crate) backend: Backend,
    /// Which engine owns the connection.
    pub(crate) engine: EngineKind,
    /// The remote address.
    pub(crate) peer: SocketAddr,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `event="listen"`: a listener is bound at `local`.
pub(crate) fn listen(backend: Backend, engine: EngineKind, local: SocketAddr) {
    tracing::info!(
        target: "ron_transport",
        event = "listen",
        backend = backend.as_str(),
        engine = engine.as_str(),
        local_addr = %local,
        "listening"
    );
}

/// `event="accept"`: an inbound connection was admitted (and, for TLS, handshaken).
pub(crate) fn accept(c: &ConnFacts<'_>, pq: PqLabel, took: Duration) {
    tracing::info!(
        target: "ron_transport",
        event = "accept",
        conn_id = %format_args!("{:016x}", c.conn_id),
        backend = c.backend.as_str(),
        engine = c.engine.as_str(),
        peer_addr = %c.peer,
        pq = pq.as_str(),
        duration_ms = millis(took),
        "accepted"
    );
}

/// `event="handshake"`: a TLS handshake finished (either direction).
pub(crate) fn handshake(c: &ConnFacts<'_>, pq: PqLabel, resumed: bool, took: Duration) {
    tracing::info!(
        target: "ron_transport",
        event = "handshake",
        conn_id = %format_args!("{:016x}", c.conn_id),
        corr_id = c.corr_id,
        backend = c.backend.as_str(),
        engine = c.engine.as_str(),
        peer_addr = %c.peer,
        pq = pq.as_str(),
        resumed,
        duration_ms = millis(took),
        "tls handshake done"
    );
}

/// An inbound handshake that failed before the connection opened: `event="reject"` with the
/// reason when it counts as one (`tls`, `timeout`), else `event="handshake"` (e.g. shutdown).
pub(crate) fn handshake_failed(
    reason: Option<RejectReason>,
    backend: Backend,
    engine: EngineKind,
    peer: SocketAddr,
    took: Duration,
    error: &dyn std::fmt::Display,
) {
    tracing::info!(
        target: "ron_transport",
        event = if reason.is_some() { "reject" } else { "handshake" },
        reason = reason.map(RejectReason::as_str),
        backend = backend.as_str(),
        engine = engine.as_str(),
        peer_addr = %peer,
        duration_ms = millis(took),
        error = %error,
        "handshake failed"
    );
}

/// `event="reject"`: an open connection failed with `reason` (timeout, too_large, tls, ...).
pub(crate) fn conn_reject(
    c: &ConnFacts<'_>,
    reason: RejectReason,
    open_for: Duration,
    error: &dyn std::fmt::Display,
) {
    tracing::info!(
        target: "ron_transport",
        event = "reject",
        reason = reason.as_str(),
        conn_id = %format_args!("{:016x}", c.conn_id),
        corr_id = c.corr_id,
        backend = c.backend.as_str(),
        engine = c.engine.as_str(),
        peer_addr = %c.peer,
        duration_ms = millis(open_for),
        error = %error,
        "connection rejected"
    );
}

/// `event="close"`: a connection ended; `reason` is the reject reason it failed with (absent
/// for a clean close); bytes are frame bytes including the 4-byte prefixes (TLS: plaintext).
pub(crate) fn close(
    c: &ConnFacts<'_>,
    reason: Option<RejectReason>,
    open_for: Duration,
    bytes_in: u64,
    bytes_out: u64,
) {
    tracing::info!(
        target: "ron_transport",
        event = "close",
        conn_id = %format_args!("{:016x}", c.conn_id),
        corr_id = c.corr_id,
        backend = c.backend.as_str(),
        engine = c.engine.as_str(),
        peer_addr = %c.peer,
        reason = reason.map(RejectReason::as_str),
        duration_ms = millis(open_for),
        bytes_in,
        bytes_out,
        "connection closed"
    );
}

/// `event="shutdown"`: the engine shut down.
pub(crate) fn shutdown(
    backend: Backend,
    engine: EngineKind,
    drained: u64,
    aborted: u64,
    took: Duration,
) {
    tracing::info!(
        target: "ron_transport",
        event = "shutdown",
        backend = backend.as_str(),
        engine = engine.as_str(),
        drained,
        aborted,
        duration_ms = millis(took),
        "engine shut down"
    );
}
