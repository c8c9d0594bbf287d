//! `ron-perf faults`: cancellation latency and quiesce time of ron-transport's engines under
//! faults (spec/IDB G-10 and the cancellation bound of spec/IDB §4: "kill conn mid-transfer →
//! all tasks stop ≤ 100 ms"; spec/TESTS.md asks the same of arbitrary cancel points).
//!
//! Per engine (`tokio`, `uring`) and transport, all in this process: an echo server built on
//! the engine with two listeners, one behind a [`FaultRelay`] (seeded resets, stalls, refused
//! connects, half-closes) where `--conns` clients echo content-checked frames for at least
//! `--load`, and one direct listener for the measurements, taken while that load runs:
//!
//! - `--probes` single cancels: a connection of a separate client engine (so its live work is
//!   the probe's alone) echoes one frame, queues eight more, then `Conn::cancel()`; measured
//!   from `cancel()` to the client engine holding no live task or connection for it
//!   (`cancel_tasks_ms`), and to the server's handler seeing the connection end
//!   (`cancel_peer_ms`);
//! - `--quiesce-rounds` rounds of 32 live connections (frames queued on each) cancelled at
//!   once, until every task is gone and every peer saw its close (`quiesce_ms`).
//!
//! It prints p50/p99/max per engine against the spec's 100 ms and writes them under the
//! report's `faults` field. Nothing here is a pass/fail gate; `within_spec` only says whether
//! every p99 was ≤ 100 ms on this run.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use ron_transport::config::{Backend, Config, ValidConfig};
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::DialOptions;
use ron_transport::metrics::TransportMetrics;
use ron_transport::testing::{FaultPlan, FaultRelay};
use ron_transport::{Conn, Engine, Listener, RejectReason, TransportError};

use crate::server::Transport;
use crate::{report, sys, tlsutil};

/// The spec's cancellation bound, ms.
pub const SPEC_CANCEL_MS: f64 = 100.0;
/// Connections cancelled at once per quiesce round.
const QUIESCE_CONNS: usize = 32;
/// Frames each load session echoes before it closes and dials again.
const SESSION_FRAMES: u32 = 200;
/// Bound of every wait of a measurement.
const WAIT: Duration = Duration::from_secs(5);

/// Arguments of `ron-perf faults`.
#[derive(Debug, clap::Args)]
pub struct FaultsArgs {
    /// Engines to measure (`tokio`, `uring`).
    #[arg(long, default_value = "tokio,uring")]
    pub engines: String,
    /// Transports (`tcp`, `tls`).
    #[arg(long, default_value = "tcp,tls")]
    pub transports: String,
    /// Load clients echoing through the fault relay.
    #[arg(long, default_value_t = 32)]
    pub conns: usize,
    /// Single-connection cancel probes.
    #[arg(long, default_value_t = 200)]
    pub probes: usize,
    /// Rounds of 32 live connections cancelled at once.
    #[arg(long, default_value_t = 10)]
    pub quiesce_rounds: usize,
    /// Minimum load window per engine.
    #[arg(long, default_value = "3s", value_parser = crate::parse_duration)]
    pub load: Duration,
    /// Seed of the relay's fault plan.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Report path (default perf-out/faults-<date>.json). An existing report there keeps its
    /// fields; its `faults` field is replaced.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The report's `faults` field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FaultsSection {
    /// The spec's cancellation bound, ms (100).
    pub spec_ms: f64,
    /// Seed of the relay's fault plan.
    pub seed: u64,
    /// One row per (engine, transport).
    pub rows: Vec<FaultsRow>,
}

/// Percentiles of one measurement, ms.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Pct {
    /// Median.
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

