//! `ron-perf soak --duration D`: a bounded mixed load held for `D` against one `ron-perf serve`
//! process per (engine, transport), all running **concurrently** (pinned to the server cores),
//! while the rig samples each server's RSS (`VmRSS`) and open fds (`/proc/<pid>/fd`) every
//! `--sample-every` (default 10 s). Per server the load is: 8 connections echoing 1 KiB frames
//! at `--rate` frames/s in all (default 2,000), 2 connections echoing 64 KiB frames at
//! `rate / 100` frames/s, and connection churn (connect, 3 frames of 1 KiB, close) at
//! `--churn` connections/s (default 10). Writes the `soak` section (samples and a summary per
//! server: RSS over the second half vs its mean, fds at the end vs the baseline) into a report
//! JSON, and an SVG chart of both series beside it. Asserts nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, LoadSpec};
use crate::report;
use crate::run::{progress, spawn_server, ServerProc};
use crate::server::{EngineId, Transport};
use crate::{sys, tlsutil, wire};

/// Arguments of `ron-perf soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long the load runs, e.g. `90s`, `30m` (at most 1 h).
    #[arg(long, value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Sampling period of RSS and open fds.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub sample_every: Duration,
    /// Small (1 KiB) echo frames per second per server; 64 KiB frames run at rate/100.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Churned connections per second per server (connect, 3 frames, close).
    #[arg(long, default_value_t = 10.0)]
    pub churn: f64,
    #[arg(long, default_value = "tokio,uring")]
    pub engines: String,
    #[arg(long, default_value = "tcp,tls")]
    pub transports: String,
    #[arg(long, default_value = "0")]
    pub server_cores: String,
    #[arg(long, default_value = "1")]
    pub client_cores: String,
    /// Report path (default perf-out/soak-<date>.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Chart path (default: the report path with .svg).
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// One sample of one server.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Seconds since the load started (0 = the baseline, taken before it).
    pub t_s: f64,
    /// Server VmRSS, bytes.
    pub rss_bytes: u64,
    /// Server open file descriptors.
    pub open_fds: u64,
}

/// The summary of one server's samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// RSS of the baseline sample (before the load).
    pub rss_baseline_bytes: u64,
    /// RSS after the load stopped and its connections closed.
    pub rss_end_bytes: Option<u64>,
    /// Mean RSS of the samples in the second half of the load.
    pub rss_second_half_mean_bytes: Option<f64>,
    /// (min − mean) ÷ mean of the second half, percent (≤ 0).
    pub rss_second_half_min_pct: Option<f64>,
    /// (max − mean) ÷ mean of the second half, percent (≥ 0).
    pub rss_second_half_max_pct: Option<f64>,
    /// (last − first) ÷ mean of the second half, percent: growth while the load held steady.
    pub rss_second_half_drift_pct: Option<f64>,
    /// Open fds of the baseline sample.
    pub fds_baseline: u64,
    /// Most open fds seen.
    pub fds_peak: u64,
    /// Open fds after the load stopped and its connections closed.
    pub fds_end: Option<u64>,
    /// `fds_end − fds_baseline` (0 = nothing leaked).
    pub fds_end_minus_baseline: Option<i64>,
}

