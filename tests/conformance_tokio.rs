//! The conformance suite against the tokio engine, on both tokio schedulers.

mod util;
#[macro_use]
mod conformance;

use std::sync::Arc;

use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::tokio::TokioEngine;
use ron_transport::{ConfigHandle, TransportMetrics, ValidConfig};

use conformance::{EngineUnderTest, TlsFixture};

struct TokioUnderTest;

impl EngineUnderTest for TokioUnderTest {
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
        let mut setup = EngineSetup::from_handle(handle, metrics).expect("setup");
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

/// Not a test of behaviour: prints echo throughput for small and large frames (run with
/// `cargo test --release --test conformance_tokio -- --ignored --nocapture throughput`).
#[test]
#[ignore]
fn throughput_report() {
    use std::time::Instant;

    use ron_transport::{Conn, Engine, FrameSender, Listener};

    util::run_multi_thread(async {
        for (size, count) in [(64usize, 400_000usize), (1024, 200_000), (64 * 1024, 8_000)] {
            let mk = || {
                let mut c = ron_transport::Config::default();
                c.write_timeout = std::time::Duration::from_secs(30);
                TokioUnderTest::build(c.validate().unwrap(), None, TransportMetrics::new())
            };
            let (server, client) = (mk(), mk());
            let mut l = server.listen(util::loopback()).await.unwrap();
            let addr = l.local_addr();
            tokio::spawn(async move {
                let mut c = l.accept().await.unwrap();
                while let Ok(Some(f)) = c.recv().await {
                    if c.send(f).await.is_err() {
                        break;
                    }
                }
            });
            let mut conn = client.dial(addr, Default::default()).await.unwrap();
            let frame = util::payload(size, 1);
            let tx = conn.sender();
            let start = Instant::now();
            let sender = tokio::spawn(async move {
                for _ in 0..count {
                    tx.send(frame.clone()).await.unwrap();
                }
            });
            for _ in 0..count {
                conn.recv().await.unwrap().unwrap();
            }
            sender.await.unwrap();
            let secs = start.elapsed().as_secs_f64();
            println!(
                "echo {size:>6} B frames: {:>9.0} frames/s, {:>7.1} MiB/s each way",
                count as f64 / secs,
                (count * size) as f64 / secs / (1024.0 * 1024.0)
            );
        }
    });
}

/// Live reload (tokio-specific wiring through `EngineSetup::from_handle`): limits and timeouts
/// are read from the current snapshot per operation, so open connections follow a reload.
#[test]
fn live_reload_applies_to_open_connections() {
    use std::time::Duration;

    use ron_transport::{Config, ConfigHandle, Conn, Engine, Listener, TimeoutOp, TransportError};

    util::run_current_thread(async {
        let handle = ConfigHandle::new(ValidConfig::defaults());
        let metrics = TransportMetrics::new();
        let server = EngineSetup::from_handle(handle.clone(), metrics.clone())
            .unwrap()
            .build_tokio()
            .unwrap();
        let client = EngineSetup::new(ValidConfig::defaults(), TransportMetrics::new())
            .unwrap()
            .build_tokio()
            .unwrap();
        let mut l = server.listen(util::loopback()).await.unwrap();
        let conn = client
            .dial(l.local_addr(), Default::default())
            .await
            .unwrap();
        let mut srv = l.accept().await.unwrap();

        // 100 KiB passes under the default 1 MiB ceiling …
        conn.send(util::payload(100 * 1024, 1)).await.unwrap();
        assert_eq!(srv.recv().await.unwrap().unwrap().len(), 100 * 1024);

        // … and is refused after the ceiling is reloaded to 64 KiB, on both paths.
        let mut next: Config = (**handle.load()).clone();
        next.max_frame_bytes = 64 * 1024;
        next.read_timeout = Duration::from_millis(200);
        handle.reload(next).unwrap();
        let err = srv.try_send(util::payload(100 * 1024, 2)).unwrap_err();
        assert_eq!(err.kind(), "too_large");

        // The reloaded read timeout applies to the next frame.
        use tokio::io::AsyncWriteExt;
        drop(conn);
        let mut raw = tokio::net::TcpStream::connect(l.local_addr())
            .await
            .unwrap();
        let mut srv2 = l.accept().await.unwrap();
        raw.write_all(&[0, 0, 0, 8, 1]).await.unwrap();
        let err = util::within("read timeout", Duration::from_secs(5), srv2.recv())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::Timeout {
                    op: TimeoutOp::Read
                }
            ),
            "{err:?}"
        );
        drop(srv);
    });
}
