//! The Tor backend (`backend = "arti"`, feature `arti`): Arti, the Rust Tor client, in process
//! (spec/IDB I-2, I-17, C-7).
//!
//! # One side runtime
//! Arti is the only part of the transport that runs on a Tokio runtime of its own: a dedicated
//! thread (`ron-arti`) runs a current-thread runtime that owns the [`TorClient`]. Every Arti
//! call, and the reader and writer task of every Tor stream, runs there; nothing of Arti ever
//! runs on a shard or on the consumer's runtime. Consumers see the adapter traits of
//! [`crate::engine`] ([`ArtiEngine`], [`ArtiListener`], [`ArtiConn`], [`ArtiSender`]); frames
//! cross between the runtimes through bounded queues (see [`conn`]).
//!
//! # Readiness (spec/IDB I-14, G-6; spec/CONFIG `arti.*`)
//! The engine starts `Degraded("arti_bootstrap")` and bootstraps at once (Arti's `Manual`
//! behaviour, driven here). It becomes `Ready` as soon as Arti reports it is ready for traffic
//! (watched event-driven, checked every 250 ms), and `NotReady("arti_bootstrap")` once
//! `arti.bootstrap_timeout` has passed without that; it still turns `Ready` if Arti gets there
//! later. Dials before `Ready` fail at once with [`TransportError::ArtiBootstrap`] (counted in
//! `rejected_total{reason="arti_bootstrap"}`). Progress and blockage kinds are logged
//! (`event = "arti_bootstrap"`).
//!
//! # Dial and serve
//! [`Engine::dial`] reaches an IP address through an exit; [`ArtiEngine::dial_host`] also takes
//! host names and `xxx.onion` addresses. Both wait `arti.pre_dial_delay` first and run within
//! `DialOptions::deadline`. [`Engine::listen`] launches an onion service whose virtual port is
//! the port of the address given; [`ArtiListener::onion_address`] reports its address.
//!
//! # Amnesia (spec/IDB I-11)
//! With `amnesia.enabled`, state and cache live in a private 0700 directory on tmpfs, keys in
//! Arti's ephemeral keystore, and the directory is removed when the side runtime stops (see
//! [`storage`]).

mod conn;
mod listener;
mod storage;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arti_client::config::TorClientConfigBuilder;
use arti_client::{BootstrapBehavior, StreamPrefs, TorClient, TorClientConfig};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tor_rtcompat::tokio::TokioRustlsRuntime;

pub use conn::{ArtiConn, ArtiSender, RECV_QUEUE_FRAMES};
pub use listener::ArtiListener;

use crate::config::{Backend, ConfigError, ConfigHandle, ValidConfig};
use crate::engine::admission::{self, DialAccount, Direction};
use crate::engine::setup::EngineShared;
use crate::engine::target::unsupported_target;
use crate::engine::{
    ConnInfo, DialOptions, DialTarget, Engine, EngineKind, ListenTarget, ShutdownReport,
};
use crate::error::{TimeoutOp, TransportError};
use crate::metrics::{PqLabel, TaskKind, TransportMetrics};
use crate::policy::Policy;
use crate::readiness::{Readiness, ReadyState, TransportHealth};

/// The readiness reason while Arti bootstraps (and after `arti.bootstrap_timeout`).
pub const REASON_ARTI_BOOTSTRAP: &str = crate::readiness::reasons::ARTI_BOOTSTRAP;

/// The Tor runtime type every Arti call runs on.
pub type ArtiRuntime = TokioRustlsRuntime;

