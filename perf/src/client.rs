//! The load client: N connections, K frames in flight per connection (closed loop) or a fixed
//! offered rate, round-trip latency per frame into per-connection hdrhistograms (merged), over
//! a measurement window that excludes warm-up. One current-thread tokio runtime per client core
//! (pinned); each connection writes every batch of frames in one write and reads in bulk, so a
//! frame costs the client one write and a share of one read. The server's CPU time is sampled
//! at the window edges here, so client and server are measured over exactly the same window.
//! Also: the TLS handshake load (cold / resumed) and the idle-connection holder.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sys;
use crate::wire;

/// What one load run does.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Server address.
    pub target: SocketAddr,
    /// Server socket path (transport `uds`): connected instead of `target`.
    pub uds: Option<std::path::PathBuf>,
    /// TLS client config (None = plain TCP).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connections.
    pub conns: usize,
    /// Payload bytes per frame.
    pub payload: usize,
    /// Frames in flight per connection.
    pub depth: usize,
    /// Fixed offered rate over all connections (frames/s); None = closed loop.
    pub rate: Option<f64>,
    /// Warm-up before the window.
    pub warmup: Duration,
    /// Measurement window.
    pub duration: Duration,
    /// Cores the client threads are pinned to (one thread per core).
    pub cores: Vec<usize>,
    /// Server process to sample CPU time from, if known.
    pub server_pid: Option<u32>,
    /// The server's cores (with `cores`, the cores whose idle share is sampled; both empty =
    /// the whole machine).
    pub server_cores: Vec<usize>,
    /// Local (source) addresses to bind the connections to, round robin (empty = the kernel
    /// picks): `ron-perf run --scenarios abuse` spreads the well-behaved connections over
    /// loopback addresses so per-peer (per-IP) limits see each as its own peer.
    pub sources: Vec<std::net::IpAddr>,
    /// QUIC (quinn client, `tls` as its TLS config, one bidirectional stream per connection
    /// with the OAP/1 stream preface) instead of TCP.
    pub quic: bool,
}

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Frames echoed back inside the window.
    pub frames: u64,
    /// Window length.
    pub window: Duration,
    /// Round-trip latency (µs) of frames completed inside the window.
    pub hist: Histogram<u64>,
    /// Connection errors (each ends its connection).
    pub errors: u64,
    /// First error text, if any.
    pub first_error: Option<String>,
    /// Server CPU time over the window.
    pub server_cpu: Option<Duration>,
    /// Client process CPU time over the window.
    pub client_cpu: Duration,
    /// Idle share (0..=1) of the server's and client's cores over the window: with neither
    /// process busy, high = something waited, low = other processes had the cores.
    pub cores_idle: Option<f64>,
}

impl LoadResult {
    /// Frames per second inside the window.
    pub fn fps(&self) -> f64 {
        self.frames as f64 / self.window.as_secs_f64()
    }

    /// Payload goodput in Gb/s (one direction).
    pub fn gbps(&self, payload: usize) -> f64 {
        self.fps() * payload as f64 * 8.0 / 1e9
    }

    /// Server CPU µs per frame.
    pub fn server_cpu_us_per_frame(&self) -> Option<f64> {
        let cpu = self.server_cpu?;
        (self.frames > 0).then(|| cpu.as_secs_f64() * 1e6 / self.frames as f64)
    }

    /// Server CPU utilisation over the window (1.0 = one core busy).
    pub fn server_cpu_util(&self) -> Option<f64> {
        Some(self.server_cpu?.as_secs_f64() / self.window.as_secs_f64())
    }

