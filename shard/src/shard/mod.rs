//! One shard: a pinned thread that owns an io_uring, a provided-buffer ring, its connections
//! (a slab addressed through SQE tags: op kind + slab index + generation), its timers (a
//! deadline heap fed by each connection's sans-IO [`ConnState`]) and its stats cells.
//!
//! Everything here is single-threaded; other threads reach a shard only through
//! [`ShardShared`]: a bounded command queue (listen, adopt an accepted fd, dial, shutdown), a
//! wake queue holding at most one entry per connection (deduplicated by the connection's
//! `queued` flag), and an eventfd doorbell the ring keeps a read armed on.
//!
//! It does not interpret frames or decide policy: admission is the caller's
//! [`AcceptHooks::admit`], and handlers decide what to send.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use slab::Slab;

use crate::balance::Balancer;
use crate::conn::{ConnState, TimeoutKind, Timeouts};
use crate::ctx::{ConnCtx, ConnIo, RecvKind};
use crate::doorbell::Doorbell;
use crate::exec::{self, ConnKey, ExecRemote, TaskWaker};
use crate::frame::{self, Decoded};
use crate::handler::{AcceptHooks, ConnHandler, DialHooks, Refuse};
use crate::meta::{
    AdmitToken, CloseReason, ConnMeta, DialError, Frame, FrameSrc, HandshakeFailure, Reject,
    TlsFacts,
};
use crate::remote::{ConnRemote, RemoteShared, WakeSink};
use crate::stats::ShardStats;
use crate::sys::{self, Body, BufRing, Completion, OpId, Resource, Ring, RingSlice, SendBatch};
use crate::tls_conn::{TlsConn, TlsDial};
use crate::tls_pump::{PumpError, TlsPump};

mod accept;
mod dial;
mod drain;
mod quic;
mod recv;
mod send;
mod tasks;
mod timers;

/// Per-connection options fixed at accept/dial time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnOptions {
    /// Frame ceiling (checked before allocating).
    pub max_frame: u32,
    /// Deadlines.
    pub timeouts: Timeouts,
    /// Set TCP_NODELAY.
    pub nodelay: bool,
}

impl Default for ConnOptions {
    fn default() -> Self {
        Self {
            max_frame: 1 << 20,
            timeouts: Timeouts::default(),
            nodelay: true,
        }
    }
}

/// Outcome of one shard's drain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardReport {
    /// Connections that closed during the drain, before the deadline.
    pub drained: u64,
    /// Connections aborted at the deadline.
    pub aborted: u64,
}

pub(crate) enum Command {
    Listen {
        id: u64,
        fd: OwnedFd,
        hooks: Arc<dyn AcceptHooks>,
        opts: ConnOptions,
        tls: Option<Arc<rustls::ServerConfig>>,
    },
    StopListen {
        id: u64,
    },
    Adopt(Adopt),
    Dial {
        addr: SocketAddr,
        /// A Unix-domain socket path to connect to instead of `addr` (then `addr` is only the
        /// fallback peer address, replaced by the listener's `SO_PEERCRED` uid address).
        unix: Option<std::path::PathBuf>,
        deadline: Instant,
        opts: ConnOptions,
        hooks: Box<dyn DialHooks>,
        tls: Option<TlsDial>,
    },
    /// Fault injection (tests): the shard thread panics outside any handler, as a bug in the
    /// shard itself would.
    Panic,
    /// A QUIC listener's socket for this shard (every shard gets one of the `SO_REUSEPORT`
    /// group).
    ListenQuic {
        id: u64,
        fd: OwnedFd,
        hooks: Arc<dyn AcceptHooks>,
        opts: ConnOptions,
        quic: Arc<crate::quic::QuicServer>,
    },
    /// A QUIC dial from this shard.
    DialQuic {
        addr: SocketAddr,
        deadline: Instant,
        opts: ConnOptions,
        hooks: Box<dyn DialHooks>,
        quic: Box<crate::quic::QuicDial>,
    },
    /// A datagram another shard received for a QUIC connection of this one.
    QuicDatagram {
        listener: u64,
        peer: SocketAddr,
        data: bytes::BytesMut,
    },
}