/// Summarises `samples` (the first is the baseline) of a load of `duration_s`, with the sample
/// taken after the load ended, if any.
pub fn summarize(samples: &[Sample], duration_s: f64, end: Option<&Sample>) -> Summary {
    let Some(first) = samples.first() else {
        return Summary::default();
    };
    let second: Vec<&Sample> = samples
        .iter()
        .skip(1)
        .filter(|s| s.t_s >= duration_s / 2.0)
        .collect();
    let mean = (!second.is_empty())
        .then(|| second.iter().map(|s| s.rss_bytes as f64).sum::<f64>() / second.len() as f64);
    let pct = |v: f64| mean.filter(|m| *m > 0.0).map(|m| (v - m) / m * 100.0);
    let min = second.iter().map(|s| s.rss_bytes).min();
    let max = second.iter().map(|s| s.rss_bytes).max();
    let drift = match (second.first(), second.last(), mean) {
        (Some(a), Some(b), Some(m)) if m > 0.0 => {
            Some((b.rss_bytes as f64 - a.rss_bytes as f64) / m * 100.0)
        }
        _ => None,
    };
    Summary {
        rss_baseline_bytes: first.rss_bytes,
        rss_end_bytes: end.map(|e| e.rss_bytes),
        rss_second_half_mean_bytes: mean,
        rss_second_half_min_pct: min.and_then(|v| pct(v as f64)),
        rss_second_half_max_pct: max.and_then(|v| pct(v as f64)),
        rss_second_half_drift_pct: drift,
        fds_baseline: first.open_fds,
        fds_peak: samples
            .iter()
            .chain(end)
            .map(|s| s.open_fds)
            .max()
            .unwrap_or(0),
        fds_end: end.map(|e| e.open_fds),
        fds_end_minus_baseline: end.map(|e| e.open_fds as i64 - first.open_fds as i64),
    }
}

/// What one server's load did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoadSummary {
    /// 1 KiB frames echoed.
    pub small_frames: u64,
    /// Their p99 round trip, µs.
    pub small_p99_us: Option<f64>,
    /// 64 KiB frames echoed.
    pub big_frames: u64,
    /// Churned connections completed (connect, 3 echoes, close).
    pub churn_cycles: u64,
    /// Errors (failed connections of the echo loads plus failed churn cycles).
    pub errors: u64,
    /// First error, if any.
    pub first_error: Option<String>,
}

/// One server of the soak.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SoakServer {
    /// Engine.
    pub engine: String,
    /// Transport.
    pub transport: String,
    /// Samples, every `sample_every_s`, the first one before the load.
    pub samples: Vec<Sample>,
    /// The sample after the load stopped (2 s later).
    pub end: Option<Sample>,
    /// Summary.
    pub summary: Summary,
    /// What the load did.
    pub load: LoadSummary,
}

/// The `soak` section of a report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SoakSection {
    /// Load duration, seconds.
    pub duration_s: f64,
    /// Sampling period, seconds.
    pub sample_every_s: f64,
    /// Small frames per second per server.
    pub rate: f64,
    /// Churned connections per second per server.
    pub churn_per_s: f64,
    /// Whether the servers ran at the same time (always true: one process per engine and
    /// transport, concurrently).
    pub concurrent: bool,
    /// One entry per server.
    pub servers: Vec<SoakServer>,
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> std::io::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

fn sample(pid: u32, t_s: f64) -> anyhow::Result<Sample> {
    Ok(Sample {
        t_s,
        rss_bytes: sys::rss_bytes(pid).with_context(|| format!("rss of {pid}"))?,
        open_fds: open_fds(pid).with_context(|| format!("fds of {pid}"))?,
    })
}

