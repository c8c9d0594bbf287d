//! TLS configuration (rustls 0.23, re-exported via `tokio_rustls::rustls`): server configs from
//! PEM with the 0600 key-permission check and zeroized buffers, client configs with trust store
//! `system` or `path`, SNI override and ALPN; TLS 1.3 only; session resumption on; `pq.mode`
//! selects X25519MLKEM768-first or classical groups; the negotiated group maps to [`PqLabel`].
//!
//! NOTE(skeleton): the helper that owns `src/tls.rs` replaces the `todo!()`s.

use std::sync::Arc;

use tokio_rustls::rustls;

use crate::config::{PqMode, ValidConfig};
use crate::error::TransportError;
use crate::metrics::PqLabel;

/// Server config from `tls.cert_path` / `tls.key_path` of `cfg`.
pub fn server_config(cfg: &ValidConfig) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let _ = cfg;
    todo!("tls helper")
}

/// Server config from in-memory PEM (cert chain, private key). `key_pem` is zeroized.
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: zeroize::Zeroizing<Vec<u8>>,
    pq: PqMode,
    alpn: &[String],
) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let _ = (cert_pem, key_pem, pq, alpn);
    todo!("tls helper")
}

/// Client config from `tls_client.*` and `pq.mode` of `cfg`.
pub fn client_config(cfg: &ValidConfig) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let _ = cfg;
    todo!("tls helper")
}

/// Client config trusting exactly the PEM certificates in `ca_pem`.
pub fn client_config_from_ca_pem(
    ca_pem: &[u8],
    pq: PqMode,
    alpn: &[String],
) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let _ = (ca_pem, pq, alpn);
    todo!("tls helper")
}

/// The `pq` label for a finished handshake.
pub fn negotiated_pq(state: &rustls::CommonState) -> PqLabel {
    let _ = state;
    todo!("tls helper")
}
