//! The drop-in way in: `Send` handles usable from any runtime (tokio or otherwise).
//!
//! A [`ConnHandle`] talks to its connection's owning shard through bounded queues only:
//! - outbound: a writer inbox of `inbox_capacity` (default 256) frames; [`FrameTx::try_send`]
//!   on a full inbox is [`SendError::Busy`], [`FrameTx::send`] waits for space; after a push the
//!   shard is woken through the connection's [`ConnRemote`] (one doorbell per batch);
//! - inbound: a channel of `inbound_capacity` frames holding at most `inbound_bytes` payload
//!   bytes (plus one frame); when either is reached the shard stops reading the socket
//!   (backpressure reaches the peer through TCP) until the consumer catches up.
//!
//! The queues are `tokio::sync::mpsc` channels, which are executor-agnostic for send/recv. The
//! shard side is a [`ConnHandler`] (`Bridge`) built on the public handler API.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::handler::{
    AcceptHooks, AdmitToken, CloseReason, ConnCtx, ConnHandler, ConnMeta, ConnRemote, DialError,
    DialHooks, Frame, Reject,
};
use crate::runtime::Runtime;
use crate::shard::ConnOptions;

/// Wake bit: the writer inbox has frames.
const WAKE_OUTPUT: u32 = 1;
/// Wake bit: the consumer made room in the inbound channel.
const WAKE_RESUME: u32 = 1 << 1;
/// Wake bit: graceful close requested.
const WAKE_CLOSE: u32 = 1 << 2;
/// Wake bit: abort requested.
const WAKE_ABORT: u32 = 1 << 3;

/// Queue sizes of a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandleOptions {
    /// Inbound frames buffered for the consumer before the shard stops reading.
    pub inbound_capacity: usize,
    /// Inbound payload bytes buffered for the consumer before the shard stops reading (ports:
    /// whichever of this and `inbound_capacity` is reached first), so a consumer that stops
    /// receiving holds at most this plus one frame, not `inbound_capacity` ceiling-sized
    /// frames.
    pub inbound_bytes: usize,
    /// Writer inbox capacity (frames); full ⇒ `Busy`.
    pub inbox_capacity: usize,
    /// The bridge moves inbox frames to the socket queue while fewer than this many bytes
    /// are queued (the rest stay in the inbox, so senders see `Busy`).
    pub high_water_bytes: usize,
}

impl Default for HandleOptions {
    fn default() -> Self {
        Self {
            inbound_capacity: 64,
            inbound_bytes: 256 * 1024,
            inbox_capacity: 256,
            high_water_bytes: 256 * 1024,
        }
    }
}

/// Why a frame could not be queued through a handle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The writer inbox is full.
    #[error("writer inbox full")]
    Busy,
    /// The connection has closed (with its reason, if known).
    #[error("connection closed")]
    Closed(Option<CloseReason>),
    /// The inbox stayed full for the whole allowed wait.
    #[error("writer inbox stayed full")]
    Timeout,
}

impl SendError {
    /// Stable reason string (`busy`, `closed` or `timeout`).
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Closed(_) => "closed",
            Self::Timeout => "timeout",
        }
    }
}

#[derive(Debug)]
struct HandleShared {
    closed: OnceLock<CloseReason>,
    /// Frames received but not yet delivered when the connection ended (delivered after the
    /// channel's frames, before the end).
    tail: Mutex<VecDeque<Bytes>>,
    paused: AtomicBool,
    /// Payload bytes in the inbound channel (bounded by `HandleOptions::inbound_bytes`).
    in_bytes: AtomicUsize,
    remote: ConnRemote,
}

/// A cloneable `Send + Sync` sender into one connection's writer inbox.
#[derive(Clone, Debug)]
pub struct FrameTx {
    inbox: mpsc::Sender<Bytes>,
    shared: Arc<HandleShared>,
}

