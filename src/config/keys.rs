//! The key table of spec/CONFIG.md §3: for each of the 29 keys of §3 and the 7 `quic.*` keys of feature `quic` its dotted name, env var, CLI
//! flag (§6), value kind, reload class (§5) and whether its value is sensitive; plus the
//! typed `Value` that every source (file, env, CLI) produces and that is applied to a [`Config`].
//!
//! Sources only produce `(Key, Value)` assignments; precedence and validation live elsewhere.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::units::{format_duration, format_size, parse_duration, parse_size};
use super::{Backend, Config, ConfigError, Congestion, PqMode, TrustStore};

/// How a changed key takes effect on [`ConfigHandle::reload`](super::ConfigHandle::reload).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReloadClass {
    /// Takes effect live: engines read the snapshot per operation (timeouts, limits, rates,
    /// caps, log, TLS client options).
    Live,
    /// Needs the consumer to drain and rebind listeners (bind/UDS address, backend, server TLS).
    Rebind,
}

impl ReloadClass {
    /// `"live"` or `"rebind"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Rebind => "rebind",
        }
    }
}

/// One configuration key of spec/CONFIG.md §3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Key {
    /// `backend`.
    Backend,
    /// `bind_addr`.
    BindAddr,
    /// `max_conns`.
    MaxConns,
    /// `read_timeout`.
    ReadTimeout,
    /// `write_timeout`.
    WriteTimeout,
    /// `idle_timeout`.
    IdleTimeout,
    /// `limits.max_frame_bytes`.
    MaxFrameBytes,
    /// `limits.chunk_bytes`.
    ChunkBytes,
    /// `rates.per_conn_bytes_per_sec`.
    PerConnBps,
    /// `rates.per_peer_bytes_per_sec`.
    PerPeerBps,
    /// `rates.global_egress_bytes_per_sec`.
    GlobalEgressBps,
    /// `rates.global_ingress_bytes_per_sec`.
    GlobalIngressBps,
    /// `per_peer.max_conns`.
    PerPeerMaxConns,
    /// `tls.enabled`.
    TlsEnabled,
    /// `tls.cert_path`.
    TlsCertPath,
    /// `tls.key_path`.
    TlsKeyPath,
    /// `tls_client.trust_store`.
    TlsClientTrustStore,
    /// `tls_client.ca_bundle_path`.
    TlsClientCaBundle,
    /// `tls_client.sni_override`.
    TlsClientSni,
    /// `tls_client.alpn`.
    TlsClientAlpn,
    /// `uds.path`.
    UdsPath,
    /// `uds.allow_uids`.
    UdsAllowUids,
    /// `auth.macaroon_path`.
    MacaroonPath,
    /// `amnesia.enabled`.
    Amnesia,
    /// `pq.mode`.
    PqMode,
    /// `arti.bootstrap_timeout`.
    ArtiBootTimeout,
    /// `arti.pre_dial_delay`.
    ArtiPreDialDelay,
    /// `quic.max_streams`.
    QuicMaxStreams,
    /// `quic.idle_timeout`.
    QuicIdleTimeout,
    /// `quic.keep_alive`.
    QuicKeepAlive,
    /// `quic.zero_rtt`.
    QuicZeroRtt,
    /// `quic.congestion`.
    QuicCongestion,
    /// `quic.gso`.
    QuicGso,
    /// `quic.gro`.
    QuicGro,
    /// `log.format`.
    LogFormat,
    /// `log.level`.
    LogLevel,
}

/// What kind of value a key holds (decides how text and file values parse).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Backend,
    Addr,
    U32,
    Duration,
    Size,
    Bool,
    Path,
    OptString,
    Strings,
    Uids,
    Trust,
    Pq,
    Congestion,
    Text,
}

/// Static metadata of one key.
struct Meta {
    dotted: &'static str,
    env: &'static str,
    flag: Option<&'static str>,
    kind: Kind,
    class: ReloadClass,
    sensitive: bool,
}

const fn meta(
    dotted: &'static str,
    env: &'static str,
    flag: Option<&'static str>,
    kind: Kind,
    class: ReloadClass,
    sensitive: bool,
) -> Meta {
    Meta {
        dotted,
        env,
        flag,
        kind,
        class,
        sensitive,
    }
}

use ReloadClass::{Live, Rebind};

