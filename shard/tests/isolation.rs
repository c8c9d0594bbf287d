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

/// The tests here count process-wide things (open fds, shard threads): one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

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
    let _serial = serial();
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

/// Handler that echoes, panics on the frame `panic` (in `on_frame`), and records its close.
struct Panicky {
    closes: Arc<std::sync::Mutex<Vec<ron_shard::CloseReason>>>,
    /// Something the handler owns that must go away with it (e.g. a runtime handle).
    _owned: Option<Arc<Runtime>>,
}

impl ron_shard::ConnHandler for Panicky {
    fn on_frame(&mut self, ctx: &mut ron_shard::ConnCtx<'_>, frame: ron_shard::Frame<'_>) {
        match frame.payload() {
            b"panic" => panic!("handler bug (test)"),
            b"block" => std::thread::sleep(Duration::from_millis(800)),
            b"big" => {
                // 4 MiB towards a peer that does not read.
                for _ in 0..4 {
                    ctx.send_bytes(bytes::Bytes::from(vec![1u8; 1 << 20]))
                        .unwrap();
                }
            }
            _ => ctx.send_frame(&frame).unwrap(),
        }
    }
    fn on_close(&mut self, reason: &ron_shard::CloseReason) {
        self.closes.lock().unwrap().push(reason.clone());
    }
}

#[derive(Default)]
struct PanickyHooks {
    closes: Arc<std::sync::Mutex<Vec<ron_shard::CloseReason>>>,
    opened_on: std::sync::Mutex<Vec<usize>>,
    /// Handed to every handler built (then dropped with it, on the shard thread).
    owned: std::sync::Mutex<Option<Arc<Runtime>>>,
}

impl ron_shard::AcceptHooks for PanickyHooks {
    fn admit(&self, _peer: SocketAddr) -> Result<ron_shard::AdmitToken, ron_shard::Reject> {
        Ok(ron_shard::AdmitToken::empty())
    }
    fn open(
        &self,
        _t: ron_shard::AdmitToken,
        meta: &ron_shard::ConnMeta,
        _r: ron_shard::ConnRemote,
    ) -> Box<dyn ron_shard::ConnHandler> {
        self.opened_on.lock().unwrap().push(meta.shard);
        Box::new(Panicky {
            closes: self.closes.clone(),
            _owned: self.owned.lock().unwrap().take(),
        })
    }
}

/// Listens on a fresh loopback port with `hooks`; returns the address.
fn listen(rt: &Runtime, opts: ConnOptions, hooks: Arc<dyn ron_shard::AcceptHooks>) -> SocketAddr {
    let l = ron_shard::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(l, opts, hooks).unwrap();
    addr
}

fn runtime_with(shards: usize, f: impl FnOnce(&mut RuntimeConfig)) -> Option<Runtime> {
    if !ron_shard::probe().usable {
        eprintln!("skipping: io_uring unusable here");
        return None;
    }
    let mut cfg = RuntimeConfig {
        shards,
        pin: false,
        buf_entries: 64,
        buf_size: 16 * 1024,
        ..RuntimeConfig::default()
    };
    f(&mut cfg);
    Some(Runtime::start(cfg).expect("runtime starts"))
}

/// Finding 2a: a panic in a handler ends its connection (aborted, reason `handler_panic`,
/// counted), not the shard: the other connection on the same shard keeps being served.
#[test]
fn a_panicking_handler_ends_only_its_connection() {
    let _serial = serial();
    let Some(rt) = runtime_with(1, |_| {}) else {
        return;
    };
    let hooks = Arc::new(PanickyHooks::default());
    let addr = listen(&rt, ConnOptions::default(), hooks.clone());
    let mut good = connect(addr);
    let mut bad = connect(addr);
    write_frame(&mut good, b"before");
    assert_eq!(read_frame(&mut good).unwrap(), b"before");
    write_frame(&mut bad, b"panic");
    // The panicking connection is aborted: EOF or reset, never an echo.
    assert!(read_frame(&mut bad).is_err());
    eventually("the panic is counted and the connection closed", || {
        let s = total(&rt);
        s.handler_panics == 1 && s.open == 1
    });
    assert_eq!(
        hooks.closes.lock().unwrap().as_slice(),
        [ron_shard::CloseReason::HandlerPanic]
    );
    assert_eq!(
        ron_shard::CloseReason::HandlerPanic.as_str(),
        "handler_panic"
    );
    for i in 0..20u32 {
        write_frame(&mut good, &i.to_be_bytes());
        assert_eq!(read_frame(&mut good).unwrap(), i.to_be_bytes());
    }
    assert!(rt.dead_shards().is_empty());
}

