//! QUIC interop with a third implementation (feature `quic`): Python `aioquic` (pinned in
//! .ci/run) through the peer script tests/peers/aioquic_oap.py, speaking OAP/1 over QUIC
//! (ALPN `oap/1`, the `OAP1` stream preface, u32-length-prefixed frames) with our engine:
//! - our listener (echo through the `Conn` API) with the aioquic client, frames of 0 B to
//!   `max_frame_bytes` (1 MiB), byte-exact, metrics under `backend="quic"`;
//! - our dialer with the aioquic echo server;
//! - an aioquic stream without the preface: refused, `rejected_total{reason="quic_path_error"}`,
//!   no `Conn` handed out;
//! - an aioquic client offering another ALPN: the handshake fails with the TLS alert
//!   `no_application_protocol`, counted as a TLS failure (`rejected_total{reason="tls"}`).
//!
//! Every case is a function generic over the engine kind ([`util::engines::EngineKind`]);
//! `aioquic_cases!(module, Kind)` instantiates all of them for one engine. Without
//! `python3` + `aioquic` the tests fail with a message saying how to install it (never a silent
//! pass). The peer is a child process killed when its guard drops; every wait is bounded.
#![cfg(feature = "quic")]

mod util;

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ron_transport::config::Backend;
use ron_transport::quic::{ALPN, CLOSE_DONE, CLOSE_REFUSED};
use ron_transport::{Config, Conn, Engine, Listener, RejectReason, TransportMetrics};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use util::engines::EngineKind;
use util::tls::PemMaterial;
use util::{loopback, payload, rejected, snap, wait_until, within};

/// The aioquic release the peer script is written against (and .ci/run installs).
const AIOQUIC: &str = "aioquic==1.7.2";

/// The peer script.
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/aioquic_oap.py");

/// Bound on every wait (a Python peer on a loaded 2-core machine is slow, never this slow).
const LIMIT: Duration = Duration::from_secs(30);

/// The peer's own bound on its whole run (`--timeout`), below [`LIMIT`] so that a stuck peer
/// reports what it was waiting for (exit 2 and a message) before the test's own wait expires.
const PEER_LIMIT: Duration = Duration::from_secs(20);

/// The frame sizes of the echo cases: empty, one byte, 1 KiB, 64 KiB and `max_frame_bytes`.
const SIZES: [usize; 5] = [0, 1, 1024, 64 * 1024, 1 << 20];

fn sizes_arg() -> String {
    SIZES.map(|n| n.to_string()).join(",")
}

/// Bytes on the wire for the frames of [`SIZES`] (length prefixes included, preface not).
fn wire_bytes() -> u64 {
    SIZES.iter().map(|n| 4 + *n as u64).sum()
}

fn quic_config() -> Config {
    let mut c = Config::default();
    c.backend = Backend::Quic;
    c.bind_addr = Some(loopback());
    c
}

/// Panics with how to install it unless `python3` can import `aioquic`.
fn require_aioquic() {
    let out = std::process::Command::new("python3")
        .args(["-c", "import aioquic; print(aioquic.__version__)"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "this test needs Python's aioquic as the QUIC peer: `python3 -m pip install \
             {AIOQUIC}` (.ci/run installs it); `import aioquic` failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => panic!(
            "this test needs python3 with aioquic as the QUIC peer (`python3 -m pip install \
             {AIOQUIC}`; .ci/run installs it); python3 did not run: {e}"
        ),
    }
}

/// The aioquic peer process: killed (SIGKILL) when dropped, whatever the test did.
struct Peer {
    child: tokio::process::Child,
    stdout: BufReader<tokio::process::ChildStdout>,
    stderr: tokio::process::ChildStderr,
    /// Holds the PEM files the peer reads.
    _dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// How the peer ended.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The peer exited 0; returns its stdout.
    fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "aioquic peer failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// The stdout line starting with `tag`.
    fn line(&self, tag: &str) -> &str {
        self.ok()
            .lines()
            .find(|l| l.starts_with(tag))
            .unwrap_or_else(|| panic!("no `{tag}` line from the peer:\n{}", self.stdout))
    }
}

