//! `tokio-framed`: what a user writes by hand instead of ron-transport. tokio + tokio-util
//! `Framed<_, LengthDelimitedCodec>` (4-byte big-endian length prefix, like the rig's wire
//! format; max frame length = the config's `limits.max_frame_bytes`), one task per connection
//! echoing every frame with `SinkExt::feed` and flushing only when no further frame is ready
//! (what `StreamExt::forward` does), TLS through tokio-rustls with the server config the
//! `tokio` row uses (same crypto provider, cipher suites, key-exchange groups and certificate:
//! `ron_transport::tls::server_config` over the same `ValidConfig`). No project code in the
//! data path: ron-transport only builds the rustls config and supplies `max_frame_bytes`.
//!
//! Runtime flavour: `current-thread` (default; one runtime thread per shard, each with its own
//! SO_REUSEPORT listener) or `multi-thread` (one runtime with one worker per shard), chosen with
//! `ron-perf serve --flavour`. The default is the one that measured faster on the reference
//! machine (docs/perf.md, "tokio-framed runtime flavour").

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::{adapter, bind_reuseport, ServeOpts, Transport};

/// The tokio runtime flavour a tokio-framed server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavour {
    /// One current-thread runtime per shard thread.
    #[default]
    CurrentThread,
    /// One multi-thread runtime, one worker per shard.
    MultiThread,
}

impl Flavour {
    /// CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::CurrentThread => "current-thread",
            Self::MultiThread => "multi-thread",
        }
    }

    /// Parses a CLI name.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "current-thread" | "current_thread" | "current" => Ok(Self::CurrentThread),
            "multi-thread" | "multi_thread" | "multi" => Ok(Self::MultiThread),
            _ => Err(anyhow!(
                "unknown runtime flavour {s:?} (current-thread|multi-thread)"
            )),
        }
    }
}

/// The codec: u32 big-endian length prefix, payload only, at most `max` bytes.
fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max)
        .new_codec()
}

/// A current-thread runtime for one shard, else a multi-thread runtime with one worker per
/// shard (the servers whose one accept loop spreads connections over the workers).
pub(crate) fn runtime(shards: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if shards.max(1) == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(shards)
            .enable_all()
            .build()
    }
}

/// Echoes every frame back: `feed` each frame, flush only when no further frame is ready.
pub(crate) async fn echo<S: AsyncRead + AsyncWrite + Unpin>(io: S, max: usize) {
    let mut framed = Framed::new(io, codec(max));
    let mut next = framed.next().await;
    while let Some(Ok(frame)) = next {
        if framed.feed(frame.freeze()).await.is_err() {
            return;
        }
        next = match framed.next().now_or_never() {
            Some(n) => n,
            None => {
                if SinkExt::<bytes::Bytes>::flush(&mut framed).await.is_err() {
                    return;
                }
                framed.next().await
            }
        };
    }
    let _ = SinkExt::<bytes::Bytes>::flush(&mut framed).await;
}

/// Accepts forever on `l` (an already bound std listener), spawning one echo task per
/// connection on the current runtime.
async fn accept_loop(
    l: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max: usize,
) -> anyhow::Result<()> {
    l.set_nonblocking(true)?;
    let l = tokio::net::TcpListener::from_std(l)?;
    loop {
        let (s, _) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("tokio-framed accept: {e}");
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        match &tls {
            None => {
                tokio::spawn(echo(s, max));
            }
            Some(acc) => {
                let acc = acc.clone();
                tokio::spawn(async move {
                    if let Ok(s) = acc.accept(s).await {
                        echo(s, max).await;
                    }
                });
            }
        }
    }
}

