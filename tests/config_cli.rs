//! The `--transport.*` flags of spec/CONFIG.md §6 (feature `cli`): every flag parses into its
//! key, CLI beats env beats file beats defaults, `--transport.config` loads a file, and bad
//! values are refused by the parser.
#![cfg(feature = "cli")]

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ron_transport::config::{
    Backend, Config, ConfigLoader, Key, PqMode, TransportArgs, TrustStore,
};

#[derive(Parser, Debug)]
#[command(name = "consumer")]
struct Cli {
    #[command(flatten)]
    transport: TransportArgs,
}

fn parse(args: &[&str]) -> Result<TransportArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("consumer").chain(args.iter().copied()))
        .map(|c| c.transport)
}

fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

/// The spec §2.3 command line (minus `--transport.uds`, which conflicts with `--transport.bind`).
#[rustfmt::skip]
const SPEC_FLAGS: &[&str] = &[
    "--transport.backend", "tcp",
    "--transport.bind", "0.0.0.0:9444",
    "--transport.max-conns", "2048",
    "--transport.read-timeout", "5s",
    "--transport.write-timeout", "6s",
    "--transport.idle-timeout", "60s",
    "--transport.tls",
    "--transport.tls-cert", "/etc/ron/cert.pem",
    "--transport.tls-key", "/etc/ron/key.pem",
    "--transport.tls-client-trust-store", "path",
    "--transport.tls-client-ca-bundle", "/etc/ssl/custom-ca.pem",
    "--transport.tls-client-sni", "example.com",
    "--transport.tls-client-alpn", "h2,http/1.1",
    "--transport.max-frame", "1MiB",
    "--transport.chunk", "64KiB",
    "--transport.per-conn-bps", "1KiB",
    "--transport.per-peer-bps", "2KiB",
    "--transport.global-egress-bps", "8MiB",
    "--transport.global-ingress-bps", "7MiB",
    "--transport.per-peer-max-conns", "64",
    "--transport.pq", "hybrid",
    "--transport.arti-boot-timeout", "30s",
    "--transport.arti-pre-dial-delay", "250ms",
    "--transport.log-format", "text",
    "--transport.log-level", "warn",
];

/// The `quic.*` flags (feature `quic`), with non-default values.
#[rustfmt::skip]
const QUIC_FLAGS: &[&str] = &[
    "--transport.quic-max-streams", "1024",
    "--transport.quic-idle-timeout", "20s",
    "--transport.quic-keep-alive", "5s",
    "--transport.quic-zero-rtt", "true",
    "--transport.quic-congestion", "newreno",
    "--transport.quic-gso", "false",
    "--transport.quic-gro", "0",
];

#[test]
fn config_every_quic_flag_reaches_its_key() {
    let mut flags = vec!["--transport.backend", "quic"];
    flags.extend_from_slice(QUIC_FLAGS);
    let args = parse(&flags).unwrap();
    let c = ConfigLoader::new().cli(&args).load().unwrap().config;
    assert_eq!(c.backend, Backend::Quic);
    assert_eq!(c.quic_max_streams, 1024);
    assert_eq!(c.quic_idle_timeout, Duration::from_secs(20));
    assert_eq!(c.quic_keep_alive, Duration::from_secs(5));
    assert!(c.quic_zero_rtt);
    assert_eq!(c.quic_congestion, ron_transport::Congestion::NewReno);
    assert!(!c.quic_gso && !c.quic_gro);
    // Parses, but breaks a §4-style rule: the key is named.
    let args = parse(&[
        "--transport.backend",
        "quic",
        "--transport.quic-max-streams",
        "0",
    ])
    .unwrap();
    let err = ConfigLoader::new().cli(&args).load().unwrap_err();
    assert_eq!(err.key(), Some("quic.max_streams"));
}

#[test]
fn config_every_spec_flag_reaches_its_key() {
    let args = parse(SPEC_FLAGS).unwrap();
    let c = ConfigLoader::new().cli(&args).merge().unwrap().config;
    assert_eq!(c.backend, Backend::Tcp);
    assert_eq!(c.bind_addr, Some("0.0.0.0:9444".parse().unwrap()));
    assert_eq!(c.max_conns, 2048);
    assert_eq!(c.read_timeout, Duration::from_secs(5));
    assert_eq!(c.write_timeout, Duration::from_secs(6));
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    assert!(c.tls_enabled);
    assert_eq!(c.tls_cert_path, Some(PathBuf::from("/etc/ron/cert.pem")));
    assert_eq!(c.tls_key_path, Some(PathBuf::from("/etc/ron/key.pem")));
    assert_eq!(c.tls_client_trust_store, TrustStore::Path);
    assert_eq!(
        c.tls_client_ca_bundle,
        Some(PathBuf::from("/etc/ssl/custom-ca.pem"))
    );
    assert_eq!(c.tls_client_sni.as_deref(), Some("example.com"));
    assert_eq!(c.tls_client_alpn, ["h2", "http/1.1"]);
    assert_eq!((c.max_frame_bytes, c.chunk_bytes), (1 << 20, 64 << 10));
    assert_eq!(
        (c.per_conn_bytes_per_sec, c.per_peer_bytes_per_sec),
        (1024, 2048)
    );
    assert_eq!(
        (
            c.global_egress_bytes_per_sec,
            c.global_ingress_bytes_per_sec
        ),
        (8 << 20, 7 << 20)
    );
    assert_eq!(c.per_peer_max_conns, 64);
    assert_eq!(c.pq_mode, PqMode::Hybrid);
    assert_eq!(c.arti_bootstrap_timeout, Duration::from_secs(30));
    assert_eq!(c.arti_pre_dial_delay, Duration::from_millis(250));
    assert_eq!(
        (c.log_format.as_str(), c.log_level.as_str()),
        ("text", "warn")
    );

    let uds = parse(&["--transport.uds", "/run/ron/transport.sock"]).unwrap();
    let c = ConfigLoader::new().cli(&uds).merge().unwrap().config;
    assert_eq!(c.uds_path, Some(PathBuf::from("/run/ron/transport.sock")));
    assert_eq!(
        c.bind_addr, None,
        "the default bind gives way to an explicit uds path"
    );
}

