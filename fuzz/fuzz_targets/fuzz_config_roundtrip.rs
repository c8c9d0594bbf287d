//! Fuzz target `fuzz_config_roundtrip` (spec/TESTS.md §1.4, spec/CONFIG.md §11): arbitrary
//! bytes are parsed as TOML and as JSON; a parse must end in a typed `ConfigError` (with a key
//! where one applies) or a `Config`, never a panic. A parsed config is validated, formatted back
//! to TOML and JSON, and both re-parse to an equal `Config` (formatting is lossless).
//!
//! Path-valued keys are cleared before validation so the fuzzer cannot make validation open
//! arbitrary files (`/dev/zero`, `/proc/kmsg`); the filesystem checks are covered by the
//! `config_matrix` tests. The `tls.enabled` / `trust_store = "path"` rules still run and must
//! fail with a key.
#![no_main]

use ron_transport::config::{CompiledFeatures, Config, ConfigError};

fn check(parsed: Result<Config, ConfigError>) {
    let cfg = match parsed {
        Ok(cfg) => cfg,
        Err(e) => {
            // Every error renders; value and key errors name their key.
            let _ = e.to_string();
            if matches!(e.kind(), "invalid" | "parse" | "unknown_key") {
                assert!(e.key().is_some(), "{e:?} has no key");
            }
            return;
        }
    };

    let toml = cfg.to_toml_string();
    let back = Config::from_toml_str(&toml).unwrap_or_else(|e| panic!("re-parse TOML {toml:?}: {e}"));
    assert_eq!(back, cfg, "TOML round trip");
    let json = cfg.to_json_string();
    let back = Config::from_json_str(&json).unwrap_or_else(|e| panic!("re-parse JSON {json:?}: {e}"));
    assert_eq!(back, cfg, "JSON round trip");

    let mut sandboxed = cfg;
    sandboxed.tls_cert_path = None;
    sandboxed.tls_key_path = None;
    sandboxed.tls_client_ca_bundle = None;
    sandboxed.uds_path = None;
    sandboxed.macaroon_path = None;
    for features in [
        CompiledFeatures::current(),
        CompiledFeatures { tls: true, pq: false, arti: true, quic: true },
    ] {
        match sandboxed.clone().validate_for(&features) {
            Ok(valid) => {
                // A valid config stays valid through a format/parse trip.
                let again = Config::from_toml_str(&valid.to_toml_string()).expect("valid config re-parses");
                assert!(again.validate_for(&features).is_ok());
            }
            Err(e) => assert!(e.key().is_some(), "validation error without a key: {e:?}"),
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(Config::from_toml_str(text));
    check(Config::from_json_str(text));
});
