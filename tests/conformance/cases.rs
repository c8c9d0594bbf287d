//! The conformance cases. Each is `async fn case<T: EngineUnderTest>()`, run by the
//! `conformance_suite!` macro on both schedulers. Loopback only; short timeouts; generous
//! upper bounds on elapsed time (the machine is shared and loaded): lower bounds check that a
//! deadline was not cut short, upper bounds only that it fired at all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use ron_transport::config::Backend;
use ron_transport::engine::{DialOptions, DialTarget};
use ron_transport::metrics::PqLabel;
use ron_transport::{
    Config, Conn, Engine, FrameSender, Listener, PqMode, ReadyState, RejectReason, TimeoutOp,
    TransportError, TransportHealth, TransportMetrics, ValidConfig,
};

use super::{raw_connect, raw_stalled, skip_without_sockets, EngineUnderTest, TlsFixture};
use crate::util::*;

/// Upper bound for "it happens at all" waits.
const SLACK: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- helpers

fn base(backend: Backend) -> Config {
    let mut c = Config::default();
    c.backend = effective(backend);
    c.bind_addr = Some(loopback());
    c
}

fn valid(c: Config) -> ValidConfig {
    c.validate().expect("test config is valid")
}

struct Side<T: EngineUnderTest> {
    engine: T::E,
    metrics: Arc<TransportMetrics>,
}

fn side<T: EngineUnderTest>(cfg: Config, tls: Option<TlsFixture>) -> Side<T> {
    let metrics = TransportMetrics::new();
    let engine = T::build(valid(cfg), tls, metrics.clone());
    Side { engine, metrics }
}

/// Default dial options with a generous deadline.
fn dial_opts() -> DialOptions {
    DialOptions {
        deadline: Duration::from_secs(5),
        ..DialOptions::default()
    }
}

/// Serves `listener` through [`Engine::serve`] with a handler that forwards every connection
/// into a channel: the test then drives the server side from its own runtime (on uring this
/// moves the connection off its shard, so the shared path of the connection is exercised).
fn spawn_acceptor<E: Engine>(
    engine: &E,
    listener: E::Listener,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<E::Conn>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let serving = engine.serve(listener, move |conn: E::Conn| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(conn);
        }
    });
    let task = tokio::spawn(async move {
        let _ = serving.await;
    });
    (rx, task)
}

async fn recv_frame<C: Conn>(conn: &mut C) -> Bytes {
    within("recv a frame", SLACK, conn.recv())
        .await
        .expect("recv ok")
        .expect("a frame, not EOF")
}

/// The error of a result whose success type has no `Debug`.
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

/// The peer address a connection to `target` reports: the address itself, or for a Unix
/// socket the listener's uid address (this process's uid).
fn peer_of(target: &DialTarget) -> SocketAddr {
    match target.addr() {
        Some(a) => a,
        None => ron_transport::engine::uds::uid_addr(ron_transport::engine::uds::current_uid()),
    }
}

/// TLS cases do not apply to Unix sockets (TLS over UDS is not offered).
fn skip_tls<T: EngineUnderTest>(case: &str) -> bool {
    super::skip_on_uds::<T>(case, "TLS over a Unix socket is not offered")
}

/// Queues copies of `frame` with `try_send` until `Busy`; returns how many were queued.
async fn fill_until_busy<C: Conn>(conn: &C, frame: &Bytes) -> usize {
    let mut queued = 0;
    for i in 0..200_000 {
        match conn.try_send(frame.clone()) {
            Ok(()) => queued += 1,
            Err(TransportError::Busy) => return queued,
            Err(e) => panic!("unexpected try_send error after {queued} frames: {e:?}"),
        }
        if i % 256 == 255 {
            // Let the writer move what the socket takes.
            tokio::task::yield_now().await;
        }
    }
    panic!("the writer inbox never filled");
}

// ---------------------------------------------------------------- echo

async fn echo<T: EngineUnderTest>(backend: Backend) {
    let tls = (backend == Backend::Tls).then(|| TlsFixture::new(PqMode::Off));
    let server = side::<T>(base(backend), tls.clone());
    let client = side::<T>(base(backend), tls);
    let listener = server
        .engine
        .listen(T::listen_target())
        .await
        .expect("listen");
    let addr = listener.dial_target();
    let echo_task = spawn_echo(&server.engine, listener);

    let mut conn = client
        .engine
        .dial(addr.clone(), dial_opts())
        .await
        .expect("dial");
    assert_eq!(conn.info().backend, effective(backend));
    assert_eq!(conn.info().peer_addr, peer_of(&addr));
    assert_eq!(conn.info().engine, client.engine.kind());

    // Various sizes, one at a time (including 0, header-boundary and the 1 MiB ceiling).
    let sizes = [
        0usize,
        1,
        3,
        4,
        5,
        100,
        4095,
        4096,
        4097,
        16384,
        65535,
        65536,
        65537,
        300_000,
        1 << 20,
    ];
    let mut wire = 0u64;
    for (i, &n) in sizes.iter().enumerate() {
        let p = payload(n, i as u8);
        conn.send(p.clone()).await.expect("send");
        assert_eq!(recv_frame(&mut conn).await, p, "echo of {n} bytes");
        wire += 4 + n as u64;
    }

    // Many frames, pipelined: a sender task keeps the inbox busy while this task receives.
    let count = 3000usize;
    let frames: Vec<Bytes> = (0..count)
        .map(|i| payload((i * 37) % 2000, (i % 251) as u8))
        .collect();
    wire += frames.iter().map(|f| 4 + f.len() as u64).sum::<u64>();
    let sender = conn.sender();
    let to_send = frames.clone();
    let send_task = tokio::spawn(async move {
        for f in to_send {
            sender.send(f).await.expect("pipelined send");
        }
    });
    for (i, want) in frames.iter().enumerate() {
        let got = recv_frame(&mut conn).await;
        assert_eq!(&got, want, "pipelined frame {i}");
    }
    send_task.await.unwrap();

    within("close", SLACK, conn.close()).await.expect("close");
    wait_until("client conn_inflight back to 0", SLACK, || {
        snap(&client.metrics, backend).inflight == 0
    })
    .await;
    wait_until("server conn_inflight back to 0", SLACK, || {
        snap(&server.metrics, backend).inflight == 0
    })
    .await;

    let s = snap(&server.metrics, backend);
    let c = snap(&client.metrics, backend);
    assert_eq!(s.accepts, 1);
    assert_eq!((c.dials_ok, c.dials_err), (1, 0));
    assert_eq!(s.hs_off, 1, "server handshake_latency observed once");
    assert_eq!(c.hs_off, 1, "client handshake_latency observed once");
    assert_eq!((s.bytes_in, s.bytes_out), (wire, wire), "server bytes");
    assert_eq!((c.bytes_in, c.bytes_out), (wire, wire), "client bytes");
    assert!(s.reads > 0 && s.writes > 0 && c.reads > 0 && c.writes > 0);
    if backend == Backend::Tls {
        assert_eq!(s.tls_failures + c.tls_failures, 0);
        assert_eq!(pq_handshakes(&server.metrics, Backend::Tls, "off", "ok"), 1);
        assert_eq!(pq_handshakes(&client.metrics, Backend::Tls, "off", "ok"), 1);
    }
    for r in RejectReason::ALL {
        assert_eq!(rejected(&server.metrics, r), 0, "server rejects {r}");
        assert_eq!(rejected(&client.metrics, r), 0, "client rejects {r}");
    }
    assert_eq!(inbox_depth(&client.metrics), 0);
    assert_eq!(inbox_depth(&server.metrics), 0);
    echo_task.abort();
}

