//! The shared conformance suite (tests/conformance, unchanged) against the uring engine, on both
//! tokio schedulers (the consumer's runtime; the engine's I/O runs on its own shard threads).
//! TLS cases run on the shards' own TLS pump (no Tokio task per connection).

mod util;
#[macro_use]
mod conformance;

use std::sync::Arc;

use ron_shard::RuntimeConfig;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::uring::UringEngine;
use ron_transport::{TransportMetrics, ValidConfig};

use conformance::{EngineUnderTest, TlsFixture};

struct UringUnderTest;

impl EngineUnderTest for UringUnderTest {
    type E = UringEngine;

    fn build(
        cfg: ValidConfig,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> UringEngine {
        let mut setup = EngineSetup::new(cfg, metrics).expect("setup");
        if let Some(tls) = tls {
            setup = setup
                .with_tls_server(tls.server)
                .with_tls_client(tls.client);
        }
        setup
            .build_uring_with(RuntimeConfig {
                shards: 2,
                pin: false,
                buf_entries: 64,
                ..RuntimeConfig::default()
            })
            .expect("uring engine (io_uring usable here)")
    }

    fn live_tasks(engine: &UringEngine) -> usize {
        engine.shard_stats().iter().map(|s| s.open as usize).sum()
    }
}

macro_rules! uring_cases {
    ($module:ident, $runner:ident) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            conformance_suite!(@cases UringUnderTest, $runner;
                echo_tcp,
                echo_tls,
                frame_ceiling,
                read_timeout,
                write_timeout,
                idle_timeout,
                dial_timeout,
                max_conns_tcp,
                max_conns_tls,
                per_peer_cap,
                egress_rate,
                tls_wrong_ca,
                tls_handshake_timeout,
                pq_hybrid,
                busy_when_inbox_full,
                cancel_quiesces,
                graceful_close_tcp,
                graceful_close_tls,
                metrics_smoke,
                shutdown_drains_and_aborts,
            );
        }
    };
}

uring_cases!(current_thread, run_current_thread);
uring_cases!(multi_thread, run_multi_thread);