/// A shutdown request: drain until `deadline`, then report.
pub(crate) type StopRequest = (Instant, tokio::sync::oneshot::Sender<ShardReport>);

pub(crate) struct Adopt {
    fd: OwnedFd,
    peer: SocketAddr,
    local: SocketAddr,
    token: AdmitToken,
    hooks: Arc<dyn AcceptHooks>,
    opts: ConnOptions,
    tls: Option<Arc<rustls::ServerConfig>>,
    accepted_at: Instant,
}

/// The part of a shard other threads may touch.
pub(crate) struct ShardShared {
    pub(crate) id: usize,
    /// Process-unique identity (tells a shard thread of this runtime from any other).
    pub(crate) uid: u64,
    cmd_tx: Sender<Command>,
    pub(crate) wakes: Arc<WakeSink>,
    pub(crate) bell: Arc<Doorbell>,
    pub(crate) exec: Arc<ExecRemote>,
    pub(crate) stats: ShardStats,
    /// The shard thread died (a panic outside any handler): nothing may be routed to it.
    pub(crate) dead: AtomicBool,
    /// A shutdown request, delivered beside the bounded command queue so that a full queue
    /// can never keep a shard from shutting down (`stop_flag` says it is there).
    stop: std::sync::Mutex<Option<StopRequest>>,
    stop_flag: AtomicBool,
}

impl std::fmt::Debug for ShardShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardShared").field("id", &self.id).finish()
    }
}

impl ShardShared {
    /// Queues a command and rings the doorbell. Gives the command back if the queue is full or
    /// the shard has stopped.
    pub(crate) fn send_cmd(&self, cmd: Command) -> Result<(), Box<(Command, &'static str)>> {
        match self.cmd_tx.try_send(cmd) {
            Ok(()) => {
                self.doorbell();
                Ok(())
            }
            Err(TrySendError::Full(c)) => Err(Box::new((c, "busy"))),
            Err(TrySendError::Disconnected(c)) => Err(Box::new((c, "stopped"))),
        }
    }

    fn doorbell(&self) {
        self.bell.ring();
    }

    /// Asks the shard to drain until `deadline` and report (never refused: not through the
    /// bounded command queue).
    pub(crate) fn request_stop(&self, req: StopRequest) {
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = Some(req);
        self.stop_flag.store(true, Ordering::Release);
        self.doorbell();
    }

    /// The pending shutdown request, if any (taken once).
    fn take_stop(&self) -> Option<StopRequest> {
        if !self.stop_flag.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// True once the shard thread has died.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

/// Static per-shard configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShardConfig {
    pub ring_entries: u32,
    pub defer_taskrun: bool,
    pub buf_entries: u16,
    pub buf_size: u32,
    pub chunk_bytes: usize,
    pub zc_threshold: Option<usize>,
    pub command_capacity: usize,
    pub out_high_water: usize,
    pub direct_recv_min: Option<usize>,
    pub tls_key_update_records: Option<u64>,
}

/// Creates the shared half of a shard and the receivers its thread needs.
pub(crate) fn shared(
    id: usize,
    cfg: &ShardConfig,
) -> std::io::Result<(Arc<ShardShared>, ShardQueues)> {
    let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(cfg.command_capacity);
    // Unbounded by type, bounded by construction: a connection has at most one entry queued
    // (its `queued` flag), so the queue never holds more than the shard's connections.
    let (wake_tx, wake_rx) = crossbeam_channel::unbounded();
    let efd = sys::eventfd()?;
    let read_efd = efd.try_clone()?;
    let bell = Arc::new(Doorbell::new(efd));
    let (exec, task_rx) = ExecRemote::new(bell.clone());
    let uid = exec::new_uid();
    Ok((
        Arc::new(ShardShared {
            id,
            uid,
            cmd_tx,
            wakes: Arc::new(WakeSink {
                id,
                uid,
                tx: wake_tx,
                bell: bell.clone(),
            }),
            bell,
            exec,
            stats: ShardStats::default(),
            dead: AtomicBool::new(false),
            stop: std::sync::Mutex::new(None),
            stop_flag: AtomicBool::new(false),
        }),
        ShardQueues {
            cmd_rx,
            wake_rx,
            task_rx,
            efd: read_efd,
        },
    ))
}

/// The receiving ends, moved into the shard thread.
pub(crate) struct ShardQueues {
    cmd_rx: Receiver<Command>,
    wake_rx: Receiver<Arc<RemoteShared>>,
    task_rx: Receiver<Arc<TaskWaker>>,
    efd: File,
}

impl ShardQueues {
    fn is_empty(&self) -> bool {
        self.cmd_rx.is_empty() && self.wake_rx.is_empty() && self.task_rx.is_empty()
    }
}

/// Tasks polled per round before the shard applies their effects and looks at the ring again.
const TASK_BUDGET: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Shutdown = 4,
    Connect = 5,
    Event = 6,
    UdpRecv = 7,
    UdpSend = 8,
}

