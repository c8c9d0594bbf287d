//! Regression gates of spec/PERFORMANCE.md §5: the median of N runs (3 asked) of every row is
//! compared with the baseline row of the same key. Throughput (frames/s, Gb/s, handshakes/s)
//! may drop at most 10 %, p95/p99 latency may rise at most 10 %, server CPU per frame at most
//! 15 %, memory per connection at most 15 %. The throughput ratio over the hand-written
//! `tokio-framed` server of the same shape and run (`x_tokio_framed`, the baseline ratio of the
//! rig) may drop at most as much as throughput: it survives a slower or busier machine, which
//! absolute figures do not. Pure logic over reports; `main` prints and exits.

use std::collections::BTreeMap;

use crate::report::{fill_ratios, Report, Row};

/// Gate thresholds as fractions (0.10 = 10 %).
#[derive(Debug, Clone, Copy)]
pub struct Gates {
    /// Max throughput drop.
    pub throughput_drop: f64,
    /// Max p95/p99 rise.
    pub latency_rise: f64,
    /// Max CPU-per-frame rise.
    pub cpu_rise: f64,
    /// Max memory-per-connection rise.
    pub mem_rise: f64,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            throughput_drop: 0.10,
            latency_rise: 0.10,
            cpu_rise: 0.15,
            mem_rise: 0.15,
        }
    }
}

impl Gates {
    /// Every gate widened by `extra` (the noise waiver of §5, e.g. 0.05).
    pub fn widened(self, extra: f64) -> Self {
        Self {
            throughput_drop: self.throughput_drop + extra,
            latency_rise: self.latency_rise + extra,
            cpu_rise: self.cpu_rise + extra,
            mem_rise: self.mem_rise + extra,
        }
    }
}

/// Which way is worse for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    HigherIsBetter,
    LowerIsBetter,
}

/// One compared metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Row key.
    pub key: String,
    /// Metric (JSON field name).
    pub metric: &'static str,
    /// Baseline value.
    pub baseline: f64,
    /// Median of the reports.
    pub current: f64,
    /// Relative change (+0.05 = 5 % higher).
    pub change: f64,
    /// Allowed change in the bad direction.
    pub allowed: f64,
    /// True if the gate failed.
    pub regressed: bool,
}

/// The outcome of a check.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Every compared metric.
    pub verdicts: Vec<Verdict>,
    /// Baseline rows with no counterpart in any report.
    pub missing: Vec<String>,
    /// Runs the median was taken over.
    pub runs: usize,
}

impl Outcome {
    /// True if any gate failed.
    pub fn regressed(&self) -> bool {
        self.verdicts.iter().any(|v| v.regressed)
    }
}

