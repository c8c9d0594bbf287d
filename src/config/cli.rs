//! The canonical `--transport.*` flags of spec/CONFIG.md §6 (feature `cli`), as a
//! `clap::Args` struct that consumer binaries flatten into their own parser:
//!
//! ```ignore
//! #[derive(clap::Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     transport: ron_transport::config::TransportArgs,
//! }
//! ```
//!
//! Values are parsed by the same unit/enum parsers as files and env. The flags are applied on
//! top of env and file by [`ConfigLoader::cli`](super::ConfigLoader::cli); this module does
//! not read any other source.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::keys::{parse_backend, parse_bool, parse_congestion, parse_pq, parse_trust, Key, Value};
use super::units::{parse_duration, parse_size};
use super::{Backend, Congestion, PqMode, TrustStore};

/// The `--transport.*` flags. Every field is optional; an absent flag leaves the key to the
/// lower-precedence sources.
#[derive(Clone, Debug, Default, PartialEq, clap::Args)]
#[non_exhaustive]
pub struct TransportArgs {
    /// Load a TOML or JSON config file (`--transport.config <path>`).
    #[arg(long = "transport.config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// `backend`: tcp | tls | arti | quic.
    #[arg(long = "transport.backend", value_name = "tcp|tls|arti|quic", value_parser = parse_backend)]
    pub backend: Option<Backend>,
    /// `bind_addr` (mutually exclusive with `--transport.uds`).
    #[arg(
        long = "transport.bind",
        value_name = "IP:PORT",
        conflicts_with = "uds"
    )]
    pub bind: Option<SocketAddr>,
    /// `max_conns`.
    #[arg(long = "transport.max-conns", value_name = "NUM")]
    pub max_conns: Option<u32>,
    /// `read_timeout`, e.g. `5s`.
    #[arg(long = "transport.read-timeout", value_name = "DUR", value_parser = parse_duration)]
    pub read_timeout: Option<Duration>,
    /// `write_timeout`, e.g. `5s`.
    #[arg(long = "transport.write-timeout", value_name = "DUR", value_parser = parse_duration)]
    pub write_timeout: Option<Duration>,
    /// `idle_timeout`, e.g. `60s`.
    #[arg(long = "transport.idle-timeout", value_name = "DUR", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Sets `tls.enabled = true`.
    #[arg(long = "transport.tls")]
    pub tls: bool,
    /// `tls.cert_path`.
    #[arg(long = "transport.tls-cert", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// `tls.key_path`.
    #[arg(long = "transport.tls-key", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// `tls_client.trust_store`: system | path.
    #[arg(long = "transport.tls-client-trust-store", value_name = "system|path", value_parser = parse_trust)]
    pub tls_client_trust_store: Option<TrustStore>,
    /// `tls_client.ca_bundle_path`.
    #[arg(long = "transport.tls-client-ca-bundle", value_name = "PATH")]
    pub tls_client_ca_bundle: Option<PathBuf>,
    /// `tls_client.sni_override`.
    #[arg(long = "transport.tls-client-sni", value_name = "STR")]
    pub tls_client_sni: Option<String>,
    /// `tls_client.alpn`, comma-separated (e.g. `h2,http/1.1`).
    #[arg(
        long = "transport.tls-client-alpn",
        value_name = "CSV",
        value_delimiter = ','
    )]
    pub tls_client_alpn: Option<Vec<String>>,
    /// `uds.path` (mutually exclusive with `--transport.bind`).
    #[arg(long = "transport.uds", value_name = "PATH")]
    pub uds: Option<PathBuf>,
    /// `limits.max_frame_bytes`, e.g. `1MiB` (cannot exceed 1MiB).
    #[arg(long = "transport.max-frame", value_name = "SIZE", value_parser = parse_size)]
    pub max_frame: Option<u64>,
    /// `limits.chunk_bytes`, e.g. `64KiB` (≤ max-frame).
    #[arg(long = "transport.chunk", value_name = "SIZE", value_parser = parse_size)]
    pub chunk: Option<u64>,
    /// `rates.per_conn_bytes_per_sec` (0 disables).
    #[arg(long = "transport.per-conn-bps", value_name = "BYTES/SEC", value_parser = parse_size)]
    pub per_conn_bps: Option<u64>,
    /// `rates.per_peer_bytes_per_sec` (0 disables).
    #[arg(long = "transport.per-peer-bps", value_name = "BYTES/SEC", value_parser = parse_size)]
    pub per_peer_bps: Option<u64>,
    /// `rates.global_egress_bytes_per_sec` (0 disables).
    #[arg(long = "transport.global-egress-bps", value_name = "BYTES/SEC", value_parser = parse_size)]
    pub global_egress_bps: Option<u64>,
    /// `rates.global_ingress_bytes_per_sec` (0 disables).
    #[arg(long = "transport.global-ingress-bps", value_name = "BYTES/SEC", value_parser = parse_size)]
    pub global_ingress_bps: Option<u64>,
    /// `per_peer.max_conns` (0 disables).
    #[arg(long = "transport.per-peer-max-conns", value_name = "NUM")]
    pub per_peer_max_conns: Option<u32>,
    /// `pq.mode`: off | hybrid.
    #[arg(long = "transport.pq", value_name = "off|hybrid", value_parser = parse_pq)]
    pub pq: Option<PqMode>,
    /// `arti.bootstrap_timeout`.
    #[arg(long = "transport.arti-boot-timeout", value_name = "DUR", value_parser = parse_duration)]
    pub arti_boot_timeout: Option<Duration>,
    /// `arti.pre_dial_delay`.
    #[arg(long = "transport.arti-pre-dial-delay", value_name = "DUR", value_parser = parse_duration)]
    pub arti_pre_dial_delay: Option<Duration>,
    /// `quic.max_streams`.
    #[arg(long = "transport.quic-max-streams", value_name = "NUM")]
    pub quic_max_streams: Option<u32>,
    /// `quic.idle_timeout`.
    #[arg(long = "transport.quic-idle-timeout", value_name = "DUR", value_parser = parse_duration)]
    pub quic_idle_timeout: Option<Duration>,
    /// `quic.keep_alive` (0s disables).
    #[arg(long = "transport.quic-keep-alive", value_name = "DUR", value_parser = parse_duration)]
    pub quic_keep_alive: Option<Duration>,
    /// `quic.zero_rtt`: true | false.
    #[arg(long = "transport.quic-zero-rtt", value_name = "BOOL", value_parser = parse_bool)]
    pub quic_zero_rtt: Option<bool>,
    /// `quic.congestion`: cubic | bbr | newreno.
    #[arg(long = "transport.quic-congestion", value_name = "cubic|bbr|newreno", value_parser = parse_congestion)]
    pub quic_congestion: Option<Congestion>,
    /// `quic.gso`: true | false.
    #[arg(long = "transport.quic-gso", value_name = "BOOL", value_parser = parse_bool)]
    pub quic_gso: Option<bool>,
    /// `quic.gro`: true | false.
    #[arg(long = "transport.quic-gro", value_name = "BOOL", value_parser = parse_bool)]
    pub quic_gro: Option<bool>,
    /// `log.format`: json | text.
    #[arg(long = "transport.log-format", value_name = "json|text", value_parser = ["json", "text"])]
    pub log_format: Option<String>,
    /// `log.level`: trace | debug | info | warn | error.
    #[arg(
        long = "transport.log-level",
        value_name = "LEVEL",
        value_parser = ["trace", "debug", "info", "warn", "error"]
    )]
    pub log_level: Option<String>,
}

