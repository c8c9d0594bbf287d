//! QUIC interop (feature `quic`): our listener with a plain quinn client, our dialer with a
//! plain quinn server — both with rustls's stock aws-lc-rs provider, not ours — speaking OAP/1
//! over QUIC (ALPN `oap/1`, the stream preface, u32-length-prefixed frames). Plus what a plain
//! peer can do that our own dialer never does: several streams on one connection (several
//! `Conn`s), a stream without the preface (`quic_path_error`), a wrong ALPN (`tls`), caps
//! counted per QUIC connection before the handshake.
//!
//! Every case is a function generic over the engine kind ([`util::engines::EngineKind`]);
//! `interop_cases!(module, Kind: cases…)` instantiates them for one engine: the tokio engine
//! (quinn) and the uring engine (quinn-proto on two shards' rings).
#![cfg(feature = "quic")]

mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ron_transport::config::Backend;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::quic::{ALPN, STREAM_PREFACE};
use ron_transport::rustls;
use ron_transport::{
    Config, Conn, Engine, Listener, PqMode, RejectReason, TransportMetrics, ValidConfig,
};

use util::engines::{EngineKind, TokioEng, UringEng};
use util::quic::{read_frame, write_frame};
use util::tls::TlsFixture;
use util::{loopback, payload, rejected, snap, spawn_echo, wait_until, within};

const SLACK: Duration = Duration::from_secs(5);

/// A self-signed certificate for 127.0.0.1 / localhost: (cert DER, key DER, cert PEM, key PEM).
struct Cert {
    cert_pem: String,
    key_pem: String,
}

fn cert() -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen");
    Cert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
    }
}

fn quic_config() -> Config {
    let mut c = Config::default();
    c.backend = Backend::Quic;
    c.bind_addr = Some(loopback());
    c
}

/// Our engine of kind `K` on `backend = "quic"` with the project's TLS configs for `cert`.
fn engine<K: EngineKind>(cfg: ValidConfig, c: &Cert, metrics: Arc<TransportMetrics>) -> K::E {
    let server = ron_transport::tls::server_config_from_pem(
        c.cert_pem.as_bytes(),
        zeroize::Zeroizing::new(c.key_pem.clone().into_bytes()),
        PqMode::Off,
        &[],
    )
    .unwrap();
    let client =
        ron_transport::tls::client_config_from_ca_pem(c.cert_pem.as_bytes(), PqMode::Off, &[])
            .unwrap();
    K::build(cfg, Some(&TlsFixture { server, client }), metrics)
}

fn stock_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs_and_key(
    c: &Cert,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
    (certs, key)
}

/// A plain quinn client endpoint trusting `c`, offering `alpn`.
fn plain_client(c: &Cert, alpn: &[u8]) -> quinn::Endpoint {
    util::quic::plain_client(&c.cert_pem, alpn)
}

