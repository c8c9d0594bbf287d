//! TLS cipher-suite posture (spec/QUANTUM.md PQ-I2: ≥ 256-bit symmetric strength): both
//! engines offer and accept only `TLS13_AES_256_GCM_SHA384` and
//! `TLS13_CHACHA20_POLY1305_SHA256`. Checked against independent peers on both sides of the
//! handshake: tokio-rustls clients and servers restricted to one suite, and OpenSSL's
//! `s_client` / `s_server` (the `openssl` binary must be installed; .ci/run installs it).
//! A 256-bit suite negotiates (the peer reports which); an AES-128-only peer fails the
//! handshake, counted as `rejected_total{reason="tls"}` and, on the dialing side, an error of
//! kind `tls`.

mod util;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use ron_transport::config::Backend;
use ron_transport::engine::DialOptions;
use ron_transport::rustls::crypto::{aws_lc_rs, CryptoProvider};
use ron_transport::rustls::pki_types::pem::PemObject;
use ron_transport::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use ron_transport::rustls::{self, CipherSuite, RootCertStore};
use ron_transport::{
    Config, Conn, Engine, Listener, RejectReason, TransportError, TransportMetrics,
};

use util::engines::EngineKind;
use util::tls::{openssl, PemMaterial};
use util::{loopback, rejected, spawn_echo, wait_until, wire_frame, within};

const SLACK: Duration = Duration::from_secs(10);

/// The suites the transport must negotiate.
const STRONG: [CipherSuite; 2] = [
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];
/// The suite it must refuse.
const WEAK: CipherSuite = CipherSuite::TLS13_AES_128_GCM_SHA256;

type Material = PemMaterial;

fn material() -> Material {
    PemMaterial::new()
}

fn engine<K: EngineKind>(m: &Material) -> (K::E, Arc<TransportMetrics>) {
    let mut c = Config::default();
    c.backend = Backend::Tls;
    c.bind_addr = Some(loopback());
    let metrics = TransportMetrics::new();
    let e = K::build(c.validate().unwrap(), Some(&m.fixture), metrics.clone());
    (e, metrics)
}

fn dial_opts() -> DialOptions {
    DialOptions {
        deadline: Duration::from_secs(5),
        ..DialOptions::default()
    }
}

/// aws-lc-rs restricted to the one TLS 1.3 suite `suite`.
fn one_suite_provider(suite: CipherSuite) -> Arc<CryptoProvider> {
    let base = aws_lc_rs::default_provider();
    let cipher_suites = base
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| s.suite() == suite)
        .collect::<Vec<_>>();
    assert_eq!(cipher_suites.len(), 1, "{suite:?} in aws-lc-rs");
    Arc::new(CryptoProvider {
        cipher_suites,
        ..base
    })
}

