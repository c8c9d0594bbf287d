//! `Engine::serve` on the uring engine: each connection's consumer future runs on the shard
//! that owns the connection (the shard-local executor), with no eventfd write per frame; a
//! connection moved off its shard keeps working (its inbound side detaches in order); a
//! panicking consumer costs only its own connection; a send that cannot make progress times
//! out on the shard's own timer.

mod util;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ron_shard::RuntimeConfig;
use ron_transport::config::Backend;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::uring::{UringConn, UringEngine};
use ron_transport::{
    Config, Conn, Engine, FrameSender, Listener, RejectReason, TimeoutOp, TransportError,
    TransportMetrics,
};

use util::*;

fn engine(cfg: Config, metrics: Arc<TransportMetrics>) -> UringEngine {
    EngineSetup::new(cfg.validate().expect("valid config"), metrics)
        .expect("setup")
        .build_uring_with(RuntimeConfig {
            shards: 2,
            pin: false,
            buf_entries: 64,
            ..RuntimeConfig::default()
        })
        .expect("uring engine (io_uring usable here)")
}

/// Writes `n` frames of `len` bytes and reads the echo back on a plain socket.
async fn echo_client(addr: std::net::SocketAddr, n: usize, len: usize, seed: u8) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    let frame = wire_frame(&payload(len, seed));
    let mut back = vec![0u8; frame.len()];
    for _ in 0..n {
        s.write_all(&frame).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, frame);
    }
}

#[test]
fn serve_runs_each_consumer_on_its_shard_without_a_doorbell_per_frame() {
    run_multi_thread(async {
        let metrics = TransportMetrics::new();
        let e = engine(Config::default(), metrics.clone());
        let l = e.listen(loopback()).await.unwrap();
        let addr = l.local_addr();
        let (where_tx, mut where_rx) = tokio::sync::mpsc::unbounded_channel();
        let serving = tokio::spawn(e.serve(l, move |mut conn: UringConn| {
            let where_tx = where_tx.clone();
            async move {
                let name = std::thread::current().name().unwrap_or("").to_string();
                let _ = where_tx.send((ron_shard::is_shard_thread(), name));
                while let Ok(Some(f)) = conn.recv().await {
                    if conn.send(f).await.is_err() {
                        break;
                    }
                }
            }
        }));
        let (conns, frames) = (8, 200);
        let rings_before: u64 = e.shard_stats().iter().map(|s| s.doorbell_rings).sum();
        let clients: Vec<_> = (0..conns)
            .map(|i| tokio::spawn(echo_client(addr, frames, 1024, i as u8)))
            .collect();
        for c in clients {
            within("echo client", Duration::from_secs(20), c)
                .await
                .unwrap();
        }
        for _ in 0..conns {
            let (on_shard, name) = where_rx.recv().await.unwrap();
            assert!(on_shard, "consumer ran on {name:?}");
            assert!(name.starts_with("ron-shard-"), "consumer ran on {name:?}");
        }
        let stats = e.shard_stats();
        let spawned: u64 = stats.iter().map(|s| s.tasks_spawned).sum();
        assert_eq!(spawned, conns as u64, "one shard task per connection");
        // Cross-thread posts left: hand-offs of accepted sockets between the two shards, and
        // the listen command. Nothing per frame (1,600 frames each way).
        let rings: u64 = stats.iter().map(|s| s.doorbell_rings).sum::<u64>() - rings_before;
        assert!(
            rings <= 2 * conns as u64,
            "{rings} eventfd writes for 1,600 frames"
        );
        let s = snap(&metrics, Backend::Tcp);
        assert_eq!(s.accepts, conns as u64);
        let wire = (conns * frames * (1024 + 4)) as u64;
        wait_until("bytes counted", Duration::from_secs(5), || {
            let s = snap(&metrics, Backend::Tcp);
            s.bytes_in == wire && s.bytes_out == wire
        })
        .await;
        e.shutdown(Duration::from_secs(2)).await;
        within("serve ends at shutdown", Duration::from_secs(5), serving)
            .await
            .unwrap()
            .unwrap();
    });
}