#[test]
fn config_flag_names_match_the_key_table() {
    // The parser's long flags are exactly the key table's flags plus --transport.config: the
    // 27 flags of spec §6 and the 7 `--transport.quic-*` flags of feature `quic`.
    use clap::CommandFactory;
    let mut parser: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    parser.sort();
    let mut table: Vec<String> = Key::ALL
        .iter()
        .filter_map(|k| k.cli_flag())
        .map(str::to_owned)
        .collect();
    table.push("--transport.config".to_owned());
    table.sort();
    assert_eq!(parser, table);
    assert_eq!(table.len(), 34);
    for flag in &table {
        let listed = SPEC_FLAGS.contains(&flag.as_str())
            || QUIC_FLAGS.contains(&flag.as_str())
            || flag == "--transport.uds"
            || flag == "--transport.config";
        assert!(listed, "{flag} is not a spec §2.3 flag");
    }
    for key in [Key::UdsAllowUids, Key::MacaroonPath, Key::Amnesia] {
        assert_eq!(key.cli_flag(), None, "§6 has no flag for {key:?}");
    }
}

#[test]
fn config_precedence_cli_over_env_over_file_over_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.toml");
    std::fs::write(
        &file,
        "max_conns = 10\nread_timeout = \"10s\"\nwrite_timeout = \"10s\"\nidle_timeout = \"10s\"",
    )
    .unwrap();
    let vars = env(&[
        ("RON_TRANSPORT_MAX_CONNS", "20"),
        ("RON_TRANSPORT_READ_TIMEOUT", "20s"),
        ("RON_TRANSPORT_WRITE_TIMEOUT", "20s"),
    ]);
    let args = parse(&[
        "--transport.max-conns",
        "30",
        "--transport.read-timeout",
        "30s",
    ])
    .unwrap();
    let c = ConfigLoader::new()
        .file(&file)
        .env_vars(vars)
        .cli(&args)
        .load()
        .unwrap()
        .config;
    assert_eq!(c.max_conns, 30, "cli > env > file");
    assert_eq!(c.read_timeout, Duration::from_secs(30), "cli > env > file");
    assert_eq!(c.write_timeout, Duration::from_secs(20), "env > file");
    assert_eq!(c.idle_timeout, Duration::from_secs(10), "file > default");
    assert_eq!(c.chunk_bytes, Config::default().chunk_bytes, "default");
}

#[test]
fn config_flag_loads_the_file_and_overrides_the_builder_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.toml");
    let b = dir.path().join("b.json");
    std::fs::write(&a, "max_conns = 1").unwrap();
    std::fs::write(&b, r#"{"transport": {"max_conns": 2}}"#).unwrap();
    let args = parse(&["--transport.config", b.to_str().unwrap()]).unwrap();
    let loaded = ConfigLoader::new().file(&a).cli(&args).load().unwrap();
    assert_eq!(loaded.config.max_conns, 2);
    assert_eq!(loaded.file.as_deref(), Some(b.as_path()));
    // A missing --transport.config file is an error, not silent defaults.
    let args = parse(&["--transport.config", "/nonexistent/x.toml"]).unwrap();
    assert!(ConfigLoader::new().cli(&args).load().is_err());
}

#[test]
fn config_bad_flag_values_are_refused() {
    for args in [
        &["--transport.backend", "sctp"][..],
        &["--transport.quic-congestion", "vegas"],
        &["--transport.quic-zero-rtt", "maybe"],
        &["--transport.quic-max-streams", "-1"],
        &["--transport.quic-idle-timeout", "30"],
        &["--transport.bind", "localhost"],
        &["--transport.max-conns", "4294967296"],
        &["--transport.max-conns", "-1"],
        &["--transport.read-timeout", "5"],
        &["--transport.max-frame", "1GB"],
        &["--transport.per-peer-bps", "-5"],
        &["--transport.pq", "on"],
        &["--transport.log-level", "loud"],
        &["--transport.tls-client-trust-store", "web"],
        &[
            "--transport.bind",
            "0.0.0.0:1",
            "--transport.uds",
            "/run/x.sock",
        ],
        &["--transport.max_conns", "1"],
    ] {
        assert!(parse(args).is_err(), "{args:?} must be refused");
    }
    // Values that parse but break §4 fail validation, naming the key.
    let args = parse(&["--transport.max-frame", "2MiB"]).unwrap();
    let err = ConfigLoader::new().cli(&args).load().unwrap_err();
    assert_eq!(err.key(), Some("limits.max_frame_bytes"));
}

#[test]
fn config_no_flags_change_nothing() {
    let args = parse(&[]).unwrap();
    assert_eq!(args, TransportArgs::default());
    let c = ConfigLoader::new()
        .env_vars(env(&[("RON_TRANSPORT_MAX_CONNS", "5")]))
        .cli(&args)
        .merge()
        .unwrap()
        .config;
    assert_eq!(c.max_conns, 5);
}
