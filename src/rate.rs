//! Rate limits (spec/IDB I-12): lock-free token buckets taking `now` as an argument, and the
//! set of buckets an engine consults (per connection, per peer, global ingress, global egress;
//! a rate of 0 disables a bucket).
//!
//! # Algorithm: GCRA
//!
//! [`TokenBucket`] is the Generic Cell Rate Algorithm in its "virtual scheduling" form: the whole
//! state is one `AtomicU64`, the *theoretical arrival time* (TAT, nanoseconds on the caller's
//! clock). Consuming `n` bytes moves the TAT forward by `n / rate` seconds (starting from `now`
//! if the TAT is in the past). The bucket holds `burst` bytes of credit: a request is admitted
//! when, after it, the TAT is at most `tau = burst / rate` ahead of `now`. Equivalent to a
//! token bucket of capacity `burst` refilled at `rate`, but updated with a single CAS and no
//! floating point.
//!
//! - A request larger than `burst` is admitted by [`TokenBucket::try_consume`] when the bucket is
//!   full (TAT ≤ now): it passes once and puts the bucket in debt, which later requests pay for.
//!   Over any window of length `t`, admitted bytes ≤ `rate·t + burst + one request`.
//! - [`TokenBucket::consume_paced`] always consumes and returns how long the caller must wait for
//!   the debt beyond `burst` to be repaid — pacing a stream to `rate` in the long run.
//!
//! The bucket never reads a clock: callers pass `now_ns` (see [`crate::policy::now_ns`]), which
//! makes every behaviour testable on a simulated clock.
//!
//! # Leases: a shared bucket without a shared write per I/O
//!
//! A bucket shared by every shard (the global ingress/egress buckets) would be one contended
//! cache line if every I/O consumed from it. A [`Lease`] is one owner's (one thread's) stash of
//! tokens taken from a shared bucket in chunks ([`Lease::pace`]): most I/Os are paid from the
//! stash with plain arithmetic on owner-local memory, and the bucket is touched once per chunk.
//! Chunks adapt to the owner's traffic: the first is just the request, each renewal doubles it
//! (up to the caller's maximum), each expiry with credit left halves it — so a busy owner renews
//! rarely and an idle one never sits on more than about what it last spent.
//! The bucket's accounting stays exact — leased tokens are consumed from it when taken — and the
//! pacing wait of a chunk is served by the I/Os that spend it (the lease is *ready* only when the
//! bucket's debt for it is repaid). Unspent tokens are refunded when the lease expires
//! (`ttl_ns` after it became ready), so an idle owner does not sit on the shared rate, and
//! spending is never more than `ttl_ns` late: over any window the bytes spent exceed the plain
//! bucket's bound by at most `rate · ttl` (plus one chunk per owner). A refund only happens while
//! the bucket's schedule still holds the chunk (`now` before the TAT the chunk produced):
//! afterwards the bucket may have been full in between — it has forgotten those tokens, and
//! giving them back would credit the present with unused past capacity.
//!
//! # Concurrency proof
//!
//! The loom models at the end of this file (`loom_models`, built with `--cfg loom`, run by
//! `.ci/loom`) explore every interleaving, up to two preemptions, of two consumers and a thread
//! advancing the clock: `try_consume` and `consume_paced` never let more than
//! `burst + rate · elapsed` through, and per-thread [`Lease`]s of one shared bucket never
//! overspend and, once released, leave it charged exactly the bytes spent.

use std::time::Duration;

use self::sync::{AtomicU64, Ordering};

/// The atomics the buckets are built on: `std`'s, or loom's in the loom model build
/// (`cfg(all(loom, test))`: the harness crate `tests/loom`, run by `.ci/loom`, compiles this
/// file alone with `--cfg loom`; see `loom_models` at the end of this file).
mod sync {
    #[cfg(all(loom, test))]
    pub(super) use loom::sync::atomic::{AtomicU64, Ordering};
    #[cfg(not(all(loom, test)))]
    pub(super) use std::sync::atomic::{AtomicU64, Ordering};
}

