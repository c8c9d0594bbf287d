//! The two halves of a tokio connection, plain TCP, TLS or a Unix-domain socket, behind one
//! enum each so the reader and writer code is written once. TCP splits into owned halves with no lock; TLS shares one
//! rustls session between the halves through `tokio::io::split` (its lock is held only inside a
//! single poll, never across an `.await`).
//!
//! Any other byte stream (the memory engine's in-process pipes) rides the same machinery as a
//! boxed [`Io`] ([`Stream::Boxed`], and [`Stream::BoxedTls`] with real rustls over it).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsStream;

/// A byte stream other than a TCP socket (e.g. an in-process pipe).
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed [`Io`].
pub(crate) type BoxIo = Box<dyn Io>;

/// A freshly established stream, before it is split.
pub(crate) enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS 1.3 over TCP (client or server side).
    Tls(Box<TlsStream<TcpStream>>),
    /// A Unix-domain stream socket (plain frames).
    Unix(UnixStream),
    /// Plain frames over another byte stream.
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    Boxed(BoxIo),
    /// TLS 1.3 over another byte stream.
    BoxedTls(Box<TlsStream<BoxIo>>),
}

/// A transport a TLS handshake can run over, and how the result becomes a [`Stream`].
pub(crate) trait TlsTransport:
    AsyncRead + AsyncWrite + Send + Unpin + 'static + Sized
{
    /// The established TLS stream as a [`Stream`].
    fn tls_stream(tls: TlsStream<Self>) -> Stream;
}

impl TlsTransport for TcpStream {
    fn tls_stream(tls: TlsStream<Self>) -> Stream {
        Stream::Tls(Box::new(tls))
    }
}

impl TlsTransport for BoxIo {
    fn tls_stream(tls: TlsStream<Self>) -> Stream {
        Stream::BoxedTls(Box::new(tls))
    }
}

impl Stream {
    /// Splits into the read half (owned by the `Conn`) and the write half (owned by the
    /// writer task).
    pub(crate) fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Self::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Self::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
            Self::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
            Self::Boxed(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Boxed(r), WriteHalf::Boxed(w))
            }
            Self::BoxedTls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::BoxedTls(r), WriteHalf::BoxedTls(w))
            }
        }
    }
}

/// The read half.
pub(crate) enum ReadHalf {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
    Unix(tokio::net::unix::OwnedReadHalf),
    Boxed(tokio::io::ReadHalf<BoxIo>),
    BoxedTls(tokio::io::ReadHalf<TlsStream<BoxIo>>),
}

/// The write half.
pub(crate) enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
    Unix(tokio::net::unix::OwnedWriteHalf),
    Boxed(tokio::io::WriteHalf<BoxIo>),
    BoxedTls(tokio::io::WriteHalf<TlsStream<BoxIo>>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            Self::Tls(r) => Pin::new(r).poll_read(cx, buf),
            Self::Unix(r) => Pin::new(r).poll_read(cx, buf),
            Self::Boxed(r) => Pin::new(r).poll_read(cx, buf),
            Self::BoxedTls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            Self::Tls(w) => Pin::new(w).poll_write(cx, buf),
            Self::Unix(w) => Pin::new(w).poll_write(cx, buf),
            Self::Boxed(w) => Pin::new(w).poll_write(cx, buf),
            Self::BoxedTls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Self::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Self::Unix(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Self::Boxed(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Self::BoxedTls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(w) => w.is_write_vectored(),
            Self::Tls(w) => w.is_write_vectored(),
            Self::Unix(w) => w.is_write_vectored(),
            Self::Boxed(w) => w.is_write_vectored(),
            Self::BoxedTls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_flush(cx),
            Self::Tls(w) => Pin::new(w).poll_flush(cx),
            Self::Unix(w) => Pin::new(w).poll_flush(cx),
            Self::Boxed(w) => Pin::new(w).poll_flush(cx),
            Self::BoxedTls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            Self::Tls(w) => Pin::new(w).poll_shutdown(cx),
            Self::Unix(w) => Pin::new(w).poll_shutdown(cx),
            Self::Boxed(w) => Pin::new(w).poll_shutdown(cx),
            Self::BoxedTls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