    /// Client CPU utilisation over the window (1.0 = one core busy).
    pub fn client_cpu_util(&self) -> f64 {
        self.client_cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    /// A latency percentile in µs (None without samples).
    pub fn pct(&self, q: f64) -> Option<f64> {
        (!self.hist.is_empty()).then(|| self.hist.value_at_quantile(q) as f64)
    }
}

/// The measurement window shared by every connection.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

#[derive(Debug)]
struct ConnOutcome {
    frames: u64,
    hist: Histogram<u64>,
    error: Option<String>,
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// Any byte stream the client can drive (TCP or TLS over TCP).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Connects one client connection (TCP_NODELAY, then TLS if configured).
pub async fn connect(
    target: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Box<dyn Stream>> {
    let tcp = TcpStream::connect(target)
        .await
        .with_context(|| format!("connect {target}"))?;
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok(Box::new(tcp)),
        Some(cfg) => {
            let c = tokio_rustls::TlsConnector::from(cfg.clone());
            let s = c
                .connect(crate::tlsutil::server_name(target), tcp)
                .await
                .context("tls handshake")?;
            Ok(Box::new(s))
        }
    }
}

/// Connects one client connection from the local address `source` (port chosen by the
/// kernel), then as [`connect`].
pub async fn connect_from(
    target: SocketAddr,
    source: std::net::IpAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Box<dyn Stream>> {
    let sock = if target.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(source, 0))
        .with_context(|| format!("bind {source}"))?;
    let tcp = sock
        .connect(target)
        .await
        .with_context(|| format!("connect {target} from {source}"))?;
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok(Box::new(tcp)),
        Some(cfg) => {
            let c = tokio_rustls::TlsConnector::from(cfg.clone());
            let s = c
                .connect(crate::tlsutil::server_name(target), tcp)
                .await
                .context("tls handshake")?;
            Ok(Box::new(s))
        }
    }
}

/// One QUIC connection and its one bidirectional stream as a byte stream (the connection and
/// its endpoint live as long as the stream).
struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    _conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(std::pin::Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.get_mut().send), cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.get_mut().send), cx)
    }
}

/// Connects one QUIC client connection (its own quinn endpoint) with ron-transport's QUIC
/// client config over `tls` (the same quinn transport and crypto configs as the library's
/// dialer), opens one stream and writes the OAP/1 stream preface.
pub async fn connect_quic(
    target: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<Box<dyn Stream>> {
    let cfg = ron_transport::quic::client_config(&ron_transport::ValidConfig::defaults(), tls)
        .map_err(|e| anyhow!("quic client config: {e}"))?;
    let bind: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    };
    let endpoint = quinn::Endpoint::client(bind)?;
    let name = crate::tlsutil::server_name(target);
    let conn = endpoint
        .connect_with(cfg, target, &name.to_str())?
        .await
        .with_context(|| format!("quic connect {target}"))?;
    let (mut send, recv) = conn.open_bi().await?;
    send.write_all(&ron_transport::quic::STREAM_PREFACE).await?;
    Ok(Box::new(QuicStream {
        send,
        recv,
        _conn: conn,
        _endpoint: endpoint,
    }))
}

/// Connects connection number `i` of `spec`: to its socket path if it has one, else from its
/// source address (round robin over `spec.sources`) as [`connect_from`], else as [`connect`].
async fn connect_spec(spec: &LoadSpec, i: usize) -> anyhow::Result<Box<dyn Stream>> {
    if spec.quic {
        let tls = spec
            .tls
            .as_ref()
            .ok_or_else(|| anyhow!("quic needs a TLS config"))?;
        return connect_quic(spec.target, tls).await;
    }
    match (&spec.uds, spec.sources.is_empty()) {
        (Some(path), _) => Ok(Box::new(
            tokio::net::UnixStream::connect(path)
                .await
                .with_context(|| format!("connect {}", path.display()))?,
        )),
        (None, true) => connect(spec.target, spec.tls.as_ref()).await,
        (None, false) => {
            let src = spec.sources[i % spec.sources.len()];
            connect_from(spec.target, src, spec.tls.as_ref()).await
        }
    }
}

