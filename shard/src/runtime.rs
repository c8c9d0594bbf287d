//! The runtime: starts one pinned shard thread per core (or a configured count), routes
//! listeners to the accepting shard, dials to the least-loaded shard, merges stats at scrape
//! time, and shuts everything down with a drain deadline.
//!
//! It owns threads and the cross-thread plumbing; the per-connection work happens in
//! the (private) `shard` module.
//!
//! # Receive mode and zero-copy sends (chosen by measurement)
//! Receives use one multishot `RECV` per connection into a provided-buffer ring, consumed in
//! place: a frame that arrived whole in one buffer is handed to the handler as a slice of that
//! buffer and an echo sends straight from it (the buffer stays out of the ring until the send
//! completes); only frames spanning buffers are assembled, once, into an exact-size buffer.
//! An idle connection holds no receive buffer.
//!
//! Large frames on plain TCP switch the connection to **direct receives**: once a ring
//! receive leaves at least [`RuntimeConfig::direct_recv_min`] (16 KiB) of a frame missing, the
//! multishot receive is cancelled and the rest of the frame is received with single-shot
//! `RECV`s straight into the frame's own buffer; while frames stay large, each next receive
//! goes into a fresh buffer with room for a few frames like the last (256 KiB), whose complete
//! frames are handed out as slices of it and whose partial last frame keeps growing in it.
//! The first small frame switches the connection back to the ring, and so does silence: a
//! fresh buffer still waiting after 10 ms is cancelled and freed, so a quiet connection holds
//! no receive memory whichever mode it was in. Measured with
//! `ron-perf run --scenarios stream` (8 connections echoing 64 KiB frames): consuming 32 KiB
//! ring buffers cost three receive completions and one user-space assembly copy per frame, and
//! the server's user-space share was 8.4 % `memmove`; with direct receives it is one or two
//! completions, no user copy, and ron-shard plus libc are under 5 % of the server's CPU (the
//! kernel's two copies are the rest). See docs/perf.md, "64 KiB stream on uring".
//!
//! Defaults: 128 buffers × 32 KiB per shard
//! (4 MiB of ordinary memory; only the 2 KiB descriptor ring is pinned). On this 2-core box
//! (`cargo run --release -p ron-shard --example echo_bench`, best of 3, 1 shard, 4 connections,
//! tokio current-thread echo as baseline) the ring echo ran 1.30–1.35× tokio with 64 KiB frames
//! and 1.0–1.13× with 1 KiB frames; the pool size mattered less than the noise (64–256 × 16–64
//! KiB all within ±5 %).
//!
//! `SENDMSG_ZC` measured slower on loopback (0.59–0.74× of the plain `SENDMSG` echo for 64 KiB
//! frames with thresholds of 16 and 64 KiB, because loopback copies anyway and adds a
//! notification per send), so [`RuntimeConfig::zc_threshold`] defaults to `None`. Set it for
//! NIC paths after measuring there.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crate::handler::{AcceptHooks, DialHooks};
use crate::shard::{self, Command, ConnOptions, Shard, ShardConfig, ShardReport, ShardShared};
use crate::stats::StatsSnapshot;
pub use crate::tls_conn::TlsDial;

/// A connection's reading pauses once this many `chunk_bytes` of output are queued (and
/// resumes below half of that).
pub const OUT_HIGH_WATER_CHUNKS: usize = 16;

/// Default [`RuntimeConfig::direct_recv_min`]: half a default provided buffer.
pub const DIRECT_RECV_MIN: usize = 16 * 1024;

