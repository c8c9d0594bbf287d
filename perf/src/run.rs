//! `ron-perf run`: the suite. Measures the physical limits, then for each transport and each
//! engine starts that engine's server as a separate `ron-perf serve` process pinned to the
//! server cores, drives every scenario against it with the same in-process client pinned to
//! the client cores, and collects one report row per measurement. Every load is bounded in
//! time; servers are killed when their engine is done (also on error, by `Drop`).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::client::{self, LoadResult, LoadSpec};
use crate::report::{self, Limits, Machine, Report, Row};
use crate::server::{EngineId, Transport};
use crate::{limits, sys, tlsutil};

/// A scenario of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// 64 conns, 1 frame in flight, 1 KiB and 4 KiB, plus the fixed-rate variant.
    Small,
    /// 64 conns, 8 frames in flight.
    Pipelined,
    /// 8 conns streaming 64 KiB frames.
    Stream,
    /// TLS: new connections per second, cold and resumed.
    Handshake,
    /// Many idle connections: memory per connection, then `small` while held.
    Idle,
}

impl Scenario {
    /// All, in suite order.
    pub const ALL: [Scenario; 5] = [
        Scenario::Small,
        Scenario::Pipelined,
        Scenario::Stream,
        Scenario::Handshake,
        Scenario::Idle,
    ];

    /// Report name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Pipelined => "pipelined",
            Self::Stream => "stream",
            Self::Handshake => "handshake",
            Self::Idle => "idle",
        }
    }

    /// Parses a report name.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                anyhow!("unknown scenario {s:?} (small|pipelined|stream|handshake|idle)")
            })
    }
}

/// Options of a suite run.
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Scenarios to run.
    pub scenarios: Vec<Scenario>,
    /// Transports to run.
    pub transports: Vec<Transport>,
    /// Engines to run (unavailable ones are skipped with a note).
    pub engines: Vec<EngineId>,
    /// Window per row.
    pub duration: Duration,
    /// Warm-up per row.
    pub warmup: Duration,
    /// Full sizes (10,000 idle connections, 4 KiB pipelined too).
    pub full: bool,
    /// Server cores.
    pub server_cores: Vec<usize>,
    /// Client cores.
    pub client_cores: Vec<usize>,
    /// Server shards/threads (0 = one per server core).
    pub shards: usize,
    /// tokio runtime flavour of `tokio-framed`.
    pub framed_flavour: crate::server::framed::Flavour,
    /// Output directory for TLS material.
    pub out_dir: PathBuf,
}

/// A running `ron-perf serve` child.
#[derive(Debug)]
pub struct ServerProc {
    child: Child,
    /// Its pid.
    pub pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its socket path (transport `uds`).
    pub path: Option<PathBuf>,
    /// Its metrics endpoint, when started with `RON_PERF_METRICS=1` (`server::scrape`).
    pub metrics: Option<SocketAddr>,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Starts `ron-perf serve` for `engine` and waits (≤ 30 s) for its READY line.
pub fn spawn_server(
    engine: EngineId,
    transport: Transport,
    tls: Option<(&PathBuf, &PathBuf)>,
    cores: &[usize],
    shards: usize,
    flavour: crate::server::framed::Flavour,
) -> anyhow::Result<ServerProc> {
    spawn_server_env(engine, transport, tls, cores, shards, flavour, &[])
}

/// [`spawn_server`] with extra environment variables for the server process (they win over
/// the inherited environment), e.g. `RON_TRANSPORT_READ_TIMEOUT` or `RON_PERF_METRICS`.
pub fn spawn_server_env(
    engine: EngineId,
    transport: Transport,
    tls: Option<(&PathBuf, &PathBuf)>,
    cores: &[usize],
    shards: usize,
    flavour: crate::server::framed::Flavour,
    env: &[(&str, String)],
) -> anyhow::Result<ServerProc> {
    let exe = std::env::current_exe().context("current_exe")?;
    // `uds`: a socket in a private (0700) directory of this run.
    let path = match transport {
        Transport::Uds => {
            use std::os::unix::fs::PermissionsExt;
            let dir = std::env::temp_dir().join(format!("ron-perf-uds-{}", std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            Some(dir.join(format!("{}.sock", engine.name())))
        }
        _ => None,
    };
    let listen = path
        .as_ref()
        .map_or_else(|| "127.0.0.1:0".to_owned(), |p| p.display().to_string());
    let mut cmd = Command::new(exe);
    cmd.args([
        "serve",
        "--engine",
        engine.name(),
        "--transport",
        transport.as_str(),
        "--listen",
        &listen,
        "--shards",
        &shards.to_string(),
        "--flavour",
        flavour.name(),
    ]);
    if !cores.is_empty() {
        cmd.args(["--cores", &join(cores)]);
    }
    if let Some((c, k)) = tls {
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().context("spawn ron-perf serve")?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        let mut metrics = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(m) = crate::server::scrape::parse_metrics_line(&line) {
                    metrics = Some(m);
                } else if let Some((addr, _)) = crate::server::parse_ready_line(&line) {
                    let _ = tx.send((addr, metrics));
                    sent = true;
                }
            }
        }
    });
    let mut proc_ = ServerProc {
        child,
        pid,
        addr: "0.0.0.0:0".parse().expect("static addr"),
        path,
        metrics: None,
    };
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok((a, m)) => {
            proc_.addr = a;
            proc_.metrics = m;
            Ok(proc_)
        }
        Err(_) => {
            let status = proc_.child.try_wait().ok().flatten();
            bail!(
                "server {} did not become ready (exit: {status:?})",
                engine.name()
            )
        }
    }
}

