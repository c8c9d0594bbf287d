//! TLS configuration (rustls 0.23, used through the re-export `tokio_rustls::rustls`, spec/IDB
//! I-3): server configs from PEM with the 0600 key-permission check and zeroized buffers,
//! client configs with trust store `system` or `path`, SNI selection and ALPN; TLS 1.3 only;
//! session resumption on; `pq.mode` selects X25519MLKEM768-first or classical groups; the
//! negotiated group maps to [`PqLabel`].
//!
//! # Policy (shared by every engine)
//! - Crypto provider: aws-lc-rs (the only rustls provider with X25519MLKEM768), restricted to
//!   the TLS 1.3 cipher suites with a 256-bit key ([`CIPHER_SUITES`]:
//!   `TLS13_AES_256_GCM_SHA384`, `TLS13_CHACHA20_POLY1305_SHA256`; spec/QUANTUM.md PQ-I2 asks
//!   for ≥ 256-bit symmetric strength, so `TLS13_AES_128_GCM_SHA256` is not offered and a peer
//!   that offers only it fails the handshake with reason `tls`). [`crypto_provider`] is the
//!   single source of that policy.
//! - Key exchange: `pq.mode = "hybrid"` ⇒ `X25519MLKEM768, X25519, secp256r1`;
//!   `"off"` ⇒ `X25519, secp256r1, secp384r1`.
//! - Server: stateless session tickets (aws-lc-rs ticketer, rotated every 6 h) plus an
//!   in-memory session cache of [`SERVER_SESSION_CACHE_SIZE`]; 0-RTT disabled
//!   (`max_early_data_size = 0`); no client authentication.
//! - Client: in-memory resumption store of [`CLIENT_SESSION_CACHE_SIZE`] entries; no 0-RTT.
//!
//! # Errors
//! Everything wrong with configured material (unreadable/oversized/over-permissive files, empty
//! or malformed PEM, a key that does not match its certificate, an empty trust store, a bad
//! ALPN entry or server name) is `TransportError::Config(ConfigError::Invalid { key, .. })`
//! naming the config key (`tls.key_path`, `tls.cert_path`, `tls_client.trust_store`,
//! `tls_client.ca_bundle_path`, `tls_client.alpn`, `tls_client.sni_override`,
//! `dial.server_name`), also for the in-memory variants: a configuration problem is not a
//! peer rejection, so it is never `TransportError::Tls` (which counts as
//! `rejected_total{reason="tls"}`). Only failures inside rustls/aws-lc-rs that no input can
//! cause (e.g. the ticketer's RNG) are `TransportError::Tls`. No message ever contains key
//! bytes.

mod pem;

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::server::ServerSessionMemoryCache;
use tokio_rustls::rustls::{CommonState, HandshakeKind, NamedGroup, RootCertStore};

use crate::config::{PqMode, TrustStore, ValidConfig};
use crate::error::TransportError;
use crate::metrics::PqLabel;

use self::pem::{invalid, parse_certs_pem, read_public_pem_file, CA_BUNDLE_PATH, CERT_PATH};
pub use self::pem::{parse_private_key_pem, read_key_file, MAX_PEM_FILE_BYTES};
/// The zeroizing buffer type of the key-loading API, re-exported so callers need no direct
/// `zeroize` dependency.
pub use zeroize::Zeroizing;

/// Capacity of the server's in-memory session cache (stateful resumption fallback).
pub const SERVER_SESSION_CACHE_SIZE: usize = 4096;

/// Capacity of the client's in-memory resumption store (entries, one per server name).
pub const CLIENT_SESSION_CACHE_SIZE: usize = 256;

/// Config key of the dialer's trust source.
const TRUST_STORE: &str = "tls_client.trust_store";
/// Config key of the dialer's ALPN list.
const ALPN: &str = "tls_client.alpn";
/// Config key of the SNI override.
const SNI_OVERRIDE: &str = "tls_client.sni_override";
/// Pseudo-key for [`crate::engine::DialOptions::server_name`].
const DIAL_SERVER_NAME: &str = "dial.server_name";

