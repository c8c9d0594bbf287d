//! The shard-local serving API of the uring engine (`engine::uring::serve_local`) over
//! loopback: echo without a cross-thread hop, metrics, the frame ceiling (fixed and live) and
//! the connection cap, each asserted through what a peer and a scraper observe.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ron_shard::RuntimeConfig;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::uring::local::Frame;
use ron_transport::engine::uring::{serve_local, LocalCtx, LocalHandler, LocalServer};
use ron_transport::{
    Backend, Config, ConfigHandle, ConnInfo, RejectReason, TransportError, TransportMetrics,
};

/// Close outcomes seen by handlers: `None` = clean, `Some(kind)` = error kind.
type Outcomes = Arc<Mutex<Vec<Option<&'static str>>>>;

struct Echo {
    closed: Outcomes,
    shard_thread: Option<std::thread::ThreadId>,
}

impl LocalHandler for Echo {
    fn on_open(&mut self, _ctx: &mut LocalCtx<'_, '_>) {
        self.shard_thread = Some(std::thread::current().id());
    }

    fn on_frame(&mut self, ctx: &mut LocalCtx<'_, '_>, frame: Frame<'_>) {
        // Every callback of a connection runs on the same (owning) shard thread.
        assert_eq!(self.shard_thread, Some(std::thread::current().id()));
        let _ = ctx.send_frame(&frame);
    }

    fn on_close(&mut self, outcome: Result<(), TransportError>) {
        let k = outcome.err().map(|e| e.kind());
        self.closed.lock().unwrap().push(k);
    }
}

fn start(cfg: Config, metrics: Arc<TransportMetrics>) -> (LocalServer, Outcomes, ConfigHandle) {
    let handle = ConfigHandle::new(cfg.validate().expect("valid config"));
    let shared = EngineSetup::from_handle(handle.clone(), metrics)
        .unwrap()
        .build_shared()
        .unwrap();
    let closed: Outcomes = Arc::default();
    let c2 = closed.clone();
    let server = serve_local(
        shared,
        RuntimeConfig {
            shards: 2,
            pin: false,
            buf_entries: 64,
            ..RuntimeConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
        move |info: &ConnInfo| {
            assert_eq!(info.backend, Backend::Tcp);
            Echo {
                closed: c2.clone(),
                shard_thread: None,
            }
        },
    )
    .expect("serve_local (io_uring usable here)");
    (server, closed, handle)
}

fn frame(n: usize, seed: usize) -> Vec<u8> {
    let mut v = (n as u32).to_be_bytes().to_vec();
    v.extend((0..n).map(|j| ((seed * 31 + j) % 251) as u8));
    v
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Polls `f` until true or 20 s passed (generous: the machine is shared).
fn eventually(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads until EOF or a reset: the server closed the connection.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) => panic!("expected a close, got {e}"),
        }
    }
}

#[test]
fn echo_moves_metrics_and_releases_the_connection() {
    let metrics = TransportMetrics::new();
    let (server, closed, _) = start(Config::default(), metrics.clone());
    let sizes = [0usize, 1, 1000, 16 * 1024 + 3, 70_000, 300_000, 5];
    let mut out = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        out.extend(frame(n, i));
    }
    let mut s = connect(server.local_addr());
    let mut w = s.try_clone().unwrap();
    let expect = out.clone();
    let writer = std::thread::spawn(move || w.write_all(&out).unwrap());
    let mut back = vec![0u8; expect.len()];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == expect, "echo differs");

    let bm = metrics.backend(Backend::Tcp);
    let wire = expect.len() as u64;
    assert_eq!(bm.accepts.get(), 1);
    assert_eq!(bm.conn_inflight.get(), 1);
    assert_eq!(bm.bytes_in.get(), wire);
    assert_eq!(bm.bytes_out.get(), wire);
    assert_eq!(bm.io_read_size.get_sample_count(), sizes.len() as u64);
    assert_eq!(bm.io_write_size.get_sample_count(), sizes.len() as u64);
    assert_eq!(bm.handshake_off.get_sample_count(), 1);
    let text = metrics.render();
    assert!(
        text.contains("transport_accepts_total{backend=\"tcp\"} 1"),
        "{text}"
    );

    drop(s);
    eventually("conn_inflight back to 0", || bm.conn_inflight.get() == 0);
    eventually("handler closed", || closed.lock().unwrap().len() == 1);
    assert_eq!(*closed.lock().unwrap(), vec![None], "clean close");
    assert_eq!(metrics.rejected_count(RejectReason::TooLarge), 0);

    let r = server.shutdown(Duration::from_secs(5));
    assert_eq!(r.aborted, 0);
}

