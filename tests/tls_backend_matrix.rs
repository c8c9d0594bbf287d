//! Issue 11 item 2, "never plaintext when TLS was asked for": every combination of `backend`
//! (tcp, tls, arti) × `tls.enabled` × a TLS server config present (injected with
//! `EngineSetup::with_tls_server`), on the tokio and the uring engine.
//!
//! The one meaning: `tls.enabled` with `tcp` is TLS on the TCP listener (the validated
//! backend is `tls`); `tls.enabled` with `arti` and TLS with `uds.path` are validation errors
//! naming the keys; a TLS backend without any server config refuses to listen with a config
//! error naming `tls.enabled` and `backend`, and readiness goes `NotReady{tls_config_missing}`.
//! A listener that serves TLS is checked from the wire: a plaintext client never gets an echo,
//! a TLS client does.

mod util;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ron_shard::RuntimeConfig;
use ron_transport::config::{Backend, CompiledFeatures};
use ron_transport::engine::auto::AutoEngine;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::DialOptions;
use ron_transport::readiness::reasons;
use ron_transport::rustls::{ClientConfig, ServerConfig};
use ron_transport::{
    Config, ConfigError, Conn, Engine, Listener, PqMode, ReadyState, TransportError,
    TransportHealth, TransportMetrics, ValidConfig,
};

use util::tls::TlsFixture;

const ALL: CompiledFeatures = CompiledFeatures {
    tls: true,
    pq: true,
    arti: true,
    quic: true,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Tokio,
    Uring,
}

/// A self-signed cert (for `localhost` and `127.0.0.1`) and its 0600 key, as files, plus a
/// client config trusting it.
struct CertFiles {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    client: Arc<ClientConfig>,
}

fn write_mode(path: &Path, contents: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn cert_files() -> CertFiles {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    write_mode(&cert, ck.cert.pem().as_bytes(), 0o644);
    write_mode(&key, ck.key_pair.serialize_pem().as_bytes(), 0o600);
    let client =
        ron_transport::tls::client_config_from_ca_pem(ck.cert.pem().as_bytes(), PqMode::Off, &[])
            .unwrap();
    CertFiles {
        _dir: dir,
        cert,
        key,
        client,
    }
}

fn config(backend: Backend, enabled: bool, files: &CertFiles) -> Config {
    let mut c = Config::default();
    c.backend = backend;
    c.tls_enabled = enabled;
    if enabled {
        c.tls_cert_path = Some(files.cert.clone());
        c.tls_key_path = Some(files.key.clone());
    }
    c
}

fn build(which: Which, cfg: ValidConfig, server: Option<Arc<ServerConfig>>) -> AutoEngine {
    let mut setup = EngineSetup::new(cfg, TransportMetrics::new()).expect("setup");
    if let Some(s) = server {
        setup = setup.with_tls_server(s);
    }
    match which {
        Which::Tokio => AutoEngine::Tokio(setup.build_tokio().expect("tokio engine")),
        Which::Uring => AutoEngine::Uring(
            setup
                .build_uring_with(RuntimeConfig {
                    shards: 1,
                    pin: false,
                    buf_entries: 64,
                    ..RuntimeConfig::default()
                })
                .expect("uring engine (io_uring usable here)"),
        ),
    }
}

/// A tokio TLS client trusting `client`.
fn tls_client(client: Arc<ClientConfig>) -> AutoEngine {
    let mut c = Config::default();
    c.backend = Backend::Tls;
    let setup = EngineSetup::new(c.validate().unwrap(), TransportMetrics::new())
        .unwrap()
        .with_tls_client(client);
    AutoEngine::Tokio(setup.build_tokio().unwrap())
}

/// Writes one plaintext frame on a raw TCP socket and returns whatever comes back before the
/// server closes (or 2 s pass).
async fn plaintext_probe(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&util::wire_frame(b"plain-hello"))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() >= 4 + 11 {
                    return got;
                }
            }
        }
    }
}

/// Listens on `server`, echoes, and checks what the wire speaks.
async fn check_serves(server: &AutoEngine, tls: bool, client: Option<Arc<ClientConfig>>) {
    let listener = server.listen(util::loopback()).await.expect("listen");
    let addr = listener.local_addr();
    let serving = tokio::spawn(server.serve(listener, |mut c| async move {
        while let Ok(Some(f)) = c.recv().await {
            if c.send(f).await.is_err() {
                break;
            }
        }
    }));
    let echoed = plaintext_probe(addr).await;
    if tls {
        assert!(
            !echoed
                .windows(b"plain-hello".len())
                .any(|w| w == b"plain-hello"),
            "a TLS listener echoed plaintext: {echoed:?}"
        );
        let client = tls_client(client.expect("a client config for a TLS listener"));
        let mut conn = util::within(
            "tls dial",
            Duration::from_secs(10),
            client.dial(addr, DialOptions::default()),
        )
        .await
        .expect("tls dial");
        assert_eq!(conn.info().backend, Backend::Tls);
        conn.send(Bytes::from_static(b"over-tls")).await.unwrap();
        let back = util::within("tls echo", Duration::from_secs(10), conn.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back[..], b"over-tls");
        conn.close().await.unwrap();
        client.shutdown(Duration::from_millis(200)).await;
    } else {
        assert_eq!(echoed, util::wire_frame(b"plain-hello"), "plaintext echo");
    }
    server.shutdown(Duration::from_millis(500)).await;
    let _ = util::within("serve ends", Duration::from_secs(5), serving).await;
}