const GEN_MASK: u32 = 0x00ff_ffff;

/// SQE tag: op kind (8 bits) | generation (24 bits) | slab index (32 bits).
fn tag(kind: Kind, idx: usize, gen: u32) -> u64 {
    ((kind as u64) << 56) | (u64::from(gen & GEN_MASK) << 32) | (idx as u64 & 0xffff_ffff)
}

fn untag(t: u64) -> (u8, usize, u32) {
    (
        (t >> 56) as u8,
        (t & 0xffff_ffff) as usize,
        ((t >> 32) as u32) & GEN_MASK,
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Conn(usize, u32),
    Dial(usize, u32),
    Listener(usize, u32),
    Wake(usize, u32),
    Resume(usize, u32),
    /// A fresh direct receive armed with this sequence number may be waiting on an idle peer.
    DirectIdle(usize, u32, u32),
    /// A QUIC connection's deadline (quinn's timers, its handshake, stream prefaces).
    Quic(usize, u32),
    /// A UDP socket's receive could not be armed: try again.
    UdpRearm(usize, u32),
}

/// Received bytes handed to [`Shard::deliver`]: a provided buffer (frames in place) or bytes
/// held back by rate pacing.
enum Chunk {
    Ring(RingSlice),
    Owned(bytes::Bytes),
    /// A direct receive of `received` bytes, already decoded into `Shard::decoded` (owned
    /// frames only), with the decoder's verdict.
    Direct {
        received: usize,
        res: Result<(), frame::FrameError>,
    },
}

/// A fresh direct-receive buffer has room for as many frames like the last as fit in this
/// (at least one).
const DIRECT_BATCH_BYTES: usize = 256 * 1024;

/// A fresh direct receive still waiting after this long is cancelled (its buffer freed) and
/// the connection returns to the provided-buffer ring.
const DIRECT_IDLE: Duration = Duration::from_millis(10);

impl Chunk {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Ring(r) => r.as_slice(),
            Self::Owned(b) => b,
            Self::Direct { .. } => &[],
        }
    }
}

struct Conn {
    gen: u32,
    fd: Rc<OwnedFd>,
    meta: ConnMeta,
    state: ConnState,
    handler: Option<Box<dyn ConnHandler>>,
    io: ConnIo,
    /// TLS state (None for plain TCP).
    tls: Option<Box<TlsConn>>,
    /// Who builds the handler once the TLS handshake completes (None once open).
    opener: Option<Opener>,
    /// QUIC: the stream this connection is (its I/O goes through quinn-proto, not `fd`).
    quic: Option<quic::QuicStream>,
}

impl Conn {
    /// The peer finished sending: a graceful close, or an abortive one inside a frame.
    fn mark_eof(&mut self) {
        self.io.eof = true;
        if self.io.close.is_none() {
            self.io.close = Some(if self.state.mid_frame() {
                (CloseReason::PeerClosedMidFrame, false)
            } else {
                (CloseReason::PeerClosed, true)
            });
        }
    }
}