/// The tokio-framed echo server over a Unix-domain socket (a stale socket file at the path is
/// replaced): one listener, a current-thread runtime for one shard, else a multi-thread
/// runtime with one worker per shard.
fn serve_uds(
    opts: &ServeOpts,
    max: usize,
    ready: &dyn Fn(SocketAddr, &ServeOpts),
) -> anyhow::Result<()> {
    let path = opts
        .uds
        .clone()
        .ok_or_else(|| anyhow!("--transport uds needs --listen PATH"))?;
    if std::os::unix::net::UnixStream::connect(&path).is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let l = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("bind {}", path.display()))?;
    l.set_nonblocking(true)?;
    eprintln!(
        "ron-perf serve: tokio-framed uds at {} on {} worker(s), max_frame_bytes={max}",
        path.display(),
        opts.shards.max(1)
    );
    let rt = runtime(opts.shards)?;
    rt.block_on(async move {
        let l = tokio::net::UnixListener::from_std(l)?;
        ready(ron_transport::engine::uds::uid_addr(0), opts);
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(echo(s, max));
                }
                Err(e) => eprintln!("tokio-framed accept: {e}"),
            }
        }
    })
}

/// Runs the tokio-framed echo server.
pub fn serve(opts: &ServeOpts, ready: &dyn Fn(SocketAddr, &ServeOpts)) -> anyhow::Result<()> {
    // The same effective config as the ron-transport rows (defaults, bench layer, environment):
    // only `max_frame_bytes` and, for TLS, the rustls server config are taken from it.
    let cfg = adapter::serve_config(opts)?;
    let max = usize::try_from(cfg.max_frame_bytes).unwrap_or(usize::MAX);
    if opts.transport == Transport::Uds {
        return serve_uds(opts, max, ready);
    }
    let tls = match opts.transport {
        Transport::Tcp | Transport::Uds => None,
        Transport::Quic => return Err(anyhow!("tokio-framed does not speak quic")),
        Transport::Tls => Some(tokio_rustls::TlsAcceptor::from(Arc::clone(
            &ron_transport::tls::server_config(&cfg).map_err(|e| anyhow!("tls config: {e}"))?,
        ))),
    };
    eprintln!(
        "ron-perf serve: tokio-framed {} on a {} runtime, {} shard(s), max_frame_bytes={max}",
        opts.transport.as_str(),
        opts.flavour.name(),
        opts.shards.max(1)
    );
    match opts.flavour {
        Flavour::MultiThread => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(opts.shards.max(1))
                .enable_all()
                .build()?;
            let l = bind_reuseport(opts.listen, 1)?.remove(0);
            let addr = l.local_addr()?;
            rt.block_on(async move {
                let h = tokio::spawn(accept_loop(l, tls, max));
                ready(addr, opts);
                h.await.map_err(|e| anyhow!("accept task: {e}"))?
            })
        }
        Flavour::CurrentThread => {
            let ls = bind_reuseport(opts.listen, opts.shards)?;
            let addr = ls[0].local_addr()?;
            let mut hs = Vec::new();
            for l in ls {
                let tls = tls.clone();
                hs.push(std::thread::spawn(move || -> anyhow::Result<()> {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("runtime")?
                        .block_on(accept_loop(l, tls, max))
                }));
            }
            ready(addr, opts);
            for h in hs {
                h.join()
                    .map_err(|_| anyhow!("tokio-framed thread panicked"))??;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavour_names_roundtrip() {
        for f in [Flavour::CurrentThread, Flavour::MultiThread] {
            assert_eq!(Flavour::parse(f.name()).unwrap(), f);
        }
        assert!(Flavour::parse("both").is_err());
    }

    #[test]
    fn codec_refuses_frames_above_the_ceiling() {
        use tokio_util::codec::Decoder;
        let mut c = codec(64 * 1024);
        let mut buf = bytes::BytesMut::from(&(64u32 * 1024 + 1).to_be_bytes()[..]);
        assert!(c.decode(&mut buf).is_err());
        let mut buf = bytes::BytesMut::from(&[0, 0, 0, 3, 1, 2, 3][..]);
        assert_eq!(&c.decode(&mut buf).unwrap().unwrap()[..], &[1, 2, 3]);
    }
}