pub(crate) fn join(cores: &[usize]) -> String {
    cores
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn progress(msg: &str) {
    eprintln!("[ron-perf] {msg}");
}

/// Builds a report row from a load result.
pub fn load_row(scenario: Scenario, t: Transport, e: &str, spec: &LoadSpec, r: &LoadResult) -> Row {
    Row {
        scenario: scenario.name().to_owned(),
        transport: t.as_str().to_owned(),
        engine: e.to_owned(),
        conns: spec.conns as u64,
        payload: Some(spec.payload as u64),
        depth: Some(spec.depth as u64),
        frames_per_sec: Some(r.fps()),
        gbps: Some(r.gbps(spec.payload)),
        p50_us: r.pct(0.50),
        p95_us: r.pct(0.95),
        p99_us: r.pct(0.99),
        p999_us: r.pct(0.999),
        server_cpu_us_per_frame: r.server_cpu_us_per_frame(),
        offered_rate: spec.rate,
        server_cpu_pct: r.server_cpu_util().map(|u| u * 100.0),
        client_cpu_pct: Some(r.client_cpu_util() * 100.0),
        cores_idle_pct: r.cores_idle.map(|x| x * 100.0),
        ..Row::default()
    }
}

fn describe(row: &Row, errors: u64, first: &Option<String>) -> String {
    let mut s = format!(
        "{:<9} {:<3} {:<11} c={:<5} p={:<6} d={:<2}",
        row.scenario,
        row.transport,
        row.engine,
        row.conns,
        row.payload.map_or("-".into(), |p| p.to_string()),
        row.depth.map_or("-".into(), |d| d.to_string()),
    );
    if let Some(f) = row.frames_per_sec {
        s.push_str(&format!(" {f:>10.0} fps"));
    }
    if let Some(h) = row.handshakes_per_sec {
        s.push_str(&format!(" {h:>8.0} hs/s"));
    }
    if let Some(p) = row.p99_us {
        s.push_str(&format!(" p99 {p:>7.0}us"));
    }
    if let Some(c) = row.server_cpu_pct {
        s.push_str(&format!(" srv {c:>3.0}%"));
    }
    if let Some(c) = row.client_cpu_pct {
        s.push_str(&format!(" cli {c:>3.0}%"));
    }
    if let Some(m) = row.rss_per_conn_bytes {
        s.push_str(&format!(" {m:.0} B/conn"));
    }
    match row.flag.as_deref() {
        Some(CLIENT_BOUND) => {
            s.push_str("  CLIENT-BOUND? (client core saturated before the server's)")
        }
        Some(STALL) => s.push_str(&format!(
            "  STALL? (closed loop, yet neither the server nor the client was {STALL_BUSY_PCT:.0} % busy; their cores {:.0} % idle)",
            row.cores_idle_pct.unwrap_or(f64::NAN)
        )),
        Some(CONTENDED) => s.push_str(&format!(
            "  CONTENDED? (neither side {STALL_BUSY_PCT:.0} % busy; other processes had their cores, {:.0} % idle)",
            row.cores_idle_pct.unwrap_or(f64::NAN)
        )),
        Some(f) => s.push_str(&format!("  {f}")),
        None => {}
    }
    if errors > 0 {
        s.push_str(&format!(
            "  ({errors} errors, first: {})",
            first.as_deref().unwrap_or("?")
        ));
    }
    s
}

/// The flag of a row limited by the client rather than the server.
pub const CLIENT_BOUND: &str = "CLIENT-BOUND?";
/// The flag of a closed-loop row on which neither side was busy while their cores sat idle.
pub const STALL: &str = "STALL?";
/// The flag of a closed-loop row on which neither side was busy because other processes had
/// their cores.
pub const CONTENDED: &str = "CONTENDED?";
/// Idle share of the watched cores (percent) below which a not-busy row is [`CONTENDED`].
pub const CONTENDED_IDLE_PCT: f64 = 20.0;
/// Busy threshold of [`STALL`], per core, percent.
pub const STALL_BUSY_PCT: f64 = 80.0;

/// True if a row looks limited by the client rather than the server: the client's cores are
/// nearly saturated (≥ 90 % per client thread) while the server still had headroom.
pub fn client_bound(client_pct: f64, server_pct: f64) -> bool {
    client_pct >= 90.0 && server_pct < client_pct - 10.0
}

/// True if a closed-loop row had neither side busy: the server's cores below
/// [`STALL_BUSY_PCT`] % on average and the client's too. A closed loop with K frames in flight
/// per connection keeps one of the two working all the time unless something waits (a timer,
/// a lost wake-up, a flush held back, a connection starved by the scheduler), so such a row
/// measures the waiting, not the engine. Percentages are of one core, as in the report;
/// `server_cores` / `client_cores` are how many cores each side had.
pub fn stalled(client_pct: f64, server_pct: f64, client_cores: usize, server_cores: usize) -> bool {
    let per_core = |pct: f64, cores: usize| pct / (cores.max(1) as f64);
    per_core(client_pct, client_cores) < STALL_BUSY_PCT
        && per_core(server_pct, server_cores) < STALL_BUSY_PCT
}

/// The flag of a row: [`CLIENT_BOUND`], [`STALL`] / [`CONTENDED`] (closed-loop rows only) or
/// none.
pub fn flag_of(row: &Row, client_cores: usize, server_cores: usize) -> Option<&'static str> {
    let (cli, srv) = (row.client_cpu_pct?, row.server_cpu_pct?);
    let per_core = |pct: f64, cores: usize| pct / (cores.max(1) as f64);
    if client_bound(per_core(cli, client_cores), per_core(srv, server_cores)) {
        Some(CLIENT_BOUND)
    } else if row.offered_rate.is_none() && stalled(cli, srv, client_cores, server_cores) {
        match row.cores_idle_pct {
            Some(idle) if idle < CONTENDED_IDLE_PCT => Some(CONTENDED),
            _ => Some(STALL),
        }
    } else {
        None
    }
}

