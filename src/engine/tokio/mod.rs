//! The tokio engine (epoll + tokio-rustls): the fallback where io_uring is unavailable and the
//! baseline every performance figure is compared against. It implements the adapter traits of
//! [`crate::engine`] with the documented limits, timeouts, metrics and reason strings.
//!
//! Per connection there is exactly one spawned task, the writer ([`writer`]), which owns the
//! write half, drains the bounded writer inbox with coalesced vectored writes, and watches the
//! idle timeout. Frames are received in the caller's task ([`conn`]). TLS handshakes of accepted
//! connections run as their own short-lived tasks so a slow client never blocks `accept`.
//!
//! Every task is tracked: [`TokioEngine::live_tasks`] reports how many are still running, and
//! [`Engine::shutdown`] drains, then aborts (and counts) what is left at the deadline.

mod conn;
mod listener;
mod stream;
mod uds;
mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use conn::{TokioConn, TokioSender};
pub use listener::TokioListener;

use crate::config::Backend;
use crate::engine::shared::EngineShared;
use crate::engine::target::unsupported_target;
use crate::engine::{
    ConnInfo, DialOptions, Engine, EngineKind, ShutdownReport, WRITER_INBOX_CAPACITY,
};
use crate::engine::{DialTarget, ListenTarget};
use crate::error::{RejectReason, TimeoutOp, TransportError};
use crate::limits::FrameDecoder;
use crate::metrics::{PqLabel, TaskKind};
use crate::policy::ConnPermit;
use crate::readiness::{ReadyState, TransportHealth};
use conn::{ConnCore, Live, ReaderState, READ_BUF_MIN};
use stream::Stream;

/// The tokio engine. Cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct TokioEngine {
    inner: Arc<EngineInner>,
}

/// Engine state shared with listeners and connections.
#[derive(Debug)]
pub(crate) struct EngineInner {
    pub(crate) shared: Arc<EngineShared>,
    /// Every per-connection task (writers, TLS accept handshakes).
    pub(crate) tasks: TaskTracker,
    /// Open connections, for shutdown.
    conns: Mutex<HashMap<u64, Arc<ConnCore>>>,
    /// Cancelled by `shutdown`: listeners stop, dials are refused.
    pub(crate) shutdown: CancellationToken,
    /// Socket files of this engine's Unix-domain listeners, removed at shutdown.
    pub(crate) uds_files: crate::engine::uds::SocketFiles,
}