/// Builds a connection's handler (at once for TCP, after the handshake for TLS).
enum Opener {
    Accept {
        hooks: Arc<dyn AcceptHooks>,
        token: AdmitToken,
    },
    Dial(Box<dyn DialHooks>),
}

/// Runs caller code (a handler callback or a hook) so that a panic in it ends at most the
/// connection it belongs to, never the shard: the panic is caught here (the panic hook has
/// already printed it) and reported as `None`; the caller closes the connection with
/// [`CloseReason::HandlerPanic`] and counts it (`handler_panics`).
pub(super) fn contained<R>(f: impl FnOnce() -> R) -> Option<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

impl Opener {
    /// Builds the handler; `None` if the hook panicked.
    fn open(self, meta: &ConnMeta, remote: ConnRemote) -> Option<Box<dyn ConnHandler>> {
        contained(|| match self {
            Self::Accept { hooks, token } => hooks.open(token, meta, remote),
            Self::Dial(h) => h.connected(meta, remote),
        })
    }

    /// Tells the hook; false if it panicked.
    fn failed(self, meta: &ConnMeta, f: HandshakeFailure) -> bool {
        contained(|| self.failed_inner(meta, f)).is_some()
    }

    fn failed_inner(self, meta: &ConnMeta, f: HandshakeFailure) {
        match self {
            Self::Accept { hooks, token } => hooks.handshake_failed(token, meta, &f),
            Self::Dial(h) => h.failed(match f.reason {
                CloseReason::Timeout(_) => DialError::Timeout,
                CloseReason::Tls(kind) => DialError::Tls {
                    kind,
                    detail: f.detail,
                },
                CloseReason::Shutdown => DialError::Unavailable("shutdown"),
                CloseReason::Io(e) => DialError::Io(std::io::Error::from_raw_os_error(e)),
                other => DialError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("connection ended during the TLS handshake: {other}"),
                )),
            }),
        }
    }
}

struct PendingDial {
    gen: u32,
    fd: Rc<OwnedFd>,
    op: OpId,
    hooks: Option<Box<dyn DialHooks>>,
    opts: ConnOptions,
    peer: SocketAddr,
    /// Connecting to a Unix-domain socket.
    unix: bool,
    timed_out: bool,
    deadline: Instant,
    started: Instant,
    tls: Option<TlsDial>,
}

