//! The spec/CONFIG.md §11 test matrix, one named test per row (plus boundary values of the §4
//! rules), and the §5 reload semantics on `ConfigHandle`: validate-then-swap, keep the last
//! good snapshot on failure, live vs rebind classification, generation and subscribers, and a
//! structured diff in the log that never contains secrets.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ron_transport::config::{
    Backend, CompiledFeatures, Config, ConfigError, ConfigHandle, ConfigLoader, Key, PqMode,
    ReloadClass, TrustStore, ValidConfig,
};

const NO_PQ: CompiledFeatures = CompiledFeatures {
    tls: true,
    pq: false,
    arti: false,
    quic: false,
};
const ALL: CompiledFeatures = CompiledFeatures {
    tls: true,
    pq: true,
    arti: true,
    quic: true,
};

fn write_mode(path: &Path, contents: &[u8], mode: u32) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A self-signed cert (0644) and its key (`key_mode`) in `dir`.
fn tls_files(dir: &Path, key_mode: u32) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    write_mode(&cert, ck.cert.pem().as_bytes(), 0o644);
    write_mode(&key, ck.key_pair.serialize_pem().as_bytes(), key_mode);
    (cert, key)
}

fn tls_config(cert: Option<PathBuf>, key: Option<PathBuf>) -> Config {
    let mut c = Config::default();
    c.backend = Backend::Tls;
    c.tls_enabled = true;
    c.tls_cert_path = cert;
    c.tls_key_path = key;
    c
}

#[track_caller]
fn assert_invalid(r: Result<ValidConfig, ConfigError>, key: &str) -> String {
    match r {
        Err(ConfigError::Invalid { key: k, reason }) => {
            assert_eq!(k, key, "wrong key (reason: {reason})");
            reason
        }
        other => panic!("expected Invalid({key}), got {other:?}"),
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

// ---- §11 rows -------------------------------------------------------------------------------

#[test]
fn config_missing_config_file_applies_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = ConfigLoader::new()
        .optional_file(dir.path().join("absent.toml"))
        .load()
        .unwrap();
    assert_eq!(*loaded.config, Config::default());
    assert_eq!(loaded.file, None);
    assert!(loaded.warnings.is_empty());
    // The defaults are the safe §3 values.
    let c = &loaded.config;
    assert_eq!((c.backend, c.max_conns), (Backend::Tcp, 1024));
    assert_eq!(c.bind_addr, Some("127.0.0.1:0".parse().unwrap()));
    assert_eq!(
        (c.read_timeout, c.idle_timeout),
        (Duration::from_secs(5), Duration::from_secs(60))
    );
    assert_eq!((c.max_frame_bytes, c.chunk_bytes), (1 << 20, 64 << 10));
    assert_eq!((c.pq_mode, c.tls_enabled), (PqMode::Off, false));
    // No source at all: the same.
    assert_eq!(
        *ConfigLoader::new().load().unwrap().config,
        Config::default()
    );
}

#[test]
fn config_invalid_backend_is_rejected() {
    let err = Config::from_toml_str("backend = \"sctp\"").unwrap_err();
    assert!(
        matches!(err, ConfigError::Parse { ref key, ref value, .. } if key == "backend" && value == "sctp")
    );
    let err = ConfigLoader::new()
        .env_vars(env(&[("RON_TRANSPORT_BACKEND", "udp")]))
        .load()
        .unwrap_err();
    assert_eq!(err.key(), Some("RON_TRANSPORT_BACKEND"));
    assert!("tor".parse::<Backend>().is_err());
    // `arti` parses; it validates only in a build with the `arti` feature.
    let mut c = Config::default();
    c.backend = Backend::Arti;
    if cfg!(feature = "arti") {
        assert!(c.clone().validate().is_ok());
    } else {
        let reason = assert_invalid(c.clone().validate(), "backend");
        assert!(reason.contains("arti"), "{reason}");
    }
    assert!(c.validate_for(&ALL).is_ok());
}

#[test]
fn config_tls_enabled_with_missing_key_or_cert_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls_files(dir.path(), 0o600);
    assert_invalid(
        tls_config(None, Some(key.clone())).validate(),
        "tls.cert_path",
    );
    assert_invalid(
        tls_config(Some(cert.clone()), None).validate(),
        "tls.key_path",
    );
    let gone = dir.path().join("gone.pem");
    assert_invalid(
        tls_config(Some(gone.clone()), Some(key.clone())).validate(),
        "tls.cert_path",
    );
    assert_invalid(
        tls_config(Some(cert.clone()), Some(gone)).validate(),
        "tls.key_path",
    );
    // Empty or garbage key, garbage cert.
    let empty = dir.path().join("empty.pem");
    write_mode(&empty, b"", 0o600);
    assert_invalid(
        tls_config(Some(cert.clone()), Some(empty)).validate(),
        "tls.key_path",
    );
    let junk = dir.path().join("junk.pem");
    write_mode(
        &junk,
        b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
        0o600,
    );
    assert_invalid(
        tls_config(Some(cert.clone()), Some(junk)).validate(),
        "tls.key_path",
    );
    assert_invalid(
        tls_config(Some(key.clone()), Some(key.clone())).validate(),
        "tls.cert_path",
    );
    // A directory is not a key.
    assert_invalid(
        tls_config(Some(cert.clone()), Some(dir.path().to_path_buf())).validate(),
        "tls.key_path",
    );
    // Positive control: both present, key 0600.
    assert!(tls_config(Some(cert), Some(key)).validate().is_ok());
}

