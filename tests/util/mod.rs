//! Shared helpers for integration tests: runtimes for both tokio schedulers, polling with a
//! deadline, metric readers, raw loopback peers, and in-memory TLS fixtures (rcgen).
#![allow(dead_code)]

pub mod engines;
pub mod oap;
#[cfg(feature = "quic")]
pub mod quic;
pub mod tls;
pub mod tor;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ron_transport::config::Backend;
use ron_transport::metrics::PqLabel;
use ron_transport::{RejectReason, TransportMetrics};

/// Runs `fut` on a fresh current-thread runtime.
pub fn run_current_thread<F: Future<Output = ()>>(fut: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(fut)
}

/// Runs `fut` on a fresh two-worker multi-thread runtime.
pub fn run_multi_thread<F: Future<Output = ()>>(fut: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(fut)
}

/// Polls `cond` every 5 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// A readable snapshot of the metrics a test cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Snap {
    pub accepts: u64,
    pub dials_ok: u64,
    pub dials_err: u64,
    pub inflight: i64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub hs_off: u64,
    pub hs_hybrid: u64,
    pub tls_failures: u64,
    pub reads: u64,
    pub writes: u64,
}

/// The backend the conformance cases' `tcp`/`tls` stand for in this test binary (set once by
/// an engine under test that speaks another: QUIC carries both cases' frames).
static BACKEND_ALIAS: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();

/// Makes every `tcp`/`tls` of the cases mean `to` in this process.
pub fn alias_backends(to: Backend) {
    let _ = BACKEND_ALIAS.set(to);
}

/// The backend a case's `b` stands for (see [`alias_backends`]).
pub fn effective(b: Backend) -> Backend {
    match (b, BACKEND_ALIAS.get()) {
        (Backend::Tcp | Backend::Tls, Some(to)) => *to,
        _ => b,
    }
}

pub fn snap(m: &TransportMetrics, b: Backend) -> Snap {
    let bm = m.backend(effective(b));
    Snap {
        accepts: bm.accepts.get(),
        dials_ok: bm.dials_ok.get(),
        dials_err: bm.dials_err.get(),
        inflight: bm.conn_inflight.get(),
        bytes_in: bm.bytes_in.get(),
        bytes_out: bm.bytes_out.get(),
        hs_off: bm.handshake(PqLabel::Off).get_sample_count(),
        hs_hybrid: bm.handshake(PqLabel::Hybrid).get_sample_count(),
        tls_failures: bm.tls_failures.get(),
        reads: bm.io_read_size.get_sample_count(),
        writes: bm.io_write_size.get_sample_count(),
    }
}

pub fn rejected(m: &TransportMetrics, r: RejectReason) -> u64 {
    m.rejected_count(r)
}

pub fn inbox_depth(m: &TransportMetrics) -> i64 {
    m.queue_depth.with_label_values(&["writer_inbox"]).get()
}

pub fn inbox_dropped(m: &TransportMetrics) -> u64 {
    m.queue_dropped.with_label_values(&["writer_inbox"]).get()
}

pub fn tasks_spawned(m: &TransportMetrics, kind: &str) -> u64 {
    m.tasks_spawned.with_label_values(&[kind]).get()
}

pub fn tasks_aborted(m: &TransportMetrics, kind: &str) -> u64 {
    m.tasks_aborted.with_label_values(&[kind]).get()
}

pub fn pq_handshakes(m: &TransportMetrics, b: Backend, mode: &str, result: &str) -> u64 {
    m.pq_handshake
        .with_label_values(&[effective(b).as_str(), mode, result])
        .get()
}

/// Loopback on an ephemeral port.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A frame on the wire: u32 big-endian length + payload.
pub fn wire_frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// A raw TCP client from a given local IP (127.0.0.x) to `addr`.
pub async fn raw_connect_from(local_ip: [u8; 4], addr: SocketAddr) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::from((local_ip, 0))).expect("bind");
    sock.connect(addr).await.expect("connect")
}

/// Reads until EOF, reset or `limit`; returns how many bytes came and whether it ended
/// (EOF/reset) rather than timing out.
pub async fn read_to_end_or_reset<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> (usize, bool) {
    use tokio::io::AsyncReadExt;
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

/// A deterministic payload of `len` bytes (distinct per `seed`).
pub fn payload(len: usize, seed: u8) -> bytes::Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// Serves `listener` with an echo through `Engine::serve` (each frame sent back whole) until
/// the engine shuts down or the task is aborted.
pub fn spawn_echo<E: ron_transport::Engine>(
    engine: &E,
    listener: E::Listener,
) -> tokio::task::JoinHandle<()> {
    spawn_counted_echo(engine, listener, Default::default())
}

/// [`spawn_echo`], adding one to `served` for every connection the listener hands out.
pub fn spawn_counted_echo<E: ron_transport::Engine>(
    engine: &E,
    listener: E::Listener,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    use ron_transport::Conn;
    let serving = engine.serve(listener, move |mut conn: E::Conn| {
        served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            while let Ok(Some(frame)) = conn.recv().await {
                if conn.send(frame).await.is_err() {
                    break;
                }
            }
            let _ = conn.close().await;
        }
    });
    tokio::spawn(async move {
        let _ = serving.await;
    })
}
