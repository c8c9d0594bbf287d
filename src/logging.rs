//! Structured logs (spec/OBSERVABILITY §3): a `tracing` subscriber for binaries and tests that
//! writes one JSON object per line with the contract keys — `ts` (RFC 3339, UTC), `level`,
//! `crate` (`"ron-transport"` for this crate's events), `target`, then every event field
//! flattened (`event`, `backend`, `conn_id`, `corr_id`, `reason`, `peer_addr`, `duration_ms`,
//! `bytes`…) and `message` — or human-readable text.
//!
//! The engines emit events with target `ron_transport`; this module only formats them. It never
//! adds payloads or secrets: what is logged is what the call sites pass, and they pass none.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::ConfigError;

/// Output format of the log subscriber (`log.format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// JSON lines (the default; machine-parsed).
    Json,
    /// Human-readable text.
    Text,
}

impl LogFormat {
    /// Parses `"json"` or `"text"`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(ConfigError::Parse {
                key: "log.format".into(),
                value: other.into(),
                reason: "expected `json` or `text`".into(),
            }),
        }
    }
}

/// Installs the process-wide subscriber writing to stderr through a non-blocking writer
/// ([`crate::log_writer::NonBlocking`]: a full queue drops lines, counted, instead of blocking
/// the logging thread). `level` is an `EnvFilter` directive (`"info"`,
/// `"ron_transport=debug"`…). Fails if the directive is invalid or a global subscriber is
/// already installed.
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), ConfigError> {
    let writer = crate::log_writer::NonBlocking::new(
        std::io::stderr(),
        crate::log_writer::DEFAULT_QUEUE_LINES,
    )
    .map_err(|e| ConfigError::Invalid {
        key: "log.format",
        reason: format!("cannot start the log writer thread: {e}"),
    })?;
    let sub = subscriber(format, level, writer)?;
    tracing::subscriber::set_global_default(sub).map_err(|e| ConfigError::Invalid {
        key: "log.format",
        reason: format!("a global subscriber is already installed: {e}"),
    })
}

/// A subscriber writing to `writer` (tests capture logs with an in-memory writer).
pub fn subscriber<W>(
    format: LogFormat,
    level: &str,
    writer: W,
) -> Result<Box<dyn Subscriber + Send + Sync>, ConfigError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(level).map_err(|e| ConfigError::Parse {
        key: "log.level".into(),
        value: level.into(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    Ok(match format {
        LogFormat::Json => Box::new(builder.event_format(JsonLines).finish()),
        LogFormat::Text => Box::new(builder.with_ansi(false).finish()),
    })
}

/// The JSON-lines event formatter.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut obj = Map::new();
        obj.insert("ts".into(), Value::String(rfc3339_now()));
        obj.insert("level".into(), Value::String(meta.level().to_string()));
        if meta.target().starts_with("ron_transport") {
            obj.insert("crate".into(), Value::String("ron-transport".into()));
        }
        obj.insert("target".into(), Value::String(meta.target().to_string()));
        event.record(&mut JsonVisitor(&mut obj));
        let line = serde_json::to_string(&obj).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) — H. Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_759_073_482, 481), "2025-09-28T15:31:22.481Z");
    }

    #[test]
    fn formats() {
        assert_eq!(LogFormat::parse("json").unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::parse("text").unwrap(), LogFormat::Text);
        assert!(LogFormat::parse("xml").is_err());
        assert!(subscriber(LogFormat::Json, "info", std::io::sink).is_ok());
    }
}