/// One engine over one transport.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FaultsRow {
    /// `tokio` or `uring`.
    pub engine: String,
    /// `tcp` or `tls`.
    pub transport: String,
    /// Cancel probes measured.
    pub probes: u64,
    /// `cancel()` → the connection's tasks gone on the cancelling engine.
    pub cancel_tasks_ms: Pct,
    /// `cancel()` → the server's handler saw the connection end.
    pub cancel_peer_ms: Pct,
    /// Connections cancelled at once per quiesce round.
    pub quiesce_conns: u64,
    /// Quiesce rounds measured.
    pub quiesce_rounds: u64,
    /// Cancel of `quiesce_conns` live connections → every task gone and every peer closed.
    pub quiesce_ms: Pct,
    /// Whether every p99 above is ≤ `spec_ms`.
    pub within_spec: bool,
    /// Load window, seconds.
    pub load_secs: f64,
    /// Load sessions (connections dialed through the relay).
    pub load_sessions: u64,
    /// Frames echoed intact through the relay.
    pub load_frames: u64,
    /// Frames that came back different from what was sent (must be 0).
    pub load_corrupt: u64,
    /// Errors the load clients saw, by `kind()`.
    pub load_errors: BTreeMap<String, u64>,
    /// Faults the relay injected, by kind (`pass` counts untouched pairs that ended).
    pub relay_injected: BTreeMap<String, u64>,
    /// `rejected_total{reason}` of the server after the run (non-zero reasons).
    pub server_rejected: BTreeMap<String, u64>,
    /// Whether the engines' live work, `conn_inflight` and the process's fds returned to
    /// their baselines after the run (bounded wait).
    pub baseline_restored: bool,
}

/// Runs `ron-perf faults`.
pub fn cmd_faults(a: FaultsArgs) -> anyhow::Result<()> {
    let engines: Vec<String> = a
        .engines
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let transports = crate::split_list(&a.transports, Transport::parse)?;
    let _ = sys::raise_nofile(1 << 16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for e in &engines {
        for &t in &transports {
            let backend = match t {
                Transport::Tcp => Backend::Tcp,
                Transport::Tls => Backend::Tls,
                Transport::Uds | Transport::Quic => {
                    eprintln!(
                        "[ron-perf faults] {e}/{} skipped: the fault relay speaks TCP",
                        t.as_str()
                    );
                    continue;
                }
            };
            eprintln!("[ron-perf faults] {e}/{}", t.as_str());
            let row = match e.as_str() {
                "tokio" => rt.block_on(measure(&a, backend, |cfg, tls, m| {
                    let e = setup(cfg, tls, m)?.build_tokio()?;
                    Ok(Built {
                        live: Box::new(|e: &ron_transport::engine::tokio::TokioEngine| {
                            e.live_tasks() + e.open_conns()
                        }),
                        engine: e,
                    })
                }))?,
                "uring" => {
                    if let Err(why) = crate::server::io_uring_available() {
                        eprintln!("[ron-perf faults] uring skipped: {why}");
                        continue;
                    }
                    rt.block_on(measure(&a, backend, |cfg, tls, m| {
                        let e = setup(cfg, tls, m)?.build_uring_with(ron_shard::RuntimeConfig {
                            shards: 1,
                            pin: false,
                            ..ron_shard::RuntimeConfig::default()
                        })?;
                        Ok(Built {
                            live: Box::new(|e: &ron_transport::engine::uring::UringEngine| {
                                e.shard_stats().iter().map(|s| s.open as usize).sum()
                            }),
                            engine: e,
                        })
                    }))?
                }
                other => bail!("unknown engine {other:?} (tokio|uring)"),
            };
            print_row(&row);
            rows.push(row);
        }
    }
    let section = FaultsSection {
        spec_ms: SPEC_CANCEL_MS,
        seed: a.seed,
        rows,
    };
    let date = report::now_rfc3339();
    let path = a.json.unwrap_or_else(|| {
        PathBuf::from("perf-out").join(format!("faults-{}.json", date.replace(':', "")))
    });
    save_into(&path, &section, &date)?;
    eprintln!("[ron-perf faults] wrote {}", path.display());
    Ok(())
}

/// Writes `section` as the `faults` field of the report at `path`: into the existing report if
/// there is one, else into a new report with no result rows.
fn save_into(path: &Path, section: &FaultsSection, date: &str) -> anyhow::Result<()> {
    let mut doc: serde_json::Value = match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?
        }
        Err(_) => serde_json::to_value(report::Report {
            commit: report::git_commit(),
            date: date.to_owned(),
            machine: report::Machine {
                cpus: sys::cpus(),
                kernel: sys::kernel(),
            },
            limits: report::Limits::default(),
            results: Vec::new(),
        })?,
    };
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| anyhow!("{} is not a JSON object", path.display()))?;
    obj.insert("faults".into(), serde_json::to_value(section)?);
    if let Some(d) = path.parent() {
        if !d.as_os_str().is_empty() {
            std::fs::create_dir_all(d)?;
        }
    }
    std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("write {}", path.display()))
}

