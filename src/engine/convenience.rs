//! The spec's one-call entry points (spec/INTEROP.md §1.2): [`connect_tls`] and [`serve_tls`],
//! thin conveniences over the adapter traits. Each builds an auto-selected engine
//! ([`AutoEngine`]: io_uring where the host allows it, tokio otherwise) with the default
//! configuration and a fresh metrics registry, and returns it beside the connection or listener
//! (drop the engine and its shards go with it). For configuration, metrics of your own, reloads
//! or several connections per engine, build an engine with
//! [`EngineSetup`] and call [`Engine::dial`] / [`Engine::listen`] / [`Engine::serve`] instead.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_rustls::rustls::{ClientConfig, ServerConfig};

use crate::config::{Backend, Config};
use crate::engine::auto::{AutoConn, AutoEngine, AutoListener};
use crate::engine::setup::EngineSetup;
use crate::engine::{DialOptions, DialTarget, Engine};
use crate::error::TransportError;
use crate::metrics::TransportMetrics;

fn tls_setup() -> Result<EngineSetup, TransportError> {
    let cfg = Config {
        backend: Backend::Tls,
        ..Config::default()
    };
    let valid = cfg.validate().map_err(|e| TransportError::Unsupported {
        what: format!("default TLS config: {e}"),
    })?;
    EngineSetup::new(valid, TransportMetrics::new())
}

/// Dials `host:port` over TLS 1.3 with `tls` as the client config: the name is resolved off the
/// async workers, the addresses are tried in order within the default dial deadline, and
/// `host` is the server name checked against the certificate.
///
/// ```no_run
/// # async fn demo(client: std::sync::Arc<ron_transport::rustls::ClientConfig>)
/// #     -> Result<(), ron_transport::TransportError> {
/// use ron_transport::{Bytes, Conn};
/// let (_engine, mut conn) = ron_transport::engine::convenience::connect_tls("localhost", 4443, client).await?;
/// conn.send(Bytes::from_static(b"hello")).await?;
/// let reply = conn.recv().await?;
/// # let _ = reply; Ok(()) }
/// ```
pub async fn connect_tls(
    host: &str,
    port: u16,
    tls: Arc<ClientConfig>,
) -> Result<(AutoEngine, AutoConn), TransportError> {
    let (engine, _choice) = AutoEngine::build(tls_setup()?.with_tls_client(tls))?;
    let conn = engine
        .dial(DialTarget::host(host, port), DialOptions::default())
        .await?;
    Ok((engine, conn))
}

/// Binds a TLS 1.3 listener on `bind` with `tls` as the server config. Serve it with
/// [`Engine::serve`] on the returned engine.
///
/// ```no_run
/// # async fn demo(server: std::sync::Arc<ron_transport::rustls::ServerConfig>)
/// #     -> Result<(), ron_transport::TransportError> {
/// use ron_transport::{Conn, Engine};
/// let (engine, listener) =
///     ron_transport::engine::convenience::serve_tls("127.0.0.1:4443".parse().unwrap(), server).await?;
/// engine
///     .serve(listener, |mut conn| async move {
///         while let Ok(Some(frame)) = conn.recv().await {
///             if conn.send(frame).await.is_err() {
///                 break;
///             }
///         }
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub async fn serve_tls(
    bind: SocketAddr,
    tls: Arc<ServerConfig>,
) -> Result<(AutoEngine, AutoListener), TransportError> {
    let (engine, _choice) = AutoEngine::build(tls_setup()?.with_tls_server(tls))?;
    let listener = engine.listen(bind).await?;
    Ok((engine, listener))
}
