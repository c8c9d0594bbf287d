//! The `uring` engine: [`Engine`] / [`Listener`] / [`Conn`] / [`FrameSender`] on top of the
//! `ron-shard` thread-per-core io_uring runtime, through connection ports
//! ([`ron_shard::port`]).
//!
//! One way in: [`Engine::serve`] spawns each admitted connection's consumer future on the
//! shard that owns the connection (its executor polls it between completion batches), where
//! `recv` / `send` touch shard-local state only; a connection or sender used elsewhere (e.g.
//! from [`Listener::accept`] on a Tokio runtime) works through the port's shared half.
//! Per-frame paths read live limits from a generation-checked cache, not the config snapshot.
//!
//! Policy wiring (the shard runtime itself is mechanism only):
//! - admission: [`Policy::admit`] runs in the runtime's admit hook on the accepting shard, right
//!   after accept and before any buffer or read; refused sockets are closed there (the policy
//!   counts `rejected_total{reason}`);
//! - limits: the shard checks the frame ceiling before allocating (`max_frame_bytes` at listen
//!   or dial time); a lower live value is enforced per frame as it arrives and on send;
//! - timeouts: read/write/idle deadlines are taken from the live config when each connection
//!   opens and enforced by the shard's timers; every timeout counts
//!   `rejected_total{reason="timeout"}` once;
//! - rates: egress is checked in `try_send` (`RateLimited`) and paced in `send`; ingress is
//!   paced by holding the connection's reads for as long as the buckets ask.
//! - metrics: accepts, dials, `conn_inflight`, `bytes_in_total` / `io_read_size_bytes` per
//!   receive completion and `bytes_out_total` / `io_write_size_bytes` per send completion
//!   (frame bytes, prefix included; for TLS the plaintext), writer-inbox drops, aborted tasks
//!   at shutdown, all with `backend` label.
//!
//! TLS (`backend = "tls"`): the shards run the handshake and the record layer themselves
//! (`ron-shard`'s unbuffered rustls pump, no Tokio task per connection). Listeners use the
//! server config (from [`EngineSetup`](crate::engine::setup::EngineSetup) or `tls.*` files),
//! dials the client config. A server handshake is bounded by `read_timeout`
//! (`Timeout{op: Handshake}`, reason `timeout`), a dial's by its deadline. Outcomes: success
//! observes `handshake_latency_seconds{backend="tls",pq}` and `pq_handshake_total{result="ok"}`;
//! a TLS failure counts `tls_handshake_failures_total`, `rejected_total{reason="tls"}` and
//! `pq_handshake_total{result="fail"}`. `ConnInfo` carries `pq`, `alpn` and `resumed`.
#![forbid(unsafe_code)]

#[cfg(feature = "quic")]
mod quic;
mod uds;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use ron_shard::{
    AcceptHooks, AdmitToken, CloseReason, ConnCtx, ConnHandler, ConnMeta, ConnOptions, ConnRemote,
    DialError, DialHooks, Frame, HandleOptions, OutboundHooks, PortConn, PortTx, Reject, Runtime,
    RuntimeConfig, SendError, TimeoutKind, Timeouts,
};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Backend, ConfigHandle, ValidConfig};
use crate::engine::admission::{self, Admission, DialAccount, Direction};
use crate::engine::shared::ClientTls;
use crate::engine::{events, listen};
use crate::engine::{
    Conn, ConnInfo, DialOptions, DialTarget, Engine, EngineKind, FrameSender, ListenTarget,
    Listener, ShutdownReport, WRITER_INBOX_CAPACITY,
};
use crate::error::{RejectReason, TimeoutOp, TransportError};
use crate::metrics::{BackendMetrics, PqLabel, QueueName, TaskKind, TransportMetrics};
use crate::policy::{now_ns, Policy};
use crate::readiness::{Readiness, ReadyState, TransportHealth};

/// Frames buffered towards a consumer before the shard stops reading that socket.
const INBOUND_CAPACITY: usize = 64;
/// Inbound bytes buffered per connection before reads pause, in `chunk_bytes`.
const INBOUND_CHUNKS: usize = 4;
/// Admitted connections waiting in a listener's accept queue.
const ACCEPT_BACKLOG: usize = 1024;

/// The config values the per-frame paths need, cached from the live config and refreshed when
/// its generation moves. A frame costs one atomic load of the generation (a read-shared cache
/// line nobody writes on the hot path) instead of cloning the config snapshot's `Arc` (a
/// read-modify-write on a line every shard would share).
struct LiveLimits {
    policy: Arc<Policy>,
    generation: AtomicU64,
    max_frame: AtomicU64,
    write_timeout_ns: AtomicU64,
    rates_on: AtomicBool,
}

impl LiveLimits {
    fn new(policy: Arc<Policy>) -> Arc<Self> {
        let l = Arc::new(Self {
            policy,
            generation: AtomicU64::new(u64::MAX),
            max_frame: AtomicU64::new(0),
            write_timeout_ns: AtomicU64::new(0),
            rates_on: AtomicBool::new(false),
        });
        l.refresh();
        l
    }

    #[inline]
    fn refresh(&self) {
        let g = self.policy.config_handle().generation();
        if g != self.generation.load(Ordering::Acquire) {
            let cfg = self.policy.config();
            self.max_frame.store(cfg.max_frame_bytes, Ordering::Relaxed);
            let wt = u64::try_from(cfg.write_timeout.as_nanos()).unwrap_or(u64::MAX);
            self.write_timeout_ns.store(wt, Ordering::Relaxed);
            self.rates_on.store(cfg.has_byte_rates(), Ordering::Relaxed);
            self.generation.store(g, Ordering::Release);
        }
    }

    /// The live frame ceiling.
    #[inline]
    fn max_frame(&self) -> u64 {
        self.refresh();
        self.max_frame.load(Ordering::Relaxed)
    }

    /// The live write timeout (`None` if disabled).
    #[inline]
    fn write_timeout(&self) -> Option<Duration> {
        self.refresh();
        let ns = self.write_timeout_ns.load(Ordering::Relaxed);
        (ns != 0).then(|| Duration::from_nanos(ns))
    }

    /// True if any byte-rate limit is configured (else no bucket is consulted, no clock read).
    #[inline]
    fn rates_on(&self) -> bool {
        self.refresh();
        self.rates_on.load(Ordering::Relaxed)
    }
}

struct Inner {
    rt: Runtime,
    limits: Arc<LiveLimits>,
    policy: Arc<Policy>,
    metrics: Arc<TransportMetrics>,
    readiness: Readiness,
    tls: UringTls,
    /// Socket files of this engine's Unix-domain listeners, removed at shutdown.
    uds_files: crate::engine::uds::SocketFiles,
    /// Open connections, woken when a reload changes what their shard enforces.
    open: Arc<OpenConns>,
    /// The config-change registration (dropped with the engine).
    reload_hook: OnceLock<crate::config::ChangeHook>,
}

