//! Structured logs (spec/OBSERVABILITY §3): a `tracing` subscriber for binaries and tests that
//! writes one JSON object per line with the contract keys — `ts` (RFC 3339, UTC), `level`,
//! `crate` (`"ron-transport"` for this crate's events), `target`, then every event field
//! flattened (`event`, `backend`, `conn_id`, `corr_id`, `reason`, `peer_addr`, `duration_ms`,
//! `bytes`…) and `message` — or human-readable text.
//!
//! The engines emit events with target `ron_transport`; this module only formats them. It never
//! adds payloads or secrets: what is logged is what the call sites pass, and they pass none.
//!
//! `log.level` and `log.format` are live keys: [`reloadable_subscriber`] /
//! [`init_logging_reloadable`] return a [`LogReloader`] whose [`LogReloader::follow`] applies
//! every snapshot a [`ConfigHandle`] swaps in (a `tracing_subscriber::reload` layer for the level
//! filter and one for the format layer).

use std::fmt;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Layer, Layered, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{Config, ConfigError, ConfigHandle, ValidConfig};

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

// ---------------------------------------------------------------------------------------------
// Live reload: `log.level` and `log.format` follow `ConfigHandle` (spec/CONFIG.md §3: both live)
// ---------------------------------------------------------------------------------------------

/// The subscriber stack below the format layer: the registry under a reloadable level filter.
type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
/// The format layer (JSON lines or text), boxed so a reload can swap one for the other.
type FmtLayer = Box<dyn Layer<Filtered> + Send + Sync>;

/// Builds a format layer for a [`LogFormat`] (holds the writer).
type MakeFmt = Box<dyn Fn(LogFormat) -> FmtLayer + Send + Sync>;

/// Applies `log.level` / `log.format` to a running subscriber built by
/// [`reloadable_subscriber`] (or installed by [`init_logging_reloadable`]).
///
/// [`LogReloader::apply`] swaps the level filter and, when the format changed, the format layer
/// (same writer); events emitted after it returns use the new settings on every thread.
/// [`LogReloader::follow`] does that for every snapshot a [`ConfigHandle`] swaps in.
pub struct LogReloader {
    filter: reload::Handle<EnvFilter, Registry>,
    fmt: reload::Handle<FmtLayer, Filtered>,
    make_fmt: MakeFmt,
    current: Mutex<(LogFormat, String)>,
}

impl fmt::Debug for LogReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("LogReloader")
            .field("format", &current.0)
            .field("level", &current.1)
            .finish_non_exhaustive()
    }
}

/// A subscriber writing to `writer` whose level and format can change at run time through the
/// returned [`LogReloader`]. `level` is an `EnvFilter` directive as for [`subscriber`].
pub fn reloadable_subscriber<W>(
    format: LogFormat,
    level: &str,
    writer: W,
) -> Result<(Box<dyn Subscriber + Send + Sync>, LogReloader), ConfigError>
where
    W: for<'w> MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    let (filter, filter_handle) = reload::Layer::new(env_filter(level)?);
    let make_fmt: MakeFmt = Box::new(move |format| fmt_layer(format, writer.clone()));
    let (fmt_layer, fmt_handle) = reload::Layer::new(make_fmt(format));
    let sub = Registry::default().with(filter).with(fmt_layer);
    let reloader = LogReloader {
        filter: filter_handle,
        fmt: fmt_handle,
        make_fmt,
        current: Mutex::new((format, level.to_owned())),
    };
    Ok((Box::new(sub), reloader))
}

/// Installs the process-wide subscriber writing to stderr with `log.format` / `log.level` of
/// `cfg`, and returns the [`LogReloader`] that changes them later (usually
/// `tokio::spawn(reloader.follow(&handle))`). Fails like [`init_logging`].
pub fn init_logging_reloadable(cfg: &ValidConfig) -> Result<LogReloader, ConfigError> {
    let format = LogFormat::parse(&cfg.log_format)?;
    let (sub, reloader) = reloadable_subscriber(format, &cfg.log_level, std::io::stderr)?;
    tracing::subscriber::set_global_default(sub).map_err(|e| ConfigError::Invalid {
        key: "log.format",
        reason: format!("a global subscriber is already installed: {e}"),
    })?;
    Ok(reloader)
}

impl LogReloader {
    /// Applies `log.format` and `log.level` of `cfg`. Returns whether anything changed (an
    /// unchanged pair touches nothing). On a change it logs one `event="log_reload"` line (at
    /// `info`, after the switch, so it obeys the new settings).
    pub fn apply(&self, cfg: &Config) -> Result<bool, ConfigError> {
        self.set(LogFormat::parse(&cfg.log_format)?, &cfg.log_level)
    }

    /// Sets the format and the level directive (an `EnvFilter` directive, as for
    /// [`subscriber`]). Returns whether anything changed; an invalid directive changes nothing.
    pub fn set(&self, format: LogFormat, level: &str) -> Result<bool, ConfigError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.0 == format && current.1 == level {
            return Ok(false);
        }
        let filter = env_filter(level)?;
        if current.1 != level {
            self.filter.reload(filter).map_err(reload_gone)?;
        }
        if current.0 != format {
            self.fmt
                .reload((self.make_fmt)(format))
                .map_err(reload_gone)?;
        }
        *current = (format, level.to_owned());
        drop(current);
        tracing::info!(
            target: "ron_transport",
            event = "log_reload",
            level,
            format = ?format,
            "log configuration applied"
        );
        Ok(true)
    }

    /// Applies the handle's current snapshot, then every snapshot it swaps in, until every
    /// clone of the handle is dropped. An invalid level (which validation already refuses) is
    /// logged and skipped. Spawn it on the consumer's runtime.
    pub fn follow(self, handle: &ConfigHandle) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = handle.subscribe();
        async move {
            loop {
                let snapshot = rx.borrow_and_update().clone();
                if let Err(e) = self.apply(snapshot.config()) {
                    tracing::error!(
                        target: "ron_transport",
                        event = "log_reload",
                        key = e.key().unwrap_or(""),
                        error = %e,
                        "log configuration not applied"
                    );
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

fn env_filter(level: &str) -> Result<EnvFilter, ConfigError> {
    EnvFilter::try_new(level).map_err(|e| ConfigError::Parse {
        key: "log.level".into(),
        value: level.into(),
        reason: e.to_string(),
    })
}

fn fmt_layer<W>(format: LogFormat, writer: W) -> FmtLayer
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Json => Box::new(layer.event_format(JsonLines)),
        LogFormat::Text => Box::new(layer.with_ansi(false)),
    }
}

/// The subscriber the handles point into was dropped (never installed, or replaced).
fn reload_gone(e: reload::Error) -> ConfigError {
    ConfigError::Invalid {
        key: "log.level",
        reason: format!("the reloadable subscriber is gone: {e}"),
    }
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
