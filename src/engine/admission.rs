//! The one admission path of every engine, for both directions: [`admit`] puts an accepted
//! peer or a dial target through the policy (global and per-peer caps, the per-connection
//! pacing buckets) before any handshake, buffer or connect, and [`DialAccount`] closes the books
//! on every dial the same way (`transport_dials_total{result}`, the reject reason, the TLS
//! failure counters and one `dial` / `reject` log event).
//!
//! Engines call these two and nothing else: none of them calls [`Policy::admit`] directly, so a
//! new engine or a new direction cannot forget the caps (spec/IDB I-6, I-12; SECURITY §1).

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use crate::config::Backend;
use crate::engine::{ConnInfo, EngineKind};
use crate::error::{RejectReason, TransportError};
use crate::metrics::{PqLabel, TransportMetrics};
use crate::policy::{ConnPermit, Policy};

/// Which way a connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Accepted from a listener.
    Inbound,
    /// Dialed by us.
    Outbound,
}

impl Direction {
    /// `"inbound"` or `"outbound"` (the `direction` log field).
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// One admitted connection: its policy permit (cap slots and pacing buckets) and its share of
/// `conn_inflight{backend}`. Both are released when this is dropped, whichever way the
/// connection ends (refused handshake, failed dial, close, abort).
#[derive(Debug)]
pub(crate) struct Admission {
    permit: ConnPermit,
    inflight: prometheus::IntGauge,
    started: Instant,
}

impl Admission {
    /// When establishment started (accept or dial), for `handshake_latency_seconds`.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }
}

impl Deref for Admission {
    type Target = ConnPermit;

    fn deref(&self) -> &ConnPermit {
        &self.permit
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.inflight.dec();
    }
}

/// Admits a connection with `peer` through `policy`, counted. On success: inbound connections
/// count `transport_accepts_total{backend}`; both directions raise `conn_inflight{backend}`
/// until the returned [`Admission`] is dropped. On refusal the policy has counted
/// `rejected_total{reason}`; an inbound refusal is logged here (`event="reject"`), an outbound
/// one by the dial's [`DialAccount`].
pub(crate) fn admit(
    policy: &Arc<Policy>,
    metrics: &TransportMetrics,
    backend: Backend,
    engine: EngineKind,
    peer: SocketAddr,
    direction: Direction,
) -> Result<Admission, TransportError> {
    let started = Instant::now();
    let bm = metrics.backend(backend);
    match policy.admit(peer.ip()) {
        Ok(permit) => {
            if direction == Direction::Inbound {
                bm.accepts.inc();
            }
            bm.conn_inflight.inc();
            Ok(Admission {
                permit,
                inflight: bm.conn_inflight.clone(),
                started,
            })
        }
        Err(e) => {
            if direction == Direction::Inbound {
                tracing::info!(
                    target: "ron_transport",
                    event = "reject",
                    reason = e.reject_reason().map(RejectReason::as_str),
                    backend = backend.as_str(),
                    engine = engine.as_str(),
                    direction = direction.as_str(),
                    peer_addr = %peer,
                    "connection refused at accept"
                );
            }
            Err(e)
        }
    }
}

/// The books of one dial, closed once by [`DialAccount::finish`] whatever the outcome: every
/// engine counts and logs its dials through this.
pub(crate) struct DialAccount<'a> {
    metrics: &'a TransportMetrics,
    backend: Backend,
    engine: EngineKind,
    /// The key-exchange posture asked for (the `mode` of a failed handshake).
    pq_mode: PqLabel,
    /// The dial's destination, logged with the peer address; `None` redacts both (Arti:
    /// Tor destinations are never logged).
    target: Option<&'a (dyn std::fmt::Display + Sync)>,
    corr_id: Option<&'a str>,
    started: Instant,
}

impl<'a> DialAccount<'a> {
    /// Opens the books of a dial to `target`, started now.
    pub(crate) fn open(
        metrics: &'a TransportMetrics,
        backend: Backend,
        engine: EngineKind,
        pq_mode: PqLabel,
        target: Option<&'a (dyn std::fmt::Display + Sync)>,
        corr_id: Option<&'a str>,
    ) -> Self {
        Self {
            metrics,
            backend,
            engine,
            pq_mode,
            target,
            corr_id,
            started: Instant::now(),
        }
    }