struct ListenerSlot {
    gen: u32,
    id: u64,
    fd: Rc<OwnedFd>,
    hooks: Arc<dyn AcceptHooks>,
    opts: ConnOptions,
    op: Option<OpId>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

struct Drain {
    deadline: Instant,
    reply: Option<tokio::sync::oneshot::Sender<ShardReport>>,
    drained: u64,
}

/// A shard's event loop state (lives on its thread).
pub(crate) struct Shard {
    id: usize,
    cfg: ShardConfig,
    ring: Ring,
    bufs: Rc<BufRing>,
    efd: Rc<File>,
    shared: Arc<ShardShared>,
    peers: Arc<[Arc<ShardShared>]>,
    queues: ShardQueues,
    conns: Slab<Conn>,
    dials: Slab<PendingDial>,
    listeners: Slab<ListenerSlot>,
    next_gen: u32,
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    starved: Vec<(usize, u32)>,
    balancer: Balancer,
    conn_ids: Arc<AtomicU64>,
    drain: Option<Drain>,
    comps: Vec<Completion>,
    decoded: Vec<Decoded>,
    now: Instant,
    /// Submit queued SQEs right after the current completion (see `run`).
    flush_now: bool,
    /// QUIC: UDP sockets with their endpoints, connections, the ones to drive this turn, the
    /// client socket per address family (v4, v6), reused send buffers, the receive copy arena
    /// and an event scratch list.
    udp_socks: Slab<quic::QuicSocket>,
    qconns: Slab<quic::QuicConn>,
    quic_dirty: Vec<usize>,
    client_socks: [Option<usize>; 2],
    send_pool: Vec<Vec<u8>>,
    rx: bytes::BytesMut,
    qevents: Vec<quinn_proto::Event>,
    /// New peers of this loop turn, decided in `flush_quic` (socket slot, its generation).
    pending_incoming: Vec<(usize, u32, quinn_proto::Incoming)>,
}

impl Shard {
    /// Builds the shard's ring and buffer ring (on its own thread).
    pub(crate) fn new(
        id: usize,
        cfg: ShardConfig,
        shared: Arc<ShardShared>,
        peers: Arc<[Arc<ShardShared>]>,
        queues: ShardQueues,
        conn_ids: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let mut ring = Ring::new(sys::RingOptions {
            entries: cfg.ring_entries,
            defer_taskrun: cfg.defer_taskrun,
        })?;
        let bufs = BufRing::new(cfg.buf_entries, cfg.buf_size, 0)?;
        ring.register_buf_ring(bufs.clone())?;
        let efd = Rc::new(queues.efd.try_clone()?);
        let n = peers.len();
        Ok(Self {
            id,
            cfg,
            ring,
            bufs,
            efd,
            shared,
            peers,
            queues,
            conns: Slab::with_capacity(1024),
            dials: Slab::new(),
            listeners: Slab::new(),
            next_gen: 1,
            timers: BinaryHeap::new(),
            starved: Vec::new(),
            balancer: Balancer::new(n),
            conn_ids,
            drain: None,
            comps: Vec::with_capacity(256),
            decoded: Vec::with_capacity(64),
            now: Instant::now(),
            flush_now: false,
            udp_socks: Slab::new(),
            qconns: Slab::new(),
            quic_dirty: Vec::new(),
            client_socks: [None, None],
            send_pool: Vec::new(),
            rx: bytes::BytesMut::new(),
            qevents: Vec::new(),
            pending_incoming: Vec::new(),
        })
    }

    fn gen(&mut self) -> u32 {
        let g = self.next_gen;
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        if self.next_gen == 0 {
            self.next_gen = 1;
        }
        g
    }

    /// Runs until shut down.
    pub(crate) fn run(mut self) {
        exec::install(self.shared.uid, self.shared.exec.clone());
        self.arm_doorbell();
        let mut dirty = Vec::new();
        let mut wakes = Vec::new();
        loop {
            self.now = Instant::now();
            exec::tick(self.now);
            self.process_commands();
            self.process_wakes();
            exec::take_remote(&self.queues.task_rx);
            self.run_tasks(&mut dirty);
            self.unstarve();
            self.flush_quic();
            if self.check_drain() {
                break;
            }
            // Wakes of consumers on other threads: once per waiter per batch.
            exec::flush_deferred(&mut wakes);
            let mut wait = self.next_wait();
            let ready = exec::has_ready();
            let parked = wait != Some(Duration::ZERO) && !ready;
            if ready {
                wait = Some(Duration::ZERO);
            }
            if parked {
                // Posters ring the eventfd only while we are parked: publish that, then look
                // at the queues once more (see `doorbell`).
                self.shared.bell.park();
                if !self.queues.is_empty() {
                    wait = Some(Duration::ZERO);
                }
            }
            let waited = self.ring.submit_and_wait(wait);
            if parked {
                self.shared.bell.unpark();
            }
            if waited.is_err() {
                // The ring itself failed (not an op): nothing can progress. Abort everything.
                self.abort_all(CloseReason::Shutdown);
                if let Some(d) = self.drain.as_mut().and_then(|d| d.reply.take()) {
                    let _ = d.send(ShardReport::default());
                }
                break;
            }
            self.now = Instant::now();
            let mut comps = std::mem::take(&mut self.comps);
            self.ring.complete(&mut comps);
            for c in comps.drain(..) {
                self.dispatch(c);
                if self.flush_now {
                    // A TLS handshake step just cost this shard real CPU (key exchange,
                    // signature): send its reply now rather than after the rest of the batch,
                    // so its peer is not kept waiting behind other connections' handshakes.
                    self.flush_now = false;
                    let _ = self.ring.submit();
                }
            }
            self.comps = comps;
            self.fire_timers();
            self.flush_quic();
            self.compact_timers();
            ShardStats::set(&self.shared.stats.timers, self.timers.len() as u64);
        }
    }