/// Wake bit (above the port's own bits) telling a connection's shard-side handler that the
/// config changed: it re-reads its read/write/idle deadlines from the live snapshot.
const WAKE_CONFIG: u32 = 1 << 16;

/// The open connections of one engine, by registration key: a reload wakes each on its own
/// shard (one atomic `or` plus at most one queue post per connection).
#[derive(Default)]
struct OpenConns {
    next: AtomicU64,
    conns: std::sync::Mutex<std::collections::HashMap<u64, ConnRemote>>,
}

impl OpenConns {
    fn insert(&self, remote: ConnRemote) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, remote);
        key
    }

    fn remove(&self, key: u64) {
        self.lock().remove(&key);
    }

    fn wake_all(&self, bits: u32) {
        for remote in self.lock().values() {
            remote.wake(bits);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, ConnRemote>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The TLS configs of a uring engine (policy decided by the caller: roots, PQ groups, ALPN,
/// resumption stores live in the rustls configs).
#[derive(Debug, Default)]
pub struct UringTls {
    /// Server config for listeners (required for a TLS listener).
    pub server: Option<Arc<rustls::ServerConfig>>,
    /// Client config for dials: fixed, or built from `tls_client.*` (and rebuilt after a
    /// reload changes them) on a loader thread at the first TLS dial.
    pub client: ClientTls,
}

impl Inner {
    fn cfg(&self) -> Arc<ValidConfig> {
        self.policy.config()
    }

    fn backend(&self) -> Backend {
        self.cfg().backend
    }

    fn bm(&self) -> &BackendMetrics {
        self.metrics.backend(self.backend())
    }

    fn conn_options(&self) -> ConnOptions {
        let cfg = self.cfg();
        ConnOptions {
            max_frame: u32::try_from(cfg.max_frame_bytes).unwrap_or(u32::MAX),
            timeouts: timeouts_of(&cfg),
            nodelay: true,
        }
    }

    fn handle_options(&self) -> HandleOptions {
        let cfg = self.cfg();
        HandleOptions {
            inbound_capacity: INBOUND_CAPACITY,
            // A consumer that stops receiving holds at most this plus one frame (not 64
            // ceiling-sized frames).
            inbound_bytes: usize::try_from(cfg.chunk_bytes)
                .unwrap_or(64 * 1024)
                .saturating_mul(INBOUND_CHUNKS),
            inbox_capacity: WRITER_INBOX_CAPACITY,
            high_water_bytes: usize::try_from(cfg.chunk_bytes)
                .unwrap_or(64 * 1024)
                .saturating_mul(4),
        }
    }

    fn is_tls(&self) -> bool {
        self.backend() == Backend::Tls
    }

    /// The configured key-exchange posture (the `mode` label of a failed handshake).
    fn pq_mode(&self) -> PqLabel {
        if self.cfg().pq_mode == crate::config::PqMode::Hybrid {
            PqLabel::Hybrid
        } else {
            PqLabel::Off
        }
    }
}

fn pq_of(meta: &ConnMeta) -> PqLabel {
    match &meta.tls {
        Some(t) if t.hybrid_pq => PqLabel::Hybrid,
        _ => PqLabel::Off,
    }
}

pub(crate) fn timeouts_of(cfg: &ValidConfig) -> Timeouts {
    let nz = |d: Duration| (!d.is_zero()).then_some(d);
    Timeouts {
        read: nz(cfg.read_timeout),
        write: nz(cfg.write_timeout),
        idle: nz(cfg.idle_timeout),
    }
}

/// For engine auto-selection: `Ok(())` if the uring engine can serve `cfg` on this host, else a
/// stable reason (`io_uring_disabled`, `seccomp`, `enosys`, `memlock`, `missing_opcodes`,
/// `error` from [`ron_shard::probe`], prefixed `io_uring_`). TCP and TLS are both served;
/// so is `backend = "quic"` (the shards drive quinn-proto).
pub fn availability(_cfg: &ValidConfig) -> Result<(), &'static str> {
    let probe = ron_shard::probe();
    match probe.failure {
        None => Ok(()),
        Some(f) => Err(match f.reason() {
            "io_uring_disabled" => "io_uring_disabled",
            "seccomp" => "io_uring_seccomp",
            "enosys" => "io_uring_enosys",
            "memlock" => "io_uring_memlock",
            "missing_opcodes" => "io_uring_missing_opcodes",
            _ => "io_uring_error",
        }),
    }
}

/// The io_uring thread-per-core engine.
#[derive(Clone)]
pub struct UringEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("shards", &self.inner.rt.shard_count())
            .finish()
    }
}

impl UringEngine {
    /// Starts the shard runtime (one shard per core) under `config` and `metrics`.
    pub fn new(
        config: ConfigHandle,
        metrics: Arc<TransportMetrics>,
    ) -> Result<Self, TransportError> {
        Self::with_runtime(config, metrics, RuntimeConfig::default())
    }

    /// Like [`new`](Self::new) with explicit runtime knobs (shard count, buffer pool, ...).
    pub fn with_runtime(
        config: ConfigHandle,
        metrics: Arc<TransportMetrics>,
        runtime: RuntimeConfig,
    ) -> Result<Self, TransportError> {
        Self::build(config, metrics, runtime, None)
    }

    /// The full constructor: runtime knobs and an optional readiness publisher to drive (e.g.
    /// one shared with a consumer's `/readyz`); it is set `Ready` once the shards run.
    pub fn build(
        config: ConfigHandle,
        metrics: Arc<TransportMetrics>,
        runtime: RuntimeConfig,
        readiness: Option<Readiness>,
    ) -> Result<Self, TransportError> {
        Self::build_with_tls(config, metrics, runtime, readiness, UringTls::default())
    }

    /// [`build`](Self::build) with TLS configs (for `backend = "tls"`).
    pub fn build_with_tls(
        config: ConfigHandle,
        metrics: Arc<TransportMetrics>,
        runtime: RuntimeConfig,
        readiness: Option<Readiness>,
        tls: UringTls,
    ) -> Result<Self, TransportError> {
        let chunk = usize::try_from(config.load().chunk_bytes).unwrap_or(64 * 1024);
        let rt = Runtime::start(RuntimeConfig {
            chunk_bytes: chunk.max(1),
            ..runtime
        })
        .map_err(|e| TransportError::Unsupported {
            what: format!("uring engine: {e}"),
        })?;
        let policy = Policy::new(config, metrics.clone());
        let limits = LiveLimits::new(policy.clone());
        let readiness = readiness.unwrap_or_else(|| Readiness::new("uring", ReadyState::Ready));
        readiness.set(ReadyState::Ready);
        let inner = Arc::new(Inner {
            rt,
            limits,
            policy,
            metrics,
            readiness,
            tls,
            open: Arc::default(),
            reload_hook: OnceLock::new(),
            uds_files: Default::default(),
        });
        // Reloaded deadlines reach open connections: each is woken on its shard and re-reads
        // them (the per-frame limits are generation-checked there already).
        let open = Arc::downgrade(&inner.open);
        let hook = inner.policy.config_handle().on_change(move |_| {
            if let Some(open) = open.upgrade() {
                open.wake_all(WAKE_CONFIG);
            }
        });
        let _ = inner.reload_hook.set(hook);
        Ok(Self { inner })
    }