impl Key {
    /// All keys, in spec/CONFIG.md §3 order.
    pub const ALL: [Key; 36] = [
        Key::Backend,
        Key::BindAddr,
        Key::MaxConns,
        Key::ReadTimeout,
        Key::WriteTimeout,
        Key::IdleTimeout,
        Key::MaxFrameBytes,
        Key::ChunkBytes,
        Key::PerConnBps,
        Key::PerPeerBps,
        Key::GlobalEgressBps,
        Key::GlobalIngressBps,
        Key::PerPeerMaxConns,
        Key::TlsEnabled,
        Key::TlsCertPath,
        Key::TlsKeyPath,
        Key::TlsClientTrustStore,
        Key::TlsClientCaBundle,
        Key::TlsClientSni,
        Key::TlsClientAlpn,
        Key::UdsPath,
        Key::UdsAllowUids,
        Key::MacaroonPath,
        Key::Amnesia,
        Key::PqMode,
        Key::ArtiBootTimeout,
        Key::ArtiPreDialDelay,
        Key::QuicMaxStreams,
        Key::QuicIdleTimeout,
        Key::QuicKeepAlive,
        Key::QuicZeroRtt,
        Key::QuicCongestion,
        Key::QuicGso,
        Key::QuicGro,
        Key::LogFormat,
        Key::LogLevel,
    ];

