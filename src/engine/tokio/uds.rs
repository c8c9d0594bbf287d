//! The tokio engine on Unix-domain sockets: the listening socket (TCP or a `uds.path` socket,
//! [`ListenSock`]), the `SO_PEERCRED` check of each accepted Unix peer before any byte is read,
//! and dials to a socket path. The socket-file rules and the allowlist live in
//! [`crate::engine::uds`], shared with the uring engine. A Unix connection is a plain-frame
//! connection (backend label `tcp`) with the same limits, timeouts, caps, rate limits and
//! metrics as a TCP one; its peer address is the uid address of [`crate::engine::uds`].

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::config::Backend;
use crate::engine::admission::{self, Direction};
use crate::engine::shared::EngineShared;
use crate::engine::tokio::listener::TokioListener;
use crate::engine::tokio::stream::Stream;
use crate::engine::tokio::{EngineInner, TokioConn, TokioEngine};
use crate::engine::uds::{self, SocketFile};
use crate::engine::{ConnInfo, DialOptions, DialTarget, EngineKind};
use crate::error::{TimeoutOp, TransportError};
use crate::metrics::PqLabel;
use crate::readiness::ReadyState;

/// What a tokio listener accepts on.
#[derive(Debug)]
pub(crate) enum ListenSock {
    /// A TCP socket (plain or TLS).
    Tcp(TcpListener),
    /// A Unix-domain socket at `file.path()` (removed when this is dropped).
    Unix(UnixListener, Arc<SocketFile>),
    /// A quinn endpoint (its own accept path: `TokioListener::accept` takes it first).
    #[cfg(feature = "quic")]
    Quic(super::quic::QuicAccept),
}

/// One accepted socket.
pub(crate) enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl ListenSock {
    /// The next accepted socket with its (admission) peer address. `Ok(None)`: a Unix peer
    /// refused by `uds.allow_uids` (logged, counted, closed unread).
    pub(crate) async fn accept(
        &self,
        shared: &EngineShared,
    ) -> io::Result<Option<(Accepted, SocketAddr)>> {
        match self {
            Self::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                Ok(Some((Accepted::Tcp(s), peer)))
            }
            Self::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                let Ok(cred) = uds::peer_cred(&s) else {
                    return Ok(None); // the peer is gone already
                };
                if !uds::permit_peer(&shared.config(), &shared.metrics, cred, EngineKind::Tokio) {
                    return Ok(None);
                }
                Ok(Some((Accepted::Unix(s), cred.addr())))
            }
            #[cfg(feature = "quic")]
            Self::Quic(_) => std::future::pending().await,
        }
    }

    /// Where a dialer reaches this listener.
    pub(crate) fn dial_target(&self, local: SocketAddr) -> DialTarget {
        match self {
            Self::Tcp(_) => DialTarget::Addr(local),
            Self::Unix(_, f) => DialTarget::Unix(f.path().to_path_buf()),
            #[cfg(feature = "quic")]
            Self::Quic(_) => DialTarget::Addr(local),
        }
    }
}

impl Accepted {
    /// `TCP_NODELAY` on TCP; nothing to do on a Unix socket.
    pub(crate) fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_nodelay(true),
            Self::Unix(_) => Ok(()),
        }
    }

    /// The local address (a Unix socket: the server's own uid address).
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Tcp(s) => s.local_addr(),
            Self::Unix(_) => Ok(uds::uid_addr(uds::current_uid())),
        }
    }

    /// The plain stream.
    pub(crate) fn into_stream(self) -> Stream {
        match self {
            Self::Tcp(s) => Stream::Tcp(s),
            Self::Unix(s) => Stream::Unix(s),
        }
    }

    /// The TCP socket, for a TLS handshake (a Unix listener never has a TLS acceptor).
    pub(crate) fn into_tcp(self) -> Option<TcpStream> {
        match self {
            Self::Tcp(s) => Some(s),
            Self::Unix(_) => None,
        }
    }
}

impl TokioListener {
    /// Binds a listener on the Unix-domain socket at `path` (socket-file rules of
    /// [`crate::engine::uds`]).
    pub(crate) async fn bind_unix(
        inner: Arc<EngineInner>,
        path: PathBuf,
    ) -> Result<Self, TransportError> {
        let shared = &inner.shared;
        if inner.shutdown.is_cancelled() {
            return Err(TransportError::Cancelled);
        }
        if shared.backend != Backend::Tcp {
            return Err(uds::no_tls(&format_args!("unix:{}", path.display())));
        }
        let bound = uds::bind(&path).and_then(|(l, file)| {
            l.set_nonblocking(true)?;
            Ok((UnixListener::from_std(l)?, file))
        });
        let (l, file) = match bound {
            Ok(x) => x,
            Err(e) => {
                shared.readiness.set(ReadyState::NotReady {
                    reason: "bind_failed",
                });
                return Err(e);
            }
        };
        inner.uds_files.track(&file);
        let local = uds::uid_addr(uds::current_uid());
        tracing::info!(
            target: "ron_transport",
            event = "listen",
            backend = shared.backend.as_str(),
            local_addr = %local,
            uds_path = %path.display(),
            "listening"
        );
        Ok(Self::with_sock(
            inner,
            ListenSock::Unix(l, file),
            local,
            None,
        ))
    }
}

impl TokioEngine {
    /// Dials the Unix-domain socket at `path`: admitted like a TCP dial (caps and rate state,
    /// keyed by this process's uid address), connected within `opts.deadline`.
    pub(crate) async fn dial_unix(
        &self,
        path: &std::path::Path,
        opts: &DialOptions,
        corr_id: &Option<Arc<str>>,
        started: Instant,
    ) -> Result<TokioConn, TransportError> {
        let inner = &self.inner;
        let shared = &inner.shared;
        let backend = shared.backend;
        let own = uds::uid_addr(uds::current_uid());
        if backend != Backend::Tcp {
            return Err(uds::no_tls(&format_args!("unix:{}", path.display())));
        }
        // Outbound connections count against the same caps as inbound ones (keyed by our uid).
        let permit = admission::admit(
            &shared.policy,
            &shared.metrics,
            backend,
            inner.kind,
            own,
            Direction::Outbound,
        )?;
        let stream = tokio::select! {
            biased;
            _ = inner.shutdown.cancelled() => return Err(TransportError::Cancelled),
            r = tokio::time::timeout(opts.deadline, UnixStream::connect(path)) => match r {
                Ok(r) => r?,
                Err(_) => return Err(TransportError::timeout(TimeoutOp::Dial)),
            },
        };
        let peer = uds::peer_cred(&stream).map_or(own, |c| c.addr());
        shared
            .metrics
            .backend(backend)
            .handshake(PqLabel::Off)
            .observe(started.elapsed().as_secs_f64());
        let info = ConnInfo {
            conn_id: shared.next_conn_id(),
            peer_addr: peer,
            local_addr: own,
            backend,
            engine: inner.kind,
            alpn: None,
            pq: PqLabel::Off,
            resumed: false,
        };
        Ok(inner.make_conn(Stream::Unix(stream), permit, info, corr_id.clone()))
    }
}
