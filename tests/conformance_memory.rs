//! The shared conformance suite (tests/conformance) against the in-memory engine (feature
//! `memory`), on both tokio schedulers, plus:
//!
//! - `pipe_*`: an in-process twin of every suite case that needs a kernel TCP socket as the
//!   misbehaving peer (those print `SKIPPED <case>: <reason>` in the suite). The raw peer is a
//!   raw pipe end (`MemoryStream`) speaking bytes, a stalled reader is one that never reads
//!   (the pipe buffers 64 KiB per direction, like a socket buffer), and the SYN-dropping
//!   backlog of `dial_timeout` is a network partition;
//! - memory-engine behaviour: refused dials, fault hooks (reset, freeze, partition), address
//!   registry, and the virtual clock (`tokio::time::pause`).

mod util;
#[macro_use]
mod conformance;

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ron_transport::config::Backend;
use ron_transport::engine::memory::{MemoryEngine, MemoryNetwork, MemoryStream};
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::DialOptions;
use ron_transport::{
    Config, ConfigHandle, Conn, Engine, EngineKind, FrameSender, Listener, PqMode, ReadyState,
    RejectReason, TimeoutOp, TransportError, TransportHealth, TransportMetrics, ValidConfig,
};

use conformance::{EngineUnderTest, TlsFixture};
use util::*;

thread_local! {
    /// One network per test (each test runs on its own thread, and the suite builds its
    /// engines from the test's thread), so a server and a client engine reach each other.
    static NET: RefCell<Option<MemoryNetwork>> = const { RefCell::new(None) };
}

fn test_net() -> MemoryNetwork {
    NET.with(|n| {
        n.borrow_mut()
            .get_or_insert_with(MemoryNetwork::new)
            .clone()
    })
}

fn build_on(
    net: &MemoryNetwork,
    cfg: ValidConfig,
    tls: Option<TlsFixture>,
    metrics: Arc<TransportMetrics>,
) -> MemoryEngine {
    build_on_handle(net, ConfigHandle::new(cfg), tls, metrics)
}

fn build_on_handle(
    net: &MemoryNetwork,
    handle: ConfigHandle,
    tls: Option<TlsFixture>,
    metrics: Arc<TransportMetrics>,
) -> MemoryEngine {
    let mut setup = EngineSetup::from_handle(handle, metrics).expect("setup");
    if let Some(tls) = tls {
        setup = setup
            .with_tls_server(tls.server)
            .with_tls_client(tls.client);
    }
    net.engine(setup).expect("memory engine")
}

struct MemoryUnderTest;

impl EngineUnderTest for MemoryUnderTest {
    type E = MemoryEngine;