    const fn meta(self) -> Meta {
        match self {
            Key::Backend => meta(
                "backend",
                "RON_TRANSPORT_BACKEND",
                Some("--transport.backend"),
                Kind::Backend,
                Rebind,
                false,
            ),
            Key::BindAddr => meta(
                "bind_addr",
                "RON_TRANSPORT_BIND_ADDR",
                Some("--transport.bind"),
                Kind::Addr,
                Rebind,
                false,
            ),
            Key::MaxConns => meta(
                "max_conns",
                "RON_TRANSPORT_MAX_CONNS",
                Some("--transport.max-conns"),
                Kind::U32,
                Live,
                false,
            ),
            Key::ReadTimeout => meta(
                "read_timeout",
                "RON_TRANSPORT_READ_TIMEOUT",
                Some("--transport.read-timeout"),
                Kind::Duration,
                Live,
                false,
            ),
            Key::WriteTimeout => meta(
                "write_timeout",
                "RON_TRANSPORT_WRITE_TIMEOUT",
                Some("--transport.write-timeout"),
                Kind::Duration,
                Live,
                false,
            ),
            Key::IdleTimeout => meta(
                "idle_timeout",
                "RON_TRANSPORT_IDLE_TIMEOUT",
                Some("--transport.idle-timeout"),
                Kind::Duration,
                Live,
                false,
            ),
            Key::MaxFrameBytes => meta(
                "limits.max_frame_bytes",
                "RON_TRANSPORT_MAX_FRAME_BYTES",
                Some("--transport.max-frame"),
                Kind::Size,
                Live,
                false,
            ),
            Key::ChunkBytes => meta(
                "limits.chunk_bytes",
                "RON_TRANSPORT_CHUNK_BYTES",
                Some("--transport.chunk"),
                Kind::Size,
                Rebind,
                false,
            ),
            Key::PerConnBps => meta(
                "rates.per_conn_bytes_per_sec",
                "RON_TRANSPORT_PER_CONN_BPS",
                Some("--transport.per-conn-bps"),
                Kind::Size,
                Live,
                false,
            ),
            Key::PerPeerBps => meta(
                "rates.per_peer_bytes_per_sec",
                "RON_TRANSPORT_PER_PEER_BPS",
                Some("--transport.per-peer-bps"),
                Kind::Size,
                Live,
                false,
            ),
            Key::GlobalEgressBps => meta(
                "rates.global_egress_bytes_per_sec",
                "RON_TRANSPORT_GLOBAL_EGRESS_BPS",
                Some("--transport.global-egress-bps"),
                Kind::Size,
                Live,
                false,
            ),
            Key::GlobalIngressBps => meta(
                "rates.global_ingress_bytes_per_sec",
                "RON_TRANSPORT_GLOBAL_INGRESS_BPS",
                Some("--transport.global-ingress-bps"),
                Kind::Size,
                Live,
                false,
            ),
            Key::PerPeerMaxConns => meta(
                "per_peer.max_conns",
                "RON_TRANSPORT_PER_PEER_MAX_CONNS",
                Some("--transport.per-peer-max-conns"),
                Kind::U32,
                Live,
                false,
            ),
            Key::TlsEnabled => meta(
                "tls.enabled",
                "RON_TRANSPORT_TLS_ENABLED",
                Some("--transport.tls"),
                Kind::Bool,
                Rebind,
                false,
            ),
            Key::TlsCertPath => meta(
                "tls.cert_path",
                "RON_TRANSPORT_TLS_CERT_PATH",
                Some("--transport.tls-cert"),
                Kind::Path,
                Rebind,
                true,
            ),
            Key::TlsKeyPath => meta(
                "tls.key_path",
                "RON_TRANSPORT_TLS_KEY_PATH",
                Some("--transport.tls-key"),
                Kind::Path,
                Rebind,
                true,
            ),
            Key::TlsClientTrustStore => meta(
                "tls_client.trust_store",
                "RON_TRANSPORT_TLS_CLIENT_TRUST_STORE",
                Some("--transport.tls-client-trust-store"),
                Kind::Trust,
                Live,
                false,
            ),
            Key::TlsClientCaBundle => meta(
                "tls_client.ca_bundle_path",
                "RON_TRANSPORT_TLS_CLIENT_CA_BUNDLE",
                Some("--transport.tls-client-ca-bundle"),
                Kind::Path,
                Live,
                true,
            ),
            Key::TlsClientSni => meta(
                "tls_client.sni_override",
                "RON_TRANSPORT_TLS_CLIENT_SNI",
                Some("--transport.tls-client-sni"),
                Kind::OptString,
                Live,
                true,
            ),
            Key::TlsClientAlpn => meta(
                "tls_client.alpn",
                "RON_TRANSPORT_TLS_CLIENT_ALPN",
                Some("--transport.tls-client-alpn"),
                Kind::Strings,
                Live,
                false,
            ),
            Key::UdsPath => meta(
                "uds.path",
                "RON_TRANSPORT_UDS_PATH",
                Some("--transport.uds"),
                Kind::Path,
                Rebind,
                false,
            ),
            Key::UdsAllowUids => meta(
                "uds.allow_uids",
                "RON_TRANSPORT_UDS_ALLOW_UIDS",
                None,
                Kind::Uids,
                Live,
                false,
            ),
            Key::MacaroonPath => meta(
                "auth.macaroon_path",
                "RON_TRANSPORT_MACAROON_PATH",
                None,
                Kind::Path,
                Live,
                true,
            ),
            Key::Amnesia => meta(
                "amnesia.enabled",
                "RON_TRANSPORT_AMNESIA",
                None,
                Kind::Bool,
                Rebind,
                false,
            ),
            Key::PqMode => meta(
                "pq.mode",
                "RON_TRANSPORT_PQ_MODE",
                Some("--transport.pq"),
                Kind::Pq,
                Rebind,
                false,
            ),
            Key::ArtiBootTimeout => meta(
                "arti.bootstrap_timeout",
                "RON_TRANSPORT_ARTI_BOOT_TIMEOUT",
                Some("--transport.arti-boot-timeout"),
                Kind::Duration,
                Live,
                false,
            ),
            Key::ArtiPreDialDelay => meta(
                "arti.pre_dial_delay",
                "RON_TRANSPORT_ARTI_PRE_DIAL_DELAY",
                Some("--transport.arti-pre-dial-delay"),
                Kind::Duration,
                Live,
                false,
            ),
            Key::QuicMaxStreams => meta(
                "quic.max_streams",
                "RON_TRANSPORT_QUIC_MAX_STREAMS",
                Some("--transport.quic-max-streams"),
                Kind::U32,
                Rebind,
                false,
            ),
            Key::QuicIdleTimeout => meta(
                "quic.idle_timeout",
                "RON_TRANSPORT_QUIC_IDLE_TIMEOUT",
                Some("--transport.quic-idle-timeout"),
                Kind::Duration,
                Rebind,
                false,
            ),
            Key::QuicKeepAlive => meta(
                "quic.keep_alive",
                "RON_TRANSPORT_QUIC_KEEP_ALIVE",
                Some("--transport.quic-keep-alive"),
                Kind::Duration,
                Rebind,
                false,
            ),
            Key::QuicZeroRtt => meta(
                "quic.zero_rtt",
                "RON_TRANSPORT_QUIC_ZERO_RTT",
                Some("--transport.quic-zero-rtt"),
                Kind::Bool,
                Rebind,
                false,
            ),
            Key::QuicCongestion => meta(
                "quic.congestion",
                "RON_TRANSPORT_QUIC_CONGESTION",
                Some("--transport.quic-congestion"),
                Kind::Congestion,
                Rebind,
                false,
            ),
            Key::QuicGso => meta(
                "quic.gso",
                "RON_TRANSPORT_QUIC_GSO",
                Some("--transport.quic-gso"),
                Kind::Bool,
                Rebind,
                false,
            ),
            Key::QuicGro => meta(
                "quic.gro",
                "RON_TRANSPORT_QUIC_GRO",
                Some("--transport.quic-gro"),
                Kind::Bool,
                Rebind,
                false,
            ),
            Key::LogFormat => meta(
                "log.format",
                "RON_TRANSPORT_LOG_FORMAT",
                Some("--transport.log-format"),
                Kind::Text,
                Live,
                false,
            ),
            Key::LogLevel => meta(
                "log.level",
                "RON_TRANSPORT_LOG_LEVEL",
                Some("--transport.log-level"),
                Kind::Text,
                Live,
                false,
            ),
        }
    }