/// A plain quinn server endpoint with `c`, ALPN `oap/1`.
fn plain_server(c: &Cert) -> quinn::Endpoint {
    let (certs, key) = certs_and_key(c);
    let mut tls = rustls::ServerConfig::builder_with_provider(stock_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    quinn::Endpoint::server(sc, loopback()).unwrap()
}

/// Our listener on `cfg` serving an echo: (engine, metrics, address, certificate).
async fn echo_server<K: EngineKind>(
    cfg: Config,
) -> (K::E, Arc<TransportMetrics>, SocketAddr, Cert) {
    let c = cert();
    let metrics = TransportMetrics::new();
    let server = engine::<K>(cfg.validate().unwrap(), &c, metrics.clone());
    let listener = server.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    spawn_echo(&server, listener);
    (server, metrics, addr, c)
}

fn our_server_with_a_plain_quinn_client_on_several_streams<K: EngineKind>() {
    util::run_multi_thread(async {
        let (server, metrics, addr, c) = echo_server::<K>(quic_config()).await;

        let ep = plain_client(&c, ALPN);
        let conn = within("connect", SLACK, async {
            ep.connect(addr, "localhost").unwrap().await
        })
        .await
        .expect("handshake with our listener");
        assert_eq!(
            conn.handshake_data()
                .unwrap()
                .downcast::<quinn::crypto::rustls::HandshakeData>()
                .unwrap()
                .protocol
                .as_deref(),
            Some(ALPN)
        );
        // Three streams on one connection: three Conns, echoed independently.
        let mut streams = Vec::new();
        for i in 0..3u8 {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&STREAM_PREFACE).await.unwrap();
            write_frame(&mut send, &payload(1000 + i as usize, i)).await;
            streams.push((send, recv, i));
        }
        for (send, recv, i) in &mut streams {
            let got = within("echo", SLACK, read_frame(recv)).await.unwrap();
            assert_eq!(got, payload(1000 + *i as usize, *i));
            write_frame(send, &payload(65_536, *i)).await;
            let got = within("echo 64 KiB", SLACK, read_frame(recv))
                .await
                .unwrap();
            assert_eq!(got, payload(65_536, *i));
            send.finish().unwrap();
        }
        for (_, recv, _) in &mut streams {
            assert!(within("eof", SLACK, read_frame(recv)).await.is_none());
        }
        let s = snap(&metrics, Backend::Quic);
        assert_eq!(s.accepts, 1, "caps count QUIC connections, not streams");
        assert_eq!(s.hs_off, 1);
        let wire = 3 * (4 + 65_536) + (4 + 1000) + (4 + 1001) + (4 + 1002);
        wait_until("server bytes", SLACK, || {
            let s = snap(&metrics, Backend::Quic);
            s.bytes_in == wire && s.bytes_out == wire
        })
        .await;
        // The last stream ended on the server: it closes the connection.
        let closed = within("server closes", SLACK, conn.closed()).await;
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
            "{closed:?}"
        );
        wait_until("inflight 0", SLACK, || {
            snap(&metrics, Backend::Quic).inflight == 0
        })
        .await;
        for r in RejectReason::ALL {
            assert_eq!(rejected(&metrics, r), 0, "{r}");
        }
        server.shutdown(Duration::from_secs(1)).await;
    });
}

fn our_client_with_a_plain_quinn_server<K: EngineKind>() {
    util::run_multi_thread(async {
        let c = cert();
        let ep = plain_server(&c);
        let addr = ep.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            let conn = ep.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let mut preface = [0u8; 4];
            recv.read_exact(&mut preface).await.unwrap();
            assert_eq!(preface, STREAM_PREFACE);
            let mut n = 0;
            while let Some(f) = read_frame(&mut recv).await {
                write_frame(&mut send, &f).await;
                n += 1;
            }
            send.finish().unwrap();
            let _ = send.stopped().await;
            n
        });
        let metrics = TransportMetrics::new();
        let client = engine::<K>(quic_config().validate().unwrap(), &c, metrics.clone());
        let mut conn = client.dial(addr, Default::default()).await.expect("dial");
        assert_eq!(conn.info().backend, Backend::Quic);
        assert_eq!(conn.info().alpn.as_deref(), Some(ALPN));
        for (i, n) in [0usize, 1, 4096, 300_000, 1 << 20].into_iter().enumerate() {
            conn.send(payload(n, i as u8)).await.unwrap();
            let got = within("echo", SLACK, conn.recv()).await.unwrap().unwrap();
            assert_eq!(got, payload(n, i as u8), "{n} bytes");
        }
        within("close", SLACK, conn.close()).await.unwrap();
        assert_eq!(within("server done", SLACK, srv).await.unwrap(), 5);
        let s = snap(&metrics, Backend::Quic);
        assert_eq!((s.dials_ok, s.dials_err), (1, 0));
        wait_until("inflight 0", SLACK, || {
            snap(&metrics, Backend::Quic).inflight == 0
        })
        .await;
    });
}