    fn build(
        cfg: ValidConfig,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> MemoryEngine {
        build_on(&test_net(), cfg, tls, metrics)
    }

    fn build_with_handle(
        handle: ConfigHandle,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> MemoryEngine {
        build_on_handle(&test_net(), handle, tls, metrics)
    }

    fn live_tasks(engine: &MemoryEngine) -> usize {
        engine.live_tasks()
    }

    fn real_sockets() -> bool {
        false
    }
}

conformance_suite!(MemoryUnderTest);

// ---------------------------------------------------------------- pipe_* twins

/// Generates one `#[test]` per case per tokio scheduler.
macro_rules! both_schedulers {
    ($($case:ident),* $(,)?) => {
        mod pipe_current_thread {
            $(
                #[test]
                fn $case() {
                    crate::util::run_current_thread(super::$case());
                }
            )*
        }
        mod pipe_multi_thread {
            $(
                #[test]
                fn $case() {
                    crate::util::run_multi_thread(super::$case());
                }
            )*
        }
    };
}

both_schedulers!(
    pipe_read_timeout,
    pipe_write_timeout,
    pipe_idle_timeout,
    pipe_dial_timeout,
    pipe_max_conns_tcp,
    pipe_max_conns_tls,
    pipe_per_peer_cap,
    pipe_tls_handshake_timeout,
    pipe_busy_when_inbox_full,
    pipe_cancel_quiesces,
    pipe_shutdown_drains_and_aborts,
    refused_dial_is_connection_refused,
    link_reset_surfaces_as_io_on_both_ends,
    link_freeze_stalls_then_thaw_resumes,
    partition_blackholes_dials_and_freezes_links,
    engine_kind_addresses_and_registry,
    source_ip_keys_per_peer_caps,
);

const SLACK: Duration = Duration::from_secs(5);

fn base(backend: Backend) -> Config {
    let mut c = Config::default();
    c.backend = backend;
    c
}

struct Side {
    engine: MemoryEngine,
    metrics: Arc<TransportMetrics>,
}

fn side_on(net: &MemoryNetwork, cfg: Config, tls: Option<TlsFixture>) -> Side {
    let metrics = TransportMetrics::new();
    let engine = build_on(net, cfg.validate().expect("valid"), tls, metrics.clone());
    Side { engine, metrics }
}

fn dial_opts() -> DialOptions {
    DialOptions {
        deadline: SLACK,
        ..DialOptions::default()
    }
}

async fn recv_frame<C: Conn>(conn: &mut C) -> Bytes {
    within("recv a frame", SLACK, conn.recv())
        .await
        .expect("recv ok")
        .expect("a frame, not EOF")
}

fn expect_err<V>(r: Result<V, TransportError>, what: &str) -> TransportError {
    match r {
        Ok(_) => panic!("{what}: unexpectedly succeeded"),
        Err(e) => e,
    }
}

fn assert_timeout(err: &TransportError, op: TimeoutOp) {
    match err {
        TransportError::Timeout { op: got } if *got == op => {}
        other => panic!("expected Timeout{{op: {op}}}, got {other:?}"),
    }
    assert_eq!(err.kind(), "timeout");
    assert_eq!(err.reject_reason(), Some(RejectReason::Timeout));
}

/// Reads a raw pipe end until EOF, reset or `limit`: (bytes, ended).
async fn pipe_read_to_end(s: &mut MemoryStream, limit: Duration) -> (usize, bool) {
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (total, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (total, true),
            Ok(Ok(n)) => total += n,
        }
    }
}

async fn fill_until_busy<C: Conn>(conn: &C, frame: &Bytes) -> usize {
    let mut queued = 0;
    for i in 0..200_000 {
        match conn.try_send(frame.clone()) {
            Ok(()) => queued += 1,
            Err(TransportError::Busy) => return queued,
            Err(e) => panic!("unexpected try_send error after {queued} frames: {e:?}"),
        }
        if i % 256 == 255 {
            tokio::task::yield_now().await;
        }
    }
    panic!("the writer inbox never filled");
}

/// Twin of `read_timeout`: half a frame from a raw pipe end, then nothing.
async fn pipe_read_timeout() {
    let net = MemoryNetwork::new();
    let mut cfg = base(Backend::Tcp);
    cfg.read_timeout = Duration::from_millis(300);
    let server = side_on(&net, cfg, None);
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let mut raw = net.connect(listener.local_addr()).await.unwrap();
    let mut srv = within("accept", SLACK, listener.accept()).await.unwrap();

    raw.write_all(&wire_frame(b"one")).await.unwrap();
    assert_eq!(&recv_frame(&mut srv).await[..], b"one");
    tokio::time::sleep(Duration::from_millis(700)).await;
    raw.write_all(&wire_frame(b"two")).await.unwrap();
    assert_eq!(&recv_frame(&mut srv).await[..], b"two");
    assert_eq!(rejected(&server.metrics, RejectReason::Timeout), 0);

    let start = Instant::now();
    raw.write_all(&[0, 0, 0, 10, b'h', b'a']).await.unwrap();
    let err = within("read timeout", SLACK, srv.recv()).await.unwrap_err();
    let took = start.elapsed();
    assert_timeout(&err, TimeoutOp::Read);
    assert!(took >= Duration::from_millis(250), "fired early: {took:?}");
    assert_eq!(rejected(&server.metrics, RejectReason::Timeout), 1);
    assert!(matches!(srv.recv().await, Err(TransportError::IoClosed)));
    let (_, ended) = pipe_read_to_end(&mut raw, SLACK).await;
    assert!(ended, "peer sees the connection closed");
    wait_until("released", SLACK, || {
        snap(&server.metrics, Backend::Tcp).inflight == 0
    })
    .await;
}

/// Twin of `write_timeout`: the raw peer never reads; the pipe fills, the writer stalls.
async fn pipe_write_timeout() {
    let net = MemoryNetwork::new();
    let mut cfg = base(Backend::Tcp);
    cfg.write_timeout = Duration::from_millis(300);
    let server = side_on(&net, cfg, None);
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let _raw = net.connect(listener.local_addr()).await.unwrap();
    let mut srv = within("accept", SLACK, listener.accept()).await.unwrap();

    let frame = payload(64 * 1024, 9);
    let start = Instant::now();
    let mut sent = 0usize;
    let err = loop {
        match srv.send(frame.clone()).await {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no write timeout after {sent} frames"
        );
    };
    assert_timeout(&err, TimeoutOp::Write);
    assert_eq!(rejected(&server.metrics, RejectReason::Timeout), 1);
    match within("recv after failure", SLACK, srv.recv()).await {
        Err(e) => assert_timeout(&e, TimeoutOp::Write),
        Ok(v) => panic!("expected the write timeout, got {v:?}"),
    }
    assert!(matches!(srv.recv().await, Err(TransportError::IoClosed)));
    assert!(srv.try_send(Bytes::from_static(b"x")).is_err());
    wait_until("released", SLACK, || {
        snap(&server.metrics, Backend::Tcp).inflight == 0
    })
    .await;
    assert_eq!(inbox_depth(&server.metrics), 0);
}

/// Twin of `idle_timeout`: activity at ~600 ms pushes the 1 s idle deadline out.
async fn pipe_idle_timeout() {
    let net = MemoryNetwork::new();
    let mut cfg = base(Backend::Tcp);
    cfg.idle_timeout = Duration::from_secs(1);
    let server = side_on(&net, cfg, None);
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let mut raw = net.connect(listener.local_addr()).await.unwrap();
    let mut srv = within("accept", SLACK, listener.accept()).await.unwrap();
    let start = Instant::now();

    tokio::time::sleep(Duration::from_millis(600)).await;
    raw.write_all(&wire_frame(b"ping")).await.unwrap();
    assert_eq!(&recv_frame(&mut srv).await[..], b"ping");
    let err = within("idle timeout", SLACK, srv.recv()).await.unwrap_err();
    let took = start.elapsed();
    assert_timeout(&err, TimeoutOp::Idle);
    assert!(
        took >= Duration::from_millis(1450),
        "idle deadline not reset by activity: {took:?}"
    );
    assert_eq!(rejected(&server.metrics, RejectReason::Timeout), 1);
    let (_, ended) = pipe_read_to_end(&mut raw, SLACK).await;
    assert!(ended);
    wait_until("released", SLACK, || {
        snap(&server.metrics, Backend::Tcp).inflight == 0
    })
    .await;
}

/// Twin of `dial_timeout`: a partitioned network blackholes the dial (the kernel twin fills a
/// listen backlog so SYNs are dropped).
async fn pipe_dial_timeout() {
    let net = MemoryNetwork::new();
    let server = side_on(&net, base(Backend::Tcp), None);
    let listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    net.partition();

    let client = side_on(&net, base(Backend::Tcp), None);
    let start = Instant::now();
    let opts = DialOptions {
        deadline: Duration::from_millis(300),
        corr_id: Some("dial-timeout-test".into()),
        ..DialOptions::default()
    };
    let err = expect_err(
        within("dial", SLACK, client.engine.dial(addr, opts)).await,
        "dial",
    );
    let took = start.elapsed();
    assert_timeout(&err, TimeoutOp::Dial);
    assert!(took >= Duration::from_millis(250), "fired early: {took:?}");
    let c = snap(&client.metrics, Backend::Tcp);
    assert_eq!((c.dials_ok, c.dials_err), (0, 1));
    assert_eq!(c.inflight, 0);
    assert_eq!(rejected(&client.metrics, RejectReason::Timeout), 1);
    assert_eq!(snap(&server.metrics, Backend::Tcp).accepts, 0);

    // A full backlog holds a dial the same way.
    net.heal();
    let small = MemoryNetwork::with_limits(64 * 1024, 1);
    let _never_accepts = small.bind_raw("127.0.0.1:7000".parse().unwrap()).unwrap();
    let filler = small.connect("127.0.0.1:7000".parse().unwrap()).await;
    assert!(filler.is_ok(), "first dial fits the backlog");
    let client = side_on(&small, base(Backend::Tcp), None);
    let opts = DialOptions {
        deadline: Duration::from_millis(300),
        ..DialOptions::default()
    };
    let err = expect_err(
        within(
            "dial",
            SLACK,
            client
                .engine
                .dial(SocketAddr::from(([127, 0, 0, 1], 7000)), opts),
        )
        .await,
        "dial into a full backlog",
    );
    assert_timeout(&err, TimeoutOp::Dial);
    drop(listener);
}

/// Twin of `max_conns_*`: the peer over the cap is a raw pipe end; it is closed before any
/// handshake byte.
async fn pipe_max_conns(backend: Backend) {
    let net = MemoryNetwork::new();
    let tls = (backend == Backend::Tls).then(|| TlsFixture::new(PqMode::Off));
    let mut scfg = base(backend);
    scfg.max_conns = 1;
    let server = side_on(&net, scfg, tls.clone());
    let client = side_on(&net, base(backend), tls);
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();

    let (a, a_srv) = tokio::join!(client.engine.dial(addr, dial_opts()), async {
        within("accept A", SLACK, listener.accept()).await
    });
    let a = a.expect("first dial");
    let a_srv = a_srv.unwrap();
    let before = snap(&server.metrics, backend);
    assert_eq!(before.accepts, 1);
    let handshakes_before = before.hs_off + before.hs_hybrid;

    let accepting = tokio::spawn(async move {
        let r = listener.accept().await;
        (listener, r.map(|c| c.info().conn_id))
    });
    let mut b = net.connect(addr).await.unwrap();
    if backend == Backend::Tls {
        let _ = b.write_all(&[0x16, 0x03, 0x01]).await;
    }
    let (got, ended) = pipe_read_to_end(&mut b, SLACK).await;
    assert!(ended, "refused peer is closed");
    assert_eq!(got, 0, "refused peer gets no handshake bytes");
    wait_until("peer_limit counted", SLACK, || {
        rejected(&server.metrics, RejectReason::PeerLimit) == 1
    })
    .await;
    let after = snap(&server.metrics, backend);
    assert_eq!(after.accepts, 1, "refused peer is not accepted");
    assert_eq!(after.hs_off + after.hs_hybrid, handshakes_before);
    assert_eq!(after.tls_failures, 0);
    assert_eq!(rejected(&server.metrics, RejectReason::Tls), 0);
    assert!(
        !accepting.is_finished(),
        "refused peer never reaches accept"
    );

    drop(a_srv);
    within("close A", SLACK, a.close()).await.ok();
    wait_until("slot released", SLACK, || {
        snap(&server.metrics, backend).inflight == 0
    })
    .await;
    let c = client
        .engine
        .dial(addr, dial_opts())
        .await
        .expect("dial after release");
    let (_listener, accepted) = within("accept C", SLACK, accepting).await.unwrap();
    accepted.expect("C accepted");
    assert_eq!(snap(&server.metrics, backend).accepts, 2);
    drop(c);
}

async fn pipe_max_conns_tcp() {
    pipe_max_conns(Backend::Tcp).await
}

async fn pipe_max_conns_tls() {
    pipe_max_conns(Backend::Tls).await
}

/// Twin of `per_peer_cap`: raw pipe ends dialed from 127.0.0.1 (twice) and 127.0.0.2.
async fn pipe_per_peer_cap() {
    let net = MemoryNetwork::new();
    let mut scfg = base(Backend::Tcp);
    scfg.per_peer_max_conns = 1;
    let server = side_on(&net, scfg, None);
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let ip = |last: u8| Some(IpAddr::from([127, 0, 0, last]));

    let _a = net.connect_from(ip(1), addr).await.unwrap();
    let a_srv = within("accept A", SLACK, listener.accept()).await.unwrap();
    assert_eq!(a_srv.info().peer_addr.ip().to_string(), "127.0.0.1");

    let mut b = net.connect_from(ip(1), addr).await.unwrap();
    let _c = net.connect_from(ip(2), addr).await.unwrap();
    // B is refused inside accept, which then returns C.
    let c_srv = within("accept C", SLACK, listener.accept()).await.unwrap();
    assert_eq!(c_srv.info().peer_addr.ip().to_string(), "127.0.0.2");
    let (_, ended) = pipe_read_to_end(&mut b, SLACK).await;
    assert!(ended, "second connection from the same peer is closed");
    assert_eq!(rejected(&server.metrics, RejectReason::PeerLimit), 1);
    assert_eq!(snap(&server.metrics, Backend::Tcp).accepts, 2);
}

/// Twin of `tls_handshake_timeout`: a raw pipe end that never sends a ClientHello.
async fn pipe_tls_handshake_timeout() {
    let net = MemoryNetwork::new();
    let mut scfg = base(Backend::Tls);
    scfg.read_timeout = Duration::from_millis(300);
    let server = side_on(&net, scfg, Some(TlsFixture::new(PqMode::Off)));
    let listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let serving = server.engine.serve(listener, |_conn| async {});
    let serve_task = tokio::spawn(serving);

    let mut raw = net.connect(addr).await.unwrap();
    let start = Instant::now();
    let (_, ended) = pipe_read_to_end(&mut raw, SLACK).await;
    let took = start.elapsed();
    assert!(ended);
    assert!(took >= Duration::from_millis(250), "{took:?}");
    wait_until("timeout counted", SLACK, || {
        rejected(&server.metrics, RejectReason::Timeout) == 1
    })
    .await;
    let s = snap(&server.metrics, Backend::Tls);
    assert_eq!(s.accepts, 1);
    assert_eq!(s.tls_failures, 0, "a stalled handshake is a timeout");
    assert_eq!(s.hs_off + s.hs_hybrid, 0);
    assert_eq!(s.inflight, 0);
    serve_task.abort();
}

/// Twin of `busy_when_inbox_full`: the raw peer never reads.
async fn pipe_busy_when_inbox_full() {
    let net = MemoryNetwork::new();
    let server = side_on(&net, base(Backend::Tcp), None);
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let _raw = net.connect(listener.local_addr()).await.unwrap();
    let srv = within("accept", SLACK, listener.accept()).await.unwrap();

    let frame = payload(64 * 1024, 5);
    let queued = fill_until_busy(&srv, &frame).await;
    assert!(queued >= ron_transport::engine::WRITER_INBOX_CAPACITY);
    assert_eq!(inbox_dropped(&server.metrics), 1);
    assert_eq!(rejected(&server.metrics, RejectReason::Busy), 1);

    let mut busy = 1;
    let mut settled = false;
    for _ in 0..100 {
        fill_until_busy(&srv, &frame).await;
        busy += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if inbox_depth(&server.metrics) == ron_transport::engine::WRITER_INBOX_CAPACITY as i64 {
            settled = true;
            break;
        }
    }
    assert!(settled, "the writer inbox never settled at its capacity");
    assert_eq!(inbox_dropped(&server.metrics), busy);
    assert_eq!(rejected(&server.metrics, RejectReason::Busy), busy);
    assert_eq!(snap(&server.metrics, Backend::Tcp).inflight, 1);
    for r in RejectReason::ALL {
        if r != RejectReason::Busy {
            assert_eq!(rejected(&server.metrics, r), 0, "{r}");
        }
    }
    srv.cancel();
    wait_until("inbox gauge back to 0", SLACK, || {
        inbox_depth(&server.metrics) == 0
    })
    .await;
    wait_until("released", SLACK, || {
        snap(&server.metrics, Backend::Tcp).inflight == 0
    })
    .await;
}

/// Twin of `cancel_quiesces`: half engine peers that never recv, half raw pipe ends that
/// never read.
async fn pipe_cancel_quiesces() {
    const N: usize = 8;
    let net = MemoryNetwork::new();
    let server = side_on(&net, base(Backend::Tcp), None);
    let client = side_on(&net, base(Backend::Tcp), None);
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let mut clients: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let mut conns = Vec::new();
    for i in 0..N {
        if i % 2 == 0 {
            clients.push(Box::new(
                client.engine.dial(addr, dial_opts()).await.unwrap(),
            ));
        } else {
            clients.push(Box::new(net.connect(addr).await.unwrap()));
        }
        conns.push(within("accept", SLACK, listener.accept()).await.unwrap());
    }
    let frame = payload(64 * 1024, 7);
    for c in &conns {
        fill_until_busy(c, &frame).await;
    }
    assert!(server.engine.live_tasks() > 0);
    assert_eq!(snap(&server.metrics, Backend::Tcp).inflight, N as i64);

    let start = Instant::now();
    for c in &conns {
        c.cancel();
    }
    let took = wait_until("every per-connection task ended", SLACK, || {
        server.engine.live_tasks() == 0 && snap(&server.metrics, Backend::Tcp).inflight == 0
    })
    .await;
    let took = took.max(start.elapsed());
    println!("cancel quiesced {N} busy memory connections in {took:?} (spec: <= 100 ms)");
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    assert_eq!(inbox_depth(&server.metrics), 0);
    for mut c in conns {
        c.cancel();
        let first = c.recv().await;
        assert!(matches!(first, Err(TransportError::Cancelled)), "{first:?}");
        assert!(matches!(c.recv().await, Err(TransportError::IoClosed)));
        assert!(c.try_send(Bytes::from_static(b"x")).is_err());
    }
    for r in RejectReason::ALL {
        if r != RejectReason::Busy {
            assert_eq!(rejected(&server.metrics, r), 0, "{r}");
        }
    }
    drop(clients);
}

/// Twin of `shutdown_drains_and_aborts`: the stuck peer is a raw pipe end that never reads.
async fn pipe_shutdown_drains_and_aborts() {
    let net = MemoryNetwork::new();
    let server = side_on(&net, base(Backend::Tcp), None);
    let client = side_on(&net, base(Backend::Tcp), None);
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();

    let mut healthy = client.engine.dial(addr, dial_opts()).await.unwrap();
    let h_srv = within("accept", SLACK, listener.accept()).await.unwrap();
    let _stuck_peer = net.connect(addr).await.unwrap();
    let stuck = within("accept", SLACK, listener.accept()).await.unwrap();
    for i in 0..10 {
        h_srv.try_send(payload(100, i)).unwrap();
    }
    fill_until_busy(&stuck, &payload(64 * 1024, 1)).await;

    let report = within(
        "shutdown",
        SLACK,
        server.engine.shutdown(Duration::from_millis(300)),
    )
    .await;
    assert_eq!(report.drained, 1);
    assert_eq!(report.aborted, 1);
    assert_eq!(tasks_aborted(&server.metrics, "writer"), 1);
    assert!(matches!(
        server.engine.readiness(),
        ReadyState::NotReady { reason: "shutdown" }
    ));
    for i in 0..10 {
        assert_eq!(recv_frame(&mut healthy).await, payload(100, i));
    }
    assert!(matches!(
        within("EOF", SLACK, healthy.recv()).await,
        Ok(None)
    ));
    wait_until("no tasks left", SLACK, || server.engine.live_tasks() == 0).await;
    assert!(matches!(
        listener.accept().await,
        Err(TransportError::Cancelled)
    ));
    assert!(server.engine.dial(addr, dial_opts()).await.is_err());
    drop((h_srv, stuck));
    wait_until("released", SLACK, || {
        snap(&server.metrics, Backend::Tcp).inflight == 0
    })
    .await;
}

// ---------------------------------------------------------------- memory-engine behaviour

/// Nobody listens: the dial fails at once like ECONNREFUSED, counted as a failed dial and
/// not as a reject.
async fn refused_dial_is_connection_refused() {
    let net = MemoryNetwork::new();
    let client = side_on(&net, base(Backend::Tcp), None);
    let err = expect_err(
        client
            .engine
            .dial(SocketAddr::from(([127, 0, 0, 1], 9)), dial_opts())
            .await,
        "dial nobody",
    );
    match &err {
        TransportError::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        other => panic!("expected Io(ConnectionRefused), got {other:?}"),
    }
    assert_eq!(err.kind(), "io");
    let c = snap(&client.metrics, Backend::Tcp);
    assert_eq!((c.dials_ok, c.dials_err, c.inflight), (0, 1, 0));
    for r in RejectReason::ALL {
        assert_eq!(rejected(&client.metrics, r), 0, "{r}");
    }
    // A dropped listener stops listening.
    let server = side_on(&net, base(Backend::Tcp), None);
    let listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    drop(listener);
    let err = expect_err(client.engine.dial(addr, dial_opts()).await, "dial closed");
    assert_eq!(err.kind(), "io");
}

/// `Link::reset`: both ends fail with an I/O error (no reject reason), caps are released.
async fn link_reset_surfaces_as_io_on_both_ends() {
    let net = MemoryNetwork::new();
    let fx = TlsFixture::new(PqMode::Off);
    let server = side_on(&net, base(Backend::Tls), Some(fx.clone()));
    let client = side_on(&net, base(Backend::Tls), Some(fx));
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let (conn, srv) = tokio::join!(client.engine.dial(addr, dial_opts()), async {
        within("accept", SLACK, listener.accept()).await
    });
    let mut conn = conn.unwrap();
    let mut srv = srv.unwrap();
    conn.send(payload(100, 1)).await.unwrap();
    assert_eq!(recv_frame(&mut srv).await, payload(100, 1));

    let link = net
        .link(conn.info().local_addr, conn.info().peer_addr)
        .expect("the connection's link");
    assert_eq!(link.client_addr(), conn.info().local_addr);
    assert_eq!(link.server_addr(), srv.info().local_addr);
    link.reset();
    assert!(link.is_reset());
    for (what, c) in [("client", &mut conn), ("server", &mut srv)] {
        let err = within("recv after reset", SLACK, c.recv())
            .await
            .unwrap_err();
        match &err {
            TransportError::Io(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}")
            }
            other => panic!("{what}: expected Io(ConnectionReset), got {other:?}"),
        }
        assert!(matches!(c.recv().await, Err(TransportError::IoClosed)));
    }
    wait_until("both released", SLACK, || {
        snap(&server.metrics, Backend::Tls).inflight == 0
            && snap(&client.metrics, Backend::Tls).inflight == 0
    })
    .await;
    for r in RejectReason::ALL {
        assert_eq!(rejected(&server.metrics, r), 0, "server {r}");
        assert_eq!(rejected(&client.metrics, r), 0, "client {r}");
    }
    // The test's own handle aside, nothing keeps the pipes alive.
    drop(link);
    wait_until("link gone", SLACK, || net.links().is_empty()).await;
}

