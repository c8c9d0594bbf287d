//! Configuration (spec/CONFIG.md): the typed schema with defaults, unit parsing, sources and
//! precedence (CLI > env > file > defaults), fail-closed validation, and live reload.
//!
//! "Parse, don't validate": [`Config`] is the raw, mergeable shape; [`ValidConfig`] can only be
//! obtained from [`Config::validate`], and engines only ever see a `ValidConfig` through a
//! [`ConfigHandle`], whose snapshot swaps atomically on [`ConfigHandle::reload`].
//!
//! NOTE(skeleton): the helper that owns `src/config/` replaces the `todo!()`s; the public shapes
//! below are the contract the engines are written against.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Which transport a listener/dialer speaks. The discriminants index per-backend metric
/// handles: keep `Tcp = 0, Tls = 1, Arti = 2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Plain TCP.
    Tcp = 0,
    /// TLS 1.3 over TCP.
    Tls = 1,
    /// Tor via in-process Arti (feature `arti`).
    Arti = 2,
}

impl Backend {
    /// The `backend` label value: `"tcp"`, `"tls"` or `"arti"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Arti => "arti",
        }
    }
}

/// Dialer trust source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustStore {
    /// The operating system's store.
    #[default]
    System,
    /// A PEM bundle at `tls_client.ca_bundle_path`.
    Path,
}

/// Post-quantum key-exchange posture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PqMode {
    /// Classical groups only.
    #[default]
    Off,
    /// X25519MLKEM768 offered first, classical fallback.
    Hybrid,
}

/// A structured configuration error naming the offending key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value failed a validation rule of spec/CONFIG.md §4.
    #[error("invalid `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `limits.max_frame_bytes`.
        key: &'static str,
        /// What rule it broke.
        reason: String,
    },
    /// A value could not be parsed (unit, enum, number, address).
    #[error("cannot parse `{key}` from {value:?}: {reason}")]
    Parse {
        /// Dotted key (or env var / flag name).
        key: String,
        /// The offending text (never a secret).
        value: String,
        /// Why.
        reason: String,
    },
    /// A config file could not be read or decoded.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why; for decode errors this names the key path where known.
        reason: String,
    },
}

/// The full configuration (spec/CONFIG.md §3). Every field has the documented default.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// `backend`.
    pub backend: Backend,
    /// `bind_addr` (None = dialer-only).
    pub bind_addr: Option<SocketAddr>,
    /// `max_conns`.
    pub max_conns: u32,
    /// `read_timeout`.
    pub read_timeout: Duration,
    /// `write_timeout`.
    pub write_timeout: Duration,
    /// `idle_timeout`.
    pub idle_timeout: Duration,
    /// `limits.max_frame_bytes`.
    pub max_frame_bytes: u64,
    /// `limits.chunk_bytes`.
    pub chunk_bytes: u64,
    /// `rates.per_conn_bytes_per_sec` (0 disables).
    pub per_conn_bytes_per_sec: u64,
    /// `rates.per_peer_bytes_per_sec` (0 disables).
    pub per_peer_bytes_per_sec: u64,
    /// `rates.global_egress_bytes_per_sec` (0 disables).
    pub global_egress_bytes_per_sec: u64,
    /// `rates.global_ingress_bytes_per_sec` (0 disables).
    pub global_ingress_bytes_per_sec: u64,
    /// `per_peer.max_conns` (0 disables).
    pub per_peer_max_conns: u32,
    /// `tls.enabled`.
    pub tls_enabled: bool,
    /// `tls.cert_path`.
    pub tls_cert_path: Option<PathBuf>,
    /// `tls.key_path`.
    pub tls_key_path: Option<PathBuf>,
    /// `tls_client.trust_store`.
    pub tls_client_trust_store: TrustStore,
    /// `tls_client.ca_bundle_path`.
    pub tls_client_ca_bundle: Option<PathBuf>,
    /// `tls_client.sni_override`.
    pub tls_client_sni: Option<String>,
    /// `tls_client.alpn`.
    pub tls_client_alpn: Vec<String>,
    /// `uds.path`.
    pub uds_path: Option<PathBuf>,
    /// `uds.allow_uids`.
    pub uds_allow_uids: Vec<u32>,
    /// `auth.macaroon_path`.
    pub macaroon_path: Option<PathBuf>,
    /// `amnesia.enabled`.
    pub amnesia: bool,
    /// `pq.mode`.
    pub pq_mode: PqMode,
    /// `arti.bootstrap_timeout`.
    pub arti_bootstrap_timeout: Duration,
    /// `arti.pre_dial_delay`.
    pub arti_pre_dial_delay: Duration,
    /// `log.format` (`"json"` | `"text"`).
    pub log_format: String,
    /// `log.level` (`"trace"` … `"error"`).
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backend: Backend::Tcp,
            bind_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            max_conns: 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_frame_bytes: 1024 * 1024,
            chunk_bytes: 64 * 1024,
            per_conn_bytes_per_sec: 0,
            per_peer_bytes_per_sec: 0,
            global_egress_bytes_per_sec: 0,
            global_ingress_bytes_per_sec: 0,
            per_peer_max_conns: 0,
            tls_enabled: false,
            tls_cert_path: None,
            tls_key_path: None,
            tls_client_trust_store: TrustStore::System,
            tls_client_ca_bundle: None,
            tls_client_sni: None,
            tls_client_alpn: Vec::new(),
            uds_path: None,
            uds_allow_uids: Vec::new(),
            macaroon_path: None,
            amnesia: false,
            pq_mode: PqMode::Off,
            arti_bootstrap_timeout: Duration::from_secs(30),
            arti_pre_dial_delay: Duration::ZERO,
            log_format: "json".to_owned(),
            log_level: "info".to_owned(),
        }
    }
}

impl Config {
    /// Applies every rule of spec/CONFIG.md §4 (fail-closed).
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        // Skeleton: accepts everything; the config helper implements §4.
        Ok(ValidConfig(self))
    }
}

/// A configuration that passed [`Config::validate`]. Derefs to [`Config`].
#[derive(Clone, Debug, PartialEq)]
pub struct ValidConfig(Config);

impl std::ops::Deref for ValidConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.0
    }
}

impl ValidConfig {
    /// The defaults, validated (a convenience for tests and examples).
    pub fn defaults() -> Self {
        Config::default()
            .validate()
            .expect("the built-in defaults are valid")
    }
}

/// A shared, atomically swappable snapshot of the validated configuration.
#[derive(Clone, Debug)]
pub struct ConfigHandle {
    current: Arc<arc_swap::ArcSwap<ValidConfig>>,
}

impl ConfigHandle {
    /// A handle starting at `initial`.
    pub fn new(initial: ValidConfig) -> Self {
        Self {
            current: Arc::new(arc_swap::ArcSwap::from_pointee(initial)),
        }
    }

    /// The current snapshot (lock-free; cheap).
    pub fn load(&self) -> Arc<ValidConfig> {
        self.current.load_full()
    }
}
