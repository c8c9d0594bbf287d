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
