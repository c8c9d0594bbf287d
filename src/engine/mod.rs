//! The adapter traits every engine implements (spec/IDB P-1, P-4): [`Engine`] (dial / listen /
//! shutdown), [`Listener`] (accept) and [`Conn`] (a framed connection with a bounded writer
//! inbox). Engines — `tokio` (epoll baseline and fallback), `uring` (the shard runtime) — must
//! behave identically behind them: same limits, timeouts, metrics and reason strings. One
//! conformance suite in `tests/` runs the same cases against each.
//!
//! # Frame semantics
//! A frame on the wire is a u32 big-endian length followed by that many bytes. [`Conn::send`]
//! takes the payload only (the engine adds the prefix); [`Conn::recv`] yields payloads.
//!
//! # Timeouts (all read live from the current config snapshot)
//! - `read_timeout`: once a frame has started arriving, it must complete within this, else
//!   `Timeout{op: Read}` (slow-loris protection). Also bounds the TLS handshake
//!   (`Timeout{op: Handshake}`).
//! - `write_timeout`: queued output that makes no progress for this long (the peer is not
//!   reading) fails the connection with `Timeout{op: Write}`.
//! - `idle_timeout`: no byte in either direction for this long ⇒ `Timeout{op: Idle}`.
//! - dial: [`DialOptions::deadline`] ⇒ `Timeout{op: Dial}`.
//!
//! Every timeout counts `rejected_total{reason="timeout"}` once and closes the connection.
//! After a connection has failed, `recv` returns that error once, then `IoClosed`.

pub(crate) mod admission;
pub mod auto;
#[cfg(feature = "tls")]
pub mod convenience;
pub(crate) mod events;
pub(crate) mod listen;
#[cfg(feature = "memory")]
pub mod memory;
/// spec/IDB C-8's name for the in-process test double: [`memory`] (`mock::Duplex` is
/// [`memory::MemoryEngine`]).
#[cfg(feature = "memory")]
pub use self::memory as mock;
pub mod setup;
pub mod shared;
pub mod target;
pub mod tokio;
pub mod uds;
pub mod uring;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{Backend, ValidConfig};
use crate::error::TransportError;
use crate::metrics::PqLabel;
use crate::readiness::TransportHealth;
pub use target::{DialTarget, ListenTarget};

/// Capacity of every connection's writer inbox (frames). Full ⇒ [`TransportError::Busy`].
pub const WRITER_INBOX_CAPACITY: usize = 256;

/// Which engine drives the sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EngineKind {
    /// tokio (epoll) + tokio-rustls.
    Tokio,
    /// The `ron-shard` io_uring thread-per-core runtime.
    Uring,
    /// Arti (Tor) on its own Tokio side runtime (feature `arti`).
    Arti,
    /// In-process pipes, no sockets (feature `memory`): for consumers' unit tests.
    Memory,
}

impl EngineKind {
    /// `"tokio"`, `"uring"`, `"arti"` or `"memory"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tokio => "tokio",
            Self::Uring => "uring",
            Self::Arti => "arti",
            Self::Memory => "memory",
        }
    }
}

/// Options for one outbound connection.
#[derive(Clone, Debug)]
pub struct DialOptions {
    /// Connect (and TLS handshake) must finish within this.
    pub deadline: Duration,
    /// TLS server name; defaults to `tls_client.sni_override`, else the IP address.
    pub server_name: Option<String>,
    /// Caller-provided correlation id, propagated verbatim into logs.
    pub corr_id: Option<String>,
}

impl Default for DialOptions {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(5),
            server_name: None,
            corr_id: None,
        }
    }
}

/// What is known about an established connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Process-unique id (logged as `conn_id`, hex).
    pub conn_id: u64,
    /// The remote address.
    pub peer_addr: SocketAddr,
    /// The local address.
    pub local_addr: SocketAddr,
    /// `tcp` or `tls`.
    pub backend: Backend,
    /// Which engine owns it.
    pub engine: EngineKind,
    /// Negotiated ALPN protocol, if any.
    pub alpn: Option<Vec<u8>>,
    /// Key-exchange posture of the TLS handshake (`Off` for plain TCP).
    pub pq: PqLabel,
    /// True if the TLS session was resumed.
    pub resumed: bool,
}

/// Outcome of [`Engine::shutdown`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections that drained and closed within the deadline.
    pub drained: u64,
    /// Connections aborted at the deadline (also counted in `tasks_aborted_total`).
    pub aborted: u64,
}

