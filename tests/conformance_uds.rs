//! The shared conformance suite on Unix-domain sockets, for both engines (tokio and uring) on
//! both tokio schedulers: every listener binds a fresh socket path in a 0700 directory and
//! every dial goes to `Listener::dial_target()` (the path). Cases that need a misbehaving raw
//! peer use a raw `UnixStream`; cases that cannot apply to a path (TLS, a dial that hangs on a
//! full backlog) print `SKIPPED <case>: <why>` and pass.

mod util;
#[macro_use]
mod conformance;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ron_shard::RuntimeConfig;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::tokio::TokioEngine;
use ron_transport::engine::uring::UringEngine;
use ron_transport::engine::ListenTarget;
use ron_transport::{ConfigHandle, TransportMetrics, ValidConfig};

use conformance::{EngineUnderTest, TlsFixture};

/// A fresh socket path in this process's private (0700) directory.
fn fresh_socket() -> ListenTarget {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("ron-uds-conf-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    });
    ListenTarget::Unix(dir.join(format!("{}.sock", NEXT.fetch_add(1, Ordering::Relaxed))))
}

fn setup(cfg: ValidConfig, tls: Option<TlsFixture>, metrics: Arc<TransportMetrics>) -> EngineSetup {
    setup_on(ConfigHandle::new(cfg), tls, metrics)
}

fn setup_on(
    handle: ConfigHandle,
    tls: Option<TlsFixture>,
    metrics: Arc<TransportMetrics>,
) -> EngineSetup {
    let mut setup = EngineSetup::from_handle(handle, metrics).expect("setup");
    if let Some(tls) = tls {
        setup = setup
            .with_tls_server(tls.server)
            .with_tls_client(tls.client);
    }
    setup
}

struct TokioUds;

impl EngineUnderTest for TokioUds {
    type E = TokioEngine;

    fn build(
        cfg: ValidConfig,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> TokioEngine {
        setup(cfg, tls, metrics)
            .build_tokio()
            .expect("tokio engine")
    }

    fn build_with_handle(
        handle: ConfigHandle,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> TokioEngine {
        setup_on(handle, tls, metrics)
            .build_tokio()
            .expect("tokio engine")
    }

    fn live_tasks(engine: &TokioEngine) -> usize {
        engine.live_tasks()
    }

    fn listen_target() -> ListenTarget {
        fresh_socket()
    }
}

struct UringUds;

impl EngineUnderTest for UringUds {
    type E = UringEngine;

    fn build(
        cfg: ValidConfig,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> UringEngine {
        setup(cfg, tls, metrics)
            .build_uring_with(RuntimeConfig {
                shards: 2,
                pin: false,
                buf_entries: 64,
                ..RuntimeConfig::default()
            })
            .expect("uring engine (io_uring usable here)")
    }

    fn build_with_handle(
        handle: ConfigHandle,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> UringEngine {
        setup_on(handle, tls, metrics)
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

    fn listen_target() -> ListenTarget {
        fresh_socket()
    }
}

mod tokio_engine {
    use super::*;
    conformance_suite!(TokioUds);
}

mod uring_engine {
    use super::*;
    conformance_suite!(UringUds);
}
