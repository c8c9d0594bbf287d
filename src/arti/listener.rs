//! Serving through an onion service: [`ArtiListener`].
//!
//! `listen` launches the service on the side runtime (Arti generates or loads its identity key
//! and publishes descriptors in the background, once bootstrapped). Incoming rendezvous
//! requests become stream requests; a `BEGIN` to the virtual port is admitted by the policy
//! (caps, ingress rate state) *before* it is accepted, then accepted within `read_timeout` and
//! handed to `accept` through a bounded queue. Other ports are refused with `END(DONE)`, as
//! every onion service does. Tor clients are anonymous: they are admitted as one peer (`::`),
//! so `per_peer.*` limits apply to all onion clients together.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use safelog::DisplayRedacted;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_hsservice::{HsNickname, OnionServiceConfig, RunningOnionService, StreamRequest};
use tor_proto::stream::IncomingStreamRequest;

use super::conn::{make_conn, ArtiConn};
use super::EngineInner;
use crate::config::{Backend, ConfigError};
use crate::engine::admission::{self, Direction};
use crate::engine::{ConnInfo, EngineKind, Listener};
use crate::error::{RejectReason, TimeoutOp, TransportError};
use crate::metrics::PqLabel;

/// Admitted connections waiting for `accept`.
const ACCEPT_QUEUE: usize = 64;

/// A launched onion service.
#[derive(Debug)]
pub struct ArtiListener {
    accepted: mpsc::Receiver<ArtiConn>,
    onion: String,
    port: u16,
    local: SocketAddr,
    /// Stops the service when the listener is dropped.
    stop: CancellationToken,
}

impl ArtiListener {
    /// The service's address: 56 base32 characters + `.onion`.
    pub fn onion_address(&self) -> &str {
        &self.onion
    }

    /// `xxx.onion:port`, ready for [`ArtiEngine::dial_host`](super::ArtiEngine::dial_host).
    pub fn onion_target(&self) -> String {
        format!("{}:{}", self.onion, self.port)
    }
}

impl Drop for ArtiListener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Listener for ArtiListener {
    type Conn = ArtiConn;

    /// `0.0.0.0:<virtual port>`: an onion service binds no socket.
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn accept(&mut self) -> Result<ArtiConn, TransportError> {
        self.accepted.recv().await.ok_or(TransportError::Cancelled)
    }
}

/// The onion-service configuration: the caller's TOML, then the nickname.
fn service_config(
    inner: &EngineInner,
    nickname: &str,
) -> Result<OnionServiceConfig, TransportError> {
    let bad = |reason: String| {
        TransportError::Config(ConfigError::Invalid {
            key: "arti.onion_service",
            reason,
        })
    };
    let mut table: toml::Table = match inner.options.onion_service_toml.as_deref() {
        Some(text) => text
            .parse()
            .map_err(|e: toml::de::Error| bad(format!("not valid TOML: {e}")))?,
        None => toml::Table::new(),
    };
    HsNickname::new(nickname.to_owned())
        .map_err(|e| bad(format!("invalid nickname {nickname:?}: {e}")))?;
    table.insert("nickname".into(), toml::Value::String(nickname.to_owned()));
    let builder: tor_hsservice::config::OnionServiceConfigBuilder = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| bad(format!("not an onion-service configuration: {e}")))?;
    builder
        .build()
        .map_err(|e| bad(format!("rejected by Arti: {e}")))
}

pub(crate) async fn launch(
    inner: &Arc<EngineInner>,
    nickname: &str,
    port: u16,
) -> Result<ArtiListener, TransportError> {
    if inner.shutdown.is_cancelled() {
        return Err(TransportError::Cancelled);
    }
    if port == 0 {
        return Err(TransportError::Unsupported {
            what: "an onion service needs a non-zero virtual port".into(),
        });
    }
    let svc_config = service_config(inner, nickname)?;
    if !inner
        .bootstrap_started
        .load(std::sync::atomic::Ordering::Acquire)
    {
        // Arti (Manual) refuses to launch anything before it was told to bootstrap.
        inner.shared.metrics.reject(RejectReason::ArtiBootstrap);
        return Err(TransportError::ArtiBootstrap);
    }
    let client = inner.client().clone();
    let launched = inner
        .side
        .handle
        .spawn(async move {
            match client.launch_onion_service(svc_config) {
                Ok(Some((svc, requests))) => {
                    let onion = svc
                        .onion_address()
                        .map(|id| id.display_unredacted().to_string());
                    Ok((svc, requests.boxed(), onion))
                }
                Ok(None) => Err(TransportError::Unsupported {
                    what: "the onion service is disabled in its configuration".into(),
                }),
                Err(e) => Err(super::arti_error("launch the onion service", &e)),
            }
        })
        .await
        .map_err(|_| TransportError::Cancelled)?;
    let (svc, requests, onion) = launched?;
    let Some(onion) = onion else {
        return Err(TransportError::Unsupported {
            what: "the onion service has no identity key".into(),
        });
    };
    tracing::info!(
        target: "ron_transport",
        event = "listen",
        backend = Backend::Arti.as_str(),
        engine = "arti",
        onion_address = onion.as_str(),
        port,
        "onion service launched"
    );
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let stop = CancellationToken::new();
    inner.spawn(serve(
        Arc::downgrade(inner),
        svc,
        requests,
        port,
        tx,
        stop.clone(),
    ));
    Ok(ArtiListener {
        accepted: rx,
        onion,
        port,
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        stop,
    })
}

