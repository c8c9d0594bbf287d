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
pub(crate) mod listener;
#[cfg(feature = "quic")]
pub(crate) mod quic;
pub(crate) mod stream;
mod uds;
mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use conn::{TokioConn, TokioSender};
pub use listener::TokioListener;

use crate::config::Backend;
use crate::engine::admission::{self, Admission, DialAccount, Direction};
use crate::engine::shared::EngineShared;
use crate::engine::target::unsupported_target;
use crate::engine::{
    ConnInfo, DialOptions, Engine, EngineKind, ShutdownReport, WRITER_INBOX_CAPACITY,
};
use crate::engine::{DialTarget, ListenTarget};
use crate::error::{TimeoutOp, TransportError};
use crate::limits::FrameDecoder;
use crate::metrics::{PqLabel, TaskKind};
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
    /// What `ConnInfo::engine` says (`Memory` when the memory engine drives this machinery).
    pub(crate) kind: EngineKind,
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

    /// A dialed stream (connected and, for TLS, handshaken) becomes a connection: observes the
    /// handshake latency and the PQ result, logs the TLS handshake, and builds the connection.
    /// Shared by every engine built on this machinery (tokio, memory).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dialed(
        self: &Arc<Self>,
        stream: Stream,
        admitted: impl Into<Arc<Admission>>,
        peer: SocketAddr,
        local: SocketAddr,
        tls_facts: Option<(Option<Vec<u8>>, bool)>,
        pq: PqLabel,
        started: Instant,
        corr_id: &Option<Arc<str>>,
    ) -> TokioConn {
        let shared = &self.shared;
        let backend = shared.backend;
        shared
            .metrics
            .backend(backend)
            .handshake(pq)
            .observe(started.elapsed().as_secs_f64());
        if backend.is_tls() {
            shared.metrics.pq_handshake_result(backend, pq, true);
        }
        let (alpn, resumed) = tls_facts.unwrap_or((None, false));
        let info = ConnInfo {
            conn_id: shared.next_conn_id(),
            peer_addr: peer,
            local_addr: local,
            backend,
            engine: self.kind,
            alpn,
            pq,
            resumed,
        };
        if backend.is_tls() {
            listener::log_handshake(&info, started, corr_id.as_deref());
        }
        self.make_conn(stream, admitted, info, corr_id.clone())
    }

    /// Turns an established (and, for TLS, handshaken) stream into a connection: splits it,
    /// spawns its writer task and registers it.
    pub(crate) fn make_conn(
        self: &Arc<Self>,
        stream: Stream,
        permit: impl Into<Arc<Admission>>,
        mut info: ConnInfo,
        corr_id: Option<Arc<str>>,
    ) -> TokioConn {
        let shared = &self.shared;
        let permit: Arc<Admission> = permit.into();
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
        info.engine = self.kind;
        let live = Arc::new(Live {
            core: core.clone(),
            permit,
            engine: Arc::downgrade(self),
            bytes_in: Default::default(),
            bytes_out: Default::default(),
        });
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
            last_read: tokio::time::Instant::now(),
            pause_until: None,
            cancelled: Box::pin(live.core.cancel.clone().cancelled_owned()),
            config_changes: shared.policy.config_handle().subscribe(),
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
        Self::with_kind(shared, EngineKind::Tokio)
    }

    /// The same machinery, labelled `kind` in `ConnInfo::engine` (the memory engine).
    pub(crate) fn with_kind(shared: Arc<EngineShared>, kind: EngineKind) -> Self {
        Self {
            inner: Arc::new(EngineInner {
                shared,
                tasks: TaskTracker::new(),
                conns: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                kind,
                uds_files: Default::default(),
            }),
        }
    }

    /// The state listeners and connections share (for engines built on this machinery).
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) fn inner(&self) -> &Arc<EngineInner> {
        &self.inner
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

    /// Connects to the first of `addrs` that answers, all within one deadline. Each attempt
    /// is admitted first (caps, buckets): a refused admission ends the dial.
    async fn dial_inner(
        &self,
        target: &DialTarget,
        opts: &DialOptions,
        corr_id: &Option<Arc<str>>,
        started: Instant,
    ) -> Result<TokioConn, TransportError> {
        if let DialTarget::Unix(path) = target {
            return self.dial_unix(path, opts, corr_id, started).await;
        }
        #[cfg(feature = "quic")]
        if self.inner.shared.backend == Backend::Quic {
            return quic::dial(&self.inner, target, opts, corr_id, started).await;
        }
        let inner = &self.inner;
        let shared = &inner.shared;
        let backend = shared.backend;
        let connector = match backend {
            Backend::Tcp => None,
            Backend::Tls => Some(TlsConnector::from(shared.client_tls().await?)),
            Backend::Arti => {
                return Err(TransportError::Unsupported {
                    what: "the tokio engine does not speak arti".into(),
                })
            }
            Backend::Quic => {
                return Err(TransportError::Unsupported {
                    what: "backend `quic` needs the `quic` feature".into(),
                })
            }
        };
        let established = async {
            let addrs = dial_addrs(target).await?;
            let mut last_err = None;
            for addr in addrs {
                // Outbound connections count against the same caps as inbound ones.
                let admitted = admission::admit(
                    &shared.policy,
                    &shared.metrics,
                    backend,
                    EngineKind::Tokio,
                    addr,
                    Direction::Outbound,
                )?;
                let tcp = match TcpStream::connect(addr).await {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        last_err = Some(e);
                        continue;
                    }
                };
                tcp.set_nodelay(true)?;
                let local = tcp.local_addr()?;
                let Some(connector) = &connector else {
                    return Ok((Stream::Tcp(tcp), admitted, addr, local, None, PqLabel::Off));
                };
                let name = shared.server_name(opts, target, addr)?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| TransportError::Tls {
                        detail: e.to_string(),
                    })?;
                let (_, session) = tls.get_ref();
                let pq = pq_label(session);
                let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
                let resumed =
                    session.handshake_kind() == Some(tokio_rustls::rustls::HandshakeKind::Resumed);
                let stream = Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)));
                return Ok((stream, admitted, addr, local, Some((alpn, resumed)), pq));
            }
            Err(TransportError::Io(last_err.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address to dial")
            })))
        };
        let (stream, admitted, addr, local, tls_facts, pq) = tokio::select! {
            biased;
            _ = inner.shutdown.cancelled() => return Err(TransportError::Cancelled),
            r = tokio::time::timeout(opts.deadline, established) => match r {
                Ok(r) => r?,
                Err(_) => return Err(TransportError::timeout(TimeoutOp::Dial)),
            },
        };
        Ok(inner.dialed(
            stream, admitted, addr, local, tls_facts, pq, started, corr_id,
        ))
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

    fn config(&self) -> Arc<crate::config::ValidConfig> {
        self.inner.shared.config()
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
        let target = target.into();
        let shared = &self.inner.shared;
        let corr_id: Option<Arc<str>> = opts.corr_id.as_deref().map(Arc::from);
        let books = DialAccount::open(
            &shared.metrics,
            shared.backend,
            EngineKind::Tokio,
            shared.pq_mode,
            Some(&target),
            corr_id.as_deref(),
        );
        let result = if self.inner.shutdown.is_cancelled() {
            Err(TransportError::Cancelled)
        } else {
            self.dial_inner(&target, &opts, &corr_id, books.started())
                .await
        };
        books.finish(result.as_ref().map(|c| &c.info));
        result
    }

    async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let inner = &self.inner;
        let started = Instant::now();
        inner.shutdown.cancel();
        inner.uds_files.remove_all();
        inner.shared.readiness.set(ReadyState::NotReady {
            reason: crate::readiness::reasons::SHUTDOWN,
        });
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
        crate::engine::events::shutdown(
            inner.shared.backend,
            EngineKind::Tokio,
            report.drained,
            report.aborted,
            started.elapsed(),
        );
        report
    }
}

/// The addresses a dial to `target` tries, in order (a host name is resolved off the async
/// workers).
pub(crate) async fn dial_addrs(target: &DialTarget) -> Result<Vec<SocketAddr>, TransportError> {
    match target {
        DialTarget::Addr(a) => Ok(vec![*a]),
        DialTarget::Host { host, port } => crate::blocking::resolve(host, *port).await,
        other => Err(unsupported_target("tokio", other)),
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