const NANOS_PER_SEC: u64 = 1_000_000_000;
/// Fixed-point shift of the per-byte cost (32.32 nanoseconds per byte).
const FP_SHIFT: u32 = 32;

/// A lock-free token bucket (bytes per second). `now_ns` is monotonic nanoseconds from any
/// fixed origin chosen by the caller; the bucket never reads a clock.
#[derive(Debug)]
pub struct TokenBucket {
    /// Theoretical arrival time, ns.
    tat: AtomicU64,
    /// Cost of one byte in ns, 32.32 fixed point; 0 = disabled.
    ns_per_byte_fp: AtomicU64,
    /// Burst tolerance in ns (`burst / rate`).
    tau_ns: AtomicU64,
    /// Configured rate (bytes/s), for introspection.
    rate: AtomicU64,
    /// Configured burst (bytes), for introspection.
    burst: AtomicU64,
}

fn ns_per_byte_fp(rate: u64) -> u64 {
    if rate == 0 {
        0
    } else {
        // ≥ 1 for any rate ≤ 2^62; clamp so a huge rate is "very cheap" rather than disabled.
        ((u128::from(NANOS_PER_SEC) << FP_SHIFT) / u128::from(rate)).max(1) as u64
    }
}

#[inline]
fn cost_ns(n: u64, fp: u64) -> u64 {
    let c = (u128::from(n) * u128::from(fp)) >> FP_SHIFT;
    u64::try_from(c).unwrap_or(u64::MAX)
}

impl TokenBucket {
    /// A bucket refilling at `rate` bytes/s holding at most `burst` bytes. `rate == 0` disables
    /// it (every request passes). It starts full.
    pub fn new(rate: u64, burst: u64) -> Self {
        let b = Self {
            tat: AtomicU64::new(0),
            ns_per_byte_fp: AtomicU64::new(0),
            tau_ns: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            burst: AtomicU64::new(0),
        };
        b.set_rate(rate, burst);
        b
    }

    /// A disabled bucket (rate 0).
    pub fn disabled() -> Self {
        Self::new(0, 0)
    }

    /// Changes rate and burst (live reload). Outstanding debt is kept (it is measured in time).
    /// `rate == 0` disables the bucket.
    pub fn set_rate(&self, rate: u64, burst: u64) {
        let fp = ns_per_byte_fp(rate);
        self.tau_ns.store(cost_ns(burst, fp), Ordering::Relaxed);
        self.rate.store(rate, Ordering::Relaxed);
        self.burst.store(burst, Ordering::Relaxed);
        self.ns_per_byte_fp.store(fp, Ordering::Release);
    }

    /// The configured rate (bytes/s; 0 = disabled).
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// The configured burst (bytes).
    pub fn burst(&self) -> u64 {
        self.burst.load(Ordering::Relaxed)
    }

