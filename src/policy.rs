//! Admission and pacing policy shared by every engine: the global and per-peer connection caps
//! and the token buckets (per connection, per peer, global ingress, global egress), checked
//! *before work* — a refused peer costs no TLS handshake and no buffer.
//!
//! # Buckets
//!
//! | bucket | rate key | direction |
//! |---|---|---|
//! | per connection | `rates.per_conn_bytes_per_sec` | one bucket per direction, owned by [`ConnPermit`] |
//! | per peer ([`peer_key`]) | `rates.per_peer_bytes_per_sec` | one bucket per direction, shared by the peer's connections |
//! | global ingress | `rates.global_ingress_bytes_per_sec` | reads |
//! | global egress | `rates.global_egress_bytes_per_sec` | writes |
//!
//! A rate of 0 disables its bucket. Every bucket's burst is [`default_burst`]: 100 ms of traffic
//! (`rate / 10`) but at least one maximum frame (`limits.max_frame_bytes`), so a single full frame
//! never has to wait for a full bucket.
//!
//! # Admission
//!
//! [`Policy::admit`] checks, in order: the global cap (`max_conns`), then for the peer's key
//! ([`peer_key`]: IPv4 address, IPv4-mapped IPv6 as IPv4, otherwise the IPv6 /64) the per-peer
//! cap (`per_peer.max_conns`) and the per-peer ingress debt. A refusal is `PeerLimit` or
//! `RateLimited`. The *global* ingress debt is deliberately not an admission check: one heavy
//! reader would otherwise lock every new connection out; newcomers are admitted and their reads
//! wait behind the debt (pacing).
//!
//! # Live reload
//!
//! Caps (`max_conns`, `per_peer.max_conns`) are read from the live config snapshot on every
//! [`Policy::admit`]. Rates are re-applied whenever the snapshot changes: each [`ConnPermit`]
//! caches, in one word of its own, the config generation it last synced to and which buckets are
//! enabled; every pacing call compares that generation with [`ConfigHandle::generation`] and, on
//! a change, re-syncs (applies the snapshot under the policy's `applied` lock, then picks up the
//! per-connection rate). Admission and [`Policy::refresh`] also compare the snapshot itself
//! (`Arc::ptr_eq`). Global and per-peer buckets are updated in place; per-connection buckets and
//! per-thread leases of the global buckets pick up the new rate on their next pacing call (an
//! epoch compare; a lease of the old epoch is refunded first).
//!
//! # Hot-path cost (no shared write per I/O)
//!
//! - Every rate at 0 (the default): `pace_ingress` / `pace_egress` / `egress_available` are two
//!   loads — the config generation (a word written only by a reload) and the permit's own sync
//!   word — and touch no bucket, no per-peer state and no policy field that admission writes.
//! - Global ingress/egress enabled: the global buckets are consumed through per-thread
//!   [`Lease`]s (a thread-local table keyed by policy): tokens are taken from the global bucket in
//!   chunks of 1 ms of traffic (`rate / 1000`, at most a quarter of the burst) and spent locally;
//!   unspent credit is refunded [`LEASE_TTL_NS`] after the chunk became ready (or when rates
//!   change, or when the thread exits). Chunks adapt per thread (start at the request size,
//!   double on renewal, halve on expiry). The global bucket sees at most about
//!   `1000 + 2 · threads / TTL` read-modify-writes per second whatever the I/O rate, and over any
//!   window the bytes let through exceed the unleased bucket's bound by at most
//!   `rate · LEASE_TTL_NS` plus one chunk per thread.
//! - Per-connection buckets live in the permit; per-peer buckets are shared by that peer's
//!   connections only (a contended line only for one peer spread over many shards).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::config::{ConfigHandle, ValidConfig};
use crate::error::TransportError;
use crate::metrics::TransportMetrics;
use crate::rate::{default_burst, Lease, TokenBucket};

/// How long a global-bucket lease's unspent credit stays usable after it became ready (10 ms):
/// bounds how late leased tokens are spent, hence the pacing error, to 10 ms of traffic.
pub const LEASE_TTL_NS: u64 = 10_000_000;

