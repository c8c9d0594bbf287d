//! Prometheus metrics: exactly the 14 metrics of spec/OBSERVABILITY.md §8 plus
//! `pq_handshake_total` of spec/QUANTUM.md §7, with their fixed labels and buckets, registered
//! once into one [`prometheus::Registry`] per [`TransportMetrics`].
//!
//! Hot paths never look labels up: [`TransportMetrics::backend`] hands out pre-resolved handles
//! per backend label. [`TransportMetrics::render`] produces the text exposition for a consumer's
//! `/metrics`. This module is the only place that registers metrics.
//!
//! # Per-thread I/O accounting
//!
//! The four metrics updated on every I/O (`bytes_in_total`, `bytes_out_total`,
//! `io_read_size_bytes`, `io_write_size_bytes`) are not shared atomics: each thread (shard)
//! counts into its own cache-line-aligned cell ([`LocalCounter`], [`LocalHistogram`]) with a
//! plain relaxed load + store, and a custom [`Collector`] folds every cell into the same
//! families at scrape time. Cells of exited threads are folded into retired totals first, so no
//! count is lost. See `docs/metrics.md` ("Hot-path accounting").

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::Backend;
use crate::error::RejectReason;

/// `handshake_latency_seconds` buckets (spec/IDB I-15). Fixed; not configurable.
pub const HANDSHAKE_BUCKETS: [f64; 8] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0];

/// `io_read_size_bytes` / `io_write_size_bytes` buckets: powers of two, 1 KiB … 1 MiB.
pub const IO_SIZE_BUCKETS: [f64; 11] = [
    1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 131072.0, 262144.0, 524288.0,
    1048576.0,
];

/// The `backend` label values, indexed by `Backend as usize`.
const BACKEND_LABELS: [&str; 4] = [
    Backend::Tcp.as_str(),
    Backend::Tls.as_str(),
    Backend::Arti.as_str(),
    Backend::Quic.as_str(),
];

/// The metric names this crate registers, in registration order (stability-tested).
pub const METRIC_NAMES: [&str; 15] = [
    "transport_dials_total",
    "transport_accepts_total",
    "handshake_latency_seconds",
    "conn_inflight",
    "bytes_in_total",
    "bytes_out_total",
    "io_read_size_bytes",
    "io_write_size_bytes",
    "rejected_total",
    "tls_handshake_failures_total",
    "queue_depth",
    "queue_dropped_total",
    "tasks_spawned_total",
    "tasks_aborted_total",
    "pq_handshake_total",
];

/// The key-exchange posture of a handshake, the `pq` label (spec/QUANTUM.md §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PqLabel {
    /// Classical key exchange (or no TLS).
    Off,
    /// A hybrid post-quantum group (X25519MLKEM768) was negotiated.
    Hybrid,
}

impl PqLabel {
    /// `"off"` or `"hybrid"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Hybrid => "hybrid",
        }
    }
}

/// Bounded queue names for `queue_depth{queue}` / `queue_dropped_total{queue}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueName {
    /// The per-connection writer inbox (capacity 256).
    WriterInbox,
    /// Cross-shard work queues.
    Work,
    /// Event fan-out queues.
    Events,
}

impl QueueName {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::WriterInbox => "writer_inbox",
            Self::Work => "work",
            Self::Events => "events",
        }
    }
}

/// Per-connection task kinds for `tasks_spawned_total{kind}` / `tasks_aborted_total{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// The reading half.
    Reader,
    /// The single writer.
    Writer,
}

impl TaskKind {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Writer => "writer",
        }
    }
}

/// Pre-resolved handles for one `backend` label value. Cheap to clone (all `Arc`s inside).
///
/// `bytes_in`, `bytes_out`, `io_read_size` and `io_write_size` are per-thread
/// ([`LocalCounter`], [`LocalHistogram`]): updating them touches no shared cache line.
#[derive(Clone, Debug)]
pub struct BackendMetrics {
    /// `transport_dials_total{backend,result="ok"}`.
    pub dials_ok: IntCounter,
    /// `transport_dials_total{backend,result="err"}`.
    pub dials_err: IntCounter,
    /// `transport_accepts_total{backend}`.
    pub accepts: IntCounter,
    /// `handshake_latency_seconds{backend,pq="off"}`.
    pub handshake_off: Histogram,
    /// `handshake_latency_seconds{backend,pq="hybrid"}`.
    pub handshake_hybrid: Histogram,
    /// `conn_inflight{backend}`.
    pub conn_inflight: IntGauge,
    /// `bytes_in_total{backend}` (per-thread cells).
    pub bytes_in: LocalCounter,
    /// `bytes_out_total{backend}` (per-thread cells).
    pub bytes_out: LocalCounter,
    /// `io_read_size_bytes{backend}` (per-thread cells).
    pub io_read_size: LocalHistogram,
    /// `io_write_size_bytes{backend}` (per-thread cells).
    pub io_write_size: LocalHistogram,
    /// `tls_handshake_failures_total{backend}`.
    pub tls_failures: IntCounter,
}

