//! The vocabulary shared by handlers, hooks and the shard loop: connection facts
//! ([`ConnMeta`], [`TlsFacts`]), why a connection ended ([`CloseReason`]) or a handshake or dial
//! failed ([`HandshakeFailure`], [`DialError`]), received frames ([`Frame`]), admission tokens
//! and refusals ([`AdmitToken`], [`Reject`]). Plain data; no I/O.
#![forbid(unsafe_code)]

use std::any::Any;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::conn::TimeoutKind;
use crate::frame::FrameError;
use crate::sys::RingSlice;

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
    /// The connection's handler (or the hook building it) panicked: the panic was contained
    /// to this connection, which is aborted.
    HandlerPanic,
    /// QUIC: the path or the QUIC connection under this stream failed (idle timeout, stateless
    /// reset, protocol violation, ...); the string is a stable kind.
    QuicPath(&'static str),
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
            Self::HandlerPanic => "handler_panic",
            Self::QuicPath(_) => "quic_path_error",
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
            Self::QuicPath(kind) => write!(f, "quic path error ({kind})"),
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
    /// Handshake facts of a TLS connection (`None` for plain TCP; boxed: every connection's
    /// slot carries this field, few need its contents).
    pub tls: Option<Box<TlsFacts>>,
    /// QUIC: the stream id this connection is, and whether it is the first stream of its QUIC
    /// connection to open here (the handshake's facts belong to that one); `None` for TCP and
    /// TLS.
    pub quic_stream: Option<(u64, bool)>,
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
