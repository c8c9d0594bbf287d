//! QUIC (feature `quic`): the engine-neutral half of `backend = "quic"`. It owns what every
//! engine's QUIC driver shares — the quinn-proto transport, server and client configurations
//! built from the validated config and the project's rustls configs (same provider, cipher
//! suites, key-exchange groups and `pq.mode` as TLS over TCP), the ALPN and stream preface of
//! OAP/1 over QUIC, and the mapping of QUIC connection failures onto the error taxonomy.
//!
//! The tokio engine drives these configs with quinn (`engine::tokio`); the uring driver feeds
//! the same `quinn_proto::Endpoint` / `Connection` state machines (sans-IO, one per connection)
//! from the shard rings with the same configs, so both engines negotiate and fail alike.
//!
//! # OAP/1 over QUIC
//! - ALPN `oap/1` ([`ALPN`]) unless `tls_client.alpn` (dialer) or the server config name
//!   others; TLS 1.3 is QUIC's own handshake.
//! - One [`Conn`](crate::Conn) per bidirectional stream, opened by the dialer. The dialer
//!   writes [`STREAM_PREFACE`] first (a QUIC stream becomes visible to the peer only with its
//!   first byte; the preface lets the listener hand the stream out before any frame arrives).
//!   Then the stream carries the same u32-length-prefixed frames as TCP and TLS.
//! - Caps (`max_conns`, `per_peer.max_conns`) count QUIC connections, admitted before any
//!   handshake state is kept; `quic.max_streams` bounds the concurrent streams per connection;
//!   the streams of one connection share its pacing buckets. A connection is closed when its
//!   last stream `Conn` ends.

use std::sync::Arc;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{
    congestion, ConnectionError, IdleTimeout, TransportConfig, TransportErrorCode, VarInt,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::quic::Suite;

use crate::config::{Congestion, ValidConfig};
use crate::error::TransportError;

/// The ALPN protocol id of OAP/1 over QUIC, used when no other is configured.
pub const ALPN: &[u8] = b"oap/1";

/// The 4 bytes a dialer writes first on every stream it opens (not a frame; not counted in
/// `bytes_out_total`). A stream that starts otherwise is reset and counted as
/// `rejected_total{reason="quic_path_error"}`.
pub const STREAM_PREFACE: [u8; 4] = *b"OAP1";

/// QUIC application error code sent when a connection closes normally (its last stream ended).
pub const CLOSE_DONE: u32 = 0;

/// QUIC application error code sent when a stream's preface was wrong or the endpoint is
/// shutting down.
pub const CLOSE_REFUSED: u32 = 1;

/// Handshakes in flight at or above which a peer whose address is not validated yet is sent a
/// stateless Retry instead of being admitted (address validation under a handshake flood,
/// RFC 9000 §8.1.2): at most this many, and at most half of `max_conns`. Per listener on the
/// tokio engine, per listener and shard on the uring engine.
pub const RETRY_ABOVE_HANDSHAKES: usize = 64;

/// The Retry threshold under `max_conns`.
pub(crate) fn retry_threshold(max_conns: u32) -> usize {
    RETRY_ABOVE_HANDSHAKES.min(max_conns as usize / 2)
}

/// Which side a transport configuration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A listener: the peer may open `quic.max_streams` bidirectional streams.
    Server,
    /// A dialer: the peer (server) may open none.
    Client,
}

/// The QUIC transport parameters of `cfg` (`quic.*`): concurrent bidirectional streams
/// (`quic.max_streams` for a server, 0 for a client), no unidirectional streams and no
/// datagrams, `quic.idle_timeout`, `quic.keep_alive`, `quic.congestion` and `quic.gso`.
///
/// `quic.gro` is not a quinn transport parameter: the uring driver honours it on its sockets;
/// quinn on tokio (quinn-udp) turns GRO on wherever the kernel has it.
pub fn transport_config(cfg: &ValidConfig, role: Role) -> TransportConfig {
    let mut t = TransportConfig::default();
    let streams = match role {
        Role::Server => cfg.quic_max_streams,
        Role::Client => 0,
    };
    t.max_concurrent_bidi_streams(VarInt::from_u32(streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.datagram_receive_buffer_size(None);
    // Validated to [1s, 10m]: always representable.
    t.max_idle_timeout(IdleTimeout::try_from(cfg.quic_idle_timeout).ok());
    t.keep_alive_interval((!cfg.quic_keep_alive.is_zero()).then_some(cfg.quic_keep_alive));
    t.enable_segmentation_offload(cfg.quic_gso);
    match cfg.quic_congestion {
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(congestion::CubicConfig::default()))
        }
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(congestion::BbrConfig::default()))
        }
        Congestion::NewReno => {
            t.congestion_controller_factory(Arc::new(congestion::NewRenoConfig::default()))
        }
    };
    t
}

/// The Initial-packet protection suite (RFC 9001 §5: Initial packets are always protected with
/// AES-128-GCM under keys derived from the connection id, i.e. not secret). It is used for
/// Initial packets only; the handshake negotiates from [`crate::tls::CIPHER_SUITES`].
fn initial_suite() -> Result<Suite, TransportError> {
    rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .ok_or_else(|| TransportError::Unsupported {
            what: "aws-lc-rs has no QUIC initial suite".into(),
        })
}