/// Finding 2b: a shard whose thread died is reported (`dead_shards`) and nothing is routed to
/// it: before, it reported 0 open connections, so the balancer and dials preferred it and
/// every hand-off to it was lost.
#[test]
fn a_dead_shard_attracts_no_connections() {
    let _serial = serial();
    let Some(rt) = runtime_with(2, |_| {}) else {
        return;
    };
    let hooks = Arc::new(PanickyHooks::default());
    let addr = listen(&rt, ConnOptions::default(), hooks.clone());
    // Load shard 0 (the accepting one) so that an empty shard 1 would be preferred.
    let mut keep: Vec<TcpStream> = (0..4).map(|_| connect(addr)).collect();
    for c in &mut keep {
        write_frame(c, b"hi");
        assert_eq!(read_frame(c).unwrap(), b"hi");
    }
    rt.inject_shard_panic(1).unwrap();
    eventually("shard 1 is reported dead", || rt.dead_shards() == [1]);
    let s = &rt.stats()[1];
    assert_eq!(s.shard_panics, 1);
    assert_eq!(s.open, 0, "its connections were closed: {s:?}");
    hooks.opened_on.lock().unwrap().clear();
    for i in 0..8u32 {
        let mut c = connect(addr);
        write_frame(&mut c, &i.to_be_bytes());
        assert_eq!(
            read_frame(&mut c).expect("a new connection is served"),
            i.to_be_bytes()
        );
    }
    assert!(hooks.opened_on.lock().unwrap().iter().all(|&s| s == 0));
    // Shutdown skips the dead shard and completes.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = rt.shutdown(Duration::from_millis(100)).wait();
        let _ = tx.send(r);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("shutdown with a dead shard completes");
}

/// Finding 4b: shutdown reaches a shard whose command queue is full. Before, the shutdown
/// command was refused (`busy`) and the caller then joined a thread that never stopped.
#[test]
fn shutdown_reaches_a_shard_with_a_full_command_queue() {
    let _serial = serial();
    let Some(rt) = runtime_with(1, |c| c.command_capacity = 2) else {
        return;
    };
    let hooks = Arc::new(PanickyHooks::default());
    let addr = listen(&rt, ConnOptions::default(), hooks.clone());
    let mut c = connect(addr);
    write_frame(&mut c, b"hi");
    assert_eq!(read_frame(&mut c).unwrap(), b"hi");
    // Block the shard thread in a handler, then fill its command queue with dials.
    write_frame(&mut c, b"block");
    std::thread::sleep(Duration::from_millis(100));
    let mut busy = false;
    for _ in 0..8 {
        let r = rt.dial(
            addr,
            Duration::from_secs(1),
            ConnOptions::default(),
            Box::new(NoDial),
        );
        if matches!(r, Err((ron_shard::ShardError::Busy, _))) {
            busy = true;
            break;
        }
    }
    assert!(busy, "the command queue filled up");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = rt.shutdown(Duration::from_millis(100)).wait();
        let _ = tx.send(r);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("shutdown completes although the command queue was full");
}

struct NoDial;
impl ron_shard::DialHooks for NoDial {
    fn connected(
        self: Box<Self>,
        _meta: &ron_shard::ConnMeta,
        _remote: ron_shard::ConnRemote,
    ) -> Box<dyn ron_shard::ConnHandler> {
        Box::new(ron_shard::Refuse)
    }
    fn failed(self: Box<Self>, _err: ron_shard::DialError) {}
}

/// Names of this process's threads that are shard threads.
fn shard_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|n| n.starts_with("ron-shard-"))
        .count()
}

