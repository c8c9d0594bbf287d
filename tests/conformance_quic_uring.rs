//! The conformance suite on `backend = "quic"` with the uring engine: quinn-proto driven by the
//! shards' rings (2 shards, so connections and their datagrams spread over both). As in
//! `conformance_quic.rs`, every case's `tcp` and `tls` mean `quic` (metrics under
//! `backend="quic"`), cases without a TLS fixture get the process-wide one, and cases whose
//! misbehaving peer is a raw kernel TCP socket print `SKIPPED <case>: …`.

mod util;
#[macro_use]
mod conformance;

use std::sync::Arc;

use ron_transport::config::Backend;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::uring::UringEngine;
use ron_transport::{ConfigHandle, TransportMetrics, ValidConfig};

use conformance::{EngineUnderTest, TlsFixture};

struct QuicUringUnderTest;

impl EngineUnderTest for QuicUringUnderTest {
    type E = UringEngine;

    fn build(
        cfg: ValidConfig,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> UringEngine {
        Self::build_with_handle(ConfigHandle::new(cfg), tls, metrics)
    }

    fn build_with_handle(
        handle: ConfigHandle,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> UringEngine {
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
            .build_uring_with(util::engines::test_runtime())
            .expect("uring engine (io_uring usable here)")
    }

    fn live_tasks(engine: &UringEngine) -> usize {
        engine.shard_stats().iter().map(|s| s.open as usize).sum()
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

conformance_suite!(QuicUringUnderTest);
