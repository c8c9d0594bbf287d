//! Shared helpers for the `tls_pump_*` tests and the `tls_pump` bench: test PKI (rcgen),
//! providers, configs, and an in-memory peer around a `TlsPump` (quinn-style `Pair` driving).
//!
//! Included with `#[path = "tls_pump_util.rs"] mod util;`; as its own test target it has no
//! tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::sync::Arc;

use ron_shard::tls_pump::{composite_provider, PumpError, Status, TlsPump};
use rustls::crypto::{aws_lc_rs, ring, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A CA and a leaf for "localhost" signed by it.
#[derive(Debug)]
pub struct Pki {
    pub ca_der: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ron-test-ca");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf cert");
        Self {
            ca_der: ca.der().clone(),
            chain: vec![leaf.der().clone()],
            key_der: leaf_key.serialize_der(),
        }
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// Which crypto provider (and key exchange preference) a config uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prov {
    /// aws-lc-rs, X25519MLKEM768 first.
    AwsHybrid,
    /// aws-lc-rs, classical groups only.
    AwsClassical,
    /// ring (classical only: ring has no ML-KEM).
    Ring,
    /// ring suites + aws-lc-rs kx, hybrid first.
    CompositeHybrid,
    /// ring suites + aws-lc-rs kx, classical only.
    CompositeClassical,
}

impl Prov {
    pub fn provider(self) -> CryptoProvider {
        match self {
            Prov::AwsHybrid => with_groups(aws_lc_rs::default_provider(), true),
            Prov::AwsClassical => with_groups(aws_lc_rs::default_provider(), false),
            Prov::Ring => ring::default_provider(),
            Prov::CompositeHybrid => composite_provider(true),
            Prov::CompositeClassical => composite_provider(false),
        }
    }
}

fn with_groups(mut p: CryptoProvider, hybrid: bool) -> CryptoProvider {
    use aws_lc_rs::kx_group::{SECP256R1, SECP384R1, X25519, X25519MLKEM768};
    let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
    if hybrid {
        groups.push(X25519MLKEM768);
    }
    groups.extend([X25519, SECP256R1, SECP384R1]);
    p.kx_groups = groups;
    p
}

pub fn server_config(pki: &Pki, prov: Prov, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(prov.provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key())
        .expect("server cert");
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // The production setting: after the handshake the pump runs the own record layer.
    cfg.enable_secret_extraction = true;
    Arc::new(cfg)
}

pub fn client_config(
    ca: &CertificateDer<'static>,
    prov: Prov,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    client_config_with(ca, prov.provider(), alpn)
}

pub fn client_config_with(
    ca: &CertificateDer<'static>,
    provider: CryptoProvider,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("root");
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.enable_secret_extraction = true;
    Arc::new(cfg)
}

/// The same server config with rustls protecting every record (no hand-off to the own record
/// layer), to keep that path tested.
#[allow(dead_code)]
pub fn rustls_records_server(cfg: &Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut c = (**cfg).clone();
    c.enable_secret_extraction = false;
    Arc::new(c)
}

/// The client counterpart of [`rustls_records_server`].
#[allow(dead_code)]
pub fn rustls_records_client(cfg: &Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut c = (**cfg).clone();
    c.enable_secret_extraction = false;
    Arc::new(c)
}

pub fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("name")
}

/// A pump with its receive buffer and everything it decrypted.
#[derive(Debug)]
pub struct Peer {
    pub pump: TlsPump,
    pub rx: Vec<u8>,
    pub received: Vec<u8>,
    pub last_status: Option<Status>,
    pub handshake_completed: usize,
    /// Largest number of rustls transitions a single `handle_ciphertext` call took.
    pub max_transitions_per_call: u64,
}

impl Peer {
    pub fn new(pump: TlsPump) -> Self {
        Self {
            pump,
            rx: Vec::new(),
            received: Vec::new(),
            last_status: None,
            handshake_completed: 0,
            max_transitions_per_call: 0,
        }
    }

    pub fn server(cfg: Arc<ServerConfig>) -> Self {
        Self::new(TlsPump::server(cfg).expect("server pump"))
    }

    pub fn client(cfg: Arc<ClientConfig>) -> Self {
        Self::new(TlsPump::client(cfg, localhost()).expect("client pump"))
    }