impl Peer {
    /// Starts the script with `args` (after the mode); the certificate's PEM files are written
    /// to a temporary directory and passed as `--cert`/`--key` (server) or `--ca` (client).
    fn spawn(pem: &PemMaterial, mode: &str, args: &[&str]) -> Peer {
        require_aioquic();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, &pem.cert_pem).unwrap();
        std::fs::write(&key, &pem.key_pem).unwrap();
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(PEER)
            .arg(mode)
            .args(["--timeout", &PEER_LIMIT.as_secs().to_string()]);
        if mode == "server" {
            cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
        } else {
            cmd.arg("--ca").arg(&cert);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn python3 tests/peers/aioquic_oap.py");
        Peer {
            stdout: BufReader::new(child.stdout.take().unwrap()),
            stderr: child.stderr.take().unwrap(),
            child,
            _dir: dir,
        }
    }

    /// The aioquic client towards our listener at `addr` (server name `localhost`).
    fn client(pem: &PemMaterial, addr: SocketAddr, args: &[&str]) -> Peer {
        let port = addr.port().to_string();
        let mut all = vec!["--host", "127.0.0.1", "--port", &port];
        all.extend_from_slice(args);
        Self::spawn(pem, "client", &all)
    }

    /// The aioquic echo server serving `conns` connections; returns it and its address (read
    /// from its `PORT <n>` line).
    async fn server(pem: &PemMaterial, conns: usize) -> (Peer, SocketAddr) {
        let mut peer = Self::spawn(pem, "server", &["--conns", &conns.to_string()]);
        let mut line = String::new();
        within(
            "aioquic server PORT line",
            LIMIT,
            peer.stdout.read_line(&mut line),
        )
        .await
        .unwrap();
        let port: u16 = match line.trim().strip_prefix("PORT ").map(str::parse) {
            Some(Ok(p)) => p,
            _ => {
                let out = within("aioquic server exit", LIMIT, peer.outcome()).await;
                panic!(
                    "no `PORT <n>` from the aioquic server (got {line:?}; {}):\n{}",
                    out.status, out.stderr
                );
            }
        };
        (peer, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Waits (bounded by the caller) for the peer to exit and collects its output.
    async fn outcome(&mut self) -> Outcome {
        let (mut out, mut err) = (String::new(), String::new());
        let (status, _, _) = tokio::join!(
            self.child.wait(),
            self.stdout.read_to_string(&mut out),
            self.stderr.read_to_string(&mut err),
        );
        Outcome {
            status: status.expect("wait for the aioquic peer"),
            stdout: out,
            stderr: err,
        }
    }

    /// The peer's outcome within [`LIMIT`].
    async fn finish(mut self) -> Outcome {
        within("aioquic peer exit", LIMIT, self.outcome()).await
    }
}

/// Our listener on `backend = "quic"` serving an echo through the `Conn` API; returns the
/// engine, metrics, address and how many `Conn`s the listener handed out.
async fn echo_server<K: EngineKind>(
    pem: &PemMaterial,
) -> (K::E, Arc<TransportMetrics>, SocketAddr, Arc<AtomicUsize>) {
    let metrics = TransportMetrics::new();
    let engine = K::build(
        quic_config().validate().unwrap(),
        Some(&pem.fixture),
        metrics.clone(),
    );
    let listener = engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let served = Arc::new(AtomicUsize::new(0));
    util::spawn_counted_echo(&engine, listener, served.clone());
    (engine, metrics, addr, served)
}

fn assert_no_rejects(metrics: &TransportMetrics) {
    for r in RejectReason::ALL {
        assert_eq!(rejected(metrics, r), 0, "rejected_total{{reason=\"{r}\"}}");
    }
}

/// (a) Our listener echoes for the aioquic client: 0 B, 1 B, 1 KiB, 64 KiB and 1 MiB frames
/// come back byte-exact (the client compares), the listener closes the connection with code 0
/// once its one stream ended, and the metrics under `backend="quic"` count exactly the frames.
async fn our_listener_with_an_aioquic_client<K: EngineKind>() {
    let pem = PemMaterial::new();
    let (engine, metrics, addr, served) = echo_server::<K>(&pem).await;
    let sizes = sizes_arg();
    let out = Peer::client(&pem, addr, &["--sizes", &sizes, "--expect-close"])
        .finish()
        .await;
    assert_eq!(
        out.line("OK"),
        format!(
            "OK frames={} bytes={} close_code={CLOSE_DONE}",
            SIZES.len(),
            SIZES.iter().sum::<usize>()
        )
    );
    assert_eq!(served.load(Ordering::SeqCst), 1, "one stream, one Conn");
    let wire = wire_bytes();
    wait_until("bytes counted both ways", LIMIT, || {
        let s = snap(&metrics, Backend::Quic);
        s.bytes_in == wire && s.bytes_out == wire
    })
    .await;
    let s = snap(&metrics, Backend::Quic);
    assert_eq!((s.accepts, s.hs_off, s.tls_failures), (1, 1, 0));
    assert!(s.reads > 0 && s.writes > 0, "{s:?}");
    let text = metrics.render();
    for line in [
        format!("bytes_in_total{{backend=\"quic\"}} {wire}"),
        format!("bytes_out_total{{backend=\"quic\"}} {wire}"),
    ] {
        assert!(text.contains(&line), "no `{line}` in:\n{text}");
    }
    wait_until("inflight 0", LIMIT, || {
        snap(&metrics, Backend::Quic).inflight == 0
    })
    .await;
    assert_no_rejects(&metrics);
    engine.shutdown(Duration::from_secs(1)).await;
}

/// (b) Our dialer with the aioquic echo server: the same frames echoed byte-exact; the server
/// saw the preface, one stream, every frame, and our normal close (application code 0).
async fn our_dialer_with_an_aioquic_server<K: EngineKind>() {
    let pem = PemMaterial::new();
    let (peer, addr) = Peer::server(&pem, 1).await;
    let metrics = TransportMetrics::new();
    let engine = K::build(
        quic_config().validate().unwrap(),
        Some(&pem.fixture),
        metrics.clone(),
    );
    let mut conn = within(
        "dial the aioquic server",
        LIMIT,
        engine.dial(addr, Default::default()),
    )
    .await
    .expect("dial");
    assert_eq!(conn.info().backend, Backend::Quic);
    assert_eq!(conn.info().alpn.as_deref(), Some(ALPN));
    for (i, n) in SIZES.into_iter().enumerate() {
        let sent = payload(n, i as u8);
        within("send", LIMIT, conn.send(sent.clone()))
            .await
            .unwrap();
        let got = within("echo", LIMIT, conn.recv())
            .await
            .unwrap()
            .expect("an echo, not the end of the stream");
        assert_eq!(got, sent, "echo of {n} bytes");
    }
    within("close", LIMIT, conn.close()).await.unwrap();
    let out = peer.finish().await;
    assert_eq!(
        out.line("DONE"),
        format!(
            "DONE conns=1 streams=1 refused=0 frames={} bytes={} close_codes={CLOSE_DONE}",
            SIZES.len(),
            SIZES.iter().sum::<usize>()
        )
    );
    let wire = wire_bytes();
    wait_until("dialer counters", LIMIT, || {
        let s = snap(&metrics, Backend::Quic);
        s.bytes_in == wire && s.bytes_out == wire && s.inflight == 0
    })
    .await;
    let s = snap(&metrics, Backend::Quic);
    assert_eq!((s.dials_ok, s.dials_err, s.tls_failures), (1, 0, 0));
    assert_no_rejects(&metrics);
    engine.shutdown(Duration::from_secs(1)).await;
}

/// (c) An aioquic stream that starts with a frame instead of the preface: our listener refuses
/// it (nothing echoed; the stream reset and its connection closed with code 1), counts
/// `rejected_total{reason="quic_path_error"}` once and hands out no `Conn`.
async fn a_stream_without_the_preface_from_aioquic_is_refused<K: EngineKind>() {
    let pem = PemMaterial::new();
    let (engine, metrics, addr, served) = echo_server::<K>(&pem).await;
    let out = Peer::client(&pem, addr, &["--no-preface"]).finish().await;
    // The script checks that any RESET_STREAM / STOP_SENDING carried code 1; the connection
    // had no other stream, so our listener closes it with `CLOSE_REFUSED` (which may overtake
    // the stream frames: quinn sends nothing else once it closes).
    let line = out.line("REFUSED");
    assert!(
        line.ends_with(&format!(" close={CLOSE_REFUSED}")),
        "connection closed with CLOSE_REFUSED: {line}"
    );
    wait_until("quic_path_error counted", LIMIT, || {
        rejected(&metrics, RejectReason::QuicPathError) == 1
    })
    .await;
    wait_until("inflight 0", LIMIT, || {
        snap(&metrics, Backend::Quic).inflight == 0
    })
    .await;
    assert_eq!(served.load(Ordering::SeqCst), 0, "no Conn for that stream");
    let s = snap(&metrics, Backend::Quic);
    assert_eq!((s.accepts, s.bytes_in, s.bytes_out), (1, 0, 0));
    for r in RejectReason::ALL {
        if r != RejectReason::QuicPathError {
            assert_eq!(rejected(&metrics, r), 0, "{r}");
        }
    }
    assert!(metrics
        .render()
        .contains("rejected_total{reason=\"quic_path_error\"} 1"));
    engine.shutdown(Duration::from_secs(1)).await;
}

/// (d) An aioquic client offering ALPN `h3` only: our listener fails the handshake with the
/// TLS alert `no_application_protocol` (QUIC error 0x100 + 120 = 0x178), counted as a TLS
/// failure and `rejected_total{reason="tls"}`; no `Conn` is handed out.
async fn a_wrong_alpn_from_aioquic_fails_the_handshake_with_reason_tls<K: EngineKind>() {
    let pem = PemMaterial::new();
    let (engine, metrics, addr, served) = echo_server::<K>(&pem).await;
    let out = Peer::client(&pem, addr, &["--alpn", "h3", "--expect-handshake-failure"])
        .finish()
        .await;
    let line = out.line("HANDSHAKE_FAILED");
    assert!(line.starts_with("HANDSHAKE_FAILED code=0x178 "), "{line}");
    wait_until("tls reject counted", LIMIT, || {
        rejected(&metrics, RejectReason::Tls) == 1
            && snap(&metrics, Backend::Quic).tls_failures == 1
    })
    .await;
    wait_until("inflight 0", LIMIT, || {
        snap(&metrics, Backend::Quic).inflight == 0
    })
    .await;
    assert_eq!(served.load(Ordering::SeqCst), 0);
    let s = snap(&metrics, Backend::Quic);
    assert_eq!((s.hs_off, s.bytes_in, s.bytes_out), (0, 0, 0));
    engine.shutdown(Duration::from_secs(1)).await;
}

/// `aioquic_cases!(module, Kind)`: one `#[test]` per case above in `mod module`, each running
/// the case for the engine kind `Kind` (an [`EngineKind`]) on a two-worker runtime.
macro_rules! aioquic_cases {
    ($module:ident, $kind:ty) => {
        mod $module {
            #[test]
            fn our_listener_with_an_aioquic_client() {
                crate::util::run_multi_thread(super::our_listener_with_an_aioquic_client::<$kind>());
            }
            #[test]
            fn our_dialer_with_an_aioquic_server() {
                crate::util::run_multi_thread(super::our_dialer_with_an_aioquic_server::<$kind>());
            }
            #[test]
            fn a_stream_without_the_preface_from_aioquic_is_refused() {
                crate::util::run_multi_thread(
                    super::a_stream_without_the_preface_from_aioquic_is_refused::<$kind>(),
                );
            }
            #[test]
            fn a_wrong_alpn_from_aioquic_fails_the_handshake_with_reason_tls() {
                crate::util::run_multi_thread(
                    super::a_wrong_alpn_from_aioquic_fails_the_handshake_with_reason_tls::<$kind>(),
                );
            }
        }
    };
}

aioquic_cases!(tokio_engine, crate::util::engines::TokioEng);
aioquic_cases!(uring_engine, crate::util::engines::UringEng);
// once `EngineSetup::build_uring*` accepts `backend = "quic"`.
