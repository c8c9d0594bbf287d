//! Configuration (spec/CONFIG.md): the typed schema with defaults, unit parsing, sources and
//! precedence (CLI > env > file > defaults), fail-closed validation, and live reload.
//!
//! "Parse, don't validate": [`Config`] is the raw, mergeable shape; [`ValidConfig`] can only be
//! obtained from [`Config::validate`], and engines only ever see a `ValidConfig` through a
//! [`ConfigHandle`], whose snapshot swaps atomically on [`ConfigHandle::reload`].
//!
//! Layout: [`units`] (sizes, durations), [`keys`] (the key table: dotted name, env var, CLI
//! flag, reload class), `source` (TOML/JSON documents and env vars), `loader` ([`ConfigLoader`]),
//! `validate` (§4 rules, [`CompiledFeatures`]), `reload` ([`ReloadReport`]) and, with feature
//! `cli`, `cli` ([`TransportArgs`]). Engines do not read files or the environment themselves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(feature = "cli")]
mod cli;
pub mod keys;
mod loader;
mod reload;
mod source;
pub mod units;
mod validate;

#[cfg(feature = "cli")]
pub use cli::TransportArgs;
pub use keys::{Key, ReloadClass};
pub use loader::{ConfigLoader, Loaded, Merged};
pub use reload::{KeyChange, ReloadReport};
pub use source::{ConfigWarning, Format, DEPRECATED_MAX_BODY, DEPRECATED_MAX_BODY_ENV, ENV_PREFIX};
pub use units::{format_duration, format_size, parse_duration, parse_size, UnitError};
pub use validate::{
    CompiledFeatures, DECOMPRESSION_GUARD_RATIO, LOG_FORMATS, LOG_LEVELS, MAX_CHUNK_BYTES,
    MAX_FRAME_BYTES, MAX_QUIC_IDLE_TIMEOUT, MAX_QUIC_STREAMS, MIN_CHUNK_BYTES, MIN_FRAME_BYTES,
};

/// Which transport a listener/dialer speaks. The discriminants index per-backend metric
/// handles: keep `Tcp = 0, Tls = 1, Arti = 2, Quic = 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Plain TCP.
    Tcp = 0,
    /// TLS 1.3 over TCP.
    Tls = 1,
    /// Tor via in-process Arti (feature `arti`).
    Arti = 2,
    /// QUIC (TLS 1.3 inside, over UDP; feature `quic`).
    Quic = 3,
}

impl Backend {
    /// The `backend` label value: `"tcp"`, `"tls"`, `"arti"` or `"quic"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Arti => "arti",
            Self::Quic => "quic",
        }
    }

    /// True for the backends whose handshake is TLS 1.3 (`tls`, `quic`): server certificates,
    /// client trust, ALPN, SNI and `pq.mode` apply.
    pub const fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Quic)
    }
}

/// `quic.congestion`: the QUIC congestion controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// CUBIC (RFC 9438), quinn's default.
    #[default]
    Cubic,
    /// BBR (quinn's experimental BBRv1).
    Bbr,
    /// NewReno (RFC 9002).
    NewReno,
}

impl Congestion {
    /// `"cubic"`, `"bbr"` or `"newreno"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cubic => "cubic",
            Self::Bbr => "bbr",
            Self::NewReno => "newreno",
        }
    }
}

impl FromStr for Congestion {
    type Err = ConfigError;
    /// `"cubic"`, `"bbr"` or `"newreno"`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        keys::parse_congestion(s).map_err(|r| enum_parse_error("quic.congestion", s, r))
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

fn enum_parse_error(key: &str, value: &str, reason: String) -> ConfigError {
    ConfigError::Parse {
        key: key.to_owned(),
        value: value.to_owned(),
        reason,
    }
}

impl FromStr for Backend {
    type Err = ConfigError;
    /// `"tcp"`, `"tls"`, `"arti"` or `"quic"`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        keys::parse_backend(s).map_err(|r| enum_parse_error("backend", s, r))
    }
}

