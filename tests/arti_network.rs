//! The Arti backend end to end on a private Tor network on loopback (tests/util/tor): three
//! authorities, two middle relays and an exit (C tor, `TestingTorNetwork`), inside a fresh
//! network namespace, so nothing leaves the machine. Each test re-executes itself inside its
//! own namespace with its own network; every tor process dies with the test.
//!
//! - `arti_private_network_exit`: bootstrap and readiness (Degraded → Ready, one event each),
//!   dials through the exit to loopback servers, and the conformance cases that apply to the
//!   arti engine; then, with the authorities down, a fresh client goes Degraded → NotReady at
//!   `arti.bootstrap_timeout` and its dials fail fast.
//! - `arti_private_network_onion_amnesia`: amnesia clients (HOME pointed at an empty
//!   directory) serve an onion service and dial it from a second client, and dial through the
//!   exit; afterwards nothing was written under HOME or the working directory, and the tmpfs
//!   directories are gone.
//!
//! Conformance cases that do not apply to `backend = "arti"`: every TLS case (`echo_tls`,
//! `tls_wrong_ca`, `tls_handshake_timeout`, `pq_hybrid`, `max_conns_tls`,
//! `graceful_close_tls`) — Tor streams carry their own encryption and the arti backend has no
//! TLS layer; `egress_rate` — pacing to ±20 % is not measurable through Tor's own flow control
//! and cell scheduling on a shared 2-core host; raw-socket misbehaviour towards a listener
//! (`read_timeout` et al. on the accept side) — an onion service is reached through Tor only,
//! so those cases run here on the dialing side against misbehaving loopback servers instead.
#![cfg(feature = "arti")]

mod util;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use ron_transport::arti::{ArtiEngine, ArtiOptions, ArtiSetup, REASON_ARTI_BOOTSTRAP};
use ron_transport::config::Backend;
use ron_transport::engine::DialOptions;
use ron_transport::{
    Config, ConfigHandle, Conn, Engine, Listener, Readiness, ReadyState, RejectReason, TimeoutOp,
    TransportError, TransportHealth, TransportMetrics,
};

use util::tor::{run_in_netns, TorNet};

/// Exit policy and loopback servers: echo, oversized header, stalled frame, never reads.
const ECHO: u16 = 9990;
const OVERSIZED: u16 = 9991;
const STALL: u16 = 9992;
const SINK: u16 = 9993;

fn private_dir(p: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .expect("mkdir");
}

/// A private scratch directory; kept (and printed) with `RON_ARTI_KEEP=1` for post-mortems.
fn scratch() -> tempfile::TempDir {
    let keep = std::env::var_os("RON_ARTI_KEEP").is_some();
    let tmp = tempfile::Builder::new()
        .prefix("ron-arti-net")
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    if keep {
        println!("scratch directory kept: {}", tmp.path().display());
    }
    tmp
}

fn base_config() -> Config {
    let mut c = Config::default();
    c.backend = Backend::Arti;
    c.arti_bootstrap_timeout = Duration::from_secs(120);
    c.read_timeout = Duration::from_secs(20);
    c.write_timeout = Duration::from_secs(20);
    c.idle_timeout = Duration::from_secs(120);
    c
}

fn client(
    net: &TorNet,
    dir: &Path,
    cfg: ConfigHandle,
    metrics: Arc<TransportMetrics>,
    readiness: Readiness,
) -> ArtiEngine {
    private_dir(dir);
    ArtiSetup::from_handle(cfg, metrics)
        .expect("setup")
        .with_readiness(readiness)
        .with_options(ArtiOptions {
            state_dir: Some(dir.join("state")),
            cache_dir: Some(dir.join("cache")),
            tor_config_toml: Some(net.arti_toml()),
            onion_service_toml: Some(net.onion_service_toml()),
            ..ArtiOptions::default()
        })
        .build()
        .expect("arti engine")
}