impl FrameTx {
    /// Queues `payload` as one frame without waiting.
    pub fn try_send(&self, payload: Bytes) -> Result<(), SendError> {
        match self.inbox.try_send(payload) {
            Ok(()) => {
                self.shared.remote.wake(WAKE_OUTPUT);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.shared.remote.is_gone() {
                    Err(SendError::Closed(self.shared.closed.get().cloned()))
                } else {
                    Err(SendError::Busy)
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(SendError::Closed(self.shared.closed.get().cloned()))
            }
        }
    }

    /// Queues `payload`, waiting for inbox space.
    pub async fn send(&self, payload: Bytes) -> Result<(), SendError> {
        match self.inbox.send(payload).await {
            Ok(()) => {
                self.shared.remote.wake(WAKE_OUTPUT);
                Ok(())
            }
            Err(_) => Err(SendError::Closed(self.shared.closed.get().cloned())),
        }
    }

    /// Frames currently waiting in the inbox.
    pub fn inbox_len(&self) -> usize {
        self.inbox.max_capacity() - self.inbox.capacity()
    }

    /// True once the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.remote.is_gone()
    }
}

/// A connection driven by a shard, used from any thread or runtime.
#[derive(Debug)]
pub struct ConnHandle {
    meta: ConnMeta,
    rx: mpsc::Receiver<Bytes>,
    tx: FrameTx,
}

impl ConnHandle {
    /// Connection facts.
    pub fn meta(&self) -> &ConnMeta {
        &self.meta
    }

    /// A new sender into the writer inbox.
    pub fn sender(&self) -> FrameTx {
        self.tx.clone()
    }

    /// Same as `self.sender().try_send(payload)`.
    pub fn try_send(&self, payload: Bytes) -> Result<(), SendError> {
        self.tx.try_send(payload)
    }

    /// Same as `self.sender().send(payload)`.
    pub async fn send(&self, payload: Bytes) -> Result<(), SendError> {
        self.tx.send(payload).await
    }

    /// The next inbound frame; `Ok(None)` once the connection ended cleanly (peer or local
    /// close), `Err(reason)` if it ended otherwise.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, CloseReason> {
        match self.rx.recv().await {
            Some(b) => {
                self.after_recv(&b);
                Ok(Some(b))
            }
            None => match self.pop_tail() {
                Some(b) => Ok(Some(b)),
                None => self.terminal(),
            },
        }
    }

    fn pop_tail(&self) -> Option<Bytes> {
        self.tx
            .shared
            .tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// A frame if one is ready, without waiting; `Ok(None)` if none is ready yet and the
    /// connection is open.
    pub fn try_recv(&mut self) -> Result<Option<Bytes>, CloseReason> {
        match self.rx.try_recv() {
            Ok(b) => {
                self.after_recv(&b);
                Ok(Some(b))
            }
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => match self.pop_tail() {
                Some(b) => Ok(Some(b)),
                None => match self.terminal() {
                    Ok(_) => Err(CloseReason::Local),
                    Err(e) => Err(e),
                },
            },
        }
    }

    fn after_recv(&self, b: &Bytes) {
        self.tx.shared.in_bytes.fetch_sub(b.len(), Ordering::SeqCst);
        // Pairs with the bridge's store-then-retry: either we see `paused` and wake it, or its
        // retry sees the slot (and bytes) we just freed.
        if self.tx.shared.paused.load(Ordering::SeqCst) {
            self.tx.shared.remote.wake(WAKE_RESUME);
        }
    }

    fn terminal(&self) -> Result<Option<Bytes>, CloseReason> {
        match self.tx.shared.closed.get() {
            Some(r) if r.is_clean() => Ok(None),
            Some(r) => Err(r.clone()),
            None => Err(CloseReason::Aborted),
        }
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.tx.shared.closed.get().cloned()
    }

    /// Requests a graceful close: the inbox is flushed, the write side shut down, then the
    /// connection closes. Returns immediately; `recv` reports the end.
    pub fn close(&self) {
        self.tx.shared.remote.wake(WAKE_CLOSE);
    }

    /// Hard cancel: pending output is dropped and the connection closes promptly. Idempotent.
    pub fn cancel(&self) {
        self.tx.shared.remote.wake(WAKE_ABORT);
    }

    /// Closes gracefully and waits until the connection is gone (frames still arriving are
    /// discarded). Returns the close reason.
    pub async fn close_and_wait(mut self) -> CloseReason {
        self.close();
        while self.rx.recv().await.is_some() {}
        self.tx
            .shared
            .tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.tx
            .shared
            .closed
            .get()
            .cloned()
            .unwrap_or(CloseReason::Aborted)
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        // Nobody reads anymore: close gracefully (queued frames are still flushed).
        self.tx.shared.remote.wake(WAKE_CLOSE);
    }
}

