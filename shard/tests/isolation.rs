//! Isolation of connections sharing a shard: one peer or one handler must not take down the
//! others (issue 12). Each test sets up the abuse on a one-shard runtime and checks that a
//! well-behaved connection on the same shard keeps being served.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ron_shard::{ConnOptions, Runtime, RuntimeConfig};
use socket2::{Domain, Socket, Type};

/// A one-shard runtime with a tiny provided-buffer ring (8 buffers).
fn small_ring_runtime() -> Option<Runtime> {
    if !ron_shard::probe().usable {
        eprintln!("skipping: io_uring unusable here");
        return None;
    }
    Some(
        Runtime::start(RuntimeConfig {
            shards: 1,
            pin: false,
            buf_entries: 8,
            buf_size: 16 * 1024,
            ..RuntimeConfig::default()
        })
        .expect("runtime starts"),
    )
}

/// A listener whose accepted sockets inherit a small send buffer, so the echo to a peer that
/// does not read blocks after a few KiB.
fn small_sndbuf_listener() -> TcpListener {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_send_buffer_size(4096).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(128).unwrap();
    s.into()
}

/// A client that never reads, with a small receive window.
fn non_reader(addr: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.set_nodelay(true).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

/// Finding 1 (receive-buffer pinning): a peer that stops reading its echoes and trickles
/// one-byte frames, one per TCP segment, must not pin the shard's receive ring. Before the fix
/// every trickled frame's echo held its 16 KiB provided buffer until its (blocked) send
/// completed, so after 8 frames the ring was empty and every other connection's receive
/// failed with ENOBUFS: the good connection below got no echo.
#[test]
fn non_reading_peer_cannot_pin_the_receive_ring() {
    let Some(rt) = small_ring_runtime() else {
        return;
    };
    let hooks = Arc::new(EchoHooks::default());
    let l = small_sndbuf_listener();
    let addr = l.local_addr().unwrap();
    rt.listen(l, ConnOptions::default(), hooks.clone()).unwrap();

    let mut attacker = non_reader(addr);
    // Fill the kernel's buffers both ways with echoes nobody reads (far below the output
    // high-water mark, so the server keeps reading this peer).
    for _ in 0..4 {
        write_frame(&mut attacker, &vec![7u8; 16 * 1024]);
    }
    std::thread::sleep(Duration::from_millis(200));
    // Then one-byte frames, each in its own segment (and its own receive completion).
    for i in 0..48u8 {
        attacker.write_all(&[0, 0, 0, 1, i]).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    // (Before the fix the ring ran dry after 8 of them: the attacker starved itself too.)
    eventually("the ring's worth of trickled frames is received", || {
        total(&rt).frames_in >= 4 + 8
    });

    // A well-behaved connection on the same shard is still served, again and again.
    let mut good = connect(addr);
    good.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    for i in 0..32u32 {
        let payload = i.to_be_bytes();
        write_frame(&mut good, &payload);
        let echo = read_frame(&mut good).expect("the good connection gets its echo");
        assert_eq!(echo, payload);
    }
    let s = total(&rt);
    assert!(
        s.echo_copied > 0,
        "echoes beyond the attacker's share of the ring are copied: {s:?}"
    );
    assert_eq!(s.open, 2, "both connections are still open: {s:?}");
    drop(attacker);
}
