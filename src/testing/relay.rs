//! The fault-injecting TCP relay: accepts on a loopback port, connects each accepted client to
//! the upstream (loopback) server, and copies bytes both ways while applying the one fault the
//! plan drew for that connection.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the relay waits for the upstream connect before resetting the client.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Copy buffer per direction.
const COPY_BUF: usize = 16 * 1024;

/// One direction of a relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server bytes.
    ToServer,
    /// Server to client bytes.
    ToClient,
}

/// What the relay does to one relayed connection. Byte offsets count the bytes forwarded in
/// `dir` (0 = before the first byte of that direction is forwarded, once some arrives); a
/// connection that ends before the offset never sees its fault (see [`FaultCounts::injected`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Copy both ways untouched.
    Pass,
    /// After `after` bytes in `dir`, reset both sockets (RST via `SO_LINGER` 0).
    Reset {
        /// The direction whose byte count triggers the fault.
        dir: Direction,
        /// Bytes forwarded in `dir` before the reset.
        after: u64,
    },
    /// After `after` bytes in `dir`, stop copying that direction for `duration`, then resume.
    Stall {
        /// The stalled direction.
        dir: Direction,
        /// Bytes forwarded in `dir` before the stall.
        after: u64,
        /// How long the direction stalls.
        duration: Duration,
    },
    /// Accept the client, then reset it at once (RST) without connecting upstream: the client's
    /// TCP connect succeeds and its first read or write fails.
    Refuse,
    /// After `after` bytes in `dir`, shut the write side toward the receiver of `dir` down (FIN)
    /// and stop reading from its sender; the other direction keeps flowing until it ends.
    HalfClose {
        /// The direction that is half-closed.
        dir: Direction,
        /// Bytes forwarded in `dir` before the half-close.
        after: u64,
    },
}

impl Fault {
    /// The direction and byte offset that trigger the fault, for the faults that have one.
    fn trigger(&self) -> Option<(Direction, u64)> {
        match *self {
            Self::Reset { dir, after }
            | Self::Stall { dir, after, .. }
            | Self::HalfClose { dir, after } => Some((dir, after)),
            Self::Pass | Self::Refuse => None,
        }
    }
}

/// Weights and ranges from which the relay draws one [`Fault`] per connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    /// Weight of [`Fault::Pass`].
    pub pass: u32,
    /// Weight of [`Fault::Reset`].
    pub reset: u32,
    /// Weight of [`Fault::Stall`].
    pub stall: u32,
    /// Weight of [`Fault::Refuse`].
    pub refuse: u32,
    /// Weight of [`Fault::HalfClose`].
    pub half_close: u32,
    /// Fault offsets are drawn uniformly from `0..max_offset` bytes (at least 1).
    pub max_offset: u64,
    /// Shortest stall.
    pub stall_min: Duration,
    /// Longest stall.
    pub stall_max: Duration,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self::mixed()
    }
}

impl FaultPlan {
    /// Every connection passes untouched.
    pub fn pass_through() -> Self {
        Self {
            pass: 1,
            reset: 0,
            stall: 0,
            refuse: 0,
            half_close: 0,
            ..Self::mixed()
        }
    }

    /// A mix: 40 % pass, 15 % reset, 15 % stall (50–400 ms), 10 % refuse, 20 % half-close, at
    /// offsets within the first 32 KiB of a direction.
    pub fn mixed() -> Self {
        Self {
            pass: 40,
            reset: 15,
            stall: 15,
            refuse: 10,
            half_close: 20,
            max_offset: 32 * 1024,
            stall_min: Duration::from_millis(50),
            stall_max: Duration::from_millis(400),
        }
    }

