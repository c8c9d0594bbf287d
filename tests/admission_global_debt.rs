//! End to end on both engines: one heavy reader drives the global ingress bucket into debt,
//! and a new connection from another peer address (127.0.0.2) is still accepted — pacing slows
//! reads, it never locks newcomers out (`rejected_total{reason="rate_limited"}` stays 0).

mod util;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use ron_transport::config::Backend;
use ron_transport::engine::tokio::TokioEngine;
use ron_transport::engine::uring::UringEngine;
use ron_transport::policy::{now_ns, Policy};
use ron_transport::{Config, Conn, Engine, Listener, RejectReason, TransportMetrics};

use util::engines::EngineKind;
use util::{raw_connect_from, rejected, snap, wait_until, wire_frame, within};

const SLACK: Duration = Duration::from_secs(5);
const RATE: u64 = 64 * 1024;

/// The engine's admission policy (each engine exposes it its own way).
trait HasPolicy {
    fn policy_of(&self) -> Arc<Policy>;
}

impl HasPolicy for TokioEngine {
    fn policy_of(&self) -> Arc<Policy> {
        Arc::clone(&self.shared().policy)
    }
}

impl HasPolicy for UringEngine {
    fn policy_of(&self) -> Arc<Policy> {
        Arc::clone(self.policy())
    }
}

async fn global_ingress_debt_admits_new_peer<T: EngineKind>()
where
    T::E: HasPolicy,
{
    let mut c = Config::default();
    c.global_ingress_bytes_per_sec = RATE;
    c.max_frame_bytes = 64 * 1024;
    c.chunk_bytes = 4096;
    let metrics = TransportMetrics::new();
    let server = T::build(c.validate().unwrap(), None, metrics.clone());
    let policy = server.policy_of();
    let mut listener = server
        .listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr();

    // The heavy reader: 512 KiB offered against a 64 KiB/s global ingress rate (burst 64 KiB).
    let mut heavy = raw_connect_from([127, 0, 0, 1], addr).await;
    let mut heavy_srv = within("accept heavy", SLACK, listener.accept())
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        let frame = wire_frame(&vec![7u8; 32 * 1024 - 4]);
        for _ in 0..16 {
            if heavy.write_all(&frame).await.is_err() {
                break;
            }
        }
        heavy
    });
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = heavy_srv.recv().await {} });
    wait_until("global ingress in debt", SLACK, || {
        policy.global_ingress().debt(now_ns()) > Duration::from_millis(200)
    })
    .await;

    // A new peer while the global bucket is in debt: admitted.
    let _newcomer = raw_connect_from([127, 0, 0, 2], addr).await;
    let newcomer_srv = within("accept the newcomer", SLACK, listener.accept())
        .await
        .expect("newcomer accepted");
    assert_eq!(newcomer_srv.info().peer_addr.ip().to_string(), "127.0.0.2");
    assert!(
        policy.global_ingress().debt(now_ns()) > Duration::ZERO,
        "still in debt when the newcomer was admitted"
    );
    assert_eq!(rejected(&metrics, RejectReason::RateLimited), 0);
    assert_eq!(snap(&metrics, Backend::Tcp).accepts, 2);

    reader.abort();
    writer.abort();
    drop(newcomer_srv);
    drop(listener);
}

per_engine!(global_ingress_debt_admits_new_peer);