/// Runtime configuration (mechanism knobs only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Number of shards; 0 = one per available core.
    pub shards: usize,
    /// Pin shard `i` to core `i mod cores`.
    pub pin: bool,
    /// Submission queue entries per ring (completion queue is 4×).
    pub ring_entries: u32,
    /// Try SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN (falls back if refused).
    pub defer_taskrun: bool,
    /// Provided receive buffers per shard (power of two).
    pub buf_entries: u16,
    /// Size of each provided receive buffer.
    pub buf_size: u32,
    /// Outgoing frames are coalesced up to this many bytes per send submission.
    pub chunk_bytes: usize,
    /// Sends of at least this many bytes use SENDMSG_ZC; `None` disables zero-copy sends.
    pub zc_threshold: Option<usize>,
    /// Capacity of each shard's command queue (hand-offs, dials); full ⇒ `Busy`.
    pub command_capacity: usize,
    /// Plain-TCP frames with at least this many payload bytes still missing after a receive
    /// switch the connection to direct receives (straight into the frame's buffer, see the
    /// module docs); `None` keeps every receive on the provided-buffer ring.
    pub direct_recv_min: Option<usize>,
    /// TLS connections on the own record layer send a KeyUpdate every this many records
    /// (`None`: just before the suite's confidentiality limit, 2^24 − 2^16 records for
    /// AES-GCM). For operators who want keys rotated more often, and for interop tests.
    pub tls_key_update_records: Option<u64>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            pin: true,
            ring_entries: 1024,
            defer_taskrun: true,
            buf_entries: 128,
            buf_size: 32 * 1024,
            chunk_bytes: 64 * 1024,
            zc_threshold: None,
            command_capacity: 4096,
            direct_recv_min: Some(DIRECT_RECV_MIN),
            tls_key_update_records: None,
        }
    }
}

/// The runtime could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A configuration value is out of range.
    #[error("invalid runtime config: {0}")]
    Config(&'static str),
    /// A shard's ring or buffer registration failed.
    #[error("shard {shard}: io_uring setup failed: {source}{hint}")]
    Ring {
        /// Which shard.
        shard: usize,
        /// The kernel error.
        #[source]
        source: io::Error,
        /// What to do about it (empty if nothing specific).
        hint: &'static str,
    },
    /// A shard thread could not be spawned.
    #[error("spawning shard thread: {0}")]
    Spawn(#[source] io::Error),
}

impl StartError {
    /// Stable reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Ring { source, .. } => match source.raw_os_error() {
                Some(libc::ENOMEM) => "memlock",
                Some(libc::EPERM) => "permission",
                Some(libc::ENOSYS) => "enosys",
                _ => "ring",
            },
            Self::Spawn(_) => "spawn",
        }
    }
}

pub(crate) fn hint_for(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOMEM) => {
            " (ENOMEM: the locked-memory limit RLIMIT_MEMLOCK, often 8 MiB for non-root users, \
             is too small for this many shards/ring entries; lower `shards`, `ring_entries` or \
             `buf_entries`, or raise `ulimit -l`)"
        }
        Some(libc::EPERM) => {
            " (EPERM: io_uring is blocked by a seccomp profile or kernel.io_uring_disabled)"
        }
        Some(libc::ENOSYS) => " (ENOSYS: this kernel has no io_uring, or seccomp hides it)",
        _ => "",
    }
}

/// A command could not be delivered to a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// The shard's bounded command queue is full.
    #[error("shard command queue full")]
    Busy,
    /// The runtime has shut down.
    #[error("runtime stopped")]
    Stopped,
}

impl ShardError {
    /// Stable reason string (`busy` or `stopped`).
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Stopped => "stopped",
        }
    }
}

/// Identifies a listener registered with [`Runtime::listen`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

/// Summed outcome of a shutdown.
pub type DrainReport = ShardReport;

/// The thread-per-core io_uring runtime.
#[derive(Debug)]
pub struct Runtime {
    shards: Arc<[Arc<ShardShared>]>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_listener: AtomicU64,
    shut: AtomicBool,
    cfg: RuntimeConfig,
}