/// Settings of the Arti backend beyond the spec's `arti.*` keys. They are builder options, not
/// configuration keys: the key table of spec/CONFIG.md is closed.
#[derive(Clone, Debug)]
pub struct ArtiOptions {
    /// Arti's state directory (keystore, guards, onion-service state). `None`: Arti's default
    /// (`~/.local/share/arti`). Ignored under amnesia.
    pub state_dir: Option<PathBuf>,
    /// Arti's cache directory (directory documents). `None`: Arti's default
    /// (`~/.cache/arti`). Ignored under amnesia.
    pub cache_dir: Option<PathBuf>,
    /// Where amnesia's private directory is created; must be RAM-backed (tmpfs/ramfs).
    /// `None`: `$XDG_RUNTIME_DIR`, else `/dev/shm`.
    pub amnesia_root: Option<PathBuf>,
    /// Extra Arti client configuration in Arti's own TOML format (e.g. `[tor_network]` for a
    /// private network, `[address_filter]`, `[path_rules]`, `[override_net_params]`). The
    /// storage settings are always the transport's.
    pub tor_config_toml: Option<String>,
    /// Extra onion-service configuration in Arti's TOML format (e.g. `num_intro_points`); the
    /// nickname is always [`ArtiOptions::nickname`].
    pub onion_service_toml: Option<String>,
    /// Nickname of the onion service [`Engine::listen`] launches (its keys are stored under it).
    pub nickname: String,
    /// Start bootstrapping when the engine is built (default). With `false` the client stays
    /// dormant (Arti's `Manual` behaviour) until [`ArtiEngine::start_bootstrap`].
    pub bootstrap: bool,
}

impl Default for ArtiOptions {
    fn default() -> Self {
        Self {
            state_dir: None,
            cache_dir: None,
            amnesia_root: None,
            tor_config_toml: None,
            onion_service_toml: None,
            nickname: "ron-transport".to_owned(),
            bootstrap: true,
        }
    }
}

/// Builds an [`ArtiEngine`] from a validated configuration with `backend = "arti"`.
#[derive(Debug)]
pub struct ArtiSetup {
    config: ConfigHandle,
    metrics: Arc<TransportMetrics>,
    readiness: Option<Readiness>,
    options: ArtiOptions,
}

impl ArtiSetup {
    /// Set-up over a fixed validated config.
    pub fn new(cfg: ValidConfig, metrics: Arc<TransportMetrics>) -> Result<Self, TransportError> {
        Self::from_handle(ConfigHandle::new(cfg), metrics)
    }

    /// Set-up over a live config handle (timeouts, limits, rates and `arti.pre_dial_delay`
    /// are re-read per operation). Refuses a config whose backend is not `arti`.
    pub fn from_handle(
        config: ConfigHandle,
        metrics: Arc<TransportMetrics>,
    ) -> Result<Self, TransportError> {
        let backend = config.load().backend;
        if backend != Backend::Arti {
            return Err(TransportError::Unsupported {
                what: format!(
                    "the arti engine serves backend `arti`, not `{}`",
                    backend.as_str()
                ),
            });
        }
        Ok(Self {
            config,
            metrics,
            readiness: None,
            options: ArtiOptions::default(),
        })
    }

    /// Uses `options` (directories, extra Arti configuration, nickname).
    pub fn with_options(mut self, options: ArtiOptions) -> Self {
        self.options = options;
        self
    }

    /// Publishes readiness through `readiness` (e.g. one shared with a consumer's `/readyz`).
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Starts the side runtime, creates the Tor client there (no network yet) and, unless
    /// [`ArtiOptions::bootstrap`] is off, starts bootstrapping. Returns once the client exists.
    pub fn build(self) -> Result<ArtiEngine, TransportError> {
        let cfg = self.config.load();
        let readiness = self
            .readiness
            .unwrap_or_else(|| Readiness::new("ron-transport", ReadyState::Ready));
        readiness.set(ReadyState::Degraded {
            reason: REASON_ARTI_BOOTSTRAP,
        });
        let storage = match storage::Storage::resolve(
            cfg.amnesia,
            self.options.state_dir.as_deref(),
            self.options.cache_dir.as_deref(),
            self.options.amnesia_root.as_deref(),
        ) {
            Ok(s) => s,
            Err(e) => {
                readiness.set(ReadyState::NotReady {
                    reason: REASON_ARTI_BOOTSTRAP,
                });
                return Err(e);
            }
        };
        let tor_config = match tor_client_config(&self.options, &storage, cfg.amnesia) {
            Ok(c) => c,
            Err(e) => {
                readiness.set(ReadyState::NotReady {
                    reason: REASON_ARTI_BOOTSTRAP,
                });
                return Err(e);
            }
        };
        let policy = Policy::new(self.config, self.metrics.clone());
        let shared = Arc::new(EngineShared {
            policy,
            metrics: self.metrics,
            readiness,
            backend: Backend::Arti,
            pq_mode: PqLabel::Off,
            tls_server: None,
            tls_client: crate::engine::shared::ClientTls::default(),
        });
        let amnesia_path = storage.amnesia.as_ref().map(|d| d.path.clone());
        let side = match SideRuntime::start(tor_config.clone(), storage.amnesia) {
            Ok(s) => s,
            Err(e) => {
                shared.readiness.set(ReadyState::NotReady {
                    reason: REASON_ARTI_BOOTSTRAP,
                });
                return Err(e);
            }
        };
        let inner = Arc::new(EngineInner {
            shared,
            side,
            tor_config,
            amnesia_path,
            options: self.options,
            tasks: TaskTracker::new(),
            conns: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            ready: AtomicBool::new(false),
            bootstrap_started: AtomicBool::new(false),
            created: Instant::now(),
        });
        inner.spawn_watchers();
        if inner.options.bootstrap {
            inner.start_bootstrap();
        }
        Ok(ArtiEngine { inner })
    }
}

