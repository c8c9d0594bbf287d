//! `ron-perf run --scenarios abuse`: four attacks, each run beside 64 well-behaved echo
//! connections, against ron-transport's `tokio` and `uring` engines over TCP and TLS.
//!
//! For every engine and transport one `ron-perf serve` process is started (pinned to the
//! server cores) with the library's default timeouts (`read_timeout` and `write_timeout` 5 s,
//! `idle_timeout` 60 s), a per-peer rate limit (`rates.per_peer_bytes_per_sec`, default
//! 4 MiB/s) and its metrics endpoint on (`server::scrape`). For each attack, against that same
//! process: a **baseline** window of the well-behaved load alone, then the attack starts, and
//! after a ramp an **attacked** window of the same load; the attack stops, and after 1.5 s a
//! second baseline window. `good_fraction` = attacked frames/s ÷ the mean of the two baseline
//! windows' frames/s of the well-behaved connections (goal, reported and never asserted:
//! ≥ 0.9). The well-behaved connections (64, 1 KiB echo, closed loop, 1 in flight) come from
//! 127.0.1.1–127.0.1.64, one loopback address each, so a per-peer (per-IP) limit sees each as a
//! peer of its own; the attackers come from 127.0.0.2 (the flood from 127.0.2.1–250).
//!
//! Every attack runs on a thread of its own on the client core at nice 19: it takes only the
//! CPU the well-behaved load leaves on the core they share, so a row measures the server's
//! isolation rather than the load generator's; each row reports how much attack that left
//! (connections opened, bytes sent).
//!
//! Attacks (report names):
//! - `slowloris`: 2,000 connections each trickling one byte every 2 s (over TLS: the bytes of
//!   a real ClientHello, so the handshake never completes; over TCP: a frame whose length
//!   prefix announces 1,000 bytes); a connection the server closes is reopened (at most 4× the
//!   count in all).
//! - `hot_peer`: one connection writing 4 KiB echo frames paced at 10× the per-peer limit,
//!   reading its echoes.
//! - `non_reader`: 4 connections (4 KiB receive buffer) sending 1-byte-payload frames, one
//!   write (one segment, TCP_NODELAY) each, 10,000 frames/s in all, never reading their
//!   echoes.
//! - `handshake_flood`: 32 loops each opening a connection, sending garbage (TLS: bytes that
//!   are no TLS record; TCP: a length prefix above `max_frame_bytes`), waiting ≤ 2 s for the
//!   server to close it, and opening the next (at most 300,000 connections per attack: at the
//!   ≈ 11,000 connections/s seen on 2 cores the attack lasts about 8.5 s, ≈ 95,000).
//!
//! Closes are counted on the attacker's side (EOF, reset, other errors) and, by reason, from
//! the server's `rejected_total{reason}` (difference over the attack). Every attack is bounded
//! in connections and stops when the attacked window ends.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::client::{self, LoadResult, LoadSpec};
use crate::run::{progress, spawn_server_env};
use crate::server::{scrape, EngineId, Role, Transport};
use crate::{sys, tlsutil};

/// One attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Many connections trickling bytes, never completing a frame (or a handshake).
    Slowloris,
    /// One peer sending at 10× its per-peer rate limit.
    HotPeer,
    /// A peer sending tiny frames one per segment and never reading its echoes.
    NonReader,
    /// Connections opened as fast as a bounded loop allows, each sending garbage.
    HandshakeFlood,
}

impl Attack {
    /// Every attack, in run order.
    pub const ALL: [Attack; 4] = [
        Attack::Slowloris,
        Attack::HotPeer,
        Attack::NonReader,
        Attack::HandshakeFlood,
    ];

    /// The report name (`attack` field).
    pub fn name(self) -> &'static str {
        match self {
            Self::Slowloris => "slowloris",
            Self::HotPeer => "hot_peer",
            Self::NonReader => "non_reader",
            Self::HandshakeFlood => "handshake_flood",
        }
    }

    /// Parses a report name.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                anyhow!("unknown attack {s:?} (slowloris|hot_peer|non_reader|handshake_flood)")
            })
    }
}

/// Sizes of the attacks (the defaults are the scenario; tests use tiny ones).
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Slowloris connections.
    pub slowloris_conns: usize,
    /// Slowloris: one byte per connection every this long.
    pub slowloris_every: Duration,
    /// Non-reader connections.
    pub non_reader_conns: usize,
    /// Non-reader frames per second, all connections together.
    pub non_reader_fps: u64,
    /// Handshake-flood loops running at once.
    pub flood_loops: usize,
    /// Handshake-flood connections per attack, at most.
    pub flood_max: u64,
    /// The hot peer's rate as a multiple of the per-peer limit.
    pub hot_factor: u64,
    /// Time between the attack's start and the attacked window's connect.
    pub ramp: Duration,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            slowloris_conns: 2000,
            slowloris_every: Duration::from_secs(2),
            non_reader_conns: 4,
            non_reader_fps: 10_000,
            flood_loops: 32,
            flood_max: 300_000,
            hot_factor: 10,
            ramp: Duration::from_secs(2),
        }
    }
}

/// Options of the abuse scenario.
#[derive(Debug, Clone)]
pub struct AbuseOpts {
    /// Engines (only ron-transport's own, `tokio` and `uring`, are attacked).
    pub engines: Vec<EngineId>,
    /// Transports (`tcp`, `tls`).
    pub transports: Vec<Transport>,
    /// Attacks to run.
    pub attacks: Vec<Attack>,
    /// Each window (baseline and attacked).
    pub window: Duration,
    /// Warm-up before each window.
    pub warmup: Duration,
    /// Server cores.
    pub server_cores: Vec<usize>,
    /// Client cores (the well-behaved load and the attacker share them).
    pub client_cores: Vec<usize>,
    /// Server shards (0 = one per server core).
    pub shards: usize,
    /// `rates.per_peer_bytes_per_sec` of the attacked servers.
    pub peer_bps: u64,
    /// Attack sizes.
    pub sizes: Sizes,
    /// Directory for TLS material.
    pub out_dir: PathBuf,
}

