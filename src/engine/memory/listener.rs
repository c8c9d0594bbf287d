//! The memory listener: the tokio listener's accept path over a [`RawListener`] — admit (caps
//! and rate state) *before* any TLS handshake or buffer, count `accepts_total`, then hand the
//! pipe to the tokio engine's connection machinery (TLS handshakes as tracked tasks bounded by
//! `read_timeout`, exactly as on TCP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::Backend;
use crate::engine::admission::{self, Admission, Direction};
use crate::engine::memory::network::{MemoryNetwork, RawListener};
use crate::engine::tokio::listener::{accepted_plain, tls_accept};
use crate::engine::tokio::stream::{BoxIo, Stream};
use crate::engine::tokio::{EngineInner, TokioConn};
use crate::engine::{EngineKind, Listener};
use crate::error::TransportError;
use crate::readiness::ReadyState;

/// A bound memory listener.
pub struct MemoryListener {
    inner: Arc<EngineInner>,
    raw: RawListener,
    acceptor: Option<TlsAcceptor>,
    /// TLS handshakes in flight; each yields a ready connection or `None` (already counted).
    handshakes: JoinSet<Option<TokioConn>>,
}

impl std::fmt::Debug for MemoryListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryListener")
            .field("local", &self.raw.local_addr())
            .field("tls", &self.acceptor.is_some())
            .field("handshakes", &self.handshakes.len())
            .finish()
    }
}

impl MemoryListener {
    pub(crate) fn bind(
        inner: Arc<EngineInner>,
        net: &MemoryNetwork,
        addr: SocketAddr,
    ) -> Result<Self, TransportError> {
        let shared = &inner.shared;
        if inner.shutdown.is_cancelled() {
            return Err(TransportError::Cancelled);
        }
        let acceptor = match shared.backend {
            Backend::Tcp => None,
            Backend::Tls => match &shared.tls_server {
                Some(cfg) => Some(TlsAcceptor::from(cfg.clone())),
                None => {
                    shared.readiness.set(ReadyState::NotReady {
                        reason: "tls_config_missing",
                    });
                    return Err(TransportError::Unsupported {
                        what: "tls listener needs tls.enabled with cert/key paths, or \
                               EngineSetup::with_tls_server"
                            .into(),
                    });
                }
            },
            Backend::Quic => {
                return Err(TransportError::Unsupported {
                    what: "the memory engine does not speak quic".into(),
                })
            }
            Backend::Arti => {
                return Err(TransportError::Unsupported {
                    what: "the memory engine does not speak arti".into(),
                })
            }
        };
        let raw = match net.bind_raw(addr) {
            Ok(l) => l,
            Err(e) => {
                shared.readiness.set(ReadyState::NotReady {
                    reason: "bind_failed",
                });
                return Err(TransportError::Io(e));
            }
        };
        tracing::info!(
            target: "ron_transport",
            event = "listen",
            backend = shared.backend.as_str(),
            local_addr = %raw.local_addr(),
            "listening"
        );
        Ok(Self {
            inner,
            raw,
            acceptor,
            handshakes: JoinSet::new(),
        })
    }

    /// Admits one accepted connection. `None`: refused (counted, logged, pipe closed).
    fn admit(&self, peer: SocketAddr) -> Option<Admission> {
        let shared = &self.inner.shared;
        admission::admit(
            &shared.policy,
            &shared.metrics,
            shared.backend,
            EngineKind::Memory,
            peer,
            Direction::Inbound,
        )
        .ok()
    }
}

impl Listener for MemoryListener {
    type Conn = TokioConn;

    fn local_addr(&self) -> SocketAddr {
        self.raw.local_addr()
    }

    async fn accept(&mut self) -> Result<TokioConn, TransportError> {
        loop {
            let pipe = tokio::select! {
                biased;
                _ = self.inner.shutdown.cancelled() => {
                    self.handshakes.abort_all();
                    return Err(TransportError::Cancelled);
                }
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    match done {
                        Ok(Some(conn)) => return Ok(conn),
                        Ok(None) => continue,
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        Err(_) => continue,
                    }
                }
                r = self.raw.accept() => r.map_err(TransportError::Io)?,
            };
            let started = Instant::now();
            let peer = pipe.peer_addr();
            let local = pipe.local_addr();
            // Caps and rate state first: a refused peer costs no handshake and no buffer.
            let Some(permit) = self.admit(peer) else {
                drop(pipe);
                continue;
            };
            let io: BoxIo = Box::new(pipe);
            match &self.acceptor {
                None => {
                    let stream = Stream::Boxed(io);
                    return Ok(accepted_plain(
                        &self.inner,
                        stream,
                        permit,
                        peer,
                        local,
                        started,
                    ));
                }
                Some(acceptor) => {
                    let task = tls_accept(
                        self.inner.clone(),
                        acceptor.clone(),
                        io,
                        peer,
                        local,
                        permit,
                        started,
                    );
                    self.handshakes.spawn(self.inner.tasks.track_future(task));
                }
            }
        }
    }
}