/// Runs a load and returns the merged measurement. Bounded: every connection stops at the
/// window end (plus a 2 s grace for a stalled server).
pub fn run_load(spec: &LoadSpec) -> anyhow::Result<LoadResult> {
    let threads = spec.cores.len().max(1);
    let conns_per: Vec<usize> = (0..threads)
        .map(|i| spec.conns / threads + usize::from(i < spec.conns % threads))
        .collect();
    let barrier = Arc::new(Barrier::new(threads + 1));
    let window: Arc<Mutex<Option<Window>>> = Arc::new(Mutex::new(None));
    let mut handles = Vec::new();
    for (i, &n) in conns_per.iter().enumerate() {
        let spec = spec.clone();
        let barrier = barrier.clone();
        let window = window.clone();
        let core = spec.cores.get(i).copied();
        let first = conns_per[..i].iter().sum::<usize>();
        handles.push(std::thread::spawn(move || {
            client_thread(&spec, n, first, threads, core, &barrier, &window)
        }));
    }
    // Everyone connected (or failed connecting) → fix the window and release the threads.
    barrier.wait();
    let now = Instant::now();
    let w = Window {
        start: now + spec.warmup,
        end: now + spec.warmup + spec.duration,
    };
    *window.lock().expect("window lock") = Some(w);
    barrier.wait();

    let watched = watched_cores(&spec.cores, &spec.server_cores);
    std::thread::sleep(w.start.saturating_duration_since(Instant::now()));
    let s0 = spec.server_pid.map(|p| sys::cpu_time(Some(p)));
    let c0 = sys::cpu_time(None)?;
    let k0 = sys::cores_ticks(&watched).ok();
    std::thread::sleep(w.end.saturating_duration_since(Instant::now()));
    let s1 = spec.server_pid.map(|p| sys::cpu_time(Some(p)));
    let c1 = sys::cpu_time(None)?;
    let k1 = sys::cores_ticks(&watched).ok();

    let mut res = LoadResult {
        frames: 0,
        window: spec.duration,
        hist: new_hist(),
        errors: 0,
        first_error: None,
        server_cpu: match (s0, s1) {
            (Some(Ok(a)), Some(Ok(b))) => Some(b.saturating_sub(a)),
            _ => None,
        },
        client_cpu: c1.saturating_sub(c0),
        cores_idle: k0.zip(k1).and_then(|(a, b)| sys::idle_share(a, b)),
    };
    for h in handles {
        let outs = h.join().map_err(|_| anyhow!("client thread panicked"))??;
        for o in outs {
            res.frames += o.frames;
            res.hist
                .add(&o.hist)
                .map_err(|e| anyhow!("histogram merge: {e}"))?;
            if let Some(e) = o.error {
                res.errors += 1;
                res.first_error.get_or_insert(e);
            }
        }
    }
    Ok(res)
}

/// The union of the client's and the server's cores (empty = the whole machine).
pub fn watched_cores(client: &[usize], server: &[usize]) -> Vec<usize> {
    if client.is_empty() || server.is_empty() {
        return Vec::new();
    }
    let mut v: Vec<usize> = client.iter().chain(server).copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn client_thread(
    spec: &LoadSpec,
    n: usize,
    first: usize,
    threads: usize,
    core: Option<usize>,
    barrier: &Barrier,
    window: &Mutex<Option<Window>>,
) -> anyhow::Result<Vec<ConnOutcome>> {
    if let Some(c) = core {
        sys::pin_to(&[c])?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Connect everything first (bounded by a 10 s deadline per connection).
    let conns = rt.block_on(async {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let c = tokio::time::timeout(Duration::from_secs(10), connect_spec(spec, first + i))
                .await
                .map_err(|_| anyhow!("connect timed out"))
                .and_then(|r| r);
            v.push(c);
        }
        v
    });
    barrier.wait();
    barrier.wait();
    let w = window.lock().expect("window lock").expect("window set");
    let per_conn_rate = spec.rate.map(|r| r / (spec.conns.max(1) as f64));
    let _ = threads;
    let outs = rt.block_on(async {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut tasks = Vec::new();
                for c in conns {
                    let payload = spec.payload;
                    let depth = spec.depth.max(1);
                    let tls = spec.tls.is_some();
                    tasks.push(tokio::task::spawn_local(async move {
                        match c {
                            Err(e) => ConnOutcome {
                                frames: 0,
                                hist: new_hist(),
                                error: Some(format!("{e:#}")),
                            },
                            Ok(s) => conn_loop(s, tls, payload, depth, per_conn_rate, w).await,
                        }
                    }));
                }
                let mut outs = Vec::new();
                for t in tasks {
                    outs.push(t.await.unwrap_or_else(|e| ConnOutcome {
                        frames: 0,
                        hist: new_hist(),
                        error: Some(format!("task: {e}")),
                    }));
                }
                outs
            })
            .await
    });
    Ok(outs)
}

