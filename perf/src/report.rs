//! The JSON report (stable field names, read by other tools; schema in
//! `perf/report.schema.json`): run facts, the physical limits measured in the same run, and one
//! row per (scenario, transport, engine, shape). Fields that do not apply are `null`.
//! Baselines under `perf/baselines/` are reports of the same shape.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The JSON schema of reports and baselines (`perf/report.schema.json`).
pub const SCHEMA: &str = include_str!("../report.schema.json");

/// A whole report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// `git rev-parse HEAD` of the tree measured ("unknown" outside git).
    pub commit: String,
    /// UTC time of the run, RFC 3339.
    pub date: String,
    /// The machine.
    pub machine: Machine,
    /// Physical limits measured in the same run.
    pub limits: Limits,
    /// One row per measurement.
    pub results: Vec<Row>,
}

/// Machine facts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// Online CPUs.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
}

/// Physical limits (single core).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Best in-memory TLS 1.3 open+seal throughput of 64 KiB writes over the providers.
    pub tls_open_seal_gbps: Option<f64>,
    /// Loopback TCP stream throughput with sender and receiver on one core.
    pub loopback_tcp_gbps: Option<f64>,
    /// Open+seal per provider (`aws-lc-rs`, `ring`).
    #[serde(default)]
    pub tls_open_seal_gbps_by_provider: BTreeMap<String, f64>,
}

/// One measurement.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// `small`, `pipelined`, `stream`, `handshake` or `idle`.
    pub scenario: String,
    /// `tcp` or `tls`.
    pub transport: String,
    /// `tokio-framed`, `tokio`, `uring`, `uring-raw`, `monoio`, `tokio-uring` or `bare-uring`
    /// (reports before 2026-12-03: `uring` was the engine's shard-local callback API, since
    /// removed; `uring` is now the drop-in path through `Engine::serve`).
    pub engine: String,
    /// Connections driving the load (idle: connections held).
    pub conns: u64,
    /// Payload bytes per frame.
    pub payload: Option<u64>,
    /// Frames in flight per connection.
    pub depth: Option<u64>,
    /// Echoed frames per second.
    pub frames_per_sec: Option<f64>,
    /// Payload goodput, Gb/s, one direction.
    pub gbps: Option<f64>,
    /// Round-trip (or handshake) latency percentiles, µs.
    pub p50_us: Option<f64>,
    /// p95, µs.
    pub p95_us: Option<f64>,
    /// p99, µs.
    pub p99_us: Option<f64>,
    /// p99.9, µs.
    pub p999_us: Option<f64>,
    /// Server user+system CPU time over the window ÷ frames, µs.
    pub server_cpu_us_per_frame: Option<f64>,
    /// New TLS connections per second (handshake scenario).
    pub handshakes_per_sec: Option<f64>,
    /// Handshake rows: whether these were resumed handshakes.
    pub resumed: Option<bool>,
    /// Idle rows: server RSS growth per held connection, bytes.
    pub rss_per_conn_bytes: Option<f64>,
    /// Fixed offered rate (frames/s) for the equal-load variant; null = closed loop.
    #[serde(default)]
    pub offered_rate: Option<f64>,
    /// Server CPU utilisation over the window (100 = one core).
    #[serde(default)]
    pub server_cpu_pct: Option<f64>,
    /// Client CPU utilisation over the window (100 = one core): the check that the client
    /// was not the bottleneck.
    #[serde(default)]
    pub client_cpu_pct: Option<f64>,
    /// Throughput (frames/s, or handshakes/s) over the `tokio-framed` row of the same shape in
    /// the same run: the baseline ratio of the chart and of `ron-perf check`.
    #[serde(default)]
    pub x_tokio_framed: Option<f64>,
    /// Throughput over the `tokio` row (ron-transport's tokio engine) of the same shape.
    #[serde(default)]
    pub x_tokio: Option<f64>,
    /// Idle share of the server's and client's cores over the window, percent (100 = every
    /// watched core idle all the time): tells a stall (high) from contention by other
    /// processes (low) when neither side was busy.
    #[serde(default)]
    pub cores_idle_pct: Option<f64>,
    /// What the rig suspects about the row: `CLIENT-BOUND?` (the client's cores were saturated
    /// before the server's), `STALL?` (a closed-loop row on which neither side was busy while
    /// their cores sat idle) or `CONTENDED?` (neither side busy, the cores busy with other
    /// processes); null when nothing is suspected.
    #[serde(default)]
    pub flag: Option<String>,
}

