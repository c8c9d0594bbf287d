//! End-to-end tests of the shard-local handler API over loopback TCP.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ron_shard::{bind, CloseReason, ConnOptions, TimeoutKind, Timeouts};

fn listen(
    rt: &ron_shard::Runtime,
    hooks: Arc<EchoHooks>,
    opts: ConnOptions,
) -> std::net::SocketAddr {
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(l, opts, hooks).unwrap();
    addr
}

#[test]
fn echo_small_and_large_frames_in_order() {
    let Some(rt) = runtime(2) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let addr = listen(&rt, hooks.clone(), ConnOptions::default());
    let mut c = connect(addr);
    // Sizes around the 16 KiB receive buffers and the 64 KiB chunk, up to the 1 MiB ceiling.
    let sizes = [
        0usize,
        1,
        100,
        16 * 1024 - 4,
        16 * 1024,
        40_000,
        64 * 1024,
        200_000,
        1 << 20,
    ];
    for (i, n) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..*n).map(|j| (i + j) as u8).collect();
        write_frame(&mut c, &payload);
        assert_eq!(read_frame(&mut c).unwrap(), payload, "size {n}");
    }
    // Pipelined burst of small frames: all come back in order.
    let mut burst = Vec::new();
    for i in 0..500u32 {
        let p = i.to_be_bytes();
        burst.extend_from_slice(&4u32.to_be_bytes());
        burst.extend_from_slice(&p);
    }
    c.write_all(&burst).unwrap();
    for i in 0..500u32 {
        assert_eq!(read_frame(&mut c).unwrap(), i.to_be_bytes());
    }
    let s = total(&rt);
    assert_eq!(s.frames_in, (sizes.len() + 500) as u64);
    assert!(
        s.frames_in_place > 0,
        "small frames are delivered in place: {s:?}"
    );
    // A handler-initiated graceful close: FIN after the flush.
    write_frame(&mut c, b"close-me");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    eventually("close recorded", || {
        hooks.closes.lock().unwrap().as_slice() == [CloseReason::Local]
    });
    assert_eq!(total(&rt).open, 0);
}

#[test]
fn oversized_frame_closes_before_reading_the_body() {
    let Some(rt) = runtime(1) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let opts = ConnOptions {
        max_frame: 1024,
        ..ConnOptions::default()
    };
    let addr = listen(&rt, hooks.clone(), opts);
    let mut c = connect(addr);
    c.write_all(&1025u32.to_be_bytes()).unwrap();
    let mut buf = [0u8; 16];
    // The server closes (EOF or reset) without echoing.
    let n = c.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    eventually("too_large counted", || total(&rt).too_large == 1);
    let closes = hooks.closes.lock().unwrap().clone();
    assert_eq!(closes.len(), 1);
    assert_eq!(closes[0].as_str(), "too_large");
}

#[test]
fn admission_refusal_closes_without_reading() {
    let Some(rt) = runtime(1) else { return };
    let hooks = Arc::new(EchoHooks {
        deny_all: true,
        ..EchoHooks::default()
    });
    let addr = listen(&rt, hooks.clone(), ConnOptions::default());
    for _ in 0..5 {
        let mut c = connect(addr);
        let _ = c.write_all(b"\0\0\0\x01x");
        let mut buf = [0u8; 8];
        assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    }
    eventually("5 rejections", || total(&rt).rejected == 5);
    let s = total(&rt);
    assert_eq!((s.accepted, s.adopted, s.bytes_in), (5, 0, 0));
    assert!(hooks.opened_on.lock().unwrap().is_empty());
}

#[test]
fn idle_and_read_timeouts_close_with_reason() {
    let Some(rt) = runtime(1) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let opts = ConnOptions {
        timeouts: Timeouts {
            read: Some(Duration::from_millis(150)),
            write: None,
            idle: Some(Duration::from_millis(300)),
        },
        ..ConnOptions::default()
    };
    let addr = listen(&rt, hooks.clone(), opts);
    // Idle: connect and say nothing.
    let mut idle = connect(addr);
    // Slow loris: half a header, then silence (the read deadline is shorter than idle).
    let mut loris = connect(addr);
    loris.write_all(&[0, 0]).unwrap();
    let mut b = [0u8; 4];
    assert_eq!(idle.read(&mut b).unwrap_or(0), 0);
    assert_eq!(loris.read(&mut b).unwrap_or(0), 0);
    eventually("both timed out", || {
        let s = total(&rt);
        s.timeout_idle == 1 && s.timeout_read == 1
    });
    let closes = hooks.closes.lock().unwrap().clone();
    assert!(closes.contains(&CloseReason::Timeout(TimeoutKind::Idle)));
    assert!(closes.contains(&CloseReason::Timeout(TimeoutKind::Read)));
}