    /// The shared admission/pacing policy.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.inner.policy
    }

    /// Per-shard runtime counters.
    pub fn shard_stats(&self) -> Vec<ron_shard::StatsSnapshot> {
        self.inner.rt.stats()
    }
}

impl UringEngine {
    /// Fault injection for tests: makes one shard's thread panic outside any handler (see
    /// [`ron_shard::Runtime::inject_shard_panic`]). Not for production.
    #[doc(hidden)]
    pub fn inject_shard_panic(&self, shard: usize) -> Result<(), ron_shard::ShardError> {
        self.inner.rt.inject_shard_panic(shard)
    }
}

impl TransportHealth for UringEngine {
    /// The published state, after folding in dead shards: one dead shard (its connections
    /// closed, nothing routed to it) is `Degraded("shard_dead")`, all of them
    /// `NotReady("shard_dead")`. A shutdown's `NotReady` stays.
    fn readiness(&self) -> ReadyState {
        let r = &self.inner.readiness;
        let dead = self.inner.rt.dead_shards().len();
        if dead > 0 && !matches!(r.readiness(), ReadyState::NotReady { .. }) {
            let reason = crate::readiness::reasons::SHARD_DEAD;
            r.set(if dead == self.inner.rt.shard_count() {
                ReadyState::NotReady { reason }
            } else {
                ReadyState::Degraded { reason }
            });
        }
        r.readiness()
    }
}

impl Engine for UringEngine {
    type Listener = UringListener;
    type Conn = UringConn;

    fn kind(&self) -> EngineKind {
        EngineKind::Uring
    }

    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    fn config(&self) -> Arc<ValidConfig> {
        self.inner.cfg()
    }

    fn listen(
        &self,
        target: impl Into<ListenTarget> + Send,
    ) -> impl Future<Output = Result<Self::Listener, TransportError>> + Send {
        let inner = self.inner.clone();
        let target = target.into();
        async move {
            let addr = match target {
                ListenTarget::Addr(addr) => addr,
                ListenTarget::Unix(path) => return uds::listen(inner, path).await,
            };
            let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
            let serve = Arc::new(OnceLock::new());
            let hooks = Arc::new(AcceptSide {
                inner: Arc::downgrade(&inner),
                tx,
                serve: serve.clone(),
            });
            let (id, local) = listen_on(&inner, addr, hooks)?;
            events::listen(inner.backend(), EngineKind::Uring, local);
            Ok(UringListener {
                inner,
                local,
                rx,
                id,
                serve,
                uds: None,
            })
        }
    }

    fn dial(
        &self,
        target: impl Into<DialTarget> + Send,
        opts: DialOptions,
    ) -> impl Future<Output = Result<Self::Conn, TransportError>> + Send {
        let inner = self.inner.clone();
        let target = target.into();
        async move {
            let corr_id = opts.corr_id.clone();
            let books = DialAccount::open(
                &inner.metrics,
                inner.backend(),
                EngineKind::Uring,
                inner.pq_mode(),
                Some(&target),
                corr_id.as_deref(),
            );
            let result = dial_to(&inner, &target, &opts, books.started()).await;
            match result {
                Ok((handle, admitted, meta)) => {
                    let conn = UringConn::new(&inner, &meta, handle, admitted, opts.corr_id);
                    books.finish(Ok(conn.info()));
                    Ok(conn)
                }
                Err(e) => {
                    books.finish(Err(&e));
                    Err(e)
                }
            }
        }
    }

    /// Runs each admitted connection's `handler` future on the shard that owns the connection
    /// (spawned there by the accept path, polled between completion batches): its `recv` /
    /// `send` touch that shard's local state only. The handler is installed when `serve` is
    /// called (before the returned future is first polled). Connections that were already
    /// waiting for `accept` then run on the caller's Tokio runtime (or, called on a shard, on
    /// that shard) through the port's shared path. The future ends when the listener stops.
    #[allow(clippy::manual_async_fn)] // an `async fn` would borrow `self`: not `'static`
    fn serve<H, Fut>(
        &self,
        mut listener: UringListener,
        handler: H,
    ) -> impl Future<Output = Result<(), TransportError>> + Send + 'static
    where
        H: Fn(UringConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Installed now, not at the future's first poll: a connection admitted right after
        // this call already runs on its shard.
        let handler = Arc::new(handler);
        let on_shard = handler.clone();
        let run: ServeFn = Arc::new(move |conn| Box::pin(on_shard(conn)) as ServeFuture);
        let installed = listener.serve.set(run).is_ok();
        async move {
            if !installed {
                return Err(TransportError::Unsupported {
                    what: "this listener is already being served".into(),
                });
            }
            // The accept queue only holds connections admitted before `serve` took over; it
            // ends when the listener stops (engine shutdown drops the shard's accept hooks).
            while let Some((handle, admitted, meta)) = listener.rx.recv().await {
                let conn = UringConn::new(&listener.inner, &meta, handle, admitted, None);
                let fut = handler(conn);
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(fut);
                } else if let Err(fut) = ron_shard::spawn_local(fut) {
                    drop(fut); // nowhere to run it: the connection closes
                }
            }
            Ok(())
        }
    }

    fn shutdown(&self, deadline: Duration) -> impl Future<Output = ShutdownReport> + Send {
        let inner = self.inner.clone();
        async move {
            inner.readiness.set(ReadyState::NotReady {
                reason: crate::readiness::reasons::SHUTDOWN,
            });
            let started = std::time::Instant::now();
            inner.uds_files.remove_all();
            let r = inner.rt.shutdown(deadline).wait_async().await;
            if r.aborted > 0 {
                inner
                    .metrics
                    .tasks_aborted
                    .with_label_values(&[TaskKind::Reader.as_str()])
                    .inc_by(r.aborted);
            }
            events::shutdown(
                inner.backend(),
                EngineKind::Uring,
                r.drained,
                r.aborted,
                started.elapsed(),
            );
            ShutdownReport {
                drained: r.drained,
                aborted: r.aborted,
            }
        }
    }
}