/// Installs the process-wide rustls provider Arti's runtime needs (aws-lc-rs, as everywhere
/// else here). Without one, `TokioRustlsRuntime` panics when both rustls backends are built in.
fn ensure_crypto_provider() {
    if tokio_rustls::rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: some provider is installed.
        let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// The Arti client configuration: the caller's TOML, then the transport's storage settings.
fn tor_client_config(
    options: &ArtiOptions,
    storage: &storage::Storage,
    amnesia: bool,
) -> Result<TorClientConfig, TransportError> {
    let bad = |reason: String| {
        TransportError::Config(ConfigError::Invalid {
            key: "arti.tor_config",
            reason,
        })
    };
    let mut table: toml::Table = match options.tor_config_toml.as_deref() {
        Some(text) => text
            .parse()
            .map_err(|e: toml::de::Error| bad(format!("not valid TOML: {e}")))?,
        None => toml::Table::new(),
    };
    {
        let storage_tbl = table
            .entry("storage")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(storage_tbl) = storage_tbl else {
            return Err(bad("`storage` must be a table".into()));
        };
        if let Some(dir) = &storage.state_dir {
            storage_tbl.insert(
                "state_dir".into(),
                toml::Value::String(dir.to_string_lossy().into_owned()),
            );
        }
        if let Some(dir) = &storage.cache_dir {
            storage_tbl.insert(
                "cache_dir".into(),
                toml::Value::String(dir.to_string_lossy().into_owned()),
            );
        }
        let keystore = storage_tbl
            .entry("keystore")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(keystore) = keystore {
            let kind = if amnesia { "ephemeral" } else { "native" };
            let mut primary = toml::Table::new();
            primary.insert("kind".into(), toml::Value::String(kind.into()));
            keystore.insert("primary".into(), toml::Value::Table(primary));
        }
    }
    let builder: TorClientConfigBuilder = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| bad(format!("not an Arti client configuration: {e}")))?;
    builder
        .build()
        .map_err(|e| bad(format!("rejected by Arti: {e}")))
}

/// The side runtime: one thread, one current-thread Tokio runtime, one Tor client.
struct SideRuntime {
    handle: tokio::runtime::Handle,
    client: Arc<TorClient<ArtiRuntime>>,
    stop: CancellationToken,
    /// Fires when the thread has dropped the runtime (and removed the amnesia directory).
    stopped: CancellationToken,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    thread_id: std::thread::ThreadId,
}

