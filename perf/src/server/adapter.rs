//! ron-transport's own engines as echo servers, driven only through the adapter traits
//! (`Engine::listen` → `Listener::accept` → `Conn::recv` → `Conn::send`), so the rig measures
//! exactly what a consumer of the library gets, limits and metrics included.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::anyhow;
use ron_transport::config::{Backend, Config, ValidConfig};
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::{Conn, Engine, Listener};
use ron_transport::metrics::TransportMetrics;

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

/// Whether the uring row can run over `t` in this build: TCP through ron-shard's shard-local
/// handler API; TLS once ron-transport's uring engine (`src/engine/uring/`) exists.
pub fn uring_available(t: Transport) -> Result<(), String> {
    match t {
        Transport::Tcp => Ok(()),
        Transport::Tls => {
            Err("TLS on uring needs ron-transport's uring engine (not on main yet)".to_owned())
        }
    }
}

/// The engine configuration the rig serves with: the library defaults, except caps and
/// timeouts opened wide enough for the idle scenario (10,000 connections held for minutes);
/// TLS from the PEM files through the library's own loader (0600 check included).
pub fn serve_config(opts: &ServeOpts) -> anyhow::Result<ValidConfig> {
    let mut c = Config::default();
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

/// The shard-local echo handler: runs on the owning shard, echoes each frame in place.
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

/// Serves with the io_uring runtime: TCP through ron-shard's shard-local handler API (one
/// shard per `--shards`, threads inheriting the server-core affinity set by `serve`; the
/// runtime's own pinning is off so `--cores` decides). Runs until the process is killed.
pub fn serve_uring(opts: &ServeOpts, ready: &dyn Fn(SocketAddr, &ServeOpts)) -> anyhow::Result<()> {
    uring_available(opts.transport).map_err(|e| anyhow!(e))?;
    let rt = ron_shard::Runtime::start(ron_shard::RuntimeConfig {
        shards: opts.shards.max(1),
        pin: false,
        ring_entries: 4096,
        ..ron_shard::RuntimeConfig::default()
    })
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