    /// True if the bucket limits anything (rate > 0).
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.ns_per_byte_fp.load(Ordering::Relaxed) != 0
    }

    /// Takes `n` tokens if available. Never blocks. When refusing, consumes nothing.
    /// A request larger than the burst passes only when the bucket is full (see module docs).
    #[inline]
    pub fn try_consume(&self, n: u64, now_ns: u64) -> bool {
        let fp = self.ns_per_byte_fp.load(Ordering::Relaxed);
        if fp == 0 {
            return true;
        }
        let cost = cost_ns(n, fp);
        let tau = self.tau_ns.load(Ordering::Relaxed);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now_ns);
            let new_tat = start.saturating_add(cost);
            let full = tat <= now_ns;
            if !full && new_tat - now_ns > tau {
                return false;
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(cur) => tat = cur,
            }
        }
    }

    /// Takes `n` tokens, going into debt if needed, and returns how long the caller must wait
    /// before acting so that the long-run rate holds (zero if none). Used for pacing.
    #[inline]
    pub fn consume_paced(&self, n: u64, now_ns: u64) -> Duration {
        self.consume_paced_tat(n, now_ns).0
    }

    /// [`consume_paced`](Self::consume_paced), also returning the TAT right after this consume
    /// (0 if disabled).
    #[inline]
    fn consume_paced_tat(&self, n: u64, now_ns: u64) -> (Duration, u64) {
        let fp = self.ns_per_byte_fp.load(Ordering::Relaxed);
        if fp == 0 {
            return (Duration::ZERO, 0);
        }
        let cost = cost_ns(n, fp);
        let tau = self.tau_ns.load(Ordering::Relaxed);
        let prev = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |tat| {
                Some(tat.max(now_ns).saturating_add(cost))
            })
            // The closure always returns Some.
            .unwrap_or_else(|v| v);
        let new_tat = prev.max(now_ns).saturating_add(cost);
        (
            Duration::from_nanos((new_tat - now_ns).saturating_sub(tau)),
            new_tat,
        )
    }

    /// True if `n` tokens could be taken now (same rule as [`try_consume`](Self::try_consume)),
    /// without taking them.
    #[inline]
    pub fn can_consume(&self, n: u64, now_ns: u64) -> bool {
        let fp = self.ns_per_byte_fp.load(Ordering::Relaxed);
        if fp == 0 {
            return true;
        }
        let tat = self.tat.load(Ordering::Relaxed);
        if tat <= now_ns {
            return true;
        }
        tat.saturating_add(cost_ns(n, fp)) - now_ns <= self.tau_ns.load(Ordering::Relaxed)
    }

    /// Gives back `n` tokens taken by an earlier successful consume (used to undo a partial
    /// multi-bucket admission). Never credits beyond a full bucket.
    pub fn refund(&self, n: u64) {
        let fp = self.ns_per_byte_fp.load(Ordering::Relaxed);
        if fp == 0 {
            return;
        }
        let cost = cost_ns(n, fp);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |tat| {
                Some(tat.saturating_sub(cost))
            });
    }

    /// How far the bucket is in debt beyond its burst at `now_ns` (zero if it can admit a
    /// request right now). Admission control refuses new work from a bucket with debt.
    #[inline]
    pub fn debt(&self, now_ns: u64) -> Duration {
        let fp = self.ns_per_byte_fp.load(Ordering::Relaxed);
        if fp == 0 {
            return Duration::ZERO;
        }
        let tat = self.tat.load(Ordering::Relaxed);
        let ahead = tat.saturating_sub(now_ns);
        Duration::from_nanos(ahead.saturating_sub(self.tau_ns.load(Ordering::Relaxed)))
    }

    /// Tokens (bytes) available at `now_ns` (saturates at the burst); `u64::MAX` if disabled.
    pub fn available(&self, now_ns: u64) -> u64 {
        let fp = self.ns_per_byte_fp.load(Ordering::Relaxed);
        if fp == 0 {
            return u64::MAX;
        }
        let tau = self.tau_ns.load(Ordering::Relaxed);
        let ahead = self.tat.load(Ordering::Relaxed).saturating_sub(now_ns);
        let credit_ns = tau.saturating_sub(ahead);
        let bytes = (u128::from(credit_ns) << FP_SHIFT) / u128::from(fp);
        u64::try_from(bytes)
            .unwrap_or(u64::MAX)
            .min(self.burst.load(Ordering::Relaxed))
    }
}

/// One owner's stash of tokens taken from a shared [`TokenBucket`] in chunks (see module docs).
/// Plain data, no atomics: keep one per thread (or shard) and bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// Leased bytes not yet spent.
    credit: u64,
    /// When the leased bytes may go out (the bucket's debt for them repaid), ns.
    ready_ns: u64,
    /// After this instant unspent credit is refunded, ns.
    expires_ns: u64,
    /// Size of the next chunk before clamping to the caller's maximum (adaptive).
    chunk: u64,
    /// The bucket's TAT right after the last chunk was taken: until then the bucket's schedule
    /// still holds the unspent credit, so it can be refunded.
    tat_ns: u64,
}