/// A transport engine: makes listeners and outbound connections.
pub trait Engine: TransportHealth + Send + Sync + 'static {
    /// The listener type.
    type Listener: Listener<Conn = Self::Conn>;
    /// The connection type.
    type Conn: Conn;

    /// Which engine this is.
    fn kind(&self) -> EngineKind;

    /// The backend label it speaks (`tcp` or `tls`).
    fn backend(&self) -> Backend;

    /// The live configuration snapshot this engine runs under (re-read per operation; a
    /// reload through the engine's config handle shows here).
    fn config(&self) -> Arc<ValidConfig>;

    /// Listens where the configuration says: on `uds.path` if set ([`ListenTarget::Unix`]),
    /// else on `bind_addr`; with neither, fails with a config error naming `bind_addr`. A
    /// consumer that configures only through files, environment or CLI
    /// ([`ConfigLoader`](crate::config::ConfigLoader)) never repeats the address.
    fn listen_configured(
        &self,
    ) -> impl Future<Output = Result<Self::Listener, TransportError>> + Send {
        let target = listen::configured_target(&self.config());
        async move { self.listen(target?).await }
    }

    /// Binds a listener at `target` (a [`SocketAddr`] or a Unix socket path, see
    /// [`ListenTarget`]). Caps and rate limits are applied at accept, before any handshake.
    fn listen(
        &self,
        target: impl Into<ListenTarget> + Send,
    ) -> impl Future<Output = Result<Self::Listener, TransportError>> + Send;

    /// Connects (and, for TLS, handshakes) to `target` within `opts.deadline`: a
    /// [`SocketAddr`], a host name and port (resolved off the async workers, addresses tried in
    /// order within the deadline) or a Unix socket path (see [`DialTarget`]).
    fn dial(
        &self,
        target: impl Into<DialTarget> + Send,
        opts: DialOptions,
    ) -> impl Future<Output = Result<Self::Conn, TransportError>> + Send;

    /// Stops accepting, lets open connections drain until `deadline`, aborts the rest.
    fn shutdown(&self, deadline: Duration) -> impl Future<Output = ShutdownReport> + Send;

    /// Serves `listener`: every admitted connection is handed to `handler`, whose future runs
    /// where the engine runs connection work best. The returned future ends with `Ok(())` once
    /// the listener stops (engine shutdown), or with the accept error that stopped it.
    ///
    /// This is the one way in that is fast on every engine. The default (the tokio engine)
    /// spawns one task per connection on the caller's Tokio runtime, as a hand-written accept
    /// loop would; the uring engine runs each connection's future on the shard that owns the
    /// connection, polled between completion batches, where [`Conn::recv`] / [`Conn::send`]
    /// touch shard-local state only. The handler's future may still move the connection (or a
    /// sender) elsewhere: off its shard it keeps working through the engine's handle path.
    ///
    /// The returned future borrows nothing (`tokio::spawn(engine.serve(listener, handler))`
    /// works). Dropping it stops accepting; connections already handed out keep running.
    fn serve<H, Fut>(
        &self,
        mut listener: Self::Listener,
        handler: H,
    ) -> impl Future<Output = Result<(), TransportError>> + Send + 'static
    where
        H: Fn(Self::Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        async move {
            loop {
                match listener.accept().await {
                    Ok(conn) => {
                        ::tokio::spawn(handler(conn));
                    }
                    Err(TransportError::Cancelled | TransportError::IoClosed) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// A bound listener.
pub trait Listener: Send + 'static {
    /// The connection type it yields.
    type Conn: Conn;

    /// The bound address.
    fn local_addr(&self) -> SocketAddr;

    /// Where a dialer reaches this listener: its address, or its socket path for a listener
    /// on a Unix socket.
    fn dial_target(&self) -> DialTarget {
        DialTarget::Addr(self.local_addr())
    }

    /// The next admitted connection. Peers refused by caps or rate limits are counted
    /// (`rejected_total{reason}`) and closed without a handshake; they are never returned.
    fn accept(&mut self) -> impl Future<Output = Result<Self::Conn, TransportError>> + Send;
}

/// A cloneable, `Send` handle that queues frames into one connection's writer inbox.
pub trait FrameSender: Clone + Send + Sync + 'static {
    /// Queues `frame` without waiting. `Busy` if the inbox (256) is full (counted in
    /// `queue_dropped_total{queue="writer_inbox"}` and `rejected_total{reason="busy"}`),
    /// `TooLarge` above `max_frame_bytes`, `RateLimited` if egress buckets are empty, or the
    /// connection's terminal error.
    fn try_send(&self, frame: Bytes) -> Result<(), TransportError>;

    /// Queues `frame`, waiting for inbox space (at most `write_timeout`, then
    /// `Timeout{op: Write}`); egress rate limits pace the writer rather than reject.
    fn send(&self, frame: Bytes) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// An established, framed connection with exactly one writer.
pub trait Conn: Send + 'static {
    /// The sender handle type.
    type Sender: FrameSender;

    /// Connection facts.
    fn info(&self) -> &ConnInfo;

    /// A new handle into this connection's writer inbox.
    fn sender(&self) -> Self::Sender;

    /// Same as `self.sender().try_send(frame)`.
    fn try_send(&self, frame: Bytes) -> Result<(), TransportError>;

    /// Same as `self.sender().send(frame)`.
    fn send(&self, frame: Bytes) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// The next frame. `Ok(None)` when the peer closed cleanly between frames.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Bytes>, TransportError>> + Send;

    /// Graceful close: flushes the inbox (within `write_timeout`), sends TLS close_notify,
    /// shuts the write side down, and releases the connection.
    fn close(self) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Hard cancel: every per-connection task stops promptly (spec: ≤ 100 ms); pending
    /// output is dropped. Idempotent.
    fn cancel(&self);
}
