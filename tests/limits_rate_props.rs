//! Property tests for the GCRA token bucket (spec/TESTS.md §1.3): never overspends over any
//! window, paces 10× offered load to the configured rate (±20 %), time-scaling linearity; and the
//! same for several owners paying one bucket through [`Lease`]s (the per-thread leases of the
//! global buckets).

use std::time::Duration;

use proptest::prelude::*;
use ron_transport::rate::{default_burst, Lease, TokenBucket};

const S: u64 = 1_000_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Over every window of simulated time, admitted bytes ≤ rate·t + burst + one max request
    /// (+ 1 byte per request of fixed-point rounding slack).
    #[test]
    fn never_overspends(
        rate in 1u64..=1_000_000_000,
        burst in 0u64..2_000_000,
        reqs in prop::collection::vec((0u64..50_000_000, 1u64..100_000), 1..150),
    ) {
        let b = TokenBucket::new(rate, burst);
        let mut now = S;
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        let max_req = reqs.iter().map(|r| r.1).max().unwrap_or(0);
        for &(dt, n) in &reqs {
            now += dt;
            if b.try_consume(n, now) {
                admitted.push((now, n));
            }
        }
        for i in 0..admitted.len() {
            let mut sum = 0u128;
            for (j, &(t, n)) in admitted.iter().enumerate().skip(i) {
                sum += u128::from(n);
                let window = u128::from(t - admitted[i].0);
                let bound = u128::from(rate) * window / u128::from(S)
                    + u128::from(burst)
                    + u128::from(max_req)
                    + (j - i + 1) as u128;
                prop_assert!(sum <= bound, "window {i}..={j}: {sum} > {bound}");
            }
        }
    }

    /// Refusals never consume: after a refusal, the same request at the same instant is
    /// refused again, and `available` is unchanged.
    #[test]
    fn refusal_is_free(rate in 1u64..1_000_000, burst in 1u64..100_000, n in 1u64..200_000) {
        let b = TokenBucket::new(rate, burst);
        let t = 5 * S;
        prop_assert!(b.try_consume(burst, t));
        let avail = b.available(t);
        if !b.try_consume(n, t) {
            prop_assert_eq!(b.available(t), avail);
            prop_assert!(!b.try_consume(n, t));
        }
    }

    /// A sender offering 10× the rate and obeying `consume_paced` achieves the configured rate
    /// within ±20 % over a simulated clock.
    #[test]
    fn pacing_within_20_percent(
        rate in 16_384u64..=200_000_000,
        chunk in 1024u64..=65_536,
        max_frame in 65_536u64..=1_048_576,
    ) {
        let burst = default_burst(rate, max_frame);
        let b = TokenBucket::new(rate, burst);
        // Long enough that the burst is ≤ 5 % of the bytes moved.
        let dur = (10 * S).max(20 * burst * S / rate);
        // Bound the iteration count: grow the chunk for fast rates.
        let chunk = chunk.max(rate * (dur / S) / 20_000);
        let offered_ns_per_chunk = chunk * S / (10 * rate);
        let start = S;
        let mut now = start;
        let mut sent = 0u64;
        while now - start < dur {
            let wait = b.consume_paced(chunk, now);
            sent += chunk;
            now += (wait.as_nanos() as u64).max(offered_ns_per_chunk.max(1));
        }
        let achieved = sent as f64 / ((now - start) as f64 / S as f64);
        let ratio = achieved / rate as f64;
        prop_assert!((0.8..=1.2).contains(&ratio), "achieved {achieved} for rate {rate}: {ratio}");
    }

    /// Time-scaling linearity: waiting k× as long refills k× as many bytes (up to the burst).
    #[test]
    fn refill_is_linear(rate in 1_000u64..10_000_000, k in 1u64..10) {
        let burst = rate; // one second of credit
        let b = TokenBucket::new(rate, burst);
        let t0 = S;
        prop_assert_eq!(b.consume_paced(burst, t0), Duration::ZERO);
        let step = S / 20;
        let avail = b.available(t0 + k * step);
        let expect = rate * k / 20;
        prop_assert!(avail.abs_diff(expect) <= 1 + expect / 1_000_000, "{avail} vs {expect}");
    }
}

/// Lease parameters as the policy uses them: 1 ms of traffic (≤ burst / 4), 10 ms TTL.
fn lease_chunk(rate: u64, burst: u64) -> u64 {
    (rate / 1000).min(burst / 4).max(1)
}
const TTL: u64 = 10_000_000;