impl Lease {
    /// An empty lease.
    pub const fn new() -> Self {
        Self {
            credit: 0,
            ready_ns: 0,
            expires_ns: 0,
            chunk: 0,
            tat_ns: 0,
        }
    }

    /// Leased bytes not yet spent.
    pub fn credit(&self) -> u64 {
        self.credit
    }

    /// [`TokenBucket::consume_paced`] through the lease: spends `n` bytes from the stash when
    /// it holds them (no access to `bucket`), otherwise takes `max(missing, chunk)` bytes from
    /// `bucket` in one paced consume, where `chunk` adapts between the request size and
    /// `max_chunk` (see module docs). Returns how long the caller must wait before acting: the
    /// time until the spent bytes are ready. Refunds expired credit first.
    #[inline]
    pub fn pace(
        &mut self,
        bucket: &TokenBucket,
        n: u64,
        now_ns: u64,
        max_chunk: u64,
        ttl_ns: u64,
    ) -> Duration {
        if self.credit > 0 && now_ns > self.expires_ns {
            self.refund(bucket, now_ns);
            self.chunk /= 2;
        }
        if self.credit < n {
            let take = (n - self.credit).max(self.chunk.min(max_chunk));
            self.chunk = take.saturating_mul(2).min(max_chunk);
            let (wait, tat) = bucket.consume_paced_tat(take, now_ns);
            self.tat_ns = tat;
            let ready = now_ns.saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX));
            self.credit += take;
            self.ready_ns = self.ready_ns.max(ready);
            self.expires_ns = self.ready_ns.saturating_add(ttl_ns);
        }
        self.credit -= n;
        Duration::from_nanos(self.ready_ns.saturating_sub(now_ns))
    }

    /// True if `n` bytes can be spent from the stash right now (ready, not expired).
    #[inline]
    pub fn can_spend(&self, n: u64, now_ns: u64) -> bool {
        self.credit >= n && self.ready_ns <= now_ns && now_ns <= self.expires_ns
    }

    /// Spends `n` bytes from the stash if [`can_spend`](Self::can_spend); never touches the
    /// bucket.
    #[inline]
    pub fn try_spend(&mut self, n: u64, now_ns: u64) -> bool {
        let ok = self.can_spend(n, now_ns);
        if ok {
            self.credit -= n;
        }
        ok
    }

    /// Gives unspent credit back to `bucket` (if its schedule still holds it at `now_ns`, see
    /// module docs) and empties the lease.
    pub fn release(&mut self, bucket: &TokenBucket, now_ns: u64) {
        self.refund(bucket, now_ns);
        *self = Self::new();
    }

    fn refund(&mut self, bucket: &TokenBucket, now_ns: u64) {
        if self.credit > 0 && now_ns < self.tat_ns {
            bucket.refund(self.credit);
        }
        self.credit = 0;
    }
}

