//! Faults under load (spec/IDB G-10, spec/CONCURRENCY §10, spec/SECURITY §7), on both engines
//! (tokio and uring), TCP and TLS: 32 clients echo content-checked, pipelined frames through a
//! [`FaultRelay`] (seeded resets, stalls, refused connects and half-closes) to an echo server
//! built on the same engine, then the test checks that
//!
//! - every error a client or the server saw has a `kind()` from the allowed part of the canon,
//!   and `rejected_total{reason}` moved only under canon reasons (and only `timeout` / `tls`);
//! - no frame arrived corrupted or out of order (each payload encodes client, session and
//!   sequence number and is compared whole);
//! - readiness stayed `Ready` during the run and is `NotReady{shutdown}` after
//!   `Engine::shutdown`;
//! - after the run, the process's open fds, the engines' live tasks and open connections,
//!   `conn_inflight` and the server handlers are back at their baselines (polled with a bounded
//!   wait: not a timing assertion);
//! - `Conn::cancel` quiesces: cancelled connections end their tasks. Its latency is printed,
//!   never asserted (`ron-perf faults` reports p50/p99 against the spec's 100 ms).
//!
//! The tests of this file share one lock: they count the process's fds.

mod util;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use ron_shard::RuntimeConfig;
use ron_transport::config::Backend;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::tokio::TokioEngine;
use ron_transport::engine::uring::UringEngine;
use ron_transport::engine::DialOptions;
use ron_transport::testing::{FaultPlan, FaultRelay};
use ron_transport::{
    Config, Conn, Engine, FrameSender, Listener, PqMode, ReadyState, RejectReason, TransportError,
    TransportHealth, TransportMetrics, ValidConfig,
};

use util::tls::TlsFixture;

/// Concurrent clients.
const CLIENTS: usize = 32;
/// Connections each client opens, one after another.
const SESSIONS: usize = 3;
/// Frames each session tries to echo.
const FRAMES: u32 = 150;
/// Upper bound of every "it happens at all" wait.
const SLACK: Duration = Duration::from_secs(20);

/// `kind()`s a client may see under these faults: the connection was reset or closed under it
/// (`io`, `io_closed`), a stall outlasted a deadline (`timeout`), a TLS handshake or record
/// was cut (`tls`), or the test cancelled it (`cancelled`).
const CLIENT_KINDS: [&str; 5] = ["io", "io_closed", "timeout", "tls", "cancelled"];
/// `kind()`s the server's handlers may see (the server never cancels).
const SERVER_KINDS: [&str; 4] = ["io", "io_closed", "timeout", "tls"];
/// Reject reasons that may move under these faults (no caps, rates or oversize frames here).
const REJECTS: [&str; 2] = ["timeout", "tls"];

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `fut` on a two-worker runtime, one test of this file at a time (they count fds).
fn serial(fut: impl std::future::Future<Output = ()>) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    util::run_multi_thread(fut);
}

/// How a test builds an engine and reads its live work.
trait Eut: 'static {
    type E: Engine;
    fn build(cfg: ValidConfig, tls: Option<TlsFixture>, m: Arc<TransportMetrics>) -> Self::E;
    /// Per-connection tasks plus open connections the engine still holds.
    fn live(e: &Self::E) -> usize;
}

struct Tokio;

impl Eut for Tokio {
    type E = TokioEngine;
    fn build(cfg: ValidConfig, tls: Option<TlsFixture>, m: Arc<TransportMetrics>) -> TokioEngine {
        let mut s = EngineSetup::new(cfg, m).expect("setup");
        if let Some(t) = tls {
            s = s.with_tls_server(t.server).with_tls_client(t.client);
        }
        s.build_tokio().expect("tokio engine")
    }
    fn live(e: &TokioEngine) -> usize {
        e.live_tasks() + e.open_conns()
    }
}

struct Uring;

