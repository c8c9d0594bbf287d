//! `Send` handles used from tokio: dial, accept, bounded writer inbox (Busy), inbound
//! backpressure (reads pause and resume without loss), close and cancel.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ron_shard::{
    bind, handle_listener, AdmitToken, CloseReason, ConnOptions, HandleOptions, SendError,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialed_handle_round_trips_through_an_echo_shard() {
    let Some(rt) = runtime(2) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(l, ConnOptions::default(), hooks).unwrap();
    let mut h = rt
        .dial_handle(
            addr,
            Duration::from_secs(5),
            ConnOptions::default(),
            HandleOptions::default(),
        )
        .await
        .expect("dial");
    assert!(h.meta().outbound);
    assert_eq!(h.meta().peer, addr);
    let tx = h.sender();
    let sender = tokio::spawn(async move {
        for i in 0..2000u32 {
            tx.send(Bytes::copy_from_slice(&i.to_be_bytes()))
                .await
                .unwrap();
        }
    });
    for i in 0..2000u32 {
        let f = h.recv().await.unwrap().unwrap();
        assert_eq!(&f[..], i.to_be_bytes());
    }
    sender.await.unwrap();
    let big = Bytes::from(vec![7u8; 300_000]);
    h.send(big.clone()).await.unwrap();
    assert_eq!(h.recv().await.unwrap().unwrap(), big);
    assert_eq!(h.close_and_wait().await, CloseReason::Local);
    let s = total(&rt);
    assert_eq!(s.dialed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_errors_are_typed() {
    let Some(rt) = runtime(1) else { return };
    // Nothing listens on this port (bound then dropped).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = rt
        .dial_handle(
            addr,
            Duration::from_secs(5),
            ConnOptions::default(),
            HandleOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "io");
    // Unroutable (TEST-NET-1) with a short deadline: a timeout (or an immediate network error
    // where the host has no route; both are typed).
    let err = rt
        .dial_handle(
            "192.0.2.1:9".parse().unwrap(),
            Duration::from_millis(100),
            ConnOptions::default(),
            HandleOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err.reason(), "timeout" | "io"), "{err:?}");
    assert!(total(&rt).dial_failed >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_writer_inbox_is_busy_and_cancel_is_prompt() {
    let Some(rt) = runtime(1) else { return };
    // A peer that accepts and never reads.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = std::thread::spawn(move || l.accept().unwrap().0);
    let mut h = rt
        .dial_handle(
            addr,
            Duration::from_secs(5),
            ConnOptions::default(),
            HandleOptions {
                inbox_capacity: 256,
                ..HandleOptions::default()
            },
        )
        .await
        .unwrap();
    let _peer = acceptor.join().unwrap();
    let frame = Bytes::from(vec![1u8; 64 * 1024]);
    let mut sent = 0usize;
    let busy = loop {
        match h.try_send(frame.clone()) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        if sent % 64 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(sent < 20_000, "never got Busy");
    };
    assert_eq!(busy, SendError::Busy);
    assert_eq!(busy.reason(), "busy");
    assert!(
        sent >= 256,
        "the inbox holds 256 frames before Busy (sent {sent})"
    );
    h.cancel();
    let r = tokio::time::timeout(Duration::from_secs(5), h.recv())
        .await
        .unwrap();
    assert_eq!(r, Err(CloseReason::Aborted));
    assert!(matches!(
        h.try_send(frame),
        Err(SendError::Closed(Some(CloseReason::Aborted)))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_handles_apply_inbound_backpressure_without_loss() {
    let Some(rt) = runtime(2) else { return };
    let (hooks, mut accepted) = handle_listener(
        |_peer| Ok(AdmitToken::empty()),
        16,
        HandleOptions {
            inbound_capacity: 2,
            ..HandleOptions::default()
        },
    );
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(l, ConnOptions::default(), hooks).unwrap();
    const N: u32 = 5000;
    let client = std::thread::spawn(move || {
        let mut c = connect(addr);
        for i in 0..N {
            write_frame(&mut c, &[i.to_be_bytes().as_slice(), &[0u8; 200]].concat());
        }
        // Then read the server's goodbye frame and EOF.
        let bye = read_frame(&mut c).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        (bye, rest.len())
    });
    let mut h = accepted.accept().await.unwrap();
    // Let the client fill the small inbound channel and the socket buffers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..N {
        let f = h.recv().await.unwrap().unwrap();
        assert_eq!(&f[..4], i.to_be_bytes(), "frame {i}");
        assert_eq!(f.len(), 204);
    }
    h.send(Bytes::from_static(b"bye")).await.unwrap();
    h.close();
    assert_eq!(h.recv().await, Ok(None));
    let (bye, rest) = client.join().unwrap();
    assert_eq!((bye.as_slice(), rest), (&b"bye"[..], 0));
}

struct CountingPacer {
    taken: std::sync::atomic::AtomicUsize,
    paced: std::sync::atomic::AtomicUsize,
}

impl ron_shard::OutboundHooks for CountingPacer {
    fn taken(&self, frames: usize) {
        self.taken
            .fetch_add(frames, std::sync::atomic::Ordering::SeqCst);
    }
    fn pace(&self, _bytes: usize) -> Duration {
        // Every frame after the first waits 30 ms.
        if self.paced.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(30)
        }
    }
}

struct PacedAccept {
    pacer: Arc<CountingPacer>,
    tx: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<ron_shard::ConnHandle>>>,
}

impl ron_shard::AcceptHooks for PacedAccept {
    fn admit(&self, _p: std::net::SocketAddr) -> Result<AdmitToken, ron_shard::Reject> {
        Ok(AdmitToken::empty())
    }
    fn open(
        &self,
        _t: AdmitToken,
        meta: &ron_shard::ConnMeta,
        remote: ron_shard::ConnRemote,
    ) -> Box<dyn ron_shard::ConnHandler> {
        let (h, handle) = ron_shard::bridge_with_hooks(
            meta,
            remote,
            HandleOptions::default(),
            None,
            Some(self.pacer.clone()),
        );
        let _ = self.tx.lock().unwrap().take().unwrap().send(handle);
        h
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_hooks_pace_the_writer_on_the_shard() {
    let Some(rt) = runtime(1) else { return };
    let pacer = Arc::new(CountingPacer {
        taken: Default::default(),
        paced: Default::default(),
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let hooks = Arc::new(PacedAccept {
        pacer: pacer.clone(),
        tx: std::sync::Mutex::new(Some(tx)),
    });
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(l, ConnOptions::default(), hooks).unwrap();
    let client = std::thread::spawn(move || {
        let mut c = connect(addr);
        let t0 = std::time::Instant::now();
        let frames: Vec<Vec<u8>> = (0..5).map(|_| read_frame(&mut c).unwrap()).collect();
        (frames, t0.elapsed())
    });
    let h = rx.await.unwrap();
    // Queue all five at once: the shard releases them 30 ms apart, even though every
    // `try_send` also wakes the bridge.
    for i in 0..5u8 {
        h.try_send(Bytes::from(vec![i; 10])).unwrap();
    }
    let (frames, took) = client.join().unwrap();
    assert_eq!(frames, (0..5u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
    assert!(
        took >= Duration::from_millis(110),
        "4 paced gaps of 30 ms, took {took:?}"
    );
    assert_eq!(pacer.taken.load(std::sync::atomic::Ordering::SeqCst), 5);
    // Frames queued but never taken are reported as taken when the connection ends.
    drop(h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_stashed_by_backpressure_survive_the_peer_closing() {
    let Some(rt) = runtime(1) else { return };
    let (hooks, mut accepted) = handle_listener(
        |_peer| Ok(AdmitToken::empty()),
        4,
        HandleOptions {
            inbound_capacity: 1,
            ..HandleOptions::default()
        },
    );
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(l, ConnOptions::default(), hooks).unwrap();
    let client = std::thread::spawn(move || {
        let mut c = connect(addr);
        for i in 0..50u32 {
            write_frame(&mut c, &i.to_be_bytes());
        }
        // Closes right away: the server has not consumed anything yet.
    });
    let mut h = accepted.accept().await.unwrap();
    client.join().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..50u32 {
        assert_eq!(
            &h.recv().await.unwrap().unwrap()[..],
            i.to_be_bytes(),
            "frame {i}"
        );
    }
    assert_eq!(h.recv().await, Ok(None));
    assert_eq!(h.close_reason(), Some(CloseReason::PeerClosed));
}

/// Issue 12 finding 3 on the bridge: a consumer that never receives holds at most
/// `inbound_bytes` (plus one frame) of 1 MiB frames, not `inbound_capacity` of them; once it
/// receives, every frame arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_inbound_is_bounded_in_bytes() {
    let Some(rt) = runtime(1) else { return };
    let (hooks, mut accepted) = handle_listener(
        |_peer| Ok(AdmitToken::empty()),
        16,
        HandleOptions {
            inbound_capacity: 64,
            inbound_bytes: 256 * 1024,
            ..HandleOptions::default()
        },
    );
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(l, ConnOptions::default(), hooks).unwrap();
    const N: u32 = 24;
    let client = std::thread::spawn(move || {
        let mut c = connect(addr);
        for i in 0..N {
            let mut p = vec![i as u8; (1 << 20) - 16];
            p[..4].copy_from_slice(&i.to_be_bytes());
            write_frame(&mut c, &p);
        }
        c
    });
    let mut h = accepted.accept().await.unwrap();
    // The client writes until TCP pushes back; the bridge stops reading at its byte bound.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = total(&rt);
    assert!(
        s.frames_in <= 3,
        "the shard took {} frames of 1 MiB for a consumer that does not receive",
        s.frames_in
    );
    for i in 0..N {
        let f = h.recv().await.unwrap().unwrap();
        assert_eq!(&f[..4], i.to_be_bytes(), "frame {i}");
    }
    drop(client.join().unwrap());
}