/// Key-exchange groups offered/accepted for `pq.mode = "hybrid"`, in preference order.
pub fn kx_groups(pq: PqMode) -> Vec<&'static dyn SupportedKxGroup> {
    use aws_lc_rs::kx_group::{SECP256R1, SECP384R1, X25519, X25519MLKEM768};
    match pq {
        PqMode::Hybrid => vec![X25519MLKEM768, X25519, SECP256R1],
        PqMode::Off => vec![X25519, SECP256R1, SECP384R1],
    }
}

/// The TLS 1.3 cipher suites offered and accepted, in preference order (spec/QUANTUM.md PQ-I2:
/// ≥ 256-bit symmetric keys). `TLS13_AES_128_GCM_SHA256` is deliberately absent.
pub const CIPHER_SUITES: [rustls::CipherSuite; 2] = [
    rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// The crypto provider for `pq`: aws-lc-rs, the TLS 1.3 cipher suites of [`CIPHER_SUITES`]
/// only, key-exchange groups per [`kx_groups`]. Every engine builds its configs from this, so they share one policy.
/// The two possible providers are built once and shared.
pub fn crypto_provider(pq: PqMode) -> Arc<CryptoProvider> {
    static OFF: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    static HYBRID: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    let cell = match pq {
        PqMode::Off => &OFF,
        PqMode::Hybrid => &HYBRID,
    };
    cell.get_or_init(|| {
        let base = aws_lc_rs::default_provider();
        // In CIPHER_SUITES order; every entry exists in aws-lc-rs (asserted by the unit test).
        let cipher_suites = CIPHER_SUITES
            .iter()
            .filter_map(|want| {
                base.cipher_suites.iter().copied().find(|s| {
                    s.suite() == *want && matches!(s, rustls::SupportedCipherSuite::Tls13(_))
                })
            })
            .collect();
        Arc::new(CryptoProvider {
            cipher_suites,
            kx_groups: kx_groups(pq),
            ..base
        })
    })
    .clone()
}

fn rustls_err(context: &str, err: rustls::Error) -> TransportError {
    TransportError::Tls {
        detail: format!("{context}: {err}"),
    }
}

/// Validates and encodes an ALPN list (each entry 1..=255 bytes, at most 64 entries).
fn alpn_protocols(alpn: &[String], key: &'static str) -> Result<Vec<Vec<u8>>, TransportError> {
    if alpn.len() > 64 {
        return Err(invalid(key, format!("{} entries (max 64)", alpn.len())));
    }
    alpn.iter()
        .enumerate()
        .map(|(i, p)| {
            if p.is_empty() || p.len() > 255 {
                Err(invalid(
                    key,
                    format!("entry {i} is {} bytes (must be 1..=255)", p.len()),
                ))
            } else {
                Ok(p.as_bytes().to_vec())
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// Server config from `tls.cert_path` / `tls.key_path` and `pq.mode` of `cfg`.
///
/// The configuration schema has no server-side ALPN key, so this config announces no ALPN
/// (it still accepts clients that offer some); use [`server_config_from_files`] to set one.
pub fn server_config(cfg: &ValidConfig) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let cert = cfg
        .tls_cert_path
        .as_deref()
        .ok_or_else(|| invalid(CERT_PATH, "required when building a TLS server config"))?;
    let key = cfg
        .tls_key_path
        .as_deref()
        .ok_or_else(|| invalid(pem::KEY_PATH, "required when building a TLS server config"))?;
    server_config_from_files(cert, key, cfg.pq_mode, &[])
}

/// Server config from a PEM certificate-chain file and a PEM private-key file.
///
/// The key file must be mode 0600 or stricter on Unix ([`read_key_file`]); its contents are
/// held in a zeroizing buffer that is scrubbed whether or not building succeeds.
pub fn server_config_from_files(
    cert_path: &Path,
    key_path: &Path,
    pq: PqMode,
    alpn: &[String],
) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let cert_pem = read_public_pem_file(cert_path, CERT_PATH)?;
    let key_pem = read_key_file(key_path)?;
    server_config_from_pem(&cert_pem, key_pem, pq, alpn)
}

/// Server config from in-memory PEM (cert chain, private key). `key_pem` is zeroized.
///
/// The chain is every `CERTIFICATE` block of `cert_pem`, leaf first; the key is the first
/// private-key block of `key_pem` and must match the leaf. `alpn` is the server's ALPN
/// preference list (empty = no ALPN).
pub fn server_config_from_pem(
    cert_pem: &[u8],
    mut key_pem: zeroize::Zeroizing<Vec<u8>>,
    pq: PqMode,
    alpn: &[String],
) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    // Parse the key first: it scrubs `key_pem` on every path.
    let key = parse_private_key_pem(&mut key_pem)?;
    let certs = parse_certs_pem(cert_pem, CERT_PATH)?;
    let alpn = alpn_protocols(alpn, "tls.alpn")?;
    server_config_from_der(certs, key, pq, alpn)
}

fn server_config_from_der(
    certs: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    pq: PqMode,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider(pq))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| rustls_err("server protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            // Variants carry no key material (inconsistent keys, unsupported key type, bad
            // certificate encoding).
            invalid(
                pem::KEY_PATH,
                format!("certificate and private key are not usable together: {e}"),
            )
        })?;
    config.ticketer = aws_lc_rs::Ticketer::new().map_err(|e| rustls_err("ticketer", e))?;
    config.session_storage = ServerSessionMemoryCache::new(SERVER_SESSION_CACHE_SIZE);
    config.alpn_protocols = alpn;
    config.max_early_data_size = 0;
    // The uring shards take the record layer over after the handshake (ron_shard::tls_record).
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Client config from `tls_client.*` and `pq.mode` of `cfg`.
///
/// `trust_store = "system"` loads the operating system's roots (rustls-native-certs, which
/// honours `SSL_CERT_FILE` / `SSL_CERT_DIR`); if none can be loaded this is an error rather
/// than a config that silently trusts nothing. `trust_store = "path"` loads the PEM bundle at
/// `tls_client.ca_bundle_path`.
pub fn client_config(cfg: &ValidConfig) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let roots = match cfg.tls_client_trust_store {
        TrustStore::System => system_roots()?,
        TrustStore::Path => {
            let path = cfg.tls_client_ca_bundle.as_deref().ok_or_else(|| {
                invalid(
                    CA_BUNDLE_PATH,
                    "required when tls_client.trust_store = \"path\"",
                )
            })?;
            let pem = read_public_pem_file(path, CA_BUNDLE_PATH)?;
            roots_from_pem(&pem)?
        }
    };
    client_config_with_roots(roots, cfg.pq_mode, &cfg.tls_client_alpn)
}

