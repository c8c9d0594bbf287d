//! The shard-local way in: a sans-IO [`ConnHandler`] runs on the connection's owning shard and
//! talks to it through a [`ConnCtx`] (queue frames, pause/resume reading, close, abort). No
//! cross-thread hop; a frame that arrived whole in one receive buffer is handed over in place
//! ([`Frame`]) and can be echoed back without copying ([`ConnCtx::send_frame`]).
//!
//! Also here: the accept/dial hooks through which the runtime asks the caller's policy before
//! doing work ([`AcceptHooks::admit`]), and [`ConnRemote`], the `Send` doorbell that lets other
//! threads wake a connection's handler ([`ConnHandler::on_wake`]).
#![forbid(unsafe_code)]

use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::conn::{ConnState, TimeoutKind, Timeouts};
use crate::frame::FrameError;
use crate::shard::{ConnIo, ShardShared};
use crate::sys::{Body, OutSeg, RingSlice};

/// A per-connection handler running on the owning shard.
///
/// Callbacks never block; they queue work through the [`ConnCtx`], which the shard submits
/// after the callback returns. Order: `on_open`, then any of `on_frame` / `on_writable` /
/// `on_wake` / `on_drain`, then exactly one `on_close`.
pub trait ConnHandler: 'static {
    /// The connection is established (before any byte is read).
    fn on_open(&mut self, ctx: &mut ConnCtx<'_>) {
        let _ = ctx;
    }

    /// A complete frame arrived.
    fn on_frame(&mut self, ctx: &mut ConnCtx<'_>, frame: Frame<'_>);

    /// Queued output fell below the low-water mark (half of `chunk_bytes`).
    fn on_writable(&mut self, ctx: &mut ConnCtx<'_>) {
        let _ = ctx;
    }

    /// Another thread called [`ConnRemote::wake`] with these bits (OR-ed together).
    fn on_wake(&mut self, ctx: &mut ConnCtx<'_>, bits: u32) {
        let _ = (ctx, bits);
    }

    /// The runtime is shutting down: finish up and close before the drain deadline, after
    /// which the connection is aborted. The default does nothing (the connection keeps running
    /// until it closes on its own or is aborted).
    fn on_drain(&mut self, ctx: &mut ConnCtx<'_>) {
        let _ = ctx;
    }

    /// A receive completion delivered `bytes` of frame data (for TLS: plaintext) — called
    /// once per completion, before its frames' `on_frame`. For byte/size accounting.
    fn on_received(&mut self, bytes: usize) {
        let _ = bytes;
    }

    /// A send completion wrote `bytes` of frame data (for TLS: the plaintext the written
    /// ciphertext carried). For byte/size accounting.
    fn on_sent(&mut self, bytes: usize) {
        let _ = bytes;
    }

    /// The connection is gone; no callback follows.
    fn on_close(&mut self, reason: &CloseReason);
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed cleanly between frames.
    PeerClosed,
    /// The peer closed in the middle of a frame.
    PeerClosedMidFrame,
    /// A frame exceeded the ceiling.
    Frame(FrameError),
    /// A deadline fired.
    Timeout(TimeoutKind),
    /// The handler (or a handle) closed it gracefully.
    Local,
    /// The handler (or a handle) aborted it.
    Aborted,
    /// Aborted at the runtime's drain deadline.
    Shutdown,
    /// A socket error (`errno`).
    Io(i32),
    /// TLS failed (handshake or record layer); the string is the pump's stable error kind
    /// ([`PumpError::kind`](crate::tls_pump::PumpError::kind)).
    Tls(&'static str),
}