/// The `abuse` section of a report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AbuseSection {
    /// Well-behaved connections per window.
    pub good_conns: u64,
    /// Their payload bytes per frame.
    pub good_payload: u64,
    /// Each window, seconds.
    pub window_s: f64,
    /// `rates.per_peer_bytes_per_sec` of the attacked servers.
    pub peer_bps_limit: u64,
    /// The `RON_TRANSPORT_*` settings the attacked servers ran with.
    pub server_env: Vec<String>,
    /// The goal, reported and never asserted: `good_fraction` ≥ this on every row.
    pub goal_good_fraction: f64,
    /// One row per (attack, engine, transport).
    pub rows: Vec<AbuseRow>,
}

/// One attack against one engine over one transport.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AbuseRow {
    /// `slowloris`, `hot_peer`, `non_reader` or `handshake_flood`.
    pub attack: String,
    /// `tokio` or `uring`.
    pub engine: String,
    /// `tcp` or `tls`.
    pub transport: String,
    /// Attacked ÷ baseline frames/s of the well-behaved connections (null if the baseline
    /// moved no frame).
    pub good_fraction: Option<f64>,
    /// Well-behaved frames/s without the attack: the mean of the window before the attack and
    /// the window after it (the two bracket the attacked window, so a machine whose load
    /// drifts during the row moves both sides alike).
    pub good_fps_baseline: f64,
    /// Well-behaved frames/s in the window before the attack.
    pub good_fps_baseline_before: f64,
    /// Well-behaved frames/s in the window after the attack stopped (and 1.5 s of settling).
    pub good_fps_baseline_after: f64,
    /// Well-behaved frames/s under the attack.
    pub good_fps_attack: f64,
    /// Well-behaved p99 round trip without the attack, µs.
    pub good_p99_us_baseline: Option<f64>,
    /// Well-behaved p99 round trip under the attack, µs.
    pub good_p99_us_attack: Option<f64>,
    /// Well-behaved connections that failed (either window).
    pub good_errors: u64,
    /// First error of a well-behaved connection, if any.
    pub good_first_error: Option<String>,
    /// Server CPU over the baseline window (100 = one core).
    pub server_cpu_pct_baseline: Option<f64>,
    /// Server CPU over the attacked window.
    pub server_cpu_pct_attack: Option<f64>,
    /// Client process CPU (good load and attacker) over the attacked window.
    pub client_cpu_pct_attack: f64,
    /// Attacker connections opened.
    pub attack_opened: u64,
    /// Attacker connections the server closed (EOF + reset + other errors seen by the attacker).
    pub attack_closed_by_server: u64,
    /// Of those: orderly EOF.
    pub attack_closed_eof: u64,
    /// Of those: connection reset / broken pipe.
    pub attack_closed_rst: u64,
    /// Of those: other errors (e.g. a TLS alert).
    pub attack_closed_other: u64,
    /// Attacker connects that failed.
    pub attack_connect_errors: u64,
    /// Attacker connections still open when the attack stopped.
    pub attack_open_at_end: u64,
    /// Bytes the attacker's sockets accepted.
    pub attack_bytes_sent: u64,
    /// Bytes the attacker received.
    pub attack_bytes_received: u64,
    /// `rejected_total{reason}` increase from the attack's start to the end of the attacked
    /// window, from the server's metrics (null when the server exposed none).
    pub rejected: Option<BTreeMap<String, u64>>,
    /// `rejected_total{reason}` increase from the attack's stop (its connections dropped by
    /// the attacker) to 1.5 s later.
    pub rejected_after_stop: Option<BTreeMap<String, u64>>,
    /// How long the attack ran, seconds.
    pub attack_seconds: f64,
    /// What the attack did, in words.
    pub detail: String,
}

/// `attacked ÷ baseline`, `None` when the baseline is not positive.
pub fn good_fraction(baseline_fps: f64, attack_fps: f64) -> Option<f64> {
    (baseline_fps > 0.0 && baseline_fps.is_finite()).then(|| attack_fps / baseline_fps)
}

/// The increase of every counter from `before` to `after` (missing = 0; never negative).
pub fn counter_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// The well-behaved connections' source addresses: 127.0.1.1 ..= 127.0.1.n.
pub fn good_sources(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                1 + (i / 250) as u8,
                1 + (i % 250) as u8,
            ))
        })
        .collect()
}

/// The attacker's source address (all attacks but the flood).
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The rig's well-behaved load for one window.
const GOOD_CONNS: usize = 64;
const GOOD_PAYLOAD: usize = 1024;
/// The goal (reported, never asserted).
pub const GOAL: f64 = 0.9;

/// The `RON_TRANSPORT_*` settings of the attacked servers.
pub fn server_env(peer_bps: u64) -> Vec<(&'static str, String)> {
    vec![
        ("RON_TRANSPORT_READ_TIMEOUT", "5s".to_owned()),
        ("RON_TRANSPORT_WRITE_TIMEOUT", "5s".to_owned()),
        ("RON_TRANSPORT_IDLE_TIMEOUT", "60s".to_owned()),
        ("RON_TRANSPORT_PER_PEER_BPS", peer_bps.to_string()),
    ]
}