/// Client config trusting exactly the PEM certificates in `ca_pem`.
pub fn client_config_from_ca_pem(
    ca_pem: &[u8],
    pq: PqMode,
    alpn: &[String],
) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    client_config_with_roots(roots_from_pem(ca_pem)?, pq, alpn)
}

/// Client config trusting `roots` (TLS 1.3 only, resumption on, no client auth).
pub fn client_config_with_roots(
    roots: RootCertStore,
    pq: PqMode,
    alpn: &[String],
) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    if roots.is_empty() {
        return Err(invalid(
            TRUST_STORE,
            "the trust store is empty: no server could be authenticated",
        ));
    }
    let alpn = alpn_protocols(alpn, ALPN)?;
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider(pq))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| rustls_err("client protocol versions", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::in_memory_sessions(CLIENT_SESSION_CACHE_SIZE);
    config.alpn_protocols = alpn;
    config.enable_early_data = false;
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// A root store holding every certificate of `ca_pem`; any unparsable certificate is an
/// error (fail closed: a bundle the operator wrote must load completely).
pub fn roots_from_pem(ca_pem: &[u8]) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in parse_certs_pem(ca_pem, CA_BUNDLE_PATH)?
        .into_iter()
        .enumerate()
    {
        roots.add(cert).map_err(|e| {
            invalid(
                CA_BUNDLE_PATH,
                format!("certificate {i} is not a usable trust anchor: {e}"),
            )
        })?;
    }
    Ok(roots)
}