#[test]
fn config_tls_key_group_or_world_accessible_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o610] {
        let (cert, key) = tls_files(dir.path(), mode);
        let reason = assert_invalid(tls_config(Some(cert), Some(key)).validate(), "tls.key_path");
        assert!(reason.contains("0600"), "{mode:o}: {reason}");
    }
    for mode in [0o600, 0o400] {
        let (cert, key) = tls_files(dir.path(), mode);
        assert!(
            tls_config(Some(cert), Some(key)).validate().is_ok(),
            "{mode:o}"
        );
    }
}

#[test]
fn config_max_frame_above_1mib_is_rejected() {
    let with_frame = |n: u64| {
        let mut c = Config::default();
        c.max_frame_bytes = n;
        c.chunk_bytes = 4096;
        c
    };
    assert_invalid(
        with_frame((1 << 20) + 1).validate(),
        "limits.max_frame_bytes",
    );
    assert_invalid(with_frame(2 << 20).validate(), "limits.max_frame_bytes");
    assert_invalid(
        with_frame((64 << 10) - 1).validate(),
        "limits.max_frame_bytes",
    );
    assert!(with_frame(1 << 20).validate().is_ok());
    assert!(with_frame(64 << 10).validate().is_ok());
    // Through a source.
    let err = ConfigLoader::new()
        .toml_str("[limits]\nmax_frame_bytes = \"2MiB\"")
        .load()
        .unwrap_err();
    assert_eq!(err.key(), Some("limits.max_frame_bytes"));
}

#[test]
fn config_chunk_larger_than_max_frame_is_rejected() {
    let mut c = Config::default();
    c.max_frame_bytes = 64 << 10;
    c.chunk_bytes = 128 << 10;
    let reason = assert_invalid(c.clone().validate(), "limits.chunk_bytes");
    assert!(reason.contains("max_frame_bytes"), "{reason}");
    c.chunk_bytes = 64 << 10;
    assert!(c.clone().validate().is_ok());
    // Chunk range on its own.
    c.max_frame_bytes = 1 << 20;
    for bad in [4095, (256 << 10) + 1] {
        c.chunk_bytes = bad;
        assert_invalid(c.clone().validate(), "limits.chunk_bytes");
    }
    for good in [4096, 256 << 10] {
        c.chunk_bytes = good;
        assert!(c.clone().validate().is_ok());
    }
}

#[test]
fn config_pq_hybrid_without_pq_feature_is_rejected() {
    let mut c = Config::default();
    c.pq_mode = PqMode::Hybrid;
    let reason = assert_invalid(c.clone().validate_for(&NO_PQ), "pq.mode");
    assert!(reason.contains("`pq` feature"), "{reason}");
    assert!(c.clone().validate_for(&ALL).is_ok());
    // `off` never needs the feature.
    c.pq_mode = PqMode::Off;
    assert!(c.validate_for(&NO_PQ).is_ok());
    // Through the loader.
    let err = ConfigLoader::new()
        .toml_str("[pq]\nmode = \"hybrid\"")
        .load_for(&NO_PQ)
        .unwrap_err();
    assert_eq!(err.key(), Some("pq.mode"));
}