pub async fn echo_tcp<T: EngineUnderTest>() {
    echo::<T>(Backend::Tcp).await
}

pub async fn echo_tls<T: EngineUnderTest>() {
    if skip_tls::<T>("echo_tls") {
        return;
    }
    echo::<T>(Backend::Tls).await
}

// ---------------------------------------------------------------- frame ceiling

pub async fn frame_ceiling<T: EngineUnderTest>() {
    const MAX: usize = 64 * 1024;
    let mut scfg = base(Backend::Tcp);
    scfg.max_frame_bytes = MAX as u64;
    let server = side::<T>(scfg, None);
    let client = side::<T>(base(Backend::Tcp), None);
    let mut listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let mut conn = client.engine.dial(addr.clone(), dial_opts()).await.unwrap();
    let mut srv = within("accept", SLACK, listener.accept()).await.unwrap();

    // Send side: above the ceiling is refused without touching the connection.
    let err = srv.try_send(payload(MAX + 1, 1)).unwrap_err();
    assert!(
        matches!(err, TransportError::TooLarge { len, max } if len == MAX as u64 + 1 && max == MAX as u64),
        "{err:?}"
    );
    let err = srv.send(payload(MAX + 1, 1)).await.unwrap_err();
    assert_eq!(err.kind(), "too_large");
    srv.send(payload(10, 2)).await.expect("still usable");
    assert_eq!(recv_frame(&mut conn).await, payload(10, 2));

    // Receive side: exactly the ceiling passes.
    conn.send(payload(MAX, 3)).await.unwrap();
    assert_eq!(recv_frame(&mut srv).await, payload(MAX, 3));
    let before = rejected(&server.metrics, RejectReason::TooLarge);

    // One byte more: TooLarge, counted once, connection closed.
    conn.send(payload(MAX + 1, 4)).await.unwrap();
    let err = within("recv too large", SLACK, srv.recv())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::TooLarge { len, max } if len == MAX as u64 + 1 && max == MAX as u64),
        "{err:?}"
    );
    assert_eq!(err.reject_reason(), Some(RejectReason::TooLarge));
    assert_eq!(
        rejected(&server.metrics, RejectReason::TooLarge),
        before + 1
    );
    // After the error: IoClosed.
    let again = within("recv after failure", SLACK, srv.recv()).await;
    assert!(matches!(again, Err(TransportError::IoClosed)), "{again:?}");
    // The peer sees the connection end (EOF or reset), never a frame.
    match within("peer sees close", SLACK, conn.recv()).await {
        Ok(None) | Err(_) => {}
        Ok(Some(f)) => panic!("unexpected frame of {} bytes", f.len()),
    }
    wait_until("server conn released", SLACK, || {
        snap(&server.metrics, Backend::Tcp).inflight == 0
    })
    .await;
    assert_eq!(
        rejected(&server.metrics, RejectReason::TooLarge),
        before + 1
    );
    drop(srv);
}

// ---------------------------------------------------------------- timeouts

pub async fn read_timeout<T: EngineUnderTest>() {
    if skip_without_sockets::<T>(
        "read_timeout",
        "needs a kernel TCP socket as the misbehaving peer",
    ) {
        return;
    }

    let mut cfg = base(Backend::Tcp);
    cfg.read_timeout = Duration::from_millis(300);
    let server = side::<T>(cfg, None);
    let mut listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let mut raw = raw_connect(&addr).await;
    let mut srv = within("accept", SLACK, listener.accept()).await.unwrap();

    // Silence *between* frames is not a read timeout.
    raw.write_all(&wire_frame(b"one")).await.unwrap();
    assert_eq!(&recv_frame(&mut srv).await[..], b"one");
    tokio::time::sleep(Duration::from_millis(700)).await;
    raw.write_all(&wire_frame(b"two")).await.unwrap();
    assert_eq!(&recv_frame(&mut srv).await[..], b"two");
    assert_eq!(rejected(&server.metrics, RejectReason::Timeout), 0);

    // Half a frame, then nothing: slow-loris.
    let start = Instant::now();
    raw.write_all(&[0, 0, 0, 10, b'h', b'a']).await.unwrap();
    let err = within("read timeout", SLACK, srv.recv()).await.unwrap_err();
    let took = start.elapsed();
    println!("read timeout fired after {took:?} (read_timeout = 300ms)");
    assert_timeout(&err, TimeoutOp::Read);
    assert!(took >= Duration::from_millis(250), "fired early: {took:?}");
    assert_eq!(rejected(&server.metrics, RejectReason::Timeout), 1);
    assert!(matches!(srv.recv().await, Err(TransportError::IoClosed)));
    let (_, ended) = read_to_end_or_reset(&mut raw, SLACK).await;
    assert!(ended, "peer sees the connection closed");
    wait_until("released", SLACK, || {
        snap(&server.metrics, Backend::Tcp).inflight == 0
    })
    .await;
}

pub async fn write_timeout<T: EngineUnderTest>() {
    if skip_without_sockets::<T>(
        "write_timeout",
        "needs a kernel TCP socket with a small receive buffer that never reads",
    ) {
        return;
    }

    let mut cfg = base(Backend::Tcp);
    cfg.write_timeout = Duration::from_millis(300);
    let server = side::<T>(cfg, None);
    let mut listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let _raw = raw_stalled(&addr).await;
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
    println!(
        "write timeout after {sent} frames of 64 KiB, {:?}",
        start.elapsed()
    );
    assert_timeout(&err, TimeoutOp::Write);
    assert_eq!(
        rejected(&server.metrics, RejectReason::Timeout),
        1,
        "counted exactly once"
    );
    // recv reports the terminal error once, then IoClosed.
    let first = within("recv after failure", SLACK, srv.recv()).await;
    match first {
        Err(e) => assert_timeout(&e, TimeoutOp::Write),
        Ok(v) => panic!("expected the write timeout, got {v:?}"),
    }
    assert!(matches!(srv.recv().await, Err(TransportError::IoClosed)));
    assert!(srv.try_send(Bytes::from_static(b"x")).is_err());
    wait_until("released", SLACK, || {
        snap(&server.metrics, Backend::Tcp).inflight == 0
    })
    .await;
    assert_eq!(
        inbox_depth(&server.metrics),
        0,
        "dropped frames leave the gauge"
    );
}

