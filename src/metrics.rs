//! Prometheus metrics: exactly the 14 metrics of spec/OBSERVABILITY.md §8 plus
//! `pq_handshake_total` of spec/QUANTUM.md §7, with their fixed labels and buckets, registered
//! once into one [`prometheus::Registry`] per [`TransportMetrics`].
//!
//! Hot paths never look labels up: [`TransportMetrics::backend`] hands out pre-resolved handles
//! per backend label. [`TransportMetrics::render`] produces the text exposition for a consumer's
//! `/metrics`. This module is the only place that registers metrics.

use std::sync::{Arc, OnceLock};

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
    /// `bytes_in_total{backend}`.
    pub bytes_in: IntCounter,
    /// `bytes_out_total{backend}`.
    pub bytes_out: IntCounter,
    /// `io_read_size_bytes{backend}`.
    pub io_read_size: Histogram,
    /// `io_write_size_bytes{backend}`.
    pub io_write_size: Histogram,
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
    /// `bytes_in_total{backend}`.
    pub bytes_in: IntCounterVec,
    /// `bytes_out_total{backend}`.
    pub bytes_out: IntCounterVec,
    /// `io_read_size_bytes{backend}`.
    pub io_read_size: HistogramVec,
    /// `io_write_size_bytes{backend}`.
    pub io_write_size: HistogramVec,
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
    per_backend: [BackendMetrics; 3],
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
        let bytes_in = counter(
            "bytes_in_total",
            "Total bytes read from peers.",
            &["backend"],
        );
        let bytes_out = counter(
            "bytes_out_total",
            "Total bytes written to peers.",
            &["backend"],
        );
        let io_read_size = histogram(
            "io_read_size_bytes",
            "Size of read chunks.",
            &["backend"],
            &IO_SIZE_BUCKETS,
        );
        let io_write_size = histogram(
            "io_write_size_bytes",
            "Size of write chunks.",
            &["backend"],
            &IO_SIZE_BUCKETS,
        );
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
                bytes_in: bytes_in.with_label_values(&[l]),
                bytes_out: bytes_out.with_label_values(&[l]),
                io_read_size: io_read_size.with_label_values(&[l]),
                io_write_size: io_write_size.with_label_values(&[l]),
                tls_failures: tls_handshake_failures.with_label_values(&[l]),
            }
        };
        let per_backend = [per(Backend::Tcp), per(Backend::Tls), per(Backend::Arti)];
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
}