/// One connection's closed-loop (or paced) echo loop. Reading and writing are independent:
/// frames owed to the server are written whenever the socket takes them, while echoes keep
/// being read, so neither direction ever waits for the other (a write that cannot finish must
/// not stop the reads that would let the server go on).
async fn conn_loop(
    s: Box<dyn Stream>,
    tls: bool,
    payload: usize,
    depth: usize,
    rate: Option<f64>,
    w: Window,
) -> ConnOutcome {
    let mut out = ConnOutcome {
        frames: 0,
        hist: new_hist(),
        error: None,
    };
    let (mut rd, mut wr) = tokio::io::split(s);
    let flen = wire::HEADER + payload;
    // Every frame is the same, so the bytes still owed to the server are always the last
    // `owed` bytes of `batch` (at most `depth` frames are queued or in flight).
    let batch = wire::frames(payload, depth);
    let mut owed = 0usize;
    // TLS: bytes rustls accepted may still wait in its buffer; flush after writing.
    let mut need_flush = false;
    // Received bytes live in `rbuf[start..filled]`. The buffer holds many frames, and the
    // partial tail moves to the front only when less than one frame of room is left: the
    // client copies a fraction of a frame per frame, not up to a whole frame per read (which
    // made the client, not the server, the bottleneck of fast 64 KiB streams).
    let mut rbuf = vec![0u8; (16 * flen).clamp(64 * 1024, 4 << 20)];
    let mut start = 0usize;
    let mut filled = 0usize;
    // Send time of every frame queued or in flight, oldest first: a frame's time is taken when
    // it is queued, and the loop writes queued frames at once, so this is the time it was
    // handed to the socket unless the socket was full (then the wait is part of its latency).
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(depth);
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
    let hard_end = w.end + Duration::from_secs(2);
    let end_sleep = tokio::time::sleep_until(w.end.into());
    tokio::pin!(end_sleep);
    let tick = tokio::time::sleep_until(Instant::now().into());
    tokio::pin!(tick);
    let mut next_send = Instant::now();

    // Closed loop: fill the window at once.
    if interval.is_none() {
        owed = depth * flen;
        sent_at.extend(std::iter::repeat_n(Instant::now(), depth));
    }

    enum Ev {
        Read(std::io::Result<usize>),
        Wrote(std::io::Result<usize>),
        Flushed(std::io::Result<()>),
        Tick,
        End,
    }
    loop {
        let can_tick = interval.is_some() && sent_at.len() < depth;
        let can_write = owed > 0 || need_flush;
        // One operation per turn, each cancel-safe: a write of what is owed, else a flush.
        let write = async {
            if owed > 0 {
                Ev::Wrote(wr.write(&batch[batch.len() - owed..]).await)
            } else {
                Ev::Flushed(wr.flush().await)
            }
        };
        let ev = tokio::select! {
            biased;
            _ = &mut end_sleep => Ev::End,
            ev = write, if can_write => ev,
            r = rd.read(&mut rbuf[filled..]) => Ev::Read(r),
            _ = &mut tick, if can_tick => Ev::Tick,
        };
        match ev {
            Ev::End => break,
            Ev::Wrote(Ok(0)) => {
                out.error = Some("write: zero bytes written".to_owned());
                break;
            }
            Ev::Wrote(Ok(n)) => {
                owed -= n;
                need_flush = tls;
            }
            Ev::Wrote(Err(e)) | Ev::Flushed(Err(e)) => {
                out.error = Some(format!("write: {e}"));
                break;
            }
            Ev::Flushed(Ok(())) => need_flush = false,
            Ev::Tick => {
                let now = Instant::now();
                owed += flen;
                sent_at.push_back(now);
                let iv = interval.expect("tick only with a rate");
                // Keep the schedule, but never burst to catch up more than one period.
                next_send = (next_send + iv).max(now.checked_sub(iv).unwrap_or(now));
                tick.as_mut().reset(next_send.into());
            }
            Ev::Read(Ok(0)) => {
                out.error = Some("server closed the connection".to_owned());
                break;
            }
            Ev::Read(Err(e)) => {
                out.error = Some(format!("read: {e}"));
                break;
            }
            Ev::Read(Ok(n)) => {
                filled += n;
                let now = Instant::now();
                let sc = match wire::scan(&rbuf[start..filled]) {
                    Ok(sc) => sc,
                    Err(e) => {
                        out.error = Some(format!("echo: {e}"));
                        break;
                    }
                };
                if sc.complete_bytes != sc.frames * flen {
                    out.error = Some("echo: frame of unexpected length".to_owned());
                    break;
                }
                let in_window = now >= w.start && now < w.end;
                // Frames still owed (not fully written) cannot have been echoed.
                let written = sent_at.len() - owed.div_ceil(flen);
                if sc.frames > written {
                    out.error = Some("echo: more frames than sent".to_owned());
                    break;
                }
                for t in sent_at.drain(..sc.frames) {
                    if in_window {
                        let us = now.duration_since(t).as_micros().max(1) as u64;
                        let _ = out.hist.record(us.min(60_000_000));
                        out.frames += 1;
                    }
                }
                start += sc.complete_bytes;
                if start == filled {
                    (start, filled) = (0, 0);
                } else if rbuf.len() - filled < flen {
                    rbuf.copy_within(start..filled, 0);
                    (start, filled) = (0, filled - start);
                }
                if interval.is_none() && sc.frames > 0 {
                    // Replacements are queued now and written by the next turns.
                    owed += sc.frames * flen;
                    sent_at.extend(std::iter::repeat_n(now, sc.frames));
                }
                if now >= hard_end {
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(200), wr.shutdown()).await;
    out
}

/// What a handshake run measured.
#[derive(Debug, Clone)]
pub struct HandshakeResult {
    /// Completed handshakes inside the window.
    pub handshakes: u64,
    /// Of those, how many were resumed.
    pub resumed: u64,
    /// Window length.
    pub window: Duration,
    /// Handshake latency (connect + TLS handshake), µs.
    pub hist: Histogram<u64>,
    /// Failed attempts.
    pub errors: u64,
    /// First error text.
    pub first_error: Option<String>,
    /// Server CPU time over the window.
    pub server_cpu: Option<Duration>,
    /// Client CPU time over the window.
    pub client_cpu: Duration,
    /// Idle share (0..=1) of the watched cores over the window (see [`LoadResult::cores_idle`]).
    pub cores_idle: Option<f64>,
}

/// (handshakes, resumed, latency, errors, first error) of one handshake thread.
type HsTotals = (u64, u64, Histogram<u64>, u64, Option<String>);

/// New TLS connections in a loop from `parallel` tasks spread over one thread per client core:
/// connect,
/// handshake (timed), one 64-byte echo (which also delivers the session tickets), close.
/// With `quic`, QUIC connections instead (one quinn client endpoint per task, the library's
/// quinn client config over `cfg`; quinn does not say whether a handshake resumed, so
/// `resumed` stays 0).
#[allow(clippy::too_many_arguments)] // the load's shape, then what to sample; all plain values
pub fn run_handshakes(
    target: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    quic: bool,
    parallel: usize,
    warmup: Duration,
    duration: Duration,
    cores: &[usize],
    server_pid: Option<u32>,
    server_cores: &[usize],
) -> anyhow::Result<HandshakeResult> {
    let start = Instant::now() + warmup;
    let end = start + duration;
    let threads = cores.len().max(1);
    let mut hs = Vec::with_capacity(threads);
    for i in 0..threads {
        let core = cores.get(i).copied();
        let cfg = cfg.clone();
        let parallel = parallel / threads + usize::from(i < parallel % threads);
        hs.push(handshake_thread(
            target, cfg, quic, parallel, start, end, core,
        ));
    }
    let watched = watched_cores(cores, server_cores);
    std::thread::sleep(start.saturating_duration_since(Instant::now()));
    let s0 = server_pid.map(|p| sys::cpu_time(Some(p)));
    let c0 = sys::cpu_time(None)?;
    let k0 = sys::cores_ticks(&watched).ok();
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let s1 = server_pid.map(|p| sys::cpu_time(Some(p)));
    let c1 = sys::cpu_time(None)?;
    let k1 = sys::cores_ticks(&watched).ok();
    let mut acc: HsTotals = (0, 0, new_hist(), 0, None);
    for h in hs {
        let (n, r, hist, e, f) = h
            .join()
            .map_err(|_| anyhow!("handshake thread panicked"))??;
        acc.0 += n;
        acc.1 += r;
        acc.2.add(&hist).map_err(|e| anyhow!("merge: {e}"))?;
        acc.3 += e;
        if acc.4.is_none() {
            acc.4 = f;
        }
    }
    let (handshakes, resumed, hist, errors, first_error) = acc;
    Ok(HandshakeResult {
        handshakes,
        resumed,
        window: duration,
        hist,
        errors,
        first_error,
        server_cpu: match (s0, s1) {
            (Some(Ok(a)), Some(Ok(b))) => Some(b.saturating_sub(a)),
            _ => None,
        },
        client_cpu: c1.saturating_sub(c0),
        cores_idle: k0.zip(k1).and_then(|(a, b)| sys::idle_share(a, b)),
    })
}

/// One client thread (pinned to `core`) running `parallel` dialer tasks until `end`.
fn handshake_thread(
    target: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    quic: bool,
    parallel: usize,
    start: Instant,
    end: Instant,
    core: Option<usize>,
) -> std::thread::JoinHandle<anyhow::Result<HsTotals>> {
    std::thread::spawn(move || -> anyhow::Result<HsTotals> {
        if let Some(c) = core {
            sys::pin_to(&[c])?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    let mut tasks = Vec::new();
                    for _ in 0..parallel.max(1) {
                        let cfg = cfg.clone();
                        tasks.push(tokio::task::spawn_local(async move {
                            let mut hist = new_hist();
                            let (mut n, mut resumed, mut errs) = (0u64, 0u64, 0u64);
                            let mut first = None;
                            let frame = wire::frame(64);
                            let quic_client = if quic {
                                match QuicHandshaker::new(target, &cfg) {
                                    Ok(q) => Some(q),
                                    Err(e) => return (0, 0, hist, 1, Some(format!("{e:#}"))),
                                }
                            } else {
                                None
                            };
                            while Instant::now() < end {
                                let t0 = Instant::now();
                                let r = tokio::time::timeout(Duration::from_secs(5), async {
                                    if let Some(q) = &quic_client {
                                        return q.once(target, &frame, t0).await;
                                    }
                                    let tcp = TcpStream::connect(target).await?;
                                    tcp.set_nodelay(true)?;
                                    let c = tokio_rustls::TlsConnector::from(cfg.clone());
                                    let mut s =
                                        c.connect(crate::tlsutil::server_name(target), tcp).await?;
                                    let dt = t0.elapsed();
                                    let was_resumed = s.get_ref().1.handshake_kind()
                                        == Some(rustls::HandshakeKind::Resumed);
                                    s.write_all(&frame).await?;
                                    let mut back = vec![0u8; frame.len()];
                                    s.read_exact(&mut back).await?;
                                    let _ = s.shutdown().await;
                                    Ok::<_, std::io::Error>((dt, was_resumed))
                                })
                                .await;
                                let done = Instant::now();
                                match r {
                                    Ok(Ok((dt, was_resumed))) => {
                                        if done >= start && done < end {
                                            n += 1;
                                            resumed += u64::from(was_resumed);
                                            let _ = hist.record(
                                                (dt.as_micros() as u64).clamp(1, 60_000_000),
                                            );
                                        }
                                    }
                                    Ok(Err(e)) => {
                                        errs += 1;
                                        first.get_or_insert(format!("{e}"));
                                    }
                                    Err(_) => {
                                        errs += 1;
                                        first.get_or_insert("handshake timed out".to_owned());
                                    }
                                }
                            }
                            (n, resumed, hist, errs, first)
                        }));
                    }
                    let mut acc = (0u64, 0u64, new_hist(), 0u64, None);
                    for t in tasks {
                        let (n, r, h, e, f) = t.await.map_err(|e| anyhow!("task: {e}"))?;
                        acc.0 += n;
                        acc.1 += r;
                        acc.2.add(&h).map_err(|e| anyhow!("merge: {e}"))?;
                        acc.3 += e;
                        if acc.4.is_none() {
                            acc.4 = f;
                        }
                    }
                    Ok(acc)
                })
                .await
        })
    })
}