impl BackendMetrics {
    /// The handshake histogram for a `pq` label.
    pub fn handshake(&self, pq: PqLabel) -> &Histogram {
        match pq {
            PqLabel::Off => &self.handshake_off,
            PqLabel::Hybrid => &self.handshake_hybrid,
        }
    }
}

/// All metrics of one transport instance, registered once into its own registry.
#[derive(Debug)]
pub struct TransportMetrics {
    registry: Registry,
    /// `transport_dials_total{backend,result}`.
    pub dials: IntCounterVec,
    /// `transport_accepts_total{backend}`.
    pub accepts: IntCounterVec,
    /// `handshake_latency_seconds{backend,pq}`.
    pub handshake_latency: HistogramVec,
    /// `conn_inflight{backend}`.
    pub conn_inflight: IntGaugeVec,
    /// `bytes_in_total{backend}` (per-thread cells, folded at scrape time).
    pub bytes_in: LocalCounterVec,
    /// `bytes_out_total{backend}` (per-thread cells, folded at scrape time).
    pub bytes_out: LocalCounterVec,
    /// `io_read_size_bytes{backend}` (per-thread cells, folded at scrape time).
    pub io_read_size: LocalHistogramVec,
    /// `io_write_size_bytes{backend}` (per-thread cells, folded at scrape time).
    pub io_write_size: LocalHistogramVec,
    /// `rejected_total{reason}`.
    pub rejected: IntCounterVec,
    /// `tls_handshake_failures_total{backend}`.
    pub tls_handshake_failures: IntCounterVec,
    /// `queue_depth{queue}`.
    pub queue_depth: IntGaugeVec,
    /// `queue_dropped_total{queue}`.
    pub queue_dropped: IntCounterVec,
    /// `tasks_spawned_total{kind}`.
    pub tasks_spawned: IntCounterVec,
    /// `tasks_aborted_total{kind}`.
    pub tasks_aborted: IntCounterVec,
    /// `pq_handshake_total{backend,mode,result}` (spec/QUANTUM.md §7).
    pub pq_handshake: IntCounterVec,
    per_backend: [BackendMetrics; 4],
    io: Arc<IoShared>,
    rejects: [IntCounter; RejectReason::ALL.len()],
}