    /// The dotted file key, e.g. `"limits.max_frame_bytes"`.
    pub const fn dotted(self) -> &'static str {
        self.meta().dotted
    }

    /// The environment variable, e.g. `"RON_TRANSPORT_MAX_FRAME_BYTES"`.
    pub const fn env_var(self) -> &'static str {
        self.meta().env
    }

    /// The canonical CLI flag of spec §6 (with leading `--`), if the key has one.
    pub const fn cli_flag(self) -> Option<&'static str> {
        self.meta().flag
    }

    /// How a change of this key takes effect on reload.
    pub const fn reload_class(self) -> ReloadClass {
        self.meta().class
    }

    /// Whether the value must not appear in logs or diffs (paths to secrets, SNI).
    pub const fn is_sensitive(self) -> bool {
        self.meta().sensitive
    }

    pub(crate) const fn kind(self) -> Kind {
        self.meta().kind
    }

    /// The key with this dotted name.
    pub fn from_dotted(dotted: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.dotted() == dotted)
    }

    /// The key read from this environment variable.
    pub fn from_env_var(var: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.env_var() == var)
    }

    /// The current value of this key in `cfg`, formatted the way sources accept it (sizes and
    /// durations with units, lists comma-separated, unset options as `""`).
    pub fn format_value(self, cfg: &Config) -> String {
        Value::get(cfg, self).to_text()
    }
}

/// A typed value for one key, produced by a source and applied to a [`Config`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Backend(Backend),
    Addr(Option<SocketAddr>),
    U32(u32),
    Duration(Duration),
    Size(u64),
    Bool(bool),
    Path(Option<PathBuf>),
    OptString(Option<String>),
    Strings(Vec<String>),
    Uids(Vec<u32>),
    Trust(TrustStore),
    Pq(PqMode),
    Congestion(Congestion),
    Text(String),
}

/// A file value, normalised from TOML or JSON.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FileValue {
    Str(String),
    Int(i128),
    Float,
    Bool(bool),
    Array(Vec<FileValue>),
    Table(Vec<(String, FileValue)>),
    /// TOML datetimes and JSON null: never valid for any key.
    Other(&'static str),
}

impl FileValue {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Self::Str(_) => "a string",
            Self::Int(_) => "an integer",
            Self::Float => "a float",
            Self::Bool(_) => "a boolean",
            Self::Array(_) => "an array",
            Self::Table(_) => "a table",
            Self::Other(name) => name,
        }
    }
}