/// Runs `ron-perf soak`.
pub fn cmd_soak(a: SoakArgs) -> anyhow::Result<()> {
    let _ = sys::raise_nofile(1 << 20);
    if !(a.rate.is_finite() && a.rate > 0.0 && a.churn.is_finite() && a.churn >= 0.0) {
        return Err(anyhow!("--rate must be > 0 and --churn ≥ 0"));
    }
    let engines = crate::split_list(&a.engines, EngineId::parse)?;
    let transports = crate::split_list(&a.transports, Transport::parse)?;
    let server_cores = crate::parse_cores(&a.server_cores)?;
    let client_cores = crate::parse_cores(&a.client_cores)?;
    let date = report::now_rfc3339();
    let json = a.json.clone().unwrap_or_else(|| {
        PathBuf::from("perf-out").join(format!("soak-{}.json", date.replace(':', "")))
    });
    let dir = json
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let ss = tlsutil::SelfSigned::generate()?;
    let (cert, key) = ss.write_to(&dir.join("tls"))?;
    let tls_cfg = tlsutil::library_client_config(ss.cert_pem.as_bytes(), true)?;

    let mut servers: Vec<(EngineId, Transport, ServerProc)> = Vec::new();
    for &t in &transports {
        for &e in &engines {
            if !e.supports(t) || t == Transport::Uds {
                progress(&format!("soak: skip {} {}", e.name(), t.as_str()));
                continue;
            }
            if let Err(why) = e.available(t) {
                progress(&format!("soak: skip {} {}: {why}", e.name(), t.as_str()));
                continue;
            }
            let srv = spawn_server(
                e,
                t,
                (t == Transport::Tls).then_some((&cert, &key)),
                &server_cores,
                0,
                crate::server::framed::Flavour::default(),
            )?;
            servers.push((e, t, srv));
        }
    }
    if servers.is_empty() {
        return Err(anyhow!("soak: no server to run"));
    }
    progress(&format!(
        "soak: {} servers concurrently for {:?}, sampling every {:?}; per server {} small fps, {} big fps, {} churn/s",
        servers.len(),
        a.duration,
        a.sample_every,
        a.rate,
        (a.rate / 100.0).max(1.0),
        a.churn
    ));
    std::thread::sleep(Duration::from_millis(300));
    let mut samples: Vec<Vec<Sample>> = servers
        .iter()
        .map(|(_, _, s)| sample(s.pid, 0.0).map(|x| vec![x]))
        .collect::<anyhow::Result<_>>()?;

    // The loads, each on threads of its own (bounded by the duration).
    let stop = Arc::new(AtomicBool::new(false));
    let mut loads = Vec::new();
    for (_, t, srv) in &servers {
        let tls = (*t == Transport::Tls).then(|| tls_cfg.clone());
        let base = LoadSpec {
            target: srv.addr,
            uds: None,
            tls: tls.clone(),
            conns: 8,
            payload: 1024,
            depth: 1,
            rate: Some(a.rate),
            warmup: Duration::ZERO,
            duration: a.duration,
            cores: client_cores.clone(),
            server_pid: None,
            server_cores: Vec::new(),
            sources: Vec::new(),
            quic: false,
        };
        let big = LoadSpec {
            conns: 2,
            payload: 64 * 1024,
            rate: Some((a.rate / 100.0).max(1.0)),
            ..base.clone()
        };
        let small = std::thread::spawn(move || client::run_load(&base));
        let bigh = std::thread::spawn(move || client::run_load(&big));
        let churn = {
            let (target, stop, rate, core) = (
                srv.addr,
                stop.clone(),
                a.churn,
                client_cores.first().copied(),
            );
            std::thread::spawn(move || churn_loop(target, tls, rate, core, &stop))
        };
        loads.push((small, bigh, churn));
    }
    let started = Instant::now();
    let mut next = a.sample_every;
    while next <= a.duration {
        std::thread::sleep((started + next).saturating_duration_since(Instant::now()));
        let t_s = started.elapsed().as_secs_f64();
        for (i, (e, t, srv)) in servers.iter().enumerate() {
            match sample(srv.pid, t_s) {
                Ok(s) => {
                    samples[i].push(s);
                }
                Err(err) => progress(&format!(
                    "soak: sample {} {}: {err:#}",
                    e.name(),
                    t.as_str()
                )),
            }
        }
        let line: Vec<String> = servers
            .iter()
            .zip(&samples)
            .map(|((e, t, _), s)| {
                let last = s.last().expect("baseline sample");
                format!(
                    "{}/{} {} KiB {} fds",
                    e.name(),
                    t.as_str(),
                    last.rss_bytes / 1024,
                    last.open_fds
                )
            })
            .collect();
        progress(&format!("soak t={t_s:.0}s: {}", line.join(" | ")));
        next += a.sample_every;
    }
    std::thread::sleep((started + a.duration).saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    let mut summaries = Vec::new();
    for (small, big, churn) in loads {
        let mut ls = LoadSummary::default();
        let mut err = |e: String| {
            ls.errors += 1;
            ls.first_error.get_or_insert(e);
        };
        match small
            .join()
            .map_err(|_| anyhow!("panicked"))
            .and_then(|r| r)
        {
            Ok(r) => {
                ls.small_frames = r.frames;
                ls.small_p99_us = r.pct(0.99);
                for _ in 0..r.errors {
                    err(r.first_error.clone().unwrap_or_default());
                }
            }
            Err(e) => err(format!("small load: {e:#}")),
        }
        match big.join().map_err(|_| anyhow!("panicked")).and_then(|r| r) {
            Ok(r) => {
                ls.big_frames = r.frames;
                for _ in 0..r.errors {
                    err(r.first_error.clone().unwrap_or_default());
                }
            }
            Err(e) => err(format!("64 KiB load: {e:#}")),
        }
        match churn.join() {
            Ok((cycles, errors, first)) => {
                ls.churn_cycles = cycles;
                for _ in 0..errors {
                    err(first.clone().unwrap_or_default());
                }
            }
            Err(_) => err("churn thread panicked".to_owned()),
        }
        summaries.push(ls);
    }
    // Let the servers close what the load left, then the end sample.
    std::thread::sleep(Duration::from_secs(2));
    let dur_s = a.duration.as_secs_f64();
    let mut out = Vec::new();
    for (((e, t, srv), s), load) in servers.iter().zip(samples).zip(summaries) {
        let end = sample(srv.pid, started.elapsed().as_secs_f64()).ok();
        let summary = summarize(&s, dur_s, end.as_ref());
        out.push(SoakServer {
            engine: e.name().to_owned(),
            transport: t.as_str().to_owned(),
            samples: s,
            end,
            summary,
            load,
        });
    }
    drop(servers);
    let section = SoakSection {
        duration_s: dur_s,
        sample_every_s: a.sample_every.as_secs_f64(),
        rate: a.rate,
        churn_per_s: a.churn,
        concurrent: true,
        servers: out,
    };
    save(&json, &section, &date)?;
    let svg = a.svg.unwrap_or_else(|| json.with_extension("svg"));
    if let Err(e) = write_svg(&section, &report::git_commit(), &svg) {
        progress(&format!("soak chart: {e:#}"));
    }
    print!("{}", table(&section));
    progress(&format!("wrote {} and {}", json.display(), svg.display()));
    Ok(())
}

/// Connection churn: `rate` cycles per second, each connect (TLS if configured), 3 echoes of
/// 1 KiB, close; until `stop`. Returns (cycles, failed cycles, first error).
fn churn_loop(
    target: std::net::SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    rate: f64,
    core: Option<usize>,
    stop: &AtomicBool,
) -> (u64, u64, Option<String>) {
    if rate <= 0.0 {
        return (0, 0, None);
    }
    if let Some(c) = core {
        let _ = sys::pin_to(&[c]);
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return (0, 1, Some("runtime".to_owned()));
    };
    let period = Duration::from_secs_f64(1.0 / rate);
    let frame = wire::frame(1024);
    let errors = AtomicU64::new(0);
    let mut first = None;
    let mut cycles = 0;
    rt.block_on(async {
        let mut at = tokio::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let one = async {
                let mut s = client::connect(target, tls.as_ref()).await?;
                let mut back = vec![0u8; frame.len()];
                for _ in 0..3 {
                    s.write_all(&frame).await?;
                    s.flush().await?;
                    s.read_exact(&mut back).await?;
                    if back != frame {
                        return Err(anyhow!("echo differs"));
                    }
                }
                s.shutdown().await.ok();
                anyhow::Ok(())
            };
            match tokio::time::timeout(Duration::from_secs(10), one).await {
                Ok(Ok(())) => cycles += 1,
                Ok(Err(e)) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first.get_or_insert(format!("churn: {e:#}"));
                }
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first.get_or_insert("churn: cycle timed out".to_owned());
                }
            }
            at += period;
            let now = tokio::time::Instant::now();
            if at < now {
                at = now;
            }
            tokio::time::sleep_until(at).await;
        }
    });
    (cycles, errors.load(Ordering::Relaxed), first)
}