/// Runs the scenario and returns its section.
pub fn run(o: &AbuseOpts) -> anyhow::Result<AbuseSection> {
    let _ = sys::raise_nofile(1 << 20);
    let env = server_env(o.peer_bps);
    let mut full_env = env.clone();
    full_env.push((scrape::ENV, "1".to_owned()));
    let engines: Vec<EngineId> = o
        .engines
        .iter()
        .copied()
        .filter(|e| {
            let keep = e.role() == Role::Engine;
            if !keep {
                progress(&format!(
                    "abuse: skipping {} (only ron-transport's engines are attacked)",
                    e.name()
                ));
            }
            keep
        })
        .collect();
    let ss = tlsutil::SelfSigned::generate()?;
    let (cert, key) = ss.write_to(&o.out_dir.join("tls"))?;
    let tls_cfg = tlsutil::library_client_config(ss.cert_pem.as_bytes(), true)?;
    let mut rows = Vec::new();
    for &t in &o.transports {
        if t == Transport::Uds {
            progress("abuse: skipping uds (per-peer limits and TLS do not apply)");
            continue;
        }
        for &e in &engines {
            if let Err(why) = e.available(t) {
                progress(&format!("abuse: skip {} {}: {why}", e.name(), t.as_str()));
                continue;
            }
            progress(&format!("abuse: start server {} {}", e.name(), t.as_str()));
            let srv = spawn_server_env(
                e,
                t,
                (t == Transport::Tls).then_some((&cert, &key)),
                &o.server_cores,
                o.shards,
                crate::server::framed::Flavour::default(),
                &full_env,
            )?;
            if srv.metrics.is_none() {
                progress("abuse: the server exposed no metrics; reasons will be null");
            }
            let tls = (t == Transport::Tls).then(|| tls_cfg.clone());
            for &a in &o.attacks {
                match one(o, a, e, t, &srv, tls.clone()) {
                    Ok(row) => {
                        progress(&describe(&row));
                        rows.push(row);
                    }
                    Err(err) => progress(&format!(
                        "abuse {} {} {} failed: {err:#}",
                        a.name(),
                        e.name(),
                        t.as_str()
                    )),
                }
            }
            drop(srv);
        }
    }
    Ok(AbuseSection {
        good_conns: GOOD_CONNS as u64,
        good_payload: GOOD_PAYLOAD as u64,
        window_s: o.window.as_secs_f64(),
        peer_bps_limit: o.peer_bps,
        server_env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        goal_good_fraction: GOAL,
        rows,
    })
}

fn rejected(srv: &crate::run::ServerProc) -> Option<BTreeMap<String, u64>> {
    let text = scrape::fetch(srv.metrics?).ok()?;
    Some(
        scrape::samples(&text, "rejected_total", "reason")
            .into_iter()
            .map(|(k, v)| (k, v as u64))
            .collect(),
    )
}