fn parse_err(name: &str, value: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Parse {
        key: name.to_owned(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Values of sensitive keys are never echoed in errors.
fn shown(key: Key, raw: &str) -> String {
    if key.is_sensitive() {
        "<redacted>".to_owned()
    } else {
        raw.to_owned()
    }
}

pub(crate) fn parse_backend(s: &str) -> Result<Backend, String> {
    match s {
        "tcp" => Ok(Backend::Tcp),
        "tls" => Ok(Backend::Tls),
        "arti" => Ok(Backend::Arti),
        "quic" => Ok(Backend::Quic),
        _ => Err("expected one of tcp, tls, arti, quic".to_owned()),
    }
}

pub(crate) fn parse_congestion(s: &str) -> Result<Congestion, String> {
    match s {
        "cubic" => Ok(Congestion::Cubic),
        "bbr" => Ok(Congestion::Bbr),
        "newreno" => Ok(Congestion::NewReno),
        _ => Err("expected one of cubic, bbr, newreno".to_owned()),
    }
}

pub(crate) fn parse_trust(s: &str) -> Result<TrustStore, String> {
    match s {
        "system" => Ok(TrustStore::System),
        "path" => Ok(TrustStore::Path),
        _ => Err("expected one of system, path".to_owned()),
    }
}

pub(crate) fn parse_pq(s: &str) -> Result<PqMode, String> {
    match s {
        "off" => Ok(PqMode::Off),
        "hybrid" => Ok(PqMode::Hybrid),
        _ => Err("expected one of off, hybrid".to_owned()),
    }
}

pub(crate) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err("expected true, false, 1 or 0".to_owned()),
    }
}

pub(crate) fn parse_u32(s: &str) -> Result<u32, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err("negative values are not allowed".to_owned());
    }
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a whole number".to_owned());
    }
    t.parse::<u32>()
        .map_err(|_| "number does not fit in 32 bits (max 4294967295)".to_owned())
}

pub(crate) fn parse_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| "expected ip:port (e.g. 0.0.0.0:9444 or [::1]:9444)".to_owned())
}