fn no_initial(e: impl std::fmt::Display) -> TransportError {
    TransportError::Unsupported {
        what: format!("QUIC crypto config: {e}"),
    }
}

/// The QUIC crypto of a listener: `tls` (the project's rustls server config: provider, suites,
/// `pq.mode` groups, certificate) with ALPN [`ALPN`] if it names none, and 0-RTT accepted only
/// with `quic.zero_rtt = true`.
pub fn server_crypto(
    cfg: &ValidConfig,
    tls: &rustls::ServerConfig,
) -> Result<Arc<QuicServerConfig>, TransportError> {
    let mut tls = tls.clone();
    if tls.alpn_protocols.is_empty() {
        tls.alpn_protocols = vec![ALPN.to_vec()];
    }
    // quinn accepts 0 (no 0-RTT) or u32::MAX (0-RTT on).
    tls.max_early_data_size = if cfg.quic_zero_rtt { u32::MAX } else { 0 };
    QuicServerConfig::with_initial(Arc::new(tls), initial_suite()?)
        .map(Arc::new)
        .map_err(no_initial)
}

/// The QUIC crypto of a dialer: `tls` (the project's rustls client config: trust, provider,
/// `pq.mode`, resumption) with ALPN [`ALPN`] if it names none, early data only with
/// `quic.zero_rtt = true`.
pub fn client_crypto(
    cfg: &ValidConfig,
    tls: &rustls::ClientConfig,
) -> Result<Arc<QuicClientConfig>, TransportError> {
    let mut tls = tls.clone();
    if tls.alpn_protocols.is_empty() {
        tls.alpn_protocols = vec![ALPN.to_vec()];
    }
    tls.enable_early_data = cfg.quic_zero_rtt;
    QuicClientConfig::with_initial(Arc::new(tls), initial_suite()?)
        .map(Arc::new)
        .map_err(no_initial)
}

/// A listener's quinn-proto server configuration: [`server_crypto`] and
/// [`transport_config`]`(Role::Server)`; stateless retry and reset keys are quinn's own random
/// per-endpoint keys.
pub fn server_config(
    cfg: &ValidConfig,
    tls: &rustls::ServerConfig,
) -> Result<quinn_proto::ServerConfig, TransportError> {
    let mut sc = quinn_proto::ServerConfig::with_crypto(server_crypto(cfg, tls)?);
    sc.transport_config(Arc::new(transport_config(cfg, Role::Server)));
    Ok(sc)
}

/// A dialer's quinn-proto client configuration: [`client_crypto`] and
/// [`transport_config`]`(Role::Client)`.
pub fn client_config(
    cfg: &ValidConfig,
    tls: &rustls::ClientConfig,
) -> Result<quinn_proto::ClientConfig, TransportError> {
    let mut cc = quinn_proto::ClientConfig::new(client_crypto(cfg, tls)?);
    cc.transport_config(Arc::new(transport_config(cfg, Role::Client)));
    Ok(cc)
}

/// True for the QUIC error codes that carry a TLS alert (0x100..=0x1ff, RFC 9001 §4.8).
fn is_crypto(code: TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}

/// How a lost QUIC connection surfaces: a TLS alert (either side) is `Tls` (reason `tls`);
/// an application close (either side) is `IoClosed`; everything else — the QUIC idle timeout
/// (the path stopped answering), a stateless reset, a protocol violation, no common version —
/// is `QuicPath` (reason `quic_path_error`, spec/INTEROP.md §5).
pub fn connection_error(e: &ConnectionError) -> TransportError {
    let path = || TransportError::QuicPath {
        detail: e.to_string(),
    };
    match e {
        ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed => {
            TransportError::IoClosed
        }
        ConnectionError::TransportError(t) if is_crypto(t.code) => TransportError::Tls {
            detail: e.to_string(),
        },
        ConnectionError::ConnectionClosed(c) if is_crypto(c.error_code) => TransportError::Tls {
            detail: e.to_string(),
        },
        ConnectionError::ConnectionClosed(c) if u64::from(c.error_code) == 0 => {
            TransportError::IoClosed
        }
        _ => path(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn errors_map_onto_the_canon() {
        assert_eq!(
            connection_error(&ConnectionError::TimedOut).kind(),
            "quic_path_error"
        );
        assert_eq!(
            connection_error(&ConnectionError::Reset).reject_reason(),
            Some(crate::RejectReason::QuicPathError)
        );
        assert_eq!(
            connection_error(&ConnectionError::LocallyClosed).kind(),
            "io_closed"
        );
        let alert = quinn_proto::TransportError {
            code: TransportErrorCode::crypto(42),
            frame: None,
            reason: "bad certificate".into(),
        };
        assert_eq!(
            connection_error(&ConnectionError::TransportError(alert)).kind(),
            "tls"
        );
    }

    #[test]
    fn initial_suite_is_aes_128_gcm_even_though_the_handshake_does_not_offer_it() {
        let s = initial_suite().unwrap();
        assert_eq!(
            s.suite.common.suite,
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert!(!crate::tls::CIPHER_SUITES.contains(&s.suite.common.suite));
    }

    #[test]
    fn transport_config_builds_for_every_controller() {
        for c in [Congestion::Cubic, Congestion::Bbr, Congestion::NewReno] {
            let cfg = Config {
                quic_congestion: c,
                ..Config::default()
            }
            .validate()
            .unwrap();
            let _ = transport_config(&cfg, Role::Server);
        }
    }
}