/// `owners` senders, each paying one shared bucket through its own lease and offering 10× the
/// rate together, on a simulated clock. Returns (emission time, bytes) per send and the end.
fn leased_run(rate: u64, burst: u64, io: u64, owners: usize, dur: u64) -> (Vec<(u64, u64)>, u64) {
    let b = TokenBucket::new(rate, burst);
    let chunk = lease_chunk(rate, burst);
    let mut leases = vec![Lease::new(); owners];
    let gap = (io * S * owners as u64 / (10 * rate)).max(1);
    let start = S;
    // Owners start staggered so their calls interleave.
    let mut ready: Vec<u64> = (0..owners as u64)
        .map(|i| start + i * gap / owners as u64)
        .collect();
    let mut emitted = Vec::new();
    loop {
        let (i, &now) = ready.iter().enumerate().min_by_key(|(_, t)| **t).unwrap();
        if now - start >= dur {
            break;
        }
        let wait = leases[i].pace(&b, io, now, chunk, TTL).as_nanos() as u64;
        emitted.push((now + wait, io));
        ready[i] = now + wait.max(gap);
    }
    (emitted, start + dur)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Several owners pacing through leases achieve the configured rate within ±20 %, and over
    /// every window the bytes they emit stay within the plain bucket's bound plus
    /// `rate · TTL` (late spending) and one chunk per owner (refunded credit).
    #[test]
    fn leased_pacing_within_20_percent_and_bounded(
        rate in 65_536u64..=200_000_000,
        io in 1024u64..=65_536,
        max_frame in 65_536u64..=1_048_576,
        owners in 1usize..=8,
    ) {
        let burst = default_burst(rate, max_frame);
        let dur = (10 * S).max(20 * burst * S / rate);
        let io = io.max(rate * (dur / S) / 20_000);
        let (mut emitted, end) = leased_run(rate, burst, io, owners, dur);
        let sent: u64 = emitted.iter().map(|e| e.1).sum();
        let last = emitted.iter().map(|e| e.0).max().unwrap().max(end);
        let achieved = sent as f64 / ((last - S) as f64 / S as f64);
        let ratio = achieved / rate as f64;
        prop_assert!((0.8..=1.2).contains(&ratio), "achieved {achieved} for rate {rate}: {ratio}");

        // Window bound, O(n): for each j, max over i ≤ j of bytes(i..=j) − rate·(t_j − t_i).
        emitted.sort_unstable();
        let chunk = lease_chunk(rate, burst);
        let slack = burst as f64
            + (rate as f64 * TTL as f64 / S as f64)
            + ((owners as u64 + 1) * chunk.max(io)) as f64
            + emitted.len() as f64; // fixed-point rounding, 1 byte per request
        let mut best = f64::NEG_INFINITY; // max_i (rate·t_i − S_{i−1})
        let mut prefix = 0f64;
        for &(t, n) in &emitted {
            let tr = rate as f64 * t as f64 / S as f64;
            best = best.max(tr - prefix);
            prefix += n as f64;
            let excess = prefix - tr + best;
            prop_assert!(excess <= slack, "window excess {excess} > {slack}");
        }
    }
}

/// Owners that go idle lose no capacity and credit none that the bucket had forgotten: in the
/// end the shared bucket is charged exactly the bytes spent in its current schedule.
#[test]
fn idle_leases_give_credit_back() {
    let (rate, burst) = (1_000_000u64, 100_000u64);
    let b = TokenBucket::new(rate, burst);
    let chunk = lease_chunk(rate, burst); // 1000
    let mut leases = [Lease::new(); 4];
    let mut spent = 0;
    for (i, l) in leases.iter_mut().enumerate() {
        for _ in 0..=i * 8 {
            assert_eq!(l.pace(&b, 100, S, chunk, TTL), Duration::ZERO);
            spent += 100;
        }
    }
    let leased: u64 = leases.iter().map(Lease::credit).sum();
    assert!(leased > 0);
    assert_eq!(b.available(S), burst - spent - leased);
    // 20 ms later, past the TTL: the bucket has been full since, so the stale credit is
    // dropped (not refunded); the fresh chunks taken now are refunded on release.
    let later = S + 2 * TTL;
    for l in &mut leases {
        l.pace(&b, 100, later, chunk, TTL);
        spent += 100;
        l.release(&b, later);
    }
    // Only the 4 × 100 bytes spent at `later` are still charged.
    assert_eq!(b.available(later), burst - 400);
    assert_eq!(spent, 5_600);
}

/// Under contention (4 threads hammering one bucket at a frozen instant), the CAS loop never
/// admits more than the burst.
#[test]
fn concurrent_never_overspends() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let b = Arc::new(TokenBucket::new(1_000_000, 100_000));
    let t = 7 * S;
    assert!(b.try_consume(1, t)); // leave the "full" state: no oversized pass-through
    let admitted = Arc::new(AtomicU64::new(1));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (b, admitted) = (b.clone(), admitted.clone());
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    if b.try_consume(7, t) {
                        admitted.fetch_add(7, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let total = admitted.load(Ordering::Relaxed);
    assert!(total <= 100_000, "{total}");
    assert!(total > 100_000 - 7, "the burst was usable: {total}");
}
