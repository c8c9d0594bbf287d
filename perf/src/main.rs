//! `ron-perf`: the perf-lab rig of ron-transport (spec/PERFORMANCE.md §1.3, §2, §5).
//!
//! With no arguments it runs the quick suite on loopback (self-signed certificate generated on
//! the fly), shows progress on stderr, prints a Markdown table and writes
//! `perf-out/report-<date>.json` plus an SVG chart beside it. Subcommands: `serve` (echo
//! server of one engine), `load` (the load client), `run` (the suite), `check` (regression
//! gates), `chart` and `table` (render a report), `faults` (cancellation latency under
//! injected faults), `soak` (RSS and open fds of the servers under a long mixed load). The
//! suite's flags also work without `run` (`ron-perf --scenarios abuse`). See `docs/perf.md`.

#![deny(unsafe_code)]

mod abuse;
mod chart;
mod check;
mod client;
mod faults;
mod limits;
mod relay;
mod report;
mod run;
mod server;
mod soak;
mod sys;
mod table;
mod tlsutil;
mod wan;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};

use crate::run::{RunOpts, Scenario};
use crate::server::{EngineId, ServeOpts, Transport};

#[derive(Debug, Parser)]
#[command(
    name = "ron-perf",
    version,
    about = "Perf-lab rig for ron-transport",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Without a subcommand: the suite (`run`) with these flags.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Echo server of one engine (frames: u32 BE length + bytes; each echoed back whole).
    Serve {
        #[arg(long, default_value = "tokio")]
        engine: String,
        #[arg(long, default_value = "tcp")]
        transport: String,
        /// Address, or the socket path with `--transport uds` (parent directory 0700;
        /// `RON_TRANSPORT_UDS_ALLOW_UIDS` is honoured for the tokio and uring engines).
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: String,
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
        /// Threads / shards (default: one per pinned core).
        #[arg(long, default_value_t = 0)]
        shards: usize,
        /// Cores to pin the server to, e.g. `0` or `0,1` (empty = no pinning).
        #[arg(long, default_value = "")]
        cores: String,
        /// tokio runtime flavour of `tokio-framed` (current-thread|multi-thread).
        #[arg(long, default_value = "current-thread")]
        flavour: String,
    },
    /// Load client against a running echo server.
    Load(LoadArgs),
    /// The suite: servers and clients started here, one engine after another.
    Run(RunArgs),
    /// Regression gates (spec/PERFORMANCE.md §5): median of the reports vs a baseline.
    Check {
        #[arg(long)]
        baseline: PathBuf,
        /// Report files (give 3 for the median of 3).
        #[arg(long, num_args = 1.., required = true)]
        report: Vec<PathBuf>,
        /// Widen every gate by this many percent (the §5 noise waiver).
        #[arg(long, default_value_t = 0.0)]
        widen_pct: f64,
    },
    /// SVG chart of a report.
    Chart {
        #[arg(long)]
        report: PathBuf,
        #[arg(long)]
        svg: PathBuf,
    },
    /// Print a report as the Markdown table.
    Table {
        #[arg(long)]
        report: PathBuf,
    },
    /// Cancellation latency and quiesce time of the tokio and uring engines under a
    /// fault-injecting relay, against the spec's 100 ms (report field `faults`).
    Faults(faults::FaultsArgs),
    /// RSS and open fds of one server per engine and transport (all at once) under a bounded
    /// mixed load (small and 64 KiB echo, connection churn), sampled every `--sample-every`.
    Soak(soak::SoakArgs),
}

/// The default engine list of the suite (tokio-framed first: the baseline of the ratios and of
/// the fixed-rate variant).
const DEFAULT_ENGINES: &str =
    "tokio-framed,tokio,uring,uring-raw,monoio,tokio-uring,bare-uring,quinn";

