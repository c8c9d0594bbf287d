//! The server side of the rig's metrics scrape: with `RON_PERF_METRICS=1` in its environment,
//! `ron-perf serve` of the `tokio` and `uring` engines exposes the engine's Prometheus text
//! (`TransportMetrics::render`) on a loopback port of its own and announces it on stdout with
//! one `METRICS addr=<ip:port>` line before its `READY` line. The abuse scenario reads
//! `rejected_total{reason}` from it before and after each attack. Any request gets the whole
//! exposition (HTTP/1.0, then close). Off by default: the suite's rows run without it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use ron_transport::metrics::TransportMetrics;

/// The environment variable that turns the endpoint on (value `1`).
pub const ENV: &str = "RON_PERF_METRICS";

/// The stdout line announcing the endpoint.
pub fn metrics_line(addr: SocketAddr) -> String {
    format!("METRICS addr={addr}")
}

/// Parses a [`metrics_line`].
pub fn parse_metrics_line(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("METRICS addr=")?.trim().parse().ok()
}

/// Starts the endpoint if [`ENV`] is `1`: binds 127.0.0.1:0, prints [`metrics_line`], serves
/// every request from a thread of its own (inheriting the server's core affinity).
pub fn maybe_export(metrics: &Arc<TransportMetrics>) -> anyhow::Result<()> {
    if std::env::var(ENV).ok().as_deref() != Some("1") {
        return Ok(());
    }
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let m = Arc::clone(metrics);
    std::thread::Builder::new()
        .name("ron-perf-metrics".into())
        .spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                // Read what the request sends in one go (its content is not looked at).
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let body = m.render();
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", metrics_line(addr))?;
    out.flush()?;
    Ok(())
}

/// Fetches the exposition from `addr` (client side; bounded by a 3 s timeout).
pub fn fetch(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map_or(text.as_str(), |(_, b)| b)
        .to_owned())
}

/// The samples of counter/gauge family `name` in a text exposition, as (label value of
/// `label`, value) pairs; samples without that label are keyed by the empty string.
pub fn samples(text: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let key = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.trim() == label)
            .map(|(_, v)| v.trim().trim_matches('"').to_owned())
            .unwrap_or_default();
        out.push((key, v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_line_roundtrip() {
        let a: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        assert_eq!(parse_metrics_line(&metrics_line(a)), Some(a));
        assert_eq!(parse_metrics_line("READY addr=127.0.0.1:1"), None);
    }

    #[test]
    fn samples_by_label() {
        let text = "# HELP rejected_total x\n# TYPE rejected_total counter\n\
                    rejected_total{reason=\"timeout\"} 7\n\
                    rejected_total{reason=\"tls\"} 2\n\
                    rejected_total_other 9\n\
                    conn_inflight{backend=\"tcp\"} 3\n";
        let r = samples(text, "rejected_total", "reason");
        assert_eq!(r, vec![("timeout".into(), 7.0), ("tls".into(), 2.0)]);
        let c = samples(text, "conn_inflight", "backend");
        assert_eq!(c, vec![("tcp".into(), 3.0)]);
    }

    #[test]
    fn the_library_exposition_has_rejected_total_by_reason() {
        let m = TransportMetrics::new();
        m.reject(ron_transport::error::RejectReason::Timeout);
        m.reject(ron_transport::error::RejectReason::Timeout);
        let r = samples(&m.render(), "rejected_total", "reason");
        assert!(r.contains(&("timeout".to_owned(), 2.0)), "{r:?}");
    }
}
