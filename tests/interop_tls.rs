//! TLS interop between the uring engine (the shards' own rustls unbuffered pump) and the tokio
//! engine (tokio-rustls): both directions, PQ hybrid negotiation and classical fallback, ALPN,
//! and session resumption on the uring client and server.

mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ron_shard::RuntimeConfig;
use ron_transport::config::Backend;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::tokio::TokioEngine;
use ron_transport::engine::uring::UringEngine;
use ron_transport::engine::{DialOptions, EngineKind};
use ron_transport::metrics::PqLabel;
use ron_transport::rustls::{ClientConfig, ServerConfig};
use ron_transport::{Config, Conn, Engine, Listener, PqMode, TransportMetrics};

use util::{payload, pq_handshakes, snap, within};

const SLACK: Duration = Duration::from_secs(10);
const ALPN: &str = "ron/1";

struct Pki {
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("rcgen");
    Pki {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
    }
}

fn server_cfg(p: &Pki, pq: PqMode) -> Arc<ServerConfig> {
    ron_transport::tls::server_config_from_pem(
        p.cert_pem.as_bytes(),
        zeroize::Zeroizing::new(p.key_pem.as_bytes().to_vec()),
        pq,
        &[ALPN.to_string()],
    )
    .expect("server config")
}

fn client_cfg(p: &Pki, pq: PqMode) -> Arc<ClientConfig> {
    ron_transport::tls::client_config_from_ca_pem(p.cert_pem.as_bytes(), pq, &[ALPN.to_string()])
        .expect("client config")
}

fn config(pq: PqMode) -> ron_transport::ValidConfig {
    let mut c = Config::default();
    c.backend = Backend::Tls;
    c.pq_mode = pq;
    c.validate().expect("valid config")
}

struct Side<E> {
    engine: E,
    metrics: Arc<TransportMetrics>,
}