impl std::fmt::Debug for SideRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideRuntime")
            .field("thread", &self.thread_id)
            .field("stopped", &self.stopped.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl SideRuntime {
    fn start(
        config: TorClientConfig,
        amnesia: Option<storage::AmnesiaDir>,
    ) -> Result<Self, TransportError> {
        ensure_crypto_provider();
        let stop = CancellationToken::new();
        let stopped = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (stop2, stopped2) = (stop.clone(), stopped.clone());
        let thread = std::thread::Builder::new()
            .name("ron-arti".into())
            .spawn(move || side_thread(config, amnesia, tx, stop2, stopped2))?;
        let thread_id = thread.thread().id();
        match rx.recv() {
            Ok(Ok((handle, client))) => Ok(Self {
                handle,
                client,
                stop,
                stopped,
                thread: Mutex::new(Some(thread)),
                thread_id,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(TransportError::Unsupported {
                    what: "the arti side runtime exited during start-up".into(),
                })
            }
        }
    }

    /// Stops the runtime and waits (at most `bound`) for the thread to finish.
    async fn stop(&self, bound: Duration) {
        self.stop.cancel();
        let _ = tokio::time::timeout(bound, self.stopped.cancelled()).await;
        if self.stopped.is_cancelled() {
            self.join();
        }
    }

    fn join(&self) {
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

type StartResult = Result<(tokio::runtime::Handle, Arc<TorClient<ArtiRuntime>>), TransportError>;

fn side_thread(
    config: TorClientConfig,
    amnesia: Option<storage::AmnesiaDir>,
    tx: std::sync::mpsc::SyncSender<StartResult>,
    stop: CancellationToken,
    stopped: CancellationToken,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ron-arti-blocking")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Err(TransportError::Io(e)));
            drop(amnesia);
            stopped.cancel();
            return;
        }
    };
    let created = rt.block_on(async {
        let runtime = TokioRustlsRuntime::from(tokio::runtime::Handle::current());
        TorClient::with_runtime(runtime)
            .config(config)
            .bootstrap_behavior(BootstrapBehavior::Manual)
            .create_unbootstrapped()
    });
    let client = match created {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(arti_error("create the Tor client", &e)));
            drop(rt);
            drop(amnesia);
            stopped.cancel();
            return;
        }
    };
    if tx.send(Ok((rt.handle().clone(), client.clone()))).is_err() {
        drop(client);
        drop(rt);
        drop(amnesia);
        stopped.cancel();
        return;
    }
    rt.block_on(stop.cancelled());
    drop(client);
    // Arti's blocking work (SQLite) runs on the runtime's blocking pool; bound the wait.
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(amnesia);
    stopped.cancel();
}

/// Maps an Arti error to a transport error (bootstrap-required kinds to `ArtiBootstrap`).
fn arti_error(what: &str, e: &arti_client::Error) -> TransportError {
    use arti_client::{ErrorKind, HasKind};
    match e.kind() {
        ErrorKind::BootstrapRequired => TransportError::ArtiBootstrap,
        ErrorKind::FsPermissions => TransportError::Io(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{what}: {e}"),
        )),
        ErrorKind::RemoteNetworkTimeout | ErrorKind::TorNetworkTimeout => {
            TransportError::timeout(TimeoutOp::Dial)
        }
        _ => TransportError::Io(std::io::Error::other(format!("{what}: {e}"))),
    }
}

/// Engine state shared by listeners and connections.
#[derive(Debug)]
pub(crate) struct EngineInner {
    pub(crate) shared: Arc<EngineShared>,
    side: SideRuntime,
    tor_config: TorClientConfig,
    amnesia_path: Option<PathBuf>,
    options: ArtiOptions,
    /// Per-connection tasks and listener tasks (all on the side runtime).
    tasks: TaskTracker,
    conns: Mutex<HashMap<u64, Arc<conn::Core>>>,
    pub(crate) shutdown: CancellationToken,
    /// Arti reports it is ready for traffic.
    ready: AtomicBool,
    bootstrap_started: AtomicBool,
    created: Instant,
}

