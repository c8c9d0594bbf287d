//! Issue 12 finding 3: a connection whose consumer stops calling `recv` holds a bounded number
//! of inbound bytes, whatever the frame size. Before, the uring engine's inbound queue was
//! bounded in frames only (64), so a peer pipelining 1 MiB frames to a paused consumer made
//! the connection hold 64 MiB; now it holds at most `4 × chunk_bytes` plus one frame before
//! reads pause and TCP pushes back on the peer.

mod util;

use std::io::Write;
use std::time::Duration;

use ron_shard::RuntimeConfig;
use ron_transport::engine::auto::AutoEngine;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::{Config, Engine, Listener, TransportMetrics};

use util::*;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn engine(uring: bool) -> AutoEngine {
    let mut c = Config::default();
    c.max_frame_bytes = 1 << 20;
    let setup = EngineSetup::new(c.validate().unwrap(), TransportMetrics::new()).unwrap();
    if uring {
        AutoEngine::Uring(
            setup
                .build_uring_with(RuntimeConfig {
                    shards: 1,
                    pin: false,
                    buf_entries: 64,
                    ..RuntimeConfig::default()
                })
                .expect("uring engine (io_uring usable here)"),
        )
    } else {
        AutoEngine::Tokio(setup.build_tokio().unwrap())
    }
}

/// A peer pipelines up to 96 frames of 1 MiB to a consumer that never receives; returns how
/// many it could write before TCP pushed back for 2 s.
fn pipeline_until_blocked(addr: std::net::SocketAddr) -> usize {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut frame = ((1u32 << 20) - 16).to_be_bytes().to_vec();
    frame.resize(4 + (1 << 20) - 16, 0xab);
    let mut written = 0;
    for _ in 0..96 {
        if s.write_all(&frame).is_err() {
            break;
        }
        written += 1;
    }
    written
}

fn paused_consumer_holds_bounded_memory(uring: bool) {
    run_multi_thread(async move {
        let e = engine(uring);
        let mut l = e.listen(loopback()).await.unwrap();
        let addr = l.local_addr();
        let before = rss_bytes();
        let peer = tokio::task::spawn_blocking(move || pipeline_until_blocked(addr));
        // Accepted, never received from.
        let conn = l.accept().await.unwrap();
        let written = peer.await.unwrap();
        let grown = rss_bytes().saturating_sub(before);
        assert!(
            written < 96,
            "TCP pushed back on the peer (it wrote {written} frames of 1 MiB)"
        );
        assert!(
            grown < 24 << 20,
            "uring={uring}: RSS grew {} MiB while the consumer did not receive ({written} \
             frames of 1 MiB written)",
            grown >> 20
        );
        drop(conn);
        e.shutdown(Duration::from_millis(100)).await;
    });
}

#[test]
fn paused_consumer_holds_bounded_memory_uring() {
    paused_consumer_holds_bounded_memory(true);
}

#[test]
fn paused_consumer_holds_bounded_memory_tokio() {
    paused_consumer_holds_bounded_memory(false);
}