fn a_stream_without_the_preface_is_reset_and_counted<K: EngineKind>() {
    util::run_multi_thread(async {
        let (_server, metrics, addr, c) = echo_server::<K>(quic_config()).await;
        let ep = plain_client(&c, ALPN);
        let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        // A frame straight away: no preface.
        write_frame(&mut send, b"hello").await;
        assert!(within("refused", SLACK, read_frame(&mut recv))
            .await
            .is_none());
        wait_until("counted", SLACK, || {
            rejected(&metrics, RejectReason::QuicPathError) == 1
        })
        .await;
        // It was the only stream: the connection is closed and its admission released.
        within("closed", SLACK, conn.closed()).await;
        wait_until("inflight 0", SLACK, || {
            snap(&metrics, Backend::Quic).inflight == 0
        })
        .await;
        assert!(metrics
            .render()
            .contains("rejected_total{reason=\"quic_path_error\"} 1"));
    });
}

fn a_wrong_alpn_fails_the_handshake_with_reason_tls<K: EngineKind>() {
    util::run_multi_thread(async {
        let (_server, metrics, addr, c) = echo_server::<K>(quic_config()).await;
        let ep = plain_client(&c, b"h3");
        let err = within("connect", SLACK, async {
            ep.connect(addr, "localhost").unwrap().await
        })
        .await
        .expect_err("no common ALPN");
        assert!(
            matches!(err, quinn::ConnectionError::ConnectionClosed(_)),
            "{err:?}"
        );
        wait_until("tls reject counted", SLACK, || {
            rejected(&metrics, RejectReason::Tls) == 1
                && snap(&metrics, Backend::Quic).tls_failures == 1
        })
        .await;
        wait_until("inflight 0", SLACK, || {
            snap(&metrics, Backend::Quic).inflight == 0
        })
        .await;
    });
}

fn caps_count_quic_connections_before_the_handshake<K: EngineKind>() {
    util::run_multi_thread(async {
        let mut cfg = quic_config();
        cfg.max_conns = 1;
        let (_server, metrics, addr, c) = echo_server::<K>(cfg).await;
        let ep = plain_client(&c, ALPN);
        let first = ep.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut send, mut recv) = first.open_bi().await.unwrap();
        send.write_all(&STREAM_PREFACE).await.unwrap();
        write_frame(&mut send, b"one").await;
        assert_eq!(
            within("echo", SLACK, read_frame(&mut recv)).await.unwrap(),
            Bytes::from_static(b"one")
        );
        // The second connection is refused at `Incoming`: no handshake, no TLS failure.
        let err = within("second", SLACK, async {
            ep.connect(addr, "localhost").unwrap().await
        })
        .await
        .expect_err("over the cap");
        assert!(
            matches!(err, quinn::ConnectionError::ConnectionClosed(_)),
            "{err:?}"
        );
        assert_eq!(rejected(&metrics, RejectReason::PeerLimit), 1);
        let s = snap(&metrics, Backend::Quic);
        assert_eq!((s.accepts, s.hs_off, s.tls_failures), (1, 1, 0));
    });
}

fn the_quic_idle_timeout_is_a_quic_path_error<K: EngineKind>() {
    util::run_multi_thread(async {
        let c = cert();
        let metrics = TransportMetrics::new();
        let mut cfg = quic_config();
        cfg.quic_idle_timeout = Duration::from_secs(1);
        let client = engine::<K>(cfg.validate().unwrap(), &c, metrics.clone());
        // A plain server that completes the handshake, accepts the stream, then goes silent
        // (its endpoint stops sending anything: every datagram is dropped on the floor).
        let ep = plain_server(&c);
        let addr = ep.local_addr().unwrap();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let srv = tokio::spawn(async move {
            let conn = ep.accept().await.unwrap().await.unwrap();
            let (_send, mut recv) = conn.accept_bi().await.unwrap();
            let mut preface = [0u8; 4];
            recv.read_exact(&mut preface).await.unwrap();
            // Swap the socket for one nobody sends to: the path is gone.
            ep.rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap();
            let _ = ready_tx.send(());
            tokio::time::sleep(Duration::from_secs(4)).await;
            drop((conn, ep));
        });
        let mut conn = client.dial(addr, Default::default()).await.expect("dial");
        ready_rx.await.unwrap();
        let err = within("path lost", Duration::from_secs(10), conn.recv())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "quic_path_error", "{err:?}");
        assert_eq!(rejected(&metrics, RejectReason::QuicPathError), 1);
        srv.abort();
    });
}