#[derive(Debug, clap::Args, Default)]
struct RunArgs {
    /// Scenarios: small,pipelined,stream,handshake,idle (the default), abuse (run on its
    /// own: `--scenarios abuse`; attacks the tokio and uring engines, see `--attacks`) and wan
    /// (tls and quic on tokio and uring, through the impairment relay; `--wan-*`).
    #[arg(long, default_value = "small,pipelined,stream,handshake,idle")]
    scenarios: String,
    /// wan (run on its own: `--scenarios wan`): loss of the impairment relay, 0 to 0.05.
    #[arg(long, default_value_t = 0.02)]
    wan_loss: f64,
    /// wan: round-trip time the relay adds (each direction gets half).
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    wan_rtt: Duration,
    /// wan: share of datagrams the relay holds back 5 ms (reordering; UDP only).
    #[arg(long, default_value_t = 0.01)]
    wan_reorder: f64,
    /// wan: connections, each with one 16 KiB frame in flight.
    #[arg(long, default_value_t = 4)]
    wan_conns: usize,
    /// wan: `quic.congestion` of the QUIC rows (cubic|bbr|newreno).
    #[arg(long, default_value = "cubic")]
    wan_congestion: String,
    /// wan: relay RNG seed.
    #[arg(long, default_value_t = 0x5eed)]
    wan_seed: u64,
    /// abuse: the attacks to run.
    #[arg(long, default_value = "slowloris,hot_peer,non_reader,handshake_flood")]
    attacks: String,
    /// abuse: `rates.per_peer_bytes_per_sec` of the attacked servers (bytes/s).
    #[arg(long, default_value_t = 4 << 20)]
    peer_bps: u64,
    /// abuse: tiny attacks and windows (a smoke run of the machinery, not a measurement).
    #[arg(long)]
    abuse_tiny: bool,
    #[arg(long, default_value = "tcp,tls")]
    transports: String,
    #[arg(
        long,
        default_value = DEFAULT_ENGINES
    )]
    engines: String,
    /// Window per row (default 2s quick, 10s with --full).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Full sizes: 10,000 idle connections, longer windows, 4 KiB pipelined.
    #[arg(long)]
    full: bool,
    /// Report path (default perf-out/report-<date>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Chart path (default: the report path with .svg).
    #[arg(long)]
    svg: Option<PathBuf>,
    #[arg(long, default_value = "0")]
    server_cores: String,
    #[arg(long, default_value = "1")]
    client_cores: String,
    /// Server shards (0 = one per server core).
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// tokio runtime flavour of `tokio-framed` (current-thread|multi-thread).
    #[arg(long, default_value = "current-thread")]
    framed_flavour: String,
}

/// Parses `500ms`, `3s`, `2m` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?}"))?;
    if !(v.is_finite() && v > 0.0 && v * mul <= 3600.0) {
        return Err(format!("duration {s:?} must be in (0, 1h]"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

/// Parses `0`, `0,1` or `2-3`; empty = none. Cores beyond the machine are dropped with a note.
fn parse_cores(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (usize, usize) = (a.parse()?, b.parse()?);
            out.extend(a..=b);
        } else {
            out.push(part.parse()?);
        }
    }
    Ok(out)
}

fn split_list<T>(s: &str, f: impl Fn(&str) -> anyhow::Result<T>) -> anyhow::Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(f)
        .collect()
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        None => cmd_run(cli.run),
        Some(Cmd::Serve {
            engine,
            transport,
            listen,
            cert,
            key,
            shards,
            cores,
            flavour,
        }) => (|| {
            let transport = Transport::parse(&transport)?;
            let (listen, uds) = if transport == Transport::Uds {
                ("127.0.0.1:0".parse()?, Some(PathBuf::from(&listen)))
            } else {
                (
                    listen
                        .parse::<SocketAddr>()
                        .with_context(|| format!("--listen {listen:?}"))?,
                    None,
                )
            };
            server::serve(ServeOpts {
                flavour: server::framed::Flavour::parse(&flavour)?,
                engine: EngineId::parse(&engine)?,
                transport,
                listen,
                uds,
                cert,
                key,
                shards,
                cores: parse_cores(&cores)?,
            })
        })(),
        Some(Cmd::Load(a)) => cmd_load(a),
        Some(Cmd::Run(a)) => cmd_run(a),
        Some(Cmd::Check {
            baseline,
            report,
            widen_pct,
        }) => cmd_check(&baseline, &report, widen_pct),
        Some(Cmd::Chart { report, svg }) => (|| {
            chart::write_svg(&report::Report::load(&report)?, &svg)?;
            eprintln!("wrote {}", svg.display());
            Ok(())
        })(),
        Some(Cmd::Table { report }) => (|| {
            print!("{}", table::render(&report::Report::load(&report)?));
            Ok(())
        })(),
        Some(Cmd::Faults(a)) => faults::cmd_faults(a),
        Some(Cmd::Soak(a)) => soak::cmd_soak(a),
    };
    if let Err(e) = r {
        eprintln!("ron-perf: {e:#}");
        std::process::exit(2);
    }
}

