//! QUIC on the uring engine (feature `quic`): the policy half of the shards' QUIC driver
//! ([`ron_shard::quic`]). It builds the quinn-proto configs from the validated config and the
//! engine's rustls configs — the same [`crate::quic`] builders the tokio engine's quinn uses,
//! so both engines negotiate alike — and hands them to the runtime with the engine's accept
//! and dial hooks. Admission, caps, pacing, metrics and events are the same hooks as TCP and
//! TLS; caps count QUIC connections (the admission is shared by a connection's streams).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ron_shard::quic::{QuicDial, QuicServer};

use super::Inner;
use crate::config::ValidConfig;
use crate::error::TransportError;
use crate::quic::{client_config, server_config, STREAM_PREFACE};

/// Handshakes in flight per shard at or above which a peer whose address is not validated is
/// sent a stateless Retry (as on the tokio engine: at most this, and at most half of
/// `max_conns`).
fn retry_above(cfg: &ValidConfig) -> usize {
    crate::quic::retry_threshold(cfg.max_conns)
}

/// Datagrams per `sendmsg` with `quic.gso` (one without). quinn on tokio sends at most 10 per
/// call; 32 measured 3–5 % less server CPU per 64 KiB frame on the stream row (two A/B pairs,
/// docs/perf.md), and the kernel takes up to 64.
const GSO_SEGMENTS: usize = 32;

fn gso_segments(cfg: &ValidConfig) -> usize {
    if cfg.quic_gso {
        GSO_SEGMENTS
    } else {
        1
    }
}

/// The configured key-exchange posture (quinn does not expose the negotiated group).
fn hybrid(cfg: &ValidConfig) -> bool {
    cfg.pq_mode == crate::config::PqMode::Hybrid
}

/// Starts a QUIC listener on every shard.
pub(super) fn listen(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    hooks: Arc<dyn ron_shard::AcceptHooks>,
) -> Result<(ron_shard::ListenerId, SocketAddr), TransportError> {
    let cfg = inner.cfg();
    let Some(tls) = inner.tls.server.as_ref() else {
        return Err(crate::engine::listen::tls_config_missing(&inner.readiness));
    };
    let server = QuicServer {
        endpoint: quinn_proto::EndpointConfig::default(),
        server: Arc::new(server_config(&cfg, tls)?),
        preface: STREAM_PREFACE.to_vec(),
        retry_above: retry_above(&cfg),
        hybrid_pq: hybrid(&cfg),
        gso_segments: gso_segments(&cfg),
        gro: cfg.quic_gro,
    };
    inner
        .rt
        .listen_quic(addr, inner.conn_options(), server, hooks)
        .map_err(|e| crate::engine::listen::bind_failed(&inner.readiness, e))
}

/// Submits one QUIC dial to a shard.
pub(super) fn dial(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    left: Duration,
    client: &tokio_rustls::rustls::ClientConfig,
    server_name: String,
    hooks: Box<dyn ron_shard::DialHooks>,
) -> Result<(), TransportError> {
    let cfg = inner.cfg();
    let dial = QuicDial {
        endpoint: quinn_proto::EndpointConfig::default(),
        client: client_config(&cfg, client)?,
        server_name,
        preface: STREAM_PREFACE.to_vec(),
        hybrid_pq: hybrid(&cfg),
        gso_segments: gso_segments(&cfg),
        gro: cfg.quic_gro,
    };
    inner
        .rt
        .dial_quic(addr, left, inner.conn_options(), dial, hooks)
        .map_err(|(e, _)| TransportError::Unsupported {
            what: format!("uring dial: {e}"),
        })
}