impl TransportMetrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::build())
    }

    /// A process-wide instance, created on first use.
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<TransportMetrics>> = OnceLock::new();
        GLOBAL.get_or_init(Self::new).clone()
    }

    fn build() -> Self {
        let registry = Registry::new();
        // Registration of fixed, distinct, well-formed names into a fresh registry cannot fail;
        // a failure here is a programming error caught by the stability test.
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone()))
                .expect("fixed metric set registers once into a fresh registry");
            c
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    labels,
                )
                .expect("valid metric"),
            )
        };

        let dials = counter(
            "transport_dials_total",
            "Outbound dial attempts and outcomes.",
            &["backend", "result"],
        );
        let accepts = counter(
            "transport_accepts_total",
            "Accepted inbound connections.",
            &["backend"],
        );
        let handshake_latency = histogram(
            "handshake_latency_seconds",
            "Time from accept/connect to ready-to-read/write.",
            &["backend", "pq"],
            &HANDSHAKE_BUCKETS,
        );
        let conn_inflight = gauge("conn_inflight", "Currently open connections.", &["backend"]);
        // The four per-I/O families: one collector over per-thread cells (see module docs).
        let io = IoShared::new();
        registry
            .register(Box::new(IoCollector::new(Arc::clone(&io))))
            .expect("fixed metric set registers once into a fresh registry");
        let counters = |slot: usize| LocalCounterVec {
            handles: std::array::from_fn(|b| LocalCounter {
                shared: Arc::clone(&io),
                id: io.id,
                slot: b * BACKEND_SLOTS + slot,
            }),
        };
        let histograms = |slot: usize| LocalHistogramVec {
            handles: std::array::from_fn(|b| LocalHistogram {
                shared: Arc::clone(&io),
                id: io.id,
                base: b * BACKEND_SLOTS + slot,
            }),
        };
        let bytes_in = counters(SLOT_BYTES_IN);
        let bytes_out = counters(SLOT_BYTES_OUT);
        let io_read_size = histograms(SLOT_READ);
        let io_write_size = histograms(SLOT_WRITE);
        let rejected = counter(
            "rejected_total",
            "All early rejections, by canonical reason.",
            &["reason"],
        );
        let tls_handshake_failures = counter(
            "tls_handshake_failures_total",
            "TLS handshake failures surfaced from rustls.",
            &["backend"],
        );
        let queue_depth = gauge("queue_depth", "Depth of bounded channels.", &["queue"]);
        let queue_dropped = counter(
            "queue_dropped_total",
            "Items refused because a bounded queue was full.",
            &["queue"],
        );
        let tasks_spawned = counter(
            "tasks_spawned_total",
            "Per-connection task spawns.",
            &["kind"],
        );
        let tasks_aborted = counter(
            "tasks_aborted_total",
            "Per-connection task aborts (deadline exceeded).",
            &["kind"],
        );
        let pq_handshake = counter(
            "pq_handshake_total",
            "TLS handshakes by key-exchange mode and result.",
            &["backend", "mode", "result"],
        );

        let per = |b: Backend| {
            let l = b.as_str();
            BackendMetrics {
                dials_ok: dials.with_label_values(&[l, "ok"]),
                dials_err: dials.with_label_values(&[l, "err"]),
                accepts: accepts.with_label_values(&[l]),
                handshake_off: handshake_latency.with_label_values(&[l, "off"]),
                handshake_hybrid: handshake_latency.with_label_values(&[l, "hybrid"]),
                conn_inflight: conn_inflight.with_label_values(&[l]),
                bytes_in: bytes_in.handles[b as usize].clone(),
                bytes_out: bytes_out.handles[b as usize].clone(),
                io_read_size: io_read_size.handles[b as usize].clone(),
                io_write_size: io_write_size.handles[b as usize].clone(),
                tls_failures: tls_handshake_failures.with_label_values(&[l]),
            }
        };
        let per_backend = [
            per(Backend::Tcp),
            per(Backend::Tls),
            per(Backend::Arti),
            per(Backend::Quic),
        ];
        let rejects = RejectReason::ALL.map(|r| rejected.with_label_values(&[r.as_str()]));
        for q in [QueueName::WriterInbox, QueueName::Work, QueueName::Events] {
            queue_depth.with_label_values(&[q.as_str()]);
            queue_dropped.with_label_values(&[q.as_str()]);
        }
        for k in [TaskKind::Reader, TaskKind::Writer] {
            tasks_spawned.with_label_values(&[k.as_str()]);
            tasks_aborted.with_label_values(&[k.as_str()]);
        }

        Self {
            registry,
            dials,
            accepts,
            handshake_latency,
            conn_inflight,
            bytes_in,
            bytes_out,
            io_read_size,
            io_write_size,
            rejected,
            tls_handshake_failures,
            queue_depth,
            queue_dropped,
            tasks_spawned,
            tasks_aborted,
            pq_handshake,
            per_backend,
            io,
            rejects,
        }
    }

    /// Pre-resolved handles for `backend`.
    pub fn backend(&self, backend: Backend) -> &BackendMetrics {
        &self.per_backend[backend as usize]
    }

    /// Counts one early rejection.
    pub fn reject(&self, reason: RejectReason) {
        self.rejects[reason as usize].inc();
    }

    /// Current value of `rejected_total{reason}`.
    pub fn rejected_count(&self, reason: RejectReason) -> u64 {
        self.rejects[reason as usize].get()
    }

    /// Records a finished TLS handshake in `pq_handshake_total`.
    pub fn pq_handshake_result(&self, backend: Backend, mode: PqLabel, ok: bool) {
        self.pq_handshake
            .with_label_values(&[
                backend.as_str(),
                mode.as_str(),
                if ok { "ok" } else { "fail" },
            ])
            .inc();
    }

    /// Number of threads whose per-thread I/O cells are live (registered and not yet folded
    /// into the retired totals by thread exit). Introspection for tests and benches.
    pub fn io_cells(&self) -> usize {
        self.io.live_cells()
    }

    /// The registry, for consumers that merge it into their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric, for a consumer's `/metrics`.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding well-formed families into a Vec cannot fail.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).expect("prometheus text format is UTF-8")
    }
}

// ---------------------------------------------------------------------------------------------
// Per-thread I/O accounting: `bytes_in_total`, `bytes_out_total`, `io_read_size_bytes`,
// `io_write_size_bytes`.
// ---------------------------------------------------------------------------------------------