impl CloseReason {
    /// Stable reason string.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::PeerClosed => "peer_closed",
            Self::PeerClosedMidFrame => "peer_closed_mid_frame",
            Self::Frame(e) => e.reason(),
            Self::Timeout(_) => "timeout",
            Self::Local => "local",
            Self::Aborted => "aborted",
            Self::Shutdown => "shutdown",
            Self::Io(_) => "io",
            Self::Tls(_) => "tls",
        }
    }

    /// True for a clean end (peer or local close without error).
    pub const fn is_clean(&self) -> bool {
        matches!(self, Self::PeerClosed | Self::Local)
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Frame(e) => write!(f, "{e}"),
            Self::Timeout(k) => write!(f, "{} timeout", k.as_str()),
            Self::Io(errno) => write!(f, "{}", std::io::Error::from_raw_os_error(*errno)),
            Self::Tls(kind) => write!(f, "tls failure ({kind})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Facts about an established connection.
#[derive(Clone, Debug)]
pub struct ConnMeta {
    /// Runtime-unique connection id.
    pub id: u64,
    /// Remote address.
    pub peer: SocketAddr,
    /// Local address.
    pub local: SocketAddr,
    /// Owning shard.
    pub shard: usize,
    /// True if we dialed it, false if accepted.
    pub outbound: bool,
    /// Handshake facts of a TLS connection (`None` for plain TCP).
    pub tls: Option<TlsFacts>,
}

/// What a finished TLS handshake negotiated (facts only; labels and metrics are the caller's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFacts {
    /// From accept (server) or connect (client) to handshake completion.
    pub handshake: Duration,
    /// A hybrid post-quantum key exchange group was negotiated.
    pub hybrid_pq: bool,
    /// The negotiated key exchange group.
    pub group: Option<rustls::NamedGroup>,
    /// The agreed ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The session was resumed (ticket/PSK).
    pub resumed: bool,
}

/// Why a TLS handshake did not complete, reported to [`AcceptHooks::handshake_failed`] (and as
/// a [`DialError`] on the dial side).
#[derive(Clone, Debug)]
pub struct HandshakeFailure {
    /// `Timeout(Handshake)`, `Tls(kind)`, `PeerClosed`, `Io`, `Shutdown`, ...
    pub reason: CloseReason,
    /// Human-readable detail (the rustls error, if any).
    pub detail: String,
    /// Time spent from accept to the failure.
    pub elapsed: Duration,
}

/// A received frame's payload: in place in a receive buffer, or assembled.
#[derive(Debug)]
pub struct Frame<'a> {
    pub(crate) payload: &'a [u8],
    pub(crate) src: FrameSrc<'a>,
}

#[derive(Debug)]
pub(crate) enum FrameSrc<'a> {
    Ring(&'a RingSlice, usize),
    Owned(&'a Bytes),
}

impl Frame<'_> {
    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        self.payload
    }

    /// Payload length.
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    /// True for an empty frame.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    /// True if the payload sits in a receive buffer (no copy was made).
    pub fn is_in_place(&self) -> bool {
        matches!(self.src, FrameSrc::Ring(..))
    }

    /// The payload as owned `Bytes` (a copy if in place, a refcount bump if assembled).
    pub fn to_bytes(&self) -> Bytes {
        match self.src {
            FrameSrc::Ring(..) => Bytes::copy_from_slice(self.payload),
            FrameSrc::Owned(b) => b.clone(),
        }
    }
}

/// Opaque value returned by [`AcceptHooks::admit`] and handed to [`AcceptHooks::open`] (e.g. a
/// connection-cap permit that must live as long as the connection).
pub struct AdmitToken(Box<dyn Any + Send>);

impl AdmitToken {
    /// Wraps `value`.
    pub fn new<T: Any + Send>(value: T) -> Self {
        Self(Box::new(value))
    }

    /// A token carrying nothing.
    pub fn empty() -> Self {
        Self::new(())
    }

    /// The carried value, if it is a `T`.
    pub fn downcast<T: Any + Send>(self) -> Result<T, Self> {
        self.0.downcast::<T>().map(|b| *b).map_err(Self)
    }
}

impl std::fmt::Debug for AdmitToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdmitToken")
    }
}

/// An admission refusal. The runtime closes the socket immediately and counts it
/// (`rejected` in the shard stats); the reason is the caller's (policy lives above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The caller's stable reason string.
    pub reason: &'static str,
}

