//! The `wan` scenario: TLS (tokio and uring engines) and QUIC (tokio engine, quinn) through the
//! impairment relay ([`crate::relay`]; default 2 % loss, +100 ms RTT, 1 % reordering), 16 KiB
//! echo frames, closed loop: p50/p99 round trip and goodput per row, so an operator can see when
//! to pick which (spec/PERFORMANCE.md §2.4, "QUIC on lossy paths").
//!
//! Servers and the client run in this process (the relay's delay dwarfs the cost of sharing
//! cores): each server is ron-transport's engine serving an echo through `Engine::serve`; the
//! load client is the same for every row — ron-transport's tokio engine dialing the relay
//! (`tls` or `quic`), `conns` connections each keeping one frame in flight. Rows have
//! `scenario = "wan"` and the same fields as the suite's rows.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use hdrhistogram::Histogram;
use ron_transport::config::Backend;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::{Config, Conn, Engine, Listener, PqMode, TransportMetrics};

use crate::relay::{Impairment, TcpRelay, UdpRelay};
use crate::report::Row;
use crate::tlsutil::SelfSigned;

/// Payload of every `wan` frame.
pub const FRAME: usize = 16 * 1024;

/// What the scenario runs.
#[derive(Debug, Clone)]
pub struct WanOpts {
    /// The path's impairment.
    pub imp: Impairment,
    /// Connections (each one frame in flight).
    pub conns: usize,
    /// Warm-up before the window.
    pub warmup: Duration,
    /// Measurement window per row.
    pub duration: Duration,
    /// Which rows: (`tls`|`quic`, `tokio`|`uring`).
    pub rows: Vec<(Backend, &'static str)>,
    /// `quic.congestion` of both QUIC sides.
    pub congestion: ron_transport::Congestion,
}

impl WanOpts {
    /// The rows the issue asks for: tls and quic, each on tokio and uring.
    pub fn default_rows() -> Vec<(Backend, &'static str)> {
        vec![
            (Backend::Tls, "tokio"),
            (Backend::Tls, "uring"),
            (Backend::Quic, "tokio"),
            (Backend::Quic, "uring"),
        ]
    }
}

fn progress(s: &str) {
    eprintln!("[ron-perf] wan: {s}");
}

/// Runs every row; a row that cannot run (no io_uring) is skipped with a note.
pub fn run(o: &WanOpts) -> anyhow::Result<Vec<Row>> {
    o.imp.validate()?;
    let ss = SelfSigned::generate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &(backend, engine) in &o.rows {
        match rt.block_on(one_row(o, &ss, backend, engine)) {
            Ok(row) => {
                progress(&format!(
                    "{} {engine}: {:.0} fps, {:.3} Gb/s, p50 {:.0} us, p99 {:.0} us",
                    backend.as_str(),
                    row.frames_per_sec.unwrap_or(0.0),
                    row.gbps.unwrap_or(0.0),
                    row.p50_us.unwrap_or(0.0),
                    row.p99_us.unwrap_or(0.0),
                ));
                rows.push(row);
            }
            Err(e) => progress(&format!("skip {} {engine}: {e:#}", backend.as_str())),
        }
    }
    Ok(rows)
}

fn config(
    backend: Backend,
    congestion: ron_transport::Congestion,
) -> anyhow::Result<ron_transport::ValidConfig> {
    let mut c = Config::default();
    c.backend = backend;
    c.quic_congestion = congestion;
    c.bind_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    // Frames stall behind a lost segment for an RTT or more: do not count that as a stall.
    c.write_timeout = Duration::from_secs(30);
    c.read_timeout = Duration::from_secs(30);
    Ok(c.validate()?)
}

fn setup(
    backend: Backend,
    ss: &SelfSigned,
    congestion: ron_transport::Congestion,
) -> anyhow::Result<EngineSetup> {
    let server = ron_transport::tls::server_config_from_pem(
        ss.cert_pem.as_bytes(),
        ron_transport::tls::Zeroizing::new(ss.key_pem.clone().into_bytes()),
        PqMode::Off,
        &[],
    )?;
    let client =
        ron_transport::tls::client_config_from_ca_pem(ss.cert_pem.as_bytes(), PqMode::Off, &[])?;
    Ok(
        EngineSetup::new(config(backend, congestion)?, TransportMetrics::new())?
            .with_tls_server(server)
            .with_tls_client(client),
    )
}

/// Serves an echo on `engine`; returns the listening address.
async fn serve_echo<E: Engine>(engine: &E) -> anyhow::Result<SocketAddr> {
    let listener = engine.listen(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr();
    let serving = engine.serve(listener, |mut conn: E::Conn| async move {
        while let Ok(Some(f)) = conn.recv().await {
            if conn.send(f).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(serving);
    Ok(addr)
}

async fn one_row(
    o: &WanOpts,
    ss: &SelfSigned,
    backend: Backend,
    engine: &'static str,
) -> anyhow::Result<Row> {
    match engine {
        "tokio" => {
            measure(
                o,
                ss,
                backend,
                engine,
                setup(backend, ss, o.congestion)?.build_tokio()?,
            )
            .await
        }
        "uring" => {
            let server = setup(backend, ss, o.congestion)?
                .build_uring()
                .map_err(|e| anyhow!("uring engine: {e}"))?;
            measure(o, ss, backend, engine, server).await
        }
        other => Err(anyhow!("unknown wan engine {other:?}")),
    }
}

/// One row against `server`, which is shut down at the end.
async fn measure<E: Engine>(
    o: &WanOpts,
    ss: &SelfSigned,
    backend: Backend,
    engine: &'static str,
    server: E,
) -> anyhow::Result<Row> {
    let upstream = serve_echo(&server).await?;
    let row = measure_through(o, ss, backend, engine, upstream).await;
    server.shutdown(Duration::from_secs(1)).await;
    row
}

async fn measure_through(
    o: &WanOpts,
    ss: &SelfSigned,
    backend: Backend,
    engine: &'static str,
    upstream: SocketAddr,
) -> anyhow::Result<Row> {
    // Each row gets its own relay (a fresh RNG stream from the same seed).
    let (relay_addr, udp, tcp) = match backend {
        Backend::Quic => {
            let r = UdpRelay::start(upstream, o.imp).await?;
            (r.addr(), Some(r), None)
        }
        _ => {
            let r = TcpRelay::start(upstream, o.imp).await?;
            (r.addr(), None, Some(r))
        }
    };
    let client = setup(backend, ss, o.congestion)?.build_tokio()?;
    let payload = bytes::Bytes::from(vec![0x5a; FRAME]);
    let mut conns = Vec::with_capacity(o.conns);
    for _ in 0..o.conns {
        let opts = ron_transport::DialOptions {
            deadline: Duration::from_secs(10),
            ..Default::default()
        };
        conns.push(
            client
                .dial(relay_addr, opts)
                .await
                .context("dial through the relay")?,
        );
    }
    let start = Instant::now();
    let measure_from = start + o.warmup;
    let end = measure_from + o.duration;
    let mut tasks = Vec::new();
    for mut conn in conns {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut frames = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                conn.send(payload.clone()).await?;
                match tokio::time::timeout_at((end + Duration::from_secs(5)).into(), conn.recv())
                    .await
                {
                    Ok(Ok(Some(_))) => {}
                    Ok(Ok(None)) => return Err(anyhow!("server closed")),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => break, // the last frame outlived the window
                }
                if t >= measure_from {
                    hist.record(t.elapsed().as_micros().max(1) as u64)?;
                    frames += 1;
                }
            }
            let _ = conn.close().await;
            anyhow::Ok((hist, frames))
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut frames = 0u64;
    for t in tasks {
        let (h, f) = t.await??;
        hist.add(&h)?;
        frames += f;
    }
    client.shutdown(Duration::from_secs(1)).await;
    let (fwd, lost, reordered, overflow) = match (&udp, &tcp) {
        (Some(r), _) => r.stats().snapshot(),
        (_, Some(r)) => r.stats().snapshot(),
        _ => (0, 0, 0, 0),
    };
    progress(&format!(
        "{} {engine} relay: {fwd} forwarded, {lost} lost, {reordered} reordered, {overflow} overflowed",
        backend.as_str()
    ));
    let secs = o.duration.as_secs_f64();
    let pct = |q: f64| (!hist.is_empty()).then(|| hist.value_at_quantile(q) as f64);
    Ok(Row {
        scenario: "wan".to_owned(),
        transport: backend.as_str().to_owned(),
        engine: engine.to_owned(),
        conns: o.conns as u64,
        payload: Some(FRAME as u64),
        depth: Some(1),
        frames_per_sec: Some(frames as f64 / secs),
        gbps: Some(frames as f64 * FRAME as f64 * 8.0 / secs / 1e9),
        p50_us: pct(0.50),
        p95_us: pct(0.95),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        ..Row::default()
    })
}