/// Slots of one histogram in a cell: the finite buckets (non-cumulative), the overflow
/// (`+Inf` only) bucket, then the sum (`f64` bits). The sample count is the sum of the buckets,
/// so a scrape never shows a count that disagrees with its buckets.
const HIST_SLOTS: usize = IO_SIZE_BUCKETS.len() + 2;
/// Offset of the sum within a histogram's slots.
const HIST_SUM: usize = IO_SIZE_BUCKETS.len() + 1;
/// Slots of one backend: `bytes_in`, `bytes_out`, the read histogram, the write histogram.
const BACKEND_SLOTS: usize = 2 + 2 * HIST_SLOTS;
const SLOT_BYTES_IN: usize = 0;
const SLOT_BYTES_OUT: usize = 1;
const SLOT_READ: usize = 2;
const SLOT_WRITE: usize = 2 + HIST_SLOTS;
/// Slots of one cell: every backend of one [`TransportMetrics`].
const CELL_SLOTS: usize = BACKEND_LABELS.len() * BACKEND_SLOTS;

/// True for the slots holding an `f64` sum (as bits) rather than an integer count.
const fn is_sum_slot(slot: usize) -> bool {
    let s = slot % BACKEND_SLOTS;
    s == SLOT_READ + HIST_SUM || s == SLOT_WRITE + HIST_SUM
}

/// Index of the bucket `v` falls in (`le` semantics); `IO_SIZE_BUCKETS.len()` is the overflow.
#[inline]
fn io_bucket(v: f64) -> usize {
    IO_SIZE_BUCKETS.partition_point(|&b| b < v)
}

/// One thread's counts for one [`TransportMetrics`]: a cache-line-aligned block written only by
/// its owner thread (plain relaxed load + store, no read-modify-write) and read by scrapes.
#[repr(align(128))]
struct IoCell {
    slots: [AtomicU64; CELL_SLOTS],
}

impl IoCell {
    fn new() -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Adds to an integer slot. Only the owner writes a live cell (retired totals are written
    /// under the registry lock), so load + store loses nothing.
    #[inline]
    fn add(&self, slot: usize, n: u64) {
        let s = &self.slots[slot];
        s.store(s.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Adds to an `f64` sum slot (same single-writer rule).
    #[inline]
    fn add_f64(&self, slot: usize, v: f64) {
        let s = &self.slots[slot];
        let sum = f64::from_bits(s.load(Ordering::Relaxed)) + v;
        s.store(sum.to_bits(), Ordering::Relaxed);
    }

    /// Adds every slot of `other` into `self` (the caller is `self`'s only writer).
    fn fold_from(&self, other: &IoCell) {
        for (slot, v) in other.slots.iter().enumerate() {
            let v = v.load(Ordering::Relaxed);
            if is_sum_slot(slot) {
                self.add_f64(slot, f64::from_bits(v));
            } else {
                self.add(slot, v);
            }
        }
    }
}

impl std::fmt::Debug for IoCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoCell").finish_non_exhaustive()
    }
}

/// Folded totals of every slot at one instant.
struct IoTotals([u64; CELL_SLOTS]);

impl IoTotals {
    fn count(&self, slot: usize) -> u64 {
        self.0[slot]
    }

    fn sum(&self, slot: usize) -> f64 {
        f64::from_bits(self.0[slot])
    }