fn uring(pq: PqMode, server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Side<UringEngine> {
    let metrics = TransportMetrics::new();
    let engine = EngineSetup::new(config(pq), metrics.clone())
        .expect("setup")
        .with_tls_server(server)
        .with_tls_client(client)
        .build_uring_with(RuntimeConfig {
            shards: 2,
            pin: false,
            buf_entries: 64,
            ..RuntimeConfig::default()
        })
        .expect("uring engine (io_uring usable here)");
    Side { engine, metrics }
}

fn tokio_side(
    pq: PqMode,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Side<TokioEngine> {
    let metrics = TransportMetrics::new();
    let engine = EngineSetup::new(config(pq), metrics.clone())
        .expect("setup")
        .with_tls_server(server)
        .with_tls_client(client)
        .build_tokio()
        .expect("tokio engine");
    Side { engine, metrics }
}

fn dial_opts() -> DialOptions {
    DialOptions {
        deadline: Duration::from_secs(5),
        ..DialOptions::default()
    }
}

async fn echo_some<C: Conn>(conn: &mut C) {
    for (i, n) in [0usize, 1, 100, 16_384, 70_000, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let p = payload(n, i as u8);
        conn.send(p.clone()).await.expect("send");
        let got = within("echo", SLACK, conn.recv())
            .await
            .expect("recv")
            .expect("frame");
        assert_eq!(got, p, "echo of {n} bytes");
    }
}

/// Dials `server` from `client`, checks both ends' facts, echoes, closes. Returns the two
/// `ConnInfo`s (client, server).
async fn pair<S: Engine, C: Engine>(
    server: &Side<S>,
    client: &Side<C>,
) -> (
    ron_transport::engine::ConnInfo,
    ron_transport::engine::ConnInfo,
) {
    let mut listener = server
        .engine
        .listen(util::loopback())
        .await
        .expect("listen");
    let addr: SocketAddr = listener.local_addr();
    let (conn, srv) = tokio::join!(client.engine.dial(addr, dial_opts()), async {
        within("accept", SLACK, listener.accept()).await
    });
    let mut conn = conn.expect("dial");
    let mut srv = srv.expect("accept");
    let (ci, si) = (conn.info().clone(), srv.info().clone());
    assert_eq!(ci.backend, Backend::Tls);
    assert_eq!(si.backend, Backend::Tls);
    assert_eq!(ci.engine, client.engine.kind());
    assert_eq!(si.engine, server.engine.kind());
    assert_eq!(ci.alpn.as_deref(), Some(ALPN.as_bytes()));
    assert_eq!(si.alpn.as_deref(), Some(ALPN.as_bytes()));
    let echo = tokio::spawn(async move {
        while let Ok(Some(f)) = srv.recv().await {
            if srv.send(f).await.is_err() {
                break;
            }
        }
        let _ = srv.close().await;
    });
    echo_some(&mut conn).await;
    within("close", SLACK, conn.close())
        .await
        .expect("graceful close");
    within("server side ends", SLACK, echo).await.unwrap();
    (ci, si)
}

fn check_ok_metrics(m: &TransportMetrics, pq: PqLabel, n: u64) {
    let s = snap(m, Backend::Tls);
    assert_eq!(s.tls_failures, 0);
    let label = pq.as_str();
    assert_eq!(pq_handshakes(m, Backend::Tls, label, "ok"), n);
    match pq {
        PqLabel::Off => assert_eq!((s.hs_off, s.hs_hybrid), (n, 0)),
        PqLabel::Hybrid => assert_eq!((s.hs_off, s.hs_hybrid), (0, n)),
    }
}

#[test]
fn uring_client_to_tokio_server() {
    util::run_multi_thread(async {
        let p = pki();
        let server = tokio_side(
            PqMode::Off,
            server_cfg(&p, PqMode::Off),
            client_cfg(&p, PqMode::Off),
        );
        let client = uring(
            PqMode::Off,
            server_cfg(&p, PqMode::Off),
            client_cfg(&p, PqMode::Off),
        );
        let (ci, si) = pair(&server, &client).await;
        assert_eq!(
            (ci.engine, si.engine),
            (EngineKind::Uring, EngineKind::Tokio)
        );
        assert_eq!((ci.pq, si.pq), (PqLabel::Off, PqLabel::Off));
        assert!(!ci.resumed && !si.resumed);
        check_ok_metrics(&client.metrics, PqLabel::Off, 1);
        check_ok_metrics(&server.metrics, PqLabel::Off, 1);
    });
}

#[test]
fn tokio_client_to_uring_server() {
    util::run_multi_thread(async {
        let p = pki();
        let server = uring(
            PqMode::Off,
            server_cfg(&p, PqMode::Off),
            client_cfg(&p, PqMode::Off),
        );
        let client = tokio_side(
            PqMode::Off,
            server_cfg(&p, PqMode::Off),
            client_cfg(&p, PqMode::Off),
        );
        let (ci, si) = pair(&server, &client).await;
        assert_eq!(
            (ci.engine, si.engine),
            (EngineKind::Tokio, EngineKind::Uring)
        );
        assert_eq!((ci.pq, si.pq), (PqLabel::Off, PqLabel::Off));
        check_ok_metrics(&client.metrics, PqLabel::Off, 1);
        check_ok_metrics(&server.metrics, PqLabel::Off, 1);
        util::wait_until("server conn released", SLACK, || {
            snap(&server.metrics, Backend::Tls).inflight == 0
        })
        .await;
    });
}

#[test]
fn hybrid_to_hybrid_negotiates_x25519mlkem768_both_ways() {
    util::run_multi_thread(async {
        let p = pki();
        let h = PqMode::Hybrid;
        // uring client -> tokio server
        let server = tokio_side(h, server_cfg(&p, h), client_cfg(&p, h));
        let client = uring(h, server_cfg(&p, h), client_cfg(&p, h));
        let (ci, si) = pair(&server, &client).await;
        assert_eq!((ci.pq, si.pq), (PqLabel::Hybrid, PqLabel::Hybrid));
        check_ok_metrics(&client.metrics, PqLabel::Hybrid, 1);
        // tokio client -> uring server
        let server = uring(h, server_cfg(&p, h), client_cfg(&p, h));
        let client = tokio_side(h, server_cfg(&p, h), client_cfg(&p, h));
        let (ci, si) = pair(&server, &client).await;
        assert_eq!((ci.pq, si.pq), (PqLabel::Hybrid, PqLabel::Hybrid));
        check_ok_metrics(&server.metrics, PqLabel::Hybrid, 1);
    });
}

#[test]
fn hybrid_with_classical_peer_falls_back_to_x25519() {
    util::run_multi_thread(async {
        let p = pki();
        let (h, off) = (PqMode::Hybrid, PqMode::Off);
        // Hybrid uring server, classical tokio client.
        let server = uring(h, server_cfg(&p, h), client_cfg(&p, h));
        let client = tokio_side(off, server_cfg(&p, off), client_cfg(&p, off));
        let (ci, si) = pair(&server, &client).await;
        assert_eq!((ci.pq, si.pq), (PqLabel::Off, PqLabel::Off));
        check_ok_metrics(&server.metrics, PqLabel::Off, 1);
        // Hybrid uring client, classical tokio server.
        let server = tokio_side(off, server_cfg(&p, off), client_cfg(&p, off));
        let client = uring(h, server_cfg(&p, h), client_cfg(&p, h));
        let (ci, si) = pair(&server, &client).await;
        assert_eq!((ci.pq, si.pq), (PqLabel::Off, PqLabel::Off));
        check_ok_metrics(&client.metrics, PqLabel::Off, 1);
    });
}

/// Two connections from `client` to `server` with classical key exchange: the first is a full
/// handshake on both ends, the second a resumption on both ends (the client's session store
/// holds the ticket the server sent).
async fn resumes<S: Engine, C: Engine>(server: Side<S>, client: Side<C>) {
    let (cli, srv) = pair(&server, &client).await;
    assert!(!cli.resumed && !srv.resumed);
    let (cli, srv) = pair(&server, &client).await;
    assert!(
        cli.resumed && srv.resumed,
        "{:?} client resumed: {}, {:?} server resumed: {}",
        client.engine.kind(),
        cli.resumed,
        server.engine.kind(),
        srv.resumed
    );
}

/// (server config, client config) for classical key exchange.
fn classical(p: &Pki) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    (server_cfg(p, PqMode::Off), client_cfg(p, PqMode::Off))
}

#[test]
fn uring_client_resumes_against_tokio_server() {
    util::run_multi_thread(async {
        let p = pki();
        let ((s1, c1), (s2, c2)) = (classical(&p), classical(&p));
        resumes(tokio_side(PqMode::Off, s1, c1), uring(PqMode::Off, s2, c2)).await;
    });
}

#[test]
fn uring_server_resumes_tokio_client() {
    util::run_multi_thread(async {
        let p = pki();
        let ((s1, c1), (s2, c2)) = (classical(&p), classical(&p));
        resumes(uring(PqMode::Off, s1, c1), tokio_side(PqMode::Off, s2, c2)).await;
    });
}

#[test]
fn uring_to_uring_resumes() {
    util::run_multi_thread(async {
        let p = pki();
        let ((s1, c1), (s2, c2)) = (classical(&p), classical(&p));
        resumes(uring(PqMode::Off, s1, c1), uring(PqMode::Off, s2, c2)).await;
    });
}

/// Not a test of behaviour: a bounded loopback TLS echo comparison, uring↔uring vs
/// tokio↔tokio (run with `cargo test --release --all-features --test interop_tls --
/// --ignored --nocapture throughput`). The perf rig produces the real numbers.
#[test]
#[ignore]
fn throughput_report() {
    use std::time::Instant;

    use ron_transport::FrameSender;

    async fn run<S: Engine, C: Engine>(
        name: &str,
        server: &Side<S>,
        client: &Side<C>,
        dump: &(dyn Fn(&Side<S>, &Side<C>) + Sync),
    ) {
        for (size, count) in [(64usize, 100_000usize), (1024, 50_000), (64 * 1024, 3_000)] {
            let mut l = server.engine.listen(util::loopback()).await.unwrap();
            let addr = l.local_addr();
            let echo = tokio::spawn(async move {
                let mut c = l.accept().await.unwrap();
                while let Ok(Some(f)) = c.recv().await {
                    if c.send(f).await.is_err() {
                        break;
                    }
                }
            });
            let mut conn = client.engine.dial(addr, dial_opts()).await.unwrap();
            let frame = payload(size, 1);
            let tx = conn.sender();
            let start = Instant::now();
            let sender = tokio::spawn(async move {
                for _ in 0..count {
                    tx.send(frame.clone()).await.unwrap();
                }
            });
            for i in 0..count {
                match tokio::time::timeout(SLACK, conn.recv()).await {
                    Ok(r) => {
                        r.unwrap().unwrap();
                    }
                    Err(_) => {
                        println!("{name}: stalled at frame {i} of {count} ({size} B)");
                        dump(server, client);
                        panic!("stalled");
                    }
                }
            }
            sender.await.unwrap();
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{name} echo {size:>6} B frames: {:>9.0} frames/s, {:>7.1} MiB/s each way",
                count as f64 / secs,
                (count * size) as f64 / secs / (1024.0 * 1024.0)
            );
            drop(conn);
            echo.abort();
        }
    }

    util::run_multi_thread(async {
        let p = pki();
        let backend = match std::env::var("RON_BENCH_BACKEND").as_deref() {
            Ok("tcp") => Backend::Tcp,
            _ => Backend::Tls,
        };
        println!("backend {}", backend.as_str());
        let mk_cfg = || {
            let mut c = Config::default();
            c.backend = backend;
            c.write_timeout = Duration::from_secs(30);
            c.validate().unwrap()
        };
        let u = |_: ()| {
            let m = TransportMetrics::new();
            EngineSetup::new(mk_cfg(), m.clone())
                .unwrap()
                .with_tls_server(server_cfg(&p, PqMode::Off))
                .with_tls_client(client_cfg(&p, PqMode::Off))
                .build_uring_with(RuntimeConfig {
                    shards: 1,
                    pin: false,
                    ..RuntimeConfig::default()
                })
                .map(|engine| Side { engine, metrics: m })
                .unwrap()
        };
        let t = |_: ()| {
            let m = TransportMetrics::new();
            EngineSetup::new(mk_cfg(), m.clone())
                .unwrap()
                .with_tls_server(server_cfg(&p, PqMode::Off))
                .with_tls_client(client_cfg(&p, PqMode::Off))
                .build_tokio()
                .map(|engine| Side { engine, metrics: m })
                .unwrap()
        };
        let dump_u = |s: &Side<UringEngine>, c: &Side<UringEngine>| {
            println!("server shards: {:#?}", s.engine.shard_stats());
            println!("client shards: {:#?}", c.engine.shard_stats());
            println!("server metrics:\n{}", s.metrics.render());
            println!("client metrics:\n{}", c.metrics.render());
        };
        run("uring", &u(()), &u(()), &dump_u).await;
        run("tokio", &t(()), &t(()), &|_, _| {}).await;
    });
}

