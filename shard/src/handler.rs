//! The shard-local way in: a sans-IO [`ConnHandler`] runs on the connection's owning shard and
//! talks to it through a [`ConnCtx`] (queue frames, pause/resume reading, close, abort). No
//! cross-thread hop; a frame that arrived whole in one receive buffer is handed over in place
//! ([`Frame`]) and can be echoed back without copying ([`ConnCtx::send_frame`]).
//!
//! Also here: the accept/dial hooks through which the runtime asks the caller's policy before
//! doing work ([`AcceptHooks::admit`]). The vocabulary they share lives in `meta`, the ctx in
//! `ctx`, and [`ConnRemote`] (the `Send` doorbell that wakes a connection's handler,
//! [`ConnHandler::on_wake`]) in `remote`; all are re-exported here.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

pub use crate::ctx::ConnCtx;
pub use crate::meta::{
    AdmitToken, CloseReason, ConnMeta, CtxSendError, DialError, Frame, HandshakeFailure, Reject,
    TlsFacts,
};
pub use crate::remote::ConnRemote;

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

/// Policy hooks of a listener. `admit` runs on the accepting shard right after accept, before
/// any buffer is taken or byte read; `open` runs on the owning shard.
pub trait AcceptHooks: Send + Sync + 'static {
    /// Admit or refuse the peer.
    fn admit(&self, peer: SocketAddr) -> Result<AdmitToken, Reject>;

    /// Admit or refuse a peer of a Unix-domain listener, by its credentials (`SO_PEERCRED`,
    /// read right after accept, before any receive is armed). The connection's
    /// [`ConnMeta::peer`] is then `cred.addr()` (see [`crate::unix::uid_addr`]). The default
    /// refuses every Unix peer (`reason: "uds_unsupported"`).
    fn admit_unix(&self, cred: crate::unix::PeerCred) -> Result<AdmitToken, Reject> {
        let _ = cred;
        Err(Reject {
            reason: "uds_unsupported",
        })
    }

    /// Builds the handler of an admitted connection (on its owning shard). For a TLS listener
    /// this runs once the handshake has completed (`meta.tls` is set).
    fn open(&self, token: AdmitToken, meta: &ConnMeta, remote: ConnRemote) -> Box<dyn ConnHandler>;

    /// The TLS handshake of an admitted connection failed (on its owning shard); `open` is not
    /// called and the socket is closed. The default drops the token.
    fn handshake_failed(&self, token: AdmitToken, meta: &ConnMeta, failure: &HandshakeFailure) {
        let _ = (token, meta, failure);
    }

    /// QUIC: a token for one more stream of a connection admitted once with `token` (which the
    /// connection keeps until it ends; caps count QUIC connections, not streams). `None`
    /// refuses the stream. The default refuses every stream after the first admission's.
    fn share_token(&self, token: &mut AdmitToken) -> Option<AdmitToken> {
        let _ = token;
        None
    }

    /// QUIC: `peer` was sent a stateless Retry (address validation) because `handshaking`
    /// handshakes were in flight on the shard; it costs no connection state.
    fn quic_retry(&self, peer: SocketAddr, handshaking: usize) {
        let _ = (peer, handshaking);
    }

    /// QUIC: a stream of an admitted connection was refused before it opened for the handler:
    /// it did not start with the preface (`timed_out` false) or not within the read deadline
    /// (`timed_out` true). The stream was reset.
    fn stream_refused(&self, peer: SocketAddr, timed_out: bool) {
        let _ = (peer, timed_out);
    }
}

/// Completion of an outbound dial (runs on the owning shard).
pub trait DialHooks: Send + 'static {
    /// Connected (and, for TLS, the handshake completed: `meta.tls` is set): build the handler.
    fn connected(self: Box<Self>, meta: &ConnMeta, remote: ConnRemote) -> Box<dyn ConnHandler>;
    /// Failed (timeout, refused, shutdown).
    fn failed(self: Box<Self>, err: DialError);
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