    /// The fault of the `n`-th connection (0-based, in accept order) under `seed`: a pure
    /// function of the plan, the seed and `n`.
    pub fn fault_for(&self, seed: u64, n: u64) -> Fault {
        let mut rng = SplitMix64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let weights = [
            self.pass,
            self.reset,
            self.stall,
            self.refuse,
            self.half_close,
        ];
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            return Fault::Pass;
        }
        let mut pick = rng.next_u64() % total;
        let mut which = 0;
        for (i, w) in weights.iter().enumerate() {
            if pick < u64::from(*w) {
                which = i;
                break;
            }
            pick -= u64::from(*w);
        }
        let dir = if rng.next_u64() & 1 == 0 {
            Direction::ToServer
        } else {
            Direction::ToClient
        };
        let after = rng.next_u64() % self.max_offset.max(1);
        let span = self.stall_max.saturating_sub(self.stall_min).as_micros() as u64;
        let duration = self.stall_min + Duration::from_micros(rng.next_u64() % span.max(1));
        match which {
            0 => Fault::Pass,
            1 => Fault::Reset { dir, after },
            2 => Fault::Stall {
                dir,
                after,
                duration,
            },
            3 => Fault::Refuse,
            _ => Fault::HalfClose { dir, after },
        }
    }
}

/// A count per fault kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultTally {
    /// [`Fault::Pass`].
    pub pass: u64,
    /// [`Fault::Reset`].
    pub reset: u64,
    /// [`Fault::Stall`].
    pub stall: u64,
    /// [`Fault::Refuse`].
    pub refuse: u64,
    /// [`Fault::HalfClose`].
    pub half_close: u64,
}

impl FaultTally {
    /// The sum over every kind.
    pub fn total(&self) -> u64 {
        self.pass + self.reset + self.stall + self.refuse + self.half_close
    }
}

/// What the relay did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Client connections accepted.
    pub accepted: u64,
    /// Faults drawn for accepted connections (one per connection).
    pub planned: FaultTally,
    /// Faults actually applied: a fault whose byte offset was never reached is planned but not
    /// injected; `injected.pass` counts pass-through pairs that ended.
    pub injected: FaultTally,
    /// Upstream connects that failed (the client was reset).
    pub upstream_failed: u64,
    /// Pairs that ended with a reset (injected, or propagated from a socket error, or
    /// [`FaultRelay::stop`]).
    pub resets_sent: u64,
    /// Bytes forwarded client → server.
    pub bytes_to_server: u64,
    /// Bytes forwarded server → client.
    pub bytes_to_client: u64,
    /// Relayed connections still open.
    pub open: u64,
}