impl EngineInner {
    /// Spawns `fut` on the side runtime, tracked for shutdown.
    pub(crate) fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.side.handle.spawn(self.tasks.track_future(fut))
    }

    pub(crate) fn register(&self, core: Arc<conn::Core>) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(core.id, core);
    }

    pub(crate) fn forget(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    pub(crate) fn client(&self) -> &Arc<TorClient<ArtiRuntime>> {
        &self.side.client
    }

    fn start_bootstrap(self: &Arc<Self>) {
        if self.bootstrap_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let client = self.side.client.clone();
        let stop = self.shutdown.clone();
        // Not tracked: shutdown stops it with the runtime.
        self.side.handle.spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let r = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = client.bootstrap() => r,
                };
                match r {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(
                            target: "ron_transport",
                            event = "arti_bootstrap",
                            backend = "arti",
                            engine = "arti",
                            error = %e,
                            retry_in_ms = backoff.as_millis() as u64,
                            "arti bootstrap attempt failed"
                        );
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
    }

    /// Watches Arti's bootstrap status: readiness, the bootstrap timeout, progress logs.
    fn spawn_watchers(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let client = self.side.client.clone();
        let stop = self.shutdown.clone();
        let started = self.created;
        self.side.handle.spawn(async move {
            let mut events = client.bootstrap_events();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_pct: i32 = -1;
            let mut last_blockage = String::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    ev = events.next() => if ev.is_none() { return },
                    _ = tick.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let status = client.bootstrap_status();
                let pct = (status.as_frac() * 100.0).round() as i32;
                let blockage = status
                    .blocked()
                    .map(|b| b.kind().to_string())
                    .unwrap_or_default();
                if pct / 10 != last_pct / 10 || blockage != last_blockage {
                    tracing::info!(
                        target: "ron_transport",
                        event = "arti_bootstrap",
                        backend = "arti",
                        engine = "arti",
                        progress_pct = pct,
                        ready = status.ready_for_traffic(),
                        blockage = blockage.as_str(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "arti bootstrap progress"
                    );
                    last_pct = pct;
                    last_blockage = blockage;
                }
                inner.observe(status.ready_for_traffic());
            }
        });
    }

    /// Publishes readiness for one observation of Arti's status.
    fn observe(&self, ready_for_traffic: bool) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let was = self.ready.swap(ready_for_traffic, Ordering::AcqRel);
        let readiness = &self.shared.readiness;
        if ready_for_traffic {
            if !was {
                tracing::info!(
                    target: "ron_transport",
                    event = "arti_bootstrap",
                    backend = "arti",
                    engine = "arti",
                    elapsed_ms = self.created.elapsed().as_millis() as u64,
                    "arti is ready for traffic"
                );
            }
            readiness.set(ReadyState::Ready);
        } else if self.created.elapsed() >= self.shared.config().arti_bootstrap_timeout {
            readiness.set(ReadyState::NotReady {
                reason: REASON_ARTI_BOOTSTRAP,
            });
        } else {
            readiness.set(ReadyState::Degraded {
                reason: REASON_ARTI_BOOTSTRAP,
            });
        }
    }

    fn conn_cores(&self) -> Vec<Arc<conn::Core>> {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        // The last handle is gone: stop the side runtime (this also removes amnesia's
        // directory once Arti has let go of it).
        self.shutdown.cancel();
        self.side.stop.cancel();
        if std::thread::current().id() != self.side.thread_id {
            self.side.join();
        }
    }
}

/// What Arti reported about its bootstrap, for diagnostics.
#[derive(Clone, Debug, PartialEq)]
pub struct ArtiStatus {
    /// Rough progress, 0.0 ..= 1.0.
    pub fraction: f32,
    /// Arti can carry traffic now.
    pub ready_for_traffic: bool,
    /// Why Arti believes it is stuck, if it does (e.g. "Client has been disabled").
    pub blockage: Option<String>,
}

/// The Arti engine. Cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct ArtiEngine {
    inner: Arc<EngineInner>,
}

/// Where a dial goes: a host name, an IP address or an `xxx.onion` name, and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtiTarget {
    /// Host name, IP literal or `.onion` name.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl ArtiTarget {
    /// Parses `host:port` (IPv6 literals in brackets).
    pub fn parse(s: &str) -> Result<Self, TransportError> {
        let bad = || TransportError::Unsupported {
            what: format!("not a host:port target: {s:?}"),
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    fn is_onion(&self) -> bool {
        self.host.to_ascii_lowercase().ends_with(".onion")
    }

    /// The address the connection is reported (and admitted) under: the IP for IP targets;
    /// for names, a stable address in `fd00::/8` derived from the name, so per-peer caps and
    /// rates apply per destination without resolving anything locally.
    fn peer_addr(&self) -> SocketAddr {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return SocketAddr::new(ip, self.port);
        }
        SocketAddr::new(IpAddr::V6(name_addr(&self.host)), self.port)
    }
}

/// A stable pseudo address in `fd00::/8` for a host name (FNV-1a, 64 bits).
fn name_addr(name: &str) -> Ipv6Addr {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.to_ascii_lowercase().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let hi = (0xfd00u64 << 48) | 0x7274_0000_0000; // fd00:7274::/32 ("rt")
    Ipv6Addr::from((u128::from(hi) << 64) | u128::from(h))
}