/// The burst this crate uses for a rate: `max(rate / 10, max_frame_bytes)` — 100 ms worth of
/// traffic, but never less than one maximum frame so a full frame never waits on a full bucket.
pub fn default_burst(rate: u64, max_frame_bytes: u64) -> u64 {
    (rate / 10).max(max_frame_bytes)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const S: u64 = NANOS_PER_SEC;

    #[test]
    fn disabled_passes_everything() {
        let b = TokenBucket::new(0, 0);
        assert!(!b.is_enabled());
        assert!(b.try_consume(u64::MAX, 0));
        assert_eq!(b.consume_paced(u64::MAX, 0), Duration::ZERO);
        assert_eq!(b.debt(0), Duration::ZERO);
    }

    #[test]
    fn burst_then_refill() {
        let b = TokenBucket::new(1000, 100);
        assert!(b.try_consume(60, S));
        assert!(b.try_consume(40, S));
        assert!(!b.try_consume(1, S), "burst spent");
        assert_eq!(b.available(S), 0);
        // 50 ms refills 50 bytes.
        assert!(!b.try_consume(51, S + S / 20));
        assert!(b.try_consume(50, S + S / 20));
        // A long pause refills only up to the burst.
        assert_eq!(b.available(10 * S), 100);
        assert!(
            b.try_consume(101, 10 * S),
            "full bucket admits one oversized request"
        );
        assert_eq!(b.debt(10 * S), Duration::from_millis(1));
    }

    #[test]
    fn oversized_request_passes_once_when_full() {
        let b = TokenBucket::new(1000, 100);
        assert!(
            b.try_consume(500, S),
            "bucket full: a big request passes once"
        );
        assert!(!b.try_consume(1, S), "then the bucket is in debt");
        assert_eq!(b.debt(S), Duration::from_millis(400));
        // After 400 ms the debt beyond the burst is repaid; the burst refills 100 ms later.
        assert!(!b.try_consume(1, S + 400 * S / 1000));
        assert!(b.try_consume(100, S + 500 * S / 1000));
    }

    #[test]
    fn refusal_consumes_nothing() {
        let b = TokenBucket::new(1000, 100);
        assert!(b.try_consume(100, S));
        for _ in 0..100 {
            assert!(!b.try_consume(10, S));
        }
        assert!(b.try_consume(10, S + 10 * S / 1000));
    }

    #[test]
    fn paced_wait_matches_rate() {
        let b = TokenBucket::new(1000, 100);
        assert_eq!(b.consume_paced(100, S), Duration::ZERO);
        assert_eq!(b.consume_paced(100, S), Duration::from_millis(100));
        assert_eq!(b.consume_paced(100, S), Duration::from_millis(200));
        assert!(!b.can_consume(1, S));
        b.refund(300);
        assert!(b.can_consume(100, S));
    }

    #[test]
    fn set_rate_live() {
        let b = TokenBucket::new(1000, 100);
        assert!(b.try_consume(100, S));
        assert!(!b.try_consume(100, S));
        b.set_rate(0, 0);
        assert!(b.try_consume(100, S));
        b.set_rate(1_000_000, 1000);
        assert_eq!(b.rate(), 1_000_000);
        assert_eq!(b.burst(), 1000);
        assert!(b.try_consume(1000, S + S / 10));
    }

    #[test]
    fn default_burst_rule() {
        assert_eq!(default_burst(8 << 20, 1 << 20), 1 << 20);
        assert_eq!(default_burst(100 << 20, 1 << 20), 10 << 20);
    }

    #[test]
    fn lease_spends_locally_then_renews() {
        let b = TokenBucket::new(1000, 100);
        let mut l = Lease::new();
        // Chunks grow 10 → 20 → 40 (the maximum): the first takes exactly the request.
        assert_eq!(l.pace(&b, 10, S, 40, S), Duration::ZERO);
        assert_eq!((l.credit(), b.available(S)), (0, 90));
        assert_eq!(l.pace(&b, 10, S, 40, S), Duration::ZERO);
        assert_eq!((l.credit(), b.available(S)), (10, 70));
        assert_eq!(l.pace(&b, 10, S, 40, S), Duration::ZERO);
        assert_eq!((l.credit(), b.available(S)), (0, 70), "paid from the stash");
        assert_eq!(l.pace(&b, 10, S, 40, S), Duration::ZERO);
        assert_eq!((l.credit(), b.available(S)), (30, 30));
        for _ in 0..3 {
            assert_eq!(l.pace(&b, 10, S, 40, S), Duration::ZERO);
        }
        // The next chunk (40) overruns the 30 bytes left of the burst by 10 ms, a wait every
        // spender of that chunk observes.
        assert_eq!(l.pace(&b, 20, S, 40, S), Duration::from_millis(10));
        assert_eq!(l.pace(&b, 10, S, 40, S), Duration::from_millis(10));
        assert!(!l.can_spend(10, S), "not ready yet");
        assert!(l.can_spend(10, S + S / 100));
        assert!(l.try_spend(10, S + S / 100));
        assert!(!l.try_spend(1, S + S / 100));
    }

    #[test]
    fn lease_refunds_expired_credit() {
        let b = TokenBucket::new(1000, 100);
        let mut l = Lease::new();
        l.pace(&b, 10, S, 80, S / 100); // takes 10, next chunk 20
        l.pace(&b, 10, S, 80, S / 100); // takes 20, next chunk 40
        l.pace(&b, 20, S, 80, S / 100); // takes 40, next chunk 80
        assert_eq!((l.credit(), b.available(S)), (30, 30));
        // 5 ms later the credit is still usable; 20 ms later it has expired.
        assert!(l.can_spend(30, S + S / 200));
        assert!(!l.can_spend(1, S + S / 50));
        // The expired 30 bytes go back and the chunk halves (80 → 40).
        let t = S + S / 50;
        l.pace(&b, 10, t, 80, S / 100);
        assert_eq!(l.credit(), 30);
        l.release(&b, t);
        assert_eq!(l, Lease::new());
        assert_eq!(b.available(t), 70, "only the 50 bytes spent stay charged");
    }
}