pub async fn idle_timeout<T: EngineUnderTest>() {
    if skip_without_sockets::<T>(
        "idle_timeout",
        "needs a kernel TCP socket as the misbehaving peer",
    ) {
        return;
    }

    let mut cfg = base(Backend::Tcp);
    cfg.idle_timeout = Duration::from_secs(1);
    let server = side::<T>(cfg, None);
    let mut listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let mut raw = raw_connect(&addr).await;
    let mut srv = within("accept", SLACK, listener.accept()).await.unwrap();
    let start = Instant::now();

    // Activity at ~600 ms pushes the idle deadline out.
    tokio::time::sleep(Duration::from_millis(600)).await;
    raw.write_all(&wire_frame(b"ping")).await.unwrap();
    assert_eq!(&recv_frame(&mut srv).await[..], b"ping");
    let err = within("idle timeout", SLACK, srv.recv()).await.unwrap_err();
    let took = start.elapsed();
    println!("idle timeout fired after {took:?} (idle 1s, last activity at ~600ms)");
    assert_timeout(&err, TimeoutOp::Idle);
    assert!(
        took >= Duration::from_millis(1450),
        "idle deadline not reset by activity: {took:?}"
    );
    assert_eq!(rejected(&server.metrics, RejectReason::Timeout), 1);
    let (_, ended) = read_to_end_or_reset(&mut raw, SLACK).await;
    assert!(ended);
    wait_until("released", SLACK, || {
        snap(&server.metrics, Backend::Tcp).inflight == 0
    })
    .await;
}

pub async fn dial_timeout<T: EngineUnderTest>() {
    if super::skip_on_uds::<T>(
        "dial_timeout",
        "a Unix connect to a full backlog fails at once (EAGAIN) instead of hanging",
    ) {
        return;
    }
    if skip_without_sockets::<T>(
        "dial_timeout",
        "needs a kernel listen backlog that drops SYNs",
    ) {
        return;
    }

    use socket2::{Domain, Socket, Type};
    // A listener with backlog 0 that never accepts: once its queue is full, SYNs are dropped.
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..64 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("filler connect failed: {e}"),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "backlog never filled");

    let client = side::<T>(base(Backend::Tcp), None);
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
    println!("dial timeout after {took:?} (deadline 300ms)");
    assert_timeout(&err, TimeoutOp::Dial);
    assert!(took >= Duration::from_millis(250), "fired early: {took:?}");
    let c = snap(&client.metrics, Backend::Tcp);
    assert_eq!((c.dials_ok, c.dials_err), (0, 1));
    assert_eq!(c.inflight, 0);
    assert_eq!(rejected(&client.metrics, RejectReason::Timeout), 1);
    drop(fillers);
}

// ---------------------------------------------------------------- caps

async fn max_conns<T: EngineUnderTest>(backend: Backend) {
    let case = if backend == Backend::Tls {
        "max_conns_tls"
    } else {
        "max_conns_tcp"
    };
    if skip_without_sockets::<T>(case, "needs a kernel TCP socket as the misbehaving peer") {
        return;
    }

    let tls = (backend == Backend::Tls).then(|| TlsFixture::new(PqMode::Off));
    let mut scfg = base(backend);
    scfg.max_conns = 1;
    let server = side::<T>(scfg, tls.clone());
    let client = side::<T>(base(backend), tls);
    let listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let (mut accepted, acceptor) = spawn_acceptor(&server.engine, listener);

    let a = client
        .engine
        .dial(addr.clone(), dial_opts())
        .await
        .expect("first dial");
    let a_srv = within("accept A", SLACK, accepted.recv()).await.unwrap();
    let before = snap(&server.metrics, backend);
    assert_eq!(before.accepts, 1);
    let handshakes_before = before.hs_off + before.hs_hybrid;

    // Over the cap: refused at accept, before any handshake, socket closed.
    let mut b = raw_connect(&addr).await;
    if backend == Backend::Tls {
        // A ClientHello-ish byte; the server must not answer with a handshake.
        let _ = b.write_all(&[0x16, 0x03, 0x01]).await;
    }
    let (got, ended) = read_to_end_or_reset(&mut b, SLACK).await;
    assert!(ended, "refused peer is closed");
    assert_eq!(got, 0, "refused peer gets no handshake bytes");
    wait_until("peer_limit counted", SLACK, || {
        rejected(&server.metrics, RejectReason::PeerLimit) == 1
    })
    .await;
    let after = snap(&server.metrics, backend);
    assert_eq!(
        after.accepts, 1,
        "refused peer is not an accepted connection"
    );
    assert_eq!(
        after.hs_off + after.hs_hybrid,
        handshakes_before,
        "no handshake spent on the refused peer"
    );
    assert_eq!(after.tls_failures, 0);
    assert_eq!(rejected(&server.metrics, RejectReason::Tls), 0);
    assert!(
        accepted.try_recv().is_err(),
        "refused peer never reaches accept"
    );

    // Releasing A frees the slot.
    drop(a_srv);
    within("close A", SLACK, a.close()).await.ok();
    wait_until("slot released", SLACK, || {
        snap(&server.metrics, backend).inflight == 0
    })
    .await;
    let c = client
        .engine
        .dial(addr.clone(), dial_opts())
        .await
        .expect("dial after release");
    let _c_srv = within("accept C", SLACK, accepted.recv()).await.unwrap();
    assert_eq!(snap(&server.metrics, backend).accepts, 2);
    drop(c);
    acceptor.abort();
}

pub async fn max_conns_tcp<T: EngineUnderTest>() {
    max_conns::<T>(Backend::Tcp).await
}

pub async fn max_conns_tls<T: EngineUnderTest>() {
    if skip_tls::<T>("max_conns_tls") {
        return;
    }
    max_conns::<T>(Backend::Tls).await
}