impl Runtime {
    /// Starts the shards. Each shard builds its ring on its own thread; any failure stops the
    /// others and is returned (with a hint for ENOMEM/EPERM/ENOSYS).
    pub fn start(mut cfg: RuntimeConfig) -> Result<Self, StartError> {
        if cfg.buf_entries == 0 || !cfg.buf_entries.is_power_of_two() || cfg.buf_entries > 32768 {
            return Err(StartError::Config(
                "buf_entries must be a power of two ≤ 32768",
            ));
        }
        if cfg.buf_size < 4096 || cfg.chunk_bytes == 0 || cfg.command_capacity == 0 {
            return Err(StartError::Config(
                "buf_size ≥ 4096, chunk_bytes > 0 and command_capacity > 0 are required",
            ));
        }
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if cfg.shards == 0 {
            cfg.shards = thread::available_parallelism().map_or(1, |n| n.get());
        }
        let scfg = ShardConfig {
            ring_entries: cfg.ring_entries,
            defer_taskrun: cfg.defer_taskrun,
            buf_entries: cfg.buf_entries,
            buf_size: cfg.buf_size,
            chunk_bytes: cfg.chunk_bytes,
            zc_threshold: cfg.zc_threshold,
            command_capacity: cfg.command_capacity,
            direct_recv_min: cfg.direct_recv_min,
            tls_key_update_records: cfg.tls_key_update_records,
            // Reading pauses at this much queued output and resumes below half of it. 16 chunks
            // (1 MiB at the 64 KiB default): at 4 chunks a peer pipelining four 64 KiB frames
            // sat exactly on the mark, and every frame cancelled and re-armed the multishot
            // receive (see docs/perf.md, "64 KiB stream on uring").
            out_high_water: cfg.chunk_bytes.saturating_mul(OUT_HIGH_WATER_CHUNKS),
        };
        let mut shareds = Vec::with_capacity(cfg.shards);
        let mut queues = Vec::with_capacity(cfg.shards);
        for i in 0..cfg.shards {
            let (s, q) = shard::shared(i, &scfg).map_err(StartError::Spawn)?;
            shareds.push(s);
            queues.push(q);
        }
        let peers: Arc<[Arc<ShardShared>]> = shareds.into();
        let conn_ids = Arc::new(AtomicU64::new(1));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(cfg.shards);
        for (i, q) in queues.into_iter().enumerate() {
            let core = if cfg.pin && !cores.is_empty() {
                Some(cores[i % cores.len()])
            } else {
                None
            };
            let (all, shared, ids, ready) = (
                peers.clone(),
                peers[i].clone(),
                conn_ids.clone(),
                ready_tx.clone(),
            );
            let spawned = thread::Builder::new()
                .name(format!("ron-shard-{i}"))
                .spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    match Shard::new(i, scfg, shared, all, q, ids) {
                        Ok(s) => {
                            let _ = ready.send((i, Ok(())));
                            s.run();
                        }
                        Err(e) => {
                            let _ = ready.send((i, Err(e)));
                        }
                    }
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let rt = Self::assemble(peers.clone(), threads, cfg);
                    drop(rt);
                    return Err(StartError::Spawn(e));
                }
            }
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..cfg.shards {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((shard, Err(source))) => {
                    failure.get_or_insert(StartError::Ring {
                        shard,
                        hint: hint_for(&source),
                        source,
                    });
                }
                Err(_) => break,
            }
        }
        let rt = Self::assemble(peers, threads, cfg);
        match failure {
            Some(e) => Err(e), // `rt` drops: the healthy shards shut down and are joined.
            None => Ok(rt),
        }
    }

    fn assemble(
        shards: Arc<[Arc<ShardShared>]>,
        threads: Vec<JoinHandle<()>>,
        cfg: RuntimeConfig,
    ) -> Self {
        Self {
            shards,
            threads: Mutex::new(threads),
            next_listener: AtomicU64::new(1),
            shut: AtomicBool::new(false),
            cfg,
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The effective configuration (with `shards` resolved).
    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// Starts accepting on `listener` (bound by the caller, e.g. with [`bind`]). The accepting
    /// shard (0) runs a multishot accept, asks `hooks.admit` about every peer before any
    /// buffer or read, and hands admitted sockets to the shard with the fewest connections.
    pub fn listen(
        &self,
        listener: TcpListener,
        opts: ConnOptions,
        hooks: Arc<dyn AcceptHooks>,
    ) -> Result<ListenerId, ShardError> {
        self.listen_inner(listener.into(), opts, None, hooks)
    }

    /// Like [`listen`](Self::listen), on a Unix-domain stream socket (plain frames; no TLS).
    /// Each accepted peer's `SO_PEERCRED` goes to [`AcceptHooks::admit_unix`] before any
    /// receive is armed. The socket file is the caller's (created, and removed, by it).
    pub fn listen_unix(
        &self,
        listener: std::os::unix::net::UnixListener,
        opts: ConnOptions,
        hooks: Arc<dyn AcceptHooks>,
    ) -> Result<ListenerId, ShardError> {
        self.listen_inner(listener.into(), opts, None, hooks)
    }

    /// Like [`listen`](Self::listen), with TLS 1.3: each admitted connection runs its handshake
    /// on its owning shard (bounded by `opts.timeouts.read`, if set), then `hooks.open` is
    /// called with `meta.tls` set; a failed handshake goes to
    /// [`AcceptHooks::handshake_failed`] instead. Frames are encrypted and decrypted by the
    /// shard's TLS pump.
    pub fn listen_tls(
        &self,
        listener: TcpListener,
        opts: ConnOptions,
        config: Arc<rustls::ServerConfig>,
        hooks: Arc<dyn AcceptHooks>,
    ) -> Result<ListenerId, ShardError> {
        self.listen_inner(listener.into(), opts, Some(config), hooks)
    }

    fn listen_inner(
        &self,
        listener: OwnedFd,
        opts: ConnOptions,
        tls: Option<Arc<rustls::ServerConfig>>,
        hooks: Arc<dyn AcceptHooks>,
    ) -> Result<ListenerId, ShardError> {
        let id = self.next_listener.fetch_add(1, Ordering::Relaxed);
        let cmd = Command::Listen {
            id,
            fd: listener,
            hooks,
            opts,
            tls,
        };
        self.shards[0]
            .send_cmd(cmd)
            .map_err(|e| to_shard_error(e.1))?;
        Ok(ListenerId(id))
    }

    /// Stops accepting on a listener (its socket closes once the accept op completed; a QUIC
    /// listener's sockets once their connections have ended).
    pub fn stop_listening(&self, id: ListenerId) -> Result<(), ShardError> {
        let mut result = Ok(());
        for s in self.shards.iter() {
            if let Err(e) = s.send_cmd(Command::StopListen { id: id.0 }) {
                if s.id == 0 {
                    result = Err(to_shard_error(e.1));
                }
            }
        }
        result
    }

    /// Starts a QUIC listener at `addr`: one UDP socket per shard, bound with `SO_REUSEPORT`
    /// to the same address (port 0 picks one port for all), each driven by its shard with its
    /// own quinn-proto endpoint (see [`crate::quic`]). Every new peer goes to `hooks.admit`
    /// before any connection state; each bidirectional stream that starts with
    /// `config.preface` opens as one connection (`hooks.open`, with a token from
    /// [`AcceptHooks::share_token`]). Returns the id and the bound address.
    pub fn listen_quic(
        &self,
        addr: SocketAddr,
        opts: ConnOptions,
        config: crate::quic::QuicServer,
        hooks: Arc<dyn AcceptHooks>,
    ) -> io::Result<(ListenerId, SocketAddr)> {
        let mut socks = Vec::with_capacity(self.shards.len());
        let mut bound = addr;
        for _ in 0..self.shards.len() {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::DGRAM.cloexec(),
                Some(socket2::Protocol::UDP),
            )?;
            s.set_reuse_port(true)?;
            if addr.is_ipv6() {
                s.set_only_v6(false).ok();
            }
            s.bind(&bound.into())?;
            if bound.port() == 0 {
                bound = s
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| io::Error::other("UDP socket without an inet address"))?;
            }
            socks.push(s);
        }
        let id = self.next_listener.fetch_add(1, Ordering::Relaxed);
        let config = Arc::new(config);
        for (shard, s) in self.shards.iter().zip(socks) {
            let cmd = Command::ListenQuic {
                id,
                fd: s.into(),
                hooks: hooks.clone(),
                opts,
                quic: config.clone(),
            };
            if let Err(e) = shard.send_cmd(cmd) {
                let _ = self.stop_listening(ListenerId(id));
                return Err(io::Error::other(to_shard_error(e.1)));
            }
        }
        Ok((ListenerId(id), bound))
    }

    /// Dials `addr` over QUIC from the calling shard (or the least-loaded one), from that
    /// shard's client UDP socket; `timeout` bounds the handshake. `hooks.connected` runs once
    /// the handshake has completed and the dial's stream is open (its preface written), with
    /// `meta.tls` set.
    pub fn dial_quic(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        opts: ConnOptions,
        config: crate::quic::QuicDial,
        hooks: Box<dyn DialHooks>,
    ) -> Result<(), (ShardError, Box<dyn DialHooks>)> {
        let target = self.dial_target();
        let cmd = Command::DialQuic {
            addr,
            deadline: Instant::now() + timeout,
            opts,
            hooks,
            quic: Box::new(config),
        };
        match self.shards[target].send_cmd(cmd) {
            Ok(()) => Ok(()),
            Err(e) => match *e {
                (Command::DialQuic { hooks, .. }, r) => Err((to_shard_error(r), hooks)),
                (_, r) => unreachable_dial(r),
            },
        }
    }

    /// The shard a dial goes to: the calling shard, else the least loaded live one.
    fn dial_target(&self) -> usize {
        let uid = crate::exec::shard_uid();
        self.shards
            .iter()
            .find(|s| uid != 0 && s.uid == uid && !s.is_dead())
            .or_else(|| {
                // A dead shard reports 0 open connections: never pick it.
                self.shards
                    .iter()
                    .filter(|s| !s.is_dead())
                    .min_by_key(|s| s.stats.open.load(Ordering::Relaxed))
            })
            .map_or(0, |s| s.id)
    }

    /// Dials `addr` from the calling shard (when called on one of this runtime's shards) or else the
    /// shard with the fewest open connections; `hooks` learns the
    /// outcome on that shard. `timeout` bounds the connect.
    pub fn dial(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        opts: ConnOptions,
        hooks: Box<dyn DialHooks>,
    ) -> Result<(), (ShardError, Box<dyn DialHooks>)> {
        self.dial_inner(addr, None, timeout, opts, None, hooks)
    }

    /// Like [`dial`](Self::dial), to the Unix-domain stream socket at `path` (plain frames; no
    /// TLS). The connection's [`ConnMeta::peer`](crate::ConnMeta) is the listener's
    /// `SO_PEERCRED` uid address ([`crate::unix::uid_addr`]), its `local` this process's.
    pub fn dial_unix(
        &self,
        path: &std::path::Path,
        timeout: Duration,
        opts: ConnOptions,
        hooks: Box<dyn DialHooks>,
    ) -> Result<(), (ShardError, Box<dyn DialHooks>)> {
        let fallback = crate::unix::uid_addr(crate::unix::current_uid());
        self.dial_inner(
            fallback,
            Some(path.to_path_buf()),
            timeout,
            opts,
            None,
            hooks,
        )
    }

    /// Like [`dial`](Self::dial), then a TLS 1.3 handshake on the owning shard; `timeout`
    /// bounds connect and handshake together. `hooks.connected` runs once the handshake has
    /// completed (`meta.tls` set); a failure is [`DialError::Tls`](crate::DialError::Tls) (or `Timeout`).
    pub fn dial_tls(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        opts: ConnOptions,
        tls: TlsDial,
        hooks: Box<dyn DialHooks>,
    ) -> Result<(), (ShardError, Box<dyn DialHooks>)> {
        self.dial_inner(addr, None, timeout, opts, Some(tls), hooks)
    }

    fn dial_inner(
        &self,
        addr: SocketAddr,
        unix: Option<std::path::PathBuf>,
        timeout: Duration,
        opts: ConnOptions,
        tls: Option<TlsDial>,
        hooks: Box<dyn DialHooks>,
    ) -> Result<(), (ShardError, Box<dyn DialHooks>)> {
        // A dial made from one of this runtime's shards (a consumer task running there) stays
        // on that shard, so its consumer runs where the connection lives; other callers get
        // the shard with the fewest connections.
        let target = self.dial_target();
        let cmd = Command::Dial {
            addr,
            unix,
            deadline: Instant::now() + timeout,
            opts,
            hooks,
            tls,
        };
        match self.shards[target].send_cmd(cmd) {
            Ok(()) => Ok(()),
            Err(e) => match *e {
                (Command::Dial { hooks, .. }, r) => Err((to_shard_error(r), hooks)),
                (_, r) => unreachable_dial(r),
            },
        }
    }

    /// Per-shard counter snapshots (read without stopping the shards).
    pub fn stats(&self) -> Vec<StatsSnapshot> {
        self.shards.iter().map(|s| s.stats.snapshot(s.id)).collect()
    }

    /// The shards whose thread died (a panic in the shard itself, outside any handler: handler
    /// panics are contained to their connection). Nothing is routed to a dead shard; its
    /// connections were closed. Cheap (one atomic load per shard): callers poll it for
    /// readiness.
    pub fn dead_shards(&self) -> Vec<usize> {
        self.shards
            .iter()
            .filter(|s| s.is_dead())
            .map(|s| s.id)
            .collect()
    }

    /// Fault injection for tests: makes shard `shard`'s thread panic outside any handler (as
    /// a bug in the shard itself would), to exercise dead-shard handling. Not for production.
    #[doc(hidden)]
    pub fn inject_shard_panic(&self, shard: usize) -> Result<(), ShardError> {
        let s = self.shards.get(shard).ok_or(ShardError::Stopped)?;
        s.send_cmd(Command::Panic).map_err(|e| to_shard_error(e.1))
    }

    /// Stops accepting everywhere, lets connections drain for `drain`, then aborts the rest.
    /// Wait for the outcome with [`Shutdown::wait`] or [`Shutdown::wait_async`]. The request
    /// reaches every shard even when its command queue is full.
    pub fn shutdown(&self, drain: Duration) -> Shutdown {
        self.shut.store(true, Ordering::Release);
        let deadline = Instant::now() + drain;
        let mut rxs = Vec::new();
        for s in self.shards.iter() {
            if s.is_dead() {
                continue; // its thread has exited; nothing to drain
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            s.request_stop((deadline, tx));
            rxs.push(rx);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let on_own_shard = self.on_own_shard();
        Shutdown {
            rxs,
            threads,
            on_own_shard,
        }
    }

    /// True when called on one of this runtime's shard threads (a consumer task or handler).
    fn on_own_shard(&self) -> bool {
        let uid = crate::exec::shard_uid();
        uid != 0 && self.shards.iter().any(|s| s.uid == uid)
    }
}

fn to_shard_error(r: &'static str) -> ShardError {
    if r == "busy" {
        ShardError::Busy
    } else {
        ShardError::Stopped
    }
}

fn unreachable_dial(r: &'static str) -> Result<(), (ShardError, Box<dyn DialHooks>)> {
    // `send_cmd` gives back the command it was given, which was a Dial.
    unreachable!("send_cmd returned a different command ({r})")
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if !self.shut.load(Ordering::Acquire) {
            self.shutdown(Duration::ZERO).wait();
        } else if self.on_own_shard() {
            // Dropped on one of its own shards (the last handle went away inside a task): that
            // shard can only act on the shutdown once this returns, so joining would deadlock.
            // The threads are detached; each exits once it has drained.
        } else {
            let threads =
                std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
            for t in threads {
                let _ = t.join();
            }
        }
    }
}

