//! The Arti backend without any network: configuration, readiness of a client that cannot (or
//! may not) bootstrap, fail-fast dials, storage permissions, amnesia's directory and offline
//! onion identities. Arti is pointed at a made-up network on 127.0.0.1:1 (nothing listens), so
//! no test ever tries to reach the real Tor network.
#![cfg(feature = "arti")]

mod util;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ron_transport::arti::{ArtiEngine, ArtiOptions, ArtiSetup, REASON_ARTI_BOOTSTRAP};
use ron_transport::config::{Backend, CompiledFeatures};
use ron_transport::engine::DialOptions;
use ron_transport::{
    Config, Engine, Readiness, ReadyState, RejectReason, TransportError, TransportHealth,
    TransportMetrics,
};

/// A network nobody runs: one fake authority, one fallback on a closed loopback port.
const NOWHERE: &str = r#"
[tor_network]
fallback_caches = [
  { rsa_identity = "0000000000000000000000000000000000000001", ed_identity = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", orports = ["127.0.0.1:1"] },
]
[tor_network.authorities]
v3idents = ["0000000000000000000000000000000000000002"]
"#;

fn arti_config(boot_timeout: Duration) -> ron_transport::ValidConfig {
    let mut c = Config::default();
    c.backend = Backend::Arti;
    c.arti_bootstrap_timeout = boot_timeout;
    c.validate()
        .expect("arti config validates with the feature")
}

fn private_tempdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    set_mode(d.path(), 0o700);
    d
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn options(dir: &Path, bootstrap: bool) -> ArtiOptions {
    ArtiOptions {
        state_dir: Some(dir.join("state")),
        cache_dir: Some(dir.join("cache")),
        tor_config_toml: Some(NOWHERE.to_owned()),
        bootstrap,
        ..ArtiOptions::default()
    }
}

fn build(
    cfg: ron_transport::ValidConfig,
    opts: ArtiOptions,
    metrics: Arc<TransportMetrics>,
    readiness: Readiness,
) -> Result<ArtiEngine, TransportError> {
    ArtiSetup::new(cfg, metrics)?
        .with_options(opts)
        .with_readiness(readiness)
        .build()
}

#[test]
fn arti_config_validation_follows_the_feature() {
    let mut c = Config::default();
    c.backend = Backend::Arti;
    assert!(
        c.clone().validate().is_ok(),
        "this build has the arti feature"
    );
    let without = CompiledFeatures {
        arti: false,
        ..CompiledFeatures::current()
    };
    let err = c.clone().validate_for(&without).unwrap_err();
    assert_eq!(err.key(), Some("backend"));
    assert!(err.to_string().contains("`arti` feature"), "{err}");
    let mut zero = c.clone();
    zero.arti_bootstrap_timeout = Duration::ZERO;
    assert_eq!(
        zero.validate().unwrap_err().key(),
        Some("arti.bootstrap_timeout")
    );
    // The same knobs are ignored with another backend.
    let mut tcp = Config::default();
    tcp.arti_bootstrap_timeout = Duration::ZERO;
    assert!(tcp.validate().is_ok());
    // The socket engines refuse the arti backend; the arti engine refuses the others.
    let metrics = TransportMetrics::new();
    let err = ron_transport::engine::setup::EngineSetup::new(
        c.clone().validate().unwrap(),
        metrics.clone(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), "unsupported");
    let err = ArtiSetup::new(Config::default().validate().unwrap(), metrics).unwrap_err();
    assert_eq!(err.kind(), "unsupported");
}

/// A Manual client nobody told to bootstrap: Degraded("arti_bootstrap") at once, Arti reports
/// it is disabled and not ready, and after `arti.bootstrap_timeout` readiness is
/// NotReady("arti_bootstrap") — one event per transition.
#[test]
fn manual_client_is_not_ready_and_times_out() {
    util::run_multi_thread(async {
        let dir = private_tempdir();
        let readiness = Readiness::new("arti-test", ReadyState::NotReady { reason: "starting" });
        let mut rx = readiness.subscribe();
        rx.mark_unchanged();
        let metrics = TransportMetrics::new();
        let t0 = Instant::now();
        let engine = build(
            arti_config(Duration::from_millis(800)),
            options(dir.path(), false),
            metrics.clone(),
            readiness.clone(),
        )
        .expect("engine");
        println!("manual client created in {:?}", t0.elapsed());
        assert_eq!(
            engine.readiness(),
            ReadyState::Degraded {
                reason: REASON_ARTI_BOOTSTRAP
            }
        );
        let status = engine.status().await;
        assert!(!status.ready_for_traffic);
        let blockage = status.blockage.unwrap_or_default();
        assert!(blockage.contains("disabled"), "{blockage}");
        // The side runtime is a thread of its own.
        assert_ne!(engine.runtime_thread(), std::thread::current().id());
        util::wait_until(
            "NotReady after the bootstrap timeout",
            Duration::from_secs(5),
            || {
                engine.readiness()
                    == ReadyState::NotReady {
                        reason: REASON_ARTI_BOOTSTRAP,
                    }
            },
        )
        .await;
        assert!(t0.elapsed() >= Duration::from_millis(800));
        // Exactly two transitions: starting → Degraded → NotReady.
        let mut seen = Vec::new();
        while rx.has_changed().unwrap_or(false) {
            seen.push(rx.borrow_and_update().clone());
        }
        assert_eq!(
            seen.last(),
            Some(&ReadyState::NotReady {
                reason: REASON_ARTI_BOOTSTRAP
            })
        );
        // Listening needs a client that was told to bootstrap.
        let err = engine
            .listen("0.0.0.0:80".parse::<std::net::SocketAddr>().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::ArtiBootstrap), "{err:?}");
        engine.shutdown(Duration::from_secs(1)).await;
        assert_eq!(
            engine.readiness(),
            ReadyState::NotReady { reason: "shutdown" }
        );
    });
}