/// The operating system's trust anchors. Individual unparsable OS certificates are skipped
/// (stores routinely hold a few); an empty or unreadable store is
/// `Config(Invalid{key: "tls_client.trust_store"})`.
pub fn system_roots() -> Result<RootCertStore, TransportError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let first_err = loaded
            .errors
            .first()
            .map(|e| format!(" (first error: {e})"))
            .unwrap_or_default();
        return Err(invalid(
            TRUST_STORE,
            format!(
                "trust_store = \"system\" but no usable root certificate could be loaded from \
                 the OS store ({ignored} unparsable, {} load errors){first_err}; refusing to \
                 build a client that trusts nothing — install CA certificates or use \
                 trust_store = \"path\"",
                loaded.errors.len()
            ),
        ));
    }
    if ignored > 0 || !loaded.errors.is_empty() {
        tracing::warn!(
            added,
            ignored,
            load_errors = loaded.errors.len(),
            "some OS trust anchors could not be loaded"
        );
    }
    Ok(roots)
}

/// The TLS server name to send (SNI) and verify the certificate against.
///
/// Precedence: `dial_server_name` (from `DialOptions::server_name`), then
/// `tls_client.sni_override`, then the dialed IP address. Empty strings count as unset. A
/// name that is neither a DNS name nor an IP literal is `Config(Invalid)` naming
/// `dial.server_name` or `tls_client.sni_override`.
pub fn server_name(
    dial_server_name: Option<&str>,
    sni_override: Option<&str>,
    ip: IpAddr,
) -> Result<ServerName<'static>, TransportError> {
    let pick = |name: &str, key: &'static str| {
        ServerName::try_from(name.to_owned()).map_err(|_| {
            invalid(
                key,
                format!("{name:?} is not a valid DNS name or IP address"),
            )
        })
    };
    match (
        dial_server_name.filter(|s| !s.is_empty()),
        sni_override.filter(|s| !s.is_empty()),
    ) {
        (Some(name), _) => pick(name, DIAL_SERVER_NAME),
        (None, Some(name)) => pick(name, SNI_OVERRIDE),
        (None, None) => Ok(ServerName::IpAddress(ip.into())),
    }
}

// ---------------------------------------------------------------------------------------------
// Handshake facts
// ---------------------------------------------------------------------------------------------

/// True for a key-exchange group with a post-quantum component: the hybrids
/// (X25519MLKEM768, secp256r1MLKEM768, secp384r1MLKEM1024, the X25519Kyber768 draft) and the
/// pure ML-KEM groups.
pub fn is_pq_group(group: NamedGroup) -> bool {
    matches!(
        u16::from(group),
        0x0200
            ..=0x0202 // MLKEM512, MLKEM768, MLKEM1024
            | 0x11eb // secp256r1MLKEM768
            | 0x11ec // X25519MLKEM768
            | 0x11ed // secp384r1MLKEM1024
            | 0x6399 // X25519Kyber768Draft00
    )
}

/// The `pq` label for a finished handshake: [`PqLabel::Hybrid`] if the negotiated group has a
/// post-quantum component ([`is_pq_group`]), else [`PqLabel::Off`] (also before the handshake
/// finished).
pub fn negotiated_pq(state: &rustls::CommonState) -> PqLabel {
    match state.negotiated_key_exchange_group() {
        Some(g) if is_pq_group(g.name()) => PqLabel::Hybrid,
        _ => PqLabel::Off,
    }
}

/// True if the handshake resumed an earlier session.
pub fn is_resumed(state: &CommonState) -> bool {
    state.handshake_kind() == Some(HandshakeKind::Resumed)
}

