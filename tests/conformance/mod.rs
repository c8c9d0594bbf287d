//! The engine conformance suite (spec/IDB P-4, P-6): one set of cases every engine must pass
//! unchanged — same limits, timeouts, metrics and reason strings.
//!
//! An engine's test file implements [`EngineUnderTest`] and invokes [`conformance_suite!`]:
//!
//! ```ignore
//! mod util;
//! #[macro_use]
//! mod conformance;
//!
//! struct UringUnderTest;
//! impl conformance::EngineUnderTest for UringUnderTest { /* build, live_tasks */ }
//! conformance_suite!(UringUnderTest);
//! ```
//!
//! which generates one `#[test]` per case per tokio scheduler (`current_thread` and
//! `multi_thread`). Cases talk to the engine only through the adapter traits, plus raw loopback
//! sockets where a misbehaving peer is needed ([`raw_connect`], [`raw_stalled`]: TCP, or a
//! Unix-domain socket when [`EngineUnderTest::listen_target`] is a path). Listeners bind
//! `listen_target()` and dialers use `Listener::dial_target()`, so the same cases run on Unix
//! sockets; a case that cannot apply to a path prints `SKIPPED <case>: <why>`.

#![allow(dead_code)]

pub mod cases;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ron_transport::engine::{DialTarget, ListenTarget};
use ron_transport::{ConfigHandle, Engine, TransportMetrics, ValidConfig};

pub use crate::util::tls::TlsFixture;

/// How the suite builds the engine under test.
pub trait EngineUnderTest: 'static {
    /// The engine type.
    type E: Engine;

    /// Builds an engine from `cfg` (its backend decides TCP or TLS), counting into `metrics`.
    /// For TLS, `tls` carries the server and client configs to use instead of files.
    fn build(cfg: ValidConfig, tls: Option<TlsFixture>, metrics: Arc<TransportMetrics>) -> Self::E;

    /// Builds an engine over a live config `handle` (reload cases reload through it).
    fn build_with_handle(
        handle: ConfigHandle,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> Self::E;

    /// Per-connection tasks (readers, writers, handshakes) the engine still runs.
    fn live_tasks(engine: &Self::E) -> usize;

    /// Where the suite's listeners bind (called once per listener): loopback TCP by default;
    /// a fresh socket path in a 0700 directory for the Unix-domain run.
    fn listen_target() -> ListenTarget {
        ListenTarget::Addr(crate::util::loopback())
    }

    /// Whether the engine's listeners are reachable by kernel sockets. Cases that use a raw
    /// `TcpStream` as the misbehaving peer print `SKIPPED <case>: <reason>` and return when
    /// it is false (the memory engine: its own test file has an in-process `pipe_*` twin).
    fn real_sockets() -> bool {
        true
    }

    /// True for a datagram transport (QUIC): a dial to a closed port is not refused by the
    /// kernel (ICMP is not surfaced), it runs into the dial deadline. Cases that check a TCP
    /// refusal print `SKIPPED <case>: <why>` (or skip that step).
    fn connectionless() -> bool {
        false
    }

    /// Runs before every case (the QUIC run makes the cases' `tcp`/`tls` mean `quic`).
    fn prepare() {}
}

/// True (after printing `SKIPPED <case>: <reason>`) if `case` needs kernel sockets the
/// engine under test does not have.
pub fn skip_without_sockets<T: EngineUnderTest>(case: &str, why: &str) -> bool {
    if T::real_sockets() {
        return false;
    }
    println!("SKIPPED {case}: {why}");
    true
}

/// True (after printing `SKIPPED <case>: <why>`) on a connectionless transport.
pub fn skip_connectionless<T: EngineUnderTest>(case: &str, why: &str) -> bool {
    if !T::connectionless() {
        return false;
    }
    println!("SKIPPED {case}: {why}");
    true
}

/// True (and a `SKIPPED <case>: <why>` line printed) when the suite runs on Unix sockets and
/// `case` cannot apply to a socket path.
pub fn skip_on_uds<T: EngineUnderTest>(case: &str, why: &str) -> bool {
    if T::listen_target().unix_path().is_some() {
        println!("SKIPPED {case}: {why}");
        return true;
    }
    false
}

/// A raw (possibly misbehaving) peer: TCP, or a Unix-domain socket for the Unix run.
pub enum Raw {
    /// A TCP socket.
    Tcp(tokio::net::TcpStream),
    /// A Unix-domain socket.
    Unix(tokio::net::UnixStream),
}

/// Connects a raw peer to where a listener says it is.
pub async fn raw_connect(target: &DialTarget) -> Raw {
    match target {
        DialTarget::Unix(p) => {
            Raw::Unix(tokio::net::UnixStream::connect(p).await.expect("connect"))
        }
        other => Raw::Tcp(
            tokio::net::TcpStream::connect(other.addr().expect("an address"))
                .await
                .expect("connect"),
        ),
    }
}

/// A raw peer with a small receive buffer (4 KiB asked) that never reads.
pub async fn raw_stalled(target: &DialTarget) -> Raw {
    match target {
        DialTarget::Unix(p) => {
            let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
                .expect("socket");
            s.set_recv_buffer_size(4096).expect("rcvbuf");
            s.connect(&socket2::SockAddr::unix(p).expect("path"))
                .expect("connect");
            s.set_nonblocking(true).expect("nonblocking");
            let std: std::os::unix::net::UnixStream = s.into();
            Raw::Unix(tokio::net::UnixStream::from_std(std).expect("tokio unix stream"))
        }
        other => {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.set_recv_buffer_size(4096).expect("rcvbuf");
            Raw::Tcp(
                sock.connect(other.addr().expect("an address"))
                    .await
                    .expect("connect"),
            )
        }
    }
}

impl tokio::io::AsyncRead for Raw {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Raw {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Generates every conformance case for `$eut` on both tokio schedulers.
#[macro_export]
macro_rules! conformance_suite {
    ($eut:ty) => {
        $crate::conformance_suite!(@sched $eut, current_thread, run_current_thread);
        $crate::conformance_suite!(@sched $eut, multi_thread, run_multi_thread);
    };
    (@sched $eut:ty, $module:ident, $runner:ident) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_suite!(@cases $eut, $runner;
                echo_tcp,
                echo_tls,
                frame_ceiling,
                read_timeout,
                write_timeout,
                idle_timeout,
                dial_timeout,
                max_conns_tcp,
                max_conns_tls,
                per_peer_cap,
                egress_rate,
                tls_wrong_ca,
                tls_handshake_timeout,
                pq_hybrid,
                busy_when_inbox_full,
                cancel_quiesces,
                graceful_close_tcp,
                graceful_close_tls,
                metrics_smoke,
                shutdown_drains_and_aborts,
                dial_cap_global,
                dial_cap_per_peer,
                dial_pacing,
                dial_refused,
                dial_by_name,
                reload_reaches_dialed,
            );
        }
    };
    (@cases $eut:ty, $runner:ident; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                <$eut as $crate::conformance::EngineUnderTest>::prepare();
                $crate::util::$runner($crate::conformance::cases::$case::<$eut>());
            }
        )*
    };
}
