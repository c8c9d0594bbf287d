//! QUIC on the tokio engine (feature `quic`): quinn drives the UDP socket, and every
//! bidirectional stream becomes an ordinary tokio connection — the same reader, writer task,
//! frame decoder, limits, deadlines and metrics as TCP and TLS ([`super::conn`],
//! [`super::writer`]) — through [`QuicIo`], a byte stream over one quinn stream pair.
//!
//! Listener: under a handshake flood (in-flight handshakes at [`crate::quic::RETRY_ABOVE_HANDSHAKES`] or
//! half of `max_conns`) a peer whose address is not validated gets a stateless Retry first.
//! Each `Incoming` is admitted (caps, per-peer caps, pacing buckets) before
//! `Incoming::accept` creates any connection state; a refused peer gets a CONNECTION_CLOSE
//! (`Incoming::refuse`) and nothing else. Admitted connections run as tracked tasks: the
//! handshake (bounded by `read_timeout`, like TLS), then every stream the peer opens (up to
//! `quic.max_streams` at once) is checked for [`STREAM_PREFACE`] and handed to `accept`.
//!
//! Dialer: one quinn client endpoint (its own UDP socket) and one connection per dial, one
//! stream on it. The configs come from [`crate::quic`], shared with the uring driver.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use crate::config::Backend;
use crate::engine::admission::{self, Admission, Direction};
use crate::engine::tokio::conn::TokioConn;
use crate::engine::tokio::listener::{bounded_handshake, handshake_failed, log_accept};
use crate::engine::tokio::stream::Stream;
use crate::engine::tokio::EngineInner;
use crate::engine::{listen, ConnInfo, DialOptions, DialTarget};
use crate::error::{RejectReason, TimeoutOp, TransportError};
use crate::metrics::PqLabel;
use crate::quic::{connection_error, CLOSE_DONE, CLOSE_REFUSED, STREAM_PREFACE};

/// Streams accepted and handshaken, waiting for `Listener::accept`.
const READY_QUEUE: usize = 64;

use crate::quic::retry_threshold;

/// Counts one handshake in flight until dropped.
struct Handshaking(Arc<AtomicUsize>);