/// Raw loopback servers the exit connects to.
async fn start_servers() {
    let echo = tokio::net::TcpListener::bind(("127.0.0.1", ECHO))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let oversized = tokio::net::TcpListener::bind(("127.0.0.1", OVERSIZED))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = oversized.accept().await {
            tokio::spawn(async move {
                // Announces 2 MiB, sends nothing more.
                let _ = s.write_all(&(2u32 * 1024 * 1024).to_be_bytes()).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let stall = tokio::net::TcpListener::bind(("127.0.0.1", STALL))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = stall.accept().await {
            tokio::spawn(async move {
                let mut f = 100u32.to_be_bytes().to_vec();
                f.extend_from_slice(&[7u8; 10]);
                let _ = s.write_all(&f).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let sink = tokio::net::TcpListener::bind(("127.0.0.1", SINK))
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = sink.accept().await {
            held.push(s); // never read
        }
    });
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn opts(deadline: Duration) -> DialOptions {
    DialOptions {
        deadline,
        ..DialOptions::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Waits for Ready; returns how long it took from `since`. Panics with the network's logs.
async fn wait_ready(
    engine: &ArtiEngine,
    net: &TorNet,
    since: Instant,
    limit: Duration,
) -> Duration {
    loop {
        if engine.readiness() == ReadyState::Ready {
            return since.elapsed();
        }
        if since.elapsed() > limit {
            let status = engine.status().await;
            panic!(
                "arti not ready after {limit:?}: {status:?}\n{}",
                net.log_tails(8)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first dial through the exit. Right after bootstrap the exit may still refuse streams
/// for a few seconds (until the authorities' first full-interval consensus lists it with its
/// final flags); retry for up to 120 s (8 voting intervals: in a full workspace run on 2 busy
/// cores the exit was still refused after 60 s, in one run on 2026-12-06 and one the session
/// before). Returns the connection and the number of attempts.
async fn first_exit_dial(
    engine: &ArtiEngine,
    net: &TorNet,
) -> (ron_transport::arti::ArtiConn, u32) {
    let t = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match engine.dial(addr(ECHO), opts(Duration::from_secs(60))).await {
            Ok(c) => return (c, attempt),
            Err(e) if t.elapsed() < Duration::from_secs(120) => {
                if attempt == 3 {
                    println!("{}", net.log_tails(6));
                }
                println!(
                    "first exit dial attempt {attempt} failed after {:?}: {e}",
                    t.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("dial through the exit: {e:?}\n{}", net.log_tails(15)),
        }
    }
}

async fn echo_roundtrip<C: Conn>(conn: &mut C, payload: Bytes) -> Duration {
    let t = Instant::now();
    conn.send(payload.clone()).await.expect("send");
    let got = util::within("echo", Duration::from_secs(60), conn.recv())
        .await
        .expect("recv")
        .expect("frame");
    assert_eq!(got, payload);
    t.elapsed()
}

/// One private Tor network at a time: each case starts six tor processes plus Arti, and two at
/// once on a 2-core machine left the exit dial without a circuit for its whole 60 s window
/// (`arti_private_network_onion_amnesia`, once in three workspace runs on 2026-12-06).
static ONE_NETWORK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_network_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_NETWORK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn arti_private_network_exit() {
    if !util::tor::in_netns() {
        let _one = one_network_at_a_time();
        run_in_netns("arti_private_network_exit", Duration::from_secs(240));
        return;
    }
    util::run_multi_thread(exit_case());
}

async fn exit_case() {
    let tmp = scratch();
    private_dir(tmp.path());
    let t_net = Instant::now();
    let mut net = TorNet::start(&tmp.path().join("net"), ECHO).expect("tor network");
    println!("tor network: 6 nodes started in {:?}", t_net.elapsed());
    start_servers().await;
    let with_exit = net
        .wait_for_exit(Duration::from_secs(90))
        .expect("consensus");
    println!("FIGURE private network: first consensus listing the exit {with_exit:?} after the nodes started");

    let cfg = ConfigHandle::new(base_config().validate().unwrap());
    let metrics = TransportMetrics::new();
    let readiness = Readiness::new("arti-client", ReadyState::NotReady { reason: "starting" });
    let mut events = readiness.subscribe();
    events.mark_unchanged();
    let t_boot = Instant::now();
    let engine = client(
        &net,
        &tmp.path().join("client"),
        cfg.clone(),
        metrics.clone(),
        readiness,
    );
    assert_eq!(engine.readiness().reason(), Some(REASON_ARTI_BOOTSTRAP));
    // Watch Arti's own status next to ours: Ready follows within 1 s (G-6).
    let mut arti_ready_at = None;
    loop {
        let st = engine.status().await;
        if st.ready_for_traffic && arti_ready_at.is_none() {
            arti_ready_at = Some(Instant::now());
        }
        if engine.readiness() == ReadyState::Ready {
            break;
        }
        if let Some(at) = arti_ready_at {
            assert!(
                at.elapsed() < Duration::from_secs(1),
                "Ready within 1 s of Arti"
            );
        }
        if t_boot.elapsed() > Duration::from_secs(150) {
            panic!("no bootstrap: {st:?}\n{}", net.log_tails(10));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let boot = t_boot.elapsed();
    println!(
        "FIGURE bootstrap (engine built -> Ready, on a network up {:?}): {boot:?}",
        t_boot - t_net
    );
    let mut seen = Vec::new();
    while events.has_changed().unwrap_or(false) {
        seen.push(events.borrow_and_update().clone());
    }
    assert_eq!(seen.last(), Some(&ReadyState::Ready), "{seen:?}");

    // --- echo through the exit (conformance: echo, metrics_smoke) ---
    let t = Instant::now();
    let (mut conn, attempt) = first_exit_dial(&engine, &net).await;
    println!(
        "FIGURE first dial through the exit: {:?} ({attempt} attempts)",
        t.elapsed()
    );
    assert_eq!(conn.info().backend, Backend::Arti);
    for (len, seed) in [
        (0usize, 0u8),
        (1, 1),
        (100, 2),
        (4096, 3),
        (65536, 4),
        (1024 * 1024, 5),
    ] {
        let d = echo_roundtrip(&mut conn, util::payload(len, seed)).await;
        println!("echo {len} B: {d:?}");
    }
    // Pipelined small frames keep their order.
    for i in 0..50u8 {
        conn.send(util::payload(64, i)).await.unwrap();
    }
    for i in 0..50u8 {
        assert_eq!(conn.recv().await.unwrap().unwrap(), util::payload(64, i));
    }
    let mut rtts: Vec<Duration> = Vec::new();
    for i in 0..200u32 {
        rtts.push(echo_roundtrip(&mut conn, util::payload(64, i as u8)).await);
    }
    rtts.sort();
    println!(
        "FIGURE 64 B frame round trip through the exit: p50 {:?} p99 {:?} (n=200)",
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99)
    );
    let s = util::snap(&metrics, Backend::Arti);
    assert!(
        s.dials_ok >= 1 && s.bytes_out > 1024 * 1024 && s.bytes_in > 1024 * 1024,
        "{s:?}"
    );
    assert_eq!(s.inflight, 1);
    assert!(
        s.hs_off >= 1,
        "dial latency observed in handshake_latency_seconds"
    );
    let rendered = metrics.render();
    assert!(
        rendered.contains("backend=\"arti\""),
        "metrics labelled arti"
    );

    // Dial latency: fresh streams on the existing circuits.
    let mut dials = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let mut c = engine
            .dial(addr(ECHO), opts(Duration::from_secs(60)))
            .await
            .expect("dial");
        dials.push(t.elapsed());
        echo_roundtrip(&mut c, Bytes::from_static(b"x")).await;
        c.close().await.expect("close");
    }
    dials.sort();
    println!(
        "FIGURE dial latency through the exit: p50 {:?} p99 {:?} (n=30)",
        percentile(&dials, 0.5),
        percentile(&dials, 0.99)
    );

    // --- graceful close: everything queued arrives, then EOF ---
    {
        let mut c = engine
            .dial(addr(ECHO), opts(Duration::from_secs(60)))
            .await
            .unwrap();
        for i in 0..20u8 {
            c.send(util::payload(1000, i)).await.unwrap();
        }
        for i in 0..20u8 {
            assert_eq!(c.recv().await.unwrap().unwrap(), util::payload(1000, i));
        }
        c.close().await.expect("graceful close");
    }

    // --- frame ceiling both ways (conformance: frame_ceiling) ---
    let too_large = metrics.rejected_count(RejectReason::TooLarge);
    let err = conn
        .send(Bytes::from(vec![0u8; 1024 * 1024 + 1]))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::TooLarge { .. }), "{err:?}");
    let mut big = engine
        .dial(addr(OVERSIZED), opts(Duration::from_secs(60)))
        .await
        .unwrap();
    let err = util::within("oversized header", Duration::from_secs(30), big.recv())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::TooLarge { len, .. } if len == 2 * 1024 * 1024),
        "{err:?}"
    );
    assert!(matches!(big.recv().await, Err(TransportError::IoClosed)));
    assert_eq!(
        metrics.rejected_count(RejectReason::TooLarge),
        too_large + 2
    );

    // --- read timeout on a stalled frame (conformance: read_timeout) ---
    let mut c = base_config();
    c.read_timeout = Duration::from_secs(2);
    cfg.reload(c).unwrap();
    let timeouts = metrics.rejected_count(RejectReason::Timeout);
    let mut stalled = engine
        .dial(addr(STALL), opts(Duration::from_secs(60)))
        .await
        .unwrap();
    let t = Instant::now();
    let err = util::within("read timeout", Duration::from_secs(30), stalled.recv())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Timeout {
                op: TimeoutOp::Read
            }
        ),
        "{err:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(metrics.rejected_count(RejectReason::Timeout), timeouts + 1);

    // --- idle timeout (conformance: idle_timeout) ---
    let mut c = base_config();
    c.idle_timeout = Duration::from_secs(2);
    cfg.reload(c).unwrap();
    let mut idle = engine
        .dial(addr(ECHO), opts(Duration::from_secs(60)))
        .await
        .unwrap();
    let err = util::within("idle timeout", Duration::from_secs(30), idle.recv())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Timeout {
                op: TimeoutOp::Idle
            }
        ),
        "{err:?}"
    );
    cfg.reload(base_config()).unwrap();

    // --- dial deadline (conformance: dial_timeout) ---
    let timeouts = metrics.rejected_count(RejectReason::Timeout);
    let err = engine
        .dial(addr(ECHO), opts(Duration::from_micros(1)))
        .await
        .map(drop)
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Timeout {
                op: TimeoutOp::Dial
            }
        ),
        "{err:?}"
    );
    assert_eq!(metrics.rejected_count(RejectReason::Timeout), timeouts + 1);

    // --- caps (conformance: max_conns, per_peer_cap) ---
    drop(stalled);
    drop(big);
    drop(idle);
    util::wait_until(
        "only the main connection left",
        Duration::from_secs(10),
        || engine.open_conns() == 1,
    )
    .await;
    let mut c = base_config();
    c.max_conns = 3;
    cfg.reload(c).unwrap();
    let peer_limit = metrics.rejected_count(RejectReason::PeerLimit);
    let second = engine
        .dial(addr(ECHO), opts(Duration::from_secs(60)))
        .await
        .unwrap();
    let third = engine
        .dial(addr(ECHO), opts(Duration::from_secs(60)))
        .await
        .unwrap();
    let err = engine
        .dial(addr(ECHO), opts(Duration::from_secs(60)))
        .await
        .map(drop)
        .unwrap_err();
    assert!(matches!(err, TransportError::PeerLimit), "{err:?}");
    drop((second, third));
    let mut c = base_config();
    c.per_peer_max_conns = 1;
    cfg.reload(c).unwrap();
    util::wait_until("caps released", Duration::from_secs(10), || {
        engine.open_conns() == 1
    })
    .await;
    let err = engine
        .dial(addr(SINK), opts(Duration::from_secs(60)))
        .await
        .map(drop)
        .unwrap_err();
    assert!(
        matches!(err, TransportError::PeerLimit),
        "per-peer cap: {err:?}"
    );
    assert_eq!(
        metrics.rejected_count(RejectReason::PeerLimit),
        peer_limit + 2
    );

    // --- a full inbox is Busy, then no progress is a write timeout (busy_when_inbox_full,
    //     write_timeout) ---
    let mut c = base_config();
    c.write_timeout = Duration::from_secs(3);
    cfg.reload(c).unwrap();
    let mut sink = engine
        .dial(addr(SINK), opts(Duration::from_secs(60)))
        .await
        .unwrap();
    let frame = Bytes::from(vec![1u8; 64 * 1024]);
    let busy = metrics.rejected_count(RejectReason::Busy);
    let mut queued = 0;
    let err = loop {
        match sink.try_send(frame.clone()) {
            Ok(()) => queued += 1,
            Err(e) => break e,
        }
        if queued % 64 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(queued < 5000, "inbox never filled");
    };
    assert!(
        matches!(err, TransportError::Busy),
        "{err:?} after {queued}"
    );
    assert!(queued >= 256, "{queued}");
    assert_eq!(metrics.rejected_count(RejectReason::Busy), busy + 1);
    assert!(util::inbox_dropped(&metrics) >= 1);
    let err = util::within("write timeout", Duration::from_secs(30), sink.recv())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Timeout {
                op: TimeoutOp::Write
            }
        ),
        "{err:?}"
    );
    cfg.reload(base_config()).unwrap();
    drop(sink);

    // --- cancel stops both side-runtime tasks promptly (cancel_quiesces) ---
    util::wait_until("quiet", Duration::from_secs(10), || {
        engine.open_conns() == 1
    })
    .await;
    let tasks = engine.live_tasks();
    let c = engine
        .dial(addr(ECHO), opts(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(engine.live_tasks(), tasks + 2, "a reader and a writer");
    let t = Instant::now();
    c.cancel();
    util::wait_until("tasks stop", Duration::from_secs(2), || {
        engine.live_tasks() == tasks
    })
    .await;
    println!("cancel -> tasks stopped in {:?}", t.elapsed());
    assert!(
        t.elapsed() <= Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    drop(c);

    // --- shutdown drains (shutdown_drains_and_aborts) ---
    conn.send(Bytes::from_static(b"last")).await.unwrap();
    let report = engine.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.aborted, 0, "{report:?}");
    assert_eq!(
        engine.readiness(),
        ReadyState::NotReady { reason: "shutdown" }
    );
    assert!(matches!(
        engine
            .dial(addr(ECHO), opts(Duration::from_secs(5)))
            .await
            .map(drop),
        Err(TransportError::Cancelled)
    ));
    drop(conn);

    // --- authorities down: a fresh client cannot bootstrap ---
    net.stop_authorities();
    let mut c = base_config();
    c.arti_bootstrap_timeout = Duration::from_secs(3);
    let metrics2 = TransportMetrics::new();
    let readiness = Readiness::new("arti-cold", ReadyState::NotReady { reason: "starting" });
    let cold = client(
        &net,
        &tmp.path().join("cold"),
        ConfigHandle::new(c.validate().unwrap()),
        metrics2.clone(),
        readiness,
    );
    assert_eq!(
        cold.readiness(),
        ReadyState::Degraded {
            reason: REASON_ARTI_BOOTSTRAP
        }
    );
    let t = Instant::now();
    assert!(matches!(
        cold.dial(addr(ECHO), opts(Duration::from_secs(5)))
            .await
            .map(drop),
        Err(TransportError::ArtiBootstrap)
    ));
    assert!(t.elapsed() < Duration::from_millis(200));
    util::wait_until(
        "NotReady at the bootstrap timeout",
        Duration::from_secs(10),
        || {
            cold.readiness()
                == ReadyState::NotReady {
                    reason: REASON_ARTI_BOOTSTRAP,
                }
        },
    )
    .await;
    assert_eq!(metrics2.rejected_count(RejectReason::ArtiBootstrap), 1);
    println!("authorities down: {:?}", cold.status().await);
    cold.shutdown(Duration::from_secs(2)).await;
    net.stop();
}

/// Every regular file under `dir` (recursively), for the amnesia audit.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => out.push(p),
                Err(_) => {}
            }
        }
    }
    out
}