#[test]
fn config_public_bind_with_zero_max_conns_is_rejected() {
    let err = ConfigLoader::new()
        .toml_str("bind_addr = \"0.0.0.0:9444\"\nmax_conns = 0")
        .load()
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                key: "max_conns",
                ..
            }
        ),
        "{err:?}"
    );
    let ok = ConfigLoader::new()
        .toml_str("bind_addr = \"0.0.0.0:9444\"\nmax_conns = 1")
        .load()
        .unwrap();
    assert_eq!(ok.config.max_conns, 1);
}

#[test]
fn config_uds_and_bind_together_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = dir.path().join("t.sock");
    let sock_s = sock.to_str().unwrap();
    // Both explicit (file + env): mutually exclusive.
    let err = ConfigLoader::new()
        .toml_str("bind_addr = \"0.0.0.0:9444\"")
        .env_vars(env(&[("RON_TRANSPORT_UDS_PATH", sock_s)]))
        .load()
        .unwrap_err();
    assert_eq!(err.key(), Some("uds.path"));
    // Directly on a Config.
    let mut c = Config::default();
    c.uds_path = Some(sock.clone());
    assert_invalid(c.clone().validate(), "uds.path");
    c.bind_addr = None;
    assert!(c.validate().is_ok());
    // Only uds.path given: the default bind is dropped, not an error.
    let loaded = ConfigLoader::new()
        .env_vars(env(&[("RON_TRANSPORT_UDS_PATH", sock_s)]))
        .load()
        .unwrap();
    assert_eq!(loaded.config.bind_addr, None);
    // Explicitly cleared bind + uds: fine.
    let loaded = ConfigLoader::new()
        .toml_str(format!("bind_addr = \"\"\n[uds]\npath = \"{sock_s}\""))
        .load()
        .unwrap();
    assert_eq!(loaded.config.uds_path.as_deref(), Some(sock.as_path()));
}

#[test]
fn config_per_peer_values_negative_or_overflowing_are_rejected() {
    for (doc, key) in [
        ("[per_peer]\nmax_conns = -1", "per_peer.max_conns"),
        ("[per_peer]\nmax_conns = 4294967296", "per_peer.max_conns"),
        ("[per_peer]\nmax_conns = \"-3\"", "per_peer.max_conns"),
        (
            "[rates]\nper_peer_bytes_per_sec = -5",
            "rates.per_peer_bytes_per_sec",
        ),
        (
            "[rates]\nper_peer_bytes_per_sec = \"-5KiB\"",
            "rates.per_peer_bytes_per_sec",
        ),
        (
            "[rates]\nper_peer_bytes_per_sec = \"18446744073709551616\"",
            "rates.per_peer_bytes_per_sec",
        ),
        (
            "[rates]\nper_peer_bytes_per_sec = \"17592186044416MiB\"",
            "rates.per_peer_bytes_per_sec",
        ),
        (
            "[rates]\nper_conn_bytes_per_sec = -1",
            "rates.per_conn_bytes_per_sec",
        ),
    ] {
        let err = ConfigLoader::new().toml_str(doc).load().unwrap_err();
        assert_eq!(
            (err.kind(), err.key()),
            ("parse", Some(key)),
            "{doc}: {err}"
        );
    }
    for (var, value) in [
        ("RON_TRANSPORT_PER_PEER_MAX_CONNS", "-1"),
        ("RON_TRANSPORT_PER_PEER_MAX_CONNS", "99999999999"),
        ("RON_TRANSPORT_PER_PEER_BPS", "-1"),
        ("RON_TRANSPORT_PER_PEER_BPS", "99999999999999999999999"),
    ] {
        let err = ConfigLoader::new()
            .env_vars(env(&[(var, value)]))
            .load()
            .unwrap_err();
        assert_eq!(err.key(), Some(var), "{var}={value}");
    }
    // The largest representable values are accepted (0 disables, max is "effectively none").
    let ok = ConfigLoader::new()
        .toml_str(
            "[per_peer]\nmax_conns = 4294967295\n[rates]\nper_peer_bytes_per_sec = \"16777215MiB\"",
        )
        .load()
        .unwrap();
    assert_eq!(ok.config.per_peer_max_conns, u32::MAX);
}