/// Measures the physical limits (each on a pinned thread of its own).
pub fn measure_limits(core: Option<usize>, dur: Duration) -> Limits {
    let mut l = Limits::default();
    for p in tlsutil::Provider::ALL {
        let h = std::thread::spawn(move || {
            if let Some(c) = core {
                sys::pin_to(&[c])?;
            }
            limits::tls_open_seal_gbps(p, dur)
        });
        match h.join() {
            Ok(Ok(g)) => {
                progress(&format!(
                    "limit: TLS 1.3 open+seal 64 KiB, {}: {g:.2} Gb/s",
                    p.name()
                ));
                l.tls_open_seal_gbps_by_provider
                    .insert(p.name().to_owned(), g);
            }
            Ok(Err(e)) => progress(&format!("limit: TLS open+seal {} failed: {e:#}", p.name())),
            Err(_) => progress("limit: TLS open+seal thread panicked"),
        }
    }
    // The uring shards seal and open with their own record layer after the handshake: its
    // limit is measured beside rustls's (the row's fraction is of the best of them).
    let h = std::thread::spawn(move || {
        if let Some(c) = core {
            sys::pin_to(&[c])?;
        }
        limits::record_layer_open_seal_gbps(dur)
    });
    match h.join() {
        Ok(Ok(g)) => {
            progress(&format!(
                "limit: TLS 1.3 open+seal 64 KiB, own record layer (AES-256-GCM): {g:.2} Gb/s"
            ));
            l.tls_open_seal_gbps_by_provider
                .insert("record-layer".to_owned(), g);
        }
        Ok(Err(e)) => progress(&format!("limit: record layer open+seal failed: {e:#}")),
        Err(_) => progress("limit: record layer open+seal thread panicked"),
    }
    l.tls_open_seal_gbps = l
        .tls_open_seal_gbps_by_provider
        .values()
        .copied()
        .reduce(f64::max);
    match std::thread::spawn(move || limits::loopback_tcp_gbps(core, dur)).join() {
        Ok(Ok(g)) => {
            progress(&format!(
                "limit: loopback TCP stream, one core: {g:.2} Gb/s"
            ));
            l.loopback_tcp_gbps = Some(g);
        }
        Ok(Err(e)) => progress(&format!("limit: loopback TCP failed: {e:#}")),
        Err(_) => progress("limit: loopback thread panicked"),
    }
    l
}