/// Policy hooks of a listener. `admit` runs on the accepting shard right after accept, before
/// any buffer is taken or byte read; `open` runs on the owning shard.
pub trait AcceptHooks: Send + Sync + 'static {
    /// Admit or refuse the peer.
    fn admit(&self, peer: SocketAddr) -> Result<AdmitToken, Reject>;

    /// Builds the handler of an admitted connection (on its owning shard). For a TLS listener
    /// this runs once the handshake has completed (`meta.tls` is set).
    fn open(&self, token: AdmitToken, meta: &ConnMeta, remote: ConnRemote) -> Box<dyn ConnHandler>;

    /// The TLS handshake of an admitted connection failed (on its owning shard); `open` is not
    /// called and the socket is closed. The default drops the token.
    fn handshake_failed(&self, token: AdmitToken, meta: &ConnMeta, failure: &HandshakeFailure) {
        let _ = (token, meta, failure);
    }
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The deadline passed first.
    #[error("dial timed out")]
    Timeout,
    /// `connect` failed.
    #[error("connect failed: {0}")]
    Io(#[source] std::io::Error),
    /// The runtime is shutting down or the shard queue is full.
    #[error("runtime unavailable: {0}")]
    Unavailable(&'static str),
    /// The TLS handshake failed (`kind` is the pump's stable error kind).
    #[error("tls handshake failed ({kind}): {detail}")]
    Tls {
        /// Stable kind ([`PumpError::kind`](crate::tls_pump::PumpError::kind)).
        kind: &'static str,
        /// Detail (the rustls error).
        detail: String,
    },
}

impl DialError {
    /// Stable reason string.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Io(_) => "io",
            Self::Unavailable(r) => r,
            Self::Tls { .. } => "tls",
        }
    }
}

/// Completion of an outbound dial (runs on the owning shard).
pub trait DialHooks: Send + 'static {
    /// Connected (and, for TLS, the handshake completed: `meta.tls` is set): build the handler.
    fn connected(self: Box<Self>, meta: &ConnMeta, remote: ConnRemote) -> Box<dyn ConnHandler>;
    /// Failed (timeout, refused, shutdown).
    fn failed(self: Box<Self>, err: DialError);
}

/// Why a frame could not be queued from a handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CtxSendError {
    /// The payload does not fit a u32 length prefix.
    #[error("frame too large for a u32 length prefix")]
    TooLarge,
    /// The connection is closing; nothing more is sent.
    #[error("connection is closing")]
    Closing,
}

/// The handler's view of its connection during a callback.
pub struct ConnCtx<'a> {
    pub(crate) io: &'a mut ConnIo,
    pub(crate) state: &'a mut ConnState,
    pub(crate) meta: &'a ConnMeta,
    pub(crate) now: Instant,
}

impl std::fmt::Debug for ConnCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnCtx").field("meta", self.meta).finish()
    }
}