/// Observes a bridge's writer side (runs on the owning shard).
pub trait OutboundHooks: Send + Sync + 'static {
    /// `frames` entered the writer inbox (reported by a port in batches: per frame from other
    /// threads, once per shard batch from the owning shard).
    fn queued(&self, frames: usize) {
        let _ = frames;
    }

    /// `frames` left the writer inbox (moved to the socket queue, or discarded at close).
    fn taken(&self, frames: usize) {
        let _ = frames;
    }

    /// `bytes` (wire bytes of one frame) are about to be queued for writing; returns how long
    /// to wait first (egress pacing). The frame is held back (and the inbox not drained
    /// further) until then.
    fn pace(&self, bytes: usize) -> Duration {
        let _ = bytes;
        Duration::ZERO
    }
}

/// Builds the shard-side bridge handler and the `Send` handle for one connection.
pub fn bridge(
    meta: &ConnMeta,
    remote: ConnRemote,
    opts: HandleOptions,
    token: Option<AdmitToken>,
) -> (Box<dyn ConnHandler>, ConnHandle) {
    bridge_with_hooks(meta, remote, opts, token, None)
}

/// [`bridge`] with [`OutboundHooks`] (inbox-depth accounting, egress pacing).
pub fn bridge_with_hooks(
    meta: &ConnMeta,
    remote: ConnRemote,
    opts: HandleOptions,
    token: Option<AdmitToken>,
    hooks: Option<Arc<dyn OutboundHooks>>,
) -> (Box<dyn ConnHandler>, ConnHandle) {
    let (in_tx, in_rx) = mpsc::channel(opts.inbound_capacity.max(1));
    let (out_tx, out_rx) = mpsc::channel(opts.inbox_capacity.max(1));
    let shared = Arc::new(HandleShared {
        closed: OnceLock::new(),
        tail: Mutex::new(VecDeque::new()),
        paused: AtomicBool::new(false),
        in_bytes: AtomicUsize::new(0),
        remote,
    });
    let bridge = Bridge {
        in_tx,
        stash: VecDeque::new(),
        out_rx,
        shared: shared.clone(),
        closing: false,
        high_water: opts.high_water_bytes.max(1),
        inbound_bytes: opts.inbound_bytes.max(1),
        hooks,
        held: None,
        _token: token,
    };
    let handle = ConnHandle {
        meta: meta.clone(),
        rx: in_rx,
        tx: FrameTx {
            inbox: out_tx,
            shared,
        },
    };
    (Box::new(bridge), handle)
}

struct Bridge {
    in_tx: mpsc::Sender<Bytes>,
    stash: VecDeque<Bytes>,
    out_rx: mpsc::Receiver<Bytes>,
    shared: Arc<HandleShared>,
    closing: bool,
    high_water: usize,
    /// Bytes the inbound channel may hold before frames wait in `stash` (reads paused).
    inbound_bytes: usize,
    hooks: Option<Arc<dyn OutboundHooks>>,
    /// A frame taken from the inbox and held back by pacing, and when it may go.
    held: Option<(Bytes, std::time::Instant)>,
    _token: Option<AdmitToken>,
}

impl Bridge {
    /// True while the inbound channel holds its byte bound.
    fn bytes_full(&self) -> bool {
        self.shared.in_bytes.load(Ordering::SeqCst) >= self.inbound_bytes
    }