/// Arguments of `ron-perf load`.
#[derive(Debug, clap::Args)]
struct LoadArgs {
    #[arg(long, default_value = "127.0.0.1:7878")]
    target: SocketAddr,
    /// Socket path to load (with `--transport uds`), instead of `--target`.
    #[arg(long)]
    uds: Option<PathBuf>,
    #[arg(long, default_value = "tcp")]
    transport: String,
    #[arg(long, default_value_t = 64)]
    conns: usize,
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Frames in flight per connection.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Fixed offered rate over all connections (frames/s).
    #[arg(long)]
    rate: Option<f64>,
    /// CA certificate PEM for TLS.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// `echo` (closed loop) or `stream` (64 KiB frames, 4 in flight, unless overridden).
    #[arg(long, default_value = "echo")]
    mode: String,
    #[arg(long, default_value = "1")]
    client_cores: String,
    /// Server pid, to report its CPU per frame.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Engine label for the JSON row.
    #[arg(long, default_value = "external")]
    engine_label: String,
    /// Write a report with this row.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn cmd_load(a: LoadArgs) -> anyhow::Result<()> {
    let t = Transport::parse(&a.transport)?;
    let tls = match (t, &a.ca) {
        (Transport::Tls | Transport::Quic, Some(ca)) => {
            let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
            Some(tlsutil::library_client_config(&pem, true)?)
        }
        (Transport::Tls | Transport::Quic, None) => {
            bail!("--transport tls|quic needs --ca PEM (the server prints its cert path)")
        }
        (Transport::Tcp | Transport::Uds, _) => None,
    };
    if t == Transport::Uds && a.uds.is_none() {
        bail!("--transport uds needs --uds PATH");
    }
    let (scenario, payload, depth) = match a.mode.as_str() {
        "echo" => (
            if a.depth > 1 {
                Scenario::Pipelined
            } else {
                Scenario::Small
            },
            a.payload,
            a.depth,
        ),
        "stream" => (
            Scenario::Stream,
            if a.payload == 1024 {
                64 * 1024
            } else {
                a.payload
            },
            if a.depth == 1 { 4 } else { a.depth },
        ),
        m => bail!("unknown mode {m:?} (echo|stream)"),
    };
    if payload > wire::MAX_PAYLOAD {
        bail!("payload above {} bytes", wire::MAX_PAYLOAD);
    }
    let _ = sys::raise_nofile(1 << 20);
    let spec = client::LoadSpec {
        target: a.target,
        uds: a.uds.clone(),
        tls: tls.map(|c: Arc<rustls::ClientConfig>| c),
        conns: a.conns.max(1),
        payload,
        depth: depth.max(1),
        rate: a.rate,
        warmup: a.warmup,
        duration: a.duration,
        cores: parse_cores(&a.client_cores)?,
        server_pid: a.server_pid,
        server_cores: Vec::new(),
        sources: Vec::new(),
        quic: t == Transport::Quic,
    };
    let r = client::run_load(&spec)?;
    let mut row = run::load_row(scenario, t, &a.engine_label, &spec, &r);
    // The server's core count is unknown here: one is assumed.
    row.flag = run::flag_of(&row, spec.cores.len().max(1), 1).map(str::to_owned);
    if let Some(f) = &row.flag {
        eprintln!("flag: {f}");
    }
    println!("{}", serde_json::to_string_pretty(&row)?);
    if r.errors > 0 {
        eprintln!(
            "{} connection errors; first: {}",
            r.errors,
            r.first_error.unwrap_or_default()
        );
    }
    if let Some(p) = a.json {
        report::Report {
            commit: report::git_commit(),
            date: report::now_rfc3339(),
            machine: report::Machine {
                cpus: sys::cpus(),
                kernel: sys::kernel(),
            },
            limits: report::Limits::default(),
            results: vec![row],
        }
        .save(&p)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn cmd_run(a: RunArgs) -> anyhow::Result<()> {
    let duration = a.duration.unwrap_or(if a.full {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(2)
    });
    let warmup = (duration / 4).min(Duration::from_secs(1));
    let ncpu = sys::cpus();
    let keep = |v: Vec<usize>, what: &str| -> Vec<usize> {
        let (ok, bad): (Vec<_>, Vec<_>) = v.into_iter().partition(|c| *c < ncpu);
        if !bad.is_empty() {
            eprintln!("[ron-perf] note: {what} cores {bad:?} do not exist here; ignored");
        }
        ok
    };
    let server_cores = keep(parse_cores(&a.server_cores)?, "server");
    let client_cores = keep(parse_cores(&a.client_cores)?, "client");
    let date = report::now_rfc3339();
    let json = a.json.unwrap_or_else(|| {
        PathBuf::from("perf-out").join(format!("report-{}.json", date.replace(':', "")))
    });
    let out_dir = json
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut names: Vec<&str> = a
        .scenarios
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .collect();
    let want_abuse = names.contains(&"abuse");
    let want_wan = names.contains(&"wan");
    names.retain(|n| *n != "abuse" && *n != "wan");
    let opts = RunOpts {
        scenarios: names
            .iter()
            .map(|n| Scenario::parse(n))
            .collect::<anyhow::Result<_>>()?,
        transports: split_list(&a.transports, Transport::parse)?,
        engines: split_list(&a.engines, EngineId::parse)?,
        duration,
        warmup,
        full: a.full,
        server_cores,
        client_cores,
        shards: a.shards,
        framed_flavour: server::framed::Flavour::parse(&a.framed_flavour)?,
        out_dir: if out_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            out_dir
        },
    };
    if opts.engines.is_empty()
        || opts.transports.is_empty()
        || (opts.scenarios.is_empty() && !want_abuse && !want_wan)
    {
        return Err(anyhow!("nothing to run"));
    }
    let mut rep = if opts.scenarios.is_empty() {
        report::Report {
            commit: report::git_commit(),
            date: date.clone(),
            machine: report::Machine {
                cpus: sys::cpus(),
                kernel: sys::kernel(),
            },
            limits: report::Limits::default(),
            results: Vec::new(),
        }
    } else {
        run::run(&opts)?
    };
    if want_wan {
        let wan_duration = a.duration.unwrap_or(Duration::from_secs(5));
        let rows = wan::run(&wan::WanOpts {
            imp: relay::Impairment {
                loss: a.wan_loss,
                rtt: a.wan_rtt,
                reorder: a.wan_reorder,
                seed: a.wan_seed,
                ..relay::Impairment::wan()
            },
            conns: a.wan_conns.max(1),
            warmup: (wan_duration / 4).min(Duration::from_secs(1)),
            duration: wan_duration,
            rows: wan::WanOpts::default_rows(),
            congestion: a
                .wan_congestion
                .parse()
                .map_err(|e| anyhow!("--wan-congestion: {e}"))?,
        })?;
        rep.results.extend(rows);
    }
    rep.save(&json)?;
    let svg = a.svg.unwrap_or_else(|| json.with_extension("svg"));
    if !rep.results.is_empty() {
        if let Err(e) = chart::write_svg(&rep, &svg) {
            eprintln!("[ron-perf] chart: {e:#}");
        }
        println!("{}", table::render(&rep));
        eprintln!("[ron-perf] wrote {} and {}", json.display(), svg.display());
    }
    if want_abuse {
        let tiny = a.abuse_tiny;
        let window = a.duration.unwrap_or(if tiny {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        });
        let sizes = if tiny {
            abuse::Sizes {
                slowloris_conns: 40,
                slowloris_every: Duration::from_millis(200),
                non_reader_conns: 1,
                non_reader_fps: 500,
                flood_loops: 4,
                flood_max: 200,
                hot_factor: 10,
                ramp: Duration::from_millis(300),
            }
        } else {
            abuse::Sizes::default()
        };
        let sec = abuse::run(&abuse::AbuseOpts {
            engines: opts.engines.clone(),
            transports: opts.transports.clone(),
            attacks: split_list(&a.attacks, abuse::Attack::parse)?,
            window,
            warmup: (window / 4).min(Duration::from_secs(1)),
            server_cores: opts.server_cores.clone(),
            client_cores: opts.client_cores.clone(),
            shards: opts.shards,
            peer_bps: a.peer_bps,
            sizes,
            out_dir: opts.out_dir.clone(),
        })?;
        abuse::save_into(&json, &sec)?;
        let asvg = json.with_extension("abuse.svg");
        if let Err(e) = abuse::write_svg(&sec, &rep.commit, &asvg) {
            eprintln!("[ron-perf] abuse chart: {e:#}");
        }
        println!("{}", abuse::table(&sec));
        eprintln!("[ron-perf] wrote {} and {}", json.display(), asvg.display());
    }
    Ok(())
}

fn cmd_check(baseline: &PathBuf, reports: &[PathBuf], widen_pct: f64) -> anyhow::Result<()> {
    let schema: serde_json::Value = serde_json::from_str(report::SCHEMA)?;
    for p in std::iter::once(baseline).chain(reports) {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
        )
        .with_context(|| format!("parse {}", p.display()))?;
        let errs = report::validate_schema(&schema, &v);
        if !errs.is_empty() {
            bail!(
                "{} does not match perf/report.schema.json:\n  {}",
                p.display(),
                errs.join("\n  ")
            );
        }
    }
    let base = report::Report::load(baseline)?;
    let reps = reports
        .iter()
        .map(|p| report::Report::load(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if reps.len() < 3 {
        eprintln!(
            "note: median of {} run(s); spec/PERFORMANCE.md §5 asks for 3",
            reps.len()
        );
    }
    let flagged: Vec<String> = reps
        .iter()
        .flat_map(|r| &r.results)
        .filter_map(|r| r.flag.as_ref().map(|f| format!("{} {f}", r.key())))
        .collect();
    if !flagged.is_empty() {
        eprintln!(
            "note: {} report row(s) are flagged (their absolute figures measure the machine or \
             the client, not the engine; x_tokio_framed is the figure to trust there):\n  {}",
            flagged.len(),
            flagged.join("\n  ")
        );
    }
    let o = check::check(
        &base,
        &reps,
        check::Gates::default().widened(widen_pct / 100.0),
    );
    print!("{}", check::render(&o));
    if o.regressed() {
        eprintln!("REGRESSION: at least one gate failed");
        std::process::exit(1);
    }
    println!(
        "no regression ({} metrics compared over the median of {} runs)",
        o.verdicts.len(),
        o.runs
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("2h").is_err());
    }

    #[test]
    fn cores() {
        assert_eq!(parse_cores("0").unwrap(), vec![0]);
        assert_eq!(parse_cores("0,2-3").unwrap(), vec![0, 2, 3]);
        assert!(parse_cores("").unwrap().is_empty());
        assert!(parse_cores("x").is_err());
    }
}