/// loom models of the buckets under concurrent consumers (spec/CONCURRENCY.md §10): every
/// interleaving of a few threads, up to a preemption bound, on a clock the model controls.
/// Built only with `--cfg loom` in test mode, where [`sync`] hands out loom's atomics; run by
/// `.ci/loom` (the harness crate `tests/loom/` includes this file).
///
/// Rates are chosen so that one byte costs a whole number of nanoseconds (1 MB/s = 1000 ns per
/// byte): the bounds below are then exact, with no rounding slack.
#[cfg(all(test, loom))]
mod loom_models {
    use loom::sync::atomic::{AtomicU64, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    use super::{Lease, TokenBucket, NANOS_PER_SEC};

    /// 1 MB/s: 1000 ns per byte.
    const RATE: u64 = 1_000_000;
    const BURST: u64 = 100;
    /// Start of the model clock (any non-zero instant).
    const T0: u64 = 1_000_000;
    /// One clock step: 50 bytes' worth of refill.
    const STEP_NS: u64 = 50_000;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        if b.preemption_bound.is_none() {
            // LOOM_MAX_PREEMPTIONS overrides; 2 explores every schedule with up to two
            // preemptions, which is where lost updates and torn read-modify-writes show.
            b.preemption_bound = Some(2);
        }
        b.check(f);
    }

    /// Bytes a bucket of `RATE`/`BURST` may have let through by instant `t` (≥ `T0`).
    fn allowance(t: u64) -> u64 {
        BURST + RATE * (t - T0) / NANOS_PER_SEC
    }