#[test]
fn config_arti_knobs_with_non_arti_backend_are_ignored() {
    for backend in ["tcp", "tls"] {
        let doc = format!(
            "backend = \"{backend}\"\n[arti]\nbootstrap_timeout = \"0s\"\npre_dial_delay = \"10h\""
        );
        let loaded = ConfigLoader::new().toml_str(doc).load().unwrap();
        assert_eq!(loaded.config.arti_bootstrap_timeout, Duration::ZERO);
    }
    // With the Arti backend the same knob is checked.
    let mut c = Config::default();
    c.backend = Backend::Arti;
    c.arti_bootstrap_timeout = Duration::ZERO;
    assert_invalid(c.validate_for(&ALL), "arti.bootstrap_timeout");
}

// ---- other §4 rules -------------------------------------------------------------------------

#[test]
fn config_timeouts_must_be_positive_and_idle_at_least_one_second() {
    let mut c = Config::default();
    c.read_timeout = Duration::ZERO;
    assert_invalid(c.clone().validate(), "read_timeout");
    c.read_timeout = Duration::from_millis(1);
    c.write_timeout = Duration::ZERO;
    assert_invalid(c.clone().validate(), "write_timeout");
    c.write_timeout = Duration::from_millis(1);
    c.idle_timeout = Duration::from_millis(999);
    assert_invalid(c.clone().validate(), "idle_timeout");
    c.idle_timeout = Duration::from_secs(1);
    assert!(c.validate().is_ok());
}

#[test]
fn config_trust_store_path_needs_a_readable_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.tls_client_trust_store = TrustStore::Path;
    assert_invalid(c.clone().validate(), "tls_client.ca_bundle_path");
    c.tls_client_ca_bundle = Some(dir.path().join("none.pem"));
    assert_invalid(c.clone().validate(), "tls_client.ca_bundle_path");
    let not_pem = dir.path().join("ca.txt");
    write_mode(&not_pem, b"hello", 0o644);
    c.tls_client_ca_bundle = Some(not_pem);
    assert_invalid(c.clone().validate(), "tls_client.ca_bundle_path");
    let (cert, _) = tls_files(dir.path(), 0o600);
    c.tls_client_ca_bundle = Some(cert);
    assert!(c.validate().is_ok());
}

#[test]
fn config_uds_parent_directory_must_exist_and_be_0700() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.bind_addr = None;
    c.uds_path = Some(dir.path().join("missing/t.sock"));
    assert_invalid(c.clone().validate(), "uds.path");
    c.uds_path = Some(dir.path().join("t.sock"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let reason = assert_invalid(c.clone().validate(), "uds.path");
    assert!(reason.contains("0700"), "{reason}");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(c.clone().validate().is_ok());
    c.uds_path = Some(dir.path().join("x".repeat(120)));
    assert_invalid(c.validate(), "uds.path");
}

#[test]
fn config_tls_with_uds_path_is_rejected_naming_uds_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let (cert, key) = tls_files(dir.path(), 0o600);
    let mut c = tls_config(Some(cert), Some(key));
    c.bind_addr = None;
    assert!(c.clone().validate().is_ok(), "tls alone is valid");
    c.uds_path = Some(dir.path().join("t.sock"));
    let reason = assert_invalid(c.clone().validate(), "uds.path");
    assert!(reason.contains("TLS"), "{reason}");
    c.tls_enabled = false;
    c.backend = Backend::Tcp;
    assert!(c.validate().is_ok(), "plain uds is valid");
}

#[test]
fn config_macaroon_must_exist_be_non_empty_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("macaroon");
    let mut c = Config::default();
    c.macaroon_path = Some(token.clone());
    assert_invalid(c.clone().validate(), "auth.macaroon_path");
    write_mode(&token, b"", 0o600);
    assert_invalid(c.clone().validate(), "auth.macaroon_path");
    write_mode(&token, b"MDAxY2xvY2F0aW9u-secret-token", 0o644);
    let reason = assert_invalid(c.clone().validate(), "auth.macaroon_path");
    assert!(!reason.contains("secret-token"));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(c.validate().is_ok());
}

