//! The printed result table (Markdown, so it pastes into `docs/perf.md` as is): one block per
//! measurement shape, engines as rows, with throughput as a ratio against tokio-framed (the
//! hand-written tokio + tokio-util baseline), against ron-transport's tokio engine, against the
//! best peer (tokio-framed / monoio / tokio-uring) and as a fraction of bare-uring; CPU per
//! frame against tokio; TLS goodput as a fraction of the open+seal limit (TCP rows have no
//! column there: the loopback figure is not a ceiling for an echo, see docs/perf.md); and the
//! rig's flag (`CLIENT-BOUND?`, `STALL?`).

use std::collections::BTreeMap;

use crate::report::{throughput, Report, Row};
use crate::server::{EngineId, Role};

fn thr(r: &Row) -> Option<f64> {
    throughput(r)
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("–".to_owned(), |x| format!("{x:.prec$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".to_owned(),
    }
}

fn shape(r: &Row) -> String {
    let mut s = format!("{} {}", r.scenario, r.transport);
    if let Some(p) = r.payload {
        if p % 1024 == 0 {
            s.push_str(&format!(" {}KiB", p / 1024));
        } else {
            s.push_str(&format!(" {p}B"));
        }
    }
    s.push_str(&format!(" c{}", r.conns));
    if let Some(d) = r.depth {
        s.push_str(&format!(" d{d}"));
    }
    if let Some(res) = r.resumed {
        s.push_str(if res { " resumed" } else { " cold" });
    }
    if let Some(rate) = r.offered_rate {
        s.push_str(&format!(" @{rate:.0}/s"));
    }
    s
}

/// Renders the report as a Markdown table.
pub fn render(rep: &Report) -> String {
    let mut groups: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for r in &rep.results {
        let g = r.group();
        if !groups.contains_key(&g) {
            order.push(g.clone());
        }
        groups.entry(g).or_default().push(r);
    }
    let mut s = String::new();
    s.push_str(&format!(
        "commit {} · {} · {} CPUs · Linux {} · limits: TLS open+seal {} Gb/s ({}), loopback TCP {} Gb/s\n\n",
        &rep.commit[..rep.commit.len().min(12)],
        rep.date,
        rep.machine.cpus,
        rep.machine.kernel,
        fmt_opt(rep.limits.tls_open_seal_gbps, 2),
        rep.limits
            .tls_open_seal_gbps_by_provider
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        fmt_opt(rep.limits.loopback_tcp_gbps, 2),
    ));
    s.push_str("| shape | engine | frames/s or hs/s | Gb/s | p50 µs | p95 µs | p99 µs | p99.9 µs | srv CPU µs/frame | srv CPU % | cli CPU % | cli CPU µs/frame | B/conn | ×tokio-framed | ×tokio | ×best peer | ÷bare | CPU ×tokio | of TLS limit | flag |\n");
    s.push_str(
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
    );
    for g in order {
        let rows = &groups[&g];
        let by = |name: &str| rows.iter().find(|r| r.engine == name).copied();
        let tokio = by("tokio");
        let framed = by("tokio-framed");
        let bare = by("bare-uring");
        let best_peer = rows
            .iter()
            .filter(|r| EngineId::parse(&r.engine).is_ok_and(|e| e.role() == Role::Peer))
            .filter_map(|r| thr(r))
            .reduce(f64::max);
        for r in rows {
            // Only TLS has a per-core ceiling the echo cannot beat (open+seal of every byte);
            // one-core loopback TCP is not one (an echo's receive path runs partly on the
            // sender's core), so TCP rows get no fraction.
            let limit = if r.transport == "tls" {
                rep.limits.tls_open_seal_gbps
            } else {
                None
            };
            let is_peer_or_floor = EngineId::parse(&r.engine)
                .map(|e| e.role() != Role::Engine)
                .unwrap_or(false);
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                shape(r),
                r.engine,
                fmt_opt(thr(r), 0),
                fmt_opt(r.gbps, 3),
                fmt_opt(r.p50_us, 0),
                fmt_opt(r.p95_us, 0),
                fmt_opt(r.p99_us, 0),
                fmt_opt(r.p999_us, 0),
                fmt_opt(r.server_cpu_us_per_frame, 2),
                fmt_opt(r.server_cpu_pct, 0),
                fmt_opt(r.client_cpu_pct, 0),
                fmt_opt(
                    match (r.client_cpu_pct, thr(r)) {
                        (Some(c), Some(t)) if t > 0.0 => Some(c / 100.0 * 1e6 / t),
                        _ => None,
                    },
                    2
                ),
                fmt_opt(r.rss_per_conn_bytes, 0),
                ratio(thr(r), framed.and_then(thr)),
                ratio(thr(r), tokio.and_then(thr)),
                if is_peer_or_floor { "–".to_owned() } else { ratio(thr(r), best_peer) },
                ratio(thr(r), bare.and_then(thr)),
                ratio(r.server_cpu_us_per_frame, tokio.and_then(|t| t.server_cpu_us_per_frame)),
                ratio(r.gbps, limit),
                r.flag.as_deref().unwrap_or(""),
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Limits, Machine};

    fn row(engine: &str, fps: f64) -> Row {
        Row {
            scenario: "small".into(),
            transport: "tcp".into(),
            engine: engine.into(),
            conns: 64,
            payload: Some(1024),
            depth: Some(1),
            frames_per_sec: Some(fps),
            gbps: Some(fps * 1024.0 * 8.0 / 1e9),
            server_cpu_us_per_frame: Some(1e6 / fps),
            ..Row::default()
        }
    }

    #[test]
    fn ratios_against_tokio_peer_and_bare() {
        let rep = Report {
            commit: "0123456789abcdef".into(),
            date: "2025-01-01T00:00:00Z".into(),
            machine: Machine {
                cpus: 2,
                kernel: "6.18".into(),
            },
            limits: Limits {
                loopback_tcp_gbps: Some(8.192),
                ..Limits::default()
            },
            results: vec![
                row("tokio-framed", 120_000.0),
                row("tokio", 100_000.0),
                row("uring", 150_000.0),
                row("monoio", 120_000.0),
                row("tokio-uring", 110_000.0),
                row("bare-uring", 200_000.0),
            ],
        };
        let t = render(&rep);
        let uring = t.lines().find(|l| l.contains("| uring |")).unwrap();
        let cells: Vec<&str> = uring.split('|').map(str::trim).collect();
        // ×tokio-framed, ×tokio, ×best peer (monoio / tokio-framed), ÷bare, CPU ×tokio, of TLS
        // limit (none over TCP)
        assert_eq!(
            &cells[14..20],
            &["1.25", "1.50", "1.25", "0.75", "0.67", "–"]
        );
        let monoio = t.lines().find(|l| l.contains("| monoio |")).unwrap();
        assert!(monoio.contains("| 1.00 | 1.20 | – |"), "{monoio}");
        assert!(t.starts_with("commit 0123456789ab"));
    }
}