    fn next_wait(&self) -> Option<Duration> {
        let mut t = self.now + Duration::from_secs(5);
        if let Some(Reverse((d, _))) = self.timers.peek() {
            t = t.min(*d);
        }
        if let Some(d) = exec::next_timer() {
            t = t.min(d);
        }
        if let Some(d) = &self.drain {
            t = t.min(d.deadline);
        }
        Some(t.saturating_duration_since(self.now))
    }

    fn arm_doorbell(&mut self) {
        let efd = self.efd.clone();
        // If this fails the shard can still run; commands are also polled every iteration.
        let _ = self.ring.read_eventfd(&efd, tag(Kind::Event, 0, 0));
    }

    fn process_commands(&mut self) {
        while let Ok(cmd) = self.queues.cmd_rx.try_recv() {
            match cmd {
                Command::Listen {
                    id,
                    fd,
                    hooks,
                    opts,
                    tls,
                } => self.listen(id, fd, hooks, opts, tls),
                Command::StopListen { id } => {
                    self.stop_listen(Some(id));
                    self.stop_listen_quic(Some(id));
                }
                Command::Adopt(a) => self.adopt(a),
                Command::Dial {
                    addr,
                    unix,
                    deadline,
                    opts,
                    hooks,
                    tls,
                } => self.dial(addr, unix, deadline, opts, hooks, tls),
                Command::Panic => panic!("ron-shard {}: injected fault (shard panic)", self.id),
                Command::ListenQuic {
                    id,
                    fd,
                    hooks,
                    opts,
                    quic,
                } => self.listen_quic(id, fd, hooks, opts, quic),
                Command::DialQuic {
                    addr,
                    deadline,
                    opts,
                    hooks,
                    quic,
                } => self.dial_quic(addr, deadline, opts, hooks, *quic),
                Command::QuicDatagram {
                    listener,
                    peer,
                    data,
                } => self.on_forwarded(listener, peer, data),
            }
        }
        if let Some((deadline, reply)) = self.shared.take_stop() {
            self.begin_drain(deadline, reply);
        }
    }

    fn process_wakes(&mut self) {
        while let Ok(r) = self.queues.wake_rx.try_recv() {
            let bits = r.word.take();
            let (idx, gen) = (r.key.0 as usize, r.key.1);
            if self.conns.get(idx).is_some_and(|c| c.gen == gen) {
                self.call(idx, |h, ctx| h.on_wake(ctx, bits));
                self.service(idx);
            }
        }
    }

    fn unstarve(&mut self) {
        if self.starved.is_empty() || self.bufs.held() >= usize::from(self.bufs.entries()) {
            return;
        }
        for (idx, gen) in std::mem::take(&mut self.starved) {
            if let Some(c) = self.conns.get_mut(idx) {
                if c.gen == gen {
                    c.io.starved = false;
                    self.service(idx);
                }
            }
        }
    }

    /// Runs a handler callback with a ctx.
    fn call(&mut self, idx: usize, f: impl FnOnce(&mut dyn ConnHandler, &mut ConnCtx<'_>)) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        let Some(mut h) = conn.handler.take() else {
            return;
        };
        {
            let mut ctx = ConnCtx {
                io: &mut conn.io,
                state: &mut conn.state,
                meta: &conn.meta,
                now,
            };
            if contained(|| f(&mut *h, &mut ctx)).is_none() {
                ctx.abort_with(CloseReason::HandlerPanic);
                ShardStats::add(&self.shared.stats.handler_panics, 1);
            }
        }
        conn.handler = Some(h);
    }