/// The QUIC side of the handshake load: one client endpoint, the library's quinn client
/// config.
struct QuicHandshaker {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    name: String,
}

impl QuicHandshaker {
    fn new(target: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> anyhow::Result<Self> {
        let config =
            ron_transport::quic::client_config(&ron_transport::ValidConfig::defaults(), tls)
                .map_err(|e| anyhow!("quic client config: {e}"))?;
        let bind: SocketAddr = if target.is_ipv4() {
            (std::net::Ipv4Addr::LOCALHOST, 0).into()
        } else {
            (std::net::Ipv6Addr::LOCALHOST, 0).into()
        };
        Ok(Self {
            endpoint: quinn::Endpoint::client(bind)?,
            config,
            name: crate::tlsutil::server_name(target).to_str().into_owned(),
        })
    }

    /// One connection: handshake (timed from `t0`), the preface and one echo, close.
    async fn once(
        &self,
        target: SocketAddr,
        frame: &[u8],
        t0: Instant,
    ) -> std::io::Result<(Duration, bool)> {
        let io = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
        let conn = self
            .endpoint
            .connect_with(self.config.clone(), target, &self.name)
            .map_err(|e| io(&e))?
            .await
            .map_err(|e| io(&e))?;
        let dt = t0.elapsed();
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(&e))?;
        send.write_all(&ron_transport::quic::STREAM_PREFACE)
            .await
            .map_err(|e| io(&e))?;
        send.write_all(frame).await.map_err(|e| io(&e))?;
        let mut back = vec![0u8; frame.len()];
        recv.read_exact(&mut back).await.map_err(|e| io(&e))?;
        conn.close(quinn::VarInt::from_u32(0), b"");
        Ok((dt, false))
    }
}