impl ArtiEngine {
    /// The shared state (policy, metrics, readiness).
    pub fn shared(&self) -> &Arc<EngineShared> {
        &self.inner.shared
    }

    /// Arti's own bootstrap status.
    pub async fn status(&self) -> ArtiStatus {
        let client = self.inner.client().clone();
        let r = self
            .inner
            .side
            .handle
            .spawn(async move {
                let s = client.bootstrap_status();
                ArtiStatus {
                    fraction: s.as_frac(),
                    ready_for_traffic: s.ready_for_traffic(),
                    blockage: s.blocked().map(|b| b.to_string()),
                }
            })
            .await;
        r.unwrap_or(ArtiStatus {
            fraction: 0.0,
            ready_for_traffic: false,
            blockage: Some("the arti side runtime has stopped".into()),
        })
    }

    /// Starts bootstrapping if [`ArtiOptions::bootstrap`] was off. Idempotent.
    pub fn start_bootstrap(&self) {
        self.inner.start_bootstrap();
    }

    /// The private directory amnesia uses (`None` without amnesia). Removed at shutdown.
    pub fn amnesia_dir(&self) -> Option<PathBuf> {
        self.inner.amnesia_path.clone()
    }

    /// The id of the side runtime's thread (named `ron-arti`).
    pub fn runtime_thread(&self) -> std::thread::ThreadId {
        self.inner.side.thread_id
    }

    /// Per-connection and listener tasks still running on the side runtime.
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

    /// Dials `target` (`host:port`, IP literal or `xxx.onion`) through Tor within
    /// `opts.deadline`. Fails at once with `ArtiBootstrap` before Arti is ready.
    pub async fn dial_host(
        &self,
        target: &str,
        opts: DialOptions,
    ) -> Result<ArtiConn, TransportError> {
        let target = ArtiTarget::parse(target)?;
        self.dial_target(target, opts).await
    }

    /// [`dial_host`](Self::dial_host) with a parsed target.
    pub async fn dial_target(
        &self,
        target: ArtiTarget,
        opts: DialOptions,
    ) -> Result<ArtiConn, TransportError> {
        let inner = &self.inner;
        let shared = &inner.shared;
        let corr_id: Option<Arc<str>> = opts.corr_id.as_deref().map(Arc::from);
        // Tor destinations are never logged: the books get no target.
        let books = DialAccount::open(
            &shared.metrics,
            Backend::Arti,
            EngineKind::Arti,
            PqLabel::Off,
            None,
            corr_id.as_deref(),
        );
        let result = if inner.shutdown.is_cancelled() {
            Err(TransportError::Cancelled)
        } else {
            self.dial_inner(&target, &opts, &corr_id, books.started())
                .await
        };
        books.finish(result.as_ref().map(crate::engine::Conn::info));
        result
    }

    async fn dial_inner(
        &self,
        target: &ArtiTarget,
        opts: &DialOptions,
        corr_id: &Option<Arc<str>>,
        started: Instant,
    ) -> Result<ArtiConn, TransportError> {
        let inner = &self.inner;
        let shared = &inner.shared;
        // Fail fast before bootstrap (spec/IDB C-7): no waiting, no queueing.
        if !inner.ready.load(Ordering::Acquire) {
            return Err(TransportError::ArtiBootstrap);
        }
        let peer = target.peer_addr();
        let permit = admission::admit(
            &shared.policy,
            &shared.metrics,
            Backend::Arti,
            EngineKind::Arti,
            peer,
            Direction::Outbound,
        )?;
        let pre_dial = shared.config().arti_pre_dial_delay;
        let client = inner.client().clone();
        let host = target.host.clone();
        let port = target.port;
        let onion = target.is_onion();
        let connect = async move {
            if !pre_dial.is_zero() {
                tokio::time::sleep(pre_dial).await;
            }
            let mut prefs = StreamPrefs::new();
            if onion {
                prefs.connect_to_onion_services(arti_client::config::BoolOrAuto::Explicit(true));
            }
            client
                .connect_with_prefs((host.as_str(), port), &prefs)
                .await
        };
        let task = AbortOnDrop(inner.side.handle.spawn(connect));
        let stream = tokio::select! {
            biased;
            _ = inner.shutdown.cancelled() => return Err(TransportError::Cancelled),
            r = tokio::time::timeout(opts.deadline, task) => match r {
                Ok(Ok(Ok(s))) => s,
                Ok(Ok(Err(e))) => return Err(arti_error("dial", &e)),
                Ok(Err(_)) => return Err(TransportError::Cancelled),
                Err(_) => return Err(TransportError::timeout(TimeoutOp::Dial)),
            },
        };
        let bm = shared.metrics.backend(Backend::Arti);
        bm.handshake(PqLabel::Off)
            .observe(started.elapsed().as_secs_f64());
        let info = ConnInfo {
            conn_id: shared.next_conn_id(),
            peer_addr: peer,
            local_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            backend: Backend::Arti,
            engine: EngineKind::Arti,
            alpn: None,
            pq: PqLabel::Off,
            resumed: false,
        };
        Ok(conn::make_conn(
            &self.inner,
            stream,
            permit,
            info,
            corr_id.clone(),
        ))
    }