impl FromStr for TrustStore {
    type Err = ConfigError;
    /// `"system"` or `"path"`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        keys::parse_trust(s).map_err(|r| enum_parse_error("tls_client.trust_store", s, r))
    }
}

impl FromStr for PqMode {
    type Err = ConfigError;
    /// `"off"` or `"hybrid"`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        keys::parse_pq(s).map_err(|r| enum_parse_error("pq.mode", s, r))
    }
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
    /// A source named a key (file key path or `RON_TRANSPORT_*` variable) that does not exist.
    #[error("unknown key `{key}` ({origin})")]
    UnknownKey {
        /// The key path as written (e.g. `transport.limits.max_frame`) or the env var name.
        key: String,
        /// Where: `file <path>`, `env`, `inline toml`, `inline json`.
        origin: String,
    },
}

impl ConfigError {
    /// The offending key (dotted key, env var or flag name), where the error has one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::Parse { key, .. } | Self::UnknownKey { key, .. } => Some(key),
            Self::File { .. } => None,
        }
    }

    /// A stable reason string: `"invalid"`, `"parse"`, `"file"` or `"unknown_key"`.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid",
            Self::Parse { .. } => "parse",
            Self::File { .. } => "file",
            Self::UnknownKey { .. } => "unknown_key",
        }
    }
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
    /// `quic.max_streams`: concurrent bidirectional streams a peer may open per connection.
    pub quic_max_streams: u32,
    /// `quic.idle_timeout`: the QUIC transport's idle timeout (`max_idle_timeout`).
    pub quic_idle_timeout: Duration,
    /// `quic.keep_alive`: PING interval keeping an idle QUIC connection open (0 disables).
    pub quic_keep_alive: Duration,
    /// `quic.zero_rtt`: accept/send 0-RTT data (off by default: not replay-safe).
    pub quic_zero_rtt: bool,
    /// `quic.congestion`.
    pub quic_congestion: Congestion,
    /// `quic.gso`: UDP generic segmentation offload on send.
    pub quic_gso: bool,
    /// `quic.gro`: UDP generic receive offload.
    pub quic_gro: bool,
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
            quic_max_streams: 512,
            quic_idle_timeout: Duration::from_secs(30),
            quic_keep_alive: Duration::ZERO,
            quic_zero_rtt: false,
            quic_congestion: Congestion::Cubic,
            quic_gso: true,
            quic_gro: true,
            log_format: "json".to_owned(),
            log_level: "info".to_owned(),
        }
    }
}

