//! `quinn`: QUIC by hand with quinn on tokio, the peer of ron-transport's `tokio` row on
//! `quic`. A quinn endpoint with the same quinn server config as the library's listener
//! (`ron_transport::quic::server_config` over the same `ValidConfig` and rustls server config:
//! same transport parameters, crypto provider, cipher suites and certificate), every accepted
//! bidirectional stream checked for the OAP/1 stream preface and echoed by the same
//! `Framed<_, LengthDelimitedCodec>` code as `tokio-framed`. No other project code in the path.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::anyhow;

use super::{adapter, framed, ServeOpts};

/// Serves until the process is killed; `ready` once the endpoint accepts.
pub fn serve(opts: &ServeOpts, ready: &dyn Fn(SocketAddr, &ServeOpts)) -> anyhow::Result<()> {
    let cfg = adapter::serve_config(opts)?;
    let max = usize::try_from(cfg.max_frame_bytes).unwrap_or(usize::MAX);
    let tls = ron_transport::tls::server_config(&cfg).map_err(|e| anyhow!("tls config: {e}"))?;
    let server =
        ron_transport::quic::server_config(&cfg, &tls).map_err(|e| anyhow!("quic config: {e}"))?;
    let rt = framed::runtime(opts.shards)?;
    eprintln!(
        "ron-perf serve: quinn quic, {} shard(s), max_frame_bytes={max}",
        opts.shards.max(1)
    );
    rt.block_on(async {
        let endpoint = quinn::Endpoint::server(server, opts.listen)?;
        ready(endpoint.local_addr()?, opts);
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else {
                    return;
                };
                let conn = Arc::new(conn);
                while let Ok((send, mut recv)) = conn.accept_bi().await {
                    let conn = conn.clone();
                    tokio::spawn(async move {
                        let mut preface = [0u8; 4];
                        if recv.read_exact(&mut preface).await.is_err()
                            || preface != ron_transport::quic::STREAM_PREFACE
                        {
                            return;
                        }
                        framed::echo(tokio::io::join(recv, send), max).await;
                        drop(conn);
                    });
                }
            });
        }
        anyhow::Ok(())
    })
}