    /// Launches the onion service `nickname` with virtual port `port`; see [`Engine::listen`].
    pub async fn listen_onion(
        &self,
        nickname: &str,
        port: u16,
    ) -> Result<ArtiListener, TransportError> {
        listener::launch(&self.inner, nickname, port).await
    }

    /// Generates (or loads) the identity of onion service `nickname` without any network:
    /// returns its 56-character address + `.onion`. With the native keystore (no amnesia) the
    /// key is stored under the state directory and a later [`Engine::listen`] uses the same
    /// address; under amnesia the key lives in this client's ephemeral keystore only.
    pub async fn onion_identity(&self, nickname: &str) -> Result<String, TransportError> {
        listener::offline_identity(&self.inner, nickname).await
    }
}

/// Aborts a side-runtime task when the waiting side gives up (deadline, cancel).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TransportHealth for ArtiEngine {
    fn readiness(&self) -> ReadyState {
        self.inner.shared.readiness.readiness()
    }
}

impl Engine for ArtiEngine {
    type Listener = ArtiListener;
    type Conn = ArtiConn;

    /// Arti, on its own Tokio side runtime.
    fn kind(&self) -> EngineKind {
        EngineKind::Arti
    }

    fn backend(&self) -> Backend {
        Backend::Arti
    }

    fn config(&self) -> Arc<ValidConfig> {
        self.inner.shared.config()
    }

    /// Launches the onion service [`ArtiOptions::nickname`]; `addr.port()` is its virtual port
    /// (the IP is ignored: an onion service binds no socket).
    async fn listen(
        &self,
        target: impl Into<ListenTarget> + Send,
    ) -> Result<ArtiListener, TransportError> {
        let port = match target.into() {
            ListenTarget::Addr(addr) => addr.port(),
            other => return Err(unsupported_target("arti", &other)),
        };
        let nickname = self.inner.options.nickname.clone();
        listener::launch(&self.inner, &nickname, port).await
    }

    /// Dials `addr` through a Tor exit.
    /// Host names are resolved by the exit (never locally), as Tor requires.
    async fn dial(
        &self,
        target: impl Into<DialTarget> + Send,
        opts: DialOptions,
    ) -> Result<ArtiConn, TransportError> {
        let target = match target.into() {
            DialTarget::Addr(addr) => ArtiTarget {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            DialTarget::Host { host, port } => ArtiTarget { host, port },
            other => return Err(unsupported_target("arti", &other)),
        };
        self.dial_target(target, opts).await
    }

    async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let inner = &self.inner;
        let started = Instant::now();
        inner.shutdown.cancel();
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
            let _ = tokio::time::timeout(Duration::from_secs(1), inner.tasks.wait()).await;
        }
        // Stop Arti itself; under amnesia this removes the private directory.
        inner.side.stop(Duration::from_secs(5)).await;
        let report = ShutdownReport {
            drained: cores.len() as u64 - aborted,
            aborted,
        };
        tracing::info!(
            target: "ron_transport",
            event = "shutdown",
            backend = Backend::Arti.as_str(),
            engine = "arti",
            drained = report.drained,
            aborted = report.aborted,
            duration_ms = started.elapsed().as_millis() as u64,
            "engine shut down"
        );
        report
    }
}