pub async fn per_peer_cap<T: EngineUnderTest>() {
    if skip_without_sockets::<T>(
        "per_peer_cap",
        "needs raw kernel TCP sockets bound to 127.0.0.x",
    ) {
        return;
    }

    let mut scfg = base(Backend::Tcp);
    scfg.per_peer_max_conns = 1;
    let server = side::<T>(scfg, None);
    let on_uds = T::listen_target().unix_path().is_some();
    let listener = if on_uds {
        server.engine.listen(T::listen_target()).await.unwrap()
    } else {
        server
            .engine
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap()
    };
    let target = listener.dial_target();
    let (mut accepted, acceptor) = spawn_acceptor(&server.engine, listener);
    if on_uds {
        // Every connection of one uid shares one admission key: the second is refused.
        let _a = raw_connect(&target).await;
        let a_srv = within("accept A", SLACK, accepted.recv()).await.unwrap();
        assert_eq!(a_srv.info().peer_addr, peer_of(&target));
        let mut b = raw_connect(&target).await;
        let (_, ended) = read_to_end_or_reset(&mut b, SLACK).await;
        assert!(ended, "second connection from the same uid is closed");
        wait_until("peer_limit counted", SLACK, || {
            rejected(&server.metrics, RejectReason::PeerLimit) == 1
        })
        .await;
        assert_eq!(snap(&server.metrics, Backend::Tcp).accepts, 1);
        println!(
            "SKIPPED per_peer_cap (another peer admitted): needs a second uid (tests/uds.rs \
             covers other uids)"
        );
        acceptor.abort();
        return;
    }
    let addr = target.addr().expect("tcp listener");

    let _a = raw_connect_from([127, 0, 0, 1], addr).await;
    let a_srv = within("accept A", SLACK, accepted.recv()).await.unwrap();
    assert_eq!(a_srv.info().peer_addr.ip().to_string(), "127.0.0.1");

    // Same peer again: refused.
    let mut b = raw_connect_from([127, 0, 0, 1], addr).await;
    let (_, ended) = read_to_end_or_reset(&mut b, SLACK).await;
    assert!(ended, "second connection from the same peer is closed");
    wait_until("peer_limit counted", SLACK, || {
        rejected(&server.metrics, RejectReason::PeerLimit) == 1
    })
    .await;

    // Another peer address is admitted.
    let _c = raw_connect_from([127, 0, 0, 2], addr).await;
    let c_srv = within("accept C", SLACK, accepted.recv()).await.unwrap();
    assert_eq!(c_srv.info().peer_addr.ip().to_string(), "127.0.0.2");
    assert_eq!(snap(&server.metrics, Backend::Tcp).accepts, 2);
    assert_eq!(rejected(&server.metrics, RejectReason::PeerLimit), 1);
    acceptor.abort();
}

// ---------------------------------------------------------------- rate limits