#[test]
fn peer_close_mid_frame_is_reported() {
    let Some(rt) = runtime(1) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let addr = listen(&rt, hooks.clone(), ConnOptions::default());
    let mut c = connect(addr);
    c.write_all(&[0, 0, 0, 10, 1, 2]).unwrap();
    drop(c);
    eventually("closed", || hooks.closes.lock().unwrap().len() == 1);
    assert_eq!(
        hooks.closes.lock().unwrap()[0],
        CloseReason::PeerClosedMidFrame
    );
}

#[test]
fn output_backpressure_pauses_reading_and_resumes_without_loss() {
    // A peer that sends 64 KiB frames and does not read: the echoes fill the socket and the
    // shard's queue, reading pauses at the high-water mark (16 × chunk_bytes), and once the
    // peer reads, reading resumes and every frame comes back exactly, in order. Large frames
    // are assembled in pooled buffers, so this also checks that a recycled buffer never
    // carries a stale or foreign payload.
    let Some(rt) = runtime(1) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let addr = listen(&rt, hooks.clone(), ConnOptions::default());
    // 10 MiB of echoes: more than the kernel socket buffers take. A small receive buffer on
    // the peer, so the echoes back up into the shard's queue
    // instead of the kernel's (loopback autotuning would otherwise absorb megabytes).
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut c: std::net::TcpStream = sock.into();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = 160usize;
    let payload = |i: usize| -> Vec<u8> {
        (0..64 * 1024)
            .map(|j| (i as u8).wrapping_mul(31) ^ (j as u8))
            .collect()
    };
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..n {
            write_frame(&mut w, &payload(i));
        }
    });
    eventually("reading paused by queued output", || {
        total(&rt).recv_paused >= 1
    });
    for i in 0..n {
        assert_eq!(read_frame(&mut c).unwrap(), payload(i), "frame {i}");
    }
    writer.join().unwrap();
    let s = total(&rt);
    assert_eq!(s.frames_in, n as u64);
    assert_eq!(s.frames_out, n as u64);
    assert!(hooks.closes.lock().unwrap().is_empty());
}

/// Writes `bytes` in `piece`-sized writes with a pause between them, so the server sees the
/// frame arrive in many partial receives.
fn trickle(c: &mut std::net::TcpStream, bytes: &[u8], piece: usize) {
    for p in bytes.chunks(piece) {
        c.write_all(p).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn large_frames_switch_to_direct_receive_and_small_ones_switch_back() {
    let Some(rt) = runtime(1) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let addr = listen(&rt, hooks.clone(), ConnOptions::default());
    let mut c = connect(addr);
    let big = |k: u8| (0..200_000u32).map(|i| (i as u8) ^ k).collect::<Vec<u8>>();
    // 1. A large frame trickled in 7 KiB pieces: several partial direct receives.
    let p1 = big(1);
    trickle(&mut c, &framed(&p1), 7 * 1024);
    assert_eq!(read_frame(&mut c).unwrap(), p1);
    let s = total(&rt);
    assert_eq!(s.recv_direct_switches, 1, "{s:?}");
    assert!(s.recv_direct >= 2, "{s:?}");
    // 2. More large frames back to back (fresh buffers sized like the last frame), one of
    //    them larger than the last, one smaller.
    let (p2, p3, p4) = (big(2), vec![5u8; 300_000], vec![6u8; 70_000]);
    let mut wire = framed(&p2);
    wire.extend_from_slice(&framed(&p3));
    wire.extend_from_slice(&framed(&p4));
    c.write_all(&wire).unwrap();
    for p in [&p2, &p3, &p4] {
        assert_eq!(&read_frame(&mut c).unwrap(), p);
    }
    // 3. Bursts of small frames, in order: the first lands in the fresh buffer sized for a
    //    large frame (handed out as slices of it) and switches the connection back to the
    //    ring, where the next one is delivered in place.
    let in_place_before = total(&rt).frames_in_place;
    for round in 0..2u32 {
        let mut burst = Vec::new();
        for i in 0..150u32 {
            burst.extend_from_slice(&framed(&(round * 1000 + i).to_be_bytes()));
        }
        c.write_all(&burst).unwrap();
        for i in 0..150u32 {
            assert_eq!(
                read_frame(&mut c).unwrap(),
                (round * 1000 + i).to_be_bytes()
            );
        }
    }
    // 4. Large again: a second switch.
    let p5 = big(5);
    c.write_all(&framed(&p5)).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), p5);
    let s = total(&rt);
    assert_eq!(s.frames_in, 305);
    assert!(s.frames_in_place > in_place_before, "{s:?}");
    assert!(s.recv_direct_switches >= 2, "{s:?}");
    // `bytes_out` counts send completions, which may trail the client reading the echo.
    eventually("every byte echoed", || {
        let s = total(&rt);
        s.bytes_in == s.bytes_out
    });
    drop(c);
    eventually("closed", || total(&rt).open == 0);
    assert_eq!(hooks.closes.lock().unwrap()[0], CloseReason::PeerClosed);
}

