//! The conformance suite against `AutoEngine` — the engine a newcomer gets from the README
//! (io_uring where this host allows it, tokio otherwise), through its own `Engine`
//! implementation — on both tokio schedulers.

mod util;
#[macro_use]
mod conformance;

use std::sync::Arc;

use ron_transport::engine::auto::AutoEngine;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::{ConfigHandle, EngineKind, TransportMetrics, ValidConfig};

use conformance::{EngineUnderTest, TlsFixture};

struct AutoUnderTest;

impl EngineUnderTest for AutoUnderTest {
    type E = AutoEngine;

    fn build(
        cfg: ValidConfig,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> AutoEngine {
        Self::build_with_handle(ConfigHandle::new(cfg), tls, metrics)
    }

    fn build_with_handle(
        handle: ConfigHandle,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> AutoEngine {
        let mut setup = EngineSetup::from_handle(handle, metrics).expect("setup");
        if let Some(tls) = tls {
            setup = setup
                .with_tls_server(tls.server)
                .with_tls_client(tls.client);
        }
        let (engine, choice) = AutoEngine::build(setup).expect("auto engine");
        // The suite runs on whichever engine the host allows; say which.
        if choice.kind != EngineKind::Uring {
            println!("auto picked {} ({})", choice.kind.as_str(), choice.reason);
        }
        engine
    }

    fn live_tasks(engine: &AutoEngine) -> usize {
        match engine {
            AutoEngine::Tokio(e) => e.live_tasks(),
            AutoEngine::Uring(e) => e.shard_stats().iter().map(|s| s.open as usize).sum(),
            _ => 0,
        }
    }
}

conformance_suite!(AutoUnderTest);