#[test]
fn too_large_frame_is_rejected_and_closed_fixed_and_live_ceiling() {
    let metrics = TransportMetrics::new();
    let mut cfg = Config::default();
    cfg.max_frame_bytes = 128 * 1024;
    let (server, closed, handle) = start(cfg.clone(), metrics.clone());
    let addr = server.local_addr();

    // Above the ceiling the listener was started with: the shard's decoder refuses the
    // header before allocating.
    let mut s = connect(addr);
    s.write_all(&frame(10, 0)).unwrap();
    let mut back = vec![0u8; 14];
    s.read_exact(&mut back).unwrap();
    s.write_all(&(200_000u32).to_be_bytes()).unwrap();
    assert!(closed_by_server(&mut s));
    eventually("one too_large reject", || {
        metrics.rejected_count(RejectReason::TooLarge) == 1
    });
    eventually("handler closed", || closed.lock().unwrap().len() == 1);
    assert_eq!(closed.lock().unwrap()[0], Some("too_large"));

    // A reload lowers the ceiling: enforced per frame on the live config.
    let mut lower = cfg;
    lower.max_frame_bytes = 64 * 1024;
    handle.reload(lower).expect("reload");
    let mut s = connect(addr);
    s.write_all(&frame(60_000, 1)).unwrap();
    let mut back = vec![0u8; 60_004];
    s.read_exact(&mut back).unwrap();
    // The server may reset the socket while the frame is still being written.
    let _ = s.write_all(&frame(100_000, 2));
    assert!(closed_by_server(&mut s));
    eventually("two too_large rejects", || {
        metrics.rejected_count(RejectReason::TooLarge) == 2
    });
    eventually("second handler closed", || {
        closed.lock().unwrap().len() == 2
    });
    assert_eq!(closed.lock().unwrap()[1], Some("too_large"));
    let text = metrics.render();
    assert!(
        text.contains("rejected_total{reason=\"too_large\"} 2"),
        "{text}"
    );
    eventually("conn_inflight back to 0", || {
        metrics.backend(Backend::Tcp).conn_inflight.get() == 0
    });
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn max_conns_cap_rejects_with_peer_limit() {
    let metrics = TransportMetrics::new();
    let mut cfg = Config::default();
    cfg.max_conns = 1;
    let (server, _closed, _) = start(cfg, metrics.clone());
    let addr = server.local_addr();
    let mut first = connect(addr);
    first.write_all(&frame(3, 0)).unwrap();
    let mut back = [0u8; 7];
    first.read_exact(&mut back).unwrap();

    let mut second = connect(addr);
    let _ = second.write_all(&frame(3, 1));
    assert!(closed_by_server(&mut second));
    assert_eq!(metrics.rejected_count(RejectReason::PeerLimit), 1);
    let bm = metrics.backend(Backend::Tcp);
    assert_eq!(bm.accepts.get(), 1, "the refused peer is not an accept");
    assert_eq!(bm.conn_inflight.get(), 1);

    // The first connection is unaffected; once it is gone a new one is admitted.
    first.write_all(&frame(3, 2)).unwrap();
    first.read_exact(&mut back).unwrap();
    drop(first);
    eventually("slot released", || bm.conn_inflight.get() == 0);
    let mut third = connect(addr);
    third.write_all(&frame(3, 3)).unwrap();
    third.read_exact(&mut back).unwrap();
    assert_eq!(bm.accepts.get(), 2);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn shutdown_drains_open_connections_and_clears_readiness() {
    let metrics = TransportMetrics::new();
    let (server, closed, _) = start(Config::default(), metrics.clone());
    let mut s = connect(server.local_addr());
    s.write_all(&frame(8, 0)).unwrap();
    let mut back = [0u8; 12];
    s.read_exact(&mut back).unwrap();
    let shared = server.shared().clone();
    let r = server.shutdown(Duration::from_secs(10));
    // The default `on_drain` closes gracefully, so nothing is aborted.
    assert_eq!((r.drained, r.aborted), (1, 0));
    assert!(closed_by_server(&mut s));
    assert_eq!(*closed.lock().unwrap(), vec![None]);
    assert!(!matches!(
        ron_transport::TransportHealth::readiness(&shared.readiness),
        ron_transport::ReadyState::Ready
    ));
    assert_eq!(metrics.backend(Backend::Tcp).conn_inflight.get(), 0);
}

#[test]
fn ingress_rate_limit_paces_reading_and_the_echo_stays_whole() {
    let metrics = TransportMetrics::new();
    let mut cfg = Config::default();
    cfg.max_frame_bytes = 128 * 1024;
    cfg.per_conn_bytes_per_sec = 2 << 20; // burst: max(rate / 10, max_frame) = 204.8 KiB
    let (server, closed, _) = start(cfg, metrics.clone());
    let mut out = Vec::new();
    for i in 0..128 {
        out.extend(frame(64 * 1024, i));
    }
    let total = out.len();
    let mut s = connect(server.local_addr());
    let mut w = s.try_clone().unwrap();
    let expect = out.clone();
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || w.write_all(&out).unwrap());
    let mut back = vec![0u8; total];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    let took = t0.elapsed();
    assert!(back == expect, "echo differs under pacing");
    // 8 MiB at 2 MiB/s: ~3.9 s after the ~0.2 MiB burst. Pausing takes effect once the
    // in-flight receive is cancelled, so the last burst can run ahead of the bucket by what
    // the receive ring holds (well under 2 MiB here). A lower bound only: a slow machine
    // makes it longer, never shorter.
    assert!(took >= Duration::from_millis(2500), "not paced: {took:?}");
    assert_eq!(metrics.backend(Backend::Tcp).bytes_in.get(), total as u64);
    drop(s);
    eventually("handler closed", || closed.lock().unwrap().len() == 1);
    assert_eq!(*closed.lock().unwrap(), vec![None]);
    server.shutdown(Duration::from_secs(5));
}

/// Read and idle deadlines on the shard-local path: a half-sent frame (slow loris) and a
/// silent connection are closed with `timeout`, each counted once in
/// `rejected_total{reason="timeout"}`; a frame completed in time and silence between frames
/// are not timeouts. A large frame stalled inside a direct receive (the rest of its body
/// going straight into its buffer) times out the same way.
#[test]
fn read_and_idle_timeouts_close_and_count() {
    let metrics = TransportMetrics::new();
    let mut cfg = Config::default();
    cfg.read_timeout = Duration::from_millis(300);
    cfg.idle_timeout = Duration::from_millis(1500);
    let (server, closed, _) = start(cfg, metrics.clone());
    let addr = server.local_addr();

    // Frames with silence between them (shorter than idle) are fine.
    let mut ok = connect(addr);
    for i in 0..3 {
        ok.write_all(&frame(100, i)).unwrap();
        let mut back = vec![0u8; 104];
        ok.read_exact(&mut back).unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(metrics.rejected_count(RejectReason::Timeout), 0);

    // Slow loris: half a header, then nothing.
    let t0 = Instant::now();
    let mut loris = connect(addr);
    loris.write_all(&[0, 0]).unwrap();
    assert!(closed_by_server(&mut loris));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "read timeout early: {took:?}"
    );
    // Stalled inside a large frame's body.
    let mut big = connect(addr);
    big.write_all(&frame(200_000, 7)[..60_000]).unwrap();
    assert!(closed_by_server(&mut big));
    eventually("two read timeouts", || {
        metrics.rejected_count(RejectReason::Timeout) == 2
    });

    // Idle: the first connection, now silent, is closed by the idle deadline.
    assert!(closed_by_server(&mut ok));
    eventually("idle timeout counted", || {
        metrics.rejected_count(RejectReason::Timeout) == 3
    });
    eventually("three handlers closed", || {
        closed.lock().unwrap().len() == 3
    });
    assert!(closed.lock().unwrap().iter().all(|c| *c == Some("timeout")));
    eventually("conn_inflight back to 0", || {
        metrics.backend(Backend::Tcp).conn_inflight.get() == 0
    });
    server.shutdown(Duration::from_secs(5));
}
