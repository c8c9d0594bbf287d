//! The in-memory engine (feature `memory`; spec/IDB C-8's `mock::Duplex`, also reachable as
//! [`crate::engine::mock`]): the adapter traits over in-process pipes, so a consumer can
//! unit-test against ron-transport without sockets, ports or threads.
//!
//! It owns the in-process network ([`MemoryNetwork`]: listeners by address, dials, fault
//! hooks) and the engine wiring ([`MemoryEngine`]); everything else is the tokio engine's
//! connection machinery, run over a pipe instead of a socket — framing, the frame ceiling,
//! read / write / idle / dial / handshake timeouts, the bounded writer inbox and `Busy`,
//! writer coalescing, egress and ingress pacing, admission through `Policy::admit` at accept
//! and at dial, graceful close and cancel, shutdown, metrics, log events and reason strings
//! are the same code. TLS is real rustls (tokio-rustls over the pipe). Metrics carry the
//! backend label (`tcp` / `tls`) as on sockets; [`ConnInfo::engine`](crate::ConnInfo) says
//! [`EngineKind::Memory`].
//!
//! # Clock
//! Connection timeouts run on tokio's clock. With no kernel I/O in the way, a paused clock
//! (`tokio::time::pause`, or `#[tokio::test(start_paused = true)]`, tokio's `test-util`
//! feature) is a virtual clock: a 30 s idle timeout fires at once, in virtual time. The token
//! buckets of the rate limits read the real monotonic clock (they are shared process state),
//! so pacing is not virtualised: test rates with the real clock.
//!
//! # Faults
//! [`MemoryNetwork::link`] / [`MemoryNetwork::links`] return a [`Link`] per connection:
//! [`Link::reset`] (both ends fail with `ConnectionReset` ⇒ `TransportError::Io`),
//! [`Link::freeze`] / [`Link::thaw`] (no byte moves; timeouts fire as on a stalled socket).
//! [`MemoryNetwork::partition`] freezes every connection and blackholes new dials (they time
//! out at their deadline) until [`MemoryNetwork::heal`]. Dialing an address nobody listens on
//! fails at once like `ECONNREFUSED` (`TransportError::Io`, kind `ConnectionRefused`).
//! [`MemoryNetwork::bind_raw`] and [`MemoryNetwork::connect_from`] give raw byte-stream ends
//! ([`MemoryStream`]) to play a misbehaving peer.
//!
//! # Example
//! ```
//! use std::time::Duration;
//!
//! use ron_transport::engine::memory::MemoryNetwork;
//! use ron_transport::engine::setup::EngineSetup;
//! use ron_transport::{Bytes, Config, Conn, Engine, Listener, TimeoutOp, TransportError};
//! use ron_transport::{TransportMetrics, ValidConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Virtual time: the 30 s idle timeout below takes no wall-clock time.
//! tokio::time::pause();
//! let net = MemoryNetwork::new();
//! let mut cfg = Config::default();
//! cfg.idle_timeout = Duration::from_secs(30);
//! let setup = |cfg: ValidConfig| EngineSetup::new(cfg, TransportMetrics::new()).unwrap();
//! let server = net.engine(setup(cfg.validate().unwrap())).unwrap();
//! let client = net.engine(setup(ValidConfig::defaults())).unwrap();
//!
//! let mut listener = server.listen("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
//!     .await
//!     .unwrap();
//! let mut conn = client.dial(listener.local_addr(), Default::default()).await.unwrap();
//! let mut srv = listener.accept().await.unwrap();
//!
//! conn.send(Bytes::from_static(b"hello")).await.unwrap();
//! assert_eq!(&srv.recv().await.unwrap().unwrap()[..], b"hello");
//!
//! // Nothing moves for 30 s (virtual): the server side times out as on a socket.
//! let err = srv.recv().await.unwrap_err();
//! assert!(matches!(err, TransportError::Timeout { op: TimeoutOp::Idle }));
//!
//! // Faults from the test side: a reset surfaces as an I/O error on the client.
//! let link = net.link(conn.info().local_addr, conn.info().peer_addr).unwrap();
//! link.reset();
//! assert_eq!(conn.recv().await.unwrap_err().kind(), "io");
//! # }
//! ```

mod listener;
mod network;
mod pipe;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_rustls::TlsConnector;

pub use listener::MemoryListener;
pub use network::{MemoryNetwork, RawListener, DEFAULT_BACKLOG, DEFAULT_PIPE_CAPACITY};
pub use pipe::{Link, MemoryStream};

use crate::config::Backend;
use crate::engine::admission::{self, DialAccount, Direction};
use crate::engine::shared::EngineShared;
use crate::engine::target::unsupported_target;
use crate::engine::tokio::stream::{BoxIo, Stream};
use crate::engine::tokio::{pq_label, TokioConn, TokioEngine};
use crate::engine::{DialOptions, DialTarget, Engine, EngineKind, ListenTarget, ShutdownReport};
use crate::error::{TimeoutOp, TransportError};
use crate::metrics::PqLabel;
use crate::readiness::{ReadyState, TransportHealth};

/// A connection of the memory engine: the tokio engine's connection type over a pipe
/// (`info().engine` is [`EngineKind::Memory`]).
pub type MemoryConn = TokioConn;

/// spec/IDB C-8's name for the in-process dialer: the memory engine.
pub type Duplex = MemoryEngine;

/// The in-memory engine. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemoryEngine {
    /// The tokio engine's machinery (connections, tasks, shutdown), labelled `Memory`.
    machinery: TokioEngine,
    net: MemoryNetwork,
    source_ip: Option<IpAddr>,
}