fn csv(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

fn int_to_u32(i: i128) -> Result<u32, String> {
    if i < 0 {
        return Err("negative values are not allowed".to_owned());
    }
    u32::try_from(i).map_err(|_| "number does not fit in 32 bits (max 4294967295)".to_owned())
}

impl Value {
    /// Parses env/CLI text for `key`; errors name `name` (the env var or flag).
    pub(crate) fn from_text(key: Key, raw: &str, name: &str) -> Result<Value, ConfigError> {
        let fail = |reason: String| parse_err(name, shown(key, raw), reason);
        Ok(match key.kind() {
            Kind::Backend => Value::Backend(parse_backend(raw.trim()).map_err(fail)?),
            Kind::Addr => Value::Addr(parse_addr(raw).map_err(fail)?),
            Kind::U32 => Value::U32(parse_u32(raw).map_err(fail)?),
            Kind::Duration => {
                Value::Duration(parse_duration(raw).map_err(|e| fail(e.to_string()))?)
            }
            Kind::Size => Value::Size(parse_size(raw).map_err(|e| fail(e.to_string()))?),
            Kind::Bool => Value::Bool(parse_bool(raw).map_err(fail)?),
            Kind::Path => Value::Path(non_empty(raw).map(PathBuf::from)),
            Kind::OptString => Value::OptString(non_empty(raw).map(str::to_owned)),
            Kind::Strings => Value::Strings(csv(raw).map(str::to_owned).collect()),
            Kind::Uids => Value::Uids(
                csv(raw)
                    .map(parse_u32)
                    .collect::<Result<_, _>>()
                    .map_err(fail)?,
            ),
            Kind::Trust => Value::Trust(parse_trust(raw.trim()).map_err(fail)?),
            Kind::Pq => Value::Pq(parse_pq(raw.trim()).map_err(fail)?),
            Kind::Congestion => Value::Congestion(parse_congestion(raw.trim()).map_err(fail)?),
            Kind::Text => Value::Text(raw.trim().to_owned()),
        })
    }

    /// Converts a file value for `key`; errors name the dotted key.
    pub(crate) fn from_file(key: Key, v: &FileValue) -> Result<Value, ConfigError> {
        let name = key.dotted();
        let mismatch = |expected: &str| {
            parse_err(
                name,
                describe(key, v),
                format!("expected {expected}, found {}", v.type_name()),
            )
        };
        match (key.kind(), v) {
            (Kind::Bool, FileValue::Bool(b)) => Ok(Value::Bool(*b)),
            (Kind::Bool, _) => Err(mismatch("a boolean")),
            (Kind::U32, FileValue::Int(i)) => int_to_u32(*i)
                .map(Value::U32)
                .map_err(|r| parse_err(name, i.to_string(), r)),
            (Kind::U32, FileValue::Str(s)) => Value::from_text(key, s, name),
            (Kind::U32, _) => Err(mismatch("an integer")),
            (Kind::Size, FileValue::Int(i)) => {
                if *i < 0 {
                    Err(parse_err(
                        name,
                        i.to_string(),
                        "negative values are not allowed",
                    ))
                } else {
                    u64::try_from(*i)
                        .map(Value::Size)
                        .map_err(|_| parse_err(name, i.to_string(), "size overflows 64 bits"))
                }
            }
            (Kind::Size, FileValue::Str(s)) => Value::from_text(key, s, name),
            (Kind::Size, _) => Err(mismatch("a size such as \"64KiB\" or an integer")),
            (Kind::Duration, FileValue::Str(s)) => Value::from_text(key, s, name),
            (Kind::Duration, FileValue::Int(0)) => Ok(Value::Duration(Duration::ZERO)),
            (Kind::Duration, _) => Err(mismatch("a duration string such as \"5s\"")),
            (Kind::Strings, FileValue::Array(items)) => items
                .iter()
                .map(|item| match item {
                    FileValue::Str(s) => Ok(s.clone()),
                    other => Err(parse_err(
                        name,
                        describe(key, other),
                        format!(
                            "expected an array of strings, found {} in it",
                            other.type_name()
                        ),
                    )),
                })
                .collect::<Result<_, _>>()
                .map(Value::Strings),
            (Kind::Strings, _) => Err(mismatch("an array of strings")),
            (Kind::Uids, FileValue::Array(items)) => items
                .iter()
                .map(|item| match item {
                    FileValue::Int(i) => {
                        int_to_u32(*i).map_err(|r| parse_err(name, i.to_string(), r))
                    }
                    other => Err(parse_err(
                        name,
                        describe(key, other),
                        format!(
                            "expected an array of integers, found {} in it",
                            other.type_name()
                        ),
                    )),
                })
                .collect::<Result<_, _>>()
                .map(Value::Uids),
            (Kind::Uids, _) => Err(mismatch("an array of integers")),
            (_, FileValue::Str(s)) => Value::from_text(key, s, name),
            (_, _) => Err(mismatch("a string")),
        }
    }

    /// The value of `key` in `cfg`.
    pub(crate) fn get(cfg: &Config, key: Key) -> Value {
        match key {
            Key::Backend => Value::Backend(cfg.backend),
            Key::BindAddr => Value::Addr(cfg.bind_addr),
            Key::MaxConns => Value::U32(cfg.max_conns),
            Key::ReadTimeout => Value::Duration(cfg.read_timeout),
            Key::WriteTimeout => Value::Duration(cfg.write_timeout),
            Key::IdleTimeout => Value::Duration(cfg.idle_timeout),
            Key::MaxFrameBytes => Value::Size(cfg.max_frame_bytes),
            Key::ChunkBytes => Value::Size(cfg.chunk_bytes),
            Key::PerConnBps => Value::Size(cfg.per_conn_bytes_per_sec),
            Key::PerPeerBps => Value::Size(cfg.per_peer_bytes_per_sec),
            Key::GlobalEgressBps => Value::Size(cfg.global_egress_bytes_per_sec),
            Key::GlobalIngressBps => Value::Size(cfg.global_ingress_bytes_per_sec),
            Key::PerPeerMaxConns => Value::U32(cfg.per_peer_max_conns),
            Key::TlsEnabled => Value::Bool(cfg.tls_enabled),
            Key::TlsCertPath => Value::Path(cfg.tls_cert_path.clone()),
            Key::TlsKeyPath => Value::Path(cfg.tls_key_path.clone()),
            Key::TlsClientTrustStore => Value::Trust(cfg.tls_client_trust_store),
            Key::TlsClientCaBundle => Value::Path(cfg.tls_client_ca_bundle.clone()),
            Key::TlsClientSni => Value::OptString(cfg.tls_client_sni.clone()),
            Key::TlsClientAlpn => Value::Strings(cfg.tls_client_alpn.clone()),
            Key::UdsPath => Value::Path(cfg.uds_path.clone()),
            Key::UdsAllowUids => Value::Uids(cfg.uds_allow_uids.clone()),
            Key::MacaroonPath => Value::Path(cfg.macaroon_path.clone()),
            Key::Amnesia => Value::Bool(cfg.amnesia),
            Key::PqMode => Value::Pq(cfg.pq_mode),
            Key::ArtiBootTimeout => Value::Duration(cfg.arti_bootstrap_timeout),
            Key::ArtiPreDialDelay => Value::Duration(cfg.arti_pre_dial_delay),
            Key::QuicMaxStreams => Value::U32(cfg.quic_max_streams),
            Key::QuicIdleTimeout => Value::Duration(cfg.quic_idle_timeout),
            Key::QuicKeepAlive => Value::Duration(cfg.quic_keep_alive),
            Key::QuicZeroRtt => Value::Bool(cfg.quic_zero_rtt),
            Key::QuicCongestion => Value::Congestion(cfg.quic_congestion),
            Key::QuicGso => Value::Bool(cfg.quic_gso),
            Key::QuicGro => Value::Bool(cfg.quic_gro),
            Key::LogFormat => Value::Text(cfg.log_format.clone()),
            Key::LogLevel => Value::Text(cfg.log_level.clone()),
        }
    }

    /// Stores this value into `key` of `cfg`. A value of the wrong kind is a programming error
    /// inside this module (sources build values from `key.kind()`), so it is ignored in release
    /// builds and asserted in debug builds.
    pub(crate) fn set(self, cfg: &mut Config, key: Key) {
        match (key, self) {
            (Key::Backend, Value::Backend(v)) => cfg.backend = v,
            (Key::BindAddr, Value::Addr(v)) => cfg.bind_addr = v,
            (Key::MaxConns, Value::U32(v)) => cfg.max_conns = v,
            (Key::ReadTimeout, Value::Duration(v)) => cfg.read_timeout = v,
            (Key::WriteTimeout, Value::Duration(v)) => cfg.write_timeout = v,
            (Key::IdleTimeout, Value::Duration(v)) => cfg.idle_timeout = v,
            (Key::MaxFrameBytes, Value::Size(v)) => cfg.max_frame_bytes = v,
            (Key::ChunkBytes, Value::Size(v)) => cfg.chunk_bytes = v,
            (Key::PerConnBps, Value::Size(v)) => cfg.per_conn_bytes_per_sec = v,
            (Key::PerPeerBps, Value::Size(v)) => cfg.per_peer_bytes_per_sec = v,
            (Key::GlobalEgressBps, Value::Size(v)) => cfg.global_egress_bytes_per_sec = v,
            (Key::GlobalIngressBps, Value::Size(v)) => cfg.global_ingress_bytes_per_sec = v,
            (Key::PerPeerMaxConns, Value::U32(v)) => cfg.per_peer_max_conns = v,
            (Key::TlsEnabled, Value::Bool(v)) => cfg.tls_enabled = v,
            (Key::TlsCertPath, Value::Path(v)) => cfg.tls_cert_path = v,
            (Key::TlsKeyPath, Value::Path(v)) => cfg.tls_key_path = v,
            (Key::TlsClientTrustStore, Value::Trust(v)) => cfg.tls_client_trust_store = v,
            (Key::TlsClientCaBundle, Value::Path(v)) => cfg.tls_client_ca_bundle = v,
            (Key::TlsClientSni, Value::OptString(v)) => cfg.tls_client_sni = v,
            (Key::TlsClientAlpn, Value::Strings(v)) => cfg.tls_client_alpn = v,
            (Key::UdsPath, Value::Path(v)) => cfg.uds_path = v,
            (Key::UdsAllowUids, Value::Uids(v)) => cfg.uds_allow_uids = v,
            (Key::MacaroonPath, Value::Path(v)) => cfg.macaroon_path = v,
            (Key::Amnesia, Value::Bool(v)) => cfg.amnesia = v,
            (Key::PqMode, Value::Pq(v)) => cfg.pq_mode = v,
            (Key::ArtiBootTimeout, Value::Duration(v)) => cfg.arti_bootstrap_timeout = v,
            (Key::ArtiPreDialDelay, Value::Duration(v)) => cfg.arti_pre_dial_delay = v,
            (Key::QuicMaxStreams, Value::U32(v)) => cfg.quic_max_streams = v,
            (Key::QuicIdleTimeout, Value::Duration(v)) => cfg.quic_idle_timeout = v,
            (Key::QuicKeepAlive, Value::Duration(v)) => cfg.quic_keep_alive = v,
            (Key::QuicZeroRtt, Value::Bool(v)) => cfg.quic_zero_rtt = v,
            (Key::QuicCongestion, Value::Congestion(v)) => cfg.quic_congestion = v,
            (Key::QuicGso, Value::Bool(v)) => cfg.quic_gso = v,
            (Key::QuicGro, Value::Bool(v)) => cfg.quic_gro = v,
            (Key::LogFormat, Value::Text(v)) => cfg.log_format = v,
            (Key::LogLevel, Value::Text(v)) => cfg.log_level = v,
            (key, value) => debug_assert!(false, "value {value:?} has the wrong kind for {key:?}"),
        }
    }

    /// The text form sources accept (and that [`Value::from_text`] reads back).
    pub(crate) fn to_text(&self) -> String {
        match self {
            Value::Backend(b) => b.as_str().to_owned(),
            Value::Addr(a) => a.map(|a| a.to_string()).unwrap_or_default(),
            Value::U32(n) => n.to_string(),
            Value::Duration(d) => format_duration(*d),
            Value::Size(n) => format_size(*n),
            Value::Bool(b) => b.to_string(),
            Value::Path(p) => p
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Value::OptString(s) => s.clone().unwrap_or_default(),
            Value::Strings(v) => v.join(","),
            Value::Uids(v) => v.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
            Value::Trust(t) => trust_str(*t).to_owned(),
            Value::Pq(p) => pq_str(*p).to_owned(),
            Value::Congestion(c) => c.as_str().to_owned(),
            Value::Text(s) => s.clone(),
        }
    }

    /// The TOML form of this value for a config document.
    pub(crate) fn to_toml(&self) -> toml::Value {
        match self {
            Value::U32(n) => toml::Value::Integer(i64::from(*n)),
            Value::Bool(b) => toml::Value::Boolean(*b),
            Value::Strings(v) => {
                toml::Value::Array(v.iter().cloned().map(toml::Value::String).collect())
            }
            Value::Uids(v) => toml::Value::Array(
                v.iter()
                    .map(|n| toml::Value::Integer(i64::from(*n)))
                    .collect(),
            ),
            other => toml::Value::String(other.to_text()),
        }
    }

    /// The JSON form of this value for a config document.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            Value::U32(n) => serde_json::Value::from(*n),
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Strings(v) => serde_json::Value::from(v.clone()),
            Value::Uids(v) => serde_json::Value::from(v.clone()),
            other => serde_json::Value::String(other.to_text()),
        }
    }
}