/// Starts the shards listening at `addr` with `hooks`: QUIC (every shard's UDP socket), TLS or
/// plain TCP by the backend. Returns the listener id and the bound address.
fn listen_on(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    hooks: Arc<AcceptSide>,
) -> Result<(ron_shard::ListenerId, SocketAddr), TransportError> {
    #[cfg(feature = "quic")]
    if inner.backend() == Backend::Quic {
        return quic::listen(inner, addr, hooks);
    }
    let Ok(server_tls) = listener_tls(inner.is_tls(), inner.tls.server.as_ref()) else {
        return Err(listen::tls_config_missing(&inner.readiness));
    };
    let l = ron_shard::bind(addr).map_err(|e| listen::bind_failed(&inner.readiness, e))?;
    let local = l.local_addr()?;
    let listened = match server_tls {
        Some(cfg) => inner.rt.listen_tls(l, inner.conn_options(), cfg, hooks),
        None => inner.rt.listen(l, inner.conn_options(), hooks),
    };
    let id = listened.map_err(|e| TransportError::Unsupported {
        what: format!("uring listener: {e}"),
    })?;
    Ok((id, local))
}

/// Dials `target` on the runtime: resolves a host name on a loader thread, then tries each
/// address in order within the one deadline. Every attempt is admitted before its connect is
/// submitted (caps, pacing buckets), exactly like an accepted connection, and the admission
/// rides with the connection (released when it closes, or when the attempt fails).
async fn dial_to(
    inner: &Arc<Inner>,
    target: &DialTarget,
    opts: &DialOptions,
    started: std::time::Instant,
) -> Result<Accepted, TransportError> {
    let deadline = started + opts.deadline;
    let addrs = match target {
        DialTarget::Addr(a) => vec![*a],
        DialTarget::Host { host, port } => {
            match tokio::time::timeout_at(deadline.into(), crate::blocking::resolve(host, *port))
                .await
            {
                Ok(r) => r?,
                Err(_) => return Err(TransportError::timeout(TimeoutOp::Dial)),
            }
        }
        DialTarget::Unix(path) => {
            let corr_id = opts.corr_id.as_deref().map(Arc::from);
            return uds::dial(inner, path, opts.deadline, corr_id).await;
        }
    };
    let client = if inner.is_tls() || inner.backend() == Backend::Quic {
        Some(inner.tls.client.current(&inner.cfg()).await?)
    } else {
        None
    };
    let mut last = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(TransportError::timeout(TimeoutOp::Dial));
        }
        let admitted = admission::admit(
            &inner.policy,
            &inner.metrics,
            inner.backend(),
            EngineKind::Uring,
            addr,
            Direction::Outbound,
        )?;
        let tls = match &client {
            Some(config) => {
                let server_name = crate::engine::target::tls_server_name(
                    opts,
                    inner.cfg().tls_client_sni.as_deref(),
                    target,
                    addr,
                )?;
                Some(ron_shard::TlsDial {
                    config: config.clone(),
                    server_name,
                })
            }
            None => None,
        };
        let (tx, rx) = oneshot::channel();
        let hooks = Box::new(DialSide {
            inner: Arc::downgrade(inner),
            tx,
            admitted: Some(admitted),
            corr_id: opts.corr_id.as_deref().map(Arc::from),
        });
        #[cfg(feature = "quic")]
        if inner.backend() == Backend::Quic {
            let (Some(config), Some(t)) = (&client, &tls) else {
                return Err(TransportError::Unsupported {
                    what: "QUIC dial without a TLS client config".into(),
                });
            };
            let name = t.server_name.to_str().into_owned();
            quic::dial(inner, addr, left, config, name, hooks)?;
            match rx.await {
                Ok(Ok(accepted)) => return Ok(accepted),
                Ok(Err(DialError::Timeout)) => {
                    return Err(TransportError::timeout(TimeoutOp::Dial))
                }
                Ok(Err(DialError::Io(e))) => {
                    last = Some(e);
                    continue;
                }
                Ok(Err(DialError::Tls { kind, detail })) => {
                    return Err(quic_dial_error(kind, detail))
                }
                Ok(Err(_)) | Err(_) => return Err(TransportError::Cancelled),
            }
        }
        let sent = match tls {
            Some(t) => inner
                .rt
                .dial_tls(addr, left, inner.conn_options(), t, hooks),
            None => inner.rt.dial(addr, left, inner.conn_options(), hooks),
        };
        if let Err((e, _)) = sent {
            return Err(TransportError::Unsupported {
                what: format!("uring dial: {e}"),
            });
        }
        match rx.await {
            Ok(Ok(accepted)) => return Ok(accepted),
            Ok(Err(DialError::Timeout)) => return Err(TransportError::timeout(TimeoutOp::Dial)),
            Ok(Err(DialError::Io(e))) => last = Some(e),
            Ok(Err(DialError::Tls { kind, detail })) => {
                return Err(TransportError::Tls {
                    detail: format!("{kind}: {detail}"),
                })
            }
            Ok(Err(_)) | Err(_) => return Err(TransportError::Cancelled),
        }
    }
    Err(TransportError::Io(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address to dial")
    })))
}

/// A QUIC dial's handshake failure as the contract names it: TLS alerts are `tls`, anything
/// else on the path `quic_path_error` (as on the tokio engine).
#[cfg(feature = "quic")]
fn quic_dial_error(kind: &'static str, detail: String) -> TransportError {
    if kind == "quic_path_error" {
        TransportError::QuicPath { detail }
    } else {
        TransportError::Tls {
            detail: format!("{kind}: {detail}"),
        }
    }
}

/// Counts a failed TLS handshake (not a timeout): `tls_handshake_failures_total`,
/// `rejected_total{reason="tls"}`, `pq_handshake_total{result="fail"}`.
pub(crate) fn count_tls_failure(
    metrics: &TransportMetrics,
    backend: Backend,
    bm: &BackendMetrics,
    pq: PqLabel,
) {
    // The failure counter last: whoever sees it move also sees the reject and the pq result.
    metrics.reject(RejectReason::Tls);
    metrics.pq_handshake_result(backend, pq, false);
    bm.tls_failures.inc();
}

/// Counts a handshake that ended before the connection opened, by why it ended: a deadline is
/// a `timeout` reject; runtime shutdown is not the peer's doing and counts nothing; anything
/// else (a TLS error, or the peer leaving mid-handshake, which tokio-rustls also reports as a
/// TLS failure) is a TLS failure.
pub(crate) fn count_handshake_failure(
    metrics: &TransportMetrics,
    backend: Backend,
    bm: &BackendMetrics,
    pq: PqLabel,
    reason: &CloseReason,
) {
    match reason {
        CloseReason::Timeout(_) => metrics.reject(RejectReason::Timeout),
        CloseReason::Shutdown | CloseReason::Aborted => {}
        // QUIC: the path failed during the handshake (no TLS verdict), as on tokio.
        CloseReason::QuicPath(_) => metrics.reject(RejectReason::QuicPathError),
        _ => count_tls_failure(metrics, backend, bm, pq),
    }
}