/// Throughput of a row: handshakes/s for handshake rows, else frames/s.
pub fn throughput(r: &Row) -> Option<f64> {
    r.handshakes_per_sec.or(r.frames_per_sec)
}

/// The throughput ratio of `r` over the `engine` row of the same shape in `rows`.
pub fn ratio_over(rows: &[Row], r: &Row, engine: &str) -> Option<f64> {
    let g = r.group();
    let base = rows
        .iter()
        .find(|b| b.engine == engine && b.group() == g)
        .and_then(throughput)?;
    let v = throughput(r)?;
    (base > 0.0).then(|| v / base)
}

/// Fills every row's `x_tokio_framed` and `x_tokio` from the rows of the same shape.
pub fn fill_ratios(rows: &mut [Row]) {
    let snapshot = rows.to_vec();
    for r in rows.iter_mut() {
        r.x_tokio_framed = ratio_over(&snapshot, r, "tokio-framed");
        r.x_tokio = ratio_over(&snapshot, r, "tokio");
    }
}

impl Row {
    /// The identity used to match rows across reports.
    pub fn key(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        let mut k = format!(
            "{}/{}/{}/c{}/p{}/d{}",
            self.scenario,
            self.transport,
            self.engine,
            self.conns,
            opt(self.payload),
            opt(self.depth)
        );
        if let Some(r) = self.resumed {
            k.push_str(if r { "/resumed" } else { "/cold" });
        }
        if self.offered_rate.is_some() {
            k.push_str("/rate");
        }
        k
    }

    /// The group a row is compared within (same key without the engine).
    pub fn group(&self) -> String {
        self.key().replacen(&format!("/{}/", self.engine), "/*/", 1)
    }
}

impl Report {
    /// Reads a report (or baseline) file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let s =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&s).with_context(|| format!("parse {}", path.display()))
    }

    /// Writes it pretty-printed.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(d) = path.parent() {
            if !d.as_os_str().is_empty() {
                std::fs::create_dir_all(d)?;
            }
        }
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("write {}", path.display()))
    }
}

/// `git rev-parse HEAD`, or "unknown".
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Current UTC time as RFC 3339 (seconds).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// RFC 3339 UTC for Unix seconds.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Validates a JSON value against the subset of JSON Schema that `report.schema.json` uses
/// (`type` incl. type lists, `required`, `properties`, `items`, `minimum`). Returns every
/// violation found, as `path: problem`.
pub fn validate_schema(schema: &serde_json::Value, v: &serde_json::Value) -> Vec<String> {
    let mut errs = Vec::new();
    walk(schema, v, "$", &mut errs);
    errs
}