/// Bucket-enabled bits cached in [`Policy`] and [`ConnPermit`] (0 = nothing limits anything).
const F_CONN: u8 = 1;
const F_PEER: u8 = 2;
const F_GLOBAL_IN: u8 = 4;
const F_GLOBAL_OUT: u8 = 8;

/// Direction index of a global bucket and of a lease.
const IN: usize = 0;
const OUT: usize = 1;

/// Keeps a frequently written field (admission state) off the cache lines the pacing path reads.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The key a peer address is counted under for per-peer caps and per-peer rate buckets:
///
/// - IPv4: the full address;
/// - IPv4-mapped IPv6 (`::ffff:a.b.c.d`, a dual-stack listener's IPv4 peer): that IPv4 address,
///   so one host is one peer whichever socket family it arrived on;
/// - other IPv6: the /64 prefix (the low 64 bits zeroed). A single subscriber or host is
///   routinely given a whole /64 and picks interface identifiers at will, so keying on the full
///   address would let one /64 walk around every per-peer limit;
/// - except the crate's own synthetic addresses, which stay exact: Unix-domain peers
///   (`100::<uid>`, in the RFC 6666 discard-only prefix `100::/64`, which no real peer has;
///   [`crate::engine::uds::uid_addr`]) and Arti name targets (`fd00:7274::<64-bit hash>`, the
///   pseudo address of a host name). Each of those encodes its identity in the low 64 bits.
///
/// Only the admission key changes: the permit, `ConnInfo`, metrics and logs keep the real
/// address ([`ConnPermit::peer`]).
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let bits = u128::from(v6);
            let prefix = bits >> 64;
            if SYNTHETIC_V6_PREFIXES.contains(&prefix) {
                return ip;
            }
            IpAddr::V6(Ipv6Addr::from(bits & !u128::from(u64::MAX)))
        }
    }
}

/// Upper 64 bits of the /64s whose addresses are synthetic identities kept exact by
/// [`peer_key`]: `100::/64` (Unix peers by uid) and `fd00:7274::/64` (Arti name targets).
const SYNTHETIC_V6_PREFIXES: [u128; 2] = [0x0100_0000_0000_0000, 0xfd00_7274_0000_0000];

/// Monotonic nanoseconds since the first call in this process (the clock fed to buckets).
pub fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Rates (bytes/s) and bursts derived from one config snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rates {
    per_conn: u64,
    per_peer: u64,
    global_in: u64,
    global_out: u64,
    max_frame: u64,
}

impl Rates {
    fn of(cfg: &ValidConfig) -> Self {
        Self {
            per_conn: cfg.per_conn_bytes_per_sec,
            per_peer: cfg.per_peer_bytes_per_sec,
            global_in: cfg.global_ingress_bytes_per_sec,
            global_out: cfg.global_egress_bytes_per_sec,
            max_frame: cfg.max_frame_bytes,
        }
    }

    fn flags(&self) -> u8 {
        let bit = |rate: u64, f: u8| if rate != 0 { f } else { 0 };
        bit(self.per_conn, F_CONN)
            | bit(self.per_peer, F_PEER)
            | bit(self.global_in, F_GLOBAL_IN)
            | bit(self.global_out, F_GLOBAL_OUT)
    }

    /// Lease chunk for a global bucket: 1 ms of traffic, at most a quarter of the burst.
    fn lease_chunk(&self, rate: u64) -> u64 {
        (rate / 1000)
            .min(default_burst(rate, self.max_frame) / 4)
            .max(1)
    }

    fn set(&self, bucket: &TokenBucket, rate: u64) {
        bucket.set_rate(rate, default_burst(rate, self.max_frame));
    }

    fn bucket(&self, rate: u64) -> TokenBucket {
        TokenBucket::new(rate, default_burst(rate, self.max_frame))
    }
}

/// Shared state of one peer address.
#[derive(Debug)]
struct PeerState {
    /// Live connections from this peer (modified only under the peers-map lock).
    conns: AtomicU32,
    ingress: TokenBucket,
    egress: TokenBucket,
}