/// The shard-side wrapper around a connection's port: live limits, metrics, close accounting.
/// (Per-connection memory matters here: the backend's metric handles are looked up through
/// `metrics`, not cloned into every connection.)
struct Metered<H> {
    inner: H,
    limits: Arc<LiveLimits>,
    /// This connection's entry in the engine's open set (for reload wakes).
    open: Arc<OpenConns>,
    open_key: u64,
    admitted: Arc<Admission>,
    backend: Backend,
    metrics: Arc<TransportMetrics>,
    /// For the connection's `reject` / `close` events.
    conn_id: u64,
    peer: SocketAddr,
    corr_id: Option<Arc<str>>,
    opened: std::time::Instant,
    bytes_in: u64,
    bytes_out: u64,
}

impl<H: ConnHandler> ConnHandler for Metered<H> {
    fn on_open(&mut self, ctx: &mut ConnCtx<'_>) {
        ctx.set_timeouts(timeouts_of(&self.limits.policy.config()));
        self.inner.on_open(ctx);
    }

    fn on_frame(&mut self, ctx: &mut ConnCtx<'_>, frame: Frame<'_>) {
        let n = frame.len() as u64 + 4;
        let max = self.limits.max_frame();
        if frame.len() as u64 > max {
            // A lowered live ceiling: the close reason says so (counted once, in `on_close`).
            ctx.abort_with(CloseReason::Frame(ron_shard::FrameError::TooLarge {
                len: u32::try_from(frame.len()).unwrap_or(u32::MAX),
                max: u32::try_from(max).unwrap_or(u32::MAX),
            }));
            return;
        }
        if self.limits.rates_on() {
            let p = &self.admitted;
            // Ingress pacing: the shard stops reading this socket for as long as the buckets
            // ask (per-conn, per-peer, global); TCP backpressure then slows the peer.
            let wait = p.pace_ingress(n, now_ns());
            ctx.hold_reading_for(wait);
        }
        self.inner.on_frame(ctx, frame);
    }

    fn on_writable(&mut self, ctx: &mut ConnCtx<'_>) {
        self.inner.on_writable(ctx);
    }

    fn on_received(&mut self, bytes: usize) {
        // Per receive completion: frame bytes (prefix included; TLS: plaintext).
        self.bytes_in += bytes as u64;
        let bm = self.metrics.backend(self.backend);
        bm.bytes_in.inc_by(bytes as u64);
        bm.io_read_size.observe(bytes as f64);
    }

    fn on_sent(&mut self, bytes: usize) {
        // Per send completion: frame bytes actually written (TLS: plaintext carried).
        self.bytes_out += bytes as u64;
        let bm = self.metrics.backend(self.backend);
        bm.bytes_out.inc_by(bytes as u64);
        bm.io_write_size.observe(bytes as f64);
    }

    fn on_wake(&mut self, ctx: &mut ConnCtx<'_>, bits: u32) {
        if bits & WAKE_CONFIG != 0 {
            ctx.set_timeouts(timeouts_of(&self.limits.policy.config()));
        }
        // Always passed on, even with no bits left: the port delivers on-shard requests
        // through its own state on a bare wake.
        self.inner.on_wake(ctx, bits & !WAKE_CONFIG);
    }

    fn on_drain(&mut self, ctx: &mut ConnCtx<'_>) {
        self.inner.on_drain(ctx);
    }

    fn on_close(&mut self, reason: &CloseReason) {
        let rejected = match reason {
            CloseReason::Timeout(_) => Some(RejectReason::Timeout),
            CloseReason::Frame(_) => Some(RejectReason::TooLarge),
            // QUIC: the path under this stream failed (idle timeout, reset), as on tokio.
            CloseReason::QuicPath(_) => Some(RejectReason::QuicPathError),
            CloseReason::Shutdown => {
                self.metrics
                    .tasks_aborted
                    .with_label_values(&[TaskKind::Writer.as_str()])
                    .inc();
                None
            }
            _ => None,
        };
        let error = map_close(reason);
        let facts = events::ConnFacts {
            conn_id: self.conn_id,
            corr_id: self.corr_id.as_deref(),
            backend: self.backend,
            engine: EngineKind::Uring,
            peer: self.peer,
        };
        if let Some(r) = rejected {
            self.metrics.reject(r);
            if let Some(e) = &error {
                events::conn_reject(&facts, r, self.opened.elapsed(), e);
            }
        }
        events::close(
            &facts,
            error.as_ref().and_then(TransportError::reject_reason),
            self.opened.elapsed(),
            self.bytes_in,
            self.bytes_out,
        );
        self.inner.on_close(reason);
    }
}

impl<H> Drop for Metered<H> {
    fn drop(&mut self) {
        self.open.remove(self.open_key);
    }
}

fn metered(
    engine: &Arc<Inner>,
    meta: &ConnMeta,
    remote: ConnRemote,
    admitted: Arc<Admission>,
    corr_id: Option<Arc<str>>,
) -> (Box<dyn ConnHandler>, PortConn) {
    let bm = engine.bm();
    // TLS: accept/connect to handshake completion (the shard built the handler only then).
    // Plain TCP: establishment (accept → open, or connect) is the "handshake".
    let pq = pq_of(meta);
    let took = admitted.started().elapsed();
    // QUIC: the handshake is the connection's, counted with its first stream only.
    let handshook = meta.quic_stream.is_none_or(|(_, first)| first);
    if handshook {
        bm.handshake(pq).observe(took.as_secs_f64());
    }
    if let (Some(tls), true) = (&meta.tls, handshook) {
        engine
            .metrics
            .pq_handshake_result(engine.backend(), pq, true);
        events::handshake(
            &facts(engine, meta, corr_id.as_deref()),
            pq,
            tls.resumed,
            took,
        );
    }
    for kind in [TaskKind::Reader, TaskKind::Writer] {
        engine
            .metrics
            .tasks_spawned
            .with_label_values(&[kind.as_str()])
            .inc();
    }
    let hooks: Arc<dyn OutboundHooks> = Arc::new(Outbound {
        depth: engine
            .metrics
            .queue_depth
            .with_label_values(&[QueueName::WriterInbox.as_str()]),
        admitted: Arc::downgrade(&admitted),
        limits: engine.limits.clone(),
    });
    let open_key = engine.open.insert(remote.clone());
    let (bridge, handle) = ron_shard::port(remote, engine.handle_options(), Some(hooks));
    let h = Metered {
        inner: bridge,
        limits: engine.limits.clone(),
        open: engine.open.clone(),
        open_key,
        admitted,
        backend: engine.backend(),
        metrics: engine.metrics.clone(),
        conn_id: meta.id,
        peer: meta.peer,
        corr_id,
        opened: std::time::Instant::now(),
        bytes_in: 0,
        bytes_out: 0,
    };
    (Box::new(h), handle)
}

