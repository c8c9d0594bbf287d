//! Figures for the `arti` backend over the private Tor network of `tests/util/tor` (3
//! authorities, 2 middle relays, 1 exit; C tor in a fresh network namespace): bootstrap time,
//! idle client RSS, dial latency and small-frame round trips through the exit and to an onion
//! service. For information; there is no target.
//!
//! ```sh
//! cargo run --example arti_bench --features arti [-- --dials 100 --frames 1000]
//! ```
//!
//! It re-executes itself inside `unshare -n` (root or user namespaces needed) and needs `tor`,
//! `tor-gencert` and `ip` installed. Nothing leaves the machine.

#[cfg(feature = "arti")]
#[path = "../tests/util/tor/mod.rs"]
mod tor;

#[cfg(not(feature = "arti"))]
fn main() {
    eprintln!(
        "arti_bench needs the `arti` feature: cargo run --example arti_bench --features arti"
    );
}

#[cfg(feature = "arti")]
fn main() {
    bench::main();
}

#[cfg(feature = "arti")]
mod bench {
    use std::net::SocketAddr;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use ron_transport::arti::{ArtiEngine, ArtiOptions, ArtiSetup};
    use ron_transport::config::Backend;
    use ron_transport::engine::DialOptions;
    use ron_transport::{
        Config, Conn, Engine, Listener, ReadyState, TransportHealth, TransportMetrics,
    };

    use super::tor::{self, TorNet};

    const ECHO: u16 = 9990;