fn print_row(r: &FaultsRow) {
    let f = |p: &Pct| format!("p50 {:.2} / p99 {:.2} / max {:.2} ms", p.p50, p.p99, p.max);
    println!(
        "{}/{}: cancel→tasks gone {} | cancel→peer closed {} | quiesce {}×{} {} | spec {} ms: {}",
        r.engine,
        r.transport,
        f(&r.cancel_tasks_ms),
        f(&r.cancel_peer_ms),
        r.quiesce_rounds,
        r.quiesce_conns,
        f(&r.quiesce_ms),
        SPEC_CANCEL_MS,
        if r.within_spec {
            "p99 within"
        } else {
            "p99 ABOVE"
        }
    );
    println!(
        "  load {:.1}s: {} sessions through the relay, {} frames intact, {} corrupt; client errors \
         {:?}; relay injected {:?}; server rejects {:?}; baseline restored: {}",
        r.load_secs,
        r.load_sessions,
        r.load_frames,
        r.load_corrupt,
        r.load_errors,
        r.relay_injected,
        r.server_rejected,
        r.baseline_restored
    );
}

/// An engine and how to read its live work (per-connection tasks plus open connections).
struct Built<E> {
    engine: E,
    live: Box<dyn Fn(&E) -> usize + Send + Sync>,
}

type Tls = Option<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)>;

fn setup(
    cfg: ValidConfig,
    tls: &Tls,
    m: Arc<TransportMetrics>,
) -> Result<EngineSetup, TransportError> {
    let mut s = EngineSetup::new(cfg, m)?;
    if let Some((server, client)) = tls {
        s = s
            .with_tls_server(server.clone())
            .with_tls_client(client.clone());
    }
    Ok(s)
}

fn config(backend: Backend) -> anyhow::Result<ValidConfig> {
    let mut c = Config::default();
    c.backend = backend;
    c.max_conns = 100_000;
    // A relay stall in the middle of a frame outlasts this: `Timeout{Read}`.
    c.read_timeout = Duration::from_millis(250);
    c.write_timeout = Duration::from_secs(2);
    c.idle_timeout = Duration::from_secs(10);
    c.validate().map_err(|e| anyhow!("config: {e}"))
}

/// Frame `seq` of load client `client`: a header naming it, then bytes derived from it.
fn frame(client: usize, seq: u32) -> Bytes {
    let len = 16 + (seq as usize * 37 + client * 11) % 2000;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(client as u64).to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&(len as u32).to_be_bytes());
    let salt = (client as u32) ^ seq.rotate_left(16);
    v.extend((16..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt) as u8));
    v.into()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn pct(mut v: Vec<Duration>) -> Pct {
    if v.is_empty() {
        return Pct::default();
    }
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rank = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Pct {
        p50: ms(rank(0.50)),
        p99: ms(rank(0.99)),
        max: ms(v[v.len() - 1]),
    }
}

/// Server handlers that ended, by peer address, with when they saw the end.
#[derive(Clone, Default)]
struct Ended(Arc<Mutex<HashMap<SocketAddr, Instant>>>);

impl Ended {
    fn take(&self, peer: &SocketAddr) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer)
    }
}