/// What every event about the connection `meta` describes carries.
fn facts<'a>(engine: &Inner, meta: &ConnMeta, corr_id: Option<&'a str>) -> events::ConnFacts<'a> {
    events::ConnFacts {
        conn_id: meta.id,
        corr_id,
        backend: engine.backend(),
        engine: EngineKind::Uring,
        peer: meta.peer,
    }
}

/// Writer-side hooks: the `queue_depth{queue="writer_inbox"}` gauge and egress pacing (the
/// writer waits for the per-connection, per-peer and global egress buckets).
struct Outbound {
    depth: prometheus::IntGauge,
    admitted: Weak<Admission>,
    limits: Arc<LiveLimits>,
}

impl OutboundHooks for Outbound {
    fn queued(&self, frames: usize) {
        self.depth.add(frames as i64);
    }

    fn taken(&self, frames: usize) {
        self.depth.sub(frames as i64);
    }

    fn pace(&self, bytes: usize) -> Duration {
        if !self.limits.rates_on() {
            return Duration::ZERO;
        }
        match self.admitted.upgrade() {
            Some(a) => a.pace_egress(bytes as u64, now_ns()),
            None => Duration::ZERO,
        }
    }
}

type Accepted = (PortConn, Weak<Admission>, ConnMeta);

/// A consumer's per-connection future, boxed once per connection.
type ServeFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What [`Engine::serve`] runs for each connection.
type ServeFn = Arc<dyn Fn(UringConn) -> ServeFuture + Send + Sync>;

struct AcceptSide {
    inner: Weak<Inner>,
    tx: mpsc::Sender<Accepted>,
    /// Set by `serve`: connections are handed to this on their owning shard instead of the
    /// accept queue.
    serve: Arc<OnceLock<ServeFn>>,
}

impl AcceptHooks for AcceptSide {
    fn admit(&self, peer: SocketAddr) -> Result<AdmitToken, Reject> {
        let Some(inner) = self.inner.upgrade() else {
            return Err(Reject { reason: "shutdown" });
        };
        admission::admit(
            &inner.policy,
            &inner.metrics,
            inner.backend(),
            EngineKind::Uring,
            peer,
            Direction::Inbound,
        )
        .map(AdmitToken::new)
        .map_err(|e| Reject {
            reason: e.reject_reason().map_or(e.kind(), |r| r.as_str()),
        })
    }

    fn admit_unix(&self, cred: ron_shard::PeerCred) -> Result<AdmitToken, Reject> {
        uds::admit_unix(self, cred)
    }

    fn handshake_failed(
        &self,
        token: AdmitToken,
        meta: &ConnMeta,
        failure: &ron_shard::HandshakeFailure,
    ) {
        // Dropping the token releases the permit and the in-flight gauge.
        drop(token);
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        count_handshake_failure(
            &inner.metrics,
            inner.backend(),
            inner.bm(),
            inner.pq_mode(),
            &failure.reason,
        );
        let reason = match failure.reason {
            CloseReason::Timeout(_) => Some(RejectReason::Timeout),
            CloseReason::Shutdown | CloseReason::Aborted => None,
            _ => Some(RejectReason::Tls),
        };
        let reason = match failure.reason {
            CloseReason::QuicPath(_) => Some(RejectReason::QuicPathError),
            _ => reason,
        };
        events::handshake_failed(
            reason,
            inner.backend(),
            EngineKind::Uring,
            meta.peer,
            failure.elapsed,
            &failure.detail,
        );
    }

    fn share_token(&self, token: &mut AdmitToken) -> Option<AdmitToken> {
        // The first stream turns the connection's admission into a shared one.
        let t = std::mem::replace(token, AdmitToken::empty());
        let shared = match t.downcast::<Admission>() {
            Ok(a) => Arc::new(a),
            Err(t) => match t.downcast::<Arc<Admission>>() {
                Ok(a) => a,
                Err(t) => {
                    *token = t;
                    return None;
                }
            },
        };
        *token = AdmitToken::new(shared.clone());
        Some(AdmitToken::new(shared))
    }

    fn quic_retry(&self, peer: SocketAddr, handshaking: usize) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        tracing::debug!(
            target: "ron_transport",
            event = "quic_retry",
            backend = inner.backend().as_str(),
            engine = EngineKind::Uring.as_str(),
            peer_addr = %peer,
            handshaking,
            "address validation (Retry) under handshake load"
        );
    }

    fn stream_refused(&self, peer: SocketAddr, timed_out: bool) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let reason = if timed_out {
            RejectReason::Timeout
        } else {
            RejectReason::QuicPathError
        };
        inner.metrics.reject(reason);
        tracing::info!(
            target: "ron_transport",
            event = "reject",
            reason = reason.as_str(),
            backend = inner.backend().as_str(),
            engine = EngineKind::Uring.as_str(),
            peer_addr = %peer,
            "QUIC stream without the OAP/1 preface"
        );
    }

    fn open(&self, token: AdmitToken, meta: &ConnMeta, remote: ConnRemote) -> Box<dyn ConnHandler> {
        let admitted = match token.downcast::<Admission>() {
            Ok(a) => Some(Arc::new(a)),
            Err(t) => t.downcast::<Arc<Admission>>().ok(),
        };
        let (Some(inner), Some(admitted)) = (self.inner.upgrade(), admitted) else {
            return Box::new(ron_shard::Refuse);
        };
        let weak = Arc::downgrade(&admitted);
        let took = admitted.started().elapsed();
        let (h, handle) = metered(&inner, meta, remote, admitted, None);
        events::accept(&facts(&inner, meta, None), pq_of(meta), took);
        if let Some(serve) = self.serve.get() {
            // `open` runs on the owning shard: the consumer's future runs right here.
            let conn = UringConn::new(&inner, meta, handle, weak, None);
            if ron_shard::spawn_local(serve(conn)).is_err() {
                inner.metrics.reject(RejectReason::Busy);
                return Box::new(ron_shard::Refuse);
            }
            return h;
        }
        match self.tx.try_send((handle, weak, meta.clone())) {
            Ok(()) => h,
            Err(_) => {
                inner.metrics.reject(RejectReason::Busy);
                Box::new(ron_shard::Refuse)
            }
        }
    }
}

struct DialSide {
    inner: Weak<Inner>,
    tx: oneshot::Sender<Result<Accepted, DialError>>,
    /// The dial's admission, handed to the connection when it opens.
    admitted: Option<Admission>,
    /// The caller's correlation id, carried by the connection's log events.
    corr_id: Option<Arc<str>>,
}