/// Idle connections held open on a dedicated thread until the returned guard is dropped.
#[derive(Debug)]
pub struct IdleHold {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Connections that were opened and completed one echo.
    pub opened: usize,
    /// First error, if some failed.
    pub first_error: Option<String>,
}

impl Drop for IdleHold {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens `n` connections (each does one 64-byte echo so the server has fully set it up) and
/// holds them idle. Connects 64 at a time; every connect bounded by 10 s.
pub fn hold_idle(
    target: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    quic: bool,
    n: usize,
    core: Option<usize>,
) -> anyhow::Result<IdleHold> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, Option<String>)>();
    let thread = std::thread::spawn(move || {
        if let Some(c) = core {
            let _ = sys::pin_to(&[c]);
        }
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            let _ = ready_tx.send((0, Some("runtime".to_owned())));
            return;
        };
        rt.block_on(async move {
            let frame = wire::frame(64);
            let mut held = Vec::with_capacity(n);
            let mut first = None;
            let mut left = n;
            while left > 0 {
                let k = left.min(64);
                left -= k;
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..k {
                    let tls = tls.clone();
                    let frame = frame.clone();
                    set.spawn(async move {
                        tokio::time::timeout(Duration::from_secs(10), async {
                            let mut s = match (&tls, quic) {
                                (Some(tls), true) => connect_quic(target, tls).await?,
                                _ => connect(target, tls.as_ref()).await?,
                            };
                            s.write_all(&frame).await?;
                            let mut back = vec![0u8; frame.len()];
                            s.read_exact(&mut back).await?;
                            Ok::<_, anyhow::Error>(s)
                        })
                        .await
                        .map_err(|_| anyhow!("idle connect timed out"))
                        .and_then(|r| r)
                    });
                }
                while let Some(r) = set.join_next().await {
                    match r {
                        Ok(Ok(s)) => held.push(s),
                        Ok(Err(e)) => {
                            first.get_or_insert(format!("{e:#}"));
                        }
                        Err(e) => {
                            first.get_or_insert(format!("{e}"));
                        }
                    }
                }
            }
            let _ = ready_tx.send((held.len(), first));
            let _ = stop_rx.await;
            drop(held);
        });
    });
    let (opened, first_error) = ready_rx
        .recv_timeout(Duration::from_secs(120))
        .map_err(|_| anyhow!("idle connections not ready in 120 s"))?;
    Ok(IdleHold {
        stop: Some(stop_tx),
        thread: Some(thread),
        opened,
        first_error,
    })
}