/// Writes `section` as the `soak` field of the report at `path` (a new report with no result
/// rows unless one is there already).
pub fn save(path: &Path, section: &SoakSection, date: &str) -> anyhow::Result<()> {
    let mut doc: serde_json::Value = match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?
        }
        Err(_) => serde_json::to_value(report::Report {
            commit: report::git_commit(),
            date: date.to_owned(),
            machine: report::Machine {
                cpus: sys::cpus(),
                kernel: sys::kernel(),
            },
            limits: report::Limits::default(),
            results: Vec::new(),
        })?,
    };
    doc.as_object_mut()
        .ok_or_else(|| anyhow!("{} is not a JSON object", path.display()))?
        .insert("soak".into(), serde_json::to_value(section)?);
    if let Some(d) = path.parent() {
        if !d.as_os_str().is_empty() {
            std::fs::create_dir_all(d)?;
        }
    }
    std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("write {}", path.display()))
}

/// The Markdown summary table.
pub fn table(s: &SoakSection) -> String {
    let o = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:+.1}"));
    let mut out = format!(
        "\n### soak ({:.0} s, {} servers concurrently, samples every {:.0} s)\n\n\
         | engine | transport | RSS base → 2nd-half mean KiB | 2nd half min / max vs mean % | 2nd half drift % | fds base / peak / end | small frames | 64 KiB frames | churn | errors |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        s.duration_s,
        s.servers.len(),
        s.sample_every_s
    );
    for v in &s.servers {
        let m = &v.summary;
        out.push_str(&format!(
            "| {} | {} | {} → {} | {} / {} | {} | {} / {} / {} | {} | {} | {} | {} |\n",
            v.engine,
            v.transport,
            m.rss_baseline_bytes / 1024,
            m.rss_second_half_mean_bytes
                .map_or("-".to_owned(), |x| format!("{:.0}", x / 1024.0)),
            o(m.rss_second_half_min_pct),
            o(m.rss_second_half_max_pct),
            o(m.rss_second_half_drift_pct),
            m.fds_baseline,
            m.fds_peak,
            m.fds_end.map_or("-".to_owned(), |x| x.to_string()),
            v.load.small_frames,
            v.load.big_frames,
            v.load.churn_cycles,
            v.load.errors
        ));
    }
    out
}