/// One attack against a running server: baseline window, attack, attacked window.
fn one(
    o: &AbuseOpts,
    a: Attack,
    e: EngineId,
    t: Transport,
    srv: &crate::run::ServerProc,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<AbuseRow> {
    let spec = LoadSpec {
        target: srv.addr,
        uds: None,
        tls: tls.clone(),
        conns: GOOD_CONNS,
        payload: GOOD_PAYLOAD,
        depth: 1,
        rate: None,
        warmup: o.warmup,
        duration: o.window,
        cores: o.client_cores.clone(),
        server_pid: Some(srv.pid),
        server_cores: o.server_cores.clone(),
        sources: good_sources(GOOD_CONNS),
        quic: false,
    };
    progress(&format!(
        "abuse {} {} {}: baseline window",
        a.name(),
        e.name(),
        t.as_str()
    ));
    let base = client::run_load(&spec).context("baseline window")?;
    let r0 = rejected(srv);
    let ctx = AttackCtx {
        target: srv.addr,
        transport: t,
        tls,
        peer_bps: o.peer_bps,
        sizes: o.sizes.clone(),
    };
    let running = start(a, ctx, o.client_cores.first().copied())?;
    std::thread::sleep(o.sizes.ramp);
    progress(&format!(
        "abuse {} {} {}: attacked window",
        a.name(),
        e.name(),
        t.as_str()
    ));
    let under = client::run_load(&spec);
    let r1 = rejected(srv);
    let (c, detail) = running.stop();
    let under = under.context("attacked window")?;
    // Let the server finish closing what the attacker left, then read its counters again.
    std::thread::sleep(Duration::from_millis(1500));
    let r2 = rejected(srv);
    progress(&format!(
        "abuse {} {} {}: baseline window after the attack",
        a.name(),
        e.name(),
        t.as_str()
    ));
    let after = client::run_load(&spec).context("baseline window after the attack")?;
    let mut row = row(
        a,
        e,
        t,
        &base,
        &under,
        &c,
        r0.clone().zip(r1.clone()),
        detail,
    );
    row.rejected_after_stop = r1.zip(r2).map(|(b, a)| counter_delta(&b, &a));
    row.good_fps_baseline_before = base.fps();
    row.good_fps_baseline_after = after.fps();
    row.good_fps_baseline = (base.fps() + after.fps()) / 2.0;
    row.good_fraction = good_fraction(row.good_fps_baseline, row.good_fps_attack);
    row.good_errors += after.errors;
    Ok(row)
}

#[allow(clippy::too_many_arguments)]
fn row(
    a: Attack,
    e: EngineId,
    t: Transport,
    base: &LoadResult,
    under: &LoadResult,
    c: &Counts,
    rej: Option<(BTreeMap<String, u64>, BTreeMap<String, u64>)>,
    detail: String,
) -> AbuseRow {
    let (fb, fa) = (base.fps(), under.fps());
    let closed = c.eof + c.rst + c.other;
    AbuseRow {
        attack: a.name().to_owned(),
        engine: e.name().to_owned(),
        transport: t.as_str().to_owned(),
        good_fraction: good_fraction(fb, fa),
        good_fps_baseline: fb,
        good_fps_baseline_before: fb,
        good_fps_baseline_after: fb,
        good_fps_attack: fa,
        good_p99_us_baseline: base.pct(0.99),
        good_p99_us_attack: under.pct(0.99),
        good_errors: base.errors + under.errors,
        good_first_error: base
            .first_error
            .clone()
            .or_else(|| under.first_error.clone()),
        server_cpu_pct_baseline: base.server_cpu_util().map(|u| u * 100.0),
        server_cpu_pct_attack: under.server_cpu_util().map(|u| u * 100.0),
        client_cpu_pct_attack: under.client_cpu_util() * 100.0,
        attack_opened: c.opened,
        attack_closed_by_server: closed,
        attack_closed_eof: c.eof,
        attack_closed_rst: c.rst,
        attack_closed_other: c.other,
        attack_connect_errors: c.connect_errors,
        attack_open_at_end: c.open_at_end,
        attack_bytes_sent: c.sent,
        attack_bytes_received: c.received,
        rejected: rej.map(|(b, a)| counter_delta(&b, &a)),
        rejected_after_stop: None,
        attack_seconds: c.seconds,
        detail,
    }
}

fn describe(r: &AbuseRow) -> String {
    let reasons = r.rejected.as_ref().map_or("n/a".to_owned(), |m| {
        if m.is_empty() {
            "none".to_owned()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        }
    });
    format!(
        "abuse {:<15} {:<5} {:<3} good_fraction {} ({:.0} → {:.0} fps, p99 {} → {} µs, srv {} → {} %) \
         attacker opened {} closed {} (eof {} rst {} other {}) open {}, sent {:.2} MB/s recv {:.2} MB/s | rejected: {}{}",
        r.attack,
        r.engine,
        r.transport,
        r.good_fraction
            .map_or("n/a".to_owned(), |f| format!("{f:.3}")),
        r.good_fps_baseline,
        r.good_fps_attack,
        fmt(r.good_p99_us_baseline),
        fmt(r.good_p99_us_attack),
        fmt(r.server_cpu_pct_baseline),
        fmt(r.server_cpu_pct_attack),
        r.attack_opened,
        r.attack_closed_by_server,
        r.attack_closed_eof,
        r.attack_closed_rst,
        r.attack_closed_other,
        r.attack_open_at_end,
        r.attack_bytes_sent as f64 / r.attack_seconds.max(1e-3) / 1e6,
        r.attack_bytes_received as f64 / r.attack_seconds.max(1e-3) / 1e6,
        reasons,
        if r.good_errors > 0 {
            format!(
                " | {} good conns failed: {}",
                r.good_errors,
                r.good_first_error.as_deref().unwrap_or("?")
            )
        } else {
            String::new()
        }
    )
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |x| format!("{x:.0}"))
}

/// The Markdown table of an abuse section.
pub fn table(s: &AbuseSection) -> String {
    let mut out = format!(
        "\n### abuse (good: {} conns × {} B echo; goal good_fraction ≥ {}; per-peer limit {} B/s)\n\n\
         | attack | engine | transport | good_fraction | good fps base → attack | p99 µs base → attack | srv CPU % base → attack | attacker opened / closed by server | rejected_total{{reason}} |\n\
         |---|---|---|---:|---:|---:|---:|---:|---|\n",
        s.good_conns, s.good_payload, s.goal_good_fraction, s.peer_bps_limit
    );
    for r in &s.rows {
        let mut reasons = r.rejected.as_ref().map_or("n/a".to_owned(), |m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        if let Some(m) = r.rejected_after_stop.as_ref().filter(|m| !m.is_empty()) {
            reasons.push_str(&format!(
                " (after stop: {})",
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let frac = r.good_fraction.map_or("n/a".to_owned(), |f| {
            if f < s.goal_good_fraction {
                format!("**{f:.3}**")
            } else {
                format!("{f:.3}")
            }
        });
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} → {:.0} | {} → {} | {} → {} | {} / {} | {} |\n",
            r.attack,
            r.engine,
            r.transport,
            frac,
            r.good_fps_baseline,
            r.good_fps_attack,
            fmt(r.good_p99_us_baseline),
            fmt(r.good_p99_us_attack),
            fmt(r.server_cpu_pct_baseline),
            fmt(r.server_cpu_pct_attack),
            r.attack_opened,
            r.attack_closed_by_server,
            reasons
        ));
    }
    out
}

/// Writes `section` as the `abuse` field of the report JSON at `path` (which must exist).
pub fn save_into(path: &Path, section: &AbuseSection) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    doc.as_object_mut()
        .ok_or_else(|| anyhow!("{} is not a JSON object", path.display()))?
        .insert("abuse".into(), serde_json::to_value(section)?);
    std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("write {}", path.display()))
}