/// `Link::freeze`: no byte moves (the write timeout fires on a stalled writer); a thawed
/// link delivers what was held back.
async fn link_freeze_stalls_then_thaw_resumes() {
    let net = MemoryNetwork::new();
    let mut scfg = base(Backend::Tcp);
    scfg.write_timeout = Duration::from_millis(300);
    let server = side_on(&net, scfg, None);
    let client = side_on(&net, base(Backend::Tcp), None);
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();

    // Thaw: a frame sent while frozen arrives after the thaw.
    let conn = client.engine.dial(addr, dial_opts()).await.unwrap();
    let mut srv = within("accept", SLACK, listener.accept()).await.unwrap();
    let link = net.link(conn.info().local_addr, addr).unwrap();
    link.freeze();
    assert!(link.is_frozen());
    conn.send(payload(10, 1)).await.unwrap();
    let held = tokio::time::timeout(Duration::from_millis(200), srv.recv()).await;
    assert!(held.is_err(), "a frozen link delivered a frame");
    link.thaw();
    assert_eq!(recv_frame(&mut srv).await, payload(10, 1));

    // Freeze with output queued: the server's writer stalls into Timeout{Write}.
    link.freeze();
    let start = Instant::now();
    let err = loop {
        match srv.send(payload(64 * 1024, 2)).await {
            Ok(()) => {}
            Err(e) => break e,
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no write timeout"
        );
    };
    assert_timeout(&err, TimeoutOp::Write);
    assert_eq!(rejected(&server.metrics, RejectReason::Timeout), 1);
    drop(srv);
    wait_until("server released", SLACK, || {
        snap(&server.metrics, Backend::Tcp).inflight == 0
    })
    .await;
    link.thaw();
    drop(conn);
}