/// An SVG chart: server RSS (MiB) and open fds over time, one line per server.
pub fn write_svg(s: &SoakSection, commit: &str, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    if s.servers.is_empty() {
        return Err(anyhow!("no soak servers to chart"));
    }
    let tmax = s
        .servers
        .iter()
        .flat_map(|v| v.samples.iter().chain(v.end.iter()))
        .map(|x| x.t_s)
        .fold(1.0f64, f64::max);
    let root = SVGBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let (top, bottom) = root.split_vertically(450);
    type Pick = fn(&Sample) -> f64;
    let panels: [(
        &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
        &str,
        &str,
        Pick,
    ); 2] = [
        (&top, "server RSS over time", "RSS MiB", |x| {
            x.rss_bytes as f64 / (1024.0 * 1024.0)
        }),
        (&bottom, "server open fds over time", "open fds", |x| {
            x.open_fds as f64
        }),
    ];
    for (area, title, ydesc, pick) in panels {
        let ymax = s
            .servers
            .iter()
            .flat_map(|v| v.samples.iter().chain(v.end.iter()))
            .map(pick)
            .fold(1.0f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "ron-perf {} · soak {:.0} s · {title}",
                    &commit[..commit.len().min(10)],
                    s.duration_s
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..tmax, 0f64..ymax)
            .map_err(|e| anyhow!("{e:?}"))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(ydesc)
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
        for (i, v) in s.servers.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = v
                .samples
                .iter()
                .chain(v.end.iter())
                .map(|x| (x.t_s, pick(x)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| anyhow!("{e:?}"))?
                .label(format!("{} {}", v.engine, v.transport))
                .legend(crate::chart::legend_box(color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t_s: f64, rss: u64, fds: u64) -> Sample {
        Sample {
            t_s,
            rss_bytes: rss,
            open_fds: fds,
        }
    }

    #[test]
    fn summary_of_the_second_half() {
        // Baseline at 0, load 0..100 s, samples every 10 s.
        let v = vec![
            s(0.0, 1000, 10),
            s(10.0, 5000, 40),
            s(40.0, 6000, 40),
            s(50.0, 900, 41), // second half starts at 50 s: 900, 1100, 1000 → mean 1000
            s(70.0, 1100, 40),
            s(100.0, 1000, 39),
        ];
        let end = s(102.0, 1200, 10);
        let m = summarize(&v, 100.0, Some(&end));
        assert_eq!(m.rss_baseline_bytes, 1000);
        assert_eq!(m.rss_second_half_mean_bytes, Some(1000.0));
        assert_eq!(m.rss_second_half_min_pct, Some(-10.0));
        assert_eq!(m.rss_second_half_max_pct, Some(10.0));
        assert_eq!(m.rss_second_half_drift_pct, Some(10.0));
        assert_eq!(m.fds_baseline, 10);
        assert_eq!(m.fds_peak, 41);
        assert_eq!(m.fds_end, Some(10));
        assert_eq!(m.fds_end_minus_baseline, Some(0));
        assert_eq!(m.rss_end_bytes, Some(1200));
        // A leak shows in the fds delta.
        let m = summarize(&v, 100.0, Some(&s(102.0, 1200, 25)));
        assert_eq!(m.fds_end_minus_baseline, Some(15));
    }

    #[test]
    fn summary_without_second_half_samples() {
        let m = summarize(&[s(0.0, 1000, 10)], 30.0, None);
        assert_eq!(m.rss_second_half_mean_bytes, None);
        assert_eq!(m.rss_second_half_min_pct, None);
        assert_eq!(m.rss_second_half_drift_pct, None);
        assert_eq!(m.fds_end, None);
        assert_eq!(summarize(&[], 30.0, None), Summary::default());
    }

    #[test]
    fn open_fds_of_this_process() {
        let n0 = open_fds(std::process::id()).unwrap();
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(open_fds(std::process::id()).unwrap() > n0);
        drop(f);
    }

    #[test]
    fn section_conforms_to_the_schema_and_charts() {
        let v = vec![
            s(0.0, 1 << 20, 10),
            s(10.0, 2 << 20, 30),
            s(20.0, 2 << 20, 30),
        ];
        let end = s(22.0, 2 << 20, 10);
        let sec = SoakSection {
            duration_s: 20.0,
            sample_every_s: 10.0,
            rate: 2000.0,
            churn_per_s: 10.0,
            concurrent: true,
            servers: vec![SoakServer {
                engine: "tokio".into(),
                transport: "tcp".into(),
                summary: summarize(&v, 20.0, Some(&end)),
                samples: v,
                end: Some(end),
                load: LoadSummary::default(),
            }],
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("soak.json");
        save(&p, &sec, "2026-12-06T00:00:00Z").unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let schema: serde_json::Value = serde_json::from_str(report::SCHEMA).unwrap();
        assert_eq!(report::validate_schema(&schema, &doc), Vec::<String>::new());
        assert_eq!(doc["soak"]["servers"][0]["samples"][1]["t_s"], 10.0);
        assert_eq!(doc["soak"]["servers"][0]["samples"][1]["open_fds"], 30);
        assert_eq!(
            doc["soak"]["servers"][0]["summary"]["fds_end_minus_baseline"],
            0
        );
        let mut bad = doc.clone();
        bad["soak"]["servers"][0]["samples"][0]
            .as_object_mut()
            .unwrap()
            .remove("rss_bytes");
        assert!(!report::validate_schema(&schema, &bad).is_empty());
        let svg = dir.path().join("soak.svg");
        write_svg(&sec, "abc", &svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.contains("tokio tcp"));
        assert!(table(&sec).contains("| tokio | tcp |"));
    }
}
