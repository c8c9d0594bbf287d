//! No blocking I/O on a runtime thread (spec/CONCURRENCY.md §1; issue: client TLS set-up reads
//! the OS trust store and CA files). A current-thread runtime keeps running its other tasks
//! while the first TLS dial builds its client config from `tls_client.trust_store = "system"`,
//! whose roots are read from `SSL_CERT_FILE` — here a FIFO nobody has written yet — on the
//! tokio engine and on the uring engine. (Validation refuses a CA bundle that is not a regular
//! file, so the FIFO stands behind the OS store; `reload_async` runs its validation through the
//! same loader threads.)
//!
//! How it can fail: the FIFO's writer waits until a ticker task on the runtime has ticked a few
//! times before it writes. If a load ran on the runtime thread, that thread would sit in
//! `open`/`read` of the FIFO, the ticker could not tick, and the writer would give up after its
//! bound and record it: the test then fails (no wall-clock threshold is asserted).

mod util;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ron_transport::config::Backend;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::{
    Config, ConfigHandle, Conn, DialOptions, Engine, Listener, PqMode, TransportMetrics, TrustStore,
};

use util::tls::TlsFixture;

/// Ticks the writer waits to see before each write.
const TICKS_BEFORE_WRITE: u64 = 5;
/// How long the writer waits for them before giving up (only reached when the runtime is
/// blocked).
const WRITER_PATIENCE: Duration = Duration::from_secs(20);

fn mkfifo(path: &std::path::Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(st.success(), "mkfifo {}", path.display());
}

/// Writes `pem` into the FIFO `rounds` times, each time only after the runtime's ticker moved
/// [`TICKS_BEFORE_WRITE`] more ticks. Returns, per round, whether the ticks were seen.
fn fifo_writer(
    path: std::path::PathBuf,
    pem: String,
    ticks: Arc<AtomicU64>,
    rounds: usize,
) -> std::thread::JoinHandle<Vec<bool>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..rounds {
            let from = ticks.load(Ordering::SeqCst);
            let t0 = Instant::now();
            while ticks.load(Ordering::SeqCst) < from + TICKS_BEFORE_WRITE
                && t0.elapsed() < WRITER_PATIENCE
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            seen.push(ticks.load(Ordering::SeqCst) >= from + TICKS_BEFORE_WRITE);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open the FIFO for writing");
            f.write_all(pem.as_bytes()).expect("write the CA");
        }
        seen
    })
}

fn run(engine: &str, fifo: &std::path::Path, ca_pem: &str, fx: &TlsFixture) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ticks = Arc::new(AtomicU64::new(0));
    let writer = fifo_writer(fifo.to_path_buf(), ca_pem.to_owned(), ticks.clone(), 1);

    rt.block_on(async {
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let mut cfg = Config::default();
        cfg.backend = Backend::Tls;
        cfg.tls_client_trust_store = TrustStore::System;
        let server_setup =
            EngineSetup::new(cfg.clone().validate().unwrap(), TransportMetrics::new())
                .unwrap()
                .with_tls_server(fx.server.clone());
        let handle = ConfigHandle::new(cfg.clone().validate().unwrap());
        // A reload through the loader threads on the way (nothing to read: system store).
        let mut next = cfg.clone();
        next.read_timeout = Duration::from_secs(7);
        handle.reload_async(next).await.expect("reload_async");
        let client_setup =
            EngineSetup::from_handle(handle.clone(), TransportMetrics::new()).unwrap();

        // The first TLS dial builds the client config: the OS roots come from the FIFO.
        macro_rules! dial_and_echo {
            ($server:expr, $client:expr) => {{
                let server = $server;
                let client = $client;
                let mut l = server.listen(util::loopback()).await.unwrap();
                let addr = l.local_addr();
                let (c, s) = tokio::join!(
                    client.dial(
                        addr,
                        DialOptions {
                            deadline: Duration::from_secs(30),
                            server_name: Some("localhost".into()),
                            ..DialOptions::default()
                        }
                    ),
                    l.accept()
                );
                let c = c.expect("dial trusting the roots read from the FIFO");
                let mut s = s.expect("accept");
                c.send(bytes::Bytes::from_static(b"ping")).await.unwrap();
                assert_eq!(s.recv().await.unwrap().unwrap().as_ref(), b"ping");
            }};
        }
        match engine {
            "tokio" => dial_and_echo!(
                server_setup.build_tokio().unwrap(),
                client_setup.build_tokio().unwrap()
            ),
            _ => dial_and_echo!(
                server_setup.build_uring().unwrap(),
                client_setup.build_uring().unwrap()
            ),
        }
        ticker.abort();
    });
    let seen = writer.join().expect("writer thread");
    assert_eq!(
        seen,
        vec![true],
        "{engine}: the runtime stopped ticking while the trust store was being read (a \
         blocking load on the runtime thread)"
    );
}

/// One test for both engines, one after the other: `SSL_CERT_FILE` is process-wide.
#[test]
fn client_tls_roots_load_off_the_runtime_thread() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("roots.pem");
    mkfifo(&fifo);
    std::env::set_var("SSL_CERT_FILE", &fifo);
    std::env::remove_var("SSL_CERT_DIR");
    let (fx, ca_pem) = TlsFixture::new_with_ca_pem(PqMode::Off);
    run("tokio", &fifo, &ca_pem, &fx);
    run("uring", &fifo, &ca_pem, &fx);
}