/// Finding 4a: the last handle to a runtime dropped on one of its own shard threads (here: a
/// handler owning it, dropped when its connection closes). Before, the drop waited for that
/// very shard to drain — a deadlock; now the shards drain and exit on their own.
#[test]
fn runtime_dropped_on_its_own_shard_does_not_deadlock() {
    let _serial = serial();
    let before = shard_threads();
    let Some(rt) = runtime_with(1, |_| {}) else {
        return;
    };
    let rt = Arc::new(rt);
    let hooks = Arc::new(PanickyHooks::default());
    *hooks.owned.lock().unwrap() = Some(rt.clone());
    let addr = listen(&rt, ConnOptions::default(), hooks.clone());
    let mut c = connect(addr);
    write_frame(&mut c, b"hi");
    assert_eq!(read_frame(&mut c).unwrap(), b"hi");
    assert!(hooks.owned.lock().unwrap().is_none(), "the handler owns it");
    drop(rt);
    assert_eq!(shard_threads(), before + 1, "the handler keeps it alive");
    // The connection closes: its handler (and the last runtime handle) is dropped on the shard.
    drop(c);
    eventually("the shard thread exits", || shard_threads() == before);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Finding 4c: with zero-copy sends, a connection's socket is closed when the connection
/// ends, even though a peer that never reads withholds the send's notification. Before, the
/// send op kept the fd open until that notification.
#[test]
fn zero_copy_send_does_not_keep_the_socket_open() {
    let _serial = serial();
    let Some(rt) = runtime_with(1, |c| c.zc_threshold = Some(16 * 1024)) else {
        return;
    };
    let hooks = Arc::new(PanickyHooks::default());
    let l = small_sndbuf_listener();
    let addr = l.local_addr().unwrap();
    let opts = ConnOptions {
        timeouts: ron_shard::Timeouts {
            write: Some(Duration::from_millis(500)),
            ..ron_shard::Timeouts::default()
        },
        ..ConnOptions::default()
    };
    rt.listen(l, opts, hooks.clone()).unwrap();
    let base = open_fds();
    let mut peer = non_reader(addr);
    write_frame(&mut peer, b"big");
    eventually("the zero-copy send went out", || total(&rt).sends_zc > 0);
    eventually("the write deadline closes the connection", || {
        total(&rt).timeout_write == 1 && total(&rt).open == 0
    });
    // Only the peer's own socket is left.
    eventually("the server's socket is closed", || open_fds() == base + 1);
    drop(peer);
}

/// Records the bits of every `on_wake`.
struct Waker2 {
    wakes: Arc<std::sync::Mutex<Vec<u32>>>,
}

impl ron_shard::ConnHandler for Waker2 {
    fn on_open(&mut self, ctx: &mut ron_shard::ConnCtx<'_>) {
        // Two users of the one wake slot: a slow one and a fast one.
        ctx.wake_after(Duration::from_millis(300), 1);
        ctx.wake_after(Duration::from_millis(20), 2);
    }
    fn on_frame(&mut self, _ctx: &mut ron_shard::ConnCtx<'_>, _frame: ron_shard::Frame<'_>) {}
    fn on_wake(&mut self, _ctx: &mut ron_shard::ConnCtx<'_>, bits: u32) {
        self.wakes.lock().unwrap().push(bits);
    }
    fn on_close(&mut self, _reason: &ron_shard::CloseReason) {}
}

struct WakeHooks(Arc<std::sync::Mutex<Vec<u32>>>);

impl ron_shard::AcceptHooks for WakeHooks {
    fn admit(&self, _peer: SocketAddr) -> Result<ron_shard::AdmitToken, ron_shard::Reject> {
        Ok(ron_shard::AdmitToken::empty())
    }
    fn open(
        &self,
        _t: ron_shard::AdmitToken,
        _meta: &ron_shard::ConnMeta,
        _r: ron_shard::ConnRemote,
    ) -> Box<dyn ron_shard::ConnHandler> {
        Box::new(Waker2 {
            wakes: self.0.clone(),
        })
    }
}

/// Finding 5 (shared `wake_after`): two wake requests on one connection merge (earliest time,
/// both bits). Before, the later call replaced the earlier one and its bits were never
/// delivered (e.g. egress pacing's wake lost to another timer: a stalled writer).
#[test]
fn wake_requests_merge_instead_of_replacing_each_other() {
    let _serial = serial();
    let Some(rt) = runtime_with(1, |_| {}) else {
        return;
    };
    let wakes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = ron_shard::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(
        l,
        ConnOptions::default(),
        Arc::new(WakeHooks(wakes.clone())),
    )
    .unwrap();
    let _c = connect(addr);
    eventually("a wake arrives", || !wakes.lock().unwrap().is_empty());
    assert_eq!(wakes.lock().unwrap()[0], 1 | 2, "both requests' bits");
}

/// Found by the 30-minute soak: every closed connection left its deadline on the shard's heap
/// until that deadline came (an hour with `idle = 3600s`), so churn grew the heap — and RSS —
/// without bound for an idle timeout. Now the heap is compacted once stale entries outnumber
/// the live ones.
#[test]
fn closed_connections_do_not_accumulate_timers() {
    let _serial = serial();
    let Some(rt) = runtime_with(1, |_| {}) else {
        return;
    };
    let hooks = Arc::new(EchoHooks::default());
    let l = ron_shard::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    let opts = ConnOptions {
        timeouts: ron_shard::Timeouts {
            idle: Some(Duration::from_secs(3600)),
            ..ron_shard::Timeouts::default()
        },
        ..ConnOptions::default()
    };
    rt.listen(l, opts, hooks).unwrap();
    for i in 0..3000u32 {
        let mut c = connect(addr);
        write_frame(&mut c, &i.to_be_bytes());
        assert_eq!(read_frame(&mut c).unwrap(), i.to_be_bytes());
    }
    eventually("every churned connection closed", || {
        let s = total(&rt);
        s.closed == 3000 && s.open == 0
    });
    let s = total(&rt);
    assert!(
        s.timers <= 1100,
        "{} deadline entries for 0 open connections after 3000 churned",
        s.timers
    );
    assert!(s.timer_compactions >= 1, "{s:?}");
}