/// `"system"` / `"path"`.
pub(crate) const fn trust_str(t: TrustStore) -> &'static str {
    match t {
        TrustStore::System => "system",
        TrustStore::Path => "path",
    }
}

/// `"off"` / `"hybrid"`.
pub(crate) const fn pq_str(p: PqMode) -> &'static str {
    match p {
        PqMode::Off => "off",
        PqMode::Hybrid => "hybrid",
    }
}

fn non_empty(raw: &str) -> Option<&str> {
    let t = raw.trim();
    (!t.is_empty()).then_some(t)
}

/// A short, non-secret rendering of a file value for error messages.
fn describe(key: Key, v: &FileValue) -> String {
    if key.is_sensitive() {
        return "<redacted>".to_owned();
    }
    match v {
        FileValue::Str(s) => s.chars().take(64).collect(),
        FileValue::Int(i) => i.to_string(),
        FileValue::Bool(b) => b.to_string(),
        other => format!("<{}>", other.type_name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, a) in Key::ALL.iter().enumerate() {
            for b in &Key::ALL[i + 1..] {
                assert_ne!(a.dotted(), b.dotted());
                assert_ne!(a.env_var(), b.env_var());
                if a.cli_flag().is_some() {
                    assert_ne!(a.cli_flag(), b.cli_flag());
                }
            }
        }
    }

    #[test]
    fn every_key_round_trips_its_default_through_text() {
        let cfg = Config::default();
        for key in Key::ALL {
            let v = Value::get(&cfg, key);
            let back = Value::from_text(key, &v.to_text(), key.env_var()).expect("re-parse");
            assert_eq!(back, v, "{key:?}");
        }
    }
}