    /// Tells a dial's hooks that it failed (a panic in them is contained and counted).
    fn dial_failed(&self, hooks: Box<dyn DialHooks>, e: DialError) {
        if contained(|| hooks.failed(e)).is_none() {
            ShardStats::add(&self.shared.stats.handler_panics, 1);
        }
    }

    /// Reconciles a connection after any event: close, arm receive, submit output, re-arm timer.
    fn service(&mut self, idx: usize) {
        self.release_deferred(idx);
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        let key_tag_gen = conn.gen;
        if conn.io.pin_copies > 0 {
            ShardStats::add(
                &self.shared.stats.echo_copied,
                u64::from(conn.io.pin_copies),
            );
            conn.io.pin_copies = 0;
        }
        if let Some((reason, graceful)) = conn.io.close.clone() {
            if !graceful {
                self.finish(idx, reason);
                return;
            }
            conn.io.want_read = false;
            if let (Some(op), false) = (conn.io.recv_op, conn.io.recv_cancelled) {
                conn.io.recv_cancelled = true;
                let _ = self.ring.cancel(op);
            }
            if conn.quic.is_some() {
                // Queued frames go to quinn first; the stream's FIN follows them (`finish`).
                self.quic_write(idx);
                let conn = &mut self.conns[idx];
                if conn.io.out.is_empty() || conn.quic.is_none() {
                    self.finish(idx, reason);
                    return;
                }
                if matches!(conn.io.close, Some((_, false))) {
                    let reason = conn.io.close.clone().map_or(reason, |c| c.0);
                    self.finish(idx, reason);
                    return;
                }
                self.arm_conn_timers(idx);
                return;
            }
            let mut flushed = conn.io.out.is_empty() && conn.io.send_op.is_none();
            if flushed {
                if let Some(tls) = conn.tls.as_mut() {
                    // Graceful end of an established TLS connection: close_notify first.
                    if !tls.close_notify
                        && conn.opener.is_none()
                        && tls.error.is_none()
                        && !tls.pump.is_closed()
                    {
                        tls.close_notify = true;
                        let _ = tls.pump.queue_close_notify();
                    }
                    flushed = !tls.has_output();
                }
            }
            if flushed {
                if !conn.io.eof || reason != CloseReason::PeerClosed {
                    let fd = conn.fd.clone();
                    let _ = self
                        .ring
                        .shutdown_write(&fd, tag(Kind::Shutdown, idx, key_tag_gen));
                }
                self.finish(idx, reason);
                return;
            }
        } else if !self.arm_recv(idx) {
            return;
        }
        if !self.submit_output(idx) {
            return;
        }
        self.arm_conn_timers(idx);
    }

    /// Removes a connection: cancels its ops (their completions release buffers; the last one
    /// closes the fd), tells the handler.
    fn finish(&mut self, idx: usize, reason: CloseReason) {
        let mut conn = self.conns.remove(idx);
        if let Some(qs) = conn.quic.take() {
            let graceful = matches!(conn.io.close, Some((_, true))) && conn.io.out.is_empty();
            self.quic_stream_end(idx, qs, graceful, conn.io.eof);
        }
        if let Some(op) = conn.io.recv_op.take() {
            if !conn.io.recv_cancelled {
                let _ = self.ring.cancel(op);
            }
        }
        if let Some(op) = conn.io.send_op.take() {
            if !matches!(conn.io.close, Some((_, true))) {
                let _ = self.ring.cancel(op);
            }
        }
        conn.io.out.clear();
        conn.io.remote.0.gone.store(true, Ordering::Release);
        if let Some(opener) = conn.opener.take() {
            // The TLS handshake never completed: the caller learns why instead of `on_close`.
            ShardStats::add(&self.shared.stats.tls_handshake_failed, 1);
            let tls = conn.tls.as_ref();
            let detail = match tls.and_then(|t| t.error.as_ref()) {
                Some(e) => e.to_string(),
                None => reason.to_string(),
            };
            let elapsed = tls.map_or(Duration::ZERO, |t| {
                self.now.saturating_duration_since(t.started)
            });
            let told = opener.failed(
                &conn.meta,
                HandshakeFailure {
                    reason: reason.clone(),
                    detail,
                    elapsed,
                },
            );
            if !told {
                ShardStats::add(&self.shared.stats.handler_panics, 1);
            }
        }
        let st = &self.shared.stats;
        ShardStats::sub(&st.open, 1);
        ShardStats::add(&st.closed, 1);
        match &reason {
            CloseReason::Frame(_) => ShardStats::add(&st.too_large, 1),
            CloseReason::Timeout(TimeoutKind::Read) => ShardStats::add(&st.timeout_read, 1),
            CloseReason::Timeout(TimeoutKind::Write) => ShardStats::add(&st.timeout_write, 1),
            CloseReason::Timeout(TimeoutKind::Idle) => ShardStats::add(&st.timeout_idle, 1),
            _ => {}
        }
        if let Some(d) = &mut self.drain {
            if reason == CloseReason::Shutdown {
                ShardStats::add(&st.aborted, 1);
            } else {
                d.drained += 1;
                ShardStats::add(&st.drained, 1);
            }
        }
        if let Some(mut h) = conn.handler.take() {
            // The handler goes with its connection; a panic in `on_close` or in its drop ends
            // nothing more.
            if contained(move || {
                h.on_close(&reason);
                drop(h);
            })
            .is_none()
            {
                ShardStats::add(&self.shared.stats.handler_panics, 1);
            }
        }
    }