impl Eut for Uring {
    type E = UringEngine;
    fn build(cfg: ValidConfig, tls: Option<TlsFixture>, m: Arc<TransportMetrics>) -> UringEngine {
        let mut s = EngineSetup::new(cfg, m).expect("setup");
        if let Some(t) = tls {
            s = s.with_tls_server(t.server).with_tls_client(t.client);
        }
        s.build_uring_with(RuntimeConfig {
            shards: 2,
            pin: false,
            buf_entries: 64,
            ..RuntimeConfig::default()
        })
        .expect("uring engine (io_uring usable here)")
    }
    fn live(e: &UringEngine) -> usize {
        e.shard_stats().iter().map(|s| s.open as usize).sum()
    }
}

#[test]
fn tokio_tcp_under_faults() {
    serial(under_faults::<Tokio>(Backend::Tcp, 0x70c1));
}

#[test]
fn tokio_tls_under_faults() {
    serial(under_faults::<Tokio>(Backend::Tls, 0x70c2));
}

#[test]
fn uring_tcp_under_faults() {
    serial(under_faults::<Uring>(Backend::Tcp, 0x0a1));
}

#[test]
fn uring_tls_under_faults() {
    serial(under_faults::<Uring>(Backend::Tls, 0x0a2));
}

// ---------------------------------------------------------------- the run

/// Error kinds seen, by kind.
#[derive(Clone, Default)]
struct Kinds(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl Kinds {
    fn add(&self, e: &TransportError) {
        *self.0.lock().unwrap().entry(e.kind()).or_default() += 1;
    }
    fn get(&self, kind: &str) -> u64 {
        self.0.lock().unwrap().get(kind).copied().unwrap_or(0)
    }
    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Default)]
struct Tally {
    sessions_ok: AtomicU64,
    sessions_failed: AtomicU64,
    dials_failed: AtomicU64,
    frames_ok: AtomicU64,
    corrupt: AtomicU64,
    cancels: AtomicU64,
}

fn config(backend: Backend) -> ValidConfig {
    let mut c = Config::default();
    c.backend = backend;
    // A stall longer than this in the middle of a frame ends the connection with
    // `Timeout{Read}` (the mixed plan stalls 50–400 ms).
    c.read_timeout = Duration::from_millis(250);
    c.write_timeout = Duration::from_secs(2);
    c.idle_timeout = Duration::from_secs(10);
    c.validate().expect("valid config")
}

/// Frame `seq` of (`client`, `session`): a header naming it, then bytes derived from it.
fn frame(client: usize, session: usize, seq: u32) -> Bytes {
    let len = 16 + (seq as usize * 37 + client * 11 + session * 5) % 2000;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(client as u32).to_be_bytes());
    v.extend_from_slice(&(session as u32).to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&(len as u32).to_be_bytes());
    let salt = (client as u32) ^ (session as u32).rotate_left(8) ^ seq.rotate_left(16);
    v.extend((16..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt) as u8));
    v.into()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// `rejected_total` series from the text rendering: (reason, value).
