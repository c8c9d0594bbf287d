//! Issue 11 item 3, "`bind_addr` drives the listener": a consumer that configures only through
//! the environment (`RON_TRANSPORT_BIND_ADDR`, read by `ConfigLoader::from_process_env`) listens
//! with `Engine::listen_configured()` and serves an echo, on the tokio and the uring engine,
//! without passing an address again. Without `bind_addr` (and `uds.path`) it is a config error
//! naming `bind_addr`. `Engine::config()` is the live snapshot.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use ron_shard::RuntimeConfig;
use ron_transport::config::ConfigLoader;
use ron_transport::engine::auto::AutoEngine;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::DialOptions;
use ron_transport::{
    Config, ConfigError, Conn, Engine, Listener, TransportError, TransportMetrics, ValidConfig,
};

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn build(uring: bool, cfg: ValidConfig) -> AutoEngine {
    let setup = EngineSetup::new(cfg, TransportMetrics::new()).unwrap();
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

async fn serves_where_the_environment_says(uring: bool) {
    let addr = free_port();
    // The consumer's whole configuration: the process environment.
    std::env::set_var("RON_TRANSPORT_BIND_ADDR", addr.to_string());
    let loaded = ConfigLoader::new().from_process_env().load().unwrap();
    assert_eq!(loaded.config.bind_addr, Some(addr));
    let server = build(uring, loaded.config);
    assert_eq!(server.config().bind_addr, Some(addr), "Engine::config()");

    let listener = server.listen_configured().await.expect("listen_configured");
    assert_eq!(listener.local_addr(), addr);
    let serving = tokio::spawn(server.serve(listener, |mut c| async move {
        while let Ok(Some(f)) = c.recv().await {
            if c.send(f).await.is_err() {
                break;
            }
        }
    }));

    let client = build(false, ValidConfig::defaults());
    let mut conn = util::within(
        "dial",
        Duration::from_secs(10),
        client.dial(addr, DialOptions::default()),
    )
    .await
    .unwrap();
    conn.send(Bytes::from_static(b"configured")).await.unwrap();
    let back = util::within("echo", Duration::from_secs(10), conn.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back[..], b"configured");
    conn.close().await.unwrap();
    client.shutdown(Duration::from_millis(200)).await;
    server.shutdown(Duration::from_millis(500)).await;
    let _ = util::within("serve ends", Duration::from_secs(5), serving).await;
}

async fn without_an_address_it_names_bind_addr(uring: bool) {
    let mut c = Config::default();
    c.bind_addr = None;
    let server = build(uring, c.validate().unwrap());
    let err = server.listen_configured().await.unwrap_err();
    assert_eq!(err.kind(), "config");
    assert!(
        matches!(&err, TransportError::Config(ConfigError::Invalid { key, .. }) if *key == "bind_addr"),
        "{err:?}"
    );
    server.shutdown(Duration::from_millis(100)).await;
}

#[test]
fn env_only_consumer_listens_and_echoes_on_both_engines() {
    // One test function: both engines read the same process environment in turn.
    for uring in [false, true] {
        util::run_multi_thread(serves_where_the_environment_says(uring));
        util::run_multi_thread(without_an_address_it_names_bind_addr(uring));
    }
}

#[test]
fn engine_config_is_the_live_snapshot() {
    util::run_multi_thread(async {
        let handle = ron_transport::ConfigHandle::new(ValidConfig::defaults());
        let tokio = AutoEngine::Tokio(
            EngineSetup::from_handle(handle.clone(), TransportMetrics::new())
                .unwrap()
                .build_tokio()
                .unwrap(),
        );
        let uring = AutoEngine::Uring(
            EngineSetup::from_handle(handle.clone(), TransportMetrics::new())
                .unwrap()
                .build_uring_with(RuntimeConfig {
                    shards: 1,
                    pin: false,
                    buf_entries: 64,
                    ..RuntimeConfig::default()
                })
                .unwrap(),
        );
        let mut next = Config::default();
        next.max_conns = 7;
        handle.reload(next).unwrap();
        assert_eq!(tokio.config().max_conns, 7);
        assert_eq!(uring.config().max_conns, 7);
        tokio.shutdown(Duration::from_millis(100)).await;
        uring.shutdown(Duration::from_millis(100)).await;
    });
}