/// The accept loop (side runtime). Holding `svc` keeps the service running.
async fn serve(
    engine: std::sync::Weak<EngineInner>,
    svc: Arc<RunningOnionService>,
    requests: futures::stream::BoxStream<'static, tor_hsservice::RendRequest>,
    port: u16,
    tx: mpsc::Sender<ArtiConn>,
    stop: CancellationToken,
) {
    let Some(shutdown) = engine.upgrade().map(|e| e.shutdown.clone()) else {
        return;
    };
    let mut streams = tor_hsservice::handle_rend_requests(requests);
    loop {
        let req = tokio::select! {
            _ = stop.cancelled() => break,
            _ = shutdown.cancelled() => break,
            _ = tx.closed() => break,
            r = streams.next() => match r {
                Some(r) => r,
                None => break,
            },
        };
        let Some(inner) = engine.upgrade() else { break };
        let tx = tx.clone();
        // Each handshake on its own task, so a slow one never stalls the others.
        tokio::spawn(accept_one(inner, req, port, tx));
    }
    drop(svc);
}

async fn accept_one(
    inner: Arc<EngineInner>,
    req: StreamRequest,
    port: u16,
    tx: mpsc::Sender<ArtiConn>,
) {
    let started = Instant::now();
    let wanted = matches!(req.request(), IncomingStreamRequest::Begin(b) if b.port() == port);
    if !wanted {
        let _ = req.reject(End::new_with_reason(EndReason::DONE)).await;
        return;
    }
    let shared = &inner.shared;
    let anonymous = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    // Counted and logged by the admission path (onion peers are anonymous: `[::]:0`).
    let Ok(permit) = admission::admit(
        &shared.policy,
        &shared.metrics,
        Backend::Arti,
        EngineKind::Arti,
        SocketAddr::new(anonymous, 0),
        Direction::Inbound,
    ) else {
        let _ = req.reject(End::new_with_reason(EndReason::DONE)).await;
        return;
    };
    let bound = shared.config().read_timeout;
    let stream = match tokio::time::timeout(bound, req.accept(Connected::new_empty())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(
                target: "ron_transport",
                event = "accept",
                backend = Backend::Arti.as_str(),
                engine = "arti",
                error = %e,
                "onion stream accept failed"
            );
            return;
        }
        Err(_) => {
            shared.metrics.reject(RejectReason::Timeout);
            tracing::info!(
                target: "ron_transport",
                event = "reject",
                reason = RejectReason::Timeout.as_str(),
                backend = Backend::Arti.as_str(),
                engine = "arti",
                op = TimeoutOp::Handshake.as_str(),
                "onion stream accept timed out"
            );
            return;
        }
    };
    let bm = shared.metrics.backend(Backend::Arti);
    bm.handshake(PqLabel::Off)
        .observe(started.elapsed().as_secs_f64());
    let info = ConnInfo {
        conn_id: shared.next_conn_id(),
        peer_addr: SocketAddr::new(anonymous, 0),
        local_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        backend: Backend::Arti,
        engine: EngineKind::Arti,
        alpn: None,
        pq: PqLabel::Off,
        resumed: false,
    };
    tracing::info!(
        target: "ron_transport",
        event = "accept",
        conn_id = %format_args!("{:016x}", info.conn_id),
        backend = Backend::Arti.as_str(),
        engine = "arti",
        duration_ms = started.elapsed().as_millis() as u64,
        "accepted"
    );
    let conn = make_conn(&inner, stream, permit, info, None);
    // A full accept queue waits here (backpressure); a dropped listener drops the connection.
    let _ = tx.send(conn).await;
}

/// Generates or loads the identity key of `nickname` and returns its `.onion` address, with no
/// network involved.
pub(crate) async fn offline_identity(
    inner: &Arc<EngineInner>,
    nickname: &str,
) -> Result<String, TransportError> {
    let svc_config = service_config(inner, nickname)?;
    let tor_config = inner.tor_config.clone();
    inner
        .side
        .handle
        .spawn(async move {
            // A keystore built from the same configuration: the native keystore is the one
            // `listen` uses; an ephemeral one is a fresh, throwaway keystore.
            let svc = arti_client::TorClient::<super::ArtiRuntime>::create_onion_service(
                &tor_config,
                svc_config,
            )
            .map_err(|e| super::arti_error("create the onion service", &e))?;
            let id = svc
                .generate_identity_key(tor_keymgr::KeystoreSelector::Primary)
                .map_err(|e| TransportError::Io(std::io::Error::other(e.to_string())))?;
            let onion = id.display_unredacted().to_string();
            Ok(onion)
        })
        .await
        .map_err(|_| TransportError::Cancelled)?
}