#[test]
fn a_connection_moved_off_its_shard_keeps_its_frames_in_order() {
    run_multi_thread(async {
        let metrics = TransportMetrics::new();
        let e = engine(Config::default(), metrics.clone());
        let l = e.listen(loopback()).await.unwrap();
        let addr = l.local_addr();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(e.serve(l, move |mut conn: UringConn| {
            let tx = tx.clone();
            async move {
                // Two frames on the shard, then the rest of the conversation elsewhere.
                let a = conn.recv().await.unwrap().unwrap();
                let b = conn.recv().await.unwrap().unwrap();
                conn.send(a).await.unwrap();
                conn.send(b).await.unwrap();
                let _ = tx.send(conn);
            }
        }));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let frames: Vec<Bytes> = (0..50u8).map(|i| payload(100 + i as usize, i)).collect();
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(&wire_frame(f));
        }
        s.write_all(&wire).await.unwrap();
        let mut conn = within("handed over", Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        // Off the shard now: the remaining 48 frames arrive in order through the shared path,
        // and a sender used from another thread still writes.
        let tx = conn.sender();
        for (i, f) in frames.iter().enumerate().skip(2) {
            let got = within("recv off shard", Duration::from_secs(5), conn.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&got, f, "frame {i}");
            let tx = tx.clone();
            let g = got.clone();
            std::thread::spawn(move || tx.try_send(g).unwrap())
                .join()
                .unwrap();
        }
        let mut back = vec![0u8; wire.len()];
        within("echo back", Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(back, wire);
        drop(s);
        assert!(within("peer close", Duration::from_secs(5), conn.recv())
            .await
            .unwrap()
            .is_none());
    });
}

#[test]
fn a_panicking_consumer_closes_only_its_connection() {
    run_multi_thread(async {
        let metrics = TransportMetrics::new();
        let e = engine(Config::default(), metrics.clone());
        let l = e.listen(loopback()).await.unwrap();
        let addr = l.local_addr();
        tokio::spawn(e.serve(l, |mut conn: UringConn| async move {
            while let Ok(Some(f)) = conn.recv().await {
                assert!(f.as_ref() != b"boom", "consumer bug");
                if conn.send(f).await.is_err() {
                    break;
                }
            }
        }));
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let mut bad = tokio::net::TcpStream::connect(addr).await.unwrap();
        bad.write_all(&wire_frame(b"boom")).await.unwrap();
        let (_, _) = read_to_end_or_reset(&mut bad, Duration::from_secs(5)).await;
        std::panic::set_hook(hook);
        // The shards keep serving.
        echo_client(addr, 20, 512, 3).await;
        let panics: u64 = e.shard_stats().iter().map(|s| s.task_panics).sum();
        assert_eq!(panics, 1);
        wait_until(
            "the panicked connection released",
            Duration::from_secs(5),
            || snap(&metrics, Backend::Tcp).inflight == 0,
        )
        .await;
    });
}

#[test]
fn a_send_that_cannot_progress_times_out_on_the_shard() {
    run_multi_thread(async {
        let metrics = TransportMetrics::new();
        let mut cfg = Config::default();
        cfg.write_timeout = Duration::from_millis(300);
        let e = engine(cfg, metrics.clone());
        let l = e.listen(loopback()).await.unwrap();
        let addr = l.local_addr();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(e.serve(l, move |conn: UringConn| {
            let tx = tx.clone();
            async move {
                // The peer never reads: sends fill the socket, the queue, then the inbox.
                let big = Bytes::from(vec![7u8; 64 * 1024]);
                let started = std::time::Instant::now();
                let err = loop {
                    match conn.send(big.clone()).await {
                        Ok(()) => {}
                        Err(e) => break e,
                    }
                };
                let _ = tx.send((err, started.elapsed(), ron_shard::is_shard_thread()));
            }
        }));
        let _peer = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (err, elapsed, on_shard) = within("send fails", Duration::from_secs(10), rx.recv())
            .await
            .unwrap();
        assert!(on_shard);
        assert!(
            matches!(&err, TransportError::Timeout { op } if *op == TimeoutOp::Write),
            "{err:?}"
        );
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(rejected(&metrics, RejectReason::Timeout) >= 1);
    });
}

#[test]
fn a_lowered_live_ceiling_is_enforced_per_frame_on_the_shard() {
    run_multi_thread(async {
        let metrics = TransportMetrics::new();
        let mut cfg = Config::default();
        cfg.max_frame_bytes = 128 * 1024;
        let handle = ron_transport::ConfigHandle::new(cfg.clone().validate().unwrap());
        let e = EngineSetup::from_handle(handle.clone(), metrics.clone())
            .unwrap()
            .build_uring_with(RuntimeConfig {
                shards: 2,
                pin: false,
                buf_entries: 64,
                ..RuntimeConfig::default()
            })
            .expect("uring engine (io_uring usable here)");
        let l = e.listen(loopback()).await.unwrap();
        let addr = l.local_addr();
        let (end_tx, mut end_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(e.serve(l, move |mut conn: UringConn| {
            let end_tx = end_tx.clone();
            async move {
                let end = loop {
                    match conn.recv().await {
                        Ok(Some(f)) => {
                            if conn.send(f).await.is_err() {
                                break None;
                            }
                        }
                        Ok(None) => break None,
                        Err(e) => break Some(e.kind()),
                    }
                };
                let _ = end_tx.send(end);
            }
        }));
        // Under the ceiling the listener started with: echoed.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let f = wire_frame(&payload(100_000, 1));
        s.write_all(&f).await.unwrap();
        let mut back = vec![0u8; f.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, f);
        // A reload lowers the ceiling: the next frame above it closes the connection with
        // `too_large`, counted once.
        let mut lower = cfg;
        lower.max_frame_bytes = 64 * 1024;
        handle.reload(lower).expect("reload");
        let _ = s.write_all(&f).await;
        let (_, _) = read_to_end_or_reset(&mut s, Duration::from_secs(5)).await;
        let end = within(
            "consumer sees the end",
            Duration::from_secs(5),
            end_rx.recv(),
        )
        .await
        .unwrap();
        assert_eq!(end, Some("too_large"));
        assert_eq!(rejected(&metrics, RejectReason::TooLarge), 1);
        wait_until("released", Duration::from_secs(5), || {
            snap(&metrics, Backend::Tcp).inflight == 0
        })
        .await;
    });
}