/// A running fault-injecting relay. Dropping it stops accepting and resets every open pair
/// (without waiting); [`FaultRelay::stop`] does the same and waits until every pair has ended.
#[derive(Debug)]
pub struct FaultRelay {
    local: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl FaultRelay {
    /// Binds a relay on an ephemeral loopback port (same address family as `upstream`) in
    /// front of `upstream`, drawing each connection's fault from `plan` under `seed`. Must run
    /// inside a Tokio runtime. `upstream` must be a loopback address (`InvalidInput` otherwise).
    pub async fn start(upstream: SocketAddr, plan: FaultPlan, seed: u64) -> io::Result<Self> {
        if !upstream.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fault relay: upstream {upstream} is not a loopback address"),
            ));
        }
        let bind_ip = match upstream.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        let listener = TcpListener::bind(SocketAddr::new(bind_ip, 0)).await?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(
            listener,
            upstream,
            plan,
            seed,
            shared.clone(),
            stop.clone(),
            tasks.clone(),
        ));
        Ok(Self {
            local,
            upstream,
            shared,
            stop,
            tasks,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The server the relay forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> FaultCounts {
        self.shared.snapshot()
    }

    /// Stops accepting, resets every open pair, and waits until every relay task has ended.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A small deterministic generator (SplitMix64), enough to spread faults.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[derive(Debug, Default)]
struct Tally {
    pass: AtomicU64,
    reset: AtomicU64,
    stall: AtomicU64,
    refuse: AtomicU64,
    half_close: AtomicU64,
}

impl Tally {
    fn count(&self, f: &Fault) {
        let cell = match f {
            Fault::Pass => &self.pass,
            Fault::Reset { .. } => &self.reset,
            Fault::Stall { .. } => &self.stall,
            Fault::Refuse => &self.refuse,
            Fault::HalfClose { .. } => &self.half_close,
        };
        cell.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> FaultTally {
        FaultTally {
            pass: self.pass.load(Ordering::Relaxed),
            reset: self.reset.load(Ordering::Relaxed),
            stall: self.stall.load(Ordering::Relaxed),
            refuse: self.refuse.load(Ordering::Relaxed),
            half_close: self.half_close.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    accepted: AtomicU64,
    planned: Tally,
    injected: Tally,
    upstream_failed: AtomicU64,
    resets_sent: AtomicU64,
    bytes_to_server: AtomicU64,
    bytes_to_client: AtomicU64,
    open: AtomicU64,
}

impl Shared {
    fn snapshot(&self) -> FaultCounts {
        FaultCounts {
            accepted: self.accepted.load(Ordering::Relaxed),
            planned: self.planned.snapshot(),
            injected: self.injected.snapshot(),
            upstream_failed: self.upstream_failed.load(Ordering::Relaxed),
            resets_sent: self.resets_sent.load(Ordering::Relaxed),
            bytes_to_server: self.bytes_to_server.load(Ordering::Relaxed),
            bytes_to_client: self.bytes_to_client.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
        }
    }

    fn bytes(&self, dir: Direction) -> &AtomicU64 {
        match dir {
            Direction::ToServer => &self.bytes_to_server,
            Direction::ToClient => &self.bytes_to_client,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    plan: FaultPlan,
    seed: u64,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let client = match accepted {
            Ok((s, _)) => s,
            Err(_) => {
                // EMFILE and friends: back off briefly rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let n = shared.accepted.fetch_add(1, Ordering::Relaxed);
        let fault = plan.fault_for(seed, n);
        shared.planned.count(&fault);
        shared.open.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(relay_one(
            client,
            upstream,
            fault,
            shared.clone(),
            stop.child_token(),
        ));
    }
}

/// Relays one client connection under `fault`.
async fn relay_one(
    client: TcpStream,
    upstream: SocketAddr,
    fault: Fault,
    shared: Arc<Shared>,
    abort: CancellationToken,
) {
    let _open = OpenGuard(&shared);
    if fault == Fault::Refuse {
        shared.injected.count(&fault);
        reset(&shared, client, None);
        return;
    }
    let _ = client.set_nodelay(true);
    let connect = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream));
    let server = tokio::select! {
        biased;
        _ = abort.cancelled() => None,
        r = connect => match r {
            Ok(Ok(s)) => Some(s),
            _ => None,
        },
    };
    let Some(mut server) = server else {
        shared.upstream_failed.fetch_add(1, Ordering::Relaxed);
        reset(&shared, client, None);
        return;
    };
    let _ = server.set_nodelay(true);
    let mut client = client;
    {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        tokio::join!(
            pump(
                &mut cr,
                &mut sw,
                Direction::ToServer,
                fault,
                &abort,
                &shared
            ),
            pump(
                &mut sr,
                &mut cw,
                Direction::ToClient,
                fault,
                &abort,
                &shared
            ),
        );
    }
    if abort.is_cancelled() {
        reset(&shared, client, Some(server));
    } else if fault == Fault::Pass {
        shared.injected.count(&fault);
    }
}

/// Copies `src` → `dst` until EOF, an error, the fault of this direction, or `abort`.
async fn pump<R, W>(
    src: &mut R,
    dst: &mut W,
    dir: Direction,
    fault: Fault,
    abort: &CancellationToken,
    shared: &Shared,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut pending = fault.trigger().filter(|(d, _)| *d == dir).map(|(_, a)| a);
    let mut buf = vec![0u8; COPY_BUF];
    let mut moved: u64 = 0;
    loop {
        let read = tokio::select! {
            biased;
            _ = abort.cancelled() => return,
            r = src.read(&mut buf) => r,
        };
        let n = match read {
            Ok(0) => {
                // Propagate the sender's FIN.
                let _ = dst.shutdown().await;
                return;
            }
            Ok(n) => n,
            Err(_) => {
                abort.cancel();
                return;
            }
        };
        let mut chunk = &buf[..n];
        if let Some(after) = pending {
            if moved + n as u64 >= after {
                let head = usize::try_from(after - moved).unwrap_or(n).min(n);
                if !forward(dst, &chunk[..head], dir, abort, shared).await {
                    return;
                }
                moved += head as u64;
                chunk = &chunk[head..];
                pending = None;
                shared.injected.count(&fault);
                match fault {
                    Fault::Reset { .. } => {
                        abort.cancel();
                        return;
                    }
                    Fault::HalfClose { .. } => {
                        let _ = dst.shutdown().await;
                        return;
                    }
                    Fault::Stall { duration, .. } => {
                        tokio::select! {
                            biased;
                            _ = abort.cancelled() => return,
                            _ = tokio::time::sleep(duration) => {}
                        }
                    }
                    Fault::Pass | Fault::Refuse => {}
                }
            }
        }
        if !forward(dst, chunk, dir, abort, shared).await {
            return;
        }
        moved += chunk.len() as u64;
    }
}

/// Writes `bytes` to `dst` unless aborted; false (and the pair aborted) on failure.
async fn forward<W>(
    dst: &mut W,
    bytes: &[u8],
    dir: Direction,
    abort: &CancellationToken,
    shared: &Shared,
) -> bool
where
    W: tokio::io::AsyncWrite + Unpin,
{
    if bytes.is_empty() {
        return true;
    }
    let written = tokio::select! {
        biased;
        _ = abort.cancelled() => return false,
        r = dst.write_all(bytes) => r,
    };
    if written.is_err() {
        abort.cancel();
        return false;
    }
    shared
        .bytes(dir)
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    true
}

/// Closes the sockets with an RST (`SO_LINGER` 0).
fn reset(shared: &Shared, client: TcpStream, server: Option<TcpStream>) {
    shared.resets_sent.fetch_add(1, Ordering::Relaxed);
    for s in std::iter::once(client).chain(server) {
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        drop(s);
    }
}

/// Decrements the open-pairs gauge when a relay task ends (however it ends).
struct OpenGuard<'a>(&'a Shared);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_a_function_of_seed_and_ordinal() {
        let plan = FaultPlan::mixed();
        let a: Vec<Fault> = (0..200).map(|n| plan.fault_for(7, n)).collect();
        let b: Vec<Fault> = (0..200).map(|n| plan.fault_for(7, n)).collect();
        let c: Vec<Fault> = (0..200).map(|n| plan.fault_for(8, n)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Every kind is drawn from the mixed plan over 200 connections.
        let mut seen = [false; 5];
        for f in &a {
            let i = match f {
                Fault::Pass => 0,
                Fault::Reset { .. } => 1,
                Fault::Stall { duration, .. } => {
                    assert!(*duration >= plan.stall_min && *duration < plan.stall_max);
                    2
                }
                Fault::Refuse => 3,
                Fault::HalfClose { .. } => 4,
            };
            seen[i] = true;
            if let Some((_, after)) = f.trigger() {
                assert!(after < plan.max_offset);
            }
        }
        assert_eq!(seen, [true; 5]);
        assert!((0..50).all(|n| FaultPlan::pass_through().fault_for(1, n) == Fault::Pass));
    }

    #[tokio::test]
    async fn refuses_non_loopback_upstream() {
        let err = FaultRelay::start("192.0.2.1:80".parse().unwrap(), FaultPlan::mixed(), 1)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// A pass-through relay copies both ways and propagates FIN; a refusing one resets.
    #[tokio::test]
    async fn pass_and_refuse() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = server.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        let relay = FaultRelay::start(up, FaultPlan::pass_through(), 3)
            .await
            .unwrap();
        let mut c = TcpStream::connect(relay.local_addr()).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        drop(c);
        relay.stop().await;
        let n = relay.counts();
        assert_eq!((n.accepted, n.injected.pass, n.open), (1, 1, 0));
        assert_eq!((n.bytes_to_server, n.bytes_to_client), (5, 5));

        let refuse = FaultPlan {
            pass: 0,
            refuse: 1,
            ..FaultPlan::pass_through()
        };
        let relay = FaultRelay::start(up, refuse, 3).await.unwrap();
        let mut c = TcpStream::connect(relay.local_addr()).await.unwrap();
        let mut buf = [0u8; 8];
        let r = c.read(&mut buf).await;
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
        relay.stop().await;
        let n = relay.counts();
        assert_eq!((n.injected.refuse, n.resets_sent, n.open), (1, 1, 0));
    }
}