/// A plain quinn client connected to our listener with one stream (preface written), and the
/// server side of that stream.
async fn misbehaving_peer<K: EngineKind>(
    cfg: Config,
) -> (
    K::E,
    Arc<TransportMetrics>,
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
    <K::E as Engine>::Conn,
) {
    let c = cert();
    let metrics = TransportMetrics::new();
    let server = engine::<K>(cfg.validate().unwrap(), &c, metrics.clone());
    let mut listener = server.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let ep = plain_client(&c, ALPN);
    let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&STREAM_PREFACE).await.unwrap();
    let srv = within("accept", SLACK, listener.accept()).await.unwrap();
    // The listener is dropped here: accepted streams keep running.
    (server, metrics, ep, conn, send, recv, srv)
}

fn assert_timeout(err: &ron_transport::TransportError, op: ron_transport::TimeoutOp) {
    assert!(
        matches!(err, ron_transport::TransportError::Timeout { op: got } if *got == op),
        "expected Timeout{{{op}}}, got {err:?}"
    );
}

/// Slow-loris on a stream: half a frame, then nothing ⇒ `Timeout{Read}` (silence between
/// frames is not one); the peer sees its stream end.
fn read_timeout_on_a_quic_stream<K: EngineKind>() {
    util::run_multi_thread(async {
        let mut cfg = quic_config();
        cfg.read_timeout = Duration::from_millis(300);
        let (_server, metrics, _ep, _conn, mut send, mut recv, mut srv) =
            misbehaving_peer::<K>(cfg).await;
        write_frame(&mut send, b"one").await;
        assert_eq!(
            &within("one", SLACK, srv.recv()).await.unwrap().unwrap()[..],
            b"one"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        write_frame(&mut send, b"two").await;
        assert_eq!(
            &within("two", SLACK, srv.recv()).await.unwrap().unwrap()[..],
            b"two"
        );
        assert_eq!(rejected(&metrics, RejectReason::Timeout), 0);

        let start = std::time::Instant::now();
        send.write_all(&[0, 0, 0, 10, b'h', b'a']).await.unwrap();
        let err = within("read timeout", SLACK, srv.recv()).await.unwrap_err();
        assert_timeout(&err, ron_transport::TimeoutOp::Read);
        assert!(start.elapsed() >= Duration::from_millis(250), "fired early");
        assert_eq!(rejected(&metrics, RejectReason::Timeout), 1);
        assert!(within("peer sees the end", SLACK, read_frame(&mut recv))
            .await
            .is_none());
        wait_until("released", SLACK, || {
            snap(&metrics, Backend::Quic).inflight == 0
        })
        .await;
    });
}

/// No byte either way for `idle_timeout` ⇒ `Timeout{Idle}`, even with QUIC keep-alives
/// keeping the path itself alive.
fn idle_timeout_on_a_quic_stream<K: EngineKind>() {
    util::run_multi_thread(async {
        let mut cfg = quic_config();
        cfg.idle_timeout = Duration::from_secs(1);
        cfg.quic_keep_alive = Duration::from_millis(200);
        let (_server, metrics, _ep, _conn, mut send, _recv, mut srv) =
            misbehaving_peer::<K>(cfg).await;
        write_frame(&mut send, b"ping").await;
        assert_eq!(
            &within("ping", SLACK, srv.recv()).await.unwrap().unwrap()[..],
            b"ping"
        );
        let start = std::time::Instant::now();
        let err = within("idle", SLACK, srv.recv()).await.unwrap_err();
        assert_timeout(&err, ron_transport::TimeoutOp::Idle);
        assert!(start.elapsed() >= Duration::from_millis(900), "fired early");
        assert_eq!(rejected(&metrics, RejectReason::Timeout), 1);
    });
}

/// A peer that never reads: QUIC flow control stops the writer, and after `write_timeout`
/// without progress the connection fails with `Timeout{Write}`.
fn write_timeout_when_the_quic_peer_does_not_read<K: EngineKind>() {
    util::run_multi_thread(async {
        let mut cfg = quic_config();
        cfg.write_timeout = Duration::from_millis(300);
        let (_server, metrics, _ep, _conn, _send, _recv, srv) = misbehaving_peer::<K>(cfg).await;
        let frame = payload(64 * 1024, 7);
        let err = within("write timeout", Duration::from_secs(20), async {
            loop {
                if let Err(e) = srv.send(frame.clone()).await {
                    return e;
                }
            }
        })
        .await;
        assert_timeout(&err, ron_transport::TimeoutOp::Write);
        wait_until("counted once", SLACK, || {
            rejected(&metrics, RejectReason::Timeout) == 1
        })
        .await;
    });
}

/// A dial to a UDP port nobody answers runs into its deadline: `Timeout{Dial}`, counted.
fn dial_deadline_on_a_silent_udp_port<K: EngineKind>() {
    util::run_multi_thread(async {
        let c = cert();
        let metrics = TransportMetrics::new();
        let client = engine::<K>(quic_config().validate().unwrap(), &c, metrics.clone());
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let opts = ron_transport::DialOptions {
            deadline: Duration::from_millis(400),
            ..Default::default()
        };
        let start = std::time::Instant::now();
        let err = match client.dial(silent.local_addr().unwrap(), opts).await {
            Ok(_) => panic!("a silent port answered"),
            Err(e) => e,
        };
        assert_timeout(&err, ron_transport::TimeoutOp::Dial);
        assert!(start.elapsed() >= Duration::from_millis(350));
        let s = snap(&metrics, Backend::Quic);
        assert_eq!((s.dials_ok, s.dials_err, s.inflight), (0, 1, 0));
        assert_eq!(rejected(&metrics, RejectReason::Timeout), 1);
    });
}

/// Engine auto-selection with `backend = "quic"` takes the uring engine where io_uring works
/// (the shards drive quinn-proto), with reason `uring_available`, and the engine it returns
/// speaks QUIC.
#[test]
fn auto_selection_takes_uring_for_quic() {
    util::run_multi_thread(async {
        let c = cert();
        let metrics = TransportMetrics::new();
        let setup = EngineSetup::new(quic_config().validate().unwrap(), metrics.clone())
            .unwrap()
            .with_tls_server(
                ron_transport::tls::server_config_from_pem(
                    c.cert_pem.as_bytes(),
                    zeroize::Zeroizing::new(c.key_pem.clone().into_bytes()),
                    PqMode::Off,
                    &[],
                )
                .unwrap(),
            );
        let (engine, choice) = ron_transport::engine::auto::AutoEngine::build(setup).unwrap();
        assert_eq!(
            (choice.kind, choice.reason),
            (ron_transport::EngineKind::Uring, "uring_available"),
            "io_uring is usable here (the uring cases need it too)"
        );
        assert!(matches!(
            engine,
            ron_transport::engine::auto::AutoEngine::Uring(_)
        ));
        let listener = engine.listen(loopback()).await.unwrap();
        let addr = listener.local_addr();
        spawn_echo(&engine, listener);
        let ep = plain_client(&c, ALPN);
        let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&STREAM_PREFACE).await.unwrap();
        write_frame(&mut send, b"auto").await;
        assert_eq!(
            within("echo", SLACK, read_frame(&mut recv)).await.unwrap(),
            Bytes::from_static(b"auto")
        );
        assert_eq!(snap(&metrics, Backend::Quic).accepts, 1);
    });
}

