//! QUIC on the shards: what a caller hands [`Runtime::listen_quic`](crate::Runtime::listen_quic)
//! and [`Runtime::dial_quic`](crate::Runtime::dial_quic). The configs are quinn-proto's, built
//! by the caller (policy: certificates, ALPN, key-exchange groups, transport parameters); the
//! shards only drive them.
//!
//! # How it runs
//! Each shard owns one UDP socket per QUIC listener (an `SO_REUSEPORT` group bound to the same
//! address, so the kernel spreads peers over the shards by 4-tuple) plus, once it dials, one
//! client socket per address family, each with its own `quinn_proto::Endpoint`. Receives are
//! one multishot `recvmsg` per socket into a provided-buffer ring of 64 KiB buffers, with
//! `UDP_GRO` so a burst arrives as one buffer; sends batch `poll_transmit` output into
//! `UDP_SEGMENT` `sendmsg` calls. Connection timers sit on the shard's deadline heap (one entry
//! per connection, re-armed only when its deadline moves earlier). Connection ids name their
//! shard ([`crate::udp`]): a datagram the kernel delivers to another shard (the peer's address
//! changed) is forwarded to the owner through its command queue.
//!
//! Every bidirectional stream is one connection for the handler API (the same
//! [`ConnHandler`](crate::ConnHandler) / handle path as TCP and TLS): frames, limits and
//! deadlines per stream; admission per QUIC connection, before any connection state. A stream
//! opens for the handler once its first bytes equal the configured preface.
#![forbid(unsafe_code)]

use std::sync::Arc;

/// A QUIC listener's settings.
#[derive(Clone)]
pub struct QuicServer {
    /// Endpoint settings (stateless-reset key, versions). Each shard clones it and installs its
    /// own connection-id generator.
    pub endpoint: quinn_proto::EndpointConfig,
    /// The server config (crypto, transport parameters).
    pub server: Arc<quinn_proto::ServerConfig>,
    /// Bytes a client writes first on every stream it opens; a stream that starts otherwise is
    /// reset and reported to [`AcceptHooks::stream_refused`](crate::AcceptHooks::stream_refused).
    pub preface: Vec<u8>,
    /// Handshakes in flight on one shard at or above which a peer whose address is not
    /// validated is sent a stateless Retry first.
    pub retry_above: usize,
    /// Reported as [`TlsFacts::hybrid_pq`](crate::TlsFacts::hybrid_pq) (quinn does not expose the
    /// negotiated group: this is the configured posture).
    pub hybrid_pq: bool,
    /// Datagrams per `sendmsg` (1 disables GSO).
    pub gso_segments: usize,
    /// Coalesce received datagrams with `UDP_GRO`.
    pub gro: bool,
}

impl std::fmt::Debug for QuicServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicServer")
            .field("retry_above", &self.retry_above)
            .field("gso_segments", &self.gso_segments)
            .field("gro", &self.gro)
            .finish()
    }
}

/// A QUIC dial's settings.
#[derive(Clone)]
pub struct QuicDial {
    /// Endpoint settings for the shard's client socket (used when the shard creates it, at its
    /// first QUIC dial per address family).
    pub endpoint: quinn_proto::EndpointConfig,
    /// The client config (crypto, transport parameters).
    pub client: quinn_proto::ClientConfig,
    /// The server name to verify (SNI).
    pub server_name: String,
    /// Written first on the stream the dial opens.
    pub preface: Vec<u8>,
    /// Reported as [`TlsFacts::hybrid_pq`](crate::TlsFacts::hybrid_pq).
    pub hybrid_pq: bool,
    /// Datagrams per `sendmsg` (1 disables GSO).
    pub gso_segments: usize,
    /// Coalesce received datagrams with `UDP_GRO`.
    pub gro: bool,
}

impl std::fmt::Debug for QuicDial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicDial")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// QUIC application error code of a normal close (the last stream ended).
pub const CODE_DONE: u32 = 0;
/// QUIC application error code of a refused or aborted stream or connection.
pub const CODE_REFUSED: u32 = 1;