    /// Sample count of the histogram starting at `base` (sum of its buckets).
    fn hist_count(&self, base: usize) -> u64 {
        self.0[base..base + HIST_SUM]
            .iter()
            .fold(0u64, |a, &b| a.wrapping_add(b))
    }
}

/// The cells of every thread that has counted into one [`TransportMetrics`], plus the totals
/// of threads that have exited.
#[derive(Debug)]
struct IoRegistry {
    live: Vec<Arc<IoCell>>,
    retired: IoCell,
}

/// Shared side of the per-thread I/O accounting of one [`TransportMetrics`].
#[derive(Debug)]
struct IoShared {
    /// Process-unique id (never reused, unlike an address), the thread-local lookup key.
    id: u64,
    registry: Mutex<IoRegistry>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One thread's cell for one [`IoShared`].
struct LocalEntry {
    id: u64,
    cell: Arc<IoCell>,
    owner: Weak<IoShared>,
}

/// The calling thread's cells. On thread exit each cell is folded into its owner's retired
/// totals, so no count is lost.
struct LocalCells(RefCell<Vec<LocalEntry>>);

impl Drop for LocalCells {
    fn drop(&mut self) {
        for e in self.0.get_mut().drain(..) {
            if let Some(shared) = e.owner.upgrade() {
                shared.retire(&e.cell);
            }
        }
    }
}

thread_local! {
    static IO_CELLS: LocalCells = const { LocalCells(RefCell::new(Vec::new())) };
}

impl IoShared {
    fn new() -> Arc<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry: Mutex::new(IoRegistry {
                live: Vec::new(),
                retired: IoCell::new(),
            }),
        })
    }

    /// Runs `f` on the calling thread's cell for the instance `id` (= `self.id`, passed by
    /// the handle so the fast path never reads `self`), creating and registering the cell on
    /// first use. When the thread-local is unavailable (thread teardown), falls back to the
    /// retired totals under the registry lock.
    #[inline]
    fn with_cell(self: &Arc<Self>, id: u64, f: impl Fn(&IoCell)) {
        let done = IO_CELLS
            .try_with(|cells| {
                let Ok(mut cells) = cells.0.try_borrow_mut() else {
                    return false;
                };
                // Fast path: the most recently used cell sits first.
                match cells.first() {
                    Some(e) if e.id == id => f(&e.cell),
                    _ => f(&self.local_cell_slow(&mut cells)),
                }
                true
            })
            .unwrap_or(false);
        if !done {
            f(&lock(&self.registry).retired);
        }
    }

    /// Finds (and moves to the front) or creates this thread's cell.
    #[cold]
    #[inline(never)]
    fn local_cell_slow(self: &Arc<Self>, cells: &mut Vec<LocalEntry>) -> Arc<IoCell> {
        if let Some(i) = cells.iter().position(|e| e.id == self.id) {
            cells.swap(0, i);
            return Arc::clone(&cells[0].cell);
        }
        // Forget cells of dropped instances (their totals died with them).
        cells.retain(|e| e.owner.strong_count() > 0);
        let cell = Arc::new(IoCell::new());
        lock(&self.registry).live.push(Arc::clone(&cell));
        cells.push(LocalEntry {
            id: self.id,
            cell: Arc::clone(&cell),
            owner: Arc::downgrade(self),
        });
        let last = cells.len() - 1;
        cells.swap(0, last);
        cell
    }

    /// Folds an exiting thread's cell into the retired totals and unregisters it, atomically
    /// with respect to scrapes (both hold the registry lock).
    fn retire(&self, cell: &Arc<IoCell>) {
        let mut reg = lock(&self.registry);
        reg.retired.fold_from(cell);
        reg.live.retain(|c| !Arc::ptr_eq(c, cell));
    }

    /// Sums the retired totals and every live cell: the scrape-time fold.
    fn totals(&self) -> IoTotals {
        let reg = lock(&self.registry);
        let mut out = [0u64; CELL_SLOTS];
        for cell in std::iter::once(&reg.retired).chain(reg.live.iter().map(|c| &**c)) {
            for (slot, (acc, v)) in out.iter_mut().zip(cell.slots.iter()).enumerate() {
                let v = v.load(Ordering::Relaxed);
                *acc = if is_sum_slot(slot) {
                    (f64::from_bits(*acc) + f64::from_bits(v)).to_bits()
                } else {
                    acc.wrapping_add(v)
                };
            }
        }
        IoTotals(out)
    }

    /// Number of per-thread cells currently registered (for tests and introspection).
    fn live_cells(&self) -> usize {
        lock(&self.registry).live.len()
    }
}

/// A per-I/O counter (`bytes_in_total{backend}` / `bytes_out_total{backend}`): each thread
/// adds into its own cache-line-aligned cell; [`get`](Self::get) and scrapes fold every cell.
/// Same call-site API as the `prometheus::IntCounter` it replaces.
#[derive(Clone, Debug)]
pub struct LocalCounter {
    shared: Arc<IoShared>,
    /// `shared.id`, kept here so the hot path reads nothing shared.
    id: u64,
    slot: usize,
}

impl LocalCounter {
    /// Adds `n`. Touches only the calling thread's cell (no read-modify-write).
    #[inline]
    pub fn inc_by(&self, n: u64) {
        let slot = self.slot;
        self.shared.with_cell(self.id, |c| c.add(slot, n));
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// The folded total over every thread (live and exited). Takes the registry lock: a
    /// scrape-time read, not for hot paths.
    pub fn get(&self) -> u64 {
        self.shared.totals().count(self.slot)
    }
}

/// A per-I/O size histogram (`io_read_size_bytes{backend}` / `io_write_size_bytes{backend}`,
/// [`IO_SIZE_BUCKETS`]): per-thread bucket counts and sum, folded at scrape time. Same
/// call-site API as the `prometheus::Histogram` it replaces.
#[derive(Clone, Debug)]
pub struct LocalHistogram {
    shared: Arc<IoShared>,
    /// `shared.id`, kept here so the hot path reads nothing shared.
    id: u64,
    base: usize,
}

impl LocalHistogram {
    /// Records one observation. Touches only the calling thread's cell.
    #[inline]
    pub fn observe(&self, v: f64) {
        let (bucket, sum) = (self.base + io_bucket(v), self.base + HIST_SUM);
        self.shared.with_cell(self.id, |c| {
            c.add(bucket, 1);
            c.add_f64(sum, v);
        });
    }