impl EngineInner {
    /// Forgets a connection that has ended.
    pub(crate) fn forget(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Turns an established (and, for TLS, handshaken) stream into a connection: splits it,
    /// spawns its writer task and registers it.
    pub(crate) fn make_conn(
        self: &Arc<Self>,
        stream: Stream,
        permit: ConnPermit,
        mut info: ConnInfo,
        corr_id: Option<Arc<str>>,
    ) -> TokioConn {
        let shared = &self.shared;
        let permit = Arc::new(permit);
        let core = Arc::new(ConnCore::new(
            info.conn_id,
            shared.backend,
            info.peer_addr,
            corr_id,
            shared.policy.clone(),
            shared.metrics.clone(),
            &permit,
            matches!(stream, Stream::Tcp(_)),
        ));
        info.engine = EngineKind::Tokio;
        let live = Arc::new(Live {
            core: core.clone(),
            permit,
            engine: Arc::downgrade(self),
            bytes_in: Default::default(),
            bytes_out: Default::default(),
        });
        core.bm.conn_inflight.inc();
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(core.id, core.clone());
        let (rd, wr) = stream.split();
        let (tx, rx) = mpsc::channel::<conn::Out>(WRITER_INBOX_CAPACITY);
        shared
            .metrics
            .tasks_spawned
            .with_label_values(&[TaskKind::Writer.as_str()])
            .inc();
        self.tasks.spawn(writer::run(live.clone(), wr, rx));
        let max = shared.config().max_frame_bytes;
        let reader = ReaderState {
            rd,
            buf: BytesMut::with_capacity(READ_BUF_MIN),
            decoder: FrameDecoder::new(max),
            frame_started: None,
            last_read: Instant::now(),
            pause_until: None,
            cancelled: Box::pin(live.core.cancel.clone().cancelled_owned()),
            live,
        };
        if self.shutdown.is_cancelled() {
            // Raced with shutdown: close right away (graceful, nothing queued yet).
            core.close.cancel();
        }
        TokioConn::new(info, TokioSender { core, tx }, reader)
    }

    fn conn_cores(&self) -> Vec<Arc<ConnCore>> {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

impl TokioEngine {
    /// An engine over prepared shared state (see [`crate::engine::setup::EngineSetup`]).
    pub fn new(shared: Arc<EngineShared>) -> Self {
        Self {
            inner: Arc::new(EngineInner {
                shared,
                tasks: TaskTracker::new(),
                conns: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                uds_files: Default::default(),
            }),
        }
    }

    /// The shared state (policy, metrics, readiness, TLS configs).
    pub fn shared(&self) -> &Arc<EngineShared> {
        &self.inner.shared
    }

    /// Per-connection tasks (writers, TLS accept handshakes) still running.
    pub fn live_tasks(&self) -> usize {
        self.inner.tasks.len()
    }

    /// Connections currently open on this engine.
    pub fn open_conns(&self) -> usize {
        self.inner
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    async fn dial_inner(
        &self,
        addr: SocketAddr,
        opts: &DialOptions,
        corr_id: &Option<Arc<str>>,
        started: Instant,
    ) -> Result<TokioConn, TransportError> {
        let inner = &self.inner;
        let shared = &inner.shared;
        let backend = shared.backend;
        let connector = match backend {
            Backend::Tcp => None,
            Backend::Tls => match &shared.tls_client {
                Some(c) => Some(TlsConnector::from(c.clone())),
                None => {
                    return Err(TransportError::Unsupported {
                        what: format!(
                            "tls dial without a client config: {}",
                            shared
                                .tls_client_error
                                .as_deref()
                                .unwrap_or("none configured")
                        ),
                    })
                }
            },
            Backend::Arti => {
                return Err(TransportError::Unsupported {
                    what: "the tokio engine does not speak arti".into(),
                })
            }
        };
        // Outbound connections count against the same caps as inbound ones.
        let permit = shared.policy.admit(addr.ip())?;
        let established =
            async {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let local = tcp.local_addr()?;
                match connector {
                    None => Ok::<_, TransportError>((Stream::Tcp(tcp), local, None, PqLabel::Off)),
                    Some(connector) => {
                        let name = server_name(opts, shared, addr)?;
                        let tls = connector.connect(name, tcp).await.map_err(|e| {
                            TransportError::Tls {
                                detail: e.to_string(),
                            }
                        })?;
                        let (_, session) = tls.get_ref();
                        let pq = pq_label(session);
                        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
                        let resumed = session.handshake_kind()
                            == Some(tokio_rustls::rustls::HandshakeKind::Resumed);
                        Ok((
                            Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))),
                            local,
                            Some((alpn, resumed)),
                            pq,
                        ))
                    }
                }
            };
        let (stream, local, tls_facts, pq) = tokio::select! {
            biased;
            _ = inner.shutdown.cancelled() => return Err(TransportError::Cancelled),
            r = tokio::time::timeout(opts.deadline, established) => match r {
                Ok(r) => r?,
                Err(_) => return Err(TransportError::timeout(TimeoutOp::Dial)),
            },
        };
        let bm = shared.metrics.backend(backend);
        bm.handshake(pq).observe(started.elapsed().as_secs_f64());
        if backend == Backend::Tls {
            shared.metrics.pq_handshake_result(backend, pq, true);
        }
        let (alpn, resumed) = tls_facts.unwrap_or((None, false));
        let info = ConnInfo {
            conn_id: shared.next_conn_id(),
            peer_addr: addr,
            local_addr: local,
            backend,
            engine: EngineKind::Tokio,
            alpn,
            pq,
            resumed,
        };
        if backend == Backend::Tls {
            listener::log_handshake(&info, started, corr_id.as_deref());
        }
        Ok(inner.make_conn(stream, permit, info, corr_id.clone()))
    }
}

impl TransportHealth for TokioEngine {
    fn readiness(&self) -> ReadyState {
        self.inner.shared.readiness.readiness()
    }
}

impl Engine for TokioEngine {
    type Listener = TokioListener;
    type Conn = TokioConn;

    fn kind(&self) -> EngineKind {
        EngineKind::Tokio
    }

    fn backend(&self) -> Backend {
        self.inner.shared.backend
    }

    async fn listen(
        &self,
        target: impl Into<ListenTarget> + Send,
    ) -> Result<TokioListener, TransportError> {
        match target.into() {
            ListenTarget::Addr(addr) => TokioListener::bind(self.inner.clone(), addr).await,
            ListenTarget::Unix(path) => TokioListener::bind_unix(self.inner.clone(), path).await,
        }
    }