    /// Appends ciphertext and processes everything complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), PumpError> {
        self.rx.extend_from_slice(bytes);
        self.process()
    }

    /// Feeds `bytes` in pieces of 1..=max_chunk bytes (exactly 1 when `max_chunk == 1`).
    pub fn feed_chunked(
        &mut self,
        bytes: &[u8],
        rng: &mut Rng,
        max_chunk: usize,
    ) -> Result<(), PumpError> {
        let mut at = 0;
        while at < bytes.len() {
            let n = (1 + rng.below(max_chunk as u64) as usize).min(bytes.len() - at);
            self.feed(&bytes[at..at + n])?;
            at += n;
        }
        Ok(())
    }

    /// Runs `handle_ciphertext` until it needs input (or closes), collecting plaintext.
    pub fn process(&mut self) -> Result<(), PumpError> {
        for _ in 0..1_000_000 {
            let before = self.pump.stats().transitions;
            let p = self.pump.handle_ciphertext(&mut self.rx)?;
            let took = self.pump.stats().transitions - before;
            self.max_transitions_per_call = self.max_transitions_per_call.max(took);
            assert!(
                p.plaintext.end <= p.discard,
                "plaintext outside the discard prefix"
            );
            self.received.extend_from_slice(p.plaintext(&self.rx));
            if p.handshake_completed {
                self.handshake_completed += 1;
            }
            self.rx.drain(..p.discard);
            self.last_status = Some(p.status);
            if p.status != Status::CallAgain {
                return Ok(());
            }
        }
        panic!("handle_ciphertext never asked for input");
    }

    /// Everything `poll_transmit` has, through a small MTU-sized buffer.
    pub fn take_transmit(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1500];
        loop {
            let n = self.pump.poll_transmit(&mut buf).expect("poll_transmit");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert!(!self.pump.wants_write());
        out
    }

    /// Encrypts `data` into a buffer of exactly the required size (asked with an empty one).
    pub fn seal(&mut self, data: &[u8]) -> Result<Vec<u8>, PumpError> {
        let required = match self.pump.encrypt(data, &mut []) {
            Ok(0) => 0,
            Ok(n) => panic!("encrypt wrote {n} bytes into an empty buffer"),
            Err(PumpError::InsufficientSize { required }) => required,
            Err(e) => return Err(e),
        };
        let mut out = vec![0u8; required];
        let n = self.pump.encrypt(data, &mut out)?;
        assert_eq!(n, required);
        Ok(out)
    }
}

/// Which side failed in [`drive`].
#[derive(Debug)]
pub enum Failed {
    Client(PumpError),
    Server(PumpError),
}

/// Shuttles bytes between a client and a server until neither has anything to send.
pub fn drive(c: &mut Peer, s: &mut Peer) -> Result<(), Failed> {
    for _ in 0..64 {
        let to_server = c.take_transmit();
        if !to_server.is_empty() {
            s.feed(&to_server).map_err(Failed::Server)?;
        }
        let to_client = s.take_transmit();
        if !to_client.is_empty() {
            c.feed(&to_client).map_err(Failed::Client)?;
        }
        if to_server.is_empty() && to_client.is_empty() {
            return Ok(());
        }
    }
    panic!("peers never went quiet");
}

/// A connected, handshaken pair.
pub fn pair(ccfg: Arc<ClientConfig>, scfg: Arc<ServerConfig>) -> (Peer, Peer) {
    let mut c = Peer::client(ccfg);
    let mut s = Peer::server(scfg);
    drive(&mut c, &mut s).expect("handshake");
    assert!(!c.pump.is_handshaking() && !s.pump.is_handshaking());
    (c, s)
}

/// Deterministic xorshift64* generator (no external crates, reproducible failures).
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// A plain buffered rustls connection fed in memory (the reference peer of the pump tests),
/// with everything it decrypted.
#[allow(dead_code)]
#[derive(Debug)]
pub struct Buffered {
    pub conn: rustls::Connection,
    pub received: Vec<u8>,
}

#[allow(dead_code)]
impl Buffered {
    pub fn server(cfg: std::sync::Arc<rustls::ServerConfig>) -> Self {
        Self {
            conn: rustls::ServerConnection::new(cfg).unwrap().into(),
            received: Vec::new(),
        }
    }

    pub fn client(cfg: std::sync::Arc<rustls::ClientConfig>) -> Self {
        Self {
            conn: rustls::ClientConnection::new(cfg, localhost())
                .unwrap()
                .into(),
            received: Vec::new(),
        }
    }

    pub fn take_transmit(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out).unwrap();
        }
        out
    }

    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), rustls::Error> {
        while !bytes.is_empty() {
            self.conn.read_tls(&mut bytes).unwrap();
            self.conn.process_new_packets()?;
            let mut buf = [0u8; 8192];
            loop {
                match self.conn.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => self.received.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        Ok(())
    }

    pub fn send(&mut self, data: &[u8]) -> Vec<u8> {
        self.conn.set_buffer_limit(None);
        self.conn.writer().write_all(data).unwrap();
        self.take_transmit()
    }
}