    /// Folded number of observations.
    pub fn get_sample_count(&self) -> u64 {
        self.shared.totals().hist_count(self.base)
    }

    /// Folded sum of observations.
    pub fn get_sample_sum(&self) -> f64 {
        self.shared.totals().sum(self.base + HIST_SUM)
    }
}

/// `bytes_in_total` / `bytes_out_total` by `backend`: the handles of [`LocalCounter`], with the
/// label lookup of the `IntCounterVec` it replaces.
#[derive(Clone, Debug)]
pub struct LocalCounterVec {
    handles: [LocalCounter; 4],
}

impl LocalCounterVec {
    /// The handle for `[backend]`. Panics on an unknown label value (like prometheus does on
    /// a wrong label count).
    pub fn with_label_values(&self, vals: &[&str]) -> LocalCounter {
        self.handles[backend_index(vals)].clone()
    }
}

/// `io_read_size_bytes` / `io_write_size_bytes` by `backend`, with the label lookup of the
/// `HistogramVec` it replaces.
#[derive(Clone, Debug)]
pub struct LocalHistogramVec {
    handles: [LocalHistogram; 4],
}

impl LocalHistogramVec {
    /// The handle for `[backend]`. Panics on an unknown label value.
    pub fn with_label_values(&self, vals: &[&str]) -> LocalHistogram {
        self.handles[backend_index(vals)].clone()
    }
}

fn backend_index(vals: &[&str]) -> usize {
    match vals {
        [v] => BACKEND_LABELS
            .iter()
            .position(|l| l == v)
            .unwrap_or_else(|| panic!("unknown backend label {v:?}")),
        _ => panic!(
            "expected exactly one label value (backend), got {}",
            vals.len()
        ),
    }
}

/// The registry's view of the per-thread I/O metrics: renders the four families with the
/// same names, help, labels and buckets as the plain prometheus metrics did, from a fold of
/// every cell taken at scrape time.
#[derive(Debug)]
struct IoCollector {
    shared: Arc<IoShared>,
    descs: [Desc; 4],
}

const IO_FAMILIES: [(&str, &str); 4] = [
    ("bytes_in_total", "Total bytes read from peers."),
    ("bytes_out_total", "Total bytes written to peers."),
    ("io_read_size_bytes", "Size of read chunks."),
    ("io_write_size_bytes", "Size of write chunks."),
];

impl IoCollector {
    fn new(shared: Arc<IoShared>) -> Self {
        let descs = IO_FAMILIES.map(|(name, help)| {
            Desc::new(
                name.to_owned(),
                help.to_owned(),
                vec!["backend".to_owned()],
                HashMap::new(),
            )
            .expect("valid metric")
        });
        Self { shared, descs }
    }
}

impl Collector for IoCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let totals = self.shared.totals();
        let label = |b: &str| {
            let mut l = LabelPair::default();
            l.set_name("backend".to_owned());
            l.set_value(b.to_owned());
            vec![l]
        };
        let family = |i: usize, ty: MetricType, metrics: Vec<Metric>| {
            let mut f = MetricFamily::default();
            f.set_name(IO_FAMILIES[i].0.to_owned());
            f.set_help(IO_FAMILIES[i].1.to_owned());
            f.set_field_type(ty);
            f.set_metric(metrics);
            f
        };
        let counters = |slot: usize| -> Vec<Metric> {
            BACKEND_LABELS
                .iter()
                .enumerate()
                .map(|(b, l)| {
                    let mut c = proto::Counter::default();
                    c.set_value(totals.count(b * BACKEND_SLOTS + slot) as f64);
                    let mut m = Metric::from_label(label(l));
                    m.set_counter(c);
                    m
                })
                .collect()
        };
        let histograms = |slot: usize| -> Vec<Metric> {
            BACKEND_LABELS
                .iter()
                .enumerate()
                .map(|(b, l)| {
                    let base = b * BACKEND_SLOTS + slot;
                    let mut cumulative = 0u64;
                    let buckets = IO_SIZE_BUCKETS
                        .iter()
                        .enumerate()
                        .map(|(i, &upper)| {
                            cumulative = cumulative.wrapping_add(totals.count(base + i));
                            let mut bk = proto::Bucket::default();
                            bk.set_cumulative_count(cumulative);
                            bk.set_upper_bound(upper);
                            bk
                        })
                        .collect();
                    let mut h = proto::Histogram::default();
                    h.set_sample_count(totals.hist_count(base));
                    h.set_sample_sum(totals.sum(base + HIST_SUM));
                    h.set_bucket(buckets);
                    let mut m = Metric::from_label(label(l));
                    m.set_histogram(h);
                    m
                })
                .collect()
        };
        vec![
            family(0, MetricType::COUNTER, counters(SLOT_BYTES_IN)),
            family(1, MetricType::COUNTER, counters(SLOT_BYTES_OUT)),
            family(2, MetricType::HISTOGRAM, histograms(SLOT_READ)),
            family(3, MetricType::HISTOGRAM, histograms(SLOT_WRITE)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Name / label / bucket stability: renaming anything fails here.
    #[test]
    fn names_labels_buckets_are_stable() {
        let m = TransportMetrics::new();
        m.backend(Backend::Tcp)
            .handshake(PqLabel::Off)
            .observe(0.02);
        m.backend(Backend::Tcp).io_read_size.observe(5000.0);
        m.pq_handshake_result(Backend::Tls, PqLabel::Hybrid, true);
        let families = m.registry().gather();
        let mut names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        let mut want = METRIC_NAMES.to_vec();
        want.sort_unstable();
        assert_eq!(names, want);

        let labels = |name: &str| -> Vec<String> {
            let f = families.iter().find(|f| f.name() == name).unwrap();
            let mut l: Vec<String> = f.get_metric()[0]
                .get_label()
                .iter()
                .map(|l| l.name().to_string())
                .collect();
            l.sort();
            l
        };
        assert_eq!(labels("transport_dials_total"), ["backend", "result"]);
        assert_eq!(labels("handshake_latency_seconds"), ["backend", "pq"]);
        assert_eq!(labels("rejected_total"), ["reason"]);
        assert_eq!(labels("queue_depth"), ["queue"]);
        assert_eq!(labels("tasks_aborted_total"), ["kind"]);
        assert_eq!(labels("pq_handshake_total"), ["backend", "mode", "result"]);

        let text = m.render();
        for b in HANDSHAKE_BUCKETS {
            assert!(
                text.contains(&format!(
                    "handshake_latency_seconds_bucket{{backend=\"tcp\",pq=\"off\",le=\"{b}\"}}"
                )),
                "bucket {b}"
            );
        }
        assert!(text.contains("io_read_size_bytes_bucket{backend=\"tcp\",le=\"1048576\"} 1"));
        assert!(text.contains("io_read_size_bytes_bucket{backend=\"tcp\",le=\"4096\"} 0"));
        assert!(text.contains("rejected_total{reason=\"rate_limited\"} 0"));
    }

    #[test]
    fn reject_counts_by_reason() {
        let m = TransportMetrics::new();
        m.reject(RejectReason::TooLarge);
        m.reject(RejectReason::TooLarge);
        assert_eq!(m.rejected_count(RejectReason::TooLarge), 2);
        assert_eq!(
            m.rejected.with_label_values(&["too_large"]).get(),
            2,
            "cached handle and vec agree"
        );
    }

    /// The per-thread families render exactly like plain prometheus metrics fed the same
    /// observations (names, help, types, labels, buckets, values), from several threads,
    /// including threads that have exited.
    #[test]
    fn per_thread_io_metrics_render_like_prometheus() {
        let m = TransportMetrics::new();
        let reference = Registry::new();
        let rc = |name: &str, help: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &["backend"]).unwrap();
            reference.register(Box::new(v.clone())).unwrap();
            v
        };
        let rh = |name: &str, help: &str| {
            let v = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(IO_SIZE_BUCKETS.to_vec()),
                &["backend"],
            )
            .unwrap();
            reference.register(Box::new(v.clone())).unwrap();
            v
        };
        let (ri, ro) = (
            rc(IO_FAMILIES[0].0, IO_FAMILIES[0].1),
            rc(IO_FAMILIES[1].0, IO_FAMILIES[1].1),
        );
        let (rr, rw) = (
            rh(IO_FAMILIES[2].0, IO_FAMILIES[2].1),
            rh(IO_FAMILIES[3].0, IO_FAMILIES[3].1),
        );
        for l in BACKEND_LABELS {
            ri.with_label_values(&[l]);
            ro.with_label_values(&[l]);
            rr.with_label_values(&[l]);
            rw.with_label_values(&[l]);
        }
        let sizes = [
            0u64,
            1,
            1023,
            1024,
            1025,
            4096,
            70_000,
            1 << 20,
            (1 << 20) + 1,
            5 << 20,
        ];
        // Plain spawn + join (not a scope): join waits for the thread's TLS destructors.
        let threads: Vec<_> = [Backend::Tcp, Backend::Tls, Backend::Tcp]
            .into_iter()
            .enumerate()
            .map(|(t, b)| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    let bm = m.backend(b);
                    for &n in &sizes[t..] {
                        bm.bytes_in.inc_by(n);
                        bm.bytes_out.inc_by(2 * n);
                        bm.io_read_size.observe(n as f64);
                        bm.io_write_size.observe((2 * n) as f64);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // The threads have exited: only the retired totals hold their counts.
        assert_eq!(m.io_cells(), 0);
        // And a live thread (this one) on top.
        m.backend(Backend::Arti).bytes_in.inc();
        m.backend(Backend::Arti).io_read_size.observe(3.0);
        assert_eq!(m.io_cells(), 1);
        for (t, b) in [Backend::Tcp, Backend::Tls, Backend::Tcp]
            .into_iter()
            .enumerate()
        {
            let l = b.as_str();
            for &n in &sizes[t..] {
                ri.with_label_values(&[l]).inc_by(n);
                ro.with_label_values(&[l]).inc_by(2 * n);
                rr.with_label_values(&[l]).observe(n as f64);
                rw.with_label_values(&[l]).observe((2 * n) as f64);
            }
        }
        ri.with_label_values(&["arti"]).inc();
        rr.with_label_values(&["arti"]).observe(3.0);

        let render = |fams: Vec<MetricFamily>| {
            let fams: Vec<_> = fams
                .into_iter()
                .filter(|f| IO_FAMILIES.iter().any(|(n, _)| *n == f.name()))
                .collect();
            let mut out = Vec::new();
            TextEncoder::new().encode(&fams, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        let ours = render(m.registry().gather());
        assert_eq!(ours, render(reference.gather()));
        assert!(
            ours.contains("bytes_in_total{backend=\"arti\"} 1"),
            "{ours}"
        );

        let tcp = m.backend(Backend::Tcp);
        let want: u64 = sizes.iter().sum::<u64>() + sizes[2..].iter().sum::<u64>();
        assert_eq!(tcp.bytes_in.get(), want);
        assert_eq!(m.bytes_out.with_label_values(&["tcp"]).get(), 2 * want);
        assert_eq!(
            tcp.io_read_size.get_sample_count(),
            (sizes.len() * 2 - 2) as u64
        );
        assert_eq!(tcp.io_read_size.get_sample_sum(), want as f64);
        assert_eq!(
            m.io_write_size
                .with_label_values(&["tls"])
                .get_sample_count(),
            (sizes.len() - 1) as u64
        );
    }

    /// Many threads counting concurrently (and exiting) lose nothing.
    #[test]
    fn concurrent_threads_lose_no_counts() {
        let m = TransportMetrics::new();
        let other = TransportMetrics::new();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (m, other) = (Arc::clone(&m), Arc::clone(&other));
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        m.backend(Backend::Tcp).bytes_out.inc_by(3);
                        m.backend(Backend::Tcp)
                            .io_write_size
                            .observe((i % 5000) as f64);
                        other.backend(Backend::Tls).bytes_in.inc();
                    }
                })
            })
            .collect();
        // Scrapes while counting: totals only grow.
        let mut last = 0;
        for _ in 0..20 {
            let now = m.backend(Backend::Tcp).bytes_out.get();
            assert!(now >= last);
            last = now;
            assert!(m.render().contains("bytes_out_total"));
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.backend(Backend::Tcp).bytes_out.get(), 120_000);
        assert_eq!(
            m.backend(Backend::Tcp).io_write_size.get_sample_count(),
            40_000
        );
        assert_eq!(other.backend(Backend::Tls).bytes_in.get(), 40_000);
        assert_eq!((m.io_cells(), other.io_cells()), (0, 0));
    }

    #[test]
    fn bucket_index_matches_le_semantics() {
        assert_eq!(io_bucket(0.0), 0);
        assert_eq!(io_bucket(1024.0), 0);
        assert_eq!(io_bucket(1025.0), 1);
        assert_eq!(io_bucket(1048576.0), 10);
        assert_eq!(io_bucket(1048577.0), IO_SIZE_BUCKETS.len());
    }
}