#[test]
fn arti_private_network_onion_amnesia() {
    if !util::tor::in_netns() {
        let _one = one_network_at_a_time();
        run_in_netns(
            "arti_private_network_onion_amnesia",
            Duration::from_secs(280),
        );
        return;
    }
    util::run_multi_thread(onion_case());
}

async fn onion_case() {
    let tmp = scratch();
    private_dir(tmp.path());
    // Arti must not write under HOME (or anywhere but its tmpfs directory): point HOME at an
    // empty directory for the whole run. This process runs this one test only.
    let home = tmp.path().join("home");
    private_dir(&home);
    std::env::set_var("HOME", &home);
    for v in [
        "XDG_CACHE_HOME",
        "XDG_DATA_HOME",
        "XDG_CONFIG_HOME",
        "XDG_STATE_HOME",
        "ARTI_CACHE",
        "ARTI_LOCAL_DATA",
        "ARTI_CONFIG",
    ] {
        std::env::remove_var(v);
    }
    let cwd = std::env::current_dir().unwrap();
    let cwd_before: Vec<_> = std::fs::read_dir(&cwd)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let shm_before: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();

    let t_net = Instant::now();
    let mut net = TorNet::start(&tmp.path().join("net"), ECHO).expect("tor network");
    start_servers().await;

    let mut c = base_config();
    c.amnesia = true;
    let cfg = c.validate().unwrap();
    let mk = |name: &'static str| {
        ArtiSetup::new(cfg.clone(), TransportMetrics::new())
            .unwrap()
            .with_readiness(Readiness::new(
                name,
                ReadyState::NotReady { reason: "starting" },
            ))
            .with_options(ArtiOptions {
                tor_config_toml: Some(net.arti_toml()),
                onion_service_toml: Some(net.onion_service_toml()),
                nickname: name.to_owned(),
                ..ArtiOptions::default()
            })
            .build()
            .expect("amnesia engine")
    };
    let service = mk("service");
    let client = mk("client");
    let dirs = [
        service.amnesia_dir().unwrap(),
        client.amnesia_dir().unwrap(),
    ];
    for d in &dirs {
        assert!(d.exists());
    }
    // Serve from the start: the service publishes once its client has bootstrapped.
    let t_listen = Instant::now();
    let mut listener = service
        .listen("0.0.0.0:80".parse::<std::net::SocketAddr>().unwrap())
        .await
        .expect("onion service");
    let target = listener.onion_target();
    println!(
        "onion service {target} launched in {:?}",
        t_listen.elapsed()
    );
    let server = tokio::spawn(async move {
        // One echo handler per accepted connection.
        let mut n = 0;
        while let Ok(mut conn) = listener.accept().await {
            n += 1;
            tokio::spawn(async move {
                while let Ok(Some(f)) = conn.recv().await {
                    if conn.send(f).await.is_err() {
                        break;
                    }
                }
            });
        }
        n
    });

    let boot_c = wait_ready(&client, &net, t_net, Duration::from_secs(150)).await;
    let boot_s = wait_ready(&service, &net, t_net, Duration::from_secs(150)).await;
    println!(
        "FIGURE bootstrap from network start (amnesia): client {boot_c:?}, service {boot_s:?}"
    );

    // Through the exit as well, under amnesia.
    let (mut exit_conn, _) = first_exit_dial(&client, &net).await;
    echo_roundtrip(&mut exit_conn, Bytes::from_static(b"via exit")).await;

    // The onion service: its descriptor must be published before the first dial succeeds.
    let t_onion = Instant::now();
    let mut attempts = 0;
    let mut conn = loop {
        attempts += 1;
        match client
            .dial_host(&target, opts(Duration::from_secs(60)))
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                if t_onion.elapsed() > Duration::from_secs(180) {
                    panic!(
                        "onion dial kept failing ({attempts} attempts): {e}\n{}",
                        net.log_tails(6)
                    );
                }
                println!(
                    "onion dial attempt {attempts} failed after {:?}: {e}",
                    t_onion.elapsed()
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    println!(
        "FIGURE first onion dial succeeded {:?} after the client was ready ({attempts} attempts), {:?} after network start",
        t_onion.elapsed(),
        t_net.elapsed()
    );
    assert_eq!(conn.info().backend, Backend::Arti);
    let mut rtts = Vec::new();
    for i in 0..50u8 {
        rtts.push(echo_roundtrip(&mut conn, util::payload(64, i)).await);
    }
    echo_roundtrip(&mut conn, util::payload(256 * 1024, 9)).await;
    rtts.sort();
    println!(
        "FIGURE onion 64 B frame round trip: p50 {:?} p99 {:?} (n=50)",
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99)
    );
    let t = Instant::now();
    let mut second = client
        .dial_host(&target, opts(Duration::from_secs(60)))
        .await
        .expect("second onion dial");
    println!(
        "FIGURE second onion dial (descriptor cached): {:?}",
        t.elapsed()
    );
    echo_roundtrip(&mut second, Bytes::from_static(b"again")).await;
    assert_eq!(
        service
            .shared()
            .metrics
            .backend(Backend::Arti)
            .accepts
            .get(),
        2,
        "accepts counted on the service"
    );
    drop((conn, second, exit_conn));

    client.shutdown(Duration::from_secs(5)).await;
    service.shutdown(Duration::from_secs(5)).await;
    let served = util::within("server loop ends", Duration::from_secs(5), server)
        .await
        .unwrap();
    assert_eq!(served, 2);
    net.stop();

    // --- the amnesia audit ---
    for d in &dirs {
        assert!(!d.exists(), "amnesia directory {} removed", d.display());
    }
    let home_files = files_under(&home);
    assert!(home_files.is_empty(), "written under HOME: {home_files:?}");
    let home_entries: Vec<_> = std::fs::read_dir(&home).unwrap().flatten().collect();
    assert!(
        home_entries.is_empty(),
        "created under HOME: {home_entries:?}"
    );
    let cwd_after: Vec<_> = std::fs::read_dir(&cwd)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let new_in_cwd: Vec<_> = cwd_after
        .iter()
        .filter(|p| !cwd_before.contains(p))
        .collect();
    assert!(
        new_in_cwd.is_empty(),
        "created in the working directory: {new_in_cwd:?}"
    );
    let shm_after: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let left_in_shm: Vec<_> = shm_after
        .iter()
        .filter(|p| !shm_before.contains(p))
        .filter(|p| p.to_string_lossy().contains("ron-arti"))
        .collect();
    assert!(left_in_shm.is_empty(), "left on tmpfs: {left_in_shm:?}");
    println!(
        "FIGURE amnesia audit: 2 clients (service + client), HOME {} untouched, working directory unchanged, tmpfs directories removed",
        home.display()
    );
}