#[test]
fn direct_receive_keeps_read_timeout_and_mid_frame_close() {
    let Some(rt) = runtime(1) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let opts = ConnOptions {
        timeouts: Timeouts {
            read: Some(Duration::from_millis(200)),
            write: None,
            idle: None,
        },
        ..ConnOptions::default()
    };
    let addr = listen(&rt, hooks.clone(), opts);
    // Slow loris inside a large frame: the direct receive waits, the read deadline fires.
    let mut loris = connect(addr);
    let wire = framed(&[1u8; 100_000]);
    loris.write_all(&wire[..40_000]).unwrap();
    let mut b = [0u8; 4];
    assert_eq!(loris.read(&mut b).unwrap_or(0), 0);
    eventually("read timeout", || total(&rt).timeout_read == 1);
    // Peer gone inside a large frame.
    let mut gone = connect(addr);
    gone.write_all(&wire[..60_000]).unwrap();
    eventually("direct", || total(&rt).recv_direct_switches == 2);
    drop(gone);
    eventually("both closed", || hooks.closes.lock().unwrap().len() == 2);
    let closes = hooks.closes.lock().unwrap().clone();
    assert_eq!(
        closes,
        vec![
            CloseReason::Timeout(TimeoutKind::Read),
            CloseReason::PeerClosedMidFrame
        ]
    );
}

#[test]
fn ceiling_still_applies_to_frames_received_directly() {
    let Some(rt) = runtime(1) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let opts = ConnOptions {
        max_frame: 128 * 1024,
        ..ConnOptions::default()
    };
    let addr = listen(&rt, hooks.clone(), opts);
    let mut c = connect(addr);
    let p = vec![7u8; 100_000];
    c.write_all(&framed(&p)).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), p);
    assert_eq!(total(&rt).recv_direct_switches, 1);
    // The next header (read into a fresh direct buffer) announces more than the ceiling.
    let mut w = (128u32 * 1024 + 1).to_be_bytes().to_vec();
    w.extend_from_slice(&[0; 1000]);
    c.write_all(&w).unwrap();
    let mut b = [0u8; 4];
    assert_eq!(c.read(&mut b).unwrap_or(0), 0);
    eventually("too_large", || total(&rt).too_large == 1);
    assert_eq!(hooks.closes.lock().unwrap()[0].as_str(), "too_large");
}

/// A fixed-seed mix of small and large frames, written in random pieces by one thread while
/// another reads the echo: every frame comes back whole and in order whichever receive mode
/// (ring, direct body, fresh direct buffer) took it.
#[test]
fn random_mix_of_frame_sizes_and_write_splits_echoes_exactly() {
    let Some(rt) = runtime(1) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let addr = listen(&rt, hooks, ConnOptions::default());
    let c = connect(addr);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |bound: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % bound as u64) as usize
    };
    let mut wire = Vec::new();
    let mut expect = Vec::new();
    for i in 0..200 {
        let n = match next(3) {
            0 => next(64),
            1 => 16 * 1024 + next(80 * 1024),
            _ => 90 * 1024 + next(200 * 1024),
        };
        let p: Vec<u8> = (0..n).map(|j| (i * 13 + j) as u8).collect();
        wire.extend_from_slice(&framed(&p));
        expect.push(p);
    }
    let mut pieces = Vec::new();
    let mut pos = 0;
    while pos < wire.len() {
        let k = (1 + next(100 * 1024)).min(wire.len() - pos);
        pieces.push(wire[pos..pos + k].to_vec());
        pos += k;
    }
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for p in pieces {
            w.write_all(&p).unwrap();
        }
    });
    let mut r = c;
    for (i, e) in expect.iter().enumerate() {
        let got = read_frame(&mut r).unwrap();
        assert!(got == *e, "frame {i}: {} vs {} bytes", got.len(), e.len());
    }
    writer.join().unwrap();
    let s = total(&rt);
    assert_eq!(s.frames_in, 200);
    assert!(s.recv_direct > 0 && s.recv_direct_switches > 0, "{s:?}");
}

/// A connection that streamed large frames and then went quiet gives its fresh direct
/// buffer back (the receive is cancelled and the ring, which holds no memory while idle,
/// takes over); the next large frame switches it to direct receives again.
#[test]
fn quiet_direct_connection_returns_to_the_ring() {
    let Some(rt) = runtime(1) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let addr = listen(&rt, hooks, ConnOptions::default());
    let mut c = connect(addr);
    let p = vec![4u8; 100_000];
    c.write_all(&framed(&p)).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), p);
    assert_eq!(total(&rt).recv_direct_switches, 1);
    eventually("idle direct receive cancelled", || {
        total(&rt).recv_direct_idle == 1
    });
    // Quiet for much longer than the idle window: nothing more is cancelled or re-armed.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(total(&rt).recv_direct_idle, 1);
    c.write_all(&framed(&p)).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), p);
    write_frame(&mut c, b"small");
    assert_eq!(read_frame(&mut c).unwrap(), b"small");
    let s = total(&rt);
    assert_eq!(s.recv_direct_switches, 2, "{s:?}");
    assert_eq!(s.frames_in, 3);
}