/// Log lines of this thread, captured.
#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

/// How a case sees the stateless Retries an engine sent: the tokio engine logs
/// `event="quic_retry"` (captured from this thread's subscriber); the uring engine's shards
/// count them (`quic_retries`).
trait Retries: EngineKind {
    fn retries(engine: &Self::E, logs: &str) -> u64;
}

impl Retries for TokioEng {
    fn retries(_: &Self::E, logs: &str) -> u64 {
        logs.lines().filter(|l| l.contains("quic_retry")).count() as u64
    }
}

impl Retries for UringEng {
    fn retries(engine: &Self::E, _: &str) -> u64 {
        engine.shard_stats().iter().map(|s| s.quic_retries).sum()
    }
}

/// One echo through a listener with `max_conns`, on a current-thread runtime (so every task
/// of the tokio engine logs into this thread's subscriber); returns the Retries seen, the
/// debug log and the metrics.
fn one_echo_logged<K: Retries>(max_conns: u32) -> (u64, String, Arc<TransportMetrics>) {
    let buf = LogBuf::default();
    let sub = tracing_subscriber::fmt()
        .with_writer(buf.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let _g = tracing::subscriber::set_default(sub);
    let metrics = TransportMetrics::new();
    let m = metrics.clone();
    let c = cert();
    let mut cfg = quic_config();
    cfg.max_conns = max_conns;
    let server = engine::<K>(cfg.validate().unwrap(), &c, m);
    util::run_current_thread(async {
        let listener = server.listen(loopback()).await.unwrap();
        let addr = listener.local_addr();
        spawn_echo(&server, listener);
        let ep = plain_client(&c, ALPN);
        let conn = within("connect", SLACK, async {
            ep.connect(addr, "localhost").unwrap().await
        })
        .await
        .expect("handshake");
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&STREAM_PREFACE).await.unwrap();
        write_frame(&mut send, b"validated").await;
        assert_eq!(
            within("echo", SLACK, read_frame(&mut recv)).await.unwrap(),
            Bytes::from_static(b"validated")
        );
    });
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (K::retries(&server, &logs), logs, metrics)
}

