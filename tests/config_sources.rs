//! Configuration sources and precedence (spec/CONFIG.md §1–§3, §9): TOML/JSON files (bare and
//! `[transport]`-wrapped), all 36 `RON_TRANSPORT_*` variables, per-key precedence
//! env > file > defaults, the deprecated `limits.max_body_bytes` alias, unknown keys, and
//! malformed documents (typed errors naming the key, never a panic).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ron_transport::config::{
    Backend, Config, ConfigError, ConfigLoader, Key, PqMode, TrustStore, DEPRECATED_MAX_BODY,
};

fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

fn merge_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    ConfigLoader::new()
        .env_vars(env(pairs))
        .merge()
        .map(|m| m.config)
}

/// The spec §3 table, verbatim: (env var, value to set, check on the merged config).
type Check = fn(&Config) -> bool;
const ENV_TABLE: [(&str, &str, Check); 36] = [
    ("RON_TRANSPORT_BACKEND", "tls", |c| {
        c.backend == Backend::Tls
    }),
    ("RON_TRANSPORT_BIND_ADDR", "0.0.0.0:9444", |c| {
        c.bind_addr == Some("0.0.0.0:9444".parse().unwrap())
    }),
    ("RON_TRANSPORT_MAX_CONNS", "2048", |c| c.max_conns == 2048),
    ("RON_TRANSPORT_READ_TIMEOUT", "7s", |c| {
        c.read_timeout == Duration::from_secs(7)
    }),
    ("RON_TRANSPORT_WRITE_TIMEOUT", "250ms", |c| {
        c.write_timeout == Duration::from_millis(250)
    }),
    ("RON_TRANSPORT_IDLE_TIMEOUT", "2m", |c| {
        c.idle_timeout == Duration::from_secs(120)
    }),
    ("RON_TRANSPORT_MAX_FRAME_BYTES", "512KiB", |c| {
        c.max_frame_bytes == 512 * 1024
    }),
    ("RON_TRANSPORT_CHUNK_BYTES", "32KiB", |c| {
        c.chunk_bytes == 32 * 1024
    }),
    ("RON_TRANSPORT_PER_CONN_BPS", "1MiB", |c| {
        c.per_conn_bytes_per_sec == 1 << 20
    }),
    ("RON_TRANSPORT_PER_PEER_BPS", "2MiB", |c| {
        c.per_peer_bytes_per_sec == 2 << 20
    }),
    ("RON_TRANSPORT_GLOBAL_EGRESS_BPS", "8MiB", |c| {
        c.global_egress_bytes_per_sec == 8 << 20
    }),
    ("RON_TRANSPORT_GLOBAL_INGRESS_BPS", "9000", |c| {
        c.global_ingress_bytes_per_sec == 9000
    }),
    ("RON_TRANSPORT_PER_PEER_MAX_CONNS", "64", |c| {
        c.per_peer_max_conns == 64
    }),
    ("RON_TRANSPORT_TLS_ENABLED", "true", |c| c.tls_enabled),
    ("RON_TRANSPORT_TLS_CERT_PATH", "/etc/ron/cert.pem", |c| {
        c.tls_cert_path == Some(PathBuf::from("/etc/ron/cert.pem"))
    }),
    ("RON_TRANSPORT_TLS_KEY_PATH", "/etc/ron/key.pem", |c| {
        c.tls_key_path == Some(PathBuf::from("/etc/ron/key.pem"))
    }),
    ("RON_TRANSPORT_TLS_CLIENT_TRUST_STORE", "path", |c| {
        c.tls_client_trust_store == TrustStore::Path
    }),
    (
        "RON_TRANSPORT_TLS_CLIENT_CA_BUNDLE",
        "/etc/ssl/ca.pem",
        |c| c.tls_client_ca_bundle == Some(PathBuf::from("/etc/ssl/ca.pem")),
    ),
    ("RON_TRANSPORT_TLS_CLIENT_SNI", "example.com", |c| {
        c.tls_client_sni.as_deref() == Some("example.com")
    }),
    ("RON_TRANSPORT_TLS_CLIENT_ALPN", "h2, http/1.1", |c| {
        c.tls_client_alpn == ["h2", "http/1.1"]
    }),
    ("RON_TRANSPORT_UDS_PATH", "/run/ron/t.sock", |c| {
        c.uds_path == Some(PathBuf::from("/run/ron/t.sock"))
    }),
    ("RON_TRANSPORT_UDS_ALLOW_UIDS", "1000,1001", |c| {
        c.uds_allow_uids == [1000, 1001]
    }),
    ("RON_TRANSPORT_MACAROON_PATH", "/etc/ron/mac", |c| {
        c.macaroon_path == Some(PathBuf::from("/etc/ron/mac"))
    }),
    ("RON_TRANSPORT_AMNESIA", "1", |c| c.amnesia),
    ("RON_TRANSPORT_PQ_MODE", "hybrid", |c| {
        c.pq_mode == PqMode::Hybrid
    }),
    ("RON_TRANSPORT_ARTI_BOOT_TIMEOUT", "45s", |c| {
        c.arti_bootstrap_timeout == Duration::from_secs(45)
    }),
    ("RON_TRANSPORT_ARTI_PRE_DIAL_DELAY", "100ms", |c| {
        c.arti_pre_dial_delay == Duration::from_millis(100)
    }),
    ("RON_TRANSPORT_QUIC_MAX_STREAMS", "1024", |c| {
        c.quic_max_streams == 1024
    }),
    ("RON_TRANSPORT_QUIC_IDLE_TIMEOUT", "45s", |c| {
        c.quic_idle_timeout == Duration::from_secs(45)
    }),
    ("RON_TRANSPORT_QUIC_KEEP_ALIVE", "5s", |c| {
        c.quic_keep_alive == Duration::from_secs(5)
    }),
    ("RON_TRANSPORT_QUIC_ZERO_RTT", "true", |c| c.quic_zero_rtt),
    ("RON_TRANSPORT_QUIC_CONGESTION", "bbr", |c| {
        c.quic_congestion == ron_transport::Congestion::Bbr
    }),
    ("RON_TRANSPORT_QUIC_GSO", "false", |c| !c.quic_gso),
    ("RON_TRANSPORT_QUIC_GRO", "0", |c| !c.quic_gro),
    ("RON_TRANSPORT_LOG_FORMAT", "text", |c| {
        c.log_format == "text"
    }),
    ("RON_TRANSPORT_LOG_LEVEL", "debug", |c| {
        c.log_level == "debug"
    }),
];

