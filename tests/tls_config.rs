//! TLS configuration end to end, in memory: rustls `ClientConnection`/`ServerConnection` pairs
//! built from `ron_transport::tls` configs exchange bytes through a `transfer` loop (no
//! sockets). Certificates come from rcgen, written to a tempdir with the key at mode 0600.
//!
//! Covers PQ negotiation (hybrid↔hybrid, hybrid↔classical fallback, off↔off), resumption,
//! trust failures, ALPN, TLS 1.2 refusal, and the typed errors of the loaders.

#![cfg(feature = "tls")]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ron_transport::rustls::crypto::aws_lc_rs;
use ron_transport::rustls::pki_types::ServerName;
use ron_transport::rustls::{self, ClientConnection, Connection, NamedGroup, ServerConnection};
use ron_transport::tls;
use ron_transport::{Backend, Config, ConfigError, PqLabel, PqMode, TransportError, TrustStore};
use zeroize::Zeroizing;

// ------------------------------------------------------------------------------------------
// Fixtures
// ------------------------------------------------------------------------------------------

/// A CA and a leaf for `localhost` / 127.0.0.1 signed by it, as PEM.
struct Pki {
    ca_pem: String,
    leaf_pem: String,
    leaf_key_pem: String,
}

fn pki() -> Pki {
    pki_named("ron-transport test CA")
}

fn pki_named(ca_name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        leaf_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    #[cfg(not(unix))]
    let _ = mode;
}

