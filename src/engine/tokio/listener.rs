//! The tokio listener: accept, admit (caps and rate state) *before* any TLS handshake or buffer,
//! then hand out the connection. TLS handshakes run concurrently as tracked tasks (bounded by
//! `read_timeout`, and in number by the connection cap they already hold), so one slow client
//! cannot stall `accept` for everybody else.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::engine::tokio::uds::ListenSock;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::Backend;
use crate::engine::admission::{self, Admission, Direction};
use crate::engine::tokio::conn::TokioConn;
use crate::engine::tokio::stream::{Stream, TlsTransport};
use crate::engine::tokio::{pq_label, EngineInner};
use crate::engine::{events, listen, ConnInfo, DialTarget, Listener};
use crate::error::{TimeoutOp, TransportError};
use crate::metrics::PqLabel;

/// A bound tokio listener.
pub struct TokioListener {
    inner: Arc<EngineInner>,
    sock: ListenSock,
    local: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    /// TLS handshakes in flight; each yields a ready connection or `None` (already counted).
    handshakes: JoinSet<Option<TokioConn>>,
}

impl std::fmt::Debug for TokioListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioListener")
            .field("local", &self.local)
            .field("tls", &self.acceptor.is_some())
            .field("handshakes", &self.handshakes.len())
            .finish()
    }
}

impl TokioListener {
    pub(crate) async fn bind(
        inner: Arc<EngineInner>,
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
                None => return Err(listen::tls_config_missing(&shared.readiness)),
            },
            Backend::Arti => {
                return Err(TransportError::Unsupported {
                    what: "the tokio engine does not speak arti".into(),
                })
            }
            #[cfg(feature = "quic")]
            Backend::Quic => {
                let (quic, local) = super::quic::QuicAccept::bind(&inner, addr)?;
                events::listen(shared.backend, inner.kind, local);
                return Ok(Self::with_sock(inner, ListenSock::Quic(quic), local, None));
            }
            #[cfg(not(feature = "quic"))]
            Backend::Quic => {
                return Err(TransportError::Unsupported {
                    what: "backend `quic` needs the `quic` feature".into(),
                })
            }
        };
        let tcp = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => return Err(listen::bind_failed(&shared.readiness, e)),
        };
        let local = tcp.local_addr()?;
        events::listen(shared.backend, inner.kind, local);
        Ok(Self::with_sock(
            inner,
            ListenSock::Tcp(tcp),
            local,
            acceptor,
        ))
    }

    pub(crate) fn with_sock(
        inner: Arc<EngineInner>,
        sock: ListenSock,
        local: SocketAddr,
        acceptor: Option<TlsAcceptor>,
    ) -> Self {
        Self {
            inner,
            sock,
            local,
            acceptor,
            handshakes: JoinSet::new(),
        }
    }

    /// Admits one accepted socket. `None`: refused (counted, logged, socket closed).
    fn admit(&self, peer: SocketAddr) -> Option<Admission> {
        let shared = &self.inner.shared;
        admission::admit(
            &shared.policy,
            &shared.metrics,
            shared.backend,
            self.inner.kind,
            peer,
            Direction::Inbound,
        )
        .ok()
    }
}

impl Listener for TokioListener {
    type Conn = TokioConn;

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn dial_target(&self) -> DialTarget {
        self.sock.dial_target(self.local)
    }