    /// When the dial started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Counts and logs the outcome: `transport_dials_total{backend,result}`; on failure the
    /// error's reject reason (admission refusals were counted by the policy already), and for
    /// a TLS failure `tls_handshake_failures_total` and `pq_handshake_total{result="fail"}`
    /// (the failure counter last: whoever sees it move also sees the reject); one `dial`
    /// event, or `reject` when the failure has a reason.
    pub(crate) fn finish(self, outcome: Result<&ConnInfo, &TransportError>) {
        let bm = self.metrics.backend(self.backend);
        let duration_ms = self.started.elapsed().as_millis() as u64;
        match outcome {
            Ok(info) => {
                bm.dials_ok.inc();
                tracing::info!(
                    target: "ron_transport",
                    event = "dial",
                    conn_id = %format_args!("{:016x}", info.conn_id),
                    corr_id = self.corr_id,
                    backend = self.backend.as_str(),
                    engine = self.engine.as_str(),
                    target = self.target.map(tracing::field::display),
                    peer_addr = self.target.map(|_| tracing::field::display(info.peer_addr)),
                    pq = info.pq.as_str(),
                    duration_ms,
                    "dialed"
                );
            }
            Err(e) => {
                bm.dials_err.inc();
                let reason = e.reject_reason();
                match reason {
                    // Counted by the policy when it refused.
                    Some(RejectReason::PeerLimit | RejectReason::RateLimited) => {}
                    Some(RejectReason::Tls) => {
                        self.metrics.reject(RejectReason::Tls);
                        self.metrics
                            .pq_handshake_result(self.backend, self.pq_mode, false);
                        bm.tls_failures.inc();
                    }
                    Some(r) => self.metrics.reject(r),
                    None => {}
                }
                tracing::info!(
                    target: "ron_transport",
                    event = if reason.is_some() { "reject" } else { "dial" },
                    reason = reason.map(RejectReason::as_str),
                    corr_id = self.corr_id,
                    backend = self.backend.as_str(),
                    engine = self.engine.as_str(),
                    target = self.target.map(tracing::field::display),
                    duration_ms,
                    error = %e,
                    "dial failed"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ConfigHandle;

    fn policy(max_conns: u32, per_peer: u32) -> (Arc<Policy>, Arc<TransportMetrics>) {
        let c = Config {
            max_conns,
            per_peer_max_conns: per_peer,
            ..Config::default()
        };
        let metrics = TransportMetrics::new();
        let handle = ConfigHandle::new(c.validate().unwrap());
        (Policy::new(handle, metrics.clone()), metrics)
    }

    const PEER: ([u8; 4], u16) = ([127, 0, 0, 2], 9);

    #[test]
    fn both_directions_share_the_caps_and_the_inflight_gauge() {
        let (p, m) = policy(2, 0);
        let bm = m.backend(Backend::Tcp);
        let a = admit(
            &p,
            &m,
            Backend::Tcp,
            EngineKind::Uring,
            PEER.into(),
            Direction::Inbound,
        )
        .unwrap();
        let b = admit(
            &p,
            &m,
            Backend::Tcp,
            EngineKind::Uring,
            PEER.into(),
            Direction::Outbound,
        )
        .unwrap();
        assert_eq!(bm.conn_inflight.get(), 2);
        assert_eq!(bm.accepts.get(), 1, "only the inbound one is an accept");
        let err = admit(
            &p,
            &m,
            Backend::Tcp,
            EngineKind::Tokio,
            PEER.into(),
            Direction::Outbound,
        )
        .unwrap_err();
        assert_eq!(err.reject_reason(), Some(RejectReason::PeerLimit));
        assert_eq!(m.rejected_count(RejectReason::PeerLimit), 1);
        drop(a);
        assert_eq!(bm.conn_inflight.get(), 1);
        let _c = admit(
            &p,
            &m,
            Backend::Tcp,
            EngineKind::Tokio,
            PEER.into(),
            Direction::Outbound,
        )
        .expect("a released slot is free again");
        drop(b);
        assert_eq!(bm.conn_inflight.get(), 1);
    }

    #[test]
    fn dial_books_count_each_outcome_once() {
        let (_p, m) = policy(64, 0);
        let bm = m.backend(Backend::Tls);
        let t = "h.example:1";
        let open = || {
            DialAccount::open(
                &m,
                Backend::Tls,
                EngineKind::Uring,
                PqLabel::Off,
                Some(&t),
                None,
            )
        };
        open().finish(Err(&TransportError::PeerLimit));
        assert_eq!(
            m.rejected_count(RejectReason::PeerLimit),
            0,
            "the policy counts it"
        );
        open().finish(Err(&TransportError::Tls {
            detail: "bad cert".into(),
        }));
        assert_eq!(m.rejected_count(RejectReason::Tls), 1);
        assert_eq!(bm.tls_failures.get(), 1);
        open().finish(Err(&TransportError::timeout(crate::TimeoutOp::Dial)));
        assert_eq!(m.rejected_count(RejectReason::Timeout), 1);
        open().finish(Err(&TransportError::IoClosed));
        assert_eq!(bm.dials_err.get(), 4);
        assert_eq!(bm.dials_ok.get(), 0);
    }
}