    /// Sends one frame into the inbound channel unless it is full in frames or in bytes.
    fn try_deliver(&self, b: Bytes) -> Result<(), mpsc::error::TrySendError<Bytes>> {
        if self.bytes_full() {
            return Err(mpsc::error::TrySendError::Full(b));
        }
        let n = b.len();
        self.shared.in_bytes.fetch_add(n, Ordering::SeqCst);
        self.in_tx.try_send(b).inspect_err(|_| {
            self.shared.in_bytes.fetch_sub(n, Ordering::SeqCst);
        })
    }

    /// Moves stashed inbound frames to the consumer; resumes reading once all went through.
    fn flush_stash(&mut self, ctx: &mut ConnCtx<'_>) {
        loop {
            while let Some(b) = self.stash.pop_front() {
                match self.try_deliver(b) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(b)) => {
                        self.stash.push_front(b);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        self.stash.clear();
                        ctx.close();
                        return;
                    }
                }
            }
            if self.stash.is_empty() {
                self.shared.paused.store(false, Ordering::SeqCst);
                ctx.resume_reading();
                return;
            }
            ctx.pause_reading();
            self.shared.paused.store(true, Ordering::SeqCst);
            // Retry once after publishing `paused`: the consumer may have freed a slot (or
            // bytes) before it could see the flag.
            if self.in_tx.capacity() == 0 || self.bytes_full() {
                return;
            }
        }
    }

    /// Moves inbox frames into the socket queue up to the high-water mark, pacing each one.
    /// True if the inbox is empty afterwards.
    fn drain_out(&mut self, ctx: &mut ConnCtx<'_>) -> bool {
        while ctx.queued_bytes() < self.high_water {
            let b = match self.held.take() {
                Some((b, until)) if until > ctx.now() => {
                    // Still paced: other wakes (new output, resume) must not release it early.
                    self.held = Some((b, until));
                    ctx.wake_after(until - ctx.now(), WAKE_OUTPUT);
                    return false;
                }
                Some((b, _)) => b,
                None => match self.out_rx.try_recv() {
                    Ok(b) => {
                        if let Some(h) = &self.hooks {
                            h.taken(1);
                            let wait = h.pace(b.len() + 4);
                            if !wait.is_zero() {
                                self.held = Some((b, ctx.now() + wait));
                                ctx.wake_after(wait, WAKE_OUTPUT);
                                return false;
                            }
                        }
                        b
                    }
                    Err(_) => return true,
                },
            };
            if ctx.send_bytes(b).is_err() {
                return true;
            }
        }
        false
    }
}

impl ConnHandler for Bridge {
    fn on_open(&mut self, ctx: &mut ConnCtx<'_>) {
        // The consumer reads and writes independently: inbound is bounded by the inbound
        // channel (reads pause when it is full), outbound by the inbox and the high-water mark
        // in `drain_out`. Pausing reads on output would deadlock two pipelining peers.
        ctx.set_output_pauses_reading(false);
    }

    fn on_frame(&mut self, ctx: &mut ConnCtx<'_>, frame: Frame<'_>) {
        let b = frame.to_bytes();
        if !self.stash.is_empty() {
            self.stash.push_back(b);
            return;
        }
        match self.try_deliver(b) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(b)) => {
                self.stash.push_back(b);
                self.flush_stash(ctx);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => ctx.close(),
        }
    }

    fn on_writable(&mut self, ctx: &mut ConnCtx<'_>) {
        let empty = self.drain_out(ctx);
        if self.closing && empty {
            ctx.close();
        }
    }

    fn on_wake(&mut self, ctx: &mut ConnCtx<'_>, bits: u32) {
        if bits & WAKE_ABORT != 0 {
            ctx.abort();
            return;
        }
        if bits & WAKE_RESUME != 0 && !self.stash.is_empty() {
            self.flush_stash(ctx);
        }
        if bits & WAKE_CLOSE != 0 {
            self.closing = true;
        }
        let empty = self.drain_out(ctx);
        if self.closing && empty {
            ctx.close();
        }
    }

    fn on_drain(&mut self, ctx: &mut ConnCtx<'_>) {
        // Runtime shutdown: flush what the application queued, then close gracefully.
        self.closing = true;
        if self.drain_out(ctx) {
            ctx.close();
        }
    }

    fn on_close(&mut self, reason: &CloseReason) {
        *self.shared.tail.lock().unwrap_or_else(|p| p.into_inner()) =
            std::mem::take(&mut self.stash);
        let _ = self.shared.closed.set(reason.clone());
        self.out_rx.close();
        // A paced frame in `held` was already counted as taken; count what is still queued.
        drop(self.held.take());
        let mut left = 0;
        while let Ok(b) = self.out_rx.try_recv() {
            drop(b);
            left += 1;
        }
        if let (Some(h), true) = (&self.hooks, left > 0) {
            h.taken(left);
        }
    }
}