fn type_ok(t: &str, v: &serde_json::Value) -> bool {
    match t {
        "null" => v.is_null(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_u64() || v.is_i64(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        _ => false,
    }
}

fn walk(s: &serde_json::Value, v: &serde_json::Value, path: &str, errs: &mut Vec<String>) {
    if let Some(t) = s.get("type") {
        let ok = match t {
            serde_json::Value::String(t) => type_ok(t, v),
            serde_json::Value::Array(ts) => {
                ts.iter().filter_map(|t| t.as_str()).any(|t| type_ok(t, v))
            }
            _ => true,
        };
        if !ok {
            errs.push(format!("{path}: expected type {t}, got {v}"));
            return;
        }
    }
    if let (Some(min), Some(x)) = (s.get("minimum").and_then(|m| m.as_f64()), v.as_f64()) {
        if x < min {
            errs.push(format!("{path}: {x} below minimum {min}"));
        }
    }
    if let Some(obj) = v.as_object() {
        if let Some(req) = s.get("required").and_then(|r| r.as_array()) {
            for k in req.iter().filter_map(|k| k.as_str()) {
                if !obj.contains_key(k) {
                    errs.push(format!("{path}: missing required `{k}`"));
                }
            }
        }
        if let Some(props) = s.get("properties").and_then(|p| p.as_object()) {
            for (k, ps) in props {
                if let Some(x) = obj.get(k) {
                    walk(ps, x, &format!("{path}.{k}"), errs);
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            walk(items, x, &format!("{path}[{i}]"), errs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Report {
        Report {
            commit: "abc".into(),
            date: rfc3339(0),
            machine: Machine {
                cpus: 2,
                kernel: "6.18".into(),
            },
            limits: Limits {
                tls_open_seal_gbps: Some(16.0),
                loopback_tcp_gbps: None,
                tls_open_seal_gbps_by_provider: BTreeMap::new(),
            },
            results: vec![
                Row {
                    scenario: "small".into(),
                    transport: "tcp".into(),
                    engine: "tokio".into(),
                    conns: 64,
                    payload: Some(1024),
                    depth: Some(1),
                    frames_per_sec: Some(50_000.0),
                    p50_us: Some(900.0),
                    p95_us: Some(1500.0),
                    p99_us: Some(2000.0),
                    p999_us: Some(4000.0),
                    server_cpu_us_per_frame: Some(12.5),
                    ..Row::default()
                },
                Row {
                    scenario: "handshake".into(),
                    transport: "tls".into(),
                    engine: "tokio".into(),
                    conns: 8,
                    handshakes_per_sec: Some(900.0),
                    resumed: Some(true),
                    ..Row::default()
                },
            ],
        }
    }

    #[test]
    fn generated_report_conforms_to_schema() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(validate_schema(&schema, &v), Vec::<String>::new());
        // Every field the issue names is present in every row, null where it does not apply.
        let row = &v["results"][1];
        for k in [
            "scenario",
            "transport",
            "engine",
            "conns",
            "payload",
            "depth",
            "frames_per_sec",
            "gbps",
            "p50_us",
            "p95_us",
            "p99_us",
            "p999_us",
            "server_cpu_us_per_frame",
            "handshakes_per_sec",
            "resumed",
            "rss_per_conn_bytes",
        ] {
            assert!(row.get(k).is_some(), "missing {k}");
        }
        assert!(row["payload"].is_null());
        assert_eq!(v["limits"]["loopback_tcp_gbps"], serde_json::Value::Null);
    }

    #[test]
    fn schema_validator_catches_violations() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        let mut v = serde_json::to_value(sample()).unwrap();
        v["results"][0]["frames_per_sec"] = serde_json::json!("fast");
        v["machine"].as_object_mut().unwrap().remove("kernel");
        let errs = validate_schema(&schema, &v);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("frames_per_sec")));
        assert!(errs.iter().any(|e| e.contains("kernel")));
    }

    #[test]
    fn baselines_conform_to_schema() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("baselines");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                assert_eq!(
                    validate_schema(&schema, &v),
                    Vec::<String>::new(),
                    "{}",
                    p.display()
                );
                Report::load(&p).unwrap();
                n += 1;
            }
        }
        assert!(n >= 1, "no baseline under perf/baselines/");
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn row_keys_separate_shapes() {
        let r = sample();
        assert_eq!(r.results[0].key(), "small/tcp/tokio/c64/p1024/d1");
        assert_eq!(r.results[0].group(), "small/tcp/*/c64/p1024/d1");
        assert_eq!(r.results[1].key(), "handshake/tls/tokio/c8/p-/d-/resumed");
    }
}