/// Median of `xs` (mean of the middle two for an even count); None if empty.
pub fn median(xs: &mut [f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

type Getter = fn(&Row) -> Option<f64>;

fn metrics(g: &Gates) -> [(&'static str, Getter, Dir, f64); 8] {
    [
        (
            "x_tokio_framed",
            |r| r.x_tokio_framed.filter(|_| r.engine != "tokio-framed"),
            Dir::HigherIsBetter,
            g.throughput_drop,
        ),
        (
            "frames_per_sec",
            |r| r.frames_per_sec,
            Dir::HigherIsBetter,
            g.throughput_drop,
        ),
        ("gbps", |r| r.gbps, Dir::HigherIsBetter, g.throughput_drop),
        (
            "handshakes_per_sec",
            |r| r.handshakes_per_sec,
            Dir::HigherIsBetter,
            g.throughput_drop,
        ),
        ("p95_us", |r| r.p95_us, Dir::LowerIsBetter, g.latency_rise),
        ("p99_us", |r| r.p99_us, Dir::LowerIsBetter, g.latency_rise),
        (
            "server_cpu_us_per_frame",
            |r| r.server_cpu_us_per_frame,
            Dir::LowerIsBetter,
            g.cpu_rise,
        ),
        (
            "rss_per_conn_bytes",
            |r| r.rss_per_conn_bytes,
            Dir::LowerIsBetter,
            g.mem_rise,
        ),
    ]
}

/// Compares the median of `reports` with `baseline`.
pub fn check(baseline: &Report, reports: &[Report], gates: Gates) -> Outcome {
    // Ratios recomputed from the rows themselves (reports written before the field existed
    // have none; a report's own values are recomputed identically).
    let mut baseline = baseline.clone();
    fill_ratios(&mut baseline.results);
    let reports: Vec<Report> = reports
        .iter()
        .map(|r| {
            let mut r = r.clone();
            fill_ratios(&mut r.results);
            r
        })
        .collect();
    let mut by_key: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for rep in &reports {
        for r in &rep.results {
            by_key.entry(r.key()).or_default().push(r);
        }
    }
    let mut out = Outcome {
        runs: reports.len(),
        ..Outcome::default()
    };
    for b in &baseline.results {
        let key = b.key();
        let Some(rows) = by_key.get(&key) else {
            out.missing.push(key);
            continue;
        };
        for (name, get, dir, allowed) in metrics(&gates) {
            let Some(base) = get(b) else { continue };
            let mut xs: Vec<f64> = rows.iter().filter_map(|r| get(r)).collect();
            let Some(cur) = median(&mut xs) else { continue };
            let change = if base == 0.0 {
                0.0
            } else {
                (cur - base) / base.abs()
            };
            let regressed = match dir {
                Dir::HigherIsBetter => change < -allowed,
                Dir::LowerIsBetter => base > 0.0 && change > allowed,
            };
            out.verdicts.push(Verdict {
                key: key.clone(),
                metric: name,
                baseline: base,
                current: cur,
                change,
                allowed,
                regressed,
            });
        }
    }
    out
}

/// The check as a printable table.
pub fn render(o: &Outcome) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<44} {:<24} {:>12} {:>12} {:>8} {:>7}  verdict\n",
        "row", "metric", "baseline", "median", "change", "gate"
    ));
    for v in &o.verdicts {
        s.push_str(&format!(
            "{:<44} {:<24} {:>12.2} {:>12.2} {:>+7.1}% {:>6.0}%  {}\n",
            v.key,
            v.metric,
            v.baseline,
            v.current,
            v.change * 100.0,
            v.allowed * 100.0,
            if v.regressed { "REGRESSED" } else { "ok" }
        ));
    }
    for m in &o.missing {
        s.push_str(&format!(
            "{m:<44} (no such row in the reports: not compared)\n"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Limits, Machine};

    fn rep(fps: f64, p99: f64, cpu: f64, rss: Option<f64>) -> Report {
        Report {
            commit: "c".into(),
            date: "d".into(),
            machine: Machine {
                cpus: 2,
                kernel: "k".into(),
            },
            limits: Limits::default(),
            results: vec![Row {
                scenario: "small".into(),
                transport: "tls".into(),
                engine: "uring".into(),
                conns: 64,
                payload: Some(1024),
                depth: Some(1),
                frames_per_sec: Some(fps),
                p95_us: Some(p99 * 0.8),
                p99_us: Some(p99),
                server_cpu_us_per_frame: Some(cpu),
                rss_per_conn_bytes: rss,
                ..Row::default()
            }],
        }
    }

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn within_gates_passes() {
        let base = rep(100_000.0, 1000.0, 10.0, Some(1000.0));
        let runs = [
            rep(95_000.0, 1080.0, 11.0, Some(1100.0)),
            rep(91_000.0, 1090.0, 11.4, Some(1140.0)),
            rep(120_000.0, 900.0, 9.0, Some(900.0)),
        ];
        let o = check(&base, &runs, Gates::default());
        assert!(!o.regressed(), "{}", render(&o));
        assert_eq!(o.runs, 3);
        assert_eq!(o.verdicts.len(), 5);
    }

    #[test]
    fn throughput_drop_beyond_10pct_fails_on_the_median() {
        let base = rep(100_000.0, 1000.0, 10.0, None);
        // One good outlier does not save a median that dropped 12 %.
        let runs = [
            rep(88_000.0, 1000.0, 10.0, None),
            rep(87_000.0, 1000.0, 10.0, None),
            rep(130_000.0, 1000.0, 10.0, None),
        ];
        let o = check(&base, &runs, Gates::default());
        let bad: Vec<_> = o.verdicts.iter().filter(|v| v.regressed).collect();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].metric, "frames_per_sec");
        assert_eq!(bad[0].current, 88_000.0);
    }

    #[test]
    fn latency_cpu_and_memory_gates() {
        let base = rep(100_000.0, 1000.0, 10.0, Some(1000.0));
        let o = check(
            &base,
            &[rep(100_000.0, 1110.0, 11.6, Some(1160.0))],
            Gates::default(),
        );
        let bad: Vec<_> = o
            .verdicts
            .iter()
            .filter(|v| v.regressed)
            .map(|v| v.metric)
            .collect();
        assert_eq!(
            bad,
            vec![
                "p95_us",
                "p99_us",
                "server_cpu_us_per_frame",
                "rss_per_conn_bytes"
            ]
        );
        // The §5 noise waiver (+5 %) lets the same figures pass.
        let o = check(
            &base,
            &[rep(100_000.0, 1110.0, 11.6, Some(1160.0))],
            Gates::default().widened(0.05),
        );
        assert!(!o.regressed(), "{}", render(&o));
    }

    #[test]
    fn ratio_over_tokio_framed_is_gated() {
        let two = |framed: f64, uring: f64| {
            let mut r = rep(framed, 1000.0, 10.0, None);
            r.results[0].engine = "tokio-framed".into();
            let mut u = r.results[0].clone();
            u.engine = "uring".into();
            u.frames_per_sec = Some(uring);
            r.results.push(u);
            r
        };
        // A slower machine: both halve, the ratio holds, only the absolute gate fails.
        let o = check(&two(100.0, 150.0), &[two(50.0, 75.0)], Gates::default());
        let bad: Vec<_> = o
            .verdicts
            .iter()
            .filter(|v| v.regressed)
            .map(|v| (v.key.as_str(), v.metric))
            .collect();
        assert!(!bad.iter().any(|(_, m)| *m == "x_tokio_framed"), "{bad:?}");
        // The engine lost ground against the hand-written server: the ratio gate fails.
        let o = check(&two(100.0, 150.0), &[two(100.0, 120.0)], Gates::default());
        assert!(o
            .verdicts
            .iter()
            .any(|v| v.regressed && v.metric == "x_tokio_framed" && v.key.contains("/uring/")));
    }

    #[test]
    fn missing_rows_are_listed_not_compared() {
        let base = rep(100_000.0, 1000.0, 10.0, None);
        let mut other = rep(1.0, 1.0, 1.0, None);
        other.results[0].engine = "tokio".into();
        let o = check(&base, &[other], Gates::default());
        assert!(!o.regressed());
        assert_eq!(o.missing, vec!["small/tls/uring/c64/p1024/d1".to_owned()]);
        assert!(render(&o).contains("not compared"));
    }
}
