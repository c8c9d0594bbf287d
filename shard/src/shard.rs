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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use slab::Slab;

use crate::balance::Balancer;
use crate::conn::{ConnState, TimeoutKind, Timeouts};
use crate::doorbell::Doorbell;
use crate::exec::{self, ConnKey, ExecRemote, TaskWaker};
use crate::frame::{self, Decoded};
use crate::handler::{
    AcceptHooks, AdmitToken, CloseReason, ConnCtx, ConnHandler, ConnMeta, ConnRemote, DialError,
    DialHooks, Frame, FrameSrc, HandshakeFailure, RemoteShared, TlsFacts,
};
use crate::runtime::TlsDial;
use crate::stats::ShardStats;
use crate::sys::{
    self, Body, BufRing, Completion, OpId, OutSeg, Resource, Ring, RingSlice, SendBatch,
};
use crate::tls_conn::TlsConn;
use crate::tls_pump::{PumpError, TlsPump};

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
        deadline: Instant,
        opts: ConnOptions,
        hooks: Box<dyn DialHooks>,
        tls: Option<TlsDial>,
    },
    Shutdown {
        deadline: Instant,
        reply: tokio::sync::oneshot::Sender<ShardReport>,
    },
}

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
    wake_tx: Sender<Arc<RemoteShared>>,
    pub(crate) bell: Arc<Doorbell>,
    pub(crate) exec: Arc<ExecRemote>,
    pub(crate) stats: ShardStats,
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

    pub(crate) fn post_wake(&self, r: Arc<RemoteShared>) {
        if self.wake_tx.send(r).is_ok() {
            self.doorbell();
        }
    }

    fn doorbell(&self) {
        self.bell.ring();
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
    Ok((
        Arc::new(ShardShared {
            id,
            uid: exec::new_uid(),
            cmd_tx,
            wake_tx,
            bell,
            exec,
            stats: ShardStats::default(),
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

/// What a connection's receive in flight reads into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecvKind {
    /// Multishot into the provided-buffer ring.
    Ring,
    /// The missing bytes of the frame in progress, into its lent body buffer.
    Body,
    /// A fresh buffer sized for one frame like the last (starts at a frame boundary).
    Fresh,
}

impl Chunk {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Ring(r) => r.as_slice(),
            Self::Owned(b) => b,
            Self::Direct { .. } => &[],
        }
    }
}

/// Per-connection I/O bookkeeping (what the ctx touches, plus op handles).
pub(crate) struct ConnIo {
    pub(crate) out: VecDeque<OutSeg>,
    pub(crate) want_read: bool,
    /// Output above the high-water mark pauses reading (see [`ConnCtx::set_output_pauses_reading`]).
    pub(crate) output_pauses_reading: bool,
    /// Reading is held until then (rate pacing), independently of `want_read`.
    pub(crate) read_hold: Option<Instant>,
    read_hold_armed: Option<Instant>,
    /// Received bytes held back while reads are held (delivered as the hold allows).
    deferred: bytes::BytesMut,
    pub(crate) close: Option<(CloseReason, bool)>,
    pub(crate) remote: ConnRemote,
    recv_op: Option<OpId>,
    recv_cancelled: bool,
    /// What the receive in flight reads into.
    recv_kind: RecvKind,
    /// Direct-receive mode (plain TCP carrying large frames): receives go straight into the
    /// frame's buffer, or into a fresh buffer sized for one frame like the last, instead of
    /// the provided-buffer ring.
    direct: bool,
    /// Payload length of the last large frame (sizes the next fresh direct buffer).
    direct_len: usize,
    /// Counts fresh direct receives armed (matches a `DirectIdle` timer to its receive).
    fresh_seq: u32,
    /// Reading is paused because queued output reached the high-water mark.
    out_paused: bool,
    starved: bool,
    send_op: Option<OpId>,
    zc_sent: Option<i32>,
    eof: bool,
    timer: Option<Instant>,
    /// A wake requested by the handler itself ([`ConnCtx::wake_after`]): when, which bits.
    pub(crate) wake_at: Option<(Instant, u32)>,
    wake_armed: Option<Instant>,
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

impl Opener {
    fn open(self, meta: &ConnMeta, remote: ConnRemote) -> Box<dyn ConnHandler> {
        match self {
            Self::Accept { hooks, token } => hooks.open(token, meta, remote),
            Self::Dial(h) => h.connected(meta, remote),
        }
    }

    fn failed(self, meta: &ConnMeta, f: HandshakeFailure) {
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
            if self.check_drain() {
                break;
            }
            // Wakes of consumers on other threads: once per waiter per batch.
            exec::flush_deferred(&mut wakes);
            let mut wait = self.next_wait();
            let parked = wait != Some(Duration::ZERO) && !exec::has_ready();
            if exec::has_ready() {
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
        }
    }

    /// Polls the tasks that are ready, then applies what they asked of their connections
    /// (queued frames, closes, resumed reads), a few rounds while that wakes more tasks.
    fn run_tasks(&mut self, dirty: &mut Vec<ConnKey>) {
        for _ in 0..4 {
            let polls = exec::run(TASK_BUDGET);
            exec::take_dirty(dirty);
            if polls == 0 && dirty.is_empty() {
                break;
            }
            for (idx, gen) in dirty.drain(..) {
                let idx = idx as usize;
                if self.conns.get(idx).is_some_and(|c| c.gen == gen) {
                    self.call(idx, |h, ctx| h.on_wake(ctx, 0));
                    self.service(idx);
                }
            }
            if polls > 0 {
                let c = exec::counts();
                let st = &self.shared.stats;
                ShardStats::set(&st.tasks_spawned, c.spawned);
                ShardStats::set(&st.task_polls, c.polls);
                ShardStats::set(&st.task_panics, c.panics);
            }
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
                Command::StopListen { id } => self.stop_listen(Some(id)),
                Command::Adopt(a) => self.adopt(a),
                Command::Dial {
                    addr,
                    deadline,
                    opts,
                    hooks,
                    tls,
                } => self.dial(addr, deadline, opts, hooks, tls),
                Command::Shutdown { deadline, reply } => self.begin_drain(deadline, reply),
            }
        }
    }

    fn process_wakes(&mut self) {
        while let Ok(r) = self.queues.wake_rx.try_recv() {
            r.queued.store(false, Ordering::Release);
            let bits = r.bits.swap(0, Ordering::AcqRel);
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

    // ---- listeners ----

    fn listen(
        &mut self,
        id: u64,
        fd: OwnedFd,
        hooks: Arc<dyn AcceptHooks>,
        opts: ConnOptions,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) {
        if self.drain.is_some() {
            return;
        }
        let gen = self.gen();
        let idx = self.listeners.insert(ListenerSlot {
            gen,
            id,
            fd: Rc::new(fd),
            hooks,
            opts,
            op: None,
            tls,
        });
        self.arm_accept(idx);
    }

    fn arm_accept(&mut self, idx: usize) {
        let Some(l) = self.listeners.get(idx) else {
            return;
        };
        let fd = l.fd.clone();
        let t = tag(Kind::Accept, idx, l.gen);
        match self.ring.accept_multi(&fd, t) {
            Ok(op) => self.listeners[idx].op = Some(op),
            Err(_) => {
                let gen = self.listeners[idx].gen;
                self.timers.push(Reverse((
                    self.now + Duration::from_millis(50),
                    TimerKey::Listener(idx, gen),
                )));
            }
        }
    }

    fn stop_listen(&mut self, id: Option<u64>) {
        let idxs: Vec<usize> = self
            .listeners
            .iter()
            .filter(|(_, l)| id.is_none_or(|id| l.id == id))
            .map(|(i, _)| i)
            .collect();
        for idx in idxs {
            let l = self.listeners.remove(idx);
            if let Some(op) = l.op {
                let _ = self.ring.cancel(op);
            }
            // The accept op holds its own Rc of the fd: it closes when the op completes.
        }
    }

    fn on_accept(&mut self, idx: usize, gen: u32, c: Completion) {
        let live = self
            .listeners
            .get(idx)
            .is_some_and(|l| l.gen & GEN_MASK == gen);
        if !live {
            // Stopped listener: an fd accepted before the cancel landed is closed here.
            drop(sys::adopt_fd(c.result));
            return;
        }
        if !c.more {
            self.listeners[idx].op = None;
        }
        if c.result >= 0 {
            if let Some(fd) = sys::adopt_fd(c.result) {
                ShardStats::add(&self.shared.stats.accepted, 1);
                self.admit(idx, fd);
            }
        }
        if !c.more {
            if matches!(
                -c.result,
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
            ) {
                // Out of descriptors/memory: back off instead of spinning.
                let gen = self.listeners[idx].gen;
                self.timers.push(Reverse((
                    self.now + Duration::from_millis(50),
                    TimerKey::Listener(idx, gen),
                )));
            } else {
                self.arm_accept(idx);
            }
        }
    }

    fn admit(&mut self, lidx: usize, fd: OwnedFd) {
        let sock = socket2::SockRef::from(&fd);
        let (Ok(peer), Ok(local)) = (sock.peer_addr(), sock.local_addr()) else {
            return; // already reset by the peer; fd closes here
        };
        let (Some(peer), Some(local)) = (peer.as_socket(), local.as_socket()) else {
            return;
        };
        let l = &self.listeners[lidx];
        let hooks = l.hooks.clone();
        let opts = l.opts;
        let tls = l.tls.clone();
        let accepted_at = self.now;
        let token = match hooks.admit(peer) {
            Ok(t) => t,
            Err(_) => {
                ShardStats::add(&self.shared.stats.rejected, 1);
                return; // fd dropped: closed before any buffer or read
            }
        };
        let peers = self.peers.clone();
        let target = self.balancer.pick(|i| {
            let s = &peers[i].stats;
            (
                s.open.load(Ordering::Relaxed),
                s.adopted.load(Ordering::Relaxed),
            )
        });
        let adopt = Adopt {
            fd,
            peer,
            local,
            token,
            hooks,
            opts,
            tls,
            accepted_at,
        };
        if target == self.id {
            self.adopt(adopt);
            return;
        }
        if let Err(e) = peers[target].send_cmd(Command::Adopt(adopt)) {
            if let (Command::Adopt(a), _) = *e {
                self.balancer.undo(target);
                self.adopt(a);
            }
        }
    }

    // ---- connections ----

    fn adopt(&mut self, a: Adopt) {
        ShardStats::add(&self.shared.stats.adopted, 1);
        if self.drain.is_some() {
            return; // shutting down: refuse (fd closes here)
        }
        if a.opts.nodelay {
            let _ = socket2::SockRef::from(&a.fd).set_nodelay(true);
        }
        let opener = Opener::Accept {
            hooks: a.hooks,
            token: a.token,
        };
        let tls = match a.tls {
            None => None,
            Some(cfg) => {
                let deadline = a.opts.timeouts.read.map(|d| a.accepted_at + d);
                match TlsPump::server(cfg) {
                    Ok(p) => Some(TlsConn::new(p, a.accepted_at, deadline)),
                    Err(e) => {
                        self.fail_before_install(a.peer, a.local, false, opener, &e);
                        return;
                    }
                }
            }
        };
        self.install(a.fd, a.peer, a.local, false, a.opts, tls, opener);
    }

    /// A TLS pump could not even be created (a config the pump refuses): report it as a
    /// handshake failure without installing the connection (the socket closes here).
    fn fail_before_install(
        &mut self,
        peer: SocketAddr,
        local: SocketAddr,
        outbound: bool,
        opener: Opener,
        e: &PumpError,
    ) {
        ShardStats::add(&self.shared.stats.tls_handshake_failed, 1);
        let meta = ConnMeta {
            id: self.conn_ids.fetch_add(1, Ordering::Relaxed),
            peer,
            local,
            shard: self.id,
            outbound,
            tls: None,
        };
        opener.failed(
            &meta,
            HandshakeFailure {
                reason: CloseReason::Tls(e.kind()),
                detail: e.to_string(),
                elapsed: Duration::ZERO,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn install(
        &mut self,
        fd: OwnedFd,
        peer: SocketAddr,
        local: SocketAddr,
        outbound: bool,
        opts: ConnOptions,
        tls: Option<TlsConn>,
        opener: Opener,
    ) {
        let gen = self.gen();
        let entry = self.conns.vacant_entry();
        let idx = entry.key();
        let meta = ConnMeta {
            id: self.conn_ids.fetch_add(1, Ordering::Relaxed),
            peer,
            local,
            shard: self.id,
            outbound,
            tls: None,
        };
        let remote = ConnRemote(Arc::new(RemoteShared {
            shard: self.shared.clone(),
            key: (idx as u32, gen),
            bits: AtomicU32::new(0),
            queued: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        }));
        let (handler, opener) = match tls {
            None => (Some(opener.open(&meta, remote.clone())), None),
            Some(_) => (None, Some(opener)),
        };
        let open_now = handler.is_some();
        entry.insert(Conn {
            gen,
            fd: Rc::new(fd),
            meta,
            state: ConnState::new(self.now, opts.max_frame, opts.timeouts),
            handler,
            tls: tls.map(Box::new),
            opener,
            io: ConnIo {
                out: VecDeque::new(),
                want_read: true,
                output_pauses_reading: true,
                read_hold: None,
                read_hold_armed: None,
                deferred: bytes::BytesMut::new(),
                close: None,
                remote,
                recv_op: None,
                recv_cancelled: false,
                recv_kind: RecvKind::Ring,
                direct: false,
                direct_len: 0,
                fresh_seq: 0,
                out_paused: false,
                starved: false,
                send_op: None,
                zc_sent: None,
                eof: false,
                timer: None,
                wake_at: None,
                wake_armed: None,
            },
        });
        ShardStats::add(&self.shared.stats.open, 1);
        if open_now {
            self.call(idx, |h, ctx| h.on_open(ctx));
        }
        self.service(idx);
    }

    /// Delivers bytes held back by rate pacing, one receive buffer's worth at a time, for as
    /// long as no new hold is requested (each delivery charges the buckets again).
    fn release_deferred(&mut self, idx: usize) {
        let max = self.cfg.buf_size as usize;
        loop {
            let Some(conn) = self.conns.get_mut(idx) else {
                return;
            };
            if conn.io.deferred.is_empty()
                || conn.io.close.is_some()
                || conn.io.read_hold.is_some_and(|t| t > self.now)
                || !conn.io.want_read
            {
                if conn.io.deferred.is_empty() && conn.io.deferred.capacity() > 64 * 1024 {
                    conn.io.deferred = bytes::BytesMut::new();
                }
                return;
            }
            let n = conn.io.deferred.len().min(max);
            let b = conn.io.deferred.split_to(n).freeze();
            self.deliver(idx, Chunk::Owned(b));
        }
    }

    /// The TLS handshake of `idx` completed: record the facts, build the handler, open it.
    fn handshake_done(&mut self, idx: usize) {
        let now = self.now;
        let conn = &mut self.conns[idx];
        let Some(tls) = conn.tls.as_mut() else { return };
        let Some(opener) = conn.opener.take() else {
            return;
        };
        tls.hs_deadline = None;
        let p = &tls.pump;
        conn.meta.tls = Some(TlsFacts {
            handshake: now.saturating_duration_since(tls.started),
            hybrid_pq: p.is_hybrid_pq(),
            group: p.negotiated_group(),
            alpn: p.alpn_protocol().map(<[u8]>::to_vec),
            resumed: p.is_resumed(),
        });
        // The handshake counts as activity: the idle clock starts now.
        conn.state.set_paused(now, true);
        conn.state.set_paused(now, false);
        ShardStats::add(&self.shared.stats.tls_handshakes, 1);
        let h = opener.open(&conn.meta, conn.io.remote.clone());
        conn.handler = Some(h);
        self.call(idx, |h, ctx| h.on_open(ctx));
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
            f(&mut *h, &mut ctx);
        }
        conn.handler = Some(h);
    }

    /// Reconciles a connection after any event: close, arm receive, submit output, re-arm timer.
    fn service(&mut self, idx: usize) {
        self.release_deferred(idx);
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        let key_tag_gen = conn.gen;
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
        } else {
            // Reading. Output above the high-water mark pauses reading too, so a peer that
            // does not read cannot make its connection hold receive buffers without bound.
            // With hysteresis: once paused, reading resumes only below half the mark, so a
            // peer hovering at the mark does not cancel and re-arm the receive per frame.
            let held = match conn.io.read_hold {
                Some(t) if t > self.now => {
                    if conn.io.read_hold_armed != Some(t) {
                        conn.io.read_hold_armed = Some(t);
                        self.timers
                            .push(Reverse((t, TimerKey::Resume(idx, conn.gen))));
                    }
                    true
                }
                _ => {
                    conn.io.read_hold = None;
                    false
                }
            };
            let mark = if conn.io.out_paused {
                self.cfg.out_high_water / 2
            } else {
                self.cfg.out_high_water
            };
            let over = conn.io.output_pauses_reading && conn.state.queued() >= mark;
            if over && !conn.io.out_paused {
                ShardStats::add(&self.shared.stats.recv_paused, 1);
            }
            conn.io.out_paused = over;
            let want = conn.io.want_read && !held && !over;
            conn.state.set_paused(self.now, !want);
            if want && conn.io.recv_op.is_none() && !conn.io.eof && !conn.io.starved {
                let fd = conn.fd.clone();
                let t = tag(Kind::Recv, idx, key_tag_gen);
                let direct = conn.io.direct && conn.tls.is_none() && conn.io.deferred.is_empty();
                let armed = if !direct {
                    conn.io.direct = false;
                    conn.io.recv_kind = RecvKind::Ring;
                    self.ring.recv_multi(&fd, t)
                } else if let Some((buf, missing)) = conn.state.take_body() {
                    conn.io.recv_kind = RecvKind::Body;
                    self.ring.recv_into(&fd, buf, missing, t)
                } else {
                    // At a frame boundary (a partial header never stays in direct mode): room
                    // for a few frames like the last, headers included, so one receive can
                    // take several (fewer receive calls, and fewer window updates sent).
                    let one = frame::HEADER_LEN + conn.io.direct_len;
                    let want = one * (DIRECT_BATCH_BYTES / one).max(1);
                    conn.io.recv_kind = RecvKind::Fresh;
                    // A peer that stops sending must not pin this buffer: if nothing arrives
                    // within DIRECT_IDLE the receive is cancelled and the connection goes
                    // back to the ring (which holds no memory while idle).
                    conn.io.fresh_seq = conn.io.fresh_seq.wrapping_add(1);
                    self.timers.push(Reverse((
                        self.now + DIRECT_IDLE,
                        TimerKey::DirectIdle(idx, key_tag_gen, conn.io.fresh_seq),
                    )));
                    self.ring.recv_into(&fd, frame::take_buf(want), want, t)
                };
                match armed {
                    Ok(op) => self.conns[idx].io.recv_op = Some(op),
                    Err(e) => {
                        self.conns[idx].io.close = Some((
                            CloseReason::Io(e.raw_os_error().unwrap_or(libc::EIO)),
                            false,
                        ));
                        self.finish(idx, CloseReason::Io(e.raw_os_error().unwrap_or(libc::EIO)));
                        return;
                    }
                }
            } else if !want {
                if let (Some(op), false) = (conn.io.recv_op, conn.io.recv_cancelled) {
                    conn.io.recv_cancelled = true;
                    let _ = self.ring.cancel(op);
                }
            }
        }
        // Output.
        let conn = &mut self.conns[idx];
        if conn.tls.is_some() {
            if conn.io.send_op.is_none() && !self.tls_output(idx) {
                return;
            }
        } else if conn.io.send_op.is_none() && !conn.io.out.is_empty() {
            let mut segs = Vec::new();
            let mut bytes = 0usize;
            while let Some(seg) = conn.io.out.front() {
                if !segs.is_empty()
                    && (bytes + seg.remaining() > self.cfg.chunk_bytes || segs.len() >= 256)
                {
                    break;
                }
                bytes += seg.remaining();
                // Invariant: front() was Some just above.
                segs.push(conn.io.out.pop_front().expect("front exists"));
            }
            let zc = self.cfg.zc_threshold.is_some_and(|t| bytes >= t);
            let batch = SendBatch::new(segs);
            let fd = conn.fd.clone();
            match self
                .ring
                .send(&fd, batch, zc, tag(Kind::Send, idx, key_tag_gen))
            {
                Ok(op) => {
                    let st = &self.shared.stats;
                    ShardStats::add(&st.send_submissions, 1);
                    if zc {
                        ShardStats::add(&st.sends_zc, 1);
                    }
                    self.conns[idx].io.send_op = Some(op);
                }
                Err(e) => {
                    self.finish(idx, CloseReason::Io(e.raw_os_error().unwrap_or(libc::EIO)));
                    return;
                }
            }
        }
        // Timer.
        let conn = &mut self.conns[idx];
        if let Some((t, _)) = conn.io.wake_at {
            if conn.io.wake_armed != Some(t) {
                conn.io.wake_armed = Some(t);
                self.timers
                    .push(Reverse((t, TimerKey::Wake(idx, conn.gen))));
            }
        }
        let hs = conn.tls.as_ref().and_then(|t| t.hs_deadline);
        let next = match (conn.state.poll_timeout(), hs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(d) = next {
            if conn.io.timer.is_none_or(|t| d < t) {
                conn.io.timer = Some(d);
                self.timers
                    .push(Reverse((d, TimerKey::Conn(idx, conn.gen))));
            }
        }
    }

    /// Submits the next ciphertext batch of a TLS connection (no send in flight). Returns false
    /// if the connection was finished.
    fn tls_output(&mut self, idx: usize) -> bool {
        let chunk = self.cfg.chunk_bytes;
        let conn = &mut self.conns[idx];
        let gen = conn.gen;
        let Some(tls) = conn.tls.as_mut() else {
            return true;
        };
        let queued = conn.state.queued();
        let batch = match tls.next_batch(&mut conn.io.out, queued, chunk, chunk) {
            Ok(Some(b)) => b,
            Ok(None) => return true,
            Err(e) => {
                let kind = e.kind();
                tls.error = Some(e);
                self.finish(idx, CloseReason::Tls(kind));
                return false;
            }
        };
        let (seg, passes) = batch;
        ShardStats::add(&self.shared.stats.tls_encrypt_passes, passes);
        let fd = conn.fd.clone();
        let batch = SendBatch::new(vec![seg]);
        match self.ring.send(&fd, batch, false, tag(Kind::Send, idx, gen)) {
            Ok(op) => {
                ShardStats::add(&self.shared.stats.send_submissions, 1);
                self.conns[idx].io.send_op = Some(op);
                true
            }
            Err(e) => {
                self.finish(idx, CloseReason::Io(e.raw_os_error().unwrap_or(libc::EIO)));
                false
            }
        }
    }

    /// Removes a connection: cancels its ops (their completions release buffers; the last one
    /// closes the fd), tells the handler.
    fn finish(&mut self, idx: usize, reason: CloseReason) {
        let mut conn = self.conns.remove(idx);
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
            opener.failed(
                &conn.meta,
                HandshakeFailure {
                    reason: reason.clone(),
                    detail,
                    elapsed,
                },
            );
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
            h.on_close(&reason);
        }
    }

    fn dispatch(&mut self, c: Completion) {
        let (kind, idx, gen) = untag(c.tag);
        match kind {
            k if k == Kind::Recv as u8 => self.on_recv(idx, gen, c),
            k if k == Kind::Send as u8 => self.on_send(idx, gen, c),
            k if k == Kind::Accept as u8 => self.on_accept(idx, gen, c),
            k if k == Kind::Connect as u8 => self.on_connect(idx, gen, c),
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

    fn on_recv(&mut self, idx: usize, gen: u32, c: Completion) {
        if !self.live(idx, gen) {
            return;
        }
        let conn = &mut self.conns[idx];
        if !c.more {
            conn.io.recv_op = None;
            conn.io.recv_cancelled = false;
        }
        if let Some(Resource::RecvInto(_, buf)) = c.res {
            self.on_direct_recv(idx, c.result, buf);
            return;
        }
        if c.result > 0 {
            if let Some(buf) = c.buf {
                if conn.io.close.is_none() {
                    let held = conn.io.read_hold.is_some_and(|t| t > self.now);
                    if held || !conn.io.deferred.is_empty() {
                        // Reads are held (rate pacing) but the multishot receive had already
                        // taken these bytes: keep them (a copy; the buffer goes back to the
                        // ring at once) and deliver them as the hold allows.
                        ShardStats::add(&self.shared.stats.bytes_in, buf.len() as u64);
                        ShardStats::add(&self.shared.stats.recv_completions, 1);
                        conn.io.deferred.extend_from_slice(buf.as_slice());
                    } else {
                        self.deliver(idx, Chunk::Ring(buf));
                        self.maybe_go_direct(idx);
                    }
                }
            }
        } else if c.result == 0 {
            // Bytes held back by pacing go first (unpaced: the peer is done sending).
            while !self.conns[idx].io.deferred.is_empty() && self.conns[idx].io.close.is_none() {
                let b = self.conns[idx].io.deferred.split().freeze();
                self.deliver(idx, Chunk::Owned(b));
            }
            self.conns[idx].mark_eof();
        } else {
            match -c.result {
                libc::ENOBUFS => {
                    ShardStats::add(&self.shared.stats.recv_no_buffers, 1);
                    conn.io.starved = true;
                    self.starved.push((idx, conn.gen));
                }
                libc::ECANCELED => {}
                e => {
                    if conn.io.close.is_none() {
                        conn.io.close = Some((CloseReason::Io(e), false));
                    }
                }
            }
        }
        self.service(idx);
    }

    /// After a ring receive: a plain-TCP frame with many bytes still missing switches the
    /// connection to direct receives. The multishot receive is cancelled; what it already
    /// took is still delivered (appended to the frame) before the first direct receive.
    fn maybe_go_direct(&mut self, idx: usize) {
        let Some(min) = self.cfg.direct_recv_min else {
            return;
        };
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if conn.tls.is_some() || conn.io.direct || conn.io.close.is_some() {
            return;
        }
        if conn.state.missing() >= min {
            conn.io.direct = true;
            conn.io.direct_len = conn.state.body_len();
            ShardStats::add(&self.shared.stats.recv_direct_switches, 1);
            if let (Some(op), false) = (conn.io.recv_op, conn.io.recv_cancelled) {
                conn.io.recv_cancelled = true;
                let _ = self.ring.cancel(op);
            }
        }
    }

    /// Completion of a direct receive (into a lent body buffer or a fresh one).
    fn on_direct_recv(&mut self, idx: usize, result: i32, buf: bytes::BytesMut) {
        let now = self.now;
        let min = self.cfg.direct_recv_min.unwrap_or(usize::MAX);
        let conn = &mut self.conns[idx];
        let kind = conn.io.recv_kind;
        let mut decoded = std::mem::take(&mut self.decoded);
        let n = usize::try_from(result).unwrap_or(0);
        let mut res = Ok(());
        match kind {
            RecvKind::Body => conn.state.put_body(now, buf, n, |d| decoded.push(d)),
            _ if n == 0 => {
                frame::recycle(buf.freeze());
            }
            _ => {
                res = conn.state.handle_recv_owned(now, buf, |d| decoded.push(d));
                // Stay direct while frames stay large: every frame in this buffer large, and
                // nothing small left in progress. Small frames go back to the ring.
                let all_large = decoded
                    .iter()
                    .all(|d| matches!(d, Decoded::Assembled(b) if b.len() >= min));
                let tail = conn.state.missing();
                if all_large && (tail >= min || !conn.state.mid_frame()) {
                    if tail > 0 {
                        conn.io.direct_len = conn.state.body_len();
                    } else if let Some(Decoded::Assembled(b)) = decoded.last() {
                        conn.io.direct_len = b.len();
                    }
                } else {
                    conn.io.direct = false;
                }
            }
        }
        self.decoded = decoded;
        if n > 0 {
            let st = &self.shared.stats;
            ShardStats::add(&st.bytes_in, n as u64);
            ShardStats::add(&st.recv_completions, 1);
            ShardStats::add(&st.recv_direct, 1);
            self.deliver(idx, Chunk::Direct { received: n, res });
        } else if result == 0 {
            self.conns[idx].mark_eof();
        } else if result != -libc::ECANCELED {
            let conn = &mut self.conns[idx];
            if conn.io.close.is_none() {
                conn.io.close = Some((CloseReason::Io(-result), false));
            }
        }
        self.service(idx);
    }

    fn deliver(&mut self, idx: usize, mut chunk: Chunk) {
        let now = self.now;
        let st = &self.shared.stats;
        if let Chunk::Ring(buf) = &chunk {
            ShardStats::add(&st.bytes_in, buf.len() as u64);
            ShardStats::add(&st.recv_completions, 1);
        }
        let mut decoded = std::mem::take(&mut self.decoded);
        let conn = &mut self.conns[idx];
        let mut res = Ok(());
        let mut handshake_completed = false;
        let mut late_close = None;
        let received;
        if let Some(tls) = conn.tls.as_mut() {
            let unique = matches!(&mut chunk, Chunk::Ring(buf) if buf.is_unique());
            let input = match &mut chunk {
                Chunk::Ring(buf) if unique => {
                    // `is_unique` held just above, so the writable view is available.
                    crate::tls_conn::RecvBuf::Mut(buf.as_mut_slice().unwrap_or_default())
                }
                Chunk::Ring(buf) => crate::tls_conn::RecvBuf::Shared(buf.as_slice()),
                Chunk::Owned(b) => crate::tls_conn::RecvBuf::Shared(b),
                Chunk::Direct { .. } => crate::tls_conn::RecvBuf::Shared(&[]),
            };
            let handshaking = tls.pump.is_handshaking();
            let oc = tls.on_recv(&mut conn.state, now, input, &mut decoded);
            self.flush_now |= handshaking;
            received = oc.plaintext;
            ShardStats::add(&st.tls_records_in_place, oc.records_in_place);
            if oc.assembled {
                ShardStats::add(&st.tls_assembled, 1);
            }
            handshake_completed = oc.handshake_completed;
            if let Some(e) = oc.frame_error {
                res = Err(e);
            }
            // Applied after the frames decoded before it are delivered.
            if let Some(e) = oc.tls_error {
                let kind = e.kind();
                tls.error = Some(e);
                // Graceful: the alert rustls queued for the peer is flushed first.
                late_close = Some((CloseReason::Tls(kind), true));
            } else if oc.peer_closed {
                late_close = Some(if conn.state.mid_frame() {
                    (CloseReason::PeerClosedMidFrame, false)
                } else {
                    (CloseReason::PeerClosed, true)
                });
            }
        } else if let Chunk::Direct {
            received: n,
            res: r,
        } = &mut chunk
        {
            received = *n;
            res = std::mem::replace(r, Ok(()));
        } else {
            received = chunk.as_slice().len();
            res = conn
                .state
                .handle_recv(now, chunk.as_slice(), |d| decoded.push(d));
        }
        if handshake_completed && conn.opener.is_some() {
            if conn.io.close.is_none() && late_close.is_none() {
                self.handshake_done(idx);
            } else if let Some(t) = conn.tls.as_mut() {
                t.hs_deadline = None;
            }
        }
        let st = &self.shared.stats;
        let conn = &mut self.conns[idx];
        if let Some(mut h) = conn.handler.take() {
            if received > 0 {
                h.on_received(received);
            }
            let data = chunk.as_slice();
            let (mut n, mut in_place) = (0u64, 0u64);
            for d in decoded.drain(..) {
                if conn.io.close.is_some() {
                    break;
                }
                let mut ctx = ConnCtx {
                    io: &mut conn.io,
                    state: &mut conn.state,
                    meta: &conn.meta,
                    now,
                };
                n += 1;
                match d {
                    Decoded::InPlace { start, len } => match &chunk {
                        Chunk::Ring(buf) => {
                            in_place += 1;
                            let frame = Frame {
                                payload: &data[start..start + len],
                                src: FrameSrc::Ring(buf, start),
                            };
                            h.on_frame(&mut ctx, frame);
                        }
                        Chunk::Owned(b) => {
                            let fb = b.slice(start..start + len);
                            let frame = Frame {
                                payload: &fb,
                                src: FrameSrc::Owned(&fb),
                            };
                            h.on_frame(&mut ctx, frame);
                        }
                        // Direct receives decode owned frames only.
                        Chunk::Direct { .. } => {}
                    },
                    Decoded::Assembled(b) => {
                        let frame = Frame {
                            payload: &b,
                            src: FrameSrc::Owned(&b),
                        };
                        h.on_frame(&mut ctx, frame);
                        // Unless the handler kept (or queued) it, the buffer goes back.
                        frame::recycle(b);
                    }
                }
            }
            conn.handler = Some(h);
            ShardStats::add(&st.frames_in, n);
            ShardStats::add(&st.frames_in_place, in_place);
        }
        decoded.clear();
        self.decoded = decoded;
        if let Err(e) = res {
            let conn = &mut self.conns[idx];
            if conn.io.close.is_none() || matches!(conn.io.close, Some((_, true))) {
                conn.io.close = Some((CloseReason::Frame(e), false));
            }
        }
        if let Some(c) = late_close {
            let conn = &mut self.conns[idx];
            if conn.io.close.is_none() || (matches!(conn.io.close, Some((_, true))) && !c.1) {
                conn.io.close = Some(c);
            }
        }
    }

    fn on_send(&mut self, idx: usize, gen: u32, c: Completion) {
        if !self.live(idx, gen) {
            return;
        }
        let conn = &mut self.conns[idx];
        if c.more {
            // Zero-copy: data accepted; buffers come back with the notification.
            conn.io.zc_sent = Some(c.result);
            return;
        }
        let result = if c.notif {
            conn.io.zc_sent.take().unwrap_or(c.result)
        } else {
            c.result
        };
        conn.io.send_op = None;
        let segs = match c.res {
            Some(Resource::Send(_, batch)) => batch.segs,
            _ => Vec::new(),
        };
        if result < 0 {
            if result != -libc::ECANCELED && conn.io.close.as_ref().is_none_or(|c| c.1) {
                conn.io.close = Some((CloseReason::Io(-result), false));
            }
            self.service(idx);
            return;
        }
        let n = result as usize;
        ShardStats::add(&self.shared.stats.bytes_out, n as u64);
        if let Some(tls) = conn.tls.as_mut() {
            // One ciphertext segment: credit the plaintext it carries, resubmit a partial rest.
            let (plain, frames) = tls.flight.written(n);
            // Any ciphertext written is progress for the write deadline.
            conn.state.handle_sent(self.now, plain);
            if plain > 0 {
                if let Some(h) = conn.handler.as_mut() {
                    h.on_sent(plain);
                }
            }
            ShardStats::add(&self.shared.stats.frames_out, frames);
            for mut s in segs {
                s.advance(n);
                if s.remaining() > 0 {
                    tls.unsent = Some(s);
                } else if let Some(b) = s.into_buf() {
                    let idle = conn.io.out.is_empty();
                    tls.put_back(b, idle);
                }
            }
        } else {
            conn.state.handle_sent(self.now, n);
            if n > 0 {
                if let Some(h) = conn.handler.as_mut() {
                    h.on_sent(n);
                }
            }
            let mut rem = n;
            let mut left = Vec::new();
            let mut frames = 0u64;
            for mut s in segs {
                if rem > 0 {
                    rem -= s.advance(rem);
                }
                if s.remaining() > 0 {
                    left.push(s);
                } else {
                    frames += 1;
                    if let Body::Bytes(b) = s.into_body() {
                        // An assembled frame echoed back: its buffer serves the next one.
                        frame::recycle(b);
                    }
                }
            }
            ShardStats::add(&self.shared.stats.frames_out, frames);
            for s in left.into_iter().rev() {
                conn.io.out.push_front(s);
            }
        }
        if conn.state.queued() < self.cfg.chunk_bytes / 2 && conn.io.close.is_none() {
            self.call(idx, |h, ctx| h.on_writable(ctx));
        }
        self.service(idx);
    }

    // ---- dial ----

    fn dial(
        &mut self,
        addr: SocketAddr,
        deadline: Instant,
        opts: ConnOptions,
        hooks: Box<dyn DialHooks>,
        tls: Option<TlsDial>,
    ) {
        if self.drain.is_some() {
            ShardStats::add(&self.shared.stats.dial_failed, 1);
            hooks.failed(DialError::Unavailable("shutdown"));
            return;
        }
        let sock = match socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM.cloexec(),
            Some(socket2::Protocol::TCP),
        ) {
            Ok(s) => s,
            Err(e) => {
                ShardStats::add(&self.shared.stats.dial_failed, 1);
                hooks.failed(DialError::Io(e));
                return;
            }
        };
        if opts.nodelay {
            let _ = sock.set_nodelay(true);
        }
        let fd = Rc::new(OwnedFd::from(sock));
        let gen = self.gen();
        let entry = self.dials.vacant_entry();
        let idx = entry.key();
        match self.ring.connect(
            &fd,
            socket2::SockAddr::from(addr),
            tag(Kind::Connect, idx, gen),
        ) {
            Ok(op) => {
                entry.insert(PendingDial {
                    gen,
                    fd,
                    op,
                    hooks: Some(hooks),
                    opts,
                    peer: addr,
                    timed_out: false,
                    deadline,
                    started: self.now,
                    tls,
                });
                self.timers
                    .push(Reverse((deadline, TimerKey::Dial(idx, gen))));
            }
            Err(e) => {
                ShardStats::add(&self.shared.stats.dial_failed, 1);
                hooks.failed(DialError::Io(e));
            }
        }
    }

    fn on_connect(&mut self, idx: usize, gen: u32, c: Completion) {
        if self.dials.get(idx).is_none_or(|d| d.gen != gen) {
            return;
        }
        let mut d = self.dials.remove(idx);
        let result = c.result;
        // Release the op's resources (its Rc of the socket) before taking the socket back.
        drop(c);
        let Some(hooks) = d.hooks.take() else { return };
        let st = &self.shared.stats;
        if result < 0 {
            ShardStats::add(&st.dial_failed, 1);
            if d.timed_out {
                ShardStats::add(&st.timeout_dial, 1);
                hooks.failed(DialError::Timeout);
            } else if self.drain.is_some() && result == -libc::ECANCELED {
                hooks.failed(DialError::Unavailable("shutdown"));
            } else {
                hooks.failed(DialError::Io(std::io::Error::from_raw_os_error(-result)));
            }
            return;
        }
        let local = socket2::SockRef::from(&*d.fd)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket());
        let Some(local) = local else {
            ShardStats::add(&st.dial_failed, 1);
            hooks.failed(DialError::Io(std::io::Error::other("no local address")));
            return;
        };
        ShardStats::add(&st.dialed, 1);
        // The connect op has completed, so ours is the last Rc (the op's resource was dropped).
        let fd = match Rc::try_unwrap(d.fd) {
            Ok(fd) => fd,
            Err(_) => {
                hooks.failed(DialError::Io(std::io::Error::other("socket still shared")));
                return;
            }
        };
        let peer = d.peer;
        let opener = Opener::Dial(hooks);
        let tls = match d.tls.take() {
            None => None,
            Some(t) => match TlsPump::client(t.config, t.server_name) {
                // The dial deadline bounds connect and handshake together.
                Ok(p) => Some(TlsConn::new(p, d.started, Some(d.deadline))),
                Err(e) => {
                    drop(fd);
                    self.fail_before_install(peer, local, true, opener, &e);
                    return;
                }
            },
        };
        self.install(fd, peer, local, true, d.opts, tls, opener);
    }

    // ---- timers ----

    fn fire_timers(&mut self) {
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > self.now {
                break;
            }
            self.timers.pop();
            match key {
                TimerKey::Conn(idx, gen) => {
                    let Some(conn) = self.conns.get_mut(idx) else {
                        continue;
                    };
                    if conn.gen != gen || conn.io.timer != Some(t) {
                        continue;
                    }
                    conn.io.timer = None;
                    let hs_expired = conn
                        .tls
                        .as_ref()
                        .and_then(|t| t.hs_deadline)
                        .is_some_and(|d| d <= self.now);
                    if hs_expired {
                        // Also ends a flush that outlived the handshake deadline.
                        conn.io.close = Some((CloseReason::Timeout(TimeoutKind::Handshake), false));
                    } else if let Some(kind) = conn.state.handle_timeout(self.now) {
                        conn.io.close = Some((CloseReason::Timeout(kind), false));
                    }
                    self.service(idx);
                }
                TimerKey::Wake(idx, gen) => {
                    let Some(conn) = self.conns.get_mut(idx) else {
                        continue;
                    };
                    if conn.gen != gen || conn.io.wake_armed != Some(t) {
                        continue;
                    }
                    conn.io.wake_armed = None;
                    if let Some((_, bits)) = conn.io.wake_at.take() {
                        self.call(idx, |h, ctx| h.on_wake(ctx, bits));
                    }
                    self.service(idx);
                }
                TimerKey::DirectIdle(idx, gen, seq) => {
                    let Some(conn) = self.conns.get_mut(idx) else {
                        continue;
                    };
                    if conn.gen != gen
                        || conn.io.fresh_seq != seq
                        || conn.io.recv_kind != RecvKind::Fresh
                        || conn.io.recv_cancelled
                    {
                        continue;
                    }
                    if let Some(op) = conn.io.recv_op {
                        conn.io.direct = false;
                        conn.io.recv_cancelled = true;
                        ShardStats::add(&self.shared.stats.recv_direct_idle, 1);
                        let _ = self.ring.cancel(op);
                    }
                }
                TimerKey::Resume(idx, gen) => {
                    if self.conns.get(idx).is_some_and(|c| c.gen == gen) {
                        self.service(idx);
                    }
                }
                TimerKey::Dial(idx, gen) => {
                    if let Some(d) = self.dials.get_mut(idx) {
                        if d.gen == gen && !d.timed_out {
                            d.timed_out = true;
                            let op = d.op;
                            let _ = self.ring.cancel(op);
                        }
                    }
                }
                TimerKey::Listener(idx, gen) => {
                    if self
                        .listeners
                        .get(idx)
                        .is_some_and(|l| l.gen == gen && l.op.is_none())
                    {
                        self.arm_accept(idx);
                    }
                }
            }
        }
    }

    // ---- shutdown ----

    fn begin_drain(&mut self, deadline: Instant, reply: tokio::sync::oneshot::Sender<ShardReport>) {
        self.stop_listen(None);
        let ops: Vec<OpId> = self.dials.iter().map(|(_, d)| d.op).collect();
        for op in ops {
            let _ = self.ring.cancel(op);
        }
        self.drain = Some(Drain {
            deadline,
            reply: Some(reply),
            drained: 0,
        });
        let idxs: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for idx in idxs {
            self.call(idx, |h, ctx| h.on_drain(ctx));
            self.service(idx);
        }
    }

    fn abort_all(&mut self, reason: CloseReason) -> u64 {
        let idxs: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        let n = idxs.len() as u64;
        for idx in idxs {
            self.finish(idx, reason.clone());
        }
        n
    }

    /// True when the shard should exit.
    fn check_drain(&mut self) -> bool {
        let Some(d) = &self.drain else {
            return false;
        };
        let deadline = d.deadline;
        if self.conns.is_empty() && self.dials.is_empty() {
            let drained = d.drained;
            self.reply(ShardReport {
                drained,
                aborted: 0,
            });
            return true;
        }
        if self.now >= deadline {
            let aborted = self.abort_all(CloseReason::Shutdown);
            let drained = self.drain.as_ref().map_or(0, |d| d.drained);
            // Pending dials: their cancels are in flight; report them failed now.
            let dials: Vec<usize> = self.dials.iter().map(|(i, _)| i).collect();
            for i in dials {
                let mut d = self.dials.remove(i);
                let _ = self.ring.cancel(d.op);
                if let Some(h) = d.hooks.take() {
                    h.failed(DialError::Unavailable("shutdown"));
                }
            }
            self.reply(ShardReport { drained, aborted });
            return true;
        }
        false
    }

    fn reply(&mut self, r: ShardReport) {
        if let Some(tx) = self.drain.as_mut().and_then(|d| d.reply.take()) {
            let _ = tx.send(r);
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        // Handlers see an explicit close before the ring (and every op's resources) goes away;
        // then the tasks go (their connection ends find their connections closed).
        self.abort_all(CloseReason::Shutdown);
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