#[test]
fn config_log_format_and_level_are_enumerated() {
    let mut c = Config::default();
    c.log_format = "xml".into();
    assert_invalid(c.clone().validate(), "log.format");
    c.log_format = "text".into();
    c.log_level = "verbose".into();
    assert_invalid(c.clone().validate(), "log.level");
    for level in ["trace", "debug", "info", "warn", "error"] {
        c.log_level = level.into();
        assert!(c.clone().validate().is_ok(), "{level}");
    }
}

#[test]
fn config_tls_needs_the_tls_feature() {
    let mut c = Config::default();
    c.backend = Backend::Tls;
    let no_tls = CompiledFeatures { tls: false, ..ALL };
    assert_invalid(c.clone().validate_for(&no_tls), "backend");
    assert!(c.validate_for(&ALL).is_ok());
}

// ---- §5 reload ------------------------------------------------------------------------------

/// Captures formatted tracing output for the duration of a closure.
fn capture_logs<R>(f: impl FnOnce() -> R) -> (R, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let r = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (r, text)
}

#[test]
fn config_reload_hot_swaps_live_keys_and_flags_rebind_keys() {
    let handle = ConfigHandle::new(ValidConfig::defaults());
    let reader = handle.clone();
    let mut rx = handle.subscribe();
    assert_eq!(handle.generation(), 0);

    // Live: timeouts, limits, rates, caps, log, TLS client options.
    let mut next = Config::default();
    next.read_timeout = Duration::from_secs(2);
    next.global_egress_bytes_per_sec = 8 << 20;
    next.per_peer_max_conns = 8;
    next.log_level = "debug".into();
    next.tls_client_alpn = vec!["h2".into()];
    let report = handle.reload(next.clone()).unwrap();
    assert_eq!(
        report.changed_keys(),
        [
            "read_timeout",
            "rates.global_egress_bytes_per_sec",
            "per_peer.max_conns",
            "tls_client.alpn",
            "log.level"
        ]
    );
    assert!(!report.needs_rebind());
    assert!(report.changed.iter().all(|c| c.class == ReloadClass::Live));
    assert_eq!(report.generation, 1);
    assert_eq!(handle.generation(), 1);
    // Every clone sees the new snapshot, and so does a subscriber.
    assert_eq!(**reader.load(), next);
    assert!(rx.has_changed().unwrap());
    assert_eq!(***rx.borrow_and_update(), next);
    let rate = report
        .changed
        .iter()
        .find(|c| c.key == Key::GlobalEgressBps)
        .unwrap();
    assert_ne!(rate.old, rate.new);

    // Rebind: bind address, backend, server TLS.
    let mut next2 = next.clone();
    next2.bind_addr = Some("0.0.0.0:9444".parse().unwrap());
    next2.max_conns = 10;
    let report = handle.reload(next2.clone()).unwrap();
    assert!(report.needs_rebind());
    assert_eq!(report.rebind_keys(), ["bind_addr"]);
    assert_eq!(report.live_keys(), ["max_conns"]);
    assert_eq!(handle.generation(), 2);
    for key in [
        Key::Backend,
        Key::BindAddr,
        Key::ChunkBytes,
        Key::Amnesia,
        Key::UdsPath,
        Key::TlsEnabled,
        Key::TlsCertPath,
        Key::TlsKeyPath,
    ] {
        assert_eq!(key.reload_class(), ReloadClass::Rebind, "{key:?}");
    }

    // Unchanged: no swap, no generation bump, subscribers not woken.
    let report = handle.reload(next2.clone()).unwrap();
    assert!(report.is_unchanged());
    assert_eq!((report.generation, handle.generation()), (2, 2));
    rx.borrow_and_update();
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn config_failed_reload_keeps_the_last_good_snapshot_and_logs_a_structured_error() {
    let handle = ConfigHandle::new(ValidConfig::defaults());
    let before = handle.load();
    let rx = handle.subscribe();
    let mut bad = Config::default();
    bad.max_frame_bytes = 2 << 20;
    bad.read_timeout = Duration::from_secs(1);
    let (r, logs) = capture_logs(|| handle.reload(bad));
    let err = r.unwrap_err();
    assert_eq!(err.key(), Some("limits.max_frame_bytes"));
    assert_eq!(handle.generation(), 0);
    assert!(
        Arc::ptr_eq(&before, &handle.load()),
        "snapshot must not be swapped"
    );
    assert!(!rx.has_changed().unwrap());
    assert!(logs.contains("reload rejected"), "{logs}");
    assert!(logs.contains("limits.max_frame_bytes"), "{logs}");

    // Hybrid PQ on reload without the feature: same.
    let mut hybrid = Config::default();
    hybrid.pq_mode = PqMode::Hybrid;
    let err = handle.reload_for(hybrid, &NO_PQ).unwrap_err();
    assert_eq!(err.key(), Some("pq.mode"));
    assert_eq!(handle.generation(), 0);
}

#[test]
fn config_reload_log_has_a_structured_diff_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls_files(dir.path(), 0o600);
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let handle = ConfigHandle::new(ValidConfig::defaults());
    let mut next = tls_config(Some(cert), Some(key.clone()));
    next.tls_client_sni = Some("secret-sni.example".into());
    next.idle_timeout = Duration::from_secs(30);
    let (report, logs) = capture_logs(|| handle.reload(next).unwrap());
    assert!(report.needs_rebind());
    let key_change = report
        .changed
        .iter()
        .find(|c| c.key == Key::TlsKeyPath)
        .unwrap();
    assert_eq!(key_change.new, "<redacted>");
    assert!(logs.contains("transport config reloaded"), "{logs}");
    assert!(
        logs.contains("idle_timeout \"1m\" -> \"30s\" (live)"),
        "{logs}"
    );
    assert!(
        logs.contains("tls.enabled \"false\" -> \"true\" (rebind)"),
        "{logs}"
    );
    assert!(
        logs.contains("tls.key_path \"<unset>\" -> \"<redacted>\" (rebind)"),
        "{logs}"
    );
    assert!(logs.contains("needs_rebind=true"), "{logs}");
    let key_body = key_pem.lines().nth(1).unwrap();
    for secret in [key.to_str().unwrap(), key_body, "secret-sni"] {
        assert!(!logs.contains(secret), "log leaks {secret:?}: {logs}");
        assert!(!report.to_string().contains(secret));
    }
}

