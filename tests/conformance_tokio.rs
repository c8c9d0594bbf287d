//! The conformance suite against the tokio engine, on both tokio schedulers.

mod util;
#[macro_use]
mod conformance;

use std::sync::Arc;

use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::tokio::TokioEngine;
use ron_transport::{TransportMetrics, ValidConfig};

use conformance::{EngineUnderTest, TlsFixture};

struct TokioUnderTest;

impl EngineUnderTest for TokioUnderTest {
    type E = TokioEngine;

    fn build(
        cfg: ValidConfig,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> TokioEngine {
        let mut setup = EngineSetup::new(cfg, metrics).expect("setup");
        if let Some(tls) = tls {
            setup = setup
                .with_tls_server(tls.server)
                .with_tls_client(tls.client);
        }
        setup.build_tokio().expect("tokio engine")
    }

    fn live_tasks(engine: &TokioEngine) -> usize {
        engine.live_tasks()
    }
}

conformance_suite!(TokioUnderTest);