impl Config {
    /// Applies every rule of spec/CONFIG.md §4 (fail-closed) against this build's features.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        self.validate_for(&CompiledFeatures::current())
    }

    /// Applies every rule of spec/CONFIG.md §4 as if the build had `features`.
    ///
    /// `tls.enabled = true` with `backend = "tcp"` means TLS on the TCP listener: the
    /// validated config's backend is `tls`.
    pub fn validate_for(mut self, features: &CompiledFeatures) -> Result<ValidConfig, ConfigError> {
        validate::check(&self, features)?;
        validate::normalize(&mut self);
        Ok(ValidConfig(self))
    }

    /// Parses a TOML document (bare, or wrapped in `[transport]`) over the defaults.
    /// Deprecation warnings are logged; use [`ConfigLoader`] to get them back.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        ConfigLoader::new().toml_str(text).merge().map(|m| m.config)
    }

    /// Parses a JSON document (bare, or wrapped in `{"transport": …}`) over the defaults.
    pub fn from_json_str(text: &str) -> Result<Config, ConfigError> {
        ConfigLoader::new().json_str(text).merge().map(|m| m.config)
    }

    /// Every key's value converted by `conv`, as `(section, field, value)` in key order
    /// (`section` is `None` for top-level keys): the common walk of the document writers.
    fn sections<V>(
        &self,
        conv: impl Fn(keys::Value) -> V,
    ) -> Vec<(Option<&'static str>, &'static str, V)> {
        Key::ALL
            .into_iter()
            .map(|key| {
                let value = conv(keys::Value::get(self, key));
                match key.dotted().split_once('.') {
                    None => (None, key.dotted(), value),
                    Some((section, field)) => (Some(section), field, value),
                }
            })
            .collect()
    }

    /// A complete, bare TOML document with every key (sizes and durations with units, unset
    /// options as `""`); [`Config::from_toml_str`] reads it back to an equal `Config`.
    pub fn to_toml_string(&self) -> String {
        let mut root = toml::Table::new();
        for (section, field, value) in self.sections(|v| v.to_toml()) {
            let table = match section {
                None => &mut root,
                Some(s) => match root
                    .entry(s.to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                {
                    toml::Value::Table(t) => t,
                    _ => continue,
                },
            };
            table.insert(field.to_owned(), value);
        }
        // A table of strings, integers, booleans and homogeneous arrays always serializes.
        toml::to_string(&root).expect("config tables serialize to TOML")
    }

    /// A complete, bare JSON document with every key; [`Config::from_json_str`] reads it back.
    pub fn to_json_string(&self) -> String {
        let mut root = serde_json::Map::new();
        for (section, field, value) in self.sections(|v| v.to_json()) {
            let map = match section {
                None => &mut root,
                Some(s) => match root
                    .entry(s.to_owned())
                    .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()))
                {
                    serde_json::Value::Object(m) => m,
                    _ => continue,
                },
            };
            map.insert(field.to_owned(), value);
        }
        serde_json::Value::Object(root).to_string()
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
    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.0
    }

    /// True if any byte-rate limit is set (per connection, per peer, global ingress or
    /// egress); with none, engines skip every bucket and the clock reads pacing needs.
    pub fn has_byte_rates(&self) -> bool {
        self.per_conn_bytes_per_sec
            | self.per_peer_bytes_per_sec
            | self.global_ingress_bytes_per_sec
            | self.global_egress_bytes_per_sec
            != 0
    }

    /// Back to a raw [`Config`] (e.g. to modify it and [`ConfigHandle::reload`]).
    pub fn into_inner(self) -> Config {
        self.0
    }

    /// The defaults, validated (a convenience for tests and examples).
    pub fn defaults() -> Self {
        Config::default()
            .validate()
            .expect("the built-in defaults are valid")
    }
}

/// A shared, atomically swappable snapshot of the validated configuration.
///
/// Readers call [`ConfigHandle::load`] per operation (lock-free). [`ConfigHandle::reload`]
/// validates a candidate and, only on success, swaps it in, bumps [`ConfigHandle::generation`]
/// and notifies [`ConfigHandle::subscribe`] receivers. Reloads are serialised by a mutex that is
/// never held across an `.await`.
#[derive(Clone, Debug)]
pub struct ConfigHandle {
    current: Arc<arc_swap::ArcSwap<ValidConfig>>,
    shared: Arc<Shared>,
}

struct Shared {
    generation: AtomicU64,
    reload_lock: Mutex<()>,
    notify: tokio::sync::watch::Sender<Arc<ValidConfig>>,
    /// Called synchronously after every swap (engines re-arm open connections from here).
    hooks: Mutex<Vec<(u64, ChangeFn)>>,
    next_hook: AtomicU64,
}

type ChangeFn = Arc<dyn Fn(&Arc<ValidConfig>) + Send + Sync>;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A registration made with [`ConfigHandle::on_change`]; dropping it unregisters the hook.
#[must_use = "dropping the registration unregisters the hook"]
pub struct ChangeHook {
    shared: std::sync::Weak<Shared>,
    id: u64,
}

impl std::fmt::Debug for ChangeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeHook").field("id", &self.id).finish()
    }
}

impl Drop for ChangeHook {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared
                .hooks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(id, _)| *id != self.id);
        }
    }
}

