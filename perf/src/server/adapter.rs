//! ron-transport's own engines as echo servers. `tokio` and `uring` are served by the SAME
//! generic consumer code ([`serve_generic`]), written once against the drop-in adapter traits
//! (`Engine::listen`, then `Engine::serve(listener, handler)`, each connection's future echoing
//! `Conn::recv` → `Conn::send`), so the rig measures exactly what a consumer of the library
//! gets, limits and metrics included. `uring-raw` is the bare shard runtime under the uring
//! engine (ron-shard's handler API, no policy or metrics): the floor the `uring` row is held
//! against.

use std::net::SocketAddr;

use anyhow::anyhow;
use ron_transport::config::{Backend, ConfigLoader, ValidConfig};
use ron_transport::engine::setup::EngineSetup;
use ron_transport::metrics::TransportMetrics;
use ron_transport::{Conn, Engine, Listener};

use super::{ServeOpts, Transport};

/// The consumer code of the `tokio` and `uring` rows, generic over the engine: listen, report
/// ready, then hand every connection to `Engine::serve` with an echo handler. Runs until the
/// listener stops.
pub async fn serve_generic<E: Engine>(
    engine: &E,
    opts: &ServeOpts,
    ready: &dyn Fn(SocketAddr, &ServeOpts),
) -> anyhow::Result<()> {
    let target: ron_transport::engine::ListenTarget = match &opts.uds {
        Some(path) => path.clone().into(),
        None => opts.listen.into(),
    };
    let listener = engine
        .listen(target.clone())
        .await
        .map_err(|e| anyhow!("listen {target}: {e}"))?;
    ready(listener.local_addr(), opts);
    engine
        .serve(listener, |mut conn: E::Conn| async move {
            while let Ok(Some(f)) = conn.recv().await {
                if conn.send(f).await.is_err() {
                    break;
                }
            }
        })
        .await
        .map_err(|e| anyhow!("serve: {e}"))
}

/// Whether the uring rows can run over `t` in this build (every transport: QUIC is driven by
/// the shards; io_uring itself is probed by `EngineId::available`).
pub fn uring_available(t: Transport) -> Result<(), String> {
    match t {
        Transport::Tcp | Transport::Tls | Transport::Uds | Transport::Quic => Ok(()),
    }
}

/// The rig's defaults for the bench, a TOML layer under the environment: caps and timeouts
/// opened wide enough for the idle scenario (10,000 connections held for minutes).
pub const BENCH_DEFAULTS: &str = "max_conns = 1000000\n\
                                  idle_timeout = \"3600s\"\n\
                                  read_timeout = \"60s\"\n\
                                  write_timeout = \"60s\"\n";

/// The engine configuration the rig serves with, merged by the library's own loader: library
/// defaults, then [`BENCH_DEFAULTS`], then any `RON_TRANSPORT_*` variable of the environment
/// (which wins: e.g. `RON_TRANSPORT_CHUNK_BYTES=256KiB ron-perf run` or
/// `RON_TRANSPORT_IDLE_TIMEOUT=5s ron-perf serve` measure exactly that setting); TLS from the
/// PEM files through the library's own loader (0600 check included).
pub fn serve_config(opts: &ServeOpts) -> anyhow::Result<ValidConfig> {
    serve_config_from(opts, std::env::vars_os())
}

/// [`serve_config`] with an explicit environment (tests).
pub fn serve_config_from<I, K, V>(opts: &ServeOpts, env: I) -> anyhow::Result<ValidConfig>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<std::ffi::OsString>,
    V: Into<std::ffi::OsString>,
{
    let env: Vec<(std::ffi::OsString, std::ffi::OsString)> = env
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .filter(|(k, _)| k.to_str().is_some_and(|k| k.starts_with("RON_TRANSPORT_")))
        .collect();
    let mut c = ConfigLoader::new()
        .toml_str(BENCH_DEFAULTS)
        .env_vars(env)
        .merge()
        .map_err(|e| anyhow!("config from the environment: {e}"))?
        .config;
    c.bind_addr = Some(opts.listen);
    if let Some(path) = &opts.uds {
        // `uds.allow_uids` comes from the environment (RON_TRANSPORT_UDS_ALLOW_UIDS) if set;
        // empty admits only this process's uid.
        c.bind_addr = None;
        c.uds_path = Some(path.clone());
    }
    if opts.transport.is_tls() {
        c.backend = if opts.transport == Transport::Quic {
            Backend::Quic
        } else {
            Backend::Tls
        };
        c.tls_enabled = true;
        c.tls_cert_path = opts.cert.clone();
        c.tls_key_path = opts.key.clone();
    } else {
        c.backend = Backend::Tcp;
    }
    c.validate().map_err(|e| anyhow!("config: {e}"))
}

/// One line with the effective values a bench run depends on (printed by `ron-perf serve`).
pub fn describe_config(c: &ValidConfig) -> String {
    format!(
        "max_conns={} idle_timeout={:?} read_timeout={:?} write_timeout={:?} \
         max_frame_bytes={} chunk_bytes={} per_peer.max_conns={}",
        c.max_conns,
        c.idle_timeout,
        c.read_timeout,
        c.write_timeout,
        c.max_frame_bytes,
        c.chunk_bytes,
        c.per_peer_max_conns,
    )
}

fn announce(opts: &ServeOpts, cfg: &ValidConfig) {
    eprintln!(
        "ron-perf serve: {} {} config: {}",
        opts.engine.name(),
        opts.transport.as_str(),
        describe_config(cfg)
    );
}

/// `tokio`: the tokio engine through [`serve_generic`]; its `Engine::serve` spawns a task per
/// connection. The runtime flavour is the one `tokio-framed` runs on (`--flavour`), so the two
/// tokio rows differ only in the code on top: a current-thread runtime for one shard, else a
/// multi-thread runtime with one worker per shard (all pinned to the server cores by `serve`).
pub fn serve_tokio(opts: &ServeOpts, ready: &dyn Fn(SocketAddr, &ServeOpts)) -> anyhow::Result<()> {
    let cfg = serve_config(opts)?;
    announce(opts, &cfg);
    let current = opts.shards.max(1) == 1
        && matches!(opts.flavour, crate::server::framed::Flavour::CurrentThread);
    let rt = if current {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.shards.max(1))
            .enable_all()
            .build()?
    };
    let metrics = TransportMetrics::new();
    super::scrape::maybe_export(&metrics)?;
    rt.block_on(async {
        let engine = EngineSetup::new(cfg, metrics)
            .and_then(|s| s.build_tokio())
            .map_err(|e| anyhow!("tokio engine: {e}"))?;
        serve_generic(&engine, opts, ready).await
    })
}

/// `uring`: the io_uring engine through the same [`serve_generic`] code as `tokio`, the
/// drop-in path. The caller's runtime (current-thread, sharing the server cores with the
/// shards) only drives the `serve` future; where connection futures run is the engine's
/// business (`Engine::serve`).
pub fn serve_uring(opts: &ServeOpts, ready: &dyn Fn(SocketAddr, &ServeOpts)) -> anyhow::Result<()> {
    uring_available(opts.transport).map_err(|e| anyhow!(e))?;
    let cfg = serve_config(opts)?;
    announce(opts, &cfg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = TransportMetrics::new();
    super::scrape::maybe_export(&metrics)?;
    rt.block_on(async {
        let engine = EngineSetup::new(cfg, metrics)
            .and_then(|s| s.build_uring_with(shard_runtime(opts)))
            .map_err(|e| anyhow!("uring engine: {e}"))?;
        serve_generic(&engine, opts, ready).await
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