/// The shared policy of one transport instance.
#[derive(Debug)]
pub struct Policy {
    /// Process-unique id (never reused), the key of the thread-local lease table.
    id: u64,
    config: ConfigHandle,
    metrics: Arc<TransportMetrics>,
    /// Live connections (all peers). Written on every admission: padded.
    conns: Padded<AtomicU32>,
    /// Per-peer state by [`peer_key`].
    peers: Padded<Mutex<HashMap<IpAddr, Arc<PeerState>>>>,
    /// Written once per lease renewal: padded off the lines pacing reads.
    global_ingress: Padded<TokenBucket>,
    global_egress: Padded<TokenBucket>,
    /// Lease chunk (bytes) per direction for the global buckets (read when a lease renews).
    lease_chunk: [AtomicU64; 2],
    /// The snapshot whose rates are applied, and those rates. Locked on every admission.
    applied: Padded<Mutex<(Arc<ValidConfig>, Rates)>>,
    /// Per-connection rate and burst currently in force (read when `epoch` moves).
    per_conn_rate: AtomicU64,
    per_conn_burst: AtomicU64,
    /// Per-peer rate and burst for new peer entries (written and read under the peers lock).
    per_peer_rate: AtomicU64,
    per_peer_burst: AtomicU64,
    /// Bumped every time rates are re-applied.
    epoch: AtomicU64,
    /// Which buckets are enabled (`F_*` bits), copied into permits when they sync.
    flags: AtomicU8,
    /// The `ConfigHandle::generation` whose rates are applied. Stored on every admission.
    applied_gen: Padded<AtomicU64>,
}