#[test]
fn config_reload_recomputes_from_the_same_sources() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("transport.toml");
    std::fs::write(&file, "max_conns = 100\nread_timeout = \"3s\"").unwrap();
    let loader = ConfigLoader::new()
        .file(&file)
        .env_vars(env(&[("RON_TRANSPORT_READ_TIMEOUT", "4s")]));
    let handle = ConfigHandle::new(loader.load().unwrap().config);
    assert_eq!(
        (handle.load().max_conns, handle.load().read_timeout),
        (100, Duration::from_secs(4))
    );
    // The file changes (SIGHUP in the consumer): env still wins for read_timeout.
    std::fs::write(&file, "max_conns = 200\nread_timeout = \"9s\"").unwrap();
    let report = handle.reload(loader.merge().unwrap().config).unwrap();
    assert_eq!(report.changed_keys(), ["max_conns"]);
    assert_eq!(handle.load().max_conns, 200);
    // A broken file: the error names the file and the old snapshot stays.
    std::fs::write(&file, "max_conns = 0").unwrap();
    let err = handle.reload(loader.merge().unwrap().config).unwrap_err();
    assert_eq!(err.key(), Some("max_conns"));
    assert_eq!(handle.load().max_conns, 200);
}

#[tokio::test]
async fn config_subscribers_are_woken_by_a_swap() {
    let handle = ConfigHandle::new(ValidConfig::defaults());
    let mut rx = handle.subscribe();
    let waiter = tokio::spawn(async move {
        rx.changed().await.unwrap();
        rx.borrow().per_conn_bytes_per_sec
    });
    let mut next = Config::default();
    next.per_conn_bytes_per_sec = 1 << 20;
    handle.reload(next).unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, 1 << 20);
}