/// What an engine records in [`crate::engine::ConnInfo`] after a handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeFacts {
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// Key-exchange posture.
    pub pq: PqLabel,
    /// Session resumed.
    pub resumed: bool,
}

/// The [`HandshakeFacts`] of a finished handshake.
pub fn handshake_facts(state: &CommonState) -> HandshakeFacts {
    HandshakeFacts {
        alpn: state.alpn_protocol().map(<[u8]>::to_vec),
        pq: negotiated_pq(state),
        resumed: is_resumed(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_policy() {
        let names = |pq| -> Vec<NamedGroup> {
            crypto_provider(pq)
                .kx_groups
                .iter()
                .map(|g| g.name())
                .collect()
        };
        assert_eq!(
            names(PqMode::Hybrid),
            [
                NamedGroup::X25519MLKEM768,
                NamedGroup::X25519,
                NamedGroup::secp256r1
            ]
        );
        assert_eq!(
            names(PqMode::Off),
            [
                NamedGroup::X25519,
                NamedGroup::secp256r1,
                NamedGroup::secp384r1
            ]
        );
        for pq in [PqMode::Off, PqMode::Hybrid] {
            let p = crypto_provider(pq);
            let suites: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
            assert_eq!(suites, CIPHER_SUITES, "only the 256-bit TLS 1.3 suites");
            assert!(p
                .cipher_suites
                .iter()
                .all(|s| s.version() == &rustls::version::TLS13));
            assert!(Arc::ptr_eq(&p, &crypto_provider(pq)), "shared instance");
        }
    }

    #[test]
    fn pq_groups() {
        assert!(is_pq_group(NamedGroup::X25519MLKEM768));
        assert!(is_pq_group(NamedGroup::secp256r1MLKEM768));
        assert!(is_pq_group(NamedGroup::MLKEM768));
        assert!(!is_pq_group(NamedGroup::X25519));
        assert!(!is_pq_group(NamedGroup::secp256r1));
        assert!(!is_pq_group(NamedGroup::secp384r1));
        assert!(!is_pq_group(NamedGroup::FFDHE2048));
    }

    #[test]
    fn server_name_precedence() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let dns = |s: &str| ServerName::try_from(s.to_owned()).unwrap();
        assert_eq!(
            server_name(Some("a.example"), Some("b.example"), ip).unwrap(),
            dns("a.example")
        );
        assert_eq!(
            server_name(None, Some("b.example"), ip).unwrap(),
            dns("b.example")
        );
        assert_eq!(
            server_name(Some(""), Some(""), ip).unwrap(),
            ServerName::IpAddress(ip.into())
        );
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(
            server_name(None, None, v6).unwrap(),
            ServerName::IpAddress(v6.into())
        );
        // An IP literal given as a name is accepted as an IP.
        assert_eq!(
            server_name(Some("10.0.0.1"), None, ip).unwrap(),
            dns("10.0.0.1")
        );
        let err = server_name(None, Some("bad name!"), ip).unwrap_err();
        assert!(err.to_string().contains(SNI_OVERRIDE), "{err}");
        let err = server_name(Some("bad name!"), None, ip).unwrap_err();
        assert!(err.to_string().contains(DIAL_SERVER_NAME), "{err}");
    }

    #[test]
    fn alpn_validation() {
        assert_eq!(
            alpn_protocols(&["h2".into(), "x".into()], ALPN).unwrap(),
            [b"h2".to_vec(), b"x".to_vec()]
        );
        assert!(alpn_protocols(&[String::new()], ALPN).is_err());
        assert!(alpn_protocols(&["a".repeat(256)], ALPN).is_err());
        assert!(alpn_protocols(&vec!["a".to_owned(); 65], ALPN).is_err());
    }

    #[test]
    fn empty_roots_refused() {
        let err = client_config_with_roots(RootCertStore::empty(), PqMode::Off, &[]).unwrap_err();
        assert!(err.to_string().contains(TRUST_STORE), "{err}");
    }
}