    fn dispatch(&mut self, c: Completion) {
        let (kind, idx, gen) = untag(c.tag);
        match kind {
            k if k == Kind::Recv as u8 => self.on_recv(idx, gen, c),
            k if k == Kind::Send as u8 => self.on_send(idx, gen, c),
            k if k == Kind::Accept as u8 => self.on_accept(idx, gen, c),
            k if k == Kind::Connect as u8 => self.on_connect(idx, gen, c),
            k if k == Kind::UdpRecv as u8 => self.on_udp_recv(idx, gen, c),
            k if k == Kind::UdpSend as u8 => self.on_udp_send(idx, gen, c),
            k if k == Kind::Event as u8 => {
                self.shared.bell.rearmed();
                ShardStats::set(&self.shared.stats.doorbell_rings, self.shared.bell.rings());
                self.arm_doorbell();
            }
            _ => {} // Shutdown: nothing to do; its resource (fd Rc) is dropped with `c`.
        }
    }

    fn live(&self, idx: usize, gen: u32) -> bool {
        self.conns.get(idx).is_some_and(|c| c.gen & GEN_MASK == gen)
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The shard loop itself panicked (handler panics are contained before this): mark
            // the shard dead first, so no new connection or dial is routed to it while its
            // connections are being closed below.
            self.shared.dead.store(true, Ordering::Release);
            ShardStats::add(&self.shared.stats.shard_panics, 1);
        }
        // Handlers see an explicit close before the ring (and every op's resources) goes away;
        // then the tasks go (their connection ends find their connections closed).
        self.abort_all(CloseReason::Shutdown);
        self.quic_shutdown();
        exec::uninstall();
        self.ring.cancel_all_and_drain(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for (kind, idx, gen) in [
            (Kind::Recv, 0usize, 1u32),
            (Kind::Send, 123_456, GEN_MASK),
            (Kind::Accept, u32::MAX as usize, 7),
        ] {
            let t = tag(kind, idx, gen);
            assert_eq!(untag(t), (kind as u8, idx, gen));
        }
        // Generation wraps within 24 bits and never collides with the kind byte.
        assert_eq!(untag(tag(Kind::Event, 1, GEN_MASK + 2)).2, 1);
    }

    #[test]
    fn idle_connection_footprint_is_small() {
        // Per idle connection the shard keeps a `Conn` slot (no receive buffer: receives use
        // the shared provided-buffer ring) plus the handler box and the remote.
        let slot = std::mem::size_of::<Conn>();
        let remote = std::mem::size_of::<RemoteShared>();
        assert!(slot + remote < 1024, "slot {slot} + remote {remote}");
    }
}