impl ConnCtx<'_> {
    /// Connection facts.
    pub fn meta(&self) -> &ConnMeta {
        self.meta
    }

    /// The shard's current time (taken once per loop iteration).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.state.queued()
    }

    /// Queues a frame, copying `payload`.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), CtxSendError> {
        self.send_bytes(Bytes::copy_from_slice(payload))
    }

    /// Queues a frame whose payload is `payload` (no copy).
    pub fn send_bytes(&mut self, payload: Bytes) -> Result<(), CtxSendError> {
        if u32::try_from(payload.len()).is_err() {
            return Err(CtxSendError::TooLarge);
        }
        self.push(OutSeg::frame(Body::Bytes(payload)))
    }

    /// Queues `frame` back (echo) without copying: an in-place frame keeps its receive buffer
    /// held until the send completes.
    pub fn send_frame(&mut self, frame: &Frame<'_>) -> Result<(), CtxSendError> {
        let body = match frame.src {
            FrameSrc::Ring(slice, start) => Body::Ring(slice.sub(start, frame.payload.len())),
            FrameSrc::Owned(b) => Body::Bytes(b.clone()),
        };
        self.push(OutSeg::frame(body))
    }

    /// Queues bytes written verbatim, without a length prefix (already-framed data).
    pub fn send_raw(&mut self, bytes: Bytes) -> Result<(), CtxSendError> {
        self.push(OutSeg::raw(bytes))
    }

    fn push(&mut self, seg: OutSeg) -> Result<(), CtxSendError> {
        if self.io.close.is_some() {
            return Err(CtxSendError::Closing);
        }
        self.state.handle_queued(self.now, seg.wire_len());
        self.io.out.push_back(seg);
        Ok(())
    }

    /// Stops receiving (no new receive is armed; frames of a chunk already received are still
    /// delivered). For backpressure.
    pub fn pause_reading(&mut self) {
        self.io.want_read = false;
    }

    /// Resumes receiving.
    pub fn resume_reading(&mut self) {
        self.io.want_read = true;
    }

    /// True unless reading is paused.
    pub fn is_reading(&self) -> bool {
        self.io.want_read
    }

    /// Holds reading for `delay` (rate pacing), independently of
    /// [`pause_reading`](Self::pause_reading) / [`resume_reading`](Self::resume_reading): the
    /// shard re-arms the receive by itself when the hold ends. A longer hold extends a shorter
    /// one. Frames of a chunk already received are still delivered.
    pub fn hold_reading_for(&mut self, delay: std::time::Duration) {
        if delay.is_zero() {
            return;
        }
        let until = self.now + delay;
        if self.io.read_hold.is_none_or(|t| t < until) {
            self.io.read_hold = Some(until);
        }
    }

    /// Whether output above the shard's high-water mark pauses reading (default: true). Right
    /// for handlers whose output follows their input (an echo must not read without bound
    /// from a peer that does not read); a handler that bounds its output itself and whose
    /// reads must not wait on its writes (two pipelining peers would deadlock otherwise) turns
    /// it off. The handle bridge does.
    pub fn set_output_pauses_reading(&mut self, on: bool) {
        self.io.output_pauses_reading = on;
    }

    /// Replaces this connection's deadlines.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.state.set_timeouts(timeouts);
    }

    /// Graceful close: stop reading, flush queued output (bounded by the write timeout), shut
    /// the write side down, then close. `on_close(Local)` follows.
    pub fn close(&mut self) {
        if self.io.close.is_none() {
            self.io.close = Some((CloseReason::Local, true));
        }
    }

    /// Hard close: queued output is dropped, in-flight ops are cancelled. `on_close(Aborted)`
    /// follows.
    pub fn abort(&mut self) {
        match &self.io.close {
            Some((_, false)) => {}
            _ => self.io.close = Some((CloseReason::Aborted, false)),
        }
    }

    /// Calls [`ConnHandler::on_wake`] with `bits` after `delay` (on this shard's timer). A
    /// later request replaces an earlier pending one (for pacing).
    pub fn wake_after(&mut self, delay: std::time::Duration, bits: u32) {
        self.io.wake_at = Some((self.now + delay, bits));
    }

    /// A `Send` doorbell for this connection.
    pub fn remote(&self) -> ConnRemote {
        self.io.remote.clone()
    }
}

/// A `Send + Sync` doorbell into one connection on its owning shard: [`ConnRemote::wake`]
/// ORs bits into the connection's wake word and, once per batch, rings the shard.
#[derive(Clone, Debug)]
pub struct ConnRemote(pub(crate) Arc<RemoteShared>);

#[derive(Debug)]
pub(crate) struct RemoteShared {
    pub(crate) shard: Arc<ShardShared>,
    pub(crate) key: (u32, u32),
    pub(crate) bits: AtomicU32,
    pub(crate) queued: AtomicBool,
    pub(crate) gone: AtomicBool,
}

impl ConnRemote {
    /// Wakes the handler with `bits` (delivered to [`ConnHandler::on_wake`]). Returns false if
    /// the connection is already gone.
    pub fn wake(&self, bits: u32) -> bool {
        let r = &self.0;
        if r.gone.load(Ordering::Acquire) {
            return false;
        }
        r.bits.fetch_or(bits, Ordering::AcqRel);
        if !r.queued.swap(true, Ordering::AcqRel) {
            r.shard.post_wake(self.0.clone());
        }
        true
    }

    /// True once the connection has closed.
    pub fn is_gone(&self) -> bool {
        self.0.gone.load(Ordering::Acquire)
    }

    /// Owning shard index.
    pub fn shard(&self) -> usize {
        self.0.shard.id
    }
}

/// A handler that aborts its connection as soon as it opens (and any frame that still
/// arrives): for connections nobody will consume, e.g. a dial whose caller gave up or an
/// accept whose admission token went missing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Refuse;

impl ConnHandler for Refuse {
    fn on_open(&mut self, ctx: &mut ConnCtx<'_>) {
        ctx.abort();
    }
    fn on_frame(&mut self, ctx: &mut ConnCtx<'_>, _frame: Frame<'_>) {
        ctx.abort();
    }
    fn on_close(&mut self, _reason: &CloseReason) {}
}
