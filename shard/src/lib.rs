//! ron-shard: the thread-per-core io_uring runtime under ron-transport (mechanism only).
//!
//! One shard per pinned core owns an io_uring (SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN
//! when the kernel allows), a provided-buffer ring for multishot receives, its connections, its
//! timers and its stats cells. An accepting shard runs a multishot accept, asks the caller's
//! admission hook before any work, and hands each admitted socket to the shard with the fewest
//! connections; a connection never moves after that.
//!
//! Two ways in:
//! - shard-local: implement [`ConnHandler`]; it runs on the owning shard with no cross-thread
//!   hop, receives frames in place ([`Frame`]) and can echo them without copying;
//! - handles: [`ConnHandle`] / [`FrameTx`] are `Send` and work from any executor through
//!   bounded queues (writer inbox 256 frames, full ⇒ `Busy`; inbound backpressure stops reads).
//!
//! TLS 1.3 ([`Runtime::listen_tls`] / [`Runtime::dial_tls`], caller-built rustls configs): the
//! owning shard drives the sans-IO [`tls_pump`] itself — no task, no thread hop. The handshake
//! runs under a deadline (server: the read timeout; dial: the dial deadline); only then is the
//! handler built, with [`ConnMeta::tls`] facts (duration, hybrid PQ group, ALPN, resumption);
//! a failure goes to [`AcceptHooks::handshake_failed`] / [`DialError`]`::Tls`. Records that sit
//! whole in one provided buffer are decrypted in place there and their frames handed out in
//! place; a record spanning buffers is assembled once per connection. Outgoing frames are
//! coalesced into one encrypt pass per `chunk_bytes` into a reused per-connection send
//! buffer, one send submission per batch; graceful close sends close_notify.
//!
//! Layout: [`frame`] and [`conn`] are sans-IO state machines (bytes and `now` in, frames and
//! deadlines out); `shard` drives them; `sys` is the only module with `unsafe`.
//!
//! Memory: an idle connection holds no receive buffer (receives come from the shard's shared
//! provided-buffer ring only when bytes arrive). Measured with
//! `cargo run --release -p ron-shard --example idle_mem -- 5000` (RSS delta, client sockets in
//! the same process): ≈ 0.8 KiB per idle connection through the handler API, ≈ 3.5 KiB through
//! handles (their two bounded channels).
//!
//! No config schema, metric names or policy live here: those belong to `ron-transport`.
#![deny(missing_docs)]

pub mod balance;
pub mod conn;
mod ctx;
mod doorbell;
mod exec;
pub mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod handle;
pub mod handler;
mod meta;
pub mod port;
pub mod probe;
pub mod quic;
mod remote;
pub mod runtime;
mod shard;
pub mod stats;
mod sync;
mod sys;
mod tls_conn;
pub mod tls_pump;
pub mod tls_record;
pub mod udp;
pub mod unix;
mod wake;

pub use conn::{ConnState, TimeoutKind, Timeouts};
pub use exec::{is_shard_thread, spawn_local};
pub use frame::{Decoded, FrameDecoder, FrameError};
pub use handle::{
    bridge, bridge_with_hooks, handle_listener, Accepted, ConnHandle, FrameTx, HandleListener,
    HandleOptions, OutboundHooks, SendError,
};
pub use handler::{
    AcceptHooks, AdmitToken, CloseReason, ConnCtx, ConnHandler, ConnMeta, ConnRemote, CtxSendError,
    DialError, DialHooks, Frame, HandshakeFailure, Refuse, Reject, TlsFacts,
};
pub use port::{port, PortConn, PortHandler, PortSend, PortTx};
pub use probe::{probe, ProbeFailure, ProbeReport};
pub use runtime::{
    bind, DrainReport, ListenerId, Runtime, RuntimeConfig, ShardError, Shutdown, StartError,
};
pub use shard::{ConnOptions, ShardReport};
pub use stats::StatsSnapshot;
pub use tls_conn::TlsDial;
pub use unix::PeerCred;