    async fn dial(
        &self,
        target: impl Into<DialTarget> + Send,
        opts: DialOptions,
    ) -> Result<TokioConn, TransportError> {
        let addr = match target.into() {
            DialTarget::Addr(addr) => addr,
            DialTarget::Unix(path) => return self.dial_unix(path, opts).await,
            other => return Err(unsupported_target("tokio", &other)),
        };
        let shared = &self.inner.shared;
        let backend = shared.backend;
        let corr_id: Option<Arc<str>> = opts.corr_id.as_deref().map(Arc::from);
        if self.inner.shutdown.is_cancelled() {
            return Err(TransportError::Cancelled);
        }
        let started = Instant::now();
        let result = self.dial_inner(addr, &opts, &corr_id, started).await;
        let bm = shared.metrics.backend(backend);
        let duration_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(conn) => {
                bm.dials_ok.inc();
                tracing::info!(
                    target: "ron_transport",
                    event = "dial",
                    conn_id = %format_args!("{:016x}", conn.info.conn_id),
                    corr_id = corr_id.as_deref(),
                    backend = backend.as_str(),
                    peer_addr = %addr,
                    pq = conn.info.pq.as_str(),
                    duration_ms,
                    "dialed"
                );
            }
            Err(e) => {
                bm.dials_err.inc();
                // Admission refusals were counted by the policy already.
                if !matches!(e, TransportError::PeerLimit | TransportError::RateLimited) {
                    if let Some(reason) = e.reject_reason() {
                        shared.metrics.reject(reason);
                    }
                }
                if let TransportError::Tls { .. } = e {
                    bm.tls_failures.inc();
                    shared
                        .metrics
                        .pq_handshake_result(backend, shared.pq_mode, false);
                }
                tracing::info!(
                    target: "ron_transport",
                    event = if e.reject_reason().is_some() { "reject" } else { "dial" },
                    reason = e.reject_reason().map(RejectReason::as_str),
                    corr_id = corr_id.as_deref(),
                    backend = backend.as_str(),
                    peer_addr = %addr,
                    duration_ms,
                    error = %e,
                    "dial failed"
                );
            }
        }
        result
    }

    async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let inner = &self.inner;
        let started = Instant::now();
        inner.shutdown.cancel();
        inner.uds_files.remove_all();
        inner
            .shared
            .readiness
            .set(ReadyState::NotReady { reason: "shutdown" });
        let cores = inner.conn_cores();
        for core in &cores {
            core.close.cancel();
        }
        inner.tasks.close();
        let mut aborted = 0u64;
        if tokio::time::timeout(deadline, inner.tasks.wait())
            .await
            .is_err()
        {
            for core in &cores {
                if !core.writer_done.is_cancelled() {
                    aborted += 1;
                    core.metrics
                        .tasks_aborted
                        .with_label_values(&[TaskKind::Writer.as_str()])
                        .inc();
                    core.fail(&TransportError::timeout(TimeoutOp::Shutdown));
                    core.cancel.cancel();
                }
            }
            // Cancelled tasks exit at their next poll.
            let _ = tokio::time::timeout(Duration::from_secs(1), inner.tasks.wait()).await;
        }
        let report = ShutdownReport {
            drained: cores.len() as u64 - aborted,
            aborted,
        };
        tracing::info!(
            target: "ron_transport",
            event = "shutdown",
            backend = inner.shared.backend.as_str(),
            drained = report.drained,
            aborted = report.aborted,
            duration_ms = started.elapsed().as_millis() as u64,
            "engine shut down"
        );
        report
    }
}

/// The TLS server name for a dial: explicit option, then `tls_client.sni_override`, else the IP.
fn server_name(
    opts: &DialOptions,
    shared: &EngineShared,
    addr: SocketAddr,
) -> Result<ServerName<'static>, TransportError> {
    let cfg = shared.config();
    let name = opts
        .server_name
        .clone()
        .or_else(|| cfg.tls_client_sni.clone());
    match name {
        Some(n) => ServerName::try_from(n).map_err(|e| TransportError::Tls {
            detail: format!("invalid server name: {e}"),
        }),
        None => Ok(ServerName::IpAddress(addr.ip().into())),
    }
}

/// The `pq` label of a finished handshake.
pub(crate) fn pq_label(state: &tokio_rustls::rustls::CommonState) -> PqLabel {
    #[cfg(feature = "tls")]
    {
        crate::tls::negotiated_pq(state)
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = state;
        PqLabel::Off
    }
}