/// Bootstrapping against a network that does not answer: a dial fails at once with
/// `ArtiBootstrap` (well within its deadline), counted as a reject and a failed dial.
#[test]
fn dial_before_bootstrap_fails_fast() {
    util::run_current_thread(async {
        let dir = private_tempdir();
        let metrics = TransportMetrics::new();
        let engine = build(
            arti_config(Duration::from_secs(30)),
            options(dir.path(), true),
            metrics.clone(),
            Readiness::new("arti-test", ReadyState::Ready),
        )
        .expect("engine");
        assert_eq!(engine.readiness().reason(), Some(REASON_ARTI_BOOTSTRAP));
        let opts = DialOptions {
            deadline: Duration::from_secs(3),
            ..DialOptions::default()
        };
        for target in ["127.0.0.1:9", "example.com:443"] {
            let t0 = Instant::now();
            let err = match target.parse::<std::net::SocketAddr>() {
                Ok(addr) => engine.dial(addr, opts.clone()).await.map(drop),
                Err(_) => engine.dial_host(target, opts.clone()).await.map(drop),
            }
            .unwrap_err();
            let took = t0.elapsed();
            assert!(matches!(err, TransportError::ArtiBootstrap), "{err:?}");
            assert_eq!(err.kind(), "arti_bootstrap");
            assert!(
                took < Duration::from_millis(200),
                "fail fast, took {took:?}"
            );
        }
        let onion = format!("{}.onion:80", "a".repeat(56));
        assert!(matches!(
            engine.dial_host(&onion, opts.clone()).await.map(drop),
            Err(TransportError::ArtiBootstrap)
        ));
        assert_eq!(metrics.rejected_count(RejectReason::ArtiBootstrap), 3);
        let bm = metrics.backend(Backend::Arti);
        assert_eq!((bm.dials_ok.get(), bm.dials_err.get()), (0, 3));
        let rendered = metrics.render();
        assert!(
            rendered.contains("rejected_total{reason=\"arti_bootstrap\"} 3"),
            "{rendered}"
        );
        engine.shutdown(Duration::from_secs(1)).await;
    });
}