/// Serves `listener` with an echo; with `ended`, records when each handler saw its
/// connection end.
fn spawn_echo<E: Engine>(
    engine: &E,
    listener: E::Listener,
    ended: Option<Ended>,
) -> tokio::task::JoinHandle<()> {
    let serving = engine.serve(listener, move |mut conn: E::Conn| {
        let ended = ended.clone();
        async move {
            let peer = conn.info().peer_addr;
            while let Ok(Some(f)) = conn.recv().await {
                if conn.send(f).await.is_err() {
                    break;
                }
            }
            if let Some(ended) = ended {
                let at = Instant::now();
                ended
                    .0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(peer, at);
            }
        }
    });
    tokio::spawn(async move {
        let _ = serving.await;
    })
}

#[derive(Default)]
struct LoadTally {
    sessions: AtomicU64,
    frames: AtomicU64,
    corrupt: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl LoadTally {
    fn error(&self, e: &TransportError) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(e.kind().to_owned())
            .or_default() += 1;
    }
}

/// One load client: sessions through the relay until `stop`.
async fn load_client<E: Engine>(
    engine: Arc<E>,
    target: SocketAddr,
    id: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<LoadTally>,
) {
    let opts = DialOptions {
        deadline: Duration::from_secs(2),
        ..DialOptions::default()
    };
    while !stop.load(Ordering::Relaxed) {
        tally.sessions.fetch_add(1, Ordering::Relaxed);
        let mut conn = match engine.dial(target, opts.clone()).await {
            Ok(c) => c,
            Err(e) => {
                tally.error(&e);
                continue;
            }
        };
        let mut ok = true;
        for seq in 0..SESSION_FRAMES {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let f = frame(id, seq);
            if let Err(e) = conn.send(f.clone()).await {
                tally.error(&e);
                ok = false;
                break;
            }
            match tokio::time::timeout(WAIT, conn.recv()).await {
                Ok(Ok(Some(got))) if got == f => {
                    tally.frames.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(Some(_))) => {
                    tally.corrupt.fetch_add(1, Ordering::Relaxed);
                    ok = false;
                    break;
                }
                Ok(Ok(None)) => {
                    ok = false;
                    break;
                }
                Ok(Err(e)) => {
                    tally.error(&e);
                    ok = false;
                    break;
                }
                Err(_) => {
                    tally.error(&TransportError::timeout(ron_transport::TimeoutOp::Read));
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            if let Err(e) = conn.close().await {
                tally.error(&e);
            }
        } else {
            conn.cancel();
        }
    }
}

/// Polls (yielding, no sleep: the clock's resolution matters here) until `cond` holds or
/// [`WAIT`] passed; returns the time since `t0` when it held.
async fn until(t0: Instant, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    loop {
        if cond() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > WAIT {
            return None;
        }
        tokio::task::yield_now().await;
    }
}

/// Builds the engines for one (engine, transport), runs the load and the measurements.
async fn measure<E, B>(a: &FaultsArgs, backend: Backend, build: B) -> anyhow::Result<FaultsRow>
where
    E: Engine,
    B: Fn(ValidConfig, &Tls, Arc<TransportMetrics>) -> Result<Built<E>, TransportError>,
{
    let tls: Tls = if backend == Backend::Tls {
        let ss = tlsutil::SelfSigned::generate()?;
        Some((
            tlsutil::server_config(
                ss.cert_pem.as_bytes(),
                ss.key_pem.as_bytes(),
                tlsutil::Provider::AwsLcRs,
            )?,
            tlsutil::library_client_config(ss.cert_pem.as_bytes(), true)?,
        ))
    } else {
        None
    };
    let sm = TransportMetrics::new();
    let (lm, pm) = (TransportMetrics::new(), TransportMetrics::new());
    let server = build(config(backend)?, &tls, sm.clone())?;
    let loader = build(config(backend)?, &tls, lm.clone())?;
    let prober = build(config(backend)?, &tls, pm.clone())?;
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let behind = server.engine.listen(lo).await?;
    let direct = server.engine.listen(lo).await?;
    let (behind_addr, direct_addr) = (behind.local_addr(), direct.local_addr());
    let ended = Ended::default();
    let serve_a = spawn_echo(&server.engine, behind, None);
    let serve_b = spawn_echo(&server.engine, direct, Some(ended.clone()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fds_before = open_fds();
    let relay = FaultRelay::start(behind_addr, FaultPlan::mixed(), a.seed).await?;

    // The load, through the relay.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(LoadTally::default());
    let loader_engine = Arc::new(loader.engine);
    let started = Instant::now();
    let clients: Vec<_> = (0..a.conns.max(1))
        .map(|id| {
            tokio::spawn(load_client(
                loader_engine.clone(),
                relay.local_addr(),
                id,
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Single-connection cancels.
    let opts = DialOptions::default();
    let (mut tasks_lat, mut peer_lat) = (Vec::new(), Vec::new());
    let mut attempts = 0;
    while tasks_lat.len() < a.probes {
        // A probe whose set-up fails (on a loaded machine the server's 250 ms handshake and
        // read deadlines can fire) is retried, up to three attempts per probe overall.
        attempts += 1;
        if attempts > 3 * a.probes {
            bail!(
                "probes: more than {} attempts for {}",
                3 * a.probes,
                a.probes
            );
        }
        let i = attempts;
        // Start from no live work (a failed attempt's connection is still being torn down).
        let _ = until(Instant::now(), || (prober.live)(&prober.engine) == 0).await;
        let Ok(mut conn) = prober.engine.dial(direct_addr, opts.clone()).await else {
            continue;
        };
        let f = frame(1_000_000 + i, 0);
        if conn.send(f.clone()).await.is_err() {
            continue;
        }
        match tokio::time::timeout(WAIT, conn.recv()).await {
            Ok(Ok(Some(got))) if got == f => {}
            Ok(Ok(Some(_))) => bail!("probe {i}: echo came back different"),
            _ => continue,
        }
        for seq in 1..=8 {
            let _ = conn.try_send(frame(1_000_000 + i, seq));
        }
        let key = conn.info().local_addr;
        let t0 = Instant::now();
        conn.cancel();
        let gone = until(t0, || (prober.live)(&prober.engine) == 0).await;
        let mut peer = None;
        if until(t0, || {
            peer = ended.take(&key);
            peer.is_some()
        })
        .await
        .is_none()
        {
            bail!("probe {i}: the server never saw the cancelled connection end");
        }
        tasks_lat.push(gone.ok_or_else(|| anyhow!("probe {i}: tasks still live after 5 s"))?);
        peer_lat.push(peer.map_or(WAIT, |at| at.saturating_duration_since(t0)));
        drop(conn);
    }

    // 32 live connections cancelled at once.
    let mut quiesce = Vec::new();
    for round in 0..a.quiesce_rounds {
        let mut conns = Vec::new();
        let mut tries = 0;
        while conns.len() < QUIESCE_CONNS {
            tries += 1;
            if tries > 3 * QUIESCE_CONNS {
                bail!("quiesce round {round}: could not open {QUIESCE_CONNS} connections");
            }
            let i = conns.len();
            let Ok(mut conn) = prober.engine.dial(direct_addr, opts.clone()).await else {
                continue;
            };
            let f = frame(2_000_000 + round * 100 + i, 0);
            if conn.send(f.clone()).await.is_err() {
                continue;
            }
            match tokio::time::timeout(WAIT, conn.recv()).await {
                Ok(Ok(Some(got))) if got == f => {}
                Ok(Ok(Some(_))) => bail!("quiesce round {round}: echo came back different"),
                _ => continue,
            }
            for seq in 1..=16 {
                let _ = conn.try_send(frame(2_000_000 + round * 100 + i, seq));
            }
            conns.push(conn);
        }
        let mut keys: Vec<SocketAddr> = conns.iter().map(|c| c.info().local_addr).collect();
        let t0 = Instant::now();
        for c in &conns {
            c.cancel();
        }
        let took = until(t0, || {
            keys.retain(|k| ended.take(k).is_none());
            keys.is_empty() && (prober.live)(&prober.engine) == 0
        })
        .await
        .ok_or_else(|| anyhow!("quiesce round {round}: not quiet after 5 s"))?;
        quiesce.push(took);
        drop(conns);
    }

    // Let the load run its minimum window, then stop it.
    let rest = a.load.saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
    }
    let load_secs = started.elapsed().as_secs_f64();
    relay.stop().await;
    let counts = relay.counts();
    drop(relay);

    // Baselines.
    let restored = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let quiet = (server.live)(&server.engine) == 0
                && (prober.live)(&prober.engine) == 0
                && (loader.live)(&loader_engine) == 0
                && sm.backend(backend).conn_inflight.get() == 0
                && lm.backend(backend).conn_inflight.get() == 0
                && pm.backend(backend).conn_inflight.get() == 0
                && open_fds() <= fds_before;
            if quiet {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let _ = server.engine.shutdown(Duration::from_secs(1)).await;
    let _ = loader_engine.shutdown(Duration::from_secs(1)).await;
    let _ = prober.engine.shutdown(Duration::from_secs(1)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), serve_a).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), serve_b).await;

    let (cancel_tasks_ms, cancel_peer_ms, quiesce_ms) =
        (pct(tasks_lat), pct(peer_lat), pct(quiesce));
    let within_spec = [cancel_tasks_ms, cancel_peer_ms, quiesce_ms]
        .iter()
        .all(|p| p.p99 <= SPEC_CANCEL_MS);
    let inj = counts.injected;
    let load_errors = tally
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(FaultsRow {
        engine: server.engine.kind().as_str().to_owned(),
        transport: backend.as_str().to_owned(),
        probes: a.probes as u64,
        cancel_tasks_ms,
        cancel_peer_ms,
        quiesce_conns: QUIESCE_CONNS as u64,
        quiesce_rounds: a.quiesce_rounds as u64,
        quiesce_ms,
        within_spec,
        load_secs,
        load_sessions: tally.sessions.load(Ordering::Relaxed),
        load_frames: tally.frames.load(Ordering::Relaxed),
        load_corrupt: tally.corrupt.load(Ordering::Relaxed),
        load_errors,
        relay_injected: [
            ("pass", inj.pass),
            ("reset", inj.reset),
            ("stall", inj.stall),
            ("refuse", inj.refuse),
            ("half_close", inj.half_close),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        server_rejected: RejectReason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), sm.rejected_count(*r)))
            .filter(|(_, v)| *v > 0)
            .collect(),
        baseline_restored: restored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        let p = pct(v);
        assert_eq!((p.p50, p.p99, p.max), (100.0, 198.0, 200.0));
        assert_eq!(pct(Vec::new()), Pct::default());
    }

    #[test]
    fn faults_field_goes_into_an_existing_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let sample = report::Report {
            commit: "abc".into(),
            date: report::rfc3339(0),
            machine: report::Machine {
                cpus: 2,
                kernel: "6.0".into(),
            },
            limits: report::Limits::default(),
            results: vec![report::Row {
                scenario: "small".into(),
                transport: "tcp".into(),
                engine: "tokio".into(),
                conns: 1,
                ..report::Row::default()
            }],
        };
        sample.save(&path).unwrap();
        let section = FaultsSection {
            spec_ms: SPEC_CANCEL_MS,
            seed: 1,
            rows: vec![FaultsRow {
                engine: "tokio".into(),
                transport: "tcp".into(),
                ..FaultsRow::default()
            }],
        };
        save_into(&path, &section, "2026-12-06T00:00:00Z").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let schema: serde_json::Value = serde_json::from_str(report::SCHEMA).unwrap();
        assert_eq!(report::validate_schema(&schema, &v), Vec::<String>::new());
        assert_eq!(v["faults"]["rows"][0]["engine"], "tokio");
        // The rest of the report is untouched and still loads.
        let back = report::Report::load(&path).unwrap();
        assert_eq!(back, sample);
        // A new file gets a report with no rows.
        let fresh = dir.path().join("new.json");
        save_into(&fresh, &section, "2026-12-06T00:00:00Z").unwrap();
        let r = report::Report::load(&fresh).unwrap();
        assert!(r.results.is_empty());
    }
}
