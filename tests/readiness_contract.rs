//! Readiness contract (spec/IDB I-14, spec/OBSERVABILITY §2) on both socket engines: `Ready`
//! once built, `NotReady{bind_failed}` when a listen cannot bind, `NotReady{tls_config_missing}`
//! when a TLS backend has no server config, `NotReady{shutdown}` after shutdown — the same
//! transitions on tokio and uring. A snapshot freezes the reason strings.

mod util;

use std::time::Duration;

use ron_shard::RuntimeConfig;
use ron_transport::config::Backend;
use ron_transport::engine::auto::AutoEngine;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::{Conn as _, Listener as _};
use ron_transport::readiness::reasons;
use ron_transport::{
    Config, Engine, Readiness, ReadyState, TransportHealth, TransportMetrics, ValidConfig,
};

#[test]
fn readiness_reason_strings_are_frozen() {
    // Changing one of these is a breaking change of the observability contract.
    assert_eq!(reasons::BIND_FAILED, "bind_failed");
    assert_eq!(reasons::TLS_CONFIG_MISSING, "tls_config_missing");
    assert_eq!(reasons::SHUTDOWN, "shutdown");
    assert_eq!(reasons::ARTI_BOOTSTRAP, "arti_bootstrap");
    assert_eq!(reasons::SHARD_DEAD, "shard_dead");
    assert_eq!(
        reasons::ALL,
        [
            "bind_failed",
            "tls_config_missing",
            "shutdown",
            "arti_bootstrap",
            "shard_dead"
        ]
    );
    #[cfg(feature = "arti")]
    assert_eq!(
        ron_transport::arti::REASON_ARTI_BOOTSTRAP,
        reasons::ARTI_BOOTSTRAP
    );
}

fn build(uring: bool, cfg: ValidConfig, readiness: &Readiness) -> AutoEngine {
    let setup = EngineSetup::new(cfg, TransportMetrics::new())
        .unwrap()
        .with_readiness(readiness.clone());
    if uring {
        AutoEngine::Uring(
            setup
                .build_uring_with(RuntimeConfig {
                    shards: 1,
                    pin: false,
                    buf_entries: 64,
                    ..RuntimeConfig::default()
                })
                .expect("uring engine (io_uring usable here)"),
        )
    } else {
        AutoEngine::Tokio(setup.build_tokio().unwrap())
    }
}

/// Every transition the engine published, in order (from the readiness watch channel).
async fn transitions(uring: bool) -> Vec<ReadyState> {
    let readiness = Readiness::new("test", ReadyState::NotReady { reason: "starting" });
    let mut rx = readiness.subscribe();
    let mut seen = Vec::new();
    let mut record = |rx: &mut tokio::sync::watch::Receiver<ReadyState>| {
        if rx.has_changed().unwrap() {
            seen.push(rx.borrow_and_update().clone());
        }
    };

    // Ready once built.
    let engine = build(uring, ValidConfig::defaults(), &readiness);
    record(&mut rx);
    assert_eq!(engine.readiness(), ReadyState::Ready);

    // A listen that cannot bind: the address is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = engine
        .listen(taken.local_addr().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "io", "{err}");
    record(&mut rx);
    assert_eq!(
        engine.readiness(),
        ReadyState::NotReady {
            reason: reasons::BIND_FAILED
        }
    );
    engine.shutdown(Duration::from_millis(100)).await;
    record(&mut rx);

    // A TLS backend without a server config.
    let readiness2 = Readiness::new("test2", ReadyState::NotReady { reason: "starting" });
    let mut rx2 = readiness2.subscribe();
    let mut c = Config::default();
    c.backend = Backend::Tls;
    let tls = build(uring, c.validate().unwrap(), &readiness2);
    rx2.mark_unchanged();
    let err = tls.listen(util::loopback()).await.unwrap_err();
    assert_eq!(err.kind(), "config", "{err}");
    assert!(rx2.has_changed().unwrap());
    seen.push(rx2.borrow_and_update().clone());
    tls.shutdown(Duration::from_millis(100)).await;
    seen.push(rx2.borrow_and_update().clone());
    seen
}

#[test]
fn both_engines_make_the_same_transitions() {
    let mut by_engine = Vec::new();
    for uring in [false, true] {
        let mut seen = None;
        util::run_multi_thread(async {
            seen = Some(transitions(uring).await);
        });
        by_engine.push(seen.unwrap());
    }
    let want = vec![
        ReadyState::Ready,
        ReadyState::NotReady {
            reason: reasons::BIND_FAILED,
        },
        ReadyState::NotReady {
            reason: reasons::SHUTDOWN,
        },
        ReadyState::NotReady {
            reason: reasons::TLS_CONFIG_MISSING,
        },
        ReadyState::NotReady {
            reason: reasons::SHUTDOWN,
        },
    ];
    assert_eq!(by_engine[0], want, "tokio");
    assert_eq!(by_engine[1], want, "uring");
}

/// Issue 12 finding 2: a uring shard whose thread died makes the engine `Degraded("shard_dead")`
/// (it was `Ready` before, while the dead shard still attracted connections), and the engine
/// keeps serving on the live shard.
#[test]
fn a_dead_uring_shard_is_reported_degraded() {
    util::run_multi_thread(async {
        let readiness = Readiness::new("dead-shard", ReadyState::NotReady { reason: "starting" });
        let engine = EngineSetup::new(ValidConfig::defaults(), TransportMetrics::new())
            .unwrap()
            .with_readiness(readiness.clone())
            .build_uring_with(RuntimeConfig {
                shards: 2,
                pin: false,
                buf_entries: 64,
                ..RuntimeConfig::default()
            })
            .expect("uring engine (io_uring usable here)");
        assert_eq!(engine.readiness(), ReadyState::Ready);
        let listener = engine.listen(util::loopback()).await.unwrap();
        let addr = listener.local_addr();
        engine.inject_shard_panic(1).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while engine.readiness() == ReadyState::Ready {
            assert!(std::time::Instant::now() < deadline, "still Ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            engine.readiness(),
            ReadyState::Degraded {
                reason: reasons::SHARD_DEAD
            }
        );
        assert_eq!(readiness.readiness(), engine.readiness(), "published");
        // Dials and accepts go to the live shard.
        for i in 0..4u8 {
            let conn = engine
                .dial(addr, Default::default())
                .await
                .expect("dial on the live shard");
            conn.send(bytes::Bytes::from(vec![i; 8])).await.unwrap();
            drop(conn);
        }
        engine.shutdown(Duration::from_millis(100)).await;
    });
}