impl Handshaking {
    fn start(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        Self(n.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One QUIC connection shared by its stream connections: closed when the last of them ends
/// (or when every holder is gone). Holds the admission (caps are per QUIC connection) and, for
/// a dialed connection, its client endpoint.
#[derive(Debug)]
pub(crate) struct QuicLink {
    conn: quinn::Connection,
    open_streams: AtomicUsize,
    permit: Arc<Admission>,
    _endpoint: Option<quinn::Endpoint>,
}

impl QuicLink {
    fn new(conn: quinn::Connection, permit: Admission, endpoint: Option<quinn::Endpoint>) -> Self {
        Self {
            conn,
            open_streams: AtomicUsize::new(0),
            permit: Arc::new(permit),
            _endpoint: endpoint,
        }
    }
}

impl Drop for QuicLink {
    fn drop(&mut self) {
        self.conn.close(VarIntCode(CLOSE_DONE).into(), b"");
    }
}

/// A u32 application error code as a quinn `VarInt`.
struct VarIntCode(u32);

impl From<VarIntCode> for quinn::VarInt {
    fn from(c: VarIntCode) -> Self {
        quinn::VarInt::from_u32(c.0)
    }
}

/// One bidirectional QUIC stream as a byte stream. Shutting the write side down finishes the
/// stream and waits until the peer has acknowledged everything (so closing the connection
/// afterwards loses nothing).
pub(crate) struct QuicIo {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    finishing: Option<Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send>>>,
    link: Arc<QuicLink>,
}

impl QuicIo {
    fn new(send: quinn::SendStream, recv: quinn::RecvStream, link: Arc<QuicLink>) -> Self {
        link.open_streams.fetch_add(1, Ordering::AcqRel);
        Self {
            send,
            recv,
            finishing: None,
            link,
        }
    }
}

impl Drop for QuicIo {
    fn drop(&mut self) {
        if self.link.open_streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last stream of this connection ended: close it.
            self.link.conn.close(VarIntCode(CLOSE_DONE).into(), b"");
        }
    }
}

impl AsyncRead for QuicIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.finishing.is_none() {
            if let Err(e) = me.send.finish() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, e)));
            }
            let stopped = me.send.stopped();
            me.finishing = Some(Box::pin(async move {
                match stopped.await {
                    // Acknowledged in full, or the peer stopped reading: done either way.
                    Ok(_) => Ok(()),
                    Err(e) => Err(io::Error::new(io::ErrorKind::NotConnected, e)),
                }
            }));
        }
        match me.finishing.as_mut() {
            Some(f) => f.as_mut().poll(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// The key-exchange label of a QUIC handshake. quinn does not expose the negotiated group, so
/// this is the configured posture: with `pq.mode = "hybrid"` X25519MLKEM768 is offered (and
/// preferred) first by both sides of this crate.
fn pq_of(inner: &EngineInner) -> PqLabel {
    inner.shared.pq_mode
}

/// The ALPN a finished handshake agreed on.
fn alpn_of(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
}

/// A quinn stream read/write error as the transport sees it.
pub(crate) fn stream_error(e: &io::Error) -> Option<TransportError> {
    let inner = e.get_ref()?;
    let lost = match (
        inner.downcast_ref::<quinn::ReadError>(),
        inner.downcast_ref::<quinn::WriteError>(),
    ) {
        (Some(quinn::ReadError::ConnectionLost(c)), _) => c,
        (_, Some(quinn::WriteError::ConnectionLost(c))) => c,
        _ => return None,
    };
    match connection_error(lost) {
        TransportError::IoClosed => None,
        other => Some(other),
    }
}

/// The accepting half of a QUIC listener. The endpoint is served by a background task from
/// bind on (a QUIC handshake needs the server to act, unlike a TCP backlog the kernel
/// completes): it admits and handshakes connections and queues their streams here.
#[derive(Debug)]
pub(crate) struct QuicAccept {
    endpoint: quinn::Endpoint,
    ready_rx: mpsc::Receiver<TokioConn>,
}

impl QuicAccept {
    /// Binds a quinn server endpoint at `addr` with the engine's TLS server config and starts
    /// serving it.
    pub(crate) fn bind(
        inner: &Arc<EngineInner>,
        addr: SocketAddr,
    ) -> Result<(Self, SocketAddr), TransportError> {
        let shared = &inner.shared;
        let Some(tls) = &shared.tls_server else {
            return Err(listen::tls_config_missing(&shared.readiness));
        };
        let server = crate::quic::server_config(&shared.config(), tls)?;
        let endpoint = match quinn::Endpoint::server(server, addr) {
            Ok(e) => e,
            Err(e) => return Err(listen::bind_failed(&shared.readiness, e)),
        };
        let local = endpoint.local_addr()?;
        let (ready_tx, ready_rx) = mpsc::channel(READY_QUEUE);
        tokio::spawn(serve_endpoint(
            inner.clone(),
            endpoint.clone(),
            local,
            ready_tx,
        ));
        Ok((Self { endpoint, ready_rx }, local))
    }

    /// The next admitted, handshaken stream connection.
    pub(crate) async fn accept(
        &mut self,
        inner: &Arc<EngineInner>,
    ) -> Result<TokioConn, TransportError> {
        tokio::select! {
            biased;
            _ = inner.shutdown.cancelled() => Err(TransportError::Cancelled),
            c = self.ready_rx.recv() => c.ok_or(TransportError::IoClosed),
        }
    }
}

impl Drop for QuicAccept {
    fn drop(&mut self) {
        // No new connections; open ones keep running (as accepted TCP connections do).
        self.endpoint.set_server_config(None);
    }
}

/// Accepts from `endpoint` until the listener is dropped or the engine shuts down.
async fn serve_endpoint(
    inner: Arc<EngineInner>,
    endpoint: quinn::Endpoint,
    local: SocketAddr,
    ready: mpsc::Sender<TokioConn>,
) {
    let handshaking = Arc::new(AtomicUsize::new(0));
    loop {
        let incoming = tokio::select! {
            biased;
            _ = inner.shutdown.cancelled() => break,
            _ = ready.closed() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        admit(&inner, incoming, local, &ready, &handshaking);
    }
    endpoint.set_server_config(None);
}

/// Address validation under load, then caps and pacing state: a peer sent a Retry or refused
/// costs no connection state.
fn admit(
    inner: &Arc<EngineInner>,
    incoming: quinn::Incoming,
    local: SocketAddr,
    ready: &mpsc::Sender<TokioConn>,
    handshaking: &Arc<AtomicUsize>,
) {
    let started = Instant::now();
    let shared = &inner.shared;
    let peer = incoming.remote_address();
    let in_flight = handshaking.load(Ordering::Acquire);
    if !incoming.remote_address_validated()
        && incoming.may_retry()
        && in_flight >= retry_threshold(shared.config().max_conns)
    {
        tracing::debug!(
            target: "ron_transport",
            event = "quic_retry",
            backend = Backend::Quic.as_str(),
            engine = inner.kind.as_str(),
            peer_addr = %peer,
            handshaking = in_flight,
            "address validation (Retry) under handshake load"
        );
        if let Err(e) = incoming.retry() {
            e.into_incoming().ignore();
        }
        return;
    }
    let permit = match admission::admit(
        &shared.policy,
        &shared.metrics,
        Backend::Quic,
        inner.kind,
        peer,
        Direction::Inbound,
    ) {
        Ok(p) => p,
        Err(_) => {
            incoming.refuse();
            return;
        }
    };
    let task = serve_connection(
        inner.clone(),
        incoming,
        permit,
        local,
        started,
        ready.clone(),
        Handshaking::start(handshaking),
    );
    inner.tasks.spawn(task);
}

/// Handshake (bounded by `read_timeout`), then every stream the peer opens, until the
/// connection ends or the engine shuts down.
async fn serve_connection(
    inner: Arc<EngineInner>,
    incoming: quinn::Incoming,
    permit: Admission,
    local: SocketAddr,
    started: Instant,
    ready: mpsc::Sender<TokioConn>,
    handshaking: Handshaking,
) {
    let shared = &inner.shared;
    let peer = incoming.remote_address();
    let result = bounded_handshake(&inner, async {
        let connecting = incoming.accept().map_err(|e| connection_error(&e))?;
        connecting.await.map_err(|e| connection_error(&e))
    })
    .await;
    drop(handshaking);
    let bm = shared.metrics.backend(Backend::Quic);
    let conn = match result {
        Ok(c) => c,
        Err(e) => {
            handshake_failed(&inner, peer, started, &e);
            return;
        }
    };
    let pq = pq_of(&inner);
    bm.handshake(pq).observe(started.elapsed().as_secs_f64());
    shared.metrics.pq_handshake_result(Backend::Quic, pq, true);
    let alpn = alpn_of(&conn);
    let link = Arc::new(QuicLink::new(conn.clone(), permit, None));
    loop {
        let (send, mut recv) = tokio::select! {
            biased;
            _ = inner.shutdown.cancelled() => break,
            r = conn.accept_bi() => match r {
                Ok(pair) => pair,
                Err(_) => break,
            },
        };
        // The stream was opened by its first bytes: the preface is normally there already.
        let bound = shared.config().read_timeout;
        let mut preface = [0u8; STREAM_PREFACE.len()];
        let refused = match tokio::time::timeout(bound, recv.read_exact(&mut preface)).await {
            Ok(Ok(())) if preface == STREAM_PREFACE => None,
            Ok(_) => Some(RejectReason::QuicPathError),
            Err(_) => Some(RejectReason::Timeout),
        };
        if let Some(reason) = refused {
            shared.metrics.reject(reason);
            tracing::info!(
                target: "ron_transport",
                event = "reject",
                reason = reason.as_str(),
                backend = Backend::Quic.as_str(),
                engine = inner.kind.as_str(),
                peer_addr = %peer,
                "QUIC stream without the OAP/1 preface"
            );
            let mut send = send;
            let _ = send.reset(VarIntCode(CLOSE_REFUSED).into());
            let _ = recv.stop(VarIntCode(CLOSE_REFUSED).into());
            if link.open_streams.load(Ordering::Acquire) == 0 {
                conn.close(VarIntCode(CLOSE_REFUSED).into(), b"preface");
                break;
            }
            continue;
        }
        let io = QuicIo::new(send, recv, link.clone());
        let info = ConnInfo {
            conn_id: shared.next_conn_id(),
            peer_addr: conn.remote_address(),
            local_addr: local,
            backend: Backend::Quic,
            engine: inner.kind,
            alpn: alpn.clone(),
            pq,
            resumed: false,
        };
        log_accept(&info, started);
        let c = inner.make_conn(Stream::Boxed(Box::new(io)), link.permit.clone(), info, None);
        if ready.send(c).await.is_err() {
            break; // the listener is gone
        }
    }
}

/// Dials `target` over QUIC within `opts.deadline`: admitted first, then a client endpoint,
/// the handshake and one stream with the preface written.
pub(crate) async fn dial(
    inner: &Arc<EngineInner>,
    target: &DialTarget,
    opts: &DialOptions,
    corr_id: &Option<Arc<str>>,
    started: Instant,
) -> Result<TokioConn, TransportError> {
    let shared = &inner.shared;
    let tls = shared.client_tls().await?;
    let client = crate::quic::client_config(&shared.config(), &tls)?;
    let established = async {
        let addrs = super::dial_addrs(target).await?;
        let mut last_err = None;
        for addr in addrs {
            let admitted = admission::admit(
                &shared.policy,
                &shared.metrics,
                Backend::Quic,
                inner.kind,
                addr,
                Direction::Outbound,
            )?;
            let bind: SocketAddr = if addr.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let endpoint = quinn::Endpoint::client(bind)?;
            let name = shared.server_name(opts, target, addr)?;
            let connecting = endpoint
                .connect_with(client.clone(), addr, &name.to_str())
                .map_err(|e| TransportError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
            let conn = match connecting.await {
                Ok(c) => c,
                Err(e) => match connection_error(&e) {
                    e @ TransportError::Tls { .. } => return Err(e),
                    e => {
                        last_err = Some(e);
                        continue;
                    }
                },
            };
            let (mut send, recv) = conn.open_bi().await.map_err(|e| connection_error(&e))?;
            send.write_all(&STREAM_PREFACE)
                .await
                .map_err(|e| TransportError::Io(e.into()))?;
            let local = endpoint.local_addr()?;
            let link = Arc::new(QuicLink::new(conn.clone(), admitted, Some(endpoint)));
            return Ok((QuicIo::new(send, recv, link), addr, local, alpn_of(&conn)));
        }
        Err(last_err.unwrap_or_else(|| {
            TransportError::Io(io::Error::new(
                io::ErrorKind::NotFound,
                "no address to dial",
            ))
        }))
    };
    let (io, addr, local, alpn) = tokio::select! {
        biased;
        _ = inner.shutdown.cancelled() => return Err(TransportError::Cancelled),
        r = tokio::time::timeout(opts.deadline, established) => match r {
            Ok(r) => r?,
            Err(_) => return Err(TransportError::timeout(TimeoutOp::Dial)),
        },
    };
    let permit = io.link.permit.clone();
    Ok(inner.dialed(
        Stream::Boxed(Box::new(io)),
        permit,
        addr,
        local,
        Some((alpn, false)),
        pq_of(inner),
        started,
        corr_id,
    ))
}
