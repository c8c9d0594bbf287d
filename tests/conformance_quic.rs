//! The conformance suite on `backend = "quic"` with the tokio engine (quinn), on both tokio
//! schedulers. Every case's `tcp` and `tls` mean `quic` here (metrics are read under
//! `backend="quic"`); QUIC is always TLS 1.3, so a case without a TLS fixture gets the
//! process-wide one. Cases whose misbehaving peer is a raw kernel TCP socket print
//! `SKIPPED <case>: …` (as on the memory engine).

mod util;
#[macro_use]
mod conformance;

use std::sync::Arc;

use ron_transport::config::Backend;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::tokio::TokioEngine;
use ron_transport::{ConfigHandle, TransportMetrics, ValidConfig};

use conformance::{EngineUnderTest, TlsFixture};

struct QuicUnderTest;

impl EngineUnderTest for QuicUnderTest {
    type E = TokioEngine;

    fn build(
        cfg: ValidConfig,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> TokioEngine {
        Self::build_with_handle(ConfigHandle::new(cfg), tls, metrics)
    }

    fn build_with_handle(
        handle: ConfigHandle,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> TokioEngine {
        assert_eq!(
            handle.load().backend,
            Backend::Quic,
            "cases' backends alias quic"
        );
        let tls = tls.unwrap_or_else(TlsFixture::quic_default);
        EngineSetup::from_handle(handle, metrics)
            .expect("setup")
            .with_tls_server(tls.server)
            .with_tls_client(tls.client)
            .build_tokio()
            .expect("tokio engine")
    }

    fn live_tasks(engine: &TokioEngine) -> usize {
        engine.live_tasks()
    }

    fn real_sockets() -> bool {
        false
    }

    fn connectionless() -> bool {
        true
    }

    fn prepare() {
        util::alias_backends(Backend::Quic);
    }
}

conformance_suite!(QuicUnderTest);