#[test]
fn world_writable_state_dir_is_refused() {
    let dir = private_tempdir();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    set_mode(&state, 0o777);
    let readiness = Readiness::new("arti-test", ReadyState::Ready);
    let err = build(
        arti_config(Duration::from_secs(30)),
        options(dir.path(), false),
        TransportMetrics::new(),
        readiness.clone(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, TransportError::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied),
        "{err:?}"
    );
    assert!(text.contains("0777") && text.contains("state"), "{text}");
    assert_eq!(readiness.readiness().reason(), Some(REASON_ARTI_BOOTSTRAP));
    assert_eq!(readiness.readiness().label(), "not_ready");
    // Group-writable too; 0700 passes.
    set_mode(&state, 0o770);
    assert!(build(
        arti_config(Duration::from_secs(30)),
        options(dir.path(), false),
        TransportMetrics::new(),
        readiness.clone()
    )
    .is_err());
    set_mode(&state, 0o700);
    let ok = build(
        arti_config(Duration::from_secs(30)),
        options(dir.path(), false),
        TransportMetrics::new(),
        readiness,
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
}

fn assert_onion(addr: &str) {
    let host = addr.strip_suffix(".onion").expect(".onion suffix");
    assert_eq!(host.len(), 56, "{addr}");
    assert!(
        host.bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)),
        "base32: {addr}"
    );
    assert!(
        host.ends_with('d'),
        "v3 addresses end in 'd' (version 3): {addr}"
    );
}

/// An onion identity is generated with no network; with the native keystore it persists and
/// the service launched later has the same address.
#[test]
fn offline_onion_identity() {
    util::run_multi_thread(async {
        let dir = private_tempdir();
        let engine = build(
            arti_config(Duration::from_secs(30)),
            options(dir.path(), false),
            TransportMetrics::new(),
            Readiness::new("arti-test", ReadyState::Ready),
        )
        .expect("engine");
        let a = engine.onion_identity("svc").await.expect("identity");
        assert_onion(&a);
        assert_eq!(engine.onion_identity("svc").await.unwrap(), a, "stable");
        let b = engine.onion_identity("other").await.unwrap();
        assert_onion(&b);
        assert_ne!(a, b);
        assert!(dir.path().join("state/keystore").is_dir());
        // Launching needs bootstrap to have started (it has nowhere to go here, which is fine:
        // the service publishes once Arti is bootstrapped); the address is the stored one.
        engine.start_bootstrap();
        let listener = engine.listen_onion("svc", 80).await.expect("launch");
        assert_eq!(listener.onion_address(), a);
        assert_eq!(listener.onion_target(), format!("{a}:80"));
        drop(listener);
        engine.shutdown(Duration::from_secs(2)).await;
        // A new client over the same state directory finds the same key.
        let again = build(
            arti_config(Duration::from_secs(30)),
            options(dir.path(), false),
            TransportMetrics::new(),
            Readiness::new("arti-test", ReadyState::Ready),
        )
        .expect("engine");
        assert_eq!(again.onion_identity("svc").await.unwrap(), a);
        again.shutdown(Duration::from_secs(2)).await;
    });
}

/// Amnesia: a private 0700 directory on tmpfs while running, gone after shutdown; a root that
/// is not RAM-backed is refused.
#[test]
fn amnesia_dir_is_private_tmpfs_and_removed() {
    util::run_multi_thread(async {
        let mut c = Config::default();
        c.backend = Backend::Arti;
        c.amnesia = true;
        let cfg = c.validate().unwrap();
        let engine = match ArtiSetup::new(cfg.clone(), TransportMetrics::new())
            .unwrap()
            .with_options(ArtiOptions {
                tor_config_toml: Some(NOWHERE.to_owned()),
                ..ArtiOptions::default()
            })
            .build()
        {
            Ok(e) => e,
            Err(TransportError::Unsupported { what }) if what.contains("RAM-backed") => {
                println!("SKIPPED amnesia_dir_is_private_tmpfs_and_removed: {what}");
                return;
            }
            Err(e) => panic!("{e:?}"),
        };
        let dir = engine.amnesia_dir().expect("amnesia dir");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            mounts.lines().any(|l| {
                let mp = l.split(' ').nth(4).unwrap_or("");
                dir.starts_with(mp) && mp != "/" && l.contains(" - tmpfs ")
            }),
            "{} is on tmpfs",
            dir.display()
        );
        // Arti wrote its cache there (and nowhere else it was told about).
        util::wait_until(
            "arti cache in the amnesia dir",
            Duration::from_secs(5),
            || {
                dir.join("cache")
                    .read_dir()
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false)
            },
        )
        .await;
        // Keys are ephemeral: no keystore directory.
        let _ = engine.onion_identity("svc").await.expect("identity");
        assert!(!dir.join("state/keystore").exists());
        engine.shutdown(Duration::from_secs(2)).await;
        assert!(!dir.exists(), "{} removed at shutdown", dir.display());

        // A disk-backed root is refused (fail closed).
        let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let err = ArtiSetup::new(cfg, TransportMetrics::new())
            .unwrap()
            .with_options(ArtiOptions {
                amnesia_root: Some(disk.path().to_path_buf()),
                tor_config_toml: Some(NOWHERE.to_owned()),
                ..ArtiOptions::default()
            })
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("RAM-backed"), "{err}");
    });
}