pub async fn egress_rate<T: EngineUnderTest>() {
    const RATE: u64 = 256 * 1024;
    const FRAME: usize = 4092; // 4096 bytes on the wire
    const FRAMES: usize = 160; // 640 KiB
    let mut scfg = base(Backend::Tcp);
    scfg.per_conn_bytes_per_sec = RATE;
    scfg.max_frame_bytes = 64 * 1024;
    scfg.chunk_bytes = 4096;
    let server = side::<T>(scfg, None);
    let client = side::<T>(base(Backend::Tcp), None);
    let mut listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let mut conn = client.engine.dial(addr.clone(), dial_opts()).await.unwrap();
    let srv = within("accept", SLACK, listener.accept()).await.unwrap();

    for i in 0..FRAMES {
        srv.send(payload(FRAME, i as u8)).await.expect("queue");
    }
    // While the writer is being paced, the egress buckets are in debt: a non-waiting send of
    // a frame close to the burst size is refused. (If the machine stalled the writer long
    // enough to refill the bucket, the probe is accepted and arrives after the others.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    let probe = payload(60_000, 99);
    let mut accepted_probes = 0;
    let mut refused = false;
    for _ in 0..50 {
        match srv.try_send(probe.clone()) {
            Err(TransportError::RateLimited) => {
                refused = true;
                break;
            }
            Ok(()) => accepted_probes += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(refused, "try_send never refused while paced");
    assert!(rejected(&server.metrics, RejectReason::RateLimited) >= 1);

    let mut marks = Vec::with_capacity(FRAMES);
    for i in 0..FRAMES {
        let f = recv_frame(&mut conn).await;
        assert_eq!(f, payload(FRAME, i as u8));
        marks.push(Instant::now());
    }
    // Steady state, past the burst (first 128 KiB): wire bytes over time.
    let from = 32; // 128 KiB
    let bytes = ((FRAMES - 1 - from) * (FRAME + 4)) as f64;
    let secs = marks[FRAMES - 1].duration_since(marks[from]).as_secs_f64();
    let measured = bytes / secs;
    println!(
        "egress pacing: {measured:.0} B/s over {secs:.2}s (target {RATE} B/s, {:+.1}%)",
        (measured / RATE as f64 - 1.0) * 100.0
    );
    assert!(secs >= 1.0, "measured over at least one second");
    assert!(
        (measured - RATE as f64).abs() <= 0.2 * RATE as f64,
        "pacing off by more than 20%: {measured:.0} B/s"
    );
    for _ in 0..accepted_probes {
        assert_eq!(recv_frame(&mut conn).await, probe);
    }
}

// ---------------------------------------------------------------- TLS

pub async fn tls_wrong_ca<T: EngineUnderTest>() {
    if skip_tls::<T>("tls_wrong_ca") {
        return;
    }
    let fx = TlsFixture::wrong_ca();
    let server = side::<T>(base(Backend::Tls), Some(fx.clone()));
    let client = side::<T>(base(Backend::Tls), Some(fx));
    let listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let echo_task = spawn_echo(&server.engine, listener);

    let err = expect_err(
        within("dial", SLACK, client.engine.dial(addr.clone(), dial_opts())).await,
        "dial with the wrong CA",
    );
    assert!(matches!(err, TransportError::Tls { .. }), "{err:?}");
    assert_eq!(err.kind(), "tls");
    assert_eq!(err.reject_reason(), Some(RejectReason::Tls));
    let c = snap(&client.metrics, Backend::Tls);
    assert_eq!((c.dials_ok, c.dials_err), (0, 1));
    assert_eq!(c.tls_failures, 1);
    assert_eq!(c.hs_off + c.hs_hybrid, 0);
    assert_eq!(rejected(&client.metrics, RejectReason::Tls), 1);
    assert_eq!(
        pq_handshakes(&client.metrics, Backend::Tls, "off", "fail"),
        1
    );

    // The server sees the client's alert as a failed handshake too.
    wait_until("server counts the failure", SLACK, || {
        snap(&server.metrics, Backend::Tls).tls_failures == 1
    })
    .await;
    assert_eq!(rejected(&server.metrics, RejectReason::Tls), 1);
    let s = snap(&server.metrics, Backend::Tls);
    assert_eq!(s.hs_off + s.hs_hybrid, 0);
    wait_until("nothing in flight", SLACK, || {
        snap(&server.metrics, Backend::Tls).inflight == 0
    })
    .await;
    echo_task.abort();
}

pub async fn tls_handshake_timeout<T: EngineUnderTest>() {
    if skip_tls::<T>("tls_handshake_timeout") {
        return;
    }
    if skip_without_sockets::<T>(
        "tls_handshake_timeout",
        "needs a kernel TCP socket as the misbehaving peer",
    ) {
        return;
    }

    let mut scfg = base(Backend::Tls);
    scfg.read_timeout = Duration::from_millis(300);
    let server = side::<T>(scfg, Some(TlsFixture::new(PqMode::Off)));
    let listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let echo_task = spawn_echo(&server.engine, listener);

    // Connects, never sends a ClientHello.
    let mut raw = raw_connect(&addr).await;
    let start = Instant::now();
    let (_, ended) = read_to_end_or_reset(&mut raw, SLACK).await;
    let took = start.elapsed();
    println!("handshake timeout closed the socket after {took:?}");
    assert!(ended);
    assert!(took >= Duration::from_millis(250), "{took:?}");
    wait_until("timeout counted", SLACK, || {
        rejected(&server.metrics, RejectReason::Timeout) == 1
    })
    .await;
    let s = snap(&server.metrics, Backend::Tls);
    assert_eq!(s.accepts, 1);
    assert_eq!(
        s.tls_failures, 0,
        "a stalled handshake is a timeout, not a TLS failure"
    );
    assert_eq!(s.hs_off + s.hs_hybrid, 0);
    assert_eq!(s.inflight, 0);
    echo_task.abort();
}

pub async fn pq_hybrid<T: EngineUnderTest>() {
    if skip_tls::<T>("pq_hybrid") {
        return;
    }
    if super::skip_connectionless::<T>(
        "pq_hybrid",
        "quinn does not expose the negotiated key-exchange group (pq label = configured mode)",
    ) {
        return;
    }
    // Both sides ask for hybrid: X25519MLKEM768 is negotiated.
    let mut scfg = base(Backend::Tls);
    scfg.pq_mode = PqMode::Hybrid;
    let mut ccfg = base(Backend::Tls);
    ccfg.pq_mode = PqMode::Hybrid;
    let fx = TlsFixture::new(PqMode::Hybrid);
    let server = side::<T>(scfg, Some(fx.clone()));
    let client = side::<T>(ccfg, Some(fx));
    let mut listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let (conn, srv) = tokio::join!(client.engine.dial(addr.clone(), dial_opts()), async {
        within("accept", SLACK, listener.accept()).await
    });
    let mut conn = conn.expect("hybrid dial");
    let mut srv = srv.expect("hybrid accept");
    assert_eq!(conn.info().pq, PqLabel::Hybrid);
    assert_eq!(srv.info().pq, PqLabel::Hybrid);
    conn.send(payload(1000, 1)).await.unwrap();
    assert_eq!(recv_frame(&mut srv).await, payload(1000, 1));
    srv.send(payload(1000, 2)).await.unwrap();
    assert_eq!(recv_frame(&mut conn).await, payload(1000, 2));
    let s = snap(&server.metrics, Backend::Tls);
    let c = snap(&client.metrics, Backend::Tls);
    assert_eq!(
        (s.hs_hybrid, s.hs_off),
        (1, 0),
        "server histogram pq=hybrid"
    );
    assert_eq!(
        (c.hs_hybrid, c.hs_off),
        (1, 0),
        "client histogram pq=hybrid"
    );
    assert_eq!(
        pq_handshakes(&server.metrics, Backend::Tls, "hybrid", "ok"),
        1
    );
    assert!(server
        .metrics
        .render()
        .contains("handshake_latency_seconds_count{backend=\"tls\",pq=\"hybrid\"} 1"));

    // Only the server asks: classical fallback, labelled off.
    let fx = TlsFixture::with_modes(PqMode::Hybrid, PqMode::Off);
    let server = side::<T>(base(Backend::Tls), Some(fx.clone()));
    let client = side::<T>(base(Backend::Tls), Some(fx));
    let mut listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let (conn, srv) = tokio::join!(client.engine.dial(addr.clone(), dial_opts()), async {
        within("accept", SLACK, listener.accept()).await
    });
    assert_eq!(conn.expect("classical dial").info().pq, PqLabel::Off);
    assert_eq!(srv.expect("classical accept").info().pq, PqLabel::Off);
    assert_eq!(snap(&server.metrics, Backend::Tls).hs_off, 1);
}

// ---------------------------------------------------------------- backpressure, cancel, close

pub async fn busy_when_inbox_full<T: EngineUnderTest>() {
    if skip_without_sockets::<T>(
        "busy_when_inbox_full",
        "needs a kernel TCP socket with a small receive buffer that never reads",
    ) {
        return;
    }

    let server = side::<T>(base(Backend::Tcp), None);
    let mut listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let _raw = raw_stalled(&addr).await;
    let srv = within("accept", SLACK, listener.accept()).await.unwrap();

    let frame = payload(64 * 1024, 5);
    let queued = fill_until_busy(&srv, &frame).await;
    println!("inbox full after {queued} frames accepted");
    assert!(queued >= ron_transport::engine::WRITER_INBOX_CAPACITY);
    assert_eq!(inbox_dropped(&server.metrics), 1);
    assert_eq!(rejected(&server.metrics, RejectReason::Busy), 1);

    // Busy is not fatal. Once the socket stops taking bytes, the inbox stays exactly full
    // and every further try_send is refused with Busy (each one counted).
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

pub async fn cancel_quiesces<T: EngineUnderTest>() {
    if skip_without_sockets::<T>(
        "cancel_quiesces",
        "needs kernel TCP sockets with small receive buffers that never read",
    ) {
        return;
    }

    const N: usize = 8;
    let server = side::<T>(base(Backend::Tcp), None);
    let client = side::<T>(base(Backend::Tcp), None);
    let mut listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let mut clients = Vec::new();
    let mut conns = Vec::new();
    for i in 0..N {
        if i % 2 == 0 {
            // Half the peers are engine connections that never call recv …
            let c = client.engine.dial(addr.clone(), dial_opts()).await.unwrap();
            clients.push(Box::new(c) as Box<dyn std::any::Any + Send>);
        } else {
            // … half raw sockets with a tiny receive window that never read.
            clients.push(Box::new(raw_stalled(&addr).await));
        }
        conns.push(within("accept", SLACK, listener.accept()).await.unwrap());
    }
    // Every server writer is busy: the peers never read, the inboxes are full.
    let frame = payload(64 * 1024, 7);
    for c in &conns {
        fill_until_busy(c, &frame).await;
    }
    assert!(T::live_tasks(&server.engine) > 0);
    assert_eq!(snap(&server.metrics, Backend::Tcp).inflight, N as i64);

    let start = Instant::now();
    for c in &conns {
        c.cancel();
    }
    let took = wait_until("every per-connection task ended", SLACK, || {
        T::live_tasks(&server.engine) == 0 && snap(&server.metrics, Backend::Tcp).inflight == 0
    })
    .await;
    let took = took.max(start.elapsed());
    println!("cancel quiesced {N} busy connections in {took:?} (spec: <= 100 ms)");
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    assert_eq!(inbox_depth(&server.metrics), 0);
    for mut c in conns {
        c.cancel(); // idempotent
        let first = c.recv().await;
        assert!(matches!(first, Err(TransportError::Cancelled)), "{first:?}");
        assert!(matches!(c.recv().await, Err(TransportError::IoClosed)));
        assert!(c.try_send(Bytes::from_static(b"x")).is_err());
    }
    // Cancelling is not a reject.
    for r in RejectReason::ALL {
        if r != RejectReason::Busy {
            assert_eq!(rejected(&server.metrics, r), 0, "{r}");
        }
    }
    drop(clients);
}

async fn graceful_close<T: EngineUnderTest>(backend: Backend) {
    const FRAMES: usize = 200;
    let tls = (backend == Backend::Tls).then(|| TlsFixture::new(PqMode::Off));
    let server = side::<T>(base(backend), tls.clone());
    let client = side::<T>(base(backend), tls);
    let mut listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let (conn, srv) = tokio::join!(client.engine.dial(addr.clone(), dial_opts()), async {
        within("accept", SLACK, listener.accept()).await
    });
    let mut conn = conn.unwrap();
    let srv = srv.unwrap();

    // Queue everything (the client is not reading yet), then close.
    for i in 0..FRAMES {
        srv.try_send(payload(1024 + i, i as u8)).expect("queue");
    }
    let closing = tokio::spawn(async move { srv.close().await });
    for i in 0..FRAMES {
        assert_eq!(
            recv_frame(&mut conn).await,
            payload(1024 + i, i as u8),
            "frame {i}"
        );
    }
    let end = within("EOF after the last frame", SLACK, conn.recv()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    within("close finishes", SLACK, closing)
        .await
        .unwrap()
        .expect("graceful close");
    wait_until("released", SLACK, || {
        snap(&server.metrics, backend).inflight == 0
    })
    .await;
    let wire: u64 = (0..FRAMES).map(|i| 4 + 1024 + i as u64).sum();
    assert_eq!(snap(&server.metrics, backend).bytes_out, wire);
    assert_eq!(snap(&client.metrics, backend).bytes_in, wire);
    assert_eq!(inbox_depth(&server.metrics), 0);
}

pub async fn graceful_close_tcp<T: EngineUnderTest>() {
    graceful_close::<T>(Backend::Tcp).await
}

pub async fn graceful_close_tls<T: EngineUnderTest>() {
    if skip_tls::<T>("graceful_close_tls") {
        return;
    }
    graceful_close::<T>(Backend::Tls).await
}

// ---------------------------------------------------------------- metrics, shutdown

pub async fn metrics_smoke<T: EngineUnderTest>() {
    let server = side::<T>(base(Backend::Tcp), None);
    let client = side::<T>(base(Backend::Tcp), None);
    assert_eq!(server.engine.readiness(), ReadyState::Ready);
    let listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let echo_task = spawn_echo(&server.engine, listener);

    // A refused dial: counted as err, not a reject.
    let closed: DialTarget = match addr {
        // A path nobody listens on.
        DialTarget::Unix(ref p) => DialTarget::Unix(p.with_extension("closed")),
        _ => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().into()
        }
    };
    if super::skip_connectionless::<T>(
        "metrics_smoke (refused dial)",
        "no kernel refusal on a datagram transport",
    ) {
        drop(closed);
    } else {
        let err = expect_err(
            client.engine.dial(closed, dial_opts()).await,
            "dial a closed port",
        );
        assert_eq!(err.kind(), "io");
    }

    let mut conn = client.engine.dial(addr.clone(), dial_opts()).await.unwrap();
    conn.send(payload(1000, 1)).await.unwrap();
    assert_eq!(recv_frame(&mut conn).await, payload(1000, 1));
    assert_eq!(snap(&client.metrics, Backend::Tcp).inflight, 1);
    wait_until("server inflight 1", SLACK, || {
        snap(&server.metrics, Backend::Tcp).inflight == 1
    })
    .await;
    conn.close().await.unwrap();
    wait_until("inflight 0 on both", SLACK, || {
        snap(&server.metrics, Backend::Tcp).inflight == 0
            && snap(&client.metrics, Backend::Tcp).inflight == 0
    })
    .await;

    let s = snap(&server.metrics, Backend::Tcp);
    let c = snap(&client.metrics, Backend::Tcp);
    assert_eq!(s.accepts, 1);
    let refused = u64::from(!T::connectionless());
    assert_eq!((c.dials_ok, c.dials_err), (1, refused));
    assert_eq!((s.bytes_in, s.bytes_out), (1004, 1004));
    assert_eq!((c.bytes_in, c.bytes_out), (1004, 1004));
    assert_eq!(s.hs_off, 1);
    assert!(tasks_spawned(&server.metrics, "writer") >= 1);
    for r in RejectReason::ALL {
        assert_eq!(rejected(&client.metrics, r), 0, "{r}");
    }
    let text = server.metrics.render();
    let b = effective(Backend::Tcp).as_str();
    assert!(text.contains(&format!("transport_accepts_total{{backend=\"{b}\"}} 1")));
    assert!(text.contains(&format!("conn_inflight{{backend=\"{b}\"}} 0")));
    assert!(text.contains(&format!(
        "handshake_latency_seconds_count{{backend=\"{b}\",pq=\"off\"}} 1"
    )));
    echo_task.abort();
}

pub async fn shutdown_drains_and_aborts<T: EngineUnderTest>() {
    if skip_without_sockets::<T>(
        "shutdown_drains_and_aborts",
        "needs a kernel TCP socket with a small receive buffer that never reads",
    ) {
        return;
    }

    let server = side::<T>(base(Backend::Tcp), None);
    let client = side::<T>(base(Backend::Tcp), None);
    let listener = server.engine.listen(T::listen_target()).await.unwrap();
    let addr = listener.dial_target();
    let (mut accepted, acceptor) = spawn_acceptor(&server.engine, listener);

    // A healthy connection with a little queued output, and a stuck one (peer never reads).
    let mut healthy = client.engine.dial(addr.clone(), dial_opts()).await.unwrap();
    let h_srv = within("accept", SLACK, accepted.recv()).await.unwrap();
    let _stuck_peer = raw_stalled(&addr).await;
    let stuck = within("accept", SLACK, accepted.recv()).await.unwrap();
    for i in 0..10 {
        h_srv.try_send(payload(100, i)).unwrap();
    }
    fill_until_busy(&stuck, &payload(64 * 1024, 1)).await;

    let start = Instant::now();
    let report = within(
        "shutdown",
        SLACK,
        server.engine.shutdown(Duration::from_millis(300)),
    )
    .await;
    println!("shutdown: {report:?} in {:?}", start.elapsed());
    assert_eq!(report.drained, 1);
    assert_eq!(report.aborted, 1);
    assert_eq!(tasks_aborted(&server.metrics, "writer"), 1);
    assert!(matches!(
        server.engine.readiness(),
        ReadyState::NotReady { reason: "shutdown" }
    ));
    // The healthy peer got everything queued before the shutdown, then EOF.
    for i in 0..10 {
        assert_eq!(recv_frame(&mut healthy).await, payload(100, i));
    }
    assert!(matches!(
        within("EOF", SLACK, healthy.recv()).await,
        Ok(None)
    ));
    wait_until("no tasks left", SLACK, || {
        T::live_tasks(&server.engine) == 0
    })
    .await;
    within("accept loop ends", SLACK, acceptor).await.unwrap();
    assert!(server.engine.dial(addr.clone(), dial_opts()).await.is_err());
    drop((h_srv, stuck));
    wait_until("released", SLACK, || {
        snap(&server.metrics, Backend::Tcp).inflight == 0
    })
    .await;
}

// ---------------------------------------------------------------- client side (dials)

/// A plain echo server on `ip` (loopback), with default limits: the dialing side is under test.
async fn echo_server<T: EngineUnderTest>(ip: [u8; 4]) -> (Side<T>, SocketAddr) {
    let server = side::<T>(base(Backend::Tcp), None);
    let listener = server
        .engine
        .listen(SocketAddr::from((ip, 0)))
        .await
        .expect("listen");
    let addr = listener.local_addr();
    spawn_echo(&server.engine, listener);
    (server, addr)
}

async fn echo_once<C: Conn>(conn: &mut C, seed: u8) {
    let p = payload(1000, seed);
    conn.send(p.clone()).await.expect("send");
    assert_eq!(recv_frame(conn).await, p);
}

/// `max_conns` caps outbound connections too: the dial over the cap is refused before any
/// connect (`PeerLimit`, `rejected_total{peer_limit}`, `dials_total{err}`), and a closed
/// connection frees its slot.
pub async fn dial_cap_global<T: EngineUnderTest>() {
    let (_server, addr) = echo_server::<T>([127, 0, 0, 1]).await;
    let mut ccfg = base(Backend::Tcp);
    ccfg.max_conns = 2;
    let client = side::<T>(ccfg, None);
    let mut a = client.engine.dial(addr, dial_opts()).await.expect("dial 1");
    let mut b = client.engine.dial(addr, dial_opts()).await.expect("dial 2");
    let err = expect_err(
        client.engine.dial(addr, dial_opts()).await,
        "dial over the cap",
    );
    assert!(matches!(err, TransportError::PeerLimit), "{err:?}");
    let c = snap(&client.metrics, Backend::Tcp);
    assert_eq!((c.dials_ok, c.dials_err, c.inflight), (2, 1, 2));
    assert_eq!(rejected(&client.metrics, RejectReason::PeerLimit), 1);
    echo_once(&mut a, 1).await;
    echo_once(&mut b, 2).await;
    a.close().await.expect("close");
    wait_until("slot released", SLACK, || {
        snap(&client.metrics, Backend::Tcp).inflight == 1
    })
    .await;
    let mut c3 = client
        .engine
        .dial(addr, dial_opts())
        .await
        .expect("slot free again");
    echo_once(&mut c3, 3).await;
    assert_eq!(rejected(&client.metrics, RejectReason::PeerLimit), 1);
}

/// `per_peer.max_conns` caps outbound connections per destination: a second dial to the same
/// peer is refused, a dial to another peer is not.
pub async fn dial_cap_per_peer<T: EngineUnderTest>() {
    let (_s1, addr1) = echo_server::<T>([127, 0, 0, 1]).await;
    let (_s2, addr2) = echo_server::<T>([127, 0, 0, 2]).await;
    let mut ccfg = base(Backend::Tcp);
    ccfg.per_peer_max_conns = 1;
    let client = side::<T>(ccfg, None);
    let mut a = client
        .engine
        .dial(addr1, dial_opts())
        .await
        .expect("first to peer 1");
    let err = expect_err(
        client.engine.dial(addr1, dial_opts()).await,
        "second to peer 1",
    );
    assert!(matches!(err, TransportError::PeerLimit), "{err:?}");
    let mut b = client
        .engine
        .dial(addr2, dial_opts())
        .await
        .expect("first to peer 2");
    echo_once(&mut a, 1).await;
    echo_once(&mut b, 2).await;
    let c = snap(&client.metrics, Backend::Tcp);
    assert_eq!((c.dials_ok, c.dials_err, c.inflight), (2, 1, 2));
    assert_eq!(rejected(&client.metrics, RejectReason::PeerLimit), 1);
}

/// The per-connection egress bucket paces a dialed connection's writer like an accepted one's
/// (±20 %), and `try_send` is refused with `RateLimited` while it is in debt.
pub async fn dial_pacing<T: EngineUnderTest>() {
    const RATE: u64 = 256 * 1024;
    const FRAME: usize = 4092; // 4096 bytes on the wire
    const FRAMES: usize = 160; // 640 KiB
    let mut scfg = base(Backend::Tcp);
    scfg.max_frame_bytes = 64 * 1024;
    let server = side::<T>(scfg, None);
    let mut listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let mut ccfg = base(Backend::Tcp);
    ccfg.per_conn_bytes_per_sec = RATE;
    ccfg.max_frame_bytes = 64 * 1024;
    ccfg.chunk_bytes = 4096;
    let client = side::<T>(ccfg, None);
    let conn = client.engine.dial(addr, dial_opts()).await.unwrap();
    let mut srv = within("accept", SLACK, listener.accept()).await.unwrap();
    for i in 0..FRAMES {
        conn.send(payload(FRAME, i as u8)).await.expect("queue");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let probe = payload(60_000, 99);
    let mut accepted_probes = 0;
    let mut refused = false;
    for _ in 0..50 {
        match conn.try_send(probe.clone()) {
            Err(TransportError::RateLimited) => {
                refused = true;
                break;
            }
            Ok(()) => accepted_probes += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(refused, "try_send never refused while paced");
    assert!(rejected(&client.metrics, RejectReason::RateLimited) >= 1);
    let mut marks = Vec::with_capacity(FRAMES);
    for i in 0..FRAMES {
        assert_eq!(recv_frame(&mut srv).await, payload(FRAME, i as u8));
        marks.push(Instant::now());
    }
    let from = 32; // past the 128 KiB burst
    let bytes = ((FRAMES - 1 - from) * (FRAME + 4)) as f64;
    let secs = marks[FRAMES - 1].duration_since(marks[from]).as_secs_f64();
    let measured = bytes / secs;
    println!(
        "dial pacing: {measured:.0} B/s over {secs:.2}s (target {RATE} B/s, {:+.1}%)",
        (measured / RATE as f64 - 1.0) * 100.0
    );
    assert!(secs >= 1.0, "measured over at least one second");
    assert!(
        (measured - RATE as f64).abs() <= 0.2 * RATE as f64,
        "pacing off by more than 20%: {measured:.0} B/s"
    );
    for _ in 0..accepted_probes {
        assert_eq!(recv_frame(&mut srv).await, probe);
    }
}

/// A dial to a port nobody listens on fails with an `io` error (connection refused), counts
/// `dials_total{err}` and no reject, and leaves nothing in flight.
pub async fn dial_refused<T: EngineUnderTest>() {
    if super::skip_connectionless::<T>(
        "dial_refused",
        "no kernel refusal on a datagram transport: the dial runs into its deadline",
    ) {
        return;
    }
    let closed = {
        let l = std::net::TcpListener::bind(loopback()).unwrap();
        l.local_addr().unwrap()
    };
    let client = side::<T>(base(Backend::Tcp), None);
    let err = expect_err(
        within("dial", SLACK, client.engine.dial(closed, dial_opts())).await,
        "dial to a closed port",
    );
    assert_eq!(err.kind(), "io", "{err:?}");
    match &err {
        TransportError::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        other => panic!("not an io error: {other:?}"),
    }
    let c = snap(&client.metrics, Backend::Tcp);
    assert_eq!((c.dials_ok, c.dials_err, c.inflight), (0, 1, 0));
    for r in [
        RejectReason::Timeout,
        RejectReason::PeerLimit,
        RejectReason::Tls,
        RejectReason::RateLimited,
    ] {
        assert_eq!(rejected(&client.metrics, r), 0, "{r:?}");
    }
}

/// Dialing by host name: `localhost` is resolved off the async workers and shards, the
/// addresses are tried in order (an IPv6 `::1` first, if the resolver says so, is refused: the
/// server listens on 127.0.0.1 only) and, for TLS, the name is the server name checked against
/// the certificate (the fixture's certificate names `localhost`).
pub async fn dial_by_name<T: EngineUnderTest>() {
    if super::skip_without_sockets::<T>("dial_by_name", "names resolve to kernel addresses") {
        return;
    }
    for backend in [Backend::Tcp, Backend::Tls] {
        let fx = (backend == Backend::Tls).then(|| TlsFixture::new(PqMode::Off));
        let server = side::<T>(base(backend), fx.clone());
        let listener = server.engine.listen(loopback()).await.unwrap();
        let port = listener.local_addr().port();
        spawn_echo(&server.engine, listener);
        let client = side::<T>(base(backend), fx);
        let target = ron_transport::DialTarget::parse(&format!("localhost:{port}")).unwrap();
        assert_eq!(target.host_name(), Some("localhost"));
        let mut conn = within(
            "dial by name",
            SLACK,
            client.engine.dial(target, dial_opts()),
        )
        .await
        .expect("dial localhost");
        assert_eq!(
            conn.info().peer_addr,
            SocketAddr::from(([127, 0, 0, 1], port))
        );
        echo_once(&mut conn, 7).await;
        assert_eq!(snap(&client.metrics, backend).dials_ok, 1);
        // A name that does not resolve fails as an `io` error naming nothing secret.
        let err = expect_err(
            client
                .engine
                .dial(
                    ron_transport::DialTarget::host("no-such-host.invalid", port),
                    DialOptions {
                        deadline: Duration::from_secs(10),
                        ..DialOptions::default()
                    },
                )
                .await,
            "dial an unresolvable name",
        );
        assert!(matches!(err.kind(), "io" | "timeout"), "{err:?}");
    }
}

/// A reload reaches connections that were dialed before it: a lowered frame ceiling (1 MiB →
/// 64 KiB) refuses a send that fitted before (`TooLarge`), and a frame over it arriving from
/// the peer closes the connection with `too_large`; a frame that still fits passes.
pub async fn reload_reaches_dialed<T: EngineUnderTest>() {
    let server = side::<T>(base(Backend::Tcp), None);
    let listener = server.engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let (mut accepted, _acceptor) = spawn_acceptor(&server.engine, listener);
    let handle = ron_transport::ConfigHandle::new(valid(base(Backend::Tcp)));
    let metrics = TransportMetrics::new();
    let client = T::build_with_handle(handle.clone(), None, metrics.clone());
    let mut conn = client.dial(addr, dial_opts()).await.expect("dial");
    let mut srv = within("accept", SLACK, accepted.recv()).await.unwrap();
    conn.send(payload(100_000, 1))
        .await
        .expect("send before the reload");
    assert_eq!(recv_frame(&mut srv).await, payload(100_000, 1));

    let mut lowered = ValidConfig::clone(&handle.load()).into_inner();
    lowered.max_frame_bytes = 64 * 1024;
    handle.reload(lowered).expect("reload");
    let err = expect_err(
        conn.try_send(payload(100_000, 2)),
        "send over the reloaded ceiling",
    );
    assert!(matches!(err, TransportError::TooLarge { .. }), "{err:?}");
    conn.send(payload(60_000, 3))
        .await
        .expect("a frame that fits");
    assert_eq!(recv_frame(&mut srv).await, payload(60_000, 3));

    srv.send(payload(60_000, 4)).await.unwrap();
    assert_eq!(recv_frame(&mut conn).await, payload(60_000, 4));
    srv.send(payload(100_000, 5)).await.unwrap();
    let err = expect_err(
        within("recv over the ceiling", SLACK, conn.recv()).await,
        "recv over the reloaded ceiling",
    );
    assert!(matches!(err, TransportError::TooLarge { .. }), "{err:?}");
    wait_until("too_large counted", SLACK, || {
        rejected(&metrics, RejectReason::TooLarge) >= 1
    })
    .await;
    // Counted once for the refused send and once for the refused frame, nothing more.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rejected(&metrics, RejectReason::TooLarge), 2);
}
