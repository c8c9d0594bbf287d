//! One in-process connection: a [`MemoryStream`] is one end of a bounded `tokio::io::duplex`
//! pipe, and both ends share a [`Link`], the test-side fault handle (reset, freeze, thaw).
//!
//! A frozen link (or one on a partitioned network) moves no byte in either direction: reads,
//! writes, flushes and shutdowns of both ends stay pending until it thaws. A reset link fails
//! every later operation on both ends with `ConnectionReset`, like a TCP RST (buffered bytes
//! are discarded). Every poll registers the caller's waker with the link, so a fault reaches a
//! task that is parked inside the pipe.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// Network-wide fault state every link of one network reads.
#[derive(Debug, Default)]
pub(crate) struct NetFlags {
    /// `MemoryNetwork::partition`: every link is frozen and new dials hang.
    pub(crate) partitioned: AtomicBool,
}

/// The state both ends of one connection share.
#[derive(Debug)]
pub(crate) struct LinkState {
    client: SocketAddr,
    server: SocketAddr,
    frozen: AtomicBool,
    reset: AtomicBool,
    net: Arc<NetFlags>,
    /// The last waker of each (end, direction): `[client read, client write, server read,
    /// server write]`.
    wakers: Mutex<[Option<Waker>; 4]>,
}

impl LinkState {
    pub(crate) fn new(client: SocketAddr, server: SocketAddr, net: Arc<NetFlags>) -> Arc<Self> {
        Arc::new(Self {
            client,
            server,
            frozen: AtomicBool::new(false),
            reset: AtomicBool::new(false),
            net,
            wakers: Mutex::new(Default::default()),
        })
    }

    fn stalled(&self) -> bool {
        self.frozen.load(Ordering::Acquire) || self.net.partitioned.load(Ordering::Acquire)
    }

    fn register(&self, slot: usize, cx: &Context<'_>) {
        let mut w = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        match &w[slot] {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => w[slot] = Some(cx.waker().clone()),
        }
    }

    /// Wakes every task parked on either end (a fault changed what they would see).
    pub(crate) fn wake_all(&self) {
        let wakers: Vec<Waker> = self
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// `Some(result)` if a fault decides this poll: `Err(reset)` or `Pending` (frozen).
    fn gate<T>(&self, slot: usize, cx: &Context<'_>) -> Option<Poll<io::Result<T>>> {
        self.register(slot, cx);
        if self.reset.load(Ordering::Acquire) {
            return Some(Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "memory link reset",
            ))));
        }
        if self.stalled() {
            return Some(Poll::Pending);
        }
        None
    }
}

/// The test-side handle of one in-process connection: inject faults into it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Link(pub(crate) Arc<LinkState>);

impl Link {
    /// The dialing end's address.
    pub fn client_addr(&self) -> SocketAddr {
        self.0.client
    }

    /// The listening end's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.0.server
    }

    /// Resets the connection: every later read or write on either end fails with
    /// `ConnectionReset` (the engine reports `TransportError::Io`), buffered bytes are lost.
    pub fn reset(&self) {
        self.0.reset.store(true, Ordering::Release);
        self.0.wake_all();
    }

    /// Freezes the connection: no byte moves in either direction until [`thaw`](Self::thaw).
    /// The engine's read, write and idle timeouts run as they would on a stalled socket.
    pub fn freeze(&self) {
        self.0.frozen.store(true, Ordering::Release);
    }

    /// Undoes [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        self.0.frozen.store(false, Ordering::Release);
        self.0.wake_all();
    }

    /// True after [`reset`](Self::reset).
    pub fn is_reset(&self) -> bool {
        self.0.reset.load(Ordering::Acquire)
    }

    /// True while frozen (by [`freeze`](Self::freeze) or a network partition).
    pub fn is_frozen(&self) -> bool {
        self.0.stalled()
    }
}

/// One end of an in-process connection: a raw byte stream (`AsyncRead + AsyncWrite`), as a
/// misbehaving peer in a test would use a raw TCP socket. Dropping it closes its end (the
/// other end reads EOF); [`shutdown`](tokio::io::AsyncWriteExt::shutdown) half-closes it.
#[derive(Debug)]
pub struct MemoryStream {
    io: DuplexStream,
    link: Arc<LinkState>,
    /// 0: the dialing end, 2: the listening end (index of its read waker).
    slot: usize,
}

impl MemoryStream {
    /// Both ends of a new connection from `client` to `server`, each buffering at most
    /// `capacity` bytes in flight per direction.
    pub(crate) fn pair(
        client: SocketAddr,
        server: SocketAddr,
        capacity: usize,
        net: Arc<NetFlags>,
    ) -> (Self, Self) {
        let (a, b) = tokio::io::duplex(capacity.max(1));
        let link = LinkState::new(client, server, net);
        (
            Self {
                io: a,
                link: link.clone(),
                slot: 0,
            },
            Self {
                io: b,
                link,
                slot: 2,
            },
        )
    }

    /// This end's address.
    pub fn local_addr(&self) -> SocketAddr {
        if self.slot == 0 {
            self.link.client
        } else {
            self.link.server
        }
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> SocketAddr {
        if self.slot == 0 {
            self.link.server
        } else {
            self.link.client
        }
    }

    /// The fault handle of this connection.
    pub fn link(&self) -> Link {
        Link(self.link.clone())
    }

    pub(crate) fn link_state(&self) -> &Arc<LinkState> {
        &self.link
    }
}

impl AsyncRead for MemoryStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(p) = this.link.gate(this.slot, cx) {
            return p;
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for MemoryStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(p) = this.link.gate(this.slot + 1, cx) {
            return p;
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(p) = this.link.gate(this.slot + 1, cx) {
            return p;
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(p) = this.link.gate(this.slot + 1, cx) {
            return p;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(p) = this.link.gate(this.slot + 1, cx) {
            return p;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