/// [`AcceptHooks`] that turn admitted connections into [`ConnHandle`]s delivered through a
/// bounded accept queue ([`Accepted`]). A connection arriving while the queue is full is
/// aborted on open.
pub struct HandleListener<A> {
    admit: A,
    tx: mpsc::Sender<ConnHandle>,
    opts: HandleOptions,
}

impl<A> std::fmt::Debug for HandleListener<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleListener")
            .field("opts", &self.opts)
            .finish()
    }
}

/// The consumer end of a [`HandleListener`].
#[derive(Debug)]
pub struct Accepted {
    rx: mpsc::Receiver<ConnHandle>,
}

impl Accepted {
    /// The next admitted connection; `None` once the listener hooks are gone.
    pub async fn accept(&mut self) -> Option<ConnHandle> {
        self.rx.recv().await
    }

    /// An admitted connection if one is ready.
    pub fn try_accept(&mut self) -> Option<ConnHandle> {
        self.rx.try_recv().ok()
    }
}

/// Creates handle-producing accept hooks: `admit` is the policy hook (runs on the accepting
/// shard before any work), `backlog` the accept-queue capacity.
pub fn handle_listener<A>(
    admit: A,
    backlog: usize,
    opts: HandleOptions,
) -> (Arc<HandleListener<A>>, Accepted)
where
    A: Fn(SocketAddr) -> Result<AdmitToken, Reject> + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel(backlog.max(1));
    (
        Arc::new(HandleListener { admit, tx, opts }),
        Accepted { rx },
    )
}

impl<A> AcceptHooks for HandleListener<A>
where
    A: Fn(SocketAddr) -> Result<AdmitToken, Reject> + Send + Sync + 'static,
{
    fn admit(&self, peer: SocketAddr) -> Result<AdmitToken, Reject> {
        (self.admit)(peer)
    }

    fn open(&self, token: AdmitToken, meta: &ConnMeta, remote: ConnRemote) -> Box<dyn ConnHandler> {
        let (handler, handle) = bridge(meta, remote, self.opts, Some(token));
        match self.tx.try_send(handle) {
            Ok(()) => handler,
            // Accept queue full (or consumer gone): refuse this connection.
            Err(_) => Box::new(crate::handler::Refuse),
        }
    }
}

struct HandleDial {
    tx: oneshot::Sender<Result<ConnHandle, DialError>>,
    opts: HandleOptions,
}

impl DialHooks for HandleDial {
    fn connected(self: Box<Self>, meta: &ConnMeta, remote: ConnRemote) -> Box<dyn ConnHandler> {
        let (handler, handle) = bridge(meta, remote, self.opts, None);
        match self.tx.send(Ok(handle)) {
            Ok(()) => handler,
            Err(_) => Box::new(crate::handler::Refuse), // the dialer gave up
        }
    }

    fn failed(self: Box<Self>, err: DialError) {
        let _ = self.tx.send(Err(err));
    }
}

impl Runtime {
    /// Dials `addr` and returns a [`ConnHandle`] (usable from any executor).
    pub fn dial_handle(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        opts: ConnOptions,
        hopts: HandleOptions,
    ) -> impl Future<Output = Result<ConnHandle, DialError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .dial(
                addr,
                timeout,
                opts,
                Box::new(HandleDial { tx, opts: hopts }),
            )
            .map_err(|(e, _)| e.reason());
        async move {
            if let Err(r) = sent {
                return Err(DialError::Unavailable(r));
            }
            rx.await.unwrap_or(Err(DialError::Unavailable("stopped")))
        }
    }
}