/// `MemoryNetwork::partition`: open connections freeze and new dials hang; `heal` resumes
/// both.
async fn partition_blackholes_dials_and_freezes_links() {
    let net = MemoryNetwork::new();
    let server = side_on(&net, base(Backend::Tcp), None);
    let client = side_on(&net, base(Backend::Tcp), None);
    let listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let echo = tokio::spawn(server.engine.serve(listener, |mut c| async move {
        while let Ok(Some(f)) = c.recv().await {
            if c.send(f).await.is_err() {
                break;
            }
        }
    }));
    let mut conn = client.engine.dial(addr, dial_opts()).await.unwrap();
    conn.send(payload(10, 1)).await.unwrap();
    assert_eq!(recv_frame(&mut conn).await, payload(10, 1));

    net.partition();
    assert!(net.is_partitioned());
    conn.send(payload(10, 2)).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), conn.recv())
            .await
            .is_err(),
        "traffic crossed a partition"
    );
    let pending_dial = {
        let engine = client.engine.clone();
        tokio::spawn(async move { engine.dial(addr, dial_opts()).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pending_dial.is_finished(), "a dial crossed a partition");

    net.heal();
    assert_eq!(recv_frame(&mut conn).await, payload(10, 2));
    within("held dial completes", SLACK, pending_dial)
        .await
        .unwrap()
        .expect("dial after heal");
    let c = snap(&client.metrics, Backend::Tcp);
    assert_eq!((c.dials_ok, c.dials_err), (2, 0));
    echo.abort();
}

/// Kind, addresses, port assignment, `AddrInUse` and readiness on a bind failure.
async fn engine_kind_addresses_and_registry() {
    let net = MemoryNetwork::new();
    let server = side_on(&net, base(Backend::Tcp), None);
    let client = side_on(&net, base(Backend::Tcp), None);
    assert_eq!(server.engine.kind(), EngineKind::Memory);
    assert_eq!(EngineKind::Memory.as_str(), "memory");
    let mut a = server.engine.listen(loopback()).await.unwrap();
    let b = server.engine.listen(loopback()).await.unwrap();
    assert_ne!(a.local_addr().port(), 0);
    assert_ne!(a.local_addr(), b.local_addr(), "port 0 gets distinct ports");
    let mut listening = net.listening();
    listening.sort();
    let mut want = vec![a.local_addr(), b.local_addr()];
    want.sort();
    assert_eq!(listening, want);

    // A wildcard listener is reached through loopback.
    let any = server
        .engine
        .listen(SocketAddr::from(([0, 0, 0, 0], 7001)))
        .await
        .unwrap();
    assert_eq!(any.local_addr().port(), 7001);
    let wildcard = client
        .engine
        .dial(SocketAddr::from(([127, 0, 0, 1], 7001)), dial_opts())
        .await
        .expect("dial a wildcard listener");
    drop(wildcard);

    let conn = client
        .engine
        .dial(a.local_addr(), dial_opts())
        .await
        .unwrap();
    let srv = within("accept", SLACK, a.accept()).await.unwrap();
    assert_eq!(conn.info().engine, EngineKind::Memory);
    assert_eq!(srv.info().engine, EngineKind::Memory);
    assert_eq!(conn.info().peer_addr, a.local_addr());
    assert_eq!(srv.info().peer_addr, conn.info().local_addr);
    assert_eq!(srv.info().local_addr, a.local_addr());
    assert_eq!(conn.info().local_addr.ip().to_string(), "127.0.0.1");

    // The same address twice: AddrInUse, readiness says why.
    let err = expect_err(server.engine.listen(a.local_addr()).await, "rebind");
    match &err {
        TransportError::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        other => panic!("expected Io(AddrInUse), got {other:?}"),
    }
    assert!(matches!(
        server.engine.readiness(),
        ReadyState::NotReady {
            reason: "bind_failed"
        }
    ));
    // Unix socket paths are not served.
    let err = expect_err(
        server
            .engine
            .listen(ron_transport::ListenTarget::Unix("/tmp/x".into()))
            .await,
        "unix",
    );
    assert_eq!(err.kind(), "unsupported");
    drop((conn, srv, b, any));
}

/// `with_source_ip`: the listening side sees the dialer's address; per-peer caps key on it,
/// and a refused dial is counted on both sides with the same reason as on sockets.
async fn source_ip_keys_per_peer_caps() {
    let net = MemoryNetwork::new();
    let mut scfg = base(Backend::Tcp);
    scfg.per_peer_max_conns = 1;
    let server = side_on(&net, scfg, None);
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let from = |last: u8| {
        let s = side_on(&net, base(Backend::Tcp), None);
        Side {
            engine: s.engine.with_source_ip(IpAddr::from([127, 0, 0, last])),
            metrics: s.metrics,
        }
    };
    let c1 = from(7);
    let _a = c1.engine.dial(addr, dial_opts()).await.unwrap();
    let a_srv = within("accept", SLACK, listener.accept()).await.unwrap();
    assert_eq!(a_srv.info().peer_addr.ip().to_string(), "127.0.0.7");
    let mut b = c1.engine.dial(addr, dial_opts()).await.unwrap();
    let c2 = from(8);
    let _c = c2.engine.dial(addr, dial_opts()).await.unwrap();
    let c_srv = within("accept", SLACK, listener.accept()).await.unwrap();
    assert_eq!(c_srv.info().peer_addr.ip().to_string(), "127.0.0.8");
    // B's server side was refused at accept: the dialer sees its connection end.
    match within("B sees the close", SLACK, b.recv()).await {
        Ok(None) | Err(_) => {}
        Ok(Some(f)) => panic!("unexpected frame of {} bytes", f.len()),
    }
    assert_eq!(rejected(&server.metrics, RejectReason::PeerLimit), 1);
}

// ---------------------------------------------------------------- virtual clock

/// A 30 s idle timeout under a paused tokio clock fires at once in wall-clock time, at 30 s of
/// virtual time.
#[tokio::test(start_paused = true)]
async fn virtual_clock_idle_timeout_30s() {
    let wall = Instant::now();
    let net = MemoryNetwork::new();
    let mut scfg = base(Backend::Tcp);
    scfg.idle_timeout = Duration::from_secs(30);
    let server = side_on(&net, scfg, None);
    let client = side_on(&net, base(Backend::Tcp), None);
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let conn = client
        .engine
        .dial(listener.local_addr(), dial_opts())
        .await
        .unwrap();
    let mut srv = listener.accept().await.unwrap();
    conn.send(payload(10, 1)).await.unwrap();
    assert_eq!(srv.recv().await.unwrap().unwrap(), payload(10, 1));

    let virt = tokio::time::Instant::now();
    let err = srv.recv().await.unwrap_err();
    let virtual_took = virt.elapsed();
    assert_timeout(&err, TimeoutOp::Idle);
    assert!(
        virtual_took >= Duration::from_secs(30),
        "idle fired early in virtual time: {virtual_took:?}"
    );
    assert!(
        virtual_took < Duration::from_secs(31),
        "idle fired late in virtual time: {virtual_took:?}"
    );
    assert_eq!(rejected(&server.metrics, RejectReason::Timeout), 1);
    println!(
        "30 s idle timeout: {virtual_took:?} virtual, {:?} wall",
        wall.elapsed()
    );
    assert!(
        wall.elapsed() < Duration::from_secs(25),
        "the paused clock did not drive the idle timeout"
    );
    drop(conn);
}

/// Read and dial timeouts run on the paused clock too (a partition blackholes the dial).
#[tokio::test(start_paused = true)]
async fn virtual_clock_read_and_dial_timeouts() {
    let net = MemoryNetwork::new();
    let mut scfg = base(Backend::Tcp);
    scfg.read_timeout = Duration::from_secs(20);
    let server = side_on(&net, scfg, None);
    let client = side_on(&net, base(Backend::Tcp), None);
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let mut raw = net.connect(addr).await.unwrap();
    let mut srv = listener.accept().await.unwrap();
    raw.write_all(&[0, 0, 0, 10, 1]).await.unwrap();
    let virt = tokio::time::Instant::now();
    let err = srv.recv().await.unwrap_err();
    assert_timeout(&err, TimeoutOp::Read);
    let took = virt.elapsed();
    assert!(
        took >= Duration::from_secs(20) && took < Duration::from_secs(21),
        "{took:?}"
    );

    net.partition();
    let virt = tokio::time::Instant::now();
    let opts = DialOptions {
        deadline: Duration::from_secs(60),
        ..DialOptions::default()
    };
    let err = expect_err(client.engine.dial(addr, opts).await, "dial");
    assert_timeout(&err, TimeoutOp::Dial);
    assert!(virt.elapsed() >= Duration::from_secs(60));
    assert_eq!(rejected(&client.metrics, RejectReason::Timeout), 1);
}

/// The frame written by a sender task on one runtime thread arrives through the in-process
/// pipe intact at 1 MiB, with the same byte accounting as on sockets (a smoke test of the
/// `FrameSender` path on the memory engine).
#[test]
fn sender_handle_moves_large_frames() {
    run_multi_thread(async {
        let net = MemoryNetwork::new();
        let server = side_on(&net, base(Backend::Tcp), None);
        let client = side_on(&net, base(Backend::Tcp), None);
        let mut listener = server.engine.listen(loopback()).await.unwrap();
        let conn = client
            .engine
            .dial(listener.local_addr(), dial_opts())
            .await
            .unwrap();
        let mut srv = listener.accept().await.unwrap();
        let tx = conn.sender();
        let big = payload(1 << 20, 3);
        let sent = big.clone();
        tokio::spawn(async move { tx.send(sent).await.unwrap() })
            .await
            .unwrap();
        assert_eq!(recv_frame(&mut srv).await, big);
        assert_eq!(snap(&server.metrics, Backend::Tcp).bytes_in, 4 + (1 << 20));
        drop(conn);
    });
}
