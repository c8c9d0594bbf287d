//! Both engines behind one test-side trait, for test files outside the conformance suite that
//! run one generic body per engine: [`TokioEng`] (epoll) and [`UringEng`] (io_uring shards,
//! built as in tests/conformance_uring.rs), and [`per_engine!`] generating one `#[test]` per
//! engine.

use std::sync::Arc;

use ron_shard::RuntimeConfig;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::tokio::TokioEngine;
use ron_transport::engine::uring::UringEngine;
use ron_transport::{Engine, TransportMetrics, ValidConfig};

use super::tls::TlsFixture;

/// One engine kind.
pub trait EngineKind: 'static {
    /// The engine type.
    type E: Engine;
    /// Builds an engine from `cfg`; `tls` carries the server and client configs for TLS.
    fn build(cfg: ValidConfig, tls: Option<&TlsFixture>, metrics: Arc<TransportMetrics>)
        -> Self::E;
}

fn setup(cfg: ValidConfig, tls: Option<&TlsFixture>, m: Arc<TransportMetrics>) -> EngineSetup {
    let mut setup = EngineSetup::new(cfg, m).expect("engine setup");
    if let Some(t) = tls {
        setup = setup
            .with_tls_server(t.server.clone())
            .with_tls_client(t.client.clone());
    }
    setup
}

/// The tokio engine.
pub struct TokioEng;

impl EngineKind for TokioEng {
    type E = TokioEngine;
    fn build(cfg: ValidConfig, tls: Option<&TlsFixture>, m: Arc<TransportMetrics>) -> TokioEngine {
        setup(cfg, tls, m).build_tokio().expect("tokio engine")
    }
}

/// The shard runtime of the tests' uring engines: two unpinned shards, small buffer rings.
pub fn test_runtime() -> RuntimeConfig {
    RuntimeConfig {
        shards: 2,
        pin: false,
        buf_entries: 64,
        ..RuntimeConfig::default()
    }
}

/// The uring engine ([`test_runtime`]).
pub struct UringEng;

impl EngineKind for UringEng {
    type E = UringEngine;
    fn build(cfg: ValidConfig, tls: Option<&TlsFixture>, m: Arc<TransportMetrics>) -> UringEngine {
        setup(cfg, tls, m)
            .build_uring_with(test_runtime())
            .expect("uring engine (io_uring usable here)")
    }
}

/// `per_engine!(case_a, case_b)` generates `mod tokio { #[test] fn case_a() }` and
/// `mod uring { … }`, each running `case::<Engine>()` on a two-worker runtime.
#[macro_export]
macro_rules! per_engine {
    ($($case:ident),* $(,)?) => {
        mod tokio_engine {
            $(
                #[test]
                fn $case() {
                    $crate::util::run_multi_thread(super::$case::<$crate::util::engines::TokioEng>());
                }
            )*
        }
        mod uring_engine {
            $(
                #[test]
                fn $case() {
                    $crate::util::run_multi_thread(super::$case::<$crate::util::engines::UringEng>());
                }
            )*
        }
    };
}