fn rejected_series(m: &TransportMetrics) -> Vec<(String, f64)> {
    m.render()
        .lines()
        .filter(|l| l.starts_with("rejected_total{"))
        .map(|l| {
            let reason = l
                .split("reason=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned();
            let v = l.rsplit(' ').next().unwrap().parse().unwrap();
            (reason, v)
        })
        .collect()
}

fn check_rejects(who: &str, m: &TransportMetrics) {
    let canon: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
    let series = rejected_series(m);
    assert!(!series.is_empty(), "{who}: rejected_total rendered");
    for (reason, v) in series {
        assert!(canon.contains(&reason.as_str()), "{who}: reason {reason:?}");
        if v > 0.0 {
            assert!(
                REJECTS.contains(&reason.as_str()),
                "{who}: rejected_total{{reason={reason:?}}} = {v} under faults"
            );
        }
    }
}

async fn under_faults<T: Eut>(backend: Backend, seed: u64) {
    let tls = (backend == Backend::Tls).then(|| TlsFixture::new(PqMode::Off));
    let sm = TransportMetrics::new();
    let cm = TransportMetrics::new();
    let server = Arc::new(T::build(config(backend), tls.clone(), sm.clone()));
    let client = Arc::new(T::build(config(backend), tls, cm.clone()));
    let listener = server.listen(util::loopback()).await.expect("listen");
    let addr = listener.local_addr();

    // The echo server: every handler error is recorded by kind.
    let server_kinds = Kinds::default();
    let handlers = Arc::new(AtomicUsize::new(0));
    let serving = {
        let kinds = server_kinds.clone();
        let handlers = handlers.clone();
        let serve = server.serve(listener, move |mut conn| {
            let kinds = kinds.clone();
            let handlers = handlers.clone();
            handlers.fetch_add(1, Ordering::SeqCst);
            async move {
                loop {
                    match conn.recv().await {
                        Ok(Some(f)) => {
                            if let Err(e) = conn.send(f).await {
                                kinds.add(&e);
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            kinds.add(&e);
                            break;
                        }
                    }
                }
                drop(conn);
                handlers.fetch_sub(1, Ordering::SeqCst);
            }
        });
        tokio::spawn(serve)
    };
    tokio::time::sleep(Duration::from_millis(50)).await;

    let fds_before = open_fds();
    let relay = FaultRelay::start(addr, FaultPlan::mixed(), seed)
        .await
        .expect("relay");
    let target = relay.local_addr();

    // Readiness is sampled all through the load.
    let stop_watch = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let (s, c, stop) = (server.clone(), client.clone(), stop_watch.clone());
        tokio::spawn(async move {
            let mut samples = 0u64;
            while !stop.load(Ordering::SeqCst) {
                assert_eq!(s.readiness(), ReadyState::Ready, "server during the load");
                assert_eq!(c.readiness(), ReadyState::Ready, "client during the load");
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        })
    };

    let client_kinds = Kinds::default();
    let tally = Arc::new(Tally::default());
    let cancel_lat = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (engine, kinds, tally, lat) = (
            client.clone(),
            client_kinds.clone(),
            tally.clone(),
            cancel_lat.clone(),
        );
        clients.push(tokio::spawn(async move {
            for s in 0..SESSIONS {
                session::<T>(&engine, target, c, s, &kinds, &tally, &lat).await;
            }
        }));
    }
    for h in clients {
        util::within("client sessions", SLACK * 3, h)
            .await
            .expect("client task");
    }
    let load_took = started.elapsed();
    stop_watch.store(true, Ordering::SeqCst);
    let samples = watch.await.expect("readiness stayed Ready during the load");

    relay.stop().await;
    let counts = relay.counts();
    drop(relay);

    // Cancellation of live, pass-through connections quiesces.
    let quiesce = cancel_live::<T>(&client, addr, &cm, backend).await;

    // Back to the baselines.
    let settle = Instant::now();
    util::wait_until("engines back to no live work", SLACK, || {
        T::live(&server) == 0
            && T::live(&client) == 0
            && handlers.load(Ordering::SeqCst) == 0
            && util::snap(&sm, backend).inflight == 0
            && util::snap(&cm, backend).inflight == 0
    })
    .await;
    util::wait_until("fds back to the baseline", SLACK, || {
        open_fds() <= fds_before
    })
    .await;
    // The writer-inbox gauge is netted per shard batch on uring: it returns to 0 once the
    // last batch of the closed connections is accounted.
    util::wait_until("writer-inbox gauges back to 0", SLACK, || {
        util::inbox_depth(&sm) == 0 && util::inbox_depth(&cm) == 0
    })
    .await;
    let settled = settle.elapsed();

    let ck = client_kinds.snapshot();
    let sk = server_kinds.snapshot();
    let t = &*tally;
    let lat = cancel_lat.lock().unwrap().clone();
    println!(
        "{:?}/{backend:?} seed {seed:#x}: {} sessions ok, {} failed, {} dials failed, {} frames \
         echoed in {load_took:?}; relay {counts:?}; client errors {ck:?}; server errors {sk:?}; \
         {} readiness samples; {} in-load cancels (max {:?}); quiesce of live conns {quiesce:?}; \
         settled in {settled:?}; fds {} (baseline {fds_before})",
        server.kind(),
        t.sessions_ok.load(Ordering::SeqCst),
        t.sessions_failed.load(Ordering::SeqCst),
        t.dials_failed.load(Ordering::SeqCst),
        t.frames_ok.load(Ordering::SeqCst),
        samples,
        t.cancels.load(Ordering::SeqCst),
        lat.iter().max(),
        open_fds(),
    );

    // Content: nothing corrupted or out of order.
    assert_eq!(
        t.corrupt.load(Ordering::SeqCst),
        0,
        "corrupt or reordered frames"
    );
    assert!(t.frames_ok.load(Ordering::SeqCst) > 0);
    assert!(
        t.sessions_ok.load(Ordering::SeqCst) > 0,
        "some sessions pass"
    );
    assert!(t.sessions_failed.load(Ordering::SeqCst) > 0, "faults bite");
    // Stable reasons only.
    for k in ck.keys() {
        assert!(CLIENT_KINDS.contains(k), "client saw kind {k:?}");
    }
    for k in sk.keys() {
        assert!(SERVER_KINDS.contains(k), "server saw kind {k:?}");
    }
    check_rejects("server", &sm);
    check_rejects("client", &cm);
    // A handler's timeout or TLS error is a counted reject (handshake failures before the
    // handler add more).
    assert!(util::rejected(&sm, RejectReason::Timeout) >= server_kinds.get("timeout"));
    assert!(util::rejected(&sm, RejectReason::Tls) >= server_kinds.get("tls"));
    // The relay did what it was asked: one planned fault per connection, every kind planned.
    assert_eq!(counts.accepted, (CLIENTS * SESSIONS) as u64);
    assert_eq!(counts.planned.total(), counts.accepted);
    let p = counts.planned;
    assert!(p.pass > 0 && p.reset > 0 && p.stall > 0 && p.refuse > 0 && p.half_close > 0);
    assert_eq!(counts.injected.refuse, p.refuse);
    assert!(counts.injected.reset + counts.injected.half_close > 0);
    assert_eq!(counts.open, 0);

    // Shutdown flips readiness.
    server.shutdown(Duration::from_secs(1)).await;
    client.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        server.readiness(),
        ReadyState::NotReady { reason: "shutdown" }
    );
    assert_eq!(
        client.readiness(),
        ReadyState::NotReady { reason: "shutdown" }
    );
    util::within("serve ends after shutdown", SLACK, serving)
        .await
        .expect("serve task")
        .expect("serve ends with Ok after shutdown");
}