    /// Two consumers `try_consume` while a third thread advances the clock: the bytes granted
    /// never exceed `burst + rate · elapsed`, whatever the interleaving (including consumers
    /// that read the clock, get preempted, and consume with a stale `now`).
    #[test]
    fn try_consume_never_overspends() {
        model(|| {
            let bucket = Arc::new(TokenBucket::new(RATE, BURST));
            let clock = Arc::new(AtomicU64::new(T0));
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let (bucket, clock) = (bucket.clone(), clock.clone());
                    thread::spawn(move || {
                        let mut granted = 0;
                        for _ in 0..2 {
                            let now = clock.load(Ordering::SeqCst);
                            if bucket.try_consume(40, now) {
                                granted += 40;
                            }
                        }
                        granted
                    })
                })
                .collect();
            let ticker = {
                let clock = clock.clone();
                thread::spawn(move || {
                    clock.fetch_add(STEP_NS, Ordering::SeqCst);
                })
            };
            let granted: u64 = consumers.into_iter().map(|h| h.join().unwrap()).sum();
            ticker.join().unwrap();
            let end = clock.load(Ordering::SeqCst);
            assert!(
                granted <= allowance(end),
                "granted {granted} > {}",
                allowance(end)
            );
            // The full burst is always grantable at the start: at least two requests pass.
            assert!(granted >= 80, "granted only {granted}");
        });
    }

    /// Two consumers pace through `consume_paced` (always consume, return a wait) while the
    /// clock advances: the bytes whose wait has elapsed by any instant `r` never exceed
    /// `burst + rate · (r - T0)` — pacing never lets more through than the rate.
    #[test]
    fn consume_paced_never_overspends() {
        model(|| {
            let bucket = Arc::new(TokenBucket::new(RATE, BURST));
            let clock = Arc::new(AtomicU64::new(T0));
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let (bucket, clock) = (bucket.clone(), clock.clone());
                    thread::spawn(move || {
                        let mut spends = Vec::new();
                        for _ in 0..2 {
                            let now = clock.load(Ordering::SeqCst);
                            let wait = bucket.consume_paced(60, now);
                            spends.push((60, now + wait.as_nanos() as u64));
                        }
                        spends
                    })
                })
                .collect();
            let ticker = {
                let clock = clock.clone();
                thread::spawn(move || {
                    clock.fetch_add(STEP_NS, Ordering::SeqCst);
                })
            };
            let spends: Vec<(u64, u64)> = consumers
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect();
            ticker.join().unwrap();
            check_spends(&spends);
            // Everything consumed is charged: 240 bytes from T0 at the earliest.
            let tat = bucket.tat.load(Ordering::SeqCst);
            assert!(tat >= T0 + 240 * 1000, "tat {tat}");
        });
    }

    /// Two threads, each with its own [`Lease`] of one shared bucket (the policy's per-thread
    /// leases of the global buckets), spend through the lease and then release it: bytes
    /// ready by any instant stay within `burst + rate · elapsed`, and after the releases the
    /// bucket is charged exactly the bytes spent (unspent credit refunded, nothing lost or
    /// refunded twice), on a fixed clock.
    #[test]
    fn leases_never_overspend_and_refund_exactly() {
        model(|| {
            let bucket = Arc::new(TokenBucket::new(RATE, BURST));
            let owners: Vec<_> = (0..2)
                .map(|_| {
                    let bucket = bucket.clone();
                    thread::spawn(move || {
                        let mut lease = Lease::new();
                        let mut spends = Vec::new();
                        for _ in 0..2 {
                            let wait = lease.pace(&bucket, 30, T0, 40, NANOS_PER_SEC);
                            spends.push((30, T0 + wait.as_nanos() as u64));
                        }
                        lease.release(&bucket, T0);
                        assert_eq!(lease, Lease::new());
                        spends
                    })
                })
                .collect();
            let spends: Vec<(u64, u64)> =
                owners.into_iter().flat_map(|h| h.join().unwrap()).collect();
            check_spends(&spends);
            let spent: u64 = spends.iter().map(|s| s.0).sum();
            assert_eq!(
                bucket.tat.load(Ordering::SeqCst),
                T0 + spent * 1000,
                "charged exactly what was spent"
            );
        });
    }

    /// For every instant `r` at which some spend became ready: the bytes ready by `r` are
    /// within the allowance at `r`.
    fn check_spends(spends: &[(u64, u64)]) {
        for &(_, r) in spends {
            let ready: u64 = spends.iter().filter(|s| s.1 <= r).map(|s| s.0).sum();
            assert!(
                ready <= allowance(r),
                "{ready} bytes ready by {r} > {} ({spends:?})",
                allowance(r)
            );
        }
    }
}