/// PKI material on disk: `cert.pem` (0644), `key.pem` (0600), `ca.pem` (0644).
struct OnDisk {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

fn on_disk(p: &Pki) -> OnDisk {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let ca = dir.path().join("ca.pem");
    write_file(&cert, p.leaf_pem.as_bytes(), 0o644);
    write_file(&key, p.leaf_key_pem.as_bytes(), 0o600);
    write_file(&ca, p.ca_pem.as_bytes(), 0o644);
    OnDisk {
        _dir: dir,
        cert,
        key,
        ca,
    }
}

fn server_cfg(p: &Pki, pq: PqMode, alpn: &[&str]) -> Arc<rustls::ServerConfig> {
    let alpn: Vec<String> = alpn.iter().map(|s| s.to_string()).collect();
    tls::server_config_from_pem(
        p.leaf_pem.as_bytes(),
        Zeroizing::new(p.leaf_key_pem.clone().into_bytes()),
        pq,
        &alpn,
    )
    .unwrap()
}

fn client_cfg(p: &Pki, pq: PqMode, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let alpn: Vec<String> = alpn.iter().map(|s| s.to_string()).collect();
    tls::client_config_from_ca_pem(p.ca_pem.as_bytes(), pq, &alpn).unwrap()
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

// ------------------------------------------------------------------------------------------
// In-memory transport
// ------------------------------------------------------------------------------------------

/// Moves every pending TLS record from `from` to `to`; returns the bytes moved.
fn transfer(from: &mut Connection, to: &mut Connection) -> Result<usize, rustls::Error> {
    let mut moved = 0;
    while from.wants_write() {
        let mut buf = Vec::new();
        from.write_tls(&mut buf).unwrap();
        moved += buf.len();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets()?;
        }
    }
    Ok(moved)
}

/// Which side failed a handshake.
#[derive(Debug)]
enum Failed {
    Client(rustls::Error),
    Server(rustls::Error),
}

/// Runs the pair until no bytes move (so post-handshake tickets are delivered too).
/// Bounded: a TLS 1.3 handshake plus tickets needs a handful of flights.
fn run(client: &mut Connection, server: &mut Connection) -> Result<(), Failed> {
    for _ in 0..32 {
        let a = transfer(client, server).map_err(Failed::Server)?;
        let b = transfer(server, client).map_err(Failed::Client)?;
        if a == 0 && b == 0 {
            assert!(!client.is_handshaking() && !server.is_handshaking());
            return Ok(());
        }
    }
    panic!("handshake did not settle within 32 rounds");
}

fn pair(
    client: &Arc<rustls::ClientConfig>,
    server: &Arc<rustls::ServerConfig>,
    name: ServerName<'static>,
) -> (Connection, Connection) {
    let c = ClientConnection::new(client.clone(), name).unwrap();
    let s = ServerConnection::new(server.clone()).unwrap();
    (c.into(), s.into())
}

fn handshake(
    client: &Arc<rustls::ClientConfig>,
    server: &Arc<rustls::ServerConfig>,
) -> (Connection, Connection) {
    let (mut c, mut s) = pair(client, server, localhost());
    run(&mut c, &mut s).expect("handshake succeeds");
    (c, s)
}

fn group(conn: &Connection) -> NamedGroup {
    conn.negotiated_key_exchange_group()
        .expect("key exchange finished")
        .name()
}

fn invalid_key(err: &TransportError) -> &'static str {
    match err {
        TransportError::Config(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected Config(Invalid), got {other:?}"),
    }
}

/// `Config::validate` then `f`: a rule may fire in either (the config layer may check files
/// too); both must produce the same typed error.
fn via_config<T>(
    cfg: Config,
    f: impl FnOnce(&ron_transport::ValidConfig) -> Result<T, TransportError>,
) -> Result<T, TransportError> {
    let valid = cfg.validate().map_err(TransportError::from)?;
    f(&valid)
}

fn config_key_of(err: &TransportError) -> String {
    match err {
        TransportError::Config(ConfigError::Invalid { key, .. }) => (*key).to_owned(),
        TransportError::Config(ConfigError::Parse { key, .. }) => key.clone(),
        TransportError::Config(other) => other.to_string(),
        other => panic!("expected a Config error, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// PQ negotiation
// ------------------------------------------------------------------------------------------

#[test]
fn tls_hybrid_to_hybrid_negotiates_x25519mlkem768() {
    let p = pki();
    let (c, s) = handshake(
        &client_cfg(&p, PqMode::Hybrid, &[]),
        &server_cfg(&p, PqMode::Hybrid, &[]),
    );
    assert_eq!(group(&c), NamedGroup::X25519MLKEM768);
    assert_eq!(group(&s), NamedGroup::X25519MLKEM768);
    assert_eq!(tls::negotiated_pq(&c), PqLabel::Hybrid);
    assert_eq!(tls::negotiated_pq(&s), PqLabel::Hybrid);
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert!(!tls::is_resumed(&c));
}

#[test]
fn tls_hybrid_client_falls_back_to_x25519_with_classical_server() {
    let p = pki();
    let (c, s) = handshake(
        &client_cfg(&p, PqMode::Hybrid, &[]),
        &server_cfg(&p, PqMode::Off, &[]),
    );
    assert_eq!(group(&c), NamedGroup::X25519);
    assert_eq!(group(&s), NamedGroup::X25519);
    assert_eq!(tls::negotiated_pq(&c), PqLabel::Off);
    assert_eq!(tls::negotiated_pq(&s), PqLabel::Off);
    // The client sent an X25519 share alongside the hybrid one: no HelloRetryRequest.
    assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Full));
}

#[test]
fn tls_classical_client_with_hybrid_server_is_classical() {
    let p = pki();
    let (c, s) = handshake(
        &client_cfg(&p, PqMode::Off, &[]),
        &server_cfg(&p, PqMode::Hybrid, &[]),
    );
    assert_eq!(group(&s), NamedGroup::X25519);
    assert_eq!(tls::negotiated_pq(&c), PqLabel::Off);
}

#[test]
fn tls_off_to_off_is_classical() {
    let p = pki();
    let (c, s) = handshake(
        &client_cfg(&p, PqMode::Off, &[]),
        &server_cfg(&p, PqMode::Off, &[]),
    );
    assert_eq!(group(&c), NamedGroup::X25519);
    assert_eq!(tls::negotiated_pq(&c), PqLabel::Off);
    assert_eq!(tls::negotiated_pq(&s), PqLabel::Off);
}

#[test]
fn tls_negotiated_pq_is_off_before_handshake() {
    let p = pki();
    let (c, s) = pair(
        &client_cfg(&p, PqMode::Hybrid, &[]),
        &server_cfg(&p, PqMode::Hybrid, &[]),
        localhost(),
    );
    assert_eq!(tls::negotiated_pq(&c), PqLabel::Off);
    assert_eq!(tls::negotiated_pq(&s), PqLabel::Off);
    assert!(!tls::is_resumed(&c));
}

// ------------------------------------------------------------------------------------------
// Resumption
// ------------------------------------------------------------------------------------------

#[test]
fn tls_second_connection_resumes() {
    let p = pki();
    for pq in [PqMode::Off, PqMode::Hybrid] {
        let client = client_cfg(&p, pq, &[]);
        let server = server_cfg(&p, pq, &[]);
        let (c1, s1) = handshake(&client, &server);
        assert!(!tls::is_resumed(&c1) && !tls::is_resumed(&s1));

        let (c2, s2) = handshake(&client, &server);
        assert_eq!(c2.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        assert!(tls::is_resumed(&c2), "{pq:?}");
        assert!(tls::is_resumed(&s2), "{pq:?}");
        // TLS 1.3 resumption still runs a (psk_dhe_ke) key exchange: the label survives.
        let want = match pq {
            PqMode::Off => PqLabel::Off,
            PqMode::Hybrid => PqLabel::Hybrid,
        };
        assert_eq!(tls::negotiated_pq(&c2), want);
        let facts = tls::handshake_facts(&s2);
        assert_eq!(
            facts,
            tls::HandshakeFacts {
                alpn: None,
                pq: want,
                resumed: true
            }
        );
    }
}

#[test]
fn tls_fresh_client_config_does_not_resume() {
    let p = pki();
    let server = server_cfg(&p, PqMode::Off, &[]);
    let _ = handshake(&client_cfg(&p, PqMode::Off, &[]), &server);
    let (c, _) = handshake(&client_cfg(&p, PqMode::Off, &[]), &server);
    assert!(
        !tls::is_resumed(&c),
        "a new client config has an empty session store"
    );
}

#[test]
fn tls_server_config_policy() {
    let p = pki();
    let s = server_cfg(&p, PqMode::Hybrid, &["h2"]);
    assert_eq!(s.max_early_data_size, 0);
    assert!(s.ticketer.enabled(), "stateless tickets on");
    assert!(s.session_storage.can_cache(), "session cache on");
    assert_eq!(s.alpn_protocols, [b"h2".to_vec()]);
    let c = client_cfg(&p, PqMode::Hybrid, &[]);
    assert!(!c.enable_early_data);
}

// ------------------------------------------------------------------------------------------
// Trust, SNI, versions, ALPN
// ------------------------------------------------------------------------------------------

#[test]
fn tls_wrong_ca_fails_the_handshake() {
    let p = pki();
    let other = pki_named("some other CA");
    let (mut c, mut s) = pair(
        &client_cfg(&other, PqMode::Off, &[]),
        &server_cfg(&p, PqMode::Off, &[]),
        localhost(),
    );
    match run(&mut c, &mut s) {
        Err(Failed::Client(rustls::Error::InvalidCertificate(e))) => {
            assert_eq!(e, rustls::CertificateError::UnknownIssuer)
        }
        other => panic!("expected the client to reject the certificate, got {other:?}"),
    }
}

#[test]
fn tls_server_name_mismatch_fails_and_override_helper_drives_sni() {
    let p = pki();
    let client = client_cfg(&p, PqMode::Off, &[]);
    let server = server_cfg(&p, PqMode::Off, &[]);
    let ip: IpAddr = "127.0.0.1".parse().unwrap();

    // The dialed IP is in the certificate: no override needed.
    let name = tls::server_name(None, None, ip).unwrap();
    let (mut c, mut s) = pair(&client, &server, name);
    run(&mut c, &mut s).unwrap();

    // sni_override = "localhost" is sent and verified.
    let name = tls::server_name(None, Some("localhost"), ip).unwrap();
    let (mut c, mut s) = pair(&client, &server, name);
    run(&mut c, &mut s).unwrap();
    match &s {
        Connection::Server(sc) => assert_eq!(sc.server_name(), Some("localhost")),
        Connection::Client(_) => unreachable!(),
    }

    // DialOptions::server_name wins over the override, and a wrong name fails.
    let name = tls::server_name(Some("wrong.example"), Some("localhost"), ip).unwrap();
    let (mut c, mut s) = pair(&client, &server, name);
    match run(&mut c, &mut s) {
        Err(Failed::Client(rustls::Error::InvalidCertificate(e))) => {
            assert!(
                matches!(e, rustls::CertificateError::NotValidForNameContext { .. }),
                "{e:?}"
            )
        }
        other => panic!("expected a name mismatch, got {other:?}"),
    }
}

#[test]
fn tls_tls12_only_client_is_refused() {
    let p = pki();
    let roots = tls::roots_from_pem(p.ca_pem.as_bytes()).unwrap();
    let tls12 =
        rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let (mut c, mut s) = pair(
        &Arc::new(tls12),
        &server_cfg(&p, PqMode::Off, &[]),
        localhost(),
    );
    match run(&mut c, &mut s) {
        Err(Failed::Server(rustls::Error::PeerIncompatible(_))) => {}
        other => panic!("expected the server to refuse TLS 1.2, got {other:?}"),
    }
}

#[test]
fn tls_alpn_negotiated_when_both_ask() {
    let p = pki();
    let (c, s) = handshake(
        &client_cfg(&p, PqMode::Off, &["h2", "ron/1"]),
        &server_cfg(&p, PqMode::Off, &["ron/1"]),
    );
    assert_eq!(c.alpn_protocol(), Some(&b"ron/1"[..]));
    assert_eq!(
        tls::handshake_facts(&s).alpn.as_deref(),
        Some(&b"ron/1"[..])
    );

    // Only the client asks: no ALPN, handshake fine.
    let (c, _) = handshake(
        &client_cfg(&p, PqMode::Off, &["ron/1"]),
        &server_cfg(&p, PqMode::Off, &[]),
    );
    assert_eq!(c.alpn_protocol(), None);

    // Both ask, no overlap: the server refuses.
    let (mut c, mut s) = pair(
        &client_cfg(&p, PqMode::Off, &["h2"]),
        &server_cfg(&p, PqMode::Off, &["ron/1"]),
        localhost(),
    );
    match run(&mut c, &mut s) {
        Err(Failed::Server(rustls::Error::NoApplicationProtocol)) => {}
        other => panic!("expected NoApplicationProtocol, got {other:?}"),
    }
}

#[test]
fn tls_invalid_alpn_entries_are_typed_errors() {
    let p = pki();
    let err = tls::client_config_from_ca_pem(p.ca_pem.as_bytes(), PqMode::Off, &[String::new()])
        .unwrap_err();
    assert_eq!(invalid_key(&err), "tls_client.alpn");
}

// ------------------------------------------------------------------------------------------
// Loading from a ValidConfig and files
// ------------------------------------------------------------------------------------------

fn tls_config(d: &OnDisk, pq: PqMode) -> Config {
    let mut cfg = Config::default();
    cfg.backend = Backend::Tls;
    cfg.tls_enabled = true;
    cfg.tls_cert_path = Some(d.cert.clone());
    cfg.tls_key_path = Some(d.key.clone());
    cfg.tls_client_trust_store = TrustStore::Path;
    cfg.tls_client_ca_bundle = Some(d.ca.clone());
    cfg.tls_client_alpn = vec!["ron/1".to_owned()];
    cfg.pq_mode = pq;
    cfg
}

#[test]
fn tls_configs_from_valid_config_handshake() {
    let p = pki();
    let d = on_disk(&p);
    let cfg = tls_config(&d, PqMode::Hybrid);
    let server = via_config(cfg.clone(), tls::server_config).unwrap();
    let client = via_config(cfg, tls::client_config).unwrap();
    assert_eq!(client.alpn_protocols, [b"ron/1".to_vec()]);
    let (c, s) = handshake(&client, &server);
    assert_eq!(tls::negotiated_pq(&c), PqLabel::Hybrid);
    assert_eq!(tls::negotiated_pq(&s), PqLabel::Hybrid);
    // The server config from `cfg` announces no ALPN (there is no server ALPN key).
    assert_eq!(c.alpn_protocol(), None);
}

#[test]
fn tls_server_config_from_files_with_alpn() {
    let p = pki();
    let d = on_disk(&p);
    let server =
        tls::server_config_from_files(&d.cert, &d.key, PqMode::Off, &["ron/1".to_owned()]).unwrap();
    let (c, _) = handshake(&client_cfg(&p, PqMode::Off, &["ron/1"]), &server);
    assert_eq!(c.alpn_protocol(), Some(&b"ron/1"[..]));
}

#[cfg(unix)]
#[test]
fn tls_key_file_0644_is_rejected() {
    let p = pki();
    let d = on_disk(&p);
    for mode in [0o644, 0o640, 0o604, 0o660] {
        write_file(&d.key, p.leaf_key_pem.as_bytes(), mode);
        let err = tls::server_config_from_files(&d.cert, &d.key, PqMode::Off, &[]).unwrap_err();
        assert_eq!(invalid_key(&err), "tls.key_path", "mode {mode:o}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
        assert!(msg.contains("0600"), "{msg}");
        assert!(!msg.contains("PRIVATE KEY"), "no key material in {msg}");
        assert_eq!(err.kind(), "config");
        assert_eq!(
            err.reject_reason(),
            None,
            "a config error is not a peer reject"
        );

        let err = via_config(tls_config(&d, PqMode::Off), tls::server_config).unwrap_err();
        assert_eq!(config_key_of(&err), "tls.key_path", "mode {mode:o}");
    }
    write_file(&d.key, p.leaf_key_pem.as_bytes(), 0o400);
    tls::server_config_from_files(&d.cert, &d.key, PqMode::Off, &[]).expect("0400 is fine");
}

#[test]
fn tls_empty_or_garbage_key_is_a_typed_error() {
    let p = pki();
    let cases: [&[u8]; 6] = [
        b"",
        b"\n\n",
        b"not pem at all",
        b"-----BEGIN PRIVATE KEY-----\n%%%%\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n",
        // Well-formed PEM whose body is not a key.
        b"-----BEGIN PRIVATE KEY-----\nAAAAAAAA\n-----END PRIVATE KEY-----\n",
    ];
    for key in cases {
        let err = tls::server_config_from_pem(
            p.leaf_pem.as_bytes(),
            Zeroizing::new(key.to_vec()),
            PqMode::Off,
            &[],
        )
        .unwrap_err();
        assert_eq!(
            invalid_key(&err),
            "tls.key_path",
            "{:?}",
            String::from_utf8_lossy(key)
        );
    }
    // A certificate where the key should be.
    let err = tls::server_config_from_pem(
        p.leaf_pem.as_bytes(),
        Zeroizing::new(p.leaf_pem.clone().into_bytes()),
        PqMode::Off,
        &[],
    )
    .unwrap_err();
    assert_eq!(invalid_key(&err), "tls.key_path");
    // Same through a 0600 file.
    let d = on_disk(&p);
    write_file(&d.key, b"garbage", 0o600);
    let err = tls::server_config_from_files(&d.cert, &d.key, PqMode::Off, &[]).unwrap_err();
    assert_eq!(invalid_key(&err), "tls.key_path");
}

#[test]
fn tls_key_not_matching_certificate_is_a_typed_error() {
    let p = pki();
    let stranger = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let err = tls::server_config_from_pem(
        p.leaf_pem.as_bytes(),
        Zeroizing::new(stranger.into_bytes()),
        PqMode::Off,
        &[],
    )
    .unwrap_err();
    assert_eq!(invalid_key(&err), "tls.key_path");
    assert!(err.to_string().contains("not usable together"), "{err}");
}

#[test]
fn tls_empty_or_garbage_cert_is_a_typed_error() {
    let p = pki();
    for cert in [&b""[..], b"garbage", p.leaf_key_pem.as_bytes()] {
        let err = tls::server_config_from_pem(
            cert,
            Zeroizing::new(p.leaf_key_pem.clone().into_bytes()),
            PqMode::Off,
            &[],
        )
        .unwrap_err();
        assert_eq!(invalid_key(&err), "tls.cert_path");
    }
}

#[test]
fn tls_key_buffer_is_zeroized_on_success_and_error() {
    let p = pki();
    let mut ok = Zeroizing::new(p.leaf_key_pem.clone().into_bytes());
    tls::parse_private_key_pem(&mut ok).unwrap();
    assert!(ok.is_empty(), "scrubbed after success");
    let mut bad = Zeroizing::new(b"-----BEGIN PRIVATE KEY-----\n!!".to_vec());
    tls::parse_private_key_pem(&mut bad).unwrap_err();
    assert!(bad.is_empty(), "scrubbed after error");

    // The file loader hands back the zeroizing buffer type.
    let d = on_disk(&p);
    let buf: Zeroizing<Vec<u8>> = tls::read_key_file(&d.key).unwrap();
    assert_eq!(buf.as_slice(), p.leaf_key_pem.as_bytes());
}

#[test]
fn tls_missing_ca_bundle_is_a_typed_error() {
    let p = pki();
    let d = on_disk(&p);
    let mut cfg = tls_config(&d, PqMode::Off);
    cfg.tls_client_ca_bundle = Some(d.ca.with_file_name("does-not-exist.pem"));
    let err = via_config(cfg.clone(), tls::client_config).unwrap_err();
    assert_eq!(config_key_of(&err), "tls_client.ca_bundle_path");

    cfg.tls_client_ca_bundle = None;
    let err = via_config(cfg, tls::client_config).unwrap_err();
    assert_eq!(config_key_of(&err), "tls_client.ca_bundle_path");
}

#[test]
fn tls_garbage_ca_bundle_is_a_typed_error() {
    for ca in [
        &b""[..],
        b"junk",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ] {
        let err = tls::client_config_from_ca_pem(ca, PqMode::Off, &[]).unwrap_err();
        assert_eq!(invalid_key(&err), "tls_client.ca_bundle_path");
    }
}