/// Under handshake load (here: `max_conns = 1`, so the Retry threshold is 0 handshakes in
/// flight) a new peer is sent a stateless Retry before anything is admitted; the quinn client
/// answers with the token and is then admitted once. Without load (the default caps), no Retry.
fn retry_validates_addresses_under_handshake_load<K: Retries>() {
    let (retries, logs, metrics) = one_echo_logged::<K>(1);
    assert_eq!(retries, 1, "one Retry under load:\n{logs}");
    let s = snap(&metrics, Backend::Quic);
    assert_eq!(
        (s.accepts, s.hs_off),
        (1, 1),
        "admitted once, after validation"
    );
    for r in RejectReason::ALL {
        assert_eq!(rejected(&metrics, r), 0, "{r}");
    }
    let (retries, logs, _) = one_echo_logged::<K>(1024);
    assert_eq!(retries, 0, "Retry without load:\n{logs}");
}

/// `interop_cases!(case, …)`: `mod tokio_engine` and `mod uring_engine`, each with one
/// `#[test]` per case running `case::<Kind>()` for that engine kind.
macro_rules! interop_cases {
    ($($case:ident),* $(,)?) => {
        interop_cases!(@engine tokio_engine, crate::TokioEng: $($case),*);
        interop_cases!(@engine uring_engine, crate::UringEng: $($case),*);
    };
    (@engine $module:ident, $kind:ty: $($case:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $case() {
                    super::$case::<$kind>();
                }
            )*
        }
    };
}

interop_cases!(
    our_server_with_a_plain_quinn_client_on_several_streams,
    our_client_with_a_plain_quinn_server,
    a_stream_without_the_preface_is_reset_and_counted,
    a_wrong_alpn_fails_the_handshake_with_reason_tls,
    caps_count_quic_connections_before_the_handshake,
    the_quic_idle_timeout_is_a_quic_path_error,
    read_timeout_on_a_quic_stream,
    idle_timeout_on_a_quic_stream,
    write_timeout_when_the_quic_peer_does_not_read,
    dial_deadline_on_a_silent_udp_port,
    retry_validates_addresses_under_handshake_load,
);