    async fn accept(&mut self) -> Result<TokioConn, TransportError> {
        #[cfg(feature = "quic")]
        if let ListenSock::Quic(quic) = &mut self.sock {
            return quic.accept(&self.inner).await;
        }
        loop {
            let accepted = tokio::select! {
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
                r = self.sock.accept(&self.inner.shared) => r,
            };
            let (sock, peer) = match accepted {
                Ok(Some(x)) => x,
                Ok(None) => continue, // a Unix peer `uds.allow_uids` refused (counted)
                Err(e) => match e.kind() {
                    io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::Interrupted => continue,
                    _ if is_fd_exhaustion(&e) => {
                        // EMFILE/ENFILE: back off instead of spinning on the ready listener.
                        tracing::warn!(target: "ron_transport", event = "accept", error = %e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    _ => return Err(TransportError::Io(e)),
                },
            };
            let started = Instant::now();
            // Caps and rate state first: a refused peer costs no handshake and no buffer.
            let Some(permit) = self.admit(peer) else {
                drop(sock);
                continue;
            };
            if let Err(e) = sock.set_nodelay() {
                tracing::debug!(target: "ron_transport", event = "accept", error = %e);
                continue;
            }
            let local = match sock.local_addr() {
                Ok(a) => a,
                Err(_) => continue,
            };
            match &self.acceptor {
                None => {
                    let stream = sock.into_stream();
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
                    let Some(sock) = sock.into_tcp() else {
                        continue; // never: a Unix listener has no TLS acceptor
                    };
                    let task = tls_accept(
                        self.inner.clone(),
                        acceptor.clone(),
                        sock,
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

/// Server-side TLS handshake, bounded by `read_timeout` (slow-loris protection), over a TCP
/// socket or any other [`TlsTransport`] (the memory engine's pipes).
pub(crate) async fn tls_accept<S: TlsTransport>(
    inner: Arc<EngineInner>,
    acceptor: TlsAcceptor,
    sock: S,
    peer: SocketAddr,
    local: SocketAddr,
    permit: Admission,
    started: Instant,
) -> Option<TokioConn> {
    let shared = &inner.shared;
    let backend = shared.backend;
    let result = bounded_handshake(&inner, async {
        acceptor
            .accept(sock)
            .await
            .map_err(|e| TransportError::Tls {
                detail: e.to_string(),
            })
    })
    .await;
    let bm = shared.metrics.backend(backend);
    match result {
        Ok(tls) => {
            let (_, session) = tls.get_ref();
            let pq = pq_label(session);
            let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
            let resumed =
                session.handshake_kind() == Some(tokio_rustls::rustls::HandshakeKind::Resumed);
            bm.handshake(pq).observe(started.elapsed().as_secs_f64());
            shared.metrics.pq_handshake_result(backend, pq, true);
            let info = ConnInfo {
                conn_id: shared.next_conn_id(),
                peer_addr: peer,
                local_addr: local,
                backend,
                engine: inner.kind,
                alpn,
                pq,
                resumed,
            };
            log_accept(&info, started);
            let stream = S::tls_stream(tokio_rustls::TlsStream::Server(tls));
            Some(inner.make_conn(stream, permit, info, None))
        }
        Err(e) => {
            handshake_failed(&inner, peer, started, &e);
            drop(permit);
            None
        }
    }
}

/// A server-side handshake (TLS over a stream, QUIC) bounded by `read_timeout`
/// (`Timeout{Handshake}`, slow-loris protection) and cut short by engine shutdown.
pub(crate) async fn bounded_handshake<T>(
    inner: &EngineInner,
    handshake: impl std::future::Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    let bound = inner.shared.config().read_timeout;
    tokio::select! {
        biased;
        _ = inner.shutdown.cancelled() => Err(TransportError::Cancelled),
        r = tokio::time::timeout(bound, handshake) => match r {
            Ok(r) => r,
            Err(_) => Err(TransportError::timeout(TimeoutOp::Handshake)),
        },
    }
}

/// The books of a failed server-side handshake: the reject first (whoever sees the failure
/// counter move also sees the reject), then for TLS `pq_handshake_total{result="fail"}` and
/// `tls_handshake_failures_total`, and one `handshake_failed` event.
pub(crate) fn handshake_failed(
    inner: &EngineInner,
    peer: SocketAddr,
    started: Instant,
    e: &TransportError,
) {
    let shared = &inner.shared;
    let backend = shared.backend;
    if let Some(reason) = e.reject_reason() {
        shared.metrics.reject(reason);
    }
    if let TransportError::Tls { .. } = e {
        shared
            .metrics
            .pq_handshake_result(backend, shared.pq_mode, false);
        shared.metrics.backend(backend).tls_failures.inc();
    }
    events::handshake_failed(
        e.reject_reason(),
        backend,
        inner.kind,
        peer,
        started.elapsed(),
        e,
    );
}

/// An accepted plain stream (no TLS) becomes a connection: establishment latency observed as
/// the handshake, one `accept` event. Shared by the listeners built on this machinery (tokio
/// TCP and Unix sockets, memory pipes).
pub(crate) fn accepted_plain(
    inner: &Arc<EngineInner>,
    stream: Stream,
    permit: Admission,
    peer: SocketAddr,
    local: SocketAddr,
    started: Instant,
) -> TokioConn {
    let shared = &inner.shared;
    let info = ConnInfo {
        conn_id: shared.next_conn_id(),
        peer_addr: peer,
        local_addr: local,
        backend: Backend::Tcp,
        engine: inner.kind,
        alpn: None,
        pq: PqLabel::Off,
        resumed: false,
    };
    shared
        .metrics
        .backend(Backend::Tcp)
        .handshake(PqLabel::Off)
        .observe(started.elapsed().as_secs_f64());
    log_accept(&info, started);
    inner.make_conn(stream, permit, info, None)
}

pub(crate) fn log_accept(info: &ConnInfo, started: Instant) {
    if info.backend.is_tls() {
        log_handshake(info, started, None);
    }
    events::accept(&facts(info, None), info.pq, started.elapsed());
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One `event="handshake"` line for a finished TLS handshake.
pub(crate) fn log_handshake(info: &ConnInfo, started: Instant, corr_id: Option<&str>) {
    events::handshake(
        &facts(info, corr_id),
        info.pq,
        info.resumed,
        started.elapsed(),
    );
}

fn facts<'a>(info: &ConnInfo, corr_id: Option<&'a str>) -> events::ConnFacts<'a> {
    events::ConnFacts {
        conn_id: info.conn_id,
        corr_id,
        backend: info.backend,
        engine: info.engine,
        peer: info.peer_addr,
    }
}