/// Runs the suite and returns the report.
pub fn run(o: &RunOpts) -> anyhow::Result<Report> {
    let nofile = sys::raise_nofile(1 << 20).unwrap_or(1024);
    let started = std::time::Instant::now();
    progress(&format!(
        "suite: scenarios [{}], transports [{}], engines [{}], {:?} per row after {:?} warm-up; server cores [{}], client cores [{}]",
        o.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
        o.transports.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","),
        o.engines.iter().map(|e| e.name()).collect::<Vec<_>>().join(","),
        o.duration,
        o.warmup,
        join(&o.server_cores),
        join(&o.client_cores),
    ));
    let overrides: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("RON_TRANSPORT_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !overrides.is_empty() {
        progress(&format!(
            "ron-transport engines configured from the environment: {}",
            overrides.join(" ")
        ));
    }
    let limits = measure_limits(o.server_cores.first().copied(), Duration::from_millis(700));
    let server_n = if o.shards > 0 {
        o.shards
    } else {
        o.server_cores.len().max(1)
    };
    let client_n = o.client_cores.len().max(1);

    // io_uring is probed once, here: without it every io_uring engine is skipped with the
    // reason, instead of starting servers that fail (or panic) one row at a time.
    let mut engines = o.engines.clone();
    if let Err(why) = crate::server::io_uring_available() {
        let (skip, keep): (Vec<EngineId>, Vec<EngineId>) =
            engines.iter().partition(|e| e.needs_io_uring());
        if !skip.is_empty() {
            progress(&format!(
                "{why}; skipping {}; running {}",
                skip.iter().map(|e| e.name()).collect::<Vec<_>>().join(", "),
                if keep.is_empty() {
                    "nothing".to_owned()
                } else {
                    keep.iter().map(|e| e.name()).collect::<Vec<_>>().join(", ")
                }
            ));
        }
        engines = keep;
    }

    let ss = tlsutil::SelfSigned::generate()?;
    let (cert, key) = ss.write_to(&o.out_dir.join("tls"))?;
    let tls_cfg = tlsutil::library_client_config(ss.cert_pem.as_bytes(), true)?;
    let tls_cold = tlsutil::library_client_config(ss.cert_pem.as_bytes(), false)?;

    let mut rows = Vec::new();
    for &t in &o.transports {
        // The fixed offered rate: half of what the first engine (tokio-framed by default)
        // reaches closed-loop, so every engine is compared at equal load.
        let mut equal_rate: Option<f64> = None;
        for &e in &engines {
            if !e.supports(t) {
                continue;
            }
            if let Err(why) = e.available(t) {
                progress(&format!("skip {} {}: {why}", e.name(), t.as_str()));
                continue;
            }
            progress(&format!("start server: {} {}", e.name(), t.as_str()));
            let srv = match spawn_server(
                e,
                t,
                t.is_tls().then_some((&cert, &key)),
                &o.server_cores,
                o.shards,
                o.framed_flavour,
            ) {
                Ok(s) => s,
                Err(err) => {
                    progress(&format!(
                        "server {} {} failed: {err:#}",
                        e.name(),
                        t.as_str()
                    ));
                    continue;
                }
            };
            let tls = t.is_tls().then(|| tls_cfg.clone());
            let base = LoadSpec {
                target: srv.addr,
                uds: srv.path.clone(),
                tls: tls.clone(),
                conns: 64,
                payload: 1024,
                depth: 1,
                rate: None,
                warmup: o.warmup,
                duration: o.duration,
                cores: o.client_cores.clone(),
                server_pid: Some(srv.pid),
                server_cores: o.server_cores.clone(),
                sources: Vec::new(),
                quic: t == Transport::Quic,
            };
            let go = |sc: Scenario, spec: LoadSpec, rows: &mut Vec<Row>| -> Option<Row> {
                match client::run_load(&spec) {
                    Ok(r) => {
                        let mut row = load_row(sc, t, e.name(), &spec, &r);
                        row.flag = flag_of(&row, client_n, server_n).map(str::to_owned);
                        progress(&describe(&row, r.errors, &r.first_error));
                        rows.push(row.clone());
                        Some(row)
                    }
                    Err(err) => {
                        progress(&format!(
                            "{} {} {} failed: {err:#}",
                            sc.name(),
                            t.as_str(),
                            e.name()
                        ));
                        None
                    }
                }
            };
            for &sc in &o.scenarios {
                match sc {
                    Scenario::Small => {
                        let r1 = go(sc, base.clone(), &mut rows);
                        go(
                            sc,
                            LoadSpec {
                                payload: 4096,
                                ..base.clone()
                            },
                            &mut rows,
                        );
                        if equal_rate.is_none() {
                            equal_rate = r1
                                .and_then(|r| r.frames_per_sec)
                                .map(|f| (f * 0.5).max(1000.0).round());
                        }
                        if let Some(rate) = equal_rate {
                            go(
                                sc,
                                LoadSpec {
                                    rate: Some(rate),
                                    ..base.clone()
                                },
                                &mut rows,
                            );
                        }
                    }
                    Scenario::Pipelined => {
                        go(
                            sc,
                            LoadSpec {
                                depth: 8,
                                ..base.clone()
                            },
                            &mut rows,
                        );
                        if o.full {
                            go(
                                sc,
                                LoadSpec {
                                    depth: 8,
                                    payload: 4096,
                                    ..base.clone()
                                },
                                &mut rows,
                            );
                        }
                    }
                    Scenario::Stream => {
                        go(
                            sc,
                            LoadSpec {
                                conns: 8,
                                payload: 64 * 1024,
                                depth: 4,
                                ..base.clone()
                            },
                            &mut rows,
                        );
                    }
                    Scenario::Handshake => {
                        if !t.is_tls() {
                            continue;
                        }
                        // QUIC: cold only (quinn does not say whether a handshake resumed).
                        let variants: &[(bool, &Arc<rustls::ClientConfig>)] =
                            if t == Transport::Quic {
                                &[(false, &tls_cold)]
                            } else {
                                &[(false, &tls_cold), (true, &tls_cfg)]
                            };
                        for &(resumed, cfg) in variants {
                            match client::run_handshakes(
                                srv.addr,
                                Arc::clone(cfg),
                                t == Transport::Quic,
                                8,
                                o.warmup,
                                o.duration,
                                &o.client_cores,
                                Some(srv.pid),
                                &o.server_cores,
                            ) {
                                Ok(h) => {
                                    let secs = h.window.as_secs_f64();
                                    let pct = |q: f64| {
                                        (!h.hist.is_empty())
                                            .then(|| h.hist.value_at_quantile(q) as f64)
                                    };
                                    let actually = h.handshakes > 0 && h.resumed * 2 > h.handshakes;
                                    if resumed && !actually {
                                        progress(&format!(
                                            "note: only {}/{} handshakes resumed",
                                            h.resumed, h.handshakes
                                        ));
                                    }
                                    let mut row = Row {
                                        scenario: sc.name().to_owned(),
                                        transport: t.as_str().to_owned(),
                                        engine: e.name().to_owned(),
                                        conns: 8,
                                        handshakes_per_sec: Some(h.handshakes as f64 / secs),
                                        p50_us: pct(0.50),
                                        p95_us: pct(0.95),
                                        p99_us: pct(0.99),
                                        p999_us: pct(0.999),
                                        resumed: Some(if resumed { actually } else { false }),
                                        server_cpu_pct: h
                                            .server_cpu
                                            .map(|c| c.as_secs_f64() / secs * 100.0),
                                        client_cpu_pct: Some(
                                            h.client_cpu.as_secs_f64() / secs * 100.0,
                                        ),
                                        cores_idle_pct: h.cores_idle.map(|x| x * 100.0),
                                        ..Row::default()
                                    };
                                    row.flag = flag_of(&row, client_n, server_n).map(str::to_owned);
                                    progress(&describe(&row, h.errors, &h.first_error));
                                    rows.push(row);
                                }
                                Err(err) => progress(&format!("handshake failed: {err:#}")),
                            }
                        }
                    }
                    Scenario::Idle if t == Transport::Uds => {
                        progress("skip idle uds: the idle holder dials TCP only");
                    }
                    Scenario::Idle => {
                        let want = if o.full { 10_000 } else { 2_000 };
                        let n = want.min((nofile as usize).saturating_sub(256));
                        std::thread::sleep(Duration::from_millis(200));
                        let before = sys::rss_bytes(srv.pid)?;
                        progress(&format!("idle: opening {n} connections to {}", e.name()));
                        let hold = client::hold_idle(
                            srv.addr,
                            tls.clone(),
                            t == Transport::Quic,
                            n,
                            o.client_cores.first().copied(),
                        )?;
                        std::thread::sleep(Duration::from_millis(300));
                        let after = sys::rss_bytes(srv.pid)?;
                        let per = (after as f64 - before as f64) / hold.opened.max(1) as f64;
                        if let Some(err) = &hold.first_error {
                            progress(&format!(
                                "idle: {} of {n} opened; first error: {err}",
                                hold.opened
                            ));
                        }
                        if let Some(mut row) = go(sc, base.clone(), &mut Vec::new()) {
                            row.conns = hold.opened as u64;
                            row.rss_per_conn_bytes = Some(per);
                            progress(&format!(
                                "idle: {} held, server RSS {} → {} KiB, {per:.0} B/conn",
                                hold.opened,
                                before / 1024,
                                after / 1024
                            ));
                            rows.push(row);
                        }
                        drop(hold);
                    }
                }
            }
            drop(srv);
        }
    }
    report::fill_ratios(&mut rows);
    progress(&format!(
        "suite done in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(Report {
        commit: report::git_commit(),
        date: report::now_rfc3339(),
        machine: Machine {
            cpus: sys::cpus(),
            kernel: sys::kernel(),
        },
        limits,
        results: rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cli: f64, srv: f64, rate: Option<f64>) -> Row {
        Row {
            client_cpu_pct: Some(cli),
            server_cpu_pct: Some(srv),
            offered_rate: rate,
            ..Row::default()
        }
    }

    #[test]
    fn flags() {
        assert_eq!(flag_of(&row(99.0, 60.0, None), 1, 1), Some(CLIENT_BOUND));
        assert_eq!(flag_of(&row(98.0, 97.0, None), 1, 1), None);
        assert_eq!(flag_of(&row(40.0, 99.0, None), 1, 1), None);
        assert_eq!(flag_of(&row(40.0, 35.0, None), 1, 1), Some(STALL));
        // Fixed-rate rows are meant to leave both sides idle part of the time.
        assert_eq!(flag_of(&row(40.0, 35.0, Some(1e4)), 1, 1), None);
        // Percentages are of one core: 150 % over two client cores is 75 % each.
        assert_eq!(flag_of(&row(150.0, 70.0, None), 2, 1), Some(STALL));
        assert_eq!(flag_of(&row(170.0, 70.0, None), 2, 1), None);
        assert_eq!(flag_of(&Row::default(), 1, 1), None);
        let busy_machine = Row {
            cores_idle_pct: Some(5.0),
            ..row(40.0, 35.0, None)
        };
        assert_eq!(flag_of(&busy_machine, 1, 1), Some(CONTENDED));
        let idle_machine = Row {
            cores_idle_pct: Some(55.0),
            ..row(40.0, 35.0, None)
        };
        assert_eq!(flag_of(&idle_machine, 1, 1), Some(STALL));
    }
}