fn peer_client(m: &Material, suite: CipherSuite) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(m.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(one_suite_provider(suite))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

fn peer_server(m: &Material, suite: CipherSuite) -> TlsAcceptor {
    let certs = CertificateDer::pem_slice_iter(m.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(m.key_pem.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(one_suite_provider(suite))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    TlsAcceptor::from(Arc::new(cfg))
}

fn assert_tls_err(err: &TransportError) {
    assert!(matches!(err, TransportError::Tls { .. }), "{err:?}");
    assert_eq!(err.kind(), "tls");
    assert_eq!(err.reject_reason(), Some(RejectReason::Tls));
}

// ------------------------------------------------------------------ tokio-rustls peers

/// tokio-rustls clients offering one suite each dial the engine's TLS listener.
async fn rustls_client_peer<K: EngineKind>() {
    let m = material();
    let (server, metrics) = engine::<K>(&m);
    let listener = server.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let echo = spawn_echo(&server, listener);
    let name = ServerName::try_from("localhost").unwrap();

    for suite in STRONG {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = within(
            "handshake",
            SLACK,
            peer_client(&m, suite).connect(name.clone(), tcp),
        )
        .await
        .unwrap_or_else(|e| panic!("{suite:?} must negotiate: {e}"));
        assert_eq!(
            tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
            Some(suite)
        );
        tls.write_all(&wire_frame(b"strong")).await.unwrap();
        let mut back = [0u8; 10];
        within("echo", SLACK, tls.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(&back, &wire_frame(b"strong")[..]);
    }
    assert_eq!(rejected(&metrics, RejectReason::Tls), 0);

    let tcp = TcpStream::connect(addr).await.unwrap();
    let res = within("handshake", SLACK, peer_client(&m, WEAK).connect(name, tcp)).await;
    assert!(res.is_err(), "an AES-128-only client must not negotiate");
    wait_until("server counts rejected{tls}", SLACK, || {
        rejected(&metrics, RejectReason::Tls) == 1
    })
    .await;
    echo.abort();
    server.shutdown(Duration::from_secs(2)).await;
}

/// The engine dials tokio-rustls servers accepting one suite each.
async fn rustls_server_peer<K: EngineKind>() {
    let m = material();
    let (client, metrics) = engine::<K>(&m);
    for suite in STRONG.into_iter().chain([WEAK]) {
        let tcp = TcpListener::bind(loopback()).await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let acceptor = peer_server(&m, suite);
        let peer = tokio::spawn(async move {
            let (s, _) = tcp.accept().await.unwrap();
            match acceptor.accept(s).await {
                Ok(mut tls) => {
                    let got = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
                    // Echo one frame so the dialer sees the session work.
                    let mut f = [0u8; 8];
                    if tls.read_exact(&mut f).await.is_ok() {
                        let _ = tls.write_all(&f).await;
                    }
                    got
                }
                Err(_) => None,
            }
        });
        let res = within("dial", SLACK, client.dial(addr, dial_opts())).await;
        if suite == WEAK {
            assert_tls_err(&res.err().expect("dial to an AES-128-only server must fail"));
            assert_eq!(within("peer", SLACK, peer).await.unwrap(), None);
            assert_eq!(rejected(&metrics, RejectReason::Tls), 1);
        } else {
            let mut conn = res.unwrap_or_else(|e| panic!("{suite:?} must negotiate: {e}"));
            conn.send(bytes::Bytes::from_static(b"ping")).await.unwrap();
            let back = within("echo", SLACK, conn.recv()).await.unwrap().unwrap();
            assert_eq!(&back[..], b"ping");
            assert_eq!(within("peer", SLACK, peer).await.unwrap(), Some(suite));
            let _ = conn.close().await;
            assert_eq!(rejected(&metrics, RejectReason::Tls), 0);
        }
    }
    client.shutdown(Duration::from_secs(2)).await;
}

// ------------------------------------------------------------------ OpenSSL peers

/// The payload s_client sends and expects back.
const ECHO_MARK: &[u8] = b"cipher-suite-echo-ok";

/// OpenSSL's name of a TLS 1.3 suite.
fn openssl_name(suite: CipherSuite) -> &'static str {
    match suite {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        other => panic!("no OpenSSL name for {other:?}"),
    }
}

/// `openssl s_client` offering one suite each connects to the engine's TLS listener.
async fn openssl_client_peer<K: EngineKind>() {
    let m = material();
    let (server, metrics) = engine::<K>(&m);
    let listener = server.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let echo = spawn_echo(&server, listener);

    for suite in STRONG.into_iter().chain([WEAK]) {
        let name = openssl_name(suite);
        // stdin stays open until the echo came back: s_client quits on EOF from stdin, and a
        // client that leaves right after its Finished is a different case (see the report).
        let mut child = openssl()
            .args(["s_client", "-connect", &addr.to_string(), "-tls1_3"])
            .args(["-ciphersuites", name, "-servername", "localhost"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openssl s_client");
        let mut stdin = child.stdin.take().unwrap();
        // A frame in raw bytes: s_client forwards stdin unchanged.
        let _ = stdin.write_all(&wire_frame(ECHO_MARK)).await;
        let mut stdout = child.stdout.take().unwrap();
        let mut text = Vec::new();
        let marker = format!("Cipher is {name}");
        within("s_client output", SLACK, async {
            let mut buf = [0u8; 4096];
            loop {
                let t = String::from_utf8_lossy(&text);
                if t.contains(&marker) && t.contains(std::str::from_utf8(ECHO_MARK).unwrap()) {
                    return;
                }
                match stdout.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => text.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        drop(stdin);
        let status = within("s_client exit", SLACK, child.wait()).await.unwrap();
        let text = String::from_utf8_lossy(&text);
        let negotiated = text.contains(&marker);
        if suite == WEAK {
            assert!(!negotiated, "AES-128 must not negotiate:\n{text}");
            assert!(!status.success(), "s_client must fail:\n{text}");
            wait_until("server counts rejected{tls}", SLACK, || {
                rejected(&metrics, RejectReason::Tls) == 1
            })
            .await;
        } else {
            assert!(negotiated, "{name} must negotiate:\n{text}");
            assert!(
                text.contains(std::str::from_utf8(ECHO_MARK).unwrap()),
                "the frame must come back over {name}:\n{text}"
            );
            assert_eq!(rejected(&metrics, RejectReason::Tls), 0);
        }
    }
    echo.abort();
    server.shutdown(Duration::from_secs(2)).await;
}

/// The engine dials `openssl s_server` accepting one suite each.
async fn openssl_server_peer<K: EngineKind>() {
    let m = material();
    let (client, metrics) = engine::<K>(&m);

    for suite in STRONG.into_iter().chain([WEAK]) {
        let name = openssl_name(suite);
        let (mut child, addr, _pem_dir) = m.s_server(&["-ciphersuites", name]);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        within("s_server ACCEPT", SLACK, async {
            while let Some(l) = lines.next_line().await.unwrap() {
                if l.contains("ACCEPT") {
                    return;
                }
            }
            panic!("s_server ended before ACCEPT");
        })
        .await;

        let res = within("dial", SLACK, client.dial(addr, dial_opts())).await;
        if suite == WEAK {
            assert_tls_err(
                &res.err()
                    .expect("dial to an AES-128-only s_server must fail"),
            );
            assert_eq!(rejected(&metrics, RejectReason::Tls), 1);
        } else {
            let conn = res.unwrap_or_else(|e| panic!("{name} must negotiate: {e}"));
            let cipher = within("s_server CIPHER line", SLACK, async {
                while let Some(l) = lines.next_line().await.unwrap() {
                    if let Some(c) = l.strip_prefix("CIPHER is ") {
                        return c.trim().to_owned();
                    }
                }
                panic!("s_server printed no CIPHER line");
            })
            .await;
            assert_eq!(cipher, name);
            let _ = conn.close().await;
            assert_eq!(rejected(&metrics, RejectReason::Tls), 0);
        }
        let _ = child.kill().await;
    }
    client.shutdown(Duration::from_secs(2)).await;
}

per_engine!(
    rustls_client_peer,
    rustls_server_peer,
    openssl_client_peer,
    openssl_server_peer
);
