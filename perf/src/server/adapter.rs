//! ron-transport's own engines as echo servers, driven only through the adapter traits
//! (`Engine::listen` → `Listener::accept` → `Conn::recv` → `Conn::send`), so the rig measures
//! exactly what a consumer of the library gets, limits and metrics included.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::anyhow;
use ron_transport::config::{Backend, Config, ConfigLoader, ValidConfig};
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::uring::local::Frame;
use ron_transport::engine::uring::{serve_local, LocalCtx, LocalHandler};
use ron_transport::engine::{Conn, ConnInfo, Engine, Listener};
use ron_transport::metrics::TransportMetrics;
use ron_transport::TransportError;

use super::{ServeOpts, Transport};

/// Accepts forever and echoes every frame back on the same connection.
pub async fn serve_adapter<E: Engine>(
    engine: &E,
    opts: &ServeOpts,
    ready: &dyn Fn(SocketAddr, &ServeOpts),
) -> anyhow::Result<()> {
    let mut l = engine
        .listen(opts.listen)
        .await
        .map_err(|e| anyhow!("listen {}: {e}", opts.listen))?;
    ready(l.local_addr(), opts);
    loop {
        match l.accept().await {
            Ok(mut c) => {
                tokio::spawn(async move {
                    while let Ok(Some(f)) = c.recv().await {
                        if c.send(f).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

/// Whether ron-transport's tokio engine is in this build.
pub fn tokio_available() -> Result<(), String> {
    Ok(())
}

/// Whether the uring row can run over `t` in this build: both TCP and TLS go through
/// ron-transport's shard-local serving API (`engine::uring::serve_local`); TLS is driven by the
/// shard's rustls unbuffered pump.
pub fn uring_available(t: Transport) -> Result<(), String> {
    match t {
        Transport::Tcp | Transport::Tls => Ok(()),
    }
}

/// The engine configuration the rig serves with: the library defaults overlaid by any
/// `RON_TRANSPORT_*` variables in the environment (the library's own loader, so e.g.
/// `RON_TRANSPORT_CHUNK_BYTES=256KiB ron-perf run` measures every ron-transport engine with
/// that setting), except caps and timeouts opened wide enough for the idle scenario (10,000
/// connections held for minutes); TLS from the PEM files through the library's own loader
/// (0600 check included).
pub fn serve_config(opts: &ServeOpts) -> anyhow::Result<ValidConfig> {
    let mut c: Config = ConfigLoader::new()
        .from_process_env()
        .merge()
        .map_err(|e| anyhow!("config from the environment: {e}"))?
        .config;
    c.bind_addr = Some(opts.listen);
    c.max_conns = 1_000_000;
    c.idle_timeout = Duration::from_secs(3600);
    c.read_timeout = Duration::from_secs(60);
    c.write_timeout = Duration::from_secs(60);
    if opts.transport == Transport::Tls {
        c.backend = Backend::Tls;
        c.tls_enabled = true;
        c.tls_cert_path = opts.cert.clone();
        c.tls_key_path = opts.key.clone();
    } else {
        c.backend = Backend::Tcp;
    }
    c.validate().map_err(|e| anyhow!("config: {e}"))
}

/// Serves with the tokio engine on a multi-thread runtime with one worker per shard (all
/// pinned to the server cores by `serve`).
pub fn serve_tokio(opts: &ServeOpts, ready: &dyn Fn(SocketAddr, &ServeOpts)) -> anyhow::Result<()> {
    let cfg = serve_config(opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.shards.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let engine = EngineSetup::new(cfg, TransportMetrics::new())
            .and_then(|s| s.build_tokio())
            .map_err(|e| anyhow!("tokio engine: {e}"))?;
        serve_adapter(&engine, opts, ready).await
    })
}

/// Serves with ron-transport's io_uring engine through the adapter traits (`uring-handles`):
/// the same accept → recv → send loop as the tokio row, on a current-thread tokio runtime
/// whose thread shares the server cores with the shards. This is what a consumer that plugs
/// the uring engine in behind the `Engine` trait gets.
pub fn serve_uring_handles(
    opts: &ServeOpts,
    ready: &dyn Fn(SocketAddr, &ServeOpts),
) -> anyhow::Result<()> {
    uring_available(opts.transport).map_err(|e| anyhow!(e))?;
    let cfg = serve_config(opts)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let engine = EngineSetup::new(cfg, TransportMetrics::new())
            .and_then(|s| s.build_uring_with(shard_runtime(opts)))
            .map_err(|e| anyhow!("uring engine: {e}"))?;
        serve_adapter(&engine, opts, ready).await
    })
}

/// The shard-runtime knobs the uring rows use: one shard per `--shards`, threads inheriting
/// the server-core affinity set by `serve` (the runtime's own pinning is off so `--cores`
/// decides).
fn shard_runtime(opts: &ServeOpts) -> ron_shard::RuntimeConfig {
    ron_shard::RuntimeConfig {
        shards: opts.shards.max(1),
        pin: false,
        ring_entries: 4096,
        ..ron_shard::RuntimeConfig::default()
    }
}

/// ron-transport's shard-local echo: runs on the owning shard, echoes each frame in place
/// (no copy) through the library's `LocalCtx`, which applies the frame ceiling and counts.
struct LocalEcho;

impl LocalHandler for LocalEcho {
    fn on_frame(&mut self, ctx: &mut LocalCtx<'_, '_>, frame: Frame<'_>) {
        if ctx.send_frame(&frame).is_err() {
            // Closing (or refused and counted); the outcome arrives in `on_close`.
        }
    }

    fn on_close(&mut self, _outcome: Result<(), TransportError>) {}
}

/// Serves with ron-transport's io_uring engine through its shard-local API
/// (`engine::uring::serve_local`): admission (`Policy::admit`, caps), the frame ceiling from
/// the live config, timeouts, rate accounting and every metric on, exactly what a consumer of
/// the library gets. Runs until the process is killed.
pub fn serve_uring(opts: &ServeOpts, ready: &dyn Fn(SocketAddr, &ServeOpts)) -> anyhow::Result<()> {
    uring_available(opts.transport).map_err(|e| anyhow!(e))?;
    let cfg = serve_config(opts)?;
    let shared = EngineSetup::new(cfg, TransportMetrics::new())
        .and_then(|s| s.build_shared())
        .map_err(|e| anyhow!("uring engine: {e}"))?;
    let server = serve_local(shared, shard_runtime(opts), opts.listen, |_: &ConnInfo| {
        LocalEcho
    })
    .map_err(|e| anyhow!("uring engine: {e}"))?;
    ready(server.local_addr(), opts);
    loop {
        std::thread::park();
    }
}

/// The raw shard echo handler (`uring-raw`): ron-shard's handler API with nothing around it.
struct ShardEcho;

impl ron_shard::ConnHandler for ShardEcho {
    fn on_frame(&mut self, ctx: &mut ron_shard::ConnCtx<'_>, frame: ron_shard::Frame<'_>) {
        if ctx.send_frame(&frame).is_err() {
            // The connection is failing; its close reason arrives in `on_close`.
        }
    }

    fn on_close(&mut self, _reason: &ron_shard::CloseReason) {}
}

/// Admits every peer (the rig runs on loopback) and opens a [`ShardEcho`].
struct AdmitAll;

impl ron_shard::AcceptHooks for AdmitAll {
    fn admit(&self, _peer: SocketAddr) -> Result<ron_shard::AdmitToken, ron_shard::Reject> {
        Ok(ron_shard::AdmitToken::empty())
    }

    fn open(
        &self,
        _token: ron_shard::AdmitToken,
        _meta: &ron_shard::ConnMeta,
        _remote: ron_shard::ConnRemote,
    ) -> Box<dyn ron_shard::ConnHandler> {
        Box::new(ShardEcho)
    }
}

/// `uring-raw`: the bare ron-shard runtime (no admission, limits beyond the shard's default
/// frame ceiling, timeouts or metrics), TCP only. It is not ron-transport's engine; it shows
/// what the engine's policy and metrics cost on top of the runtime (`uring` ÷ `uring-raw`).
/// Runs until the process is killed.
pub fn serve_uring_raw(
    opts: &ServeOpts,
    ready: &dyn Fn(SocketAddr, &ServeOpts),
) -> anyhow::Result<()> {
    if opts.transport != Transport::Tcp {
        return Err(anyhow!("uring-raw speaks plain TCP only"));
    }
    let rt = ron_shard::Runtime::start(shard_runtime(opts))
        .map_err(|e| anyhow!("ron-shard runtime: {e}"))?;
    let l = ron_shard::bind(opts.listen)?;
    let addr = l.local_addr()?;
    rt.listen(
        l,
        ron_shard::ConnOptions::default(),
        std::sync::Arc::new(AdmitAll),
    )
    .map_err(|e| anyhow!("ron-shard listen: {e}"))?;
    ready(addr, opts);
    loop {
        std::thread::park();
    }
}
