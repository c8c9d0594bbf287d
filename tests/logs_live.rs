//! `log.level` and `log.format` are live keys (spec/CONFIG.md §3): a `ConfigHandle::reload`
//! reaches the installed subscriber through `LogReloader::follow`. One test (it installs the
//! process-wide subscriber): at `info` a debug event is not written; after a reload to `debug`
//! it is, from any thread; after a reload to `format = "text"` lines are no longer JSON; an
//! unchanged reload and a rejected candidate change nothing.

mod util;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use ron_transport::logging::{reloadable_subscriber, LogFormat};
use ron_transport::{Config, ConfigHandle};

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SharedBuf {
    type Writer = SharedBuf;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl SharedBuf {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Emits one probe at `debug` and one at `info`, tagged `step`, from a fresh OS thread (the
/// reload must reach every thread, not only the one that reloaded).
fn emit(step: u64) {
    std::thread::spawn(move || {
        tracing::debug!(target: "ron_transport", event = "probe", step, "debug probe");
        tracing::info!(target: "ron_transport", event = "probe", step, "info probe");
    })
    .join()
    .unwrap();
}

/// JSON probe lines of `step` as (level, message).
fn json_probes(buf: &SharedBuf, step: u64) -> Vec<(String, String)> {
    buf.lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "probe" && v["step"] == step)
        .map(|v| {
            (
                v["level"].as_str().unwrap().to_owned(),
                v["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn wait_applied(buf: &SharedBuf, what: &str, count: usize) {
    util::wait_until(what, Duration::from_secs(5), || {
        buf.lines()
            .iter()
            .filter(|l| l.contains("log configuration applied"))
            .count()
            >= count
    })
    .await;
}

#[test]
fn level_and_format_follow_config_reload() {
    util::run_multi_thread(async {
        let buf = SharedBuf::default();
        let mut cfg = Config::default();
        assert_eq!(
            (cfg.log_level.as_str(), cfg.log_format.as_str()),
            ("info", "json")
        );
        let (sub, reloader) = reloadable_subscriber(LogFormat::Json, "info", buf.clone()).unwrap();
        tracing::subscriber::set_global_default(sub).unwrap();
        let handle = ConfigHandle::new(cfg.clone().validate().unwrap());
        let follower = tokio::spawn(reloader.follow(&handle));

        // info: the debug probe is filtered out.
        emit(1);
        assert_eq!(
            json_probes(&buf, 1),
            [("INFO".to_owned(), "info probe".to_owned())]
        );

        // Reload log.level = debug: both probes, still JSON.
        cfg.log_level = "debug".into();
        let report = handle.reload(cfg.clone()).unwrap();
        assert_eq!(report.live_keys(), ["log.level"]);
        wait_applied(&buf, "level reload applied", 1).await;
        emit(2);
        assert_eq!(
            json_probes(&buf, 2),
            [
                ("DEBUG".to_owned(), "debug probe".to_owned()),
                ("INFO".to_owned(), "info probe".to_owned())
            ]
        );

        // Reload log.format = text: the same events, now as text lines (not JSON).
        cfg.log_format = "text".into();
        handle.reload(cfg.clone()).unwrap();
        wait_applied(&buf, "format reload applied", 2).await;
        emit(3);
        let text: Vec<String> = buf
            .lines()
            .into_iter()
            .filter(|l| l.contains("probe") && l.contains("step=3"))
            .collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].contains("DEBUG") && text[0].contains("debug probe"),
            "{text:?}"
        );
        assert!(
            text[1].contains("INFO") && text[1].contains("info probe"),
            "{text:?}"
        );
        assert!(text
            .iter()
            .all(|l| serde_json::from_str::<Value>(l).is_err()));
        assert!(json_probes(&buf, 3).is_empty());

        // Back to warn + json: neither probe passes the filter.
        cfg.log_level = "warn".into();
        cfg.log_format = "json".into();
        handle.reload(cfg.clone()).unwrap();
        // The "applied" line is info, below warn: wait for the filter to take effect instead.
        util::wait_until("warn applied", Duration::from_secs(5), || {
            tracing::info!(target: "ron_transport", event = "probe", step = 99u64, "sentinel");
            tracing::warn!(target: "ron_transport", event = "probe", step = 98u64, "sentinel");
            !json_probes(&buf, 98).is_empty()
        })
        .await;
        let before = buf.lines().len();
        emit(4);
        assert!(json_probes(&buf, 4).is_empty());
        assert_eq!(buf.lines().len(), before, "nothing below warn is written");

        // A rejected candidate (invalid level) changes nothing.
        let mut bad = cfg.clone();
        bad.log_level = "loud".into();
        assert!(handle.reload(bad).is_err());
        emit(5);
        assert!(json_probes(&buf, 5).is_empty());

        drop(handle);
        util::within(
            "follower ends with the handle",
            Duration::from_secs(5),
            follower,
        )
        .await
        .unwrap();
    });
}