impl MemoryEngine {
    /// An engine over prepared shared state (see [`EngineSetup`](crate::engine::setup::EngineSetup)
    /// and [`MemoryNetwork::engine`]) on `net`.
    pub fn new(shared: Arc<EngineShared>, net: &MemoryNetwork) -> Self {
        Self {
            machinery: TokioEngine::with_kind(shared, EngineKind::Memory),
            net: net.clone(),
            source_ip: None,
        }
    }

    /// Dials from `ip` instead of the loopback address of the target's family (what the
    /// listening side sees as the peer address: per-peer caps and buckets key on it).
    pub fn with_source_ip(mut self, ip: IpAddr) -> Self {
        self.source_ip = Some(ip);
        self
    }

    /// The network this engine listens and dials on.
    pub fn network(&self) -> &MemoryNetwork {
        &self.net
    }

    /// The shared state (policy, metrics, readiness, TLS configs).
    pub fn shared(&self) -> &Arc<EngineShared> {
        self.machinery.shared()
    }

    /// Per-connection tasks (writers, TLS accept handshakes) still running.
    pub fn live_tasks(&self) -> usize {
        self.machinery.live_tasks()
    }

    /// Connections currently open on this engine.
    pub fn open_conns(&self) -> usize {
        self.machinery.open_conns()
    }

    async fn dial_inner(
        &self,
        target: &DialTarget,
        opts: &DialOptions,
        corr_id: &Option<Arc<str>>,
        started: Instant,
    ) -> Result<TokioConn, TransportError> {
        let inner = self.machinery.inner();
        let shared = &inner.shared;
        let backend = shared.backend;
        let addr = match target {
            DialTarget::Addr(a) => *a,
            // Names are not resolved on the in-memory network: dial its addresses.
            other => return Err(unsupported_target("memory", other)),
        };
        let connector = match backend {
            Backend::Tcp => None,
            Backend::Tls => Some(TlsConnector::from(shared.client_tls().await?)),
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
        // Outbound connections count against the same caps as inbound ones.
        let admitted = admission::admit(
            &shared.policy,
            &shared.metrics,
            backend,
            EngineKind::Memory,
            addr,
            Direction::Outbound,
        )?;
        let established = async {
            let pipe = self.net.connect_from(self.source_ip, addr).await?;
            let local = pipe.local_addr();
            let io: BoxIo = Box::new(pipe);
            match connector {
                None => Ok::<_, TransportError>((Stream::Boxed(io), local, None, PqLabel::Off)),
                Some(connector) => {
                    let name = shared.server_name(opts, target, addr)?;
                    let tls =
                        connector
                            .connect(name, io)
                            .await
                            .map_err(|e| TransportError::Tls {
                                detail: e.to_string(),
                            })?;
                    let (_, session) = tls.get_ref();
                    let pq = pq_label(session);
                    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
                    let resumed = session.handshake_kind()
                        == Some(tokio_rustls::rustls::HandshakeKind::Resumed);
                    Ok((
                        Stream::BoxedTls(Box::new(tokio_rustls::TlsStream::Client(tls))),
                        local,
                        Some((alpn, resumed)),
                        pq,
                    ))
                }
            }
        };
        let (stream, local, tls_facts, pq) = tokio::select! {
            biased;
            _ = inner.shutdown.cancelled() => return Err(TransportError::Cancelled),
            r = tokio::time::timeout(opts.deadline, established) => match r {
                Ok(r) => r?,
                Err(_) => return Err(TransportError::timeout(TimeoutOp::Dial)),
            },
        };
        Ok(inner.dialed(
            stream, admitted, addr, local, tls_facts, pq, started, corr_id,
        ))
    }
}

impl TransportHealth for MemoryEngine {
    fn readiness(&self) -> ReadyState {
        self.machinery.readiness()
    }
}

impl Engine for MemoryEngine {
    type Listener = MemoryListener;
    type Conn = TokioConn;

    fn kind(&self) -> EngineKind {
        EngineKind::Memory
    }

    fn backend(&self) -> Backend {
        self.machinery.backend()
    }

    fn config(&self) -> Arc<crate::config::ValidConfig> {
        self.machinery.config()
    }

    async fn listen(
        &self,
        target: impl Into<ListenTarget> + Send,
    ) -> Result<MemoryListener, TransportError> {
        match target.into() {
            ListenTarget::Addr(addr) => {
                MemoryListener::bind(self.machinery.inner().clone(), &self.net, addr)
            }
            other => Err(unsupported_target("memory", &other)),
        }
    }

    async fn dial(
        &self,
        target: impl Into<DialTarget> + Send,
        opts: DialOptions,
    ) -> Result<TokioConn, TransportError> {
        let target = target.into();
        let shared = self.shared();
        let corr_id: Option<Arc<str>> = opts.corr_id.as_deref().map(Arc::from);
        // The same books as every engine's dial.
        let books = DialAccount::open(
            &shared.metrics,
            shared.backend,
            EngineKind::Memory,
            shared.pq_mode,
            Some(&target),
            corr_id.as_deref(),
        );
        let result = if self.machinery.inner().shutdown.is_cancelled() {
            Err(TransportError::Cancelled)
        } else {
            self.dial_inner(&target, &opts, &corr_id, books.started())
                .await
        };
        books.finish(result.as_ref().map(crate::engine::Conn::info));
        result
    }

    async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        self.machinery.shutdown(deadline).await
    }
}