/// Dropping the last engine handle (no shutdown) also stops the side runtime and removes the
/// amnesia directory.
#[test]
fn drop_stops_the_side_runtime() {
    let mut c = Config::default();
    c.backend = Backend::Arti;
    c.amnesia = true;
    let engine = match ArtiSetup::new(c.validate().unwrap(), TransportMetrics::new())
        .unwrap()
        .with_options(ArtiOptions {
            tor_config_toml: Some(NOWHERE.to_owned()),
            ..ArtiOptions::default()
        })
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            println!("SKIPPED drop_stops_the_side_runtime: {e}");
            return;
        }
    };
    let dir = engine.amnesia_dir().unwrap();
    assert!(dir.exists());
    drop(engine);
    assert!(!dir.exists());
}

#[test]
fn bad_arti_toml_names_the_option() {
    let dir = private_tempdir();
    let mut opts = options(dir.path(), false);
    opts.tor_config_toml = Some("[tor_network\n".into());
    let err = build(
        arti_config(Duration::from_secs(30)),
        opts.clone(),
        TransportMetrics::new(),
        Readiness::new("arti-test", ReadyState::Ready),
    )
    .unwrap_err();
    assert!(err.to_string().contains("arti.tor_config"), "{err}");
    // Custom authorities without fallbacks: Arti's own consistency rule.
    opts.tor_config_toml = Some(
        "[tor_network.authorities]\nv3idents = [\"0000000000000000000000000000000000000002\"]\n"
            .into(),
    );
    let err = build(
        arti_config(Duration::from_secs(30)),
        opts,
        TransportMetrics::new(),
        Readiness::new("arti-test", ReadyState::Ready),
    )
    .unwrap_err();
    assert!(err.to_string().contains("fallback"), "{err}");
}

/// `arti.bootstrap_timeout` is live: reloaded on an engine that never bootstraps (manual
/// client), readiness turns `NotReady{arti_bootstrap}` once the new, shorter bound has passed
/// (the old one, 300 s, would keep it `Degraded`).
#[test]
fn reload_of_bootstrap_timeout_reaches_readiness() {
    util::run_multi_thread(async {
        let dir = private_tempdir();
        let handle = ron_transport::ConfigHandle::new(arti_config(Duration::from_secs(300)));
        let engine = ArtiSetup::from_handle(handle.clone(), TransportMetrics::new())
            .expect("setup")
            .with_options(options(dir.path(), false))
            .build()
            .expect("arti engine");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            matches!(engine.readiness(), ReadyState::Degraded { .. }),
            "{:?}",
            engine.readiness()
        );
        let mut c = ron_transport::ValidConfig::clone(&handle.load()).into_inner();
        c.arti_bootstrap_timeout = Duration::from_millis(100);
        handle.reload(c).expect("reload");
        let t0 = Instant::now();
        while !matches!(engine.readiness(), ReadyState::NotReady { .. }) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{:?}",
                engine.readiness()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            engine.readiness(),
            ReadyState::NotReady {
                reason: "arti_bootstrap"
            }
        );
    });
}
