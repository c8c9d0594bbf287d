//! The tokio engine's direct write (plain TCP, nothing queued, writer idle: the sender writes
//! the frame itself): frames of every size, written while a slow peer leaves the socket full
//! (partial writes, bytes handed to the writer task), arrive whole and in order, interleaved
//! with frames that took the queued path.

mod util;

use std::time::Duration;

use tokio::io::AsyncReadExt;

use ron_transport::engine::setup::EngineSetup;
use ron_transport::{Config, Conn, Engine, FrameSender, TransportMetrics};

use util::*;

#[test]
fn frames_arrive_whole_and_in_order_through_partial_direct_writes() {
    run_current_thread(async {
        let cfg = Config::default().validate().unwrap();
        let engine = EngineSetup::new(cfg, TransportMetrics::new())
            .unwrap()
            .build_tokio()
            .unwrap();
        // A small receive buffer: the sender's socket fills after a few frames, so direct
        // writes end part-way through frames (and through headers) again and again.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.bind(loopback()).unwrap();
        let l = sock.listen(16).unwrap();
        let addr = l.local_addr().unwrap();
        // Sizes from a fixed sequence: tiny, around the 4 KiB staging bound, and larger than
        // a loopback socket buffer takes at once.
        let sizes: Vec<usize> = (0..300u32)
            .map(|i| match i % 6 {
                0 => 1,
                1 => 4095,
                2 => 4097,
                3 => 300 * 1024,
                4 => 17,
                _ => 64 * 1024 + 3,
            })
            .collect();
        let expected: Vec<bytes::Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| payload(*n, i as u8))
            .collect();
        let reader = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 8192];
            let mut stream = Vec::new();
            let mut reads = 0u32;
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                stream.extend_from_slice(&buf[..n]);
                reads += 1;
                if reads % 8 == 0 {
                    // A slow peer: the sender meets a full socket again and again.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                while stream.len() >= 4 {
                    let len = u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
                    if stream.len() < 4 + len {
                        break;
                    }
                    got.push(bytes::Bytes::copy_from_slice(&stream[4..4 + len]));
                    stream.drain(..4 + len);
                }
            }
            assert!(stream.is_empty(), "trailing partial frame");
            got
        });
        let conn = engine.dial(addr, Default::default()).await.unwrap();
        let tx = conn.sender();
        for (i, f) in expected.iter().enumerate() {
            if i % 3 == 0 {
                // try_send where the inbox has room (else the awaiting path).
                match tx.try_send(f.clone()) {
                    Ok(()) => {}
                    Err(_) => tx.send(f.clone()).await.unwrap(),
                }
            } else {
                conn.send(f.clone()).await.unwrap();
            }
            if i % 4 != 3 {
                // Let the writer drain and lend its half back: the next send writes directly.
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
            }
        }
        within("graceful close", Duration::from_secs(20), conn.close())
            .await
            .unwrap();
        let got = within("peer read all", Duration::from_secs(20), reader)
            .await
            .unwrap();
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(g == e, "frame {i} of {} bytes differs", e.len());
        }
    });
}