/// The drop-in path over TLS on uring: `Engine::serve` runs each connection's consumer on its
/// owning shard after the shard's handshake; tokio-rustls and uring clients, hybrid negotiated,
/// facts in the consumer's `ConnInfo`; a non-TLS peer is one counted TLS failure.
#[test]
fn uring_serve_over_tls_with_tokio_and_uring_clients() {
    util::run_multi_thread(async {
        let p = pki();
        let h = PqMode::Hybrid;
        let server = uring(h, server_cfg(&p, h), client_cfg(&p, h));
        let metrics = server.metrics.clone();
        let listener = server
            .engine
            .listen(util::loopback())
            .await
            .expect("listen");
        let addr = listener.local_addr();
        let infos = Arc::new(std::sync::Mutex::new(Vec::new()));
        let i2 = infos.clone();
        let serving = tokio::spawn(server.engine.serve(listener, move |mut conn| {
            i2.lock()
                .unwrap()
                .push((conn.info().clone(), ron_shard::is_shard_thread()));
            async move {
                while let Ok(Some(f)) = conn.recv().await {
                    if conn.send(f).await.is_err() {
                        break;
                    }
                }
            }
        }));
        let tokio_client = tokio_side(h, server_cfg(&p, h), client_cfg(&p, h));
        let uring_client = uring(h, server_cfg(&p, h), client_cfg(&p, h));
        let mut a = tokio_client
            .engine
            .dial(addr, dial_opts())
            .await
            .expect("tokio dial");
        let mut b = uring_client
            .engine
            .dial(addr, dial_opts())
            .await
            .expect("uring dial");
        assert_eq!(
            (a.info().pq, b.info().pq),
            (PqLabel::Hybrid, PqLabel::Hybrid)
        );
        echo_some(&mut a).await;
        echo_some(&mut b).await;
        within("close a", SLACK, a.close()).await.expect("close a");
        within("close b", SLACK, b.close()).await.expect("close b");
        let infos = infos.lock().unwrap().clone();
        assert_eq!(infos.len(), 2);
        for (i, on_shard) in &infos {
            assert!(on_shard, "the consumer was built on its shard");
            assert_eq!(i.backend, Backend::Tls);
            assert_eq!(i.pq, PqLabel::Hybrid);
            assert_eq!(i.alpn.as_deref(), Some(ALPN.as_bytes()));
        }
        check_ok_metrics(&metrics, PqLabel::Hybrid, 2);
        util::wait_until("released", SLACK, || {
            snap(&metrics, Backend::Tls).inflight == 0
        })
        .await;
        // A peer that is not TLS: a TLS failure, counted once.
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::AsyncWriteExt;
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        util::read_to_end_or_reset(&mut raw, SLACK).await;
        util::wait_until("tls failure counted", SLACK, || {
            snap(&metrics, Backend::Tls).tls_failures == 1
        })
        .await;
        assert_eq!(
            util::rejected(&metrics, ron_transport::RejectReason::Tls),
            1
        );
        assert_eq!(pq_handshakes(&metrics, Backend::Tls, "hybrid", "fail"), 1);
        server.engine.shutdown(Duration::from_secs(1)).await;
        let _ = within("serve ends", SLACK, serving).await;
    });
}