impl Policy {
    /// Policy over a live config handle, counting into `metrics`.
    pub fn new(config: ConfigHandle, metrics: Arc<TransportMetrics>) -> Arc<Self> {
        let gen = config.generation();
        let cfg = config.load();
        let rates = Rates::of(&cfg);
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let p = Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            lease_chunk: [
                AtomicU64::new(rates.lease_chunk(rates.global_in)),
                AtomicU64::new(rates.lease_chunk(rates.global_out)),
            ],
            global_ingress: Padded(rates.bucket(rates.global_in)),
            global_egress: Padded(rates.bucket(rates.global_out)),
            per_conn_rate: AtomicU64::new(rates.per_conn),
            per_conn_burst: AtomicU64::new(default_burst(rates.per_conn, rates.max_frame)),
            per_peer_rate: AtomicU64::new(rates.per_peer),
            per_peer_burst: AtomicU64::new(default_burst(rates.per_peer, rates.max_frame)),
            epoch: AtomicU64::new(0),
            flags: AtomicU8::new(rates.flags()),
            applied_gen: Padded(AtomicU64::new(gen)),
            applied: Padded(Mutex::new((cfg, rates))),
            conns: Padded(AtomicU32::new(0)),
            peers: Padded(Mutex::new(HashMap::new())),
            config,
            metrics,
        };
        Arc::new(p)
    }

    /// The current config snapshot.
    pub fn config(&self) -> Arc<ValidConfig> {
        self.config.load()
    }

    /// The config handle (for reload).
    pub fn config_handle(&self) -> &ConfigHandle {
        &self.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<TransportMetrics> {
        &self.metrics
    }

    /// Live admitted connections.
    pub fn conn_count(&self) -> u32 {
        self.conns.load(Ordering::Relaxed)
    }

    /// Live connections counted under `peer`'s key ([`peer_key`]: its /64 for IPv6).
    pub fn peer_conn_count(&self, peer: IpAddr) -> u32 {
        lock(&self.peers)
            .get(&peer_key(peer))
            .map_or(0, |p| p.conns.load(Ordering::Relaxed))
    }

    /// Number of per-peer entries (equals the number of peer keys with a live connection).
    pub fn tracked_peers(&self) -> usize {
        lock(&self.peers).len()
    }

    /// How many times rates have been re-applied after a config change.
    pub fn rates_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The global ingress bucket.
    pub fn global_ingress(&self) -> &TokenBucket {
        &self.global_ingress
    }

    /// The global egress bucket.
    pub fn global_egress(&self) -> &TokenBucket {
        &self.global_egress
    }

    /// Re-applies rates if the config snapshot changed since the last time. Engines may call it
    /// right after a reload; admission and pacing call it on their own.
    pub fn refresh(&self) {
        let gen = self.config.generation();
        let cfg = self.config.load();
        self.apply(gen, &cfg);
    }

    /// Applies `cfg`, loaded *after* reading generation `gen`.
    fn apply(&self, gen: u64, cfg: &Arc<ValidConfig>) {
        let mut applied = lock(&self.applied);
        self.applied_gen.store(gen, Ordering::Release);
        if Arc::ptr_eq(&applied.0, cfg) {
            return;
        }
        let rates = Rates::of(cfg);
        let changed = rates != applied.1;
        *applied = (cfg.clone(), rates);
        if !changed {
            return;
        }
        rates.set(&self.global_ingress, rates.global_in);
        rates.set(&self.global_egress, rates.global_out);
        self.lease_chunk[IN].store(rates.lease_chunk(rates.global_in), Ordering::Relaxed);
        self.lease_chunk[OUT].store(rates.lease_chunk(rates.global_out), Ordering::Relaxed);
        {
            // Under the peers lock so that a concurrently admitted new peer sees either the old
            // rate and gets updated here, or the new rate.
            let peers = lock(&self.peers);
            self.per_peer_rate.store(rates.per_peer, Ordering::Relaxed);
            self.per_peer_burst.store(
                default_burst(rates.per_peer, rates.max_frame),
                Ordering::Relaxed,
            );
            for peer in peers.values() {
                rates.set(&peer.ingress, rates.per_peer);
                rates.set(&peer.egress, rates.per_peer);
            }
        }
        self.per_conn_rate.store(rates.per_conn, Ordering::Relaxed);
        self.per_conn_burst.store(
            default_burst(rates.per_conn, rates.max_frame),
            Ordering::Relaxed,
        );
        self.flags.store(rates.flags(), Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Release);
    }

    fn global(&self, dir: usize) -> &TokenBucket {
        if dir == IN {
            &self.global_ingress
        } else {
            &self.global_egress
        }
    }

    /// Runs `f` on the calling thread's lease of the global bucket `dir` (tagged with the
    /// permit's rate epoch), with the lease chunk. `None` if the thread-local table is
    /// unavailable (thread teardown, re-entrance): the caller then uses the bucket directly.
    #[inline]
    fn with_lease<R>(
        self: &Arc<Self>,
        dir: usize,
        epoch: u64,
        now_ns: u64,
        f: impl FnOnce(&mut Lease, u64) -> R,
    ) -> Option<R> {
        let mut f = Some(f);
        LEASES
            .try_with(|table| {
                let mut table = table.0.try_borrow_mut().ok()?;
                let e = match table.first_mut() {
                    Some(e) if e.id == self.id && e.epoch == epoch => e,
                    _ => self.lease_entry_slow(&mut table, epoch, now_ns),
                };
                let f = f.take()?;
                Some(f(&mut e.leases[dir], e.chunk[dir]))
            })
            .ok()
            .flatten()
    }

    /// Finds (and moves to the front) or creates this thread's lease entry; on a rate epoch
    /// change, refunds its credit and takes the current chunk sizes.
    #[cold]
    #[inline(never)]
    fn lease_entry_slow<'t>(
        self: &Arc<Self>,
        table: &'t mut Vec<LeaseEntry>,
        epoch: u64,
        now_ns: u64,
    ) -> &'t mut LeaseEntry {
        match table.iter().position(|e| e.id == self.id) {
            Some(i) => table.swap(0, i),
            None => {
                // Forget entries of dropped policies.
                table.retain(|e| e.owner.strong_count() > 0);
                table.push(LeaseEntry {
                    id: self.id,
                    epoch,
                    chunk: [0; 2],
                    leases: [Lease::new(); 2],
                    owner: Arc::downgrade(self),
                });
                let last = table.len() - 1;
                table.swap(0, last);
                self.sync_lease_entry(&mut table[0], epoch, true, now_ns);
                return &mut table[0];
            }
        }
        let e = &mut table[0];
        if e.epoch != epoch {
            self.sync_lease_entry(e, epoch, false, now_ns);
        }
        e
    }

    fn sync_lease_entry(&self, e: &mut LeaseEntry, epoch: u64, fresh: bool, now_ns: u64) {
        if !fresh {
            e.leases[IN].release(&self.global_ingress, now_ns);
            e.leases[OUT].release(&self.global_egress, now_ns);
        }
        e.epoch = epoch;
        e.chunk = [
            self.lease_chunk[IN].load(Ordering::Relaxed),
            self.lease_chunk[OUT].load(Ordering::Relaxed),
        ];
    }

    /// The global bucket `dir`, paced through this thread's lease.
    #[inline]
    fn pace_global(self: &Arc<Self>, dir: usize, n: u64, now_ns: u64, epoch: u64) -> Duration {
        let bucket = self.global(dir);
        self.with_lease(dir, epoch, now_ns, |lease, chunk| {
            lease.pace(bucket, n, now_ns, chunk, LEASE_TTL_NS)
        })
        .unwrap_or_else(|| bucket.consume_paced(n, now_ns))
    }

    /// Credit in this thread's lease of the global bucket `dir` (introspection for tests).
    pub fn leased_credit(self: &Arc<Self>, ingress: bool) -> u64 {
        let dir = if ingress { IN } else { OUT };
        LEASES
            .try_with(|t| {
                t.0.try_borrow().ok().and_then(|t| {
                    t.iter()
                        .find(|e| e.id == self.id)
                        .map(|e| e.leases[dir].credit())
                })
            })
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Admits one connection from `peer`: global cap, then the per-peer cap and the per-peer
    /// ingress debt of `peer`'s key ([`peer_key`]). On refusal returns `PeerLimit` or
    /// `RateLimited` and has already counted `rejected_total{reason}`. The permit releases the
    /// caps when dropped.
    ///
    /// A debt of the *global* ingress bucket never refuses: it is shared by every connection,
    /// so refusing on it would let one heavy reader lock every newcomer out; the newcomer's
    /// reads are paced behind the debt instead. A per-peer debt refuses only that peer key.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnPermit, TransportError> {
        self.admit_at(peer, now_ns())
    }

    /// [`admit`](Self::admit) at an explicit time on the bucket clock (for simulated clocks).
    pub fn admit_at(
        self: &Arc<Self>,
        peer: IpAddr,
        now_ns: u64,
    ) -> Result<ConnPermit, TransportError> {
        let gen = self.config.generation();
        let cfg = self.config.load();
        self.apply(gen, &cfg);
        match self.try_admit(&cfg, gen, peer, now_ns) {
            Ok(p) => Ok(p),
            Err(e) => {
                if let Some(r) = e.reject_reason() {
                    self.metrics.reject(r);
                }
                Err(e)
            }
        }
    }

    fn try_admit(
        self: &Arc<Self>,
        cfg: &ValidConfig,
        gen: u64,
        peer: IpAddr,
        now_ns: u64,
    ) -> Result<ConnPermit, TransportError> {
        // Global cap.
        let max = cfg.max_conns;
        self.conns
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |c| {
                (c < max).then_some(c + 1)
            })
            .map_err(|_| TransportError::PeerLimit)?;

        let refuse = |e: TransportError| {
            self.conns.fetch_sub(1, Ordering::AcqRel);
            Err(e)
        };
        // No global-ingress debt check here: see `admit`.
        let key = peer_key(peer);
        let per_peer_max = cfg.per_peer_max_conns;
        let state = {
            let mut peers = lock(&self.peers);
            let state = peers
                .entry(key)
                .or_insert_with(|| {
                    let rate = self.per_peer_rate.load(Ordering::Relaxed);
                    let burst = self.per_peer_burst.load(Ordering::Relaxed);
                    Arc::new(PeerState {
                        conns: AtomicU32::new(0),
                        ingress: TokenBucket::new(rate, burst),
                        egress: TokenBucket::new(rate, burst),
                    })
                })
                .clone();
            let live = state.conns.load(Ordering::Relaxed);
            let verdict = if per_peer_max != 0 && live >= per_peer_max {
                Some(TransportError::PeerLimit)
            } else if state.ingress.debt(now_ns) > Duration::ZERO {
                Some(TransportError::RateLimited)
            } else {
                None
            };
            if let Some(e) = verdict {
                if live == 0 {
                    peers.remove(&key);
                }
                drop(peers);
                return refuse(e);
            }
            state.conns.store(live + 1, Ordering::Relaxed);
            state
        };

        // Epoch first: if rates move after this load, the permit resyncs on its next pacing call.
        let epoch = self.epoch.load(Ordering::Acquire);
        let rate = self.per_conn_rate.load(Ordering::Relaxed);
        let burst = self.per_conn_burst.load(Ordering::Relaxed);
        // `admit_at` applied `gen` (or newer) under the `applied` lock before calling us.
        let flags = self.flags.load(Ordering::Acquire);
        Ok(ConnPermit {
            policy: Arc::clone(self),
            peer,
            key,
            state,
            conn_in: TokenBucket::new(rate, burst),
            conn_out: TokenBucket::new(rate, burst),
            epoch: AtomicU64::new(epoch),
            sync: AtomicU64::new(pack_sync(gen, flags)),
        })
    }

    fn release(&self, key: IpAddr, state: &Arc<PeerState>) {
        {
            let mut peers = lock(&self.peers);
            let left = state.conns.load(Ordering::Relaxed).saturating_sub(1);
            state.conns.store(left, Ordering::Relaxed);
            if left == 0 && peers.get(&key).is_some_and(|s| Arc::ptr_eq(s, state)) {
                peers.remove(&key);
            }
        }
        self.conns.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Proof of admission for one connection; owns its per-connection buckets (one per direction)
/// and references the per-peer and global ones. Drop releases the caps (and the per-peer entry
/// when it was the peer's last connection).
#[derive(Debug)]
pub struct ConnPermit {
    policy: Arc<Policy>,
    /// The real peer address (reported in `ConnInfo`, metrics and logs).
    peer: IpAddr,
    /// The per-peer admission key ([`peer_key`] of `peer`).
    key: IpAddr,
    state: Arc<PeerState>,
    conn_in: TokenBucket,
    conn_out: TokenBucket,
    /// The policy epoch whose per-connection rate `conn_in`/`conn_out` carry.
    epoch: AtomicU64,
    /// `generation << 8 | F_* flags`: the config generation this permit last synced to and
    /// which buckets were enabled then, in one word so the two never disagree.
    sync: AtomicU64,
}

fn pack_sync(gen: u64, flags: u8) -> u64 {
    (gen << 8) | u64::from(flags)
}

/// One thread's leases of one policy's global buckets. Written on every paced I/O: aligned to
/// its own cache lines so two threads' tables can never share one, whatever the allocator does.
#[derive(Debug)]
#[repr(align(128))]
struct LeaseEntry {
    id: u64,
    /// The rate epoch the leases and chunk sizes belong to.
    epoch: u64,
    chunk: [u64; 2],
    leases: [Lease; 2],
    owner: Weak<Policy>,
}

/// The calling thread's leases; unspent credit goes back to its bucket on thread exit.
struct LeaseTable(RefCell<Vec<LeaseEntry>>);

impl Drop for LeaseTable {
    fn drop(&mut self) {
        for mut e in self.0.get_mut().drain(..) {
            if let Some(p) = e.owner.upgrade() {
                if p.epoch.load(Ordering::Acquire) == e.epoch {
                    let now = now_ns();
                    e.leases[IN].release(&p.global_ingress, now);
                    e.leases[OUT].release(&p.global_egress, now);
                }
            }
        }
    }
}

thread_local! {
    static LEASES: LeaseTable = const { LeaseTable(RefCell::new(Vec::new())) };
}

impl ConnPermit {
    /// The admitted peer address.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// The key this permit counts under for per-peer caps and buckets ([`peer_key`] of
    /// [`peer`](Self::peer)).
    pub fn peer_key(&self) -> IpAddr {
        self.key
    }

    /// The policy this permit belongs to.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The per-connection ingress bucket.
    pub fn conn_ingress(&self) -> &TokenBucket {
        &self.conn_in
    }

    /// The per-connection egress bucket.
    pub fn conn_egress(&self) -> &TokenBucket {
        &self.conn_out
    }

    /// Which buckets limit anything (`F_*` bits; 0 ⇒ none). Steady state: one load of the
    /// config generation and one of the permit's own sync word.
    #[inline]
    fn flags(&self) -> u8 {
        let gen = self.policy.config.generation();
        let sync = self.sync.load(Ordering::Acquire);
        if sync >> 8 == gen {
            return sync as u8;
        }
        self.resync(gen)
    }

    /// After a reload: apply it (under the policy's lock, so a concurrent apply has finished),
    /// pick up the per-connection rate, and cache the enabled buckets for `gen`.
    #[cold]
    #[inline(never)]
    fn resync(&self, gen: u64) -> u8 {
        self.policy.refresh();
        let epoch = self.policy.epoch.load(Ordering::Acquire);
        if self.epoch.load(Ordering::Relaxed) != epoch {
            let rate = self.policy.per_conn_rate.load(Ordering::Relaxed);
            let burst = self.policy.per_conn_burst.load(Ordering::Relaxed);
            self.conn_in.set_rate(rate, burst);
            self.conn_out.set_rate(rate, burst);
            self.epoch.store(epoch, Ordering::Relaxed);
        }
        let flags = self.policy.flags.load(Ordering::Acquire);
        self.sync.store(pack_sync(gen, flags), Ordering::Release);
        flags
    }

    /// The epoch global leases are tagged with.
    #[inline]
    fn lease_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Accounts `n` received bytes against per-conn, per-peer and global ingress buckets and
    /// returns how long the reader must pause before reading again (zero if none). The global
    /// bucket is paid through this thread's lease (see the module docs).
    #[inline]
    pub fn pace_ingress(&self, n: u64, now_ns: u64) -> Duration {
        let f = self.flags();
        if f == 0 {
            return Duration::ZERO;
        }
        let mut wait = Duration::ZERO;
        if f & F_CONN != 0 {
            wait = self.conn_in.consume_paced(n, now_ns);
        }
        if f & F_PEER != 0 {
            wait = wait.max(self.state.ingress.consume_paced(n, now_ns));
        }
        if f & F_GLOBAL_IN != 0 {
            let epoch = self.lease_epoch();
            wait = wait.max(self.policy.pace_global(IN, n, now_ns, epoch));
        }
        wait
    }

    /// Accounts `n` bytes about to be written against per-conn, per-peer and global egress
    /// buckets and returns how long the writer must wait first (zero if none). The global
    /// bucket is paid through this thread's lease (see the module docs).
    #[inline]
    pub fn pace_egress(&self, n: u64, now_ns: u64) -> Duration {
        let f = self.flags();
        if f == 0 {
            return Duration::ZERO;
        }
        let mut wait = Duration::ZERO;
        if f & F_CONN != 0 {
            wait = self.conn_out.consume_paced(n, now_ns);
        }
        if f & F_PEER != 0 {
            wait = wait.max(self.state.egress.consume_paced(n, now_ns));
        }
        if f & F_GLOBAL_OUT != 0 {
            let epoch = self.lease_epoch();
            wait = wait.max(self.policy.pace_global(OUT, n, now_ns, epoch));
        }
        wait
    }

    /// Non-waiting egress check for `try_send`: false ⇒ the caller returns `RateLimited`
    /// (and counts it). Does not consume tokens (neither when refusing nor when accepting):
    /// the writer accounts the bytes with [`pace_egress`](Self::pace_egress) when it writes
    /// them, so nothing is counted twice. Use [`try_egress`](Self::try_egress) to check and
    /// consume in one step instead. The global bucket counts as available when this thread's
    /// lease could pay `n` right now.
    #[inline]
    pub fn egress_available(&self, n: u64, now_ns: u64) -> bool {
        let f = self.flags();
        if f == 0 {
            return true;
        }
        (f & F_CONN == 0 || self.conn_out.can_consume(n, now_ns))
            && (f & F_PEER == 0 || self.state.egress.can_consume(n, now_ns))
            && (f & F_GLOBAL_OUT == 0 || {
                let epoch = self.lease_epoch();
                self.policy
                    .with_lease(OUT, epoch, now_ns, |lease, _| lease.can_spend(n, now_ns))
                    .unwrap_or(false)
                    || self.policy.global_egress.can_consume(n, now_ns)
            })
    }

    /// Takes `n` egress tokens from all three egress buckets (the global one from this
    /// thread's lease when it can pay) if each can give them now; otherwise takes none and
    /// returns false.
    pub fn try_egress(&self, n: u64, now_ns: u64) -> bool {
        let f = self.flags();
        if f == 0 {
            return true;
        }
        if f & F_CONN != 0 && !self.conn_out.try_consume(n, now_ns) {
            return false;
        }
        if f & F_PEER != 0 && !self.state.egress.try_consume(n, now_ns) {
            self.conn_out.refund(n);
            return false;
        }
        if f & F_GLOBAL_OUT != 0 {
            let epoch = self.lease_epoch();
            let from_lease = self
                .policy
                .with_lease(OUT, epoch, now_ns, |lease, _| lease.try_spend(n, now_ns))
                .unwrap_or(false);
            if !from_lease && !self.policy.global_egress.try_consume(n, now_ns) {
                self.state.egress.refund(n);
                self.conn_out.refund(n);
                return false;
            }
        }
        true
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.policy.release(self.key, &self.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::error::RejectReason;

    fn policy(f: impl FnOnce(&mut Config)) -> Arc<Policy> {
        let mut c = Config::default();
        f(&mut c);
        Policy::new(
            ConfigHandle::new(c.validate().unwrap()),
            TransportMetrics::new(),
        )
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn global_cap_and_release() {
        let p = policy(|c| c.max_conns = 2);
        let a = p.admit(A).unwrap();
        let b = p.admit(B).unwrap();
        let err = p.admit(A).unwrap_err();
        assert_eq!(err.kind(), "peer_limit");
        assert_eq!(p.metrics().rejected_count(RejectReason::PeerLimit), 1);
        assert_eq!(p.conn_count(), 2);
        drop(a);
        assert_eq!(p.conn_count(), 1);
        let _a2 = p.admit(A).unwrap();
        drop(b);
        assert_eq!(
            p.tracked_peers(),
            1,
            "B's entry removed with its last connection"
        );
    }

    #[test]
    fn per_peer_cap() {
        let p = policy(|c| c.per_peer_max_conns = 2);
        let a1 = p.admit(A).unwrap();
        let _a2 = p.admit(A).unwrap();
        assert!(matches!(p.admit(A), Err(TransportError::PeerLimit)));
        let _b = p.admit(B).unwrap();
        assert_eq!(p.metrics().rejected_count(RejectReason::PeerLimit), 1);
        assert_eq!(p.peer_conn_count(A), 2);
        drop(a1);
        assert_eq!(p.peer_conn_count(A), 1);
        let _a3 = p.admit(A).unwrap();
        assert_eq!(p.conn_count(), 3);
    }

    #[test]
    fn zero_rates_never_pace() {
        let p = policy(|_| {});
        let c = p.admit(A).unwrap();
        assert_eq!(c.pace_ingress(u64::MAX / 2, 1), Duration::ZERO);
        assert_eq!(c.pace_egress(u64::MAX / 2, 1), Duration::ZERO);
        assert!(c.egress_available(u64::MAX, 1));
        assert!(now_ns() <= now_ns());
    }

    #[test]
    fn ingress_debt_refuses_admission() {
        let p = policy(|c| c.per_peer_bytes_per_sec = 1 << 20);
        let t = 1_000_000_000;
        let c = p.admit_at(A, t).unwrap();
        // Burst is max(rate/10, 1 MiB) = 1 MiB; 3 MiB puts the peer 2 s in debt.
        assert_eq!(c.pace_ingress(3 << 20, t), Duration::from_secs(2));
        let err = p.admit_at(A, t).unwrap_err();
        assert_eq!(err.reject_reason(), Some(RejectReason::RateLimited));
        assert_eq!(p.metrics().rejected_count(RejectReason::RateLimited), 1);
        let _b = p.admit_at(B, t).unwrap();
        let _a = p.admit_at(A, t + 2_000_000_000).unwrap();
    }
}