#[test]
fn config_every_env_var_maps_to_its_key() {
    assert_eq!(Key::ALL.len(), ENV_TABLE.len());
    let defaults = Config::default();
    for (i, (var, value, check)) in ENV_TABLE.into_iter().enumerate() {
        assert_eq!(Key::ALL[i].env_var(), var, "key table order/name");
        assert_eq!(Key::from_env_var(var), Some(Key::ALL[i]));
        assert!(
            !check(&defaults),
            "{var}: the sample value must differ from the default"
        );
        let cfg = merge_env(&[(var, value)]).unwrap_or_else(|e| panic!("{var}={value}: {e}"));
        assert!(check(&cfg), "{var}={value} did not reach its field");
        // Exactly one key changed (uds.path also drops the default bind, by design).
        let changed: Vec<_> = Key::ALL
            .into_iter()
            .filter(|k| k.format_value(&cfg) != k.format_value(&defaults))
            .collect();
        let expected = if var == "RON_TRANSPORT_UDS_PATH" {
            2
        } else {
            1
        };
        assert_eq!(changed.len(), expected, "{var}: {changed:?}");
    }
}

#[test]
fn config_env_values_are_parse_errors_naming_the_variable() {
    for (var, value) in [
        ("RON_TRANSPORT_BACKEND", "sctp"),
        ("RON_TRANSPORT_BIND_ADDR", "localhost"),
        ("RON_TRANSPORT_QUIC_MAX_STREAMS", "many"),
        ("RON_TRANSPORT_QUIC_IDLE_TIMEOUT", "30"),
        ("RON_TRANSPORT_QUIC_ZERO_RTT", "on"),
        ("RON_TRANSPORT_QUIC_CONGESTION", "vegas"),
        ("RON_TRANSPORT_MAX_CONNS", "-1"),
        ("RON_TRANSPORT_MAX_CONNS", "4294967296"),
        ("RON_TRANSPORT_READ_TIMEOUT", "5"),
        ("RON_TRANSPORT_CHUNK_BYTES", "64kb"),
        ("RON_TRANSPORT_TLS_ENABLED", "yes please"),
        ("RON_TRANSPORT_TLS_CLIENT_TRUST_STORE", "webpki"),
        ("RON_TRANSPORT_UDS_ALLOW_UIDS", "1000,-1"),
        ("RON_TRANSPORT_PQ_MODE", "on"),
    ] {
        match merge_env(&[(var, value)]) {
            Err(e @ ConfigError::Parse { .. }) => assert_eq!(e.key(), Some(var)),
            other => panic!("{var}={value}: expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn config_unknown_env_var_with_prefix_is_an_error_and_others_are_ignored() {
    let err = merge_env(&[("RON_TRANSPORT_MAX_CONN", "5")]).unwrap_err();
    assert!(
        matches!(err, ConfigError::UnknownKey { ref key, .. } if key == "RON_TRANSPORT_MAX_CONN"),
        "{err:?}"
    );
    let cfg = merge_env(&[
        ("PATH", "/usr/bin"),
        ("RON_TRANSPORTX", "1"),
        ("HOME", "/root"),
    ])
    .unwrap();
    assert_eq!(cfg, Config::default());
}

#[test]
fn config_later_env_pairs_override_earlier_ones() {
    let cfg = merge_env(&[
        ("RON_TRANSPORT_MAX_CONNS", "5"),
        ("RON_TRANSPORT_MAX_CONNS", "6"),
    ])
    .unwrap();
    assert_eq!(cfg.max_conns, 6);
}

/// Per key: (file TOML fragment, env value) with distinct values, env must win; without env
/// the file value must win over the default.
#[test]
fn config_precedence_env_over_file_over_defaults_for_every_key() {
    let cases: [(Key, &str, &str); 36] = [
        (Key::Backend, "backend = \"arti\"", "tls"),
        (Key::BindAddr, "bind_addr = \"10.0.0.1:1\"", "10.0.0.2:2"),
        (Key::MaxConns, "max_conns = 10", "20"),
        (Key::ReadTimeout, "read_timeout = \"1s\"", "2s"),
        (Key::WriteTimeout, "write_timeout = \"1s\"", "2s"),
        (Key::IdleTimeout, "idle_timeout = \"10s\"", "20s"),
        (
            Key::MaxFrameBytes,
            "[limits]\nmax_frame_bytes = \"128KiB\"",
            "256KiB",
        ),
        (Key::ChunkBytes, "[limits]\nchunk_bytes = \"8KiB\"", "16KiB"),
        (
            Key::PerConnBps,
            "[rates]\nper_conn_bytes_per_sec = 100",
            "200",
        ),
        (
            Key::PerPeerBps,
            "[rates]\nper_peer_bytes_per_sec = \"1KiB\"",
            "2KiB",
        ),
        (
            Key::GlobalEgressBps,
            "[rates]\nglobal_egress_bytes_per_sec = \"1MiB\"",
            "2MiB",
        ),
        (
            Key::GlobalIngressBps,
            "[rates]\nglobal_ingress_bytes_per_sec = \"3MiB\"",
            "4MiB",
        ),
        (Key::PerPeerMaxConns, "[per_peer]\nmax_conns = 3", "4"),
        (Key::TlsEnabled, "[tls]\nenabled = true", "false"),
        (Key::TlsCertPath, "[tls]\ncert_path = \"/a\"", "/b"),
        (Key::TlsKeyPath, "[tls]\nkey_path = \"/a\"", "/b"),
        (
            Key::TlsClientTrustStore,
            "[tls_client]\ntrust_store = \"path\"",
            "system",
        ),
        (
            Key::TlsClientCaBundle,
            "[tls_client]\nca_bundle_path = \"/a\"",
            "/b",
        ),
        (
            Key::TlsClientSni,
            "[tls_client]\nsni_override = \"a.example\"",
            "b.example",
        ),
        (
            Key::TlsClientAlpn,
            "[tls_client]\nalpn = [\"h2\"]",
            "http/1.1",
        ),
        (Key::UdsPath, "[uds]\npath = \"/a.sock\"", "/b.sock"),
        (Key::UdsAllowUids, "[uds]\nallow_uids = [1]", "2"),
        (Key::MacaroonPath, "[auth]\nmacaroon_path = \"/a\"", "/b"),
        (Key::Amnesia, "[amnesia]\nenabled = true", "false"),
        (Key::PqMode, "[pq]\nmode = \"hybrid\"", "off"),
        (
            Key::ArtiBootTimeout,
            "[arti]\nbootstrap_timeout = \"1m\"",
            "2m",
        ),
        (
            Key::ArtiPreDialDelay,
            "[arti]\npre_dial_delay = \"5ms\"",
            "6ms",
        ),
        (Key::QuicMaxStreams, "[quic]\nmax_streams = 64", "128"),
        (
            Key::QuicIdleTimeout,
            "[quic]\nidle_timeout = \"10s\"",
            "20s",
        ),
        (Key::QuicKeepAlive, "[quic]\nkeep_alive = \"2s\"", "3s"),
        (Key::QuicZeroRtt, "[quic]\nzero_rtt = true", "false"),
        (
            Key::QuicCongestion,
            "[quic]\ncongestion = \"bbr\"",
            "newreno",
        ),
        (Key::QuicGso, "[quic]\ngso = false", "true"),
        (Key::QuicGro, "[quic]\ngro = false", "true"),
        (Key::LogFormat, "[log]\nformat = \"text\"", "json"),
        (Key::LogLevel, "[log]\nlevel = \"warn\"", "error"),
    ];
    let defaults = Config::default();
    for (key, toml, env_value) in cases {
        let file_only = ConfigLoader::new().toml_str(toml).merge().unwrap().config;
        let file_text = key.format_value(&file_only);
        assert_ne!(
            file_text,
            key.format_value(&defaults),
            "{key:?}: file must beat defaults"
        );

        let both = ConfigLoader::new()
            .toml_str(toml)
            .env_vars(env(&[(key.env_var(), env_value)]))
            .merge()
            .unwrap()
            .config;
        let env_only = merge_env(&[(key.env_var(), env_value)]).unwrap();
        assert_ne!(
            key.format_value(&both),
            file_text,
            "{key:?}: env must beat file"
        );
        assert_eq!(
            key.format_value(&both),
            key.format_value(&env_only),
            "{key:?}"
        );
    }
}

const SPEC_EXAMPLE: &str = r#"
[transport]
backend       = "tls"
bind_addr     = "0.0.0.0:9444"
max_conns     = 1024
read_timeout  = "5s"
write_timeout = "5s"
idle_timeout  = "60s"

[transport.tls]
enabled   = true
cert_path = "/etc/ron/cert.pem"
key_path  = "/etc/ron/key.pem"

[transport.tls_client]
trust_store = "system"
ca_bundle_path = ""
sni_override  = ""
alpn          = []

[transport.limits]
max_frame_bytes = "1MiB"
chunk_bytes     = "64KiB"

[transport.rates]
per_conn_bytes_per_sec  = "0"
per_peer_bytes_per_sec  = "0"
global_egress_bytes_per_sec  = "8MiB"
global_ingress_bytes_per_sec = "8MiB"

[transport.per_peer]
max_conns = 64

[transport.uds]
path       = ""
allow_uids = []

[transport.auth]
macaroon_path = ""

[transport.amnesia]
enabled = false

[transport.pq]
mode = "off"

[transport.arti]
bootstrap_timeout = "30s"
pre_dial_delay    = "0s"

[transport.log]
format = "json"
level  = "info"
"#;

#[test]
fn config_spec_example_document_parses() {
    let cfg = Config::from_toml_str(SPEC_EXAMPLE).unwrap();
    assert_eq!(cfg.backend, Backend::Tls);
    assert_eq!(
        cfg.bind_addr,
        Some("0.0.0.0:9444".parse::<SocketAddr>().unwrap())
    );
    assert!(cfg.tls_enabled);
    assert_eq!(cfg.tls_key_path, Some(PathBuf::from("/etc/ron/key.pem")));
    assert_eq!(cfg.tls_client_ca_bundle, None, "empty path means unset");
    assert_eq!(cfg.tls_client_sni, None);
    assert_eq!(cfg.global_egress_bytes_per_sec, 8 << 20);
    assert_eq!(cfg.per_peer_max_conns, 64);
    assert_eq!(cfg.uds_path, None);
}

#[test]
fn config_bare_and_wrapped_documents_are_equivalent_in_toml_and_json() {
    let bare = "max_conns = 7\n[limits]\nchunk_bytes = \"8KiB\"\n";
    let wrapped = "[transport]\nmax_conns = 7\n[transport.limits]\nchunk_bytes = \"8KiB\"\n";
    let json_bare = r#"{"max_conns": 7, "limits": {"chunk_bytes": "8KiB"}}"#;
    let json_wrapped = r#"{"transport": {"max_conns": 7, "limits": {"chunk_bytes": 8192}}}"#;
    let a = Config::from_toml_str(bare).unwrap();
    assert_eq!(a.max_conns, 7);
    assert_eq!(a.chunk_bytes, 8192);
    assert_eq!(Config::from_toml_str(wrapped).unwrap(), a);
    assert_eq!(Config::from_json_str(json_bare).unwrap(), a);
    assert_eq!(Config::from_json_str(json_wrapped).unwrap(), a);
}

#[test]
fn config_file_format_is_chosen_by_extension_then_content() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("t.json");
    std::fs::write(&json, r#"{"max_conns": 11}"#).unwrap();
    let sniffed = dir.path().join("t.conf");
    std::fs::write(&sniffed, "  {\"max_conns\": 12}").unwrap();
    let toml = dir.path().join("t.toml");
    std::fs::write(&toml, "max_conns = 13").unwrap();
    let noext = dir.path().join("transport");
    std::fs::write(&noext, "max_conns = 14").unwrap();
    for (path, want) in [(&json, 11), (&sniffed, 12), (&toml, 13), (&noext, 14)] {
        let m = ConfigLoader::new().file(path).merge().unwrap();
        assert_eq!(m.config.max_conns, want, "{}", path.display());
        assert_eq!(m.file.as_deref(), Some(path.as_path()));
    }
}

#[test]
fn config_required_file_missing_is_a_file_error() {
    let err = ConfigLoader::new()
        .file("/nonexistent/ron/transport.toml")
        .load()
        .unwrap_err();
    assert!(
        matches!(err, ConfigError::File { ref path, .. } if path.ends_with("transport.toml")),
        "{err:?}"
    );
}

#[test]
fn config_unknown_keys_are_errors_naming_the_key_path() {
    for (doc, key) in [
        ("max_conn = 5", "max_conn"),
        ("[limits]\nmax_frame = \"1MiB\"", "limits.max_frame"),
        ("[limitz]\nchunk_bytes = 1", "limitz"),
        ("[transport.limits]\nfoo = 1", "transport.limits.foo"),
        ("[transport]\nmax_conns = 1\n[server]\nport = 1", "server"),
        ("[tls]\nenabled = false\npassword = \"x\"", "tls.password"),
    ] {
        match Config::from_toml_str(doc) {
            Err(e @ ConfigError::UnknownKey { .. }) => assert_eq!(e.key(), Some(key), "{doc}"),
            other => panic!("{doc}: expected UnknownKey({key}), got {other:?}"),
        }
    }
    let err = Config::from_json_str(r#"{"rates": {"per_conn": 1}}"#).unwrap_err();
    assert_eq!(err.key(), Some("rates.per_conn"));
}

#[test]
fn config_deprecated_max_body_alias_maps_to_max_frame_with_a_warning() {
    let m = ConfigLoader::new()
        .toml_str("[limits]\nmax_body_bytes = \"512KiB\"")
        .merge()
        .unwrap();
    assert_eq!(m.config.max_frame_bytes, 512 * 1024);
    assert_eq!(m.warnings.len(), 1);
    let w = &m.warnings[0];
    assert_eq!(
        (w.old_key, w.new_key, w.shadowed),
        (DEPRECATED_MAX_BODY, "limits.max_frame_bytes", false)
    );
    assert!(
        w.to_string()
            .contains("deprecated key `limits.max_body_bytes`"),
        "{w}"
    );

    // Both given: the new key wins and the warning says so.
    let m = ConfigLoader::new()
        .toml_str("[limits]\nmax_body_bytes = \"512KiB\"\nmax_frame_bytes = \"256KiB\"")
        .merge()
        .unwrap();
    assert_eq!(m.config.max_frame_bytes, 256 * 1024);
    assert!(m.warnings[0].shadowed);
    assert!(m.warnings[0].to_string().contains("the new key wins"));

    // Env alias, beaten by the new env var in the same source, but beating the file.
    let m = ConfigLoader::new()
        .toml_str("[limits]\nmax_frame_bytes = \"128KiB\"")
        .env_vars(env(&[("RON_TRANSPORT_MAX_BODY_BYTES", "96KiB")]))
        .merge()
        .unwrap();
    assert_eq!(m.config.max_frame_bytes, 96 * 1024);
    assert_eq!(m.warnings[0].old_key, "RON_TRANSPORT_MAX_BODY_BYTES");
    let m = ConfigLoader::new()
        .env_vars(env(&[
            ("RON_TRANSPORT_MAX_BODY_BYTES", "96KiB"),
            ("RON_TRANSPORT_MAX_FRAME_BYTES", "80KiB"),
        ]))
        .merge()
        .unwrap();
    assert_eq!(m.config.max_frame_bytes, 80 * 1024);
    assert!(m.warnings[0].shadowed);

    // A bad alias value names the alias.
    let err = Config::from_toml_str("[limits]\nmax_body_bytes = \"lots\"").unwrap_err();
    assert_eq!(err.key(), Some(DEPRECATED_MAX_BODY));
}

/// §11 "Fuzz malformed TOML/JSON": typed error, never a panic, pointing at the key.
#[test]
fn config_malformed_toml_and_json_give_typed_errors_naming_the_key() {
    let keyed: [(&str, bool, &str); 14] = [
        ("max_conns = \"many\"", false, "max_conns"),
        ("max_conns = 1.5", false, "max_conns"),
        ("max_conns = true", false, "max_conns"),
        ("read_timeout = 5", false, "read_timeout"),
        ("limits = 5", false, "limits"),
        ("[tls]\nenabled = \"yes\"", false, "tls.enabled"),
        ("[tls_client]\nalpn = \"h2\"", false, "tls_client.alpn"),
        ("[tls_client]\nalpn = [1, 2]", false, "tls_client.alpn"),
        ("[uds]\nallow_uids = [\"root\"]", false, "uds.allow_uids"),
        ("bind_addr = 1979-05-27T07:32:00Z", false, "bind_addr"),
        (r#"{"max_conns": null}"#, true, "max_conns"),
        (
            r#"{"limits": {"chunk_bytes": 1e3}}"#,
            true,
            "limits.chunk_bytes",
        ),
        (
            r#"{"per_peer": {"max_conns": 99999999999999999999}}"#,
            true,
            "per_peer.max_conns",
        ),
        (r#"{"transport": []}"#, true, "transport"),
    ];
    for (doc, json, key) in keyed {
        let r = if json {
            Config::from_json_str(doc)
        } else {
            Config::from_toml_str(doc)
        };
        let err = r.expect_err(doc);
        assert_eq!(err.key(), Some(key), "{doc}: {err}");
        assert_eq!(err.kind(), "parse", "{doc}");
    }
    // Syntax errors: typed, with position information.
    let dir = tempfile::tempdir().unwrap();
    for (name, doc) in [
        ("a.toml", "[limits\nchunk_bytes = 1"),
        ("b.toml", "max_conns = = 3"),
        ("c.toml", "max_conns = 1\nmax_conns = 2"),
        ("d.json", "{\"max_conns\": 1,,}"),
        ("e.json", "[1, 2, 3]"),
        ("f.toml", "\u{0}\u{1}\u{2}"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, doc).unwrap();
        let err = ConfigLoader::new().file(&path).load().unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(name), "{err}");
    }
    let path = dir.path().join("g.toml");
    std::fs::write(&path, [0xff, 0xfe, b'x']).unwrap();
    assert!(matches!(
        ConfigLoader::new().file(&path).load(),
        Err(ConfigError::File { .. })
    ));
}

#[test]
fn config_sensitive_values_are_not_echoed_in_parse_errors() {
    let err = Config::from_toml_str("[tls]\nkey_path = 42").unwrap_err();
    assert_eq!(err.key(), Some("tls.key_path"));
    assert!(!err.to_string().contains("42"), "{err}");
}

#[test]
fn config_documents_round_trip_through_format() {
    let mut cfg = Config::from_toml_str(SPEC_EXAMPLE).unwrap();
    cfg.tls_client_alpn = vec!["h2".into(), "http/1.1".into()];
    cfg.uds_allow_uids = vec![0, 1000];
    cfg.read_timeout = Duration::from_micros(1500);
    cfg.tls_client_sni = Some("a \"quoted\" name".into());
    assert_eq!(Config::from_toml_str(&cfg.to_toml_string()).unwrap(), cfg);
    assert_eq!(Config::from_json_str(&cfg.to_json_string()).unwrap(), cfg);
    let d = Config::default();
    assert_eq!(Config::from_toml_str(&d.to_toml_string()).unwrap(), d);
    assert!(d.to_toml_string().contains("chunk_bytes = \"64KiB\""));
}