#[test]
fn config_concurrent_reloads_have_distinct_generations() {
    let handle = ConfigHandle::new(ValidConfig::defaults());
    let threads: Vec<_> = (1..=8u32)
        .map(|i| {
            let h = handle.clone();
            std::thread::spawn(move || {
                let mut c = Config::default();
                c.max_conns = 1000 + i;
                h.reload(c).unwrap().generation
            })
        })
        .collect();
    let mut gens: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    gens.sort_unstable();
    assert_eq!(gens, (1..=8).collect::<Vec<u64>>());
    assert_eq!(handle.generation(), 8);
}

#[test]
fn config_quic_backend_needs_the_quic_feature() {
    let mut c = Config::default();
    c.backend = Backend::Quic;
    assert!(c.clone().validate_for(&ALL).is_ok());
    let without = CompiledFeatures { quic: false, ..ALL };
    let reason = assert_invalid(c.clone().validate_for(&without), "backend");
    assert!(reason.contains("quic"), "{reason}");
    assert_eq!(c.validate().is_ok(), cfg!(feature = "quic"));
    assert_eq!("quic".parse::<Backend>().unwrap(), Backend::Quic);
    assert_eq!(Backend::Quic.as_str(), "quic");
}

#[test]
fn config_quic_defaults_follow_the_spec() {
    let c = Config::default();
    assert_eq!(c.quic_max_streams, 512);
    assert!(!c.quic_zero_rtt, "0-RTT off by default");
    assert_eq!(c.quic_congestion, ron_transport::Congestion::Cubic);
    assert!(c.quic_gso && c.quic_gro);
    assert_eq!(c.quic_idle_timeout, Duration::from_secs(30));
    assert_eq!(c.quic_keep_alive, Duration::ZERO);
}

#[test]
fn config_quic_bad_values_are_typed_errors() {
    let quic = |toml: &str| {
        Config::from_toml_str(&format!("backend = \"quic\"\n[quic]\n{toml}"))
            .and_then(|c| c.validate_for(&ALL))
    };
    for (toml, key) in [
        ("max_streams = 0", "quic.max_streams"),
        ("max_streams = 65537", "quic.max_streams"),
        ("idle_timeout = \"500ms\"", "quic.idle_timeout"),
        ("idle_timeout = \"11m\"", "quic.idle_timeout"),
        (
            "idle_timeout = \"10s\"\nkeep_alive = \"10s\"",
            "quic.keep_alive",
        ),
    ] {
        let err = quic(toml).unwrap_err();
        assert_eq!(err.kind(), "invalid", "{toml}: {err}");
        assert_eq!(err.key(), Some(key), "{toml}: {err}");
    }
    for (toml, key) in [
        ("congestion = \"vegas\"", "quic.congestion"),
        ("zero_rtt = \"maybe\"", "quic.zero_rtt"),
        ("gso = 1", "quic.gso"),
        ("max_streams = -1", "quic.max_streams"),
        ("unknown = 1", "quic.unknown"),
    ] {
        let err = quic(toml).unwrap_err();
        assert!(
            matches!(err.kind(), "parse" | "unknown_key"),
            "{toml}: {err}"
        );
        assert_eq!(err.key(), Some(key), "{toml}: {err}");
    }
    // Env and CLI spellings parse the same values.
    let err = ConfigLoader::new()
        .env_vars(env(&[("RON_TRANSPORT_QUIC_CONGESTION", "reno")]))
        .load()
        .unwrap_err();
    assert_eq!(err.key(), Some("RON_TRANSPORT_QUIC_CONGESTION"));
    // Good values pass; the knobs are ignored (not checked) with another backend.
    assert!(quic("max_streams = 1024\nkeep_alive = \"5s\"\ncongestion = \"newreno\"").is_ok());
    let tcp = Config::from_toml_str("[quic]\nmax_streams = 0").unwrap();
    assert!(tcp.validate_for(&ALL).is_ok());
}

#[test]
fn config_quic_with_uds_path_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut c = Config::default();
    c.backend = Backend::Quic;
    c.bind_addr = None;
    c.uds_path = Some(dir.path().join("s.sock"));
    assert_invalid(c.validate_for(&ALL), "uds.path");
}