/// An SVG bar chart of `good_fraction` per row (one bar per engine, grouped by attack and
/// transport), with the goal as a line.
pub fn write_svg(s: &AbuseSection, commit: &str, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let mut groups: Vec<String> = Vec::new();
    for r in &s.rows {
        let g = format!("{} {}", r.attack, r.transport);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    if groups.is_empty() {
        return Err(anyhow!("no abuse rows to chart"));
    }
    let engines = ["tokio", "uring"];
    let n = groups.len();
    let width = (160 + n * 110).max(800) as u32;
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let ymax = s
        .rows
        .iter()
        .filter_map(|r| r.good_fraction)
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "ron-perf {} · abuse: well-behaved throughput under attack ÷ without (goal ≥ {})",
                &commit[..commit.len().min(10)],
                s.goal_good_fraction
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_labels(0)
        .disable_x_mesh()
        .y_desc("good_fraction")
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    for (gi, g) in groups.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(gi as f64 + 0.1, 0.0));
        root.draw(&Text::new(
            g.clone(),
            (px, py + 6),
            ("sans-serif", 11).into_font().color(&BLACK),
        ))
        .map_err(|e| anyhow!("{e:?}"))?;
    }
    let w = 0.8 / engines.len() as f64;
    for (ei, e) in engines.iter().enumerate() {
        let color = Palette99::pick(ei + 1).to_rgba();
        let bars: Vec<Rectangle<(f64, f64)>> = s
            .rows
            .iter()
            .filter(|r| r.engine == *e)
            .filter_map(|r| {
                let gi = groups
                    .iter()
                    .position(|g| *g == format!("{} {}", r.attack, r.transport))?;
                let v = r.good_fraction?;
                Some(crate::chart::group_bar(gi, ei, w, v, color))
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        chart
            .draw_series(bars)
            .map_err(|e| anyhow!("{e:?}"))?
            .label(*e)
            .legend(crate::chart::legend_box(color));
    }
    let goal = s.goal_good_fraction;
    chart
        .draw_series(LineSeries::new(
            [(0.0, goal), (n as f64, goal)],
            RED.stroke_width(1),
        ))
        .map_err(|e| anyhow!("{e:?}"))?
        .label(format!("goal {goal}"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], RED));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The attacker.

/// What an attack needs to know.
#[derive(Debug, Clone)]
struct AttackCtx {
    target: SocketAddr,
    transport: Transport,
    tls: Option<Arc<rustls::ClientConfig>>,
    peer_bps: u64,
    sizes: Sizes,
}

/// Live counters of an attack.
#[derive(Debug, Default)]
struct Counters {
    opened: AtomicU64,
    open_now: AtomicU64,
    eof: AtomicU64,
    rst: AtomicU64,
    other: AtomicU64,
    connect_errors: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

/// A snapshot of [`Counters`] when the attack stopped.
#[derive(Debug, Default, Clone, PartialEq)]
struct Counts {
    opened: u64,
    open_at_end: u64,
    eof: u64,
    rst: u64,
    other: u64,
    connect_errors: u64,
    sent: u64,
    received: u64,
    seconds: f64,
}

impl Counters {
    fn snapshot(&self) -> Counts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            opened: g(&self.opened),
            open_at_end: g(&self.open_now),
            eof: g(&self.eof),
            rst: g(&self.rst),
            other: g(&self.other),
            connect_errors: g(&self.connect_errors),
            sent: g(&self.sent),
            received: g(&self.received),
            seconds: 0.0,
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts how the server ended a connection, from what the attacker's read or write saw.
    fn closed(&self, how: Closed) {
        match how {
            Closed::Eof => Self::add(&self.eof, 1),
            Closed::Reset => Self::add(&self.rst, 1),
            Closed::Other => Self::add(&self.other, 1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    Eof,
    Reset,
    Other,
}

fn classify(e: &std::io::Error) -> Closed {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            Closed::Reset
        }
        ErrorKind::UnexpectedEof => Closed::Eof,
        _ => Closed::Other,
    }
}

/// A running attack.
struct Running {
    started: std::time::Instant,
    cancel: CancellationToken,
    counters: Arc<Counters>,
    thread: std::thread::JoinHandle<()>,
    detail: String,
}

impl Running {
    /// Stops the attack (every connection is dropped) and returns its counts.
    fn stop(self) -> (Counts, String) {
        let mut c = self.counters.snapshot();
        c.seconds = self.started.elapsed().as_secs_f64();
        self.cancel.cancel();
        let _ = self.thread.join();
        (c, self.detail)
    }
}

/// Starts attack `a` on a thread of its own (pinned to `core`), with one current-thread tokio
/// runtime; it runs until [`Running::stop`].
fn start(a: Attack, ctx: AttackCtx, core: Option<usize>) -> anyhow::Result<Running> {
    let cancel = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let s = &ctx.sizes;
    let detail = match a {
        Attack::Slowloris => format!(
            "{} connections from {ATTACKER}, one byte each every {:?} ({}), reopened when closed",
            s.slowloris_conns,
            s.slowloris_every,
            if ctx.transport == Transport::Tls {
                "of a ClientHello"
            } else {
                "of a frame announcing 1000 bytes"
            }
        ),
        Attack::HotPeer => format!(
            "1 connection from {ATTACKER} writing 4 KiB echo frames paced at {} B/s ({}× the per-peer limit), reading its echoes",
            ctx.peer_bps.saturating_mul(s.hot_factor),
            s.hot_factor
        ),
        Attack::NonReader => format!(
            "{} connections from {ATTACKER} (4 KiB SO_RCVBUF), 1-byte-payload frames one write each (TCP_NODELAY), {} frames/s in all, never reading",
            s.non_reader_conns, s.non_reader_fps
        ),
        Attack::HandshakeFlood => format!(
            "{} loops from 127.0.2.1-250, each: connect, send {}, wait ≤ 2 s for the close; at most {} connections",
            s.flood_loops,
            if ctx.transport == Transport::Tls {
                "bytes that are no TLS record"
            } else {
                "a length prefix above max_frame_bytes"
            },
            s.flood_max
        ),
    };
    let (c2, k2) = (counters.clone(), cancel.clone());
    let thread = std::thread::Builder::new()
        .name(format!("attack-{}", a.name()))
        .spawn(move || {
            if let Some(c) = core {
                let _ = sys::pin_to(&[c]);
            }
            // The attacker shares the load generator's core: at nice 19 it takes only CPU the
            // well-behaved client leaves, so a row measures what the attack costs the server,
            // not the client core the two share (the flood's 32 loops at nice 0 took up to
            // 40 % of that core and dragged `good_fraction` down with the server 25-38 % busy).
            let _ = sys::nice_thread(19);
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                match a {
                    Attack::Slowloris => {
                        let hello = Arc::new(slow_bytes(&ctx));
                        for i in 0..ctx.sizes.slowloris_conns {
                            tasks.spawn(slowloris(
                                ctx.clone(),
                                hello.clone(),
                                i,
                                c2.clone(),
                                k2.clone(),
                            ));
                        }
                    }
                    Attack::HotPeer => {
                        tasks.spawn(hot_peer(ctx.clone(), c2.clone(), k2.clone()));
                    }
                    Attack::NonReader => {
                        for _ in 0..ctx.sizes.non_reader_conns {
                            tasks.spawn(non_reader(ctx.clone(), c2.clone(), k2.clone()));
                        }
                    }
                    Attack::HandshakeFlood => {
                        let next = Arc::new(AtomicU64::new(0));
                        for _ in 0..ctx.sizes.flood_loops {
                            tasks.spawn(flood(ctx.clone(), next.clone(), c2.clone(), k2.clone()));
                        }
                    }
                }
                k2.cancelled().await;
                // Every task watches the token; give them a moment, then drop the rest.
                let _ = tokio::time::timeout(Duration::from_secs(3), async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
            });
        })?;
    Ok(Running {
        started: std::time::Instant::now(),
        cancel,
        counters,
        thread,
        detail,
    })
}

/// A plain TCP connection from `src` (TCP_NODELAY), counted as opened or as a connect error.
async fn open(target: SocketAddr, src: IpAddr, c: &Counters) -> Option<TcpStream> {
    let r = async {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(SocketAddr::new(src, 0))?;
        let t = s.connect(target).await?;
        t.set_nodelay(true)?;
        std::io::Result::Ok(t)
    };
    match tokio::time::timeout(Duration::from_secs(5), r).await {
        Ok(Ok(t)) => {
            Counters::add(&c.opened, 1);
            Some(t)
        }
        _ => {
            Counters::add(&c.connect_errors, 1);
            None
        }
    }
}

/// What a slowloris connection trickles: a ClientHello over TLS, else a frame announcing
/// 1,000 bytes (neither ever completes at one byte per interval).
fn slow_bytes(ctx: &AttackCtx) -> Vec<u8> {
    if let Some(cfg) = &ctx.tls {
        if let Ok(mut conn) =
            rustls::ClientConnection::new(cfg.clone(), tlsutil::server_name(ctx.target))
        {
            let mut v = Vec::new();
            if conn.write_tls(&mut v).is_ok() && !v.is_empty() {
                return v;
            }
        }
    }
    let mut v = 1000u32.to_be_bytes().to_vec();
    v.extend(std::iter::repeat_n(b'x', 1000));
    v
}

async fn slowloris(
    ctx: AttackCtx,
    bytes: Arc<Vec<u8>>,
    i: usize,
    c: Arc<Counters>,
    stop: CancellationToken,
) {
    let every = ctx.sizes.slowloris_every;
    let budget = 4 * ctx.sizes.slowloris_conns as u64;
    // Spread the first bytes over one interval.
    let offset = every.mul_f64((i % 1000) as f64 / 1000.0);
    while !stop.is_cancelled() && c.opened.load(Ordering::Relaxed) < budget {
        let Some(s) = open(ctx.target, ATTACKER, &c).await else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            }
        };
        Counters::add(&c.open_now, 1);
        let (mut rd, mut wr) = s.into_split();
        let mut next = tokio::time::Instant::now() + offset;
        let mut pos = 0usize;
        let mut buf = [0u8; 512];
        let ended = loop {
            tokio::select! {
                _ = stop.cancelled() => break None,
                r = rd.read(&mut buf) => match r {
                    Ok(0) => break Some(Closed::Eof),
                    Ok(n) => Counters::add(&c.received, n as u64),
                    Err(e) => break Some(classify(&e)),
                },
                _ = tokio::time::sleep_until(next) => {
                    let b = bytes[pos.min(bytes.len() - 1)];
                    pos += 1;
                    match wr.write_all(&[b]).await {
                        Ok(()) => Counters::add(&c.sent, 1),
                        Err(e) => break Some(classify(&e)),
                    }
                    next += every;
                }
            }
        };
        c.open_now.fetch_sub(1, Ordering::Relaxed);
        match ended {
            Some(how) => c.closed(how),
            None => return,
        }
    }
}