/// A shutdown in progress.
#[derive(Debug)]
pub struct Shutdown {
    rxs: Vec<tokio::sync::oneshot::Receiver<ShardReport>>,
    threads: Vec<JoinHandle<()>>,
    /// Requested on one of the runtime's own shard threads.
    on_own_shard: bool,
}

impl Shutdown {
    /// Blocks until every shard reported and exited; returns the summed report.
    ///
    /// On one of the runtime's own shard threads it cannot block (that shard drains only once
    /// the current callback returns): it returns at once with an empty report and the shards
    /// drain and exit on their own.
    pub fn wait(self) -> DrainReport {
        let Shutdown {
            rxs,
            threads,
            on_own_shard,
        } = self;
        if on_own_shard {
            drop(threads);
            return DrainReport::default();
        }
        let report = block_on(collect(rxs));
        for t in threads {
            let _ = t.join();
        }
        report
    }

    /// Waits (asynchronously, on any executor) until every shard reported. The shard threads
    /// exit right after reporting.
    pub async fn wait_async(self) -> DrainReport {
        let Shutdown { rxs, threads, .. } = self;
        let report = collect(rxs).await;
        drop(threads); // detached; they exit after the ring is torn down
        report
    }
}

async fn collect(rxs: Vec<tokio::sync::oneshot::Receiver<ShardReport>>) -> DrainReport {
    let mut total = ShardReport::default();
    for rx in rxs {
        if let Ok(r) = rx.await {
            total.drained += r.drained;
            total.aborted += r.aborted;
        }
    }
    total
}

/// Binds a TCP listener suitable for [`Runtime::listen`] (SO_REUSEADDR, backlog 4096).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        let _ = s.set_only_v6(true);
    }
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Runs a future to completion on the current thread (parks between polls). Used only to wait
/// for shutdown replies from a synchronous context.
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}