async fn tcp_and_tls_matrix(which: Which) {
    let files = cert_files();
    let fx = TlsFixture::new(PqMode::Off);
    for backend in [Backend::Tcp, Backend::Tls] {
        for enabled in [false, true] {
            for injected in [false, true] {
                let case = format!(
                    "{which:?} backend={backend:?} tls.enabled={enabled} injected={injected}"
                );
                let cfg = config(backend, enabled, &files)
                    .validate_for(&ALL)
                    .unwrap_or_else(|e| panic!("{case}: {e}"));
                let wants_tls = enabled || backend == Backend::Tls;
                assert_eq!(
                    cfg.backend,
                    if wants_tls {
                        Backend::Tls
                    } else {
                        Backend::Tcp
                    },
                    "{case}: validated backend"
                );
                let server = build(which, cfg, injected.then(|| fx.server.clone()));
                assert_eq!(server.backend(), cfg_backend(wants_tls), "{case}");
                if wants_tls && !enabled && !injected {
                    // A TLS backend with no server config at all: refuses, names both keys.
                    let err = server.listen(util::loopback()).await.expect_err(&case);
                    assert_eq!(err.kind(), "config", "{case}: {err}");
                    match &err {
                        TransportError::Config(ConfigError::Invalid { key, reason }) => {
                            assert_eq!(*key, "tls.enabled", "{case}");
                            assert!(reason.contains("backend"), "{case}: {reason}");
                        }
                        other => panic!("{case}: {other:?}"),
                    }
                    assert_eq!(
                        server.readiness(),
                        ReadyState::NotReady {
                            reason: reasons::TLS_CONFIG_MISSING
                        },
                        "{case}"
                    );
                    server.shutdown(Duration::from_millis(100)).await;
                    continue;
                }
                // Which certificate the server presents: the injected one wins over the files.
                let client = if injected {
                    fx.client.clone()
                } else {
                    files.client.clone()
                };
                println!("{case}: serves {}", if wants_tls { "tls" } else { "tcp" });
                check_serves(&server, wants_tls, Some(client)).await;
            }
        }
    }
}

fn cfg_backend(tls: bool) -> Backend {
    if tls {
        Backend::Tls
    } else {
        Backend::Tcp
    }
}

#[test]
fn tokio_every_tcp_tls_combination_has_one_meaning() {
    util::run_multi_thread(tcp_and_tls_matrix(Which::Tokio));
}

#[test]
fn uring_every_tcp_tls_combination_has_one_meaning() {
    util::run_multi_thread(tcp_and_tls_matrix(Which::Uring));
}

#[test]
fn arti_with_tls_enabled_is_a_validation_error_naming_the_key() {
    let files = cert_files();
    for enabled in [false, true] {
        let r = config(Backend::Arti, enabled, &files).validate_for(&ALL);
        if enabled {
            match r {
                Err(ConfigError::Invalid { key, reason }) => {
                    assert_eq!(key, "tls.enabled");
                    assert!(reason.contains("arti"), "{reason}");
                }
                other => panic!("arti + tls.enabled: {other:?}"),
            }
        } else {
            let cfg = r.expect("arti without tls.enabled is valid");
            assert_eq!(cfg.backend, Backend::Arti);
            // No socket engine serves arti, with or without a server config.
            let fx = TlsFixture::new(PqMode::Off);
            for injected in [false, true] {
                let setup = EngineSetup::new(cfg.clone(), TransportMetrics::new());
                let setup = setup.map(|s| {
                    if injected {
                        s.with_tls_server(fx.server.clone())
                    } else {
                        s
                    }
                });
                assert_eq!(setup.map(drop).unwrap_err().kind(), "unsupported");
            }
        }
    }
}

#[test]
fn tls_with_a_unix_socket_is_a_validation_error_naming_the_keys() {
    use std::os::unix::fs::PermissionsExt;
    let files = cert_files();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    for (backend, enabled) in [
        (Backend::Tcp, true),
        (Backend::Tls, false),
        (Backend::Tls, true),
    ] {
        let mut c = config(backend, enabled, &files);
        c.bind_addr = None;
        c.uds_path = Some(dir.path().join("s.sock"));
        match c.validate_for(&ALL) {
            Err(ConfigError::Invalid { key, reason }) => {
                assert_eq!(key, "uds.path", "{backend:?} {enabled}");
                assert!(
                    reason.contains("tls.enabled") && reason.contains("backend"),
                    "{reason}"
                );
            }
            other => panic!("{backend:?} tls.enabled={enabled} with uds.path: {other:?}"),
        }
    }
    // Plain TCP with a Unix socket stays valid.
    let mut c = Config::default();
    c.bind_addr = None;
    c.uds_path = Some(dir.path().join("s.sock"));
    assert!(c.validate_for(&ALL).is_ok());
}