/// One session: dial through the relay, pipeline [`FRAMES`] frames (a sender task) while
/// checking every echo in order; some sessions cancel part-way.
async fn session<T: Eut>(
    engine: &T::E,
    target: std::net::SocketAddr,
    c: usize,
    s: usize,
    kinds: &Kinds,
    tally: &Tally,
    lat: &Mutex<Vec<Duration>>,
) {
    let opts = DialOptions {
        deadline: Duration::from_secs(3),
        ..DialOptions::default()
    };
    let mut conn = match engine.dial(target, opts).await {
        Ok(conn) => conn,
        Err(e) => {
            kinds.add(&e);
            tally.dials_failed.fetch_add(1, Ordering::SeqCst);
            tally.sessions_failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let cancel_at = ((c * SESSIONS + s) % 6 == 5).then_some(FRAMES / 3 + (c as u32 % 7));
    let tx = conn.sender();
    let sender_kinds = kinds.clone();
    let sender = tokio::spawn(async move {
        for i in 0..FRAMES {
            if let Err(e) = tx.send(frame(c, s, i)).await {
                sender_kinds.add(&e);
                return;
            }
        }
    });
    let mut ok = true;
    let mut next = 0u32;
    while next < FRAMES {
        if cancel_at == Some(next) {
            let t0 = Instant::now();
            conn.cancel();
            let r = util::within("recv after cancel", SLACK, conn.recv()).await;
            lat.lock().unwrap().push(t0.elapsed());
            tally.cancels.fetch_add(1, Ordering::SeqCst);
            match r {
                Err(e) => kinds.add(&e),
                Ok(v) => panic!("recv after cancel: {:?}", v.map(|f| f.len())),
            }
            ok = false;
            break;
        }
        match util::within("echo", SLACK, conn.recv()).await {
            Ok(Some(f)) => {
                if f != frame(c, s, next) {
                    tally.corrupt.fetch_add(1, Ordering::SeqCst);
                    ok = false;
                    break;
                }
                tally.frames_ok.fetch_add(1, Ordering::SeqCst);
                next += 1;
            }
            Ok(None) => {
                ok = false;
                break;
            }
            Err(e) => {
                kinds.add(&e);
                ok = false;
                break;
            }
        }
    }
    if ok {
        util::within("sender done", SLACK, sender)
            .await
            .expect("sender");
        match util::within("close", SLACK, conn.close()).await {
            Ok(()) => {
                tally.sessions_ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                kinds.add(&e);
                tally.sessions_failed.fetch_add(1, Ordering::SeqCst);
            }
        }
    } else {
        conn.cancel();
        util::within("sender ends after cancel", SLACK, sender)
            .await
            .expect("sender");
        drop(conn);
        tally.sessions_failed.fetch_add(1, Ordering::SeqCst);
    }
}

/// Opens 8 connections straight to the server, echoes one frame on each with more queued,
/// cancels them all and waits (bounded) until the client engine holds no live work. Returns
/// the time that took (printed, not asserted).
async fn cancel_live<T: Eut>(
    client: &T::E,
    addr: std::net::SocketAddr,
    cm: &TransportMetrics,
    backend: Backend,
) -> Duration {
    let mut conns = Vec::new();
    for i in 0..8 {
        let mut conn = client
            .dial(addr, DialOptions::default())
            .await
            .expect("direct dial");
        conn.send(frame(1000, i, 0)).await.expect("send");
        let echo = util::within("echo", SLACK, conn.recv()).await;
        assert_eq!(echo.expect("recv").expect("frame"), frame(1000, i, 0));
        for j in 1..20 {
            conn.send(frame(1000, i, j)).await.expect("send");
        }
        conns.push(conn);
    }
    let t0 = Instant::now();
    for c in &conns {
        c.cancel();
    }
    util::wait_until("cancelled connections quiesce", SLACK, || {
        T::live(client) == 0 && util::snap(cm, backend).inflight == 0
    })
    .await;
    let took = t0.elapsed();
    for mut c in conns {
        assert!(matches!(c.recv().await, Err(TransportError::Cancelled)));
        assert!(matches!(c.recv().await, Err(TransportError::IoClosed)));
        assert!(c.try_send(Bytes::from_static(b"x")).is_err());
    }
    took
}

// ---------------------------------------------------------------- cancel with unread input

#[test]
fn tokio_cancel_discards_unread_frames() {
    serial(cancel_discards_unread_frames::<Tokio>());
}

#[test]
fn uring_cancel_discards_unread_frames() {
    serial(cancel_discards_unread_frames::<Uring>());
}

/// After `Conn::cancel`, `recv` reports `Cancelled` (then `IoClosed`) even when frames had
/// already arrived and were not read yet: a cancelled connection delivers nothing more, on
/// every engine. (The uring engine used to hand out the frames its shard had queued before
/// reporting the cancel; the fault run's cancelled sessions found it.)
async fn cancel_discards_unread_frames<T: Eut>() {
    let (sm, cm) = (TransportMetrics::new(), TransportMetrics::new());
    let server = T::build(config(Backend::Tcp), None, sm);
    let client = T::build(config(Backend::Tcp), None, cm.clone());
    let mut listener = server.listen(util::loopback()).await.expect("listen");
    let addr = listener.local_addr();
    let (conn, srv) = tokio::join!(client.dial(addr, DialOptions::default()), listener.accept());
    let (mut conn, srv) = (conn.expect("dial"), srv.expect("accept"));
    const N: u32 = 5;
    for i in 0..N {
        srv.send(frame(7, 0, i)).await.expect("send");
    }
    util::within("server close", SLACK, srv.close())
        .await
        .expect("graceful close");
    let first = util::within("first frame", SLACK, conn.recv()).await;
    assert_eq!(first.expect("recv").expect("frame"), frame(7, 0, 0));
    // Let the rest arrive on the client's side (the shard counts what it received; the tokio
    // engine reads in `recv`, where the first read usually took them all).
    let total: u64 = (0..N).map(|i| 4 + frame(7, 0, i).len() as u64).sum();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while util::snap(&cm, Backend::Tcp).bytes_in < total {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    conn.cancel();
    let after = util::within("recv after cancel", SLACK, conn.recv()).await;
    assert!(
        matches!(after, Err(TransportError::Cancelled)),
        "recv after cancel: {:?}",
        after.map(|f| f.map(|f| f.len()))
    );
    assert!(matches!(conn.recv().await, Err(TransportError::IoClosed)));
    util::wait_until("cancelled connection released", SLACK, || {
        T::live(&client) == 0 && util::snap(&cm, Backend::Tcp).inflight == 0
    })
    .await;
}

// ---------------------------------------------------------------- EOF inside a frame

#[test]
fn tokio_eof_inside_a_frame_is_io() {
    serial(eof_inside_a_frame_is_io::<Tokio>());
}

#[test]
fn uring_eof_inside_a_frame_is_io() {
    serial(eof_inside_a_frame_is_io::<Uring>());
}

/// A peer that half-closes in the middle of a frame (what the relay's half-close does) fails
/// the receiving connection with the same kind on every engine: `io` (`UnexpectedEof`, "peer
/// closed inside a frame", as the tokio and arti engines report it), not a clean end. The
/// uring engine used to report `io_closed` here.
async fn eof_inside_a_frame_is_io<T: Eut>() {
    use tokio::io::AsyncWriteExt;
    let server = T::build(config(Backend::Tcp), None, TransportMetrics::new());
    let mut listener = server.listen(util::loopback()).await.expect("listen");
    let mut raw = tokio::net::TcpStream::connect(listener.local_addr())
        .await
        .expect("connect");
    let mut srv = util::within("accept", SLACK, listener.accept())
        .await
        .expect("accept");
    // One whole frame, then half of the next, then FIN.
    let mut bytes = util::wire_frame(b"whole");
    bytes.extend_from_slice(&[0, 0, 0, 8, 1, 2, 3]);
    raw.write_all(&bytes).await.expect("write");
    raw.shutdown().await.expect("half-close");
    let first = util::within("first frame", SLACK, srv.recv()).await;
    assert_eq!(first.expect("recv").expect("frame"), &b"whole"[..]);
    let err = match util::within("recv at EOF", SLACK, srv.recv()).await {
        Err(e) => e,
        Ok(v) => panic!("EOF inside a frame: {:?}", v.map(|f| f.len())),
    };
    assert_eq!(err.kind(), "io", "{err:?}");
    assert!(
        matches!(&err, TransportError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
        "{err:?}"
    );
    assert!(matches!(srv.recv().await, Err(TransportError::IoClosed)));
}
