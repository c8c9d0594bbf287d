//! ron-transport's own engines as echo servers, driven only through the adapter traits
//! (`Engine::listen` → `Listener::accept` → `Conn::recv` → `Conn::send`), so the rig measures
//! exactly what a consumer of the library gets, limits and metrics included.

use std::net::SocketAddr;

use anyhow::{anyhow, bail};
use ron_transport::engine::{Conn, Engine, Listener};

use super::ServeOpts;

// Used by `serve_tokio` / `serve_uring` once the engines are on main.
#[allow(dead_code)]
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
    Err("ron-transport's tokio engine is not on main yet".to_owned())
}

/// Whether ron-transport's uring engine is in this build.
pub fn uring_available() -> Result<(), String> {
    Err("ron-transport's uring engine is not on main yet".to_owned())
}

/// Serves with the tokio engine.
pub fn serve_tokio(opts: &ServeOpts, ready: &dyn Fn(SocketAddr, &ServeOpts)) -> anyhow::Result<()> {
    let _ = (opts, ready);
    tokio_available().map_err(|e| anyhow!(e))?;
    bail!("unreachable: tokio engine unavailable")
}

/// Serves with the uring engine.
pub fn serve_uring(opts: &ServeOpts, ready: &dyn Fn(SocketAddr, &ServeOpts)) -> anyhow::Result<()> {
    let _ = (opts, ready);
    uring_available().map_err(|e| anyhow!(e))?;
    bail!("unreachable: uring engine unavailable")
}