fn path_value(p: &std::path::Path) -> Value {
    Value::Path((!p.as_os_str().is_empty()).then(|| p.to_path_buf()))
}

impl TransportArgs {
    /// The `(key, value)` assignments these flags make.
    pub(crate) fn assignments(&self) -> Vec<(Key, Value)> {
        let mut out = Vec::new();
        let mut put = |key: Key, v: Option<Value>| {
            if let Some(v) = v {
                out.push((key, v));
            }
        };
        put(Key::Backend, self.backend.map(Value::Backend));
        put(Key::BindAddr, self.bind.map(|a| Value::Addr(Some(a))));
        put(Key::MaxConns, self.max_conns.map(Value::U32));
        put(Key::ReadTimeout, self.read_timeout.map(Value::Duration));
        put(Key::WriteTimeout, self.write_timeout.map(Value::Duration));
        put(Key::IdleTimeout, self.idle_timeout.map(Value::Duration));
        put(Key::TlsEnabled, self.tls.then_some(Value::Bool(true)));
        put(Key::TlsCertPath, self.tls_cert.as_deref().map(path_value));
        put(Key::TlsKeyPath, self.tls_key.as_deref().map(path_value));
        put(
            Key::TlsClientTrustStore,
            self.tls_client_trust_store.map(Value::Trust),
        );
        put(
            Key::TlsClientCaBundle,
            self.tls_client_ca_bundle.as_deref().map(path_value),
        );
        put(
            Key::TlsClientSni,
            self.tls_client_sni
                .as_ref()
                .map(|s| Value::OptString((!s.trim().is_empty()).then(|| s.trim().to_owned()))),
        );
        put(
            Key::TlsClientAlpn,
            self.tls_client_alpn.as_ref().map(|v| {
                Value::Strings(
                    v.iter()
                        .map(|s| s.trim())
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            }),
        );
        put(Key::UdsPath, self.uds.as_deref().map(path_value));
        put(Key::MaxFrameBytes, self.max_frame.map(Value::Size));
        put(Key::ChunkBytes, self.chunk.map(Value::Size));
        put(Key::PerConnBps, self.per_conn_bps.map(Value::Size));
        put(Key::PerPeerBps, self.per_peer_bps.map(Value::Size));
        put(
            Key::GlobalEgressBps,
            self.global_egress_bps.map(Value::Size),
        );
        put(
            Key::GlobalIngressBps,
            self.global_ingress_bps.map(Value::Size),
        );
        put(
            Key::PerPeerMaxConns,
            self.per_peer_max_conns.map(Value::U32),
        );
        put(Key::PqMode, self.pq.map(Value::Pq));
        put(
            Key::ArtiBootTimeout,
            self.arti_boot_timeout.map(Value::Duration),
        );
        put(
            Key::ArtiPreDialDelay,
            self.arti_pre_dial_delay.map(Value::Duration),
        );
        put(Key::QuicMaxStreams, self.quic_max_streams.map(Value::U32));
        put(
            Key::QuicIdleTimeout,
            self.quic_idle_timeout.map(Value::Duration),
        );
        put(
            Key::QuicKeepAlive,
            self.quic_keep_alive.map(Value::Duration),
        );
        put(Key::QuicZeroRtt, self.quic_zero_rtt.map(Value::Bool));
        put(
            Key::QuicCongestion,
            self.quic_congestion.map(Value::Congestion),
        );
        put(Key::QuicGso, self.quic_gso.map(Value::Bool));
        put(Key::QuicGro, self.quic_gro.map(Value::Bool));
        put(Key::LogFormat, self.log_format.clone().map(Value::Text));
        put(Key::LogLevel, self.log_level.clone().map(Value::Text));
        out
    }
}