impl DialHooks for DialSide {
    fn connected(mut self: Box<Self>, meta: &ConnMeta, remote: ConnRemote) -> Box<dyn ConnHandler> {
        let (Some(inner), Some(admitted)) = (self.inner.upgrade(), self.admitted.take()) else {
            return Box::new(ron_shard::Refuse);
        };
        let admitted = Arc::new(admitted);
        let weak = Arc::downgrade(&admitted);
        let (h, handle) = metered(&inner, meta, remote, admitted, self.corr_id.take());
        match self.tx.send(Ok((handle, weak, meta.clone()))) {
            Ok(()) => h,
            Err(_) => Box::new(ron_shard::Refuse),
        }
    }

    fn failed(self: Box<Self>, err: DialError) {
        let Self { tx, admitted, .. } = *self;
        // Released before the dialer hears of the failure: whoever sees the error also sees
        // the cap slot and `conn_inflight` back.
        drop(admitted);
        let _ = tx.send(Err(err));
    }
}

/// A bound uring listener.
pub struct UringListener {
    inner: Arc<Inner>,
    local: SocketAddr,
    rx: mpsc::Receiver<Accepted>,
    id: ron_shard::ListenerId,
    serve: Arc<OnceLock<ServeFn>>,
    /// The socket file of a Unix-domain listener (removed when the listener is dropped).
    uds: Option<Arc<crate::engine::uds::SocketFile>>,
}

impl std::fmt::Debug for UringListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringListener")
            .field("local", &self.local)
            .finish()
    }
}

impl Listener for UringListener {
    type Conn = UringConn;

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn dial_target(&self) -> DialTarget {
        match &self.uds {
            Some(f) => DialTarget::Unix(f.path().to_path_buf()),
            None => DialTarget::Addr(self.local),
        }
    }

    async fn accept(&mut self) -> Result<Self::Conn, TransportError> {
        match self.rx.recv().await {
            Some((handle, admitted, meta)) => {
                Ok(UringConn::new(&self.inner, &meta, handle, admitted, None))
            }
            None => Err(TransportError::IoClosed),
        }
    }
}

impl Drop for UringListener {
    fn drop(&mut self) {
        let _ = self.inner.rt.stop_listening(self.id);
    }
}

/// A cloneable sender into one uring connection's writer inbox.
#[derive(Clone)]
pub struct UringSender {
    tx: PortTx,
    inner: Arc<Inner>,
    admitted: Weak<Admission>,
}

impl std::fmt::Debug for UringSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringSender").finish()
    }
}

impl UringSender {
    fn check_size(&self, len: usize) -> Result<(), TransportError> {
        let max = self.inner.limits.max_frame();
        if len as u64 > max {
            self.inner.metrics.reject(RejectReason::TooLarge);
            return Err(TransportError::TooLarge {
                len: len as u64,
                max,
            });
        }
        Ok(())
    }

    fn closed(&self, reason: Option<CloseReason>) -> TransportError {
        match reason {
            Some(r) => map_close(&r).unwrap_or(TransportError::IoClosed),
            None => TransportError::IoClosed,
        }
    }
}

impl FrameSender for UringSender {
    fn try_send(&self, frame: Bytes) -> Result<(), TransportError> {
        self.check_size(frame.len())?;
        if let (true, Some(a)) = (self.inner.limits.rates_on(), self.admitted.upgrade()) {
            if !a.egress_available(frame.len() as u64 + 4, now_ns()) {
                self.inner.metrics.reject(RejectReason::RateLimited);
                return Err(TransportError::RateLimited);
            }
        }
        // `queue_depth{writer_inbox}` is kept by the port (`Outbound`), and `bytes_out_total` /
        // `io_write_size_bytes` per send completion (`Metered::on_sent`), not here per frame.
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(SendError::Busy) => {
                self.inner
                    .metrics
                    .queue_dropped
                    .with_label_values(&[QueueName::WriterInbox.as_str()])
                    .inc();
                self.inner.metrics.reject(RejectReason::Busy);
                Err(TransportError::Busy)
            }
            Err(SendError::Closed(r)) => Err(self.closed(r)),
            Err(_) => Err(TransportError::IoClosed),
        }
    }

    fn send(&self, frame: Bytes) -> impl Future<Output = Result<(), TransportError>> + Send {
        UringSend {
            sender: self,
            state: SendState::Start(Some(frame)),
        }
    }
}

/// The future of [`UringSender::send`], written out by hand because every consumer task that
/// sends carries one in its state: it borrows the sender (no `Arc` clone per frame) and holds
/// the port's send future inline, or a boxed Tokio timeout off the shards.
struct UringSend<'a> {
    sender: &'a UringSender,
    state: SendState<'a>,
}

enum SendState<'a> {
    Start(Option<Bytes>),
    /// On a shard thread (or without a write timeout): the port's own wait.
    Port(ron_shard::PortSend<'a>),
    /// Elsewhere: bounded by Tokio's timer.
    Timed(Pin<Box<tokio::time::Timeout<ron_shard::PortSend<'a>>>>),
    Done,
}

impl Future for UringSend<'_> {
    type Output = Result<(), TransportError>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = self.get_mut();
        let sender = this.sender;
        if let SendState::Start(frame) = &mut this.state {
            let Some(frame) = frame.take() else {
                return Poll::Ready(Err(TransportError::IoClosed));
            };
            if let Err(e) = sender.check_size(frame.len()) {
                this.state = SendState::Done;
                return Poll::Ready(Err(e));
            }
            // Egress rate limits pace the writer on the shard (see `Outbound::pace`). The wait
            // for inbox space is bounded by `write_timeout`: by the shard's own timer when the
            // caller runs on a shard, by Tokio's elsewhere.
            let limit = sender.inner.limits.write_timeout();
            this.state = match limit {
                Some(t) if !ron_shard::is_shard_thread() => SendState::Timed(Box::pin(
                    tokio::time::timeout(t, sender.tx.send(frame, None)),
                )),
                _ => SendState::Port(sender.tx.send(frame, limit)),
            };
        }
        let res = match &mut this.state {
            SendState::Port(f) => match Pin::new(f).poll(cx) {
                Poll::Ready(r) => r,
                Poll::Pending => return Poll::Pending,
            },
            SendState::Timed(f) => match f.as_mut().poll(cx) {
                Poll::Ready(Ok(r)) => r,
                Poll::Ready(Err(_)) => Err(SendError::Timeout),
                Poll::Pending => return Poll::Pending,
            },
            _ => return Poll::Ready(Err(TransportError::IoClosed)),
        };
        this.state = SendState::Done;
        Poll::Ready(match res {
            Ok(()) => Ok(()),
            Err(SendError::Timeout) => {
                sender.inner.metrics.reject(RejectReason::Timeout);
                Err(TransportError::timeout(TimeoutOp::Write))
            }
            Err(SendError::Closed(r)) => Err(sender.closed(r)),
            Err(_) => Err(TransportError::IoClosed),
        })
    }
}