impl ConfigHandle {
    /// A handle starting at `initial`, generation 0.
    pub fn new(initial: ValidConfig) -> Self {
        let initial = Arc::new(initial);
        let (notify, _) = tokio::sync::watch::channel(Arc::clone(&initial));
        Self {
            current: Arc::new(arc_swap::ArcSwap::new(initial)),
            shared: Arc::new(Shared {
                generation: AtomicU64::new(0),
                reload_lock: Mutex::new(()),
                notify,
                hooks: Mutex::new(Vec::new()),
                next_hook: AtomicU64::new(1),
            }),
        }
    }

    /// The current snapshot (lock-free; cheap).
    pub fn load(&self) -> Arc<ValidConfig> {
        self.current.load_full()
    }

    /// How many successful swaps this handle has seen (0 at creation; monotonic).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// A receiver that sees every swapped-in snapshot (e.g. to retune token buckets).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<ValidConfig>> {
        self.shared.notify.subscribe()
    }

    /// Calls `hook` with every snapshot swapped in from now on, synchronously on the reloading
    /// thread right after the swap (before `reload` returns), until the returned
    /// [`ChangeHook`] is dropped. Hooks must be quick and must not block or reload: engines use
    /// them to tell open connections to re-read their deadlines.
    pub fn on_change(
        &self,
        hook: impl Fn(&Arc<ValidConfig>) + Send + Sync + 'static,
    ) -> ChangeHook {
        let id = self.shared.next_hook.fetch_add(1, Ordering::Relaxed);
        self.shared
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, Arc::new(hook)));
        ChangeHook {
            shared: Arc::downgrade(&self.shared),
            id,
        }
    }

    /// Validates `next` against this build's features and, on success, swaps it in. On failure
    /// the previous snapshot stays current and the error (naming the key) is logged and
    /// returned. A candidate equal to the current snapshot is a no-op (no generation bump).
    pub fn reload(&self, next: Config) -> Result<ReloadReport, ConfigError> {
        self.reload_for(next, &CompiledFeatures::current())
    }

    /// [`ConfigHandle::reload`] run on a loader thread ([`crate::blocking`]): validation reads
    /// the certificate, key and CA files a candidate names, which must not block an async
    /// worker or a shard (spec/CONCURRENCY.md §1). Use this from async code (a SIGHUP task).
    pub async fn reload_async(&self, next: Config) -> Result<ReloadReport, ConfigError> {
        let handle = self.clone();
        crate::blocking::run("config reload", move || handle.reload(next))
            .await
            .unwrap_or_else(|e| {
                Err(ConfigError::Invalid {
                    key: "config",
                    reason: e.to_string(),
                })
            })
    }

    /// [`ConfigHandle::reload`] validating against `features`.
    pub fn reload_for(
        &self,
        next: Config,
        features: &CompiledFeatures,
    ) -> Result<ReloadReport, ConfigError> {
        let valid = match next.validate_for(features) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(
                    key = e.key().unwrap_or(""),
                    kind = e.kind(),
                    error = %e,
                    generation = self.generation(),
                    "transport config reload rejected; keeping the previous configuration"
                );
                return Err(e);
            }
        };
        // The lock only orders swaps with generation bumps; nothing inside can panic while
        // holding it except allocation failure, so a poisoned lock is still usable.
        let _guard = self
            .shared
            .reload_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        let changed = reload::diff(&old, &valid);
        if changed.is_empty() {
            return Ok(ReloadReport {
                generation: self.generation(),
                changed,
            });
        }
        let valid = Arc::new(valid);
        self.current.store(Arc::clone(&valid));
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.notify.send_replace(Arc::clone(&valid));
        let hooks: Vec<ChangeFn> = self
            .shared
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, h)| Arc::clone(h))
            .collect();
        for hook in hooks {
            hook(&valid);
        }
        let report = ReloadReport {
            generation,
            changed,
        };
        tracing::info!(
            generation,
            needs_rebind = report.needs_rebind(),
            live = ?report.live_keys(),
            rebind = ?report.rebind_keys(),
            diff = %report,
            "transport config reloaded"
        );
        Ok(report)
    }
}