async fn hot_peer(ctx: AttackCtx, c: Arc<Counters>, stop: CancellationToken) {
    let bps = ctx.peer_bps.saturating_mul(ctx.sizes.hot_factor).max(1);
    let frame = crate::wire::frame(4096);
    let tick = Duration::from_millis(10);
    let per_tick = ((bps as f64 * tick.as_secs_f64()) / frame.len() as f64).max(1.0);
    let mut reconnects = 0;
    while !stop.is_cancelled() && reconnects < 20 {
        reconnects += 1;
        let s = match tokio::time::timeout(
            Duration::from_secs(5),
            client::connect_from(ctx.target, ATTACKER, ctx.tls.as_ref()),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => {
                Counters::add(&c.connect_errors, 1);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        Counters::add(&c.opened, 1);
        Counters::add(&c.open_now, 1);
        let (mut rd, mut wr) = tokio::io::split(s);
        let reader = {
            let c = c.clone();
            async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) => return Closed::Eof,
                        Ok(n) => Counters::add(&c.received, n as u64),
                        Err(e) => return classify(&e),
                    }
                }
            }
        };
        let writer = {
            let c = c.clone();
            let frame = frame.clone();
            async move {
                let start = tokio::time::Instant::now();
                let mut owed = 0.0f64;
                let mut at = start;
                loop {
                    at += tick;
                    tokio::time::sleep_until(at).await;
                    owed += per_tick;
                    while owed >= 1.0 {
                        if let Err(e) = wr.write_all(&frame).await {
                            return classify(&e);
                        }
                        Counters::add(&c.sent, frame.len() as u64);
                        owed -= 1.0;
                    }
                    if let Err(e) = wr.flush().await {
                        return classify(&e);
                    }
                    // Behind schedule (the socket pushed back): do not burst to catch up.
                    let now = tokio::time::Instant::now();
                    if now > at + tick {
                        at = now;
                    }
                }
            }
        };
        let ended = tokio::select! {
            _ = stop.cancelled() => None,
            how = reader => Some(how),
            how = writer => Some(how),
        };
        c.open_now.fetch_sub(1, Ordering::Relaxed);
        match ended {
            Some(how) => c.closed(how),
            None => return,
        }
    }
}