    fn arg(name: &str, default: usize) -> usize {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    pub fn main() {
        if !tor::in_netns() {
            if let Err(reason) = tor::prerequisites() {
                eprintln!("arti_bench cannot run here: {reason}");
                std::process::exit(2);
            }
            let exe = std::env::current_exe().expect("exe");
            let status = Command::new("unshare")
                .args([
                    "-n",
                    "--",
                    "sh",
                    "-c",
                    "ip link set lo up && exec \"$0\" \"$@\"",
                ])
                .arg(exe)
                .args(std::env::args().skip(1))
                .env(tor::NETNS_ENV, "1")
                .status()
                .expect("unshare");
            std::process::exit(status.code().unwrap_or(1));
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(run(arg("--dials", 100), arg("--frames", 1000)));
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn pct(v: &mut [Duration], p: f64) -> Duration {
        v.sort();
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }

    fn row(name: &str, v: &mut [Duration]) {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!(
            "| {name:<44} | {:>9.2} | {:>9.2} | {:>5} |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            v.len()
        );
    }

    fn private_dir(p: &std::path::Path) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .expect("mkdir");
    }

    fn engine(net: &TorNet, dir: &std::path::Path, nickname: &str) -> ArtiEngine {
        private_dir(dir);
        let mut c = Config::default();
        c.backend = Backend::Arti;
        c.arti_bootstrap_timeout = Duration::from_secs(120);
        ArtiSetup::new(c.validate().expect("config"), TransportMetrics::new())
            .expect("setup")
            .with_options(ArtiOptions {
                state_dir: Some(dir.join("state")),
                cache_dir: Some(dir.join("cache")),
                tor_config_toml: Some(net.arti_toml()),
                onion_service_toml: Some(net.onion_service_toml()),
                nickname: nickname.to_owned(),
                ..ArtiOptions::default()
            })
            .build()
            .expect("arti engine")
    }

    async fn wait_ready(e: &ArtiEngine) -> Duration {
        let t = Instant::now();
        while e.readiness() != ReadyState::Ready {
            assert!(t.elapsed() < Duration::from_secs(150), "no bootstrap");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        t.elapsed()
    }

    async fn rtt<C: Conn>(conn: &mut C, payload: Bytes) -> Duration {
        let t = Instant::now();
        conn.send(payload).await.expect("send");
        conn.recv().await.expect("recv").expect("frame");
        t.elapsed()
    }

    async fn run(dials: usize, frames: usize) {
        let tmp = tempfile::tempdir().expect("tmp");
        private_dir(tmp.path());
        let echo = tokio::net::TcpListener::bind(("127.0.0.1", ECHO))
            .await
            .expect("bind");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let mut net = TorNet::start(&tmp.path().join("net"), ECHO).expect("tor network");
        let up = net
            .wait_for_exit(Duration::from_secs(120))
            .expect("consensus");
        println!("private network: consensus with the exit, exit bootstrapped after {up:?}");

        let rss0 = rss_kib();
        let t = Instant::now();
        let client = engine(&net, &tmp.path().join("client"), "client");
        let created = t.elapsed();
        let boot = wait_ready(&client).await;
        println!("client: created in {created:?}, Ready after {boot:?}");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let rss1 = rss_kib();
        println!(
            "idle client RSS: {} KiB process total, +{} KiB for the Arti client (bootstrapped, 10 s idle)",
            rss1,
            rss1.saturating_sub(rss0)
        );

        let exit: SocketAddr = ([127, 0, 0, 1], ECHO).into();
        let opts = || DialOptions {
            deadline: Duration::from_secs(60),
            ..DialOptions::default()
        };
        println!(
            "| row                                          |  p50 (ms) |  p99 (ms) |     n |"
        );
        println!("|---|---:|---:|---:|");
        let mut v = Vec::new();
        for _ in 0..dials {
            let t = Instant::now();
            let c = client.dial(exit, opts()).await.expect("dial");
            v.push(t.elapsed());
            drop(c);
        }
        row("arti dial through the exit (stream open)", &mut v);
        let mut conn = client.dial(exit, opts()).await.expect("dial");
        let mut v = Vec::new();
        for i in 0..frames {
            v.push(rtt(&mut conn, Bytes::from(vec![i as u8; 64])).await);
        }
        row("arti 64 B frame round trip, exit", &mut v);
        let mut v = Vec::new();
        for i in 0..frames / 4 {
            v.push(rtt(&mut conn, Bytes::from(vec![i as u8; 4096])).await);
        }
        row("arti 4 KiB frame round trip, exit", &mut v);
        // Pipelined small frames: frames per second through one stream.
        let n = frames * 10;
        let t = Instant::now();
        let sender = conn.sender();
        let feed = tokio::spawn(async move {
            for i in 0..n {
                ron_transport::FrameSender::send(&sender, Bytes::from(vec![i as u8; 64]))
                    .await
                    .expect("send");
            }
        });
        for _ in 0..n {
            conn.recv().await.expect("recv").expect("frame");
        }
        feed.await.expect("feeder");
        let fps = n as f64 / t.elapsed().as_secs_f64();
        println!(
            "| arti 64 B frames echoed, pipelined (fps)     | {fps:>9.0} |           | {n:>5} |"
        );

        // Onion service.
        let service = engine(&net, &tmp.path().join("service"), "bench");
        let mut listener = service
            .listen("0.0.0.0:80".parse::<std::net::SocketAddr>().expect("addr"))
            .await
            .expect("onion service");
        let target = listener.onion_target();
        tokio::spawn(async move {
            while let Ok(mut c) = listener.accept().await {
                tokio::spawn(async move {
                    while let Ok(Some(f)) = c.recv().await {
                        if c.send(f).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let t = Instant::now();
        wait_ready(&service).await;
        let mut first = None;
        while first.is_none() {
            match client.dial_host(&target, opts()).await {
                Ok(c) => first = Some(c),
                Err(e) => {
                    assert!(t.elapsed() < Duration::from_secs(300), "onion: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        println!(
            "onion service: first successful dial {:?} after the service engine was built",
            t.elapsed()
        );
        let mut oc = first.expect("conn");
        let mut v = Vec::new();
        for i in 0..frames / 2 {
            v.push(rtt(&mut oc, Bytes::from(vec![i as u8; 64])).await);
        }
        row("arti 64 B frame round trip, onion", &mut v);
        let mut v = Vec::new();
        for _ in 0..dials / 5 {
            let t = Instant::now();
            let c = client.dial_host(&target, opts()).await.expect("onion dial");
            v.push(t.elapsed());
            drop(c);
        }
        row("arti onion dial (descriptor cached)", &mut v);
        client.shutdown(Duration::from_secs(5)).await;
        service.shutdown(Duration::from_secs(5)).await;
        net.stop();
    }
}