/// Maps a shard close reason to the contract's error (`None` for a clean close).
pub(crate) fn map_close(r: &CloseReason) -> Option<TransportError> {
    Some(match r {
        CloseReason::PeerClosed | CloseReason::Local => return None,
        CloseReason::Timeout(k) => TransportError::timeout(match k {
            TimeoutKind::Read => TimeoutOp::Read,
            TimeoutKind::Write => TimeoutOp::Write,
            TimeoutKind::Idle => TimeoutOp::Idle,
            TimeoutKind::Handshake => TimeoutOp::Handshake,
            _ => TimeoutOp::Dial,
        }),
        CloseReason::Tls(kind) => TransportError::Tls {
            detail: (*kind).to_string(),
        },
        CloseReason::Frame(ron_shard::FrameError::TooLarge { len, max }) => {
            TransportError::TooLarge {
                len: u64::from(*len),
                max: u64::from(*max),
            }
        }
        CloseReason::Aborted => TransportError::Cancelled,
        CloseReason::Shutdown => TransportError::timeout(TimeoutOp::Shutdown),
        CloseReason::Io(errno) => TransportError::Io(std::io::Error::from_raw_os_error(*errno)),
        // As the tokio and arti engines report it.
        CloseReason::PeerClosedMidFrame => TransportError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed inside a frame",
        )),
        CloseReason::QuicPath(kind) => TransportError::QuicPath {
            detail: (*kind).to_string(),
        },
        CloseReason::HandlerPanic => TransportError::Io(std::io::Error::other(
            "the connection's handler panicked (contained to this connection)",
        )),
        _ => TransportError::IoClosed,
    })
}

/// An established uring connection (plain TCP or TLS). Its calls touch only shard-local
/// state while it is used on its owning shard (see [`Engine::serve`]); moved elsewhere it
/// keeps working through the port's shared half.
pub struct UringConn {
    info: ConnInfo,
    handle: PortConn,
    sender: UringSender,
    failed: bool,
    /// Set by [`Conn::cancel`]: `recv` reports the cancel before any frame the shard had
    /// already queued (as the tokio engine does), so a cancelled connection delivers nothing.
    cancelled: AtomicBool,
}

impl std::fmt::Debug for UringConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringConn")
            .field("info", &self.info)
            .finish()
    }
}

impl UringConn {
    fn new(
        inner: &Arc<Inner>,
        meta: &ConnMeta,
        handle: PortConn,
        admitted: Weak<Admission>,
        corr_id: Option<String>,
    ) -> Self {
        let info = ConnInfo {
            conn_id: meta.id,
            peer_addr: meta.peer,
            local_addr: meta.local,
            backend: inner.backend(),
            engine: EngineKind::Uring,
            alpn: meta.tls.as_ref().and_then(|t| t.alpn.clone()),
            pq: pq_of(meta),
            resumed: meta.tls.as_ref().is_some_and(|t| t.resumed),
        };
        tracing::debug!(
            target: "ron_transport",
            event = "conn_open",
            conn_id = %format!("{:x}", meta.id),
            corr_id = corr_id.as_deref().unwrap_or(""),
            backend = info.backend.as_str(),
            engine = "uring",
            "connection established"
        );
        let sender = UringSender {
            tx: handle.sender(),
            inner: inner.clone(),
            admitted,
        };
        Self {
            info,
            handle,
            sender,
            failed: false,
            cancelled: AtomicBool::new(false),
        }
    }
}

impl Conn for UringConn {
    type Sender = UringSender;

    fn info(&self) -> &ConnInfo {
        &self.info
    }

    fn sender(&self) -> Self::Sender {
        self.sender.clone()
    }

    fn try_send(&self, frame: Bytes) -> Result<(), TransportError> {
        self.sender.try_send(frame)
    }

    fn send(&self, frame: Bytes) -> impl Future<Output = Result<(), TransportError>> + Send {
        self.sender.send(frame)
    }

    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        if self.failed {
            return Err(TransportError::IoClosed);
        }
        if self.cancelled.load(Ordering::Acquire) {
            // The first terminal error wins: one recorded before the cancel, else `Cancelled`.
            self.failed = true;
            return Err(self
                .handle
                .close_reason()
                .and_then(|r| map_close(&r))
                .unwrap_or(TransportError::Cancelled));
        }
        match self.handle.recv().await {
            Ok(f) => Ok(f),
            Err(r) => {
                self.failed = true;
                Err(map_close(&r).unwrap_or(TransportError::IoClosed))
            }
        }
    }

    async fn close(self) -> Result<(), TransportError> {
        match self.handle.close_and_wait().await {
            CloseReason::Local | CloseReason::PeerClosed => Ok(()),
            r => Err(map_close(&r).unwrap_or(TransportError::IoClosed)),
        }
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.handle.cancel();
    }
}

/// The server config a listener needs: `None` for plain TCP; for TLS the configured one, or
/// an `Unsupported` error saying how to provide it.
pub(crate) fn listener_tls(
    tls: bool,
    server: Option<&Arc<rustls::ServerConfig>>,
) -> Result<Option<Arc<rustls::ServerConfig>>, TransportError> {
    match (tls, server) {
        (false, _) => Ok(None),
        (true, Some(c)) => Ok(Some(c.clone())),
        (true, None) => Err(TransportError::Unsupported {
            what: "tls listener without a server config (set tls.enabled with cert/key, or \
                   inject one with EngineSetup::with_tls_server)"
                .into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn availability_serves_tls_and_explains_probe_failures() {
        let c = Config {
            backend: Backend::Tls,
            ..Config::default()
        };
        if let Ok(v) = c.validate() {
            assert_eq!(
                availability(&v),
                availability(&Config::default().validate().unwrap())
            );
        }
        let v = Config::default()
            .validate()
            .expect("default config is valid");
        match availability(&v) {
            Ok(()) => assert!(ron_shard::probe().usable),
            Err(r) => {
                println!("uring unavailable here: {r}");
                assert!(r.starts_with("io_uring_"));
            }
        }
    }

    #[test]
    fn close_reasons_map_to_contract_errors() {
        assert!(map_close(&CloseReason::PeerClosed).is_none());
        assert!(map_close(&CloseReason::Local).is_none());
        let e = map_close(&CloseReason::Timeout(TimeoutKind::Read)).unwrap();
        assert_eq!(e.kind(), "timeout");
        let e = map_close(&CloseReason::Frame(ron_shard::FrameError::TooLarge {
            len: 9,
            max: 8,
        }))
        .unwrap();
        assert!(matches!(e, TransportError::TooLarge { len: 9, max: 8 }));
        assert!(matches!(
            map_close(&CloseReason::Aborted),
            Some(TransportError::Cancelled)
        ));
        let e = map_close(&CloseReason::PeerClosedMidFrame).unwrap();
        assert_eq!(e.kind(), "io");
    }
}