/// The non-reader's connection: from [`ATTACKER`], TCP_NODELAY, and a 4 KiB receive buffer
/// (set before connecting, so the advertised window stays small): the echoes it never reads
/// back up into the server after a few KiB instead of after the kernel's autotuned megabytes.
async fn connect_small_rcvbuf(ctx: &AttackCtx) -> anyhow::Result<Box<dyn client::Stream>> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    sock.bind(SocketAddr::new(ATTACKER, 0))?;
    let tcp = sock.connect(ctx.target).await?;
    tcp.set_nodelay(true)?;
    match &ctx.tls {
        None => Ok(Box::new(tcp)),
        Some(cfg) => Ok(Box::new(
            tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(tlsutil::server_name(ctx.target), tcp)
                .await?,
        )),
    }
}

async fn non_reader(ctx: AttackCtx, c: Arc<Counters>, stop: CancellationToken) {
    let per_conn = (ctx.sizes.non_reader_fps / ctx.sizes.non_reader_conns.max(1) as u64).max(1);
    let tick = Duration::from_millis(2);
    let per_tick = per_conn as f64 * tick.as_secs_f64();
    let frame = crate::wire::frame(1);
    let mut reconnects = 0;
    while !stop.is_cancelled() && reconnects < 20 {
        reconnects += 1;
        let s = match tokio::time::timeout(Duration::from_secs(5), connect_small_rcvbuf(&ctx)).await
        {
            Ok(Ok(s)) => s,
            _ => {
                Counters::add(&c.connect_errors, 1);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        Counters::add(&c.opened, 1);
        Counters::add(&c.open_now, 1);
        // Never read: only the write half is driven (the read half is held, unread).
        let (_rd, mut wr) = tokio::io::split(s);
        let writer = async {
            let mut at = tokio::time::Instant::now();
            let mut owed = 0.0f64;
            loop {
                at += tick;
                tokio::time::sleep_until(at).await;
                owed += per_tick;
                while owed >= 1.0 {
                    // One frame per write, flushed: one segment (TLS: one record) each.
                    if let Err(e) = wr.write_all(&frame).await {
                        return classify(&e);
                    }
                    if let Err(e) = wr.flush().await {
                        return classify(&e);
                    }
                    Counters::add(&c.sent, frame.len() as u64);
                    owed -= 1.0;
                }
                let now = tokio::time::Instant::now();
                if now > at + tick {
                    at = now;
                }
            }
        };
        let ended = tokio::select! {
            _ = stop.cancelled() => None,
            how = writer => Some(how),
        };
        c.open_now.fetch_sub(1, Ordering::Relaxed);
        match ended {
            Some(how) => c.closed(how),
            None => return,
        }
    }
}

async fn flood(ctx: AttackCtx, next: Arc<AtomicU64>, c: Arc<Counters>, stop: CancellationToken) {
    let garbage: Vec<u8> = if ctx.transport == Transport::Tls {
        // 0x47 ('G') is no TLS content type: an HTTP request where a ClientHello belongs.
        b"GET / HTTP/1.1\r\nHost: ron-perf\r\n\r\n".to_vec()
    } else {
        let mut v = 0x7fff_fff0u32.to_be_bytes().to_vec();
        v.extend_from_slice(&[0u8; 28]);
        v
    };
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        if stop.is_cancelled() || k >= ctx.sizes.flood_max {
            return;
        }
        let src = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1 + (k % 250) as u8));
        let Some(mut s) = open(ctx.target, src, &c).await else {
            continue;
        };
        Counters::add(&c.open_now, 1);
        let ended = async {
            if let Err(e) = s.write_all(&garbage).await {
                return Some(classify(&e));
            }
            Counters::add(&c.sent, garbage.len() as u64);
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => return Some(Closed::Eof),
                    Ok(n) => Counters::add(&c.received, n as u64),
                    Err(e) => return Some(classify(&e)),
                }
            }
        };
        let how = tokio::select! {
            _ = stop.cancelled() => {
                c.open_now.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            r = tokio::time::timeout(Duration::from_secs(2), ended) => r.ok().flatten(),
        };
        c.open_now.fetch_sub(1, Ordering::Relaxed);
        if let Some(how) = how {
            c.closed(how);
        }
        // Not closed within 2 s: dropped here, counted only as opened.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_names_roundtrip() {
        let names: Vec<&str> = Attack::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(
            names,
            ["slowloris", "hot_peer", "non_reader", "handshake_flood"]
        );
        for a in Attack::ALL {
            assert_eq!(Attack::parse(a.name()).unwrap(), a);
        }
        assert!(Attack::parse("ddos").is_err());
    }

    #[test]
    fn good_fraction_math() {
        assert_eq!(good_fraction(1000.0, 900.0), Some(0.9));
        assert_eq!(good_fraction(1000.0, 0.0), Some(0.0));
        assert_eq!(good_fraction(0.0, 10.0), None);
        assert_eq!(good_fraction(f64::NAN, 10.0), None);
    }

    #[test]
    fn counter_delta_keeps_increases_only() {
        let b: BTreeMap<String, u64> = [("timeout".to_owned(), 3), ("tls".to_owned(), 5)].into();
        let a: BTreeMap<String, u64> = [
            ("timeout".to_owned(), 10),
            ("tls".to_owned(), 5),
            ("too_large".to_owned(), 2),
        ]
        .into();
        let d = counter_delta(&b, &a);
        assert_eq!(
            d,
            [("timeout".to_owned(), 7), ("too_large".to_owned(), 2)].into()
        );
    }

    #[test]
    fn good_sources_are_distinct_loopback_addresses() {
        let s = good_sources(64);
        assert_eq!(s.len(), 64);
        assert_eq!(s[0], IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)));
        assert!(s.iter().all(|a| a.is_loopback() && *a != ATTACKER));
        let mut d = s.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 64);
    }

    #[test]
    fn slowloris_bytes_never_complete_a_frame_quickly() {
        let ctx = AttackCtx {
            target: "127.0.0.1:1".parse().unwrap(),
            transport: Transport::Tcp,
            tls: None,
            peer_bps: 1,
            sizes: Sizes::default(),
        };
        let b = slow_bytes(&ctx);
        assert_eq!(&b[..4], &1000u32.to_be_bytes());
        assert_eq!(b.len(), 1004);
        let ss = tlsutil::SelfSigned::generate().unwrap();
        let tls = tlsutil::library_client_config(ss.cert_pem.as_bytes(), true).unwrap();
        let b = slow_bytes(&AttackCtx {
            tls: Some(tls),
            transport: Transport::Tls,
            ..ctx
        });
        // A TLS handshake record (content type 22) holding a ClientHello (type 1).
        assert_eq!(b[0], 22);
        assert_eq!(b[5], 1);
    }

    pub(crate) fn empty_report() -> crate::report::Report {
        crate::report::Report {
            commit: "abc".into(),
            date: "d".into(),
            machine: crate::report::Machine {
                cpus: 2,
                kernel: "k".into(),
            },
            limits: crate::report::Limits::default(),
            results: Vec::new(),
        }
    }

    pub(crate) fn sample_section() -> AbuseSection {
        AbuseSection {
            good_conns: 64,
            good_payload: 1024,
            window_s: 5.0,
            peer_bps_limit: 4 << 20,
            server_env: vec!["RON_TRANSPORT_READ_TIMEOUT=5s".into()],
            goal_good_fraction: GOAL,
            rows: vec![
                AbuseRow {
                    attack: "slowloris".into(),
                    engine: "tokio".into(),
                    transport: "tcp".into(),
                    good_fraction: Some(0.95),
                    good_fps_baseline: 1000.0,
                    good_fps_attack: 950.0,
                    rejected: Some([("timeout".to_owned(), 2000)].into()),
                    ..AbuseRow::default()
                },
                AbuseRow {
                    attack: "non_reader".into(),
                    engine: "uring".into(),
                    transport: "tls".into(),
                    good_fraction: Some(0.5),
                    good_fps_baseline: 1000.0,
                    good_fps_attack: 500.0,
                    rejected: None,
                    ..AbuseRow::default()
                },
            ],
        }
    }

    #[test]
    fn section_conforms_to_the_schema_and_renders() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        empty_report().save(&p).unwrap();
        let s = sample_section();
        save_into(&p, &s).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let schema: serde_json::Value = serde_json::from_str(crate::report::SCHEMA).unwrap();
        assert_eq!(
            crate::report::validate_schema(&schema, &v),
            Vec::<String>::new()
        );
        assert_eq!(v["abuse"]["rows"][0]["attack"], "slowloris");
        assert_eq!(v["abuse"]["rows"][0]["good_fraction"], 0.95);
        assert_eq!(v["abuse"]["rows"][0]["rejected"]["timeout"], 2000);
        // The report part still loads.
        crate::report::Report::load(&p).unwrap();
        // A row without its attack name is caught by the schema.
        let mut bad = v.clone();
        bad["abuse"]["rows"][0]
            .as_object_mut()
            .unwrap()
            .remove("attack");
        assert!(!crate::report::validate_schema(&schema, &bad).is_empty());
        let t = table(&s);
        assert!(t.contains("| slowloris | tokio | tcp | 0.950 |"), "{t}");
        assert!(t.contains("**0.500**"), "{t}");
        let svg = dir.path().join("a.svg");
        write_svg(&s, "abc", &svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("slowloris tcp") && text.contains("non_reader tls"));
    }
}
