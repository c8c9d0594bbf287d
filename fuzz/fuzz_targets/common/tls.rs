//! Shared by the TLS fuzz targets: a fixed self-signed certificate for `localhost`, generated
//! once per process, and the rustls configs built on it (TLS 1.3 only, the pump's composite
//! provider). Client resumption is disabled so every run starts from a full handshake and a
//! run does not depend on tickets stored by earlier runs.

use std::sync::{Arc, LazyLock};

use rustls::client::Resumption;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig};

use ron_shard::tls_pump::{composite_provider, TlsPump};

/// Server config (hybrid-first groups) and two client configs (hybrid-first, classical-only).
pub struct Configs {
    pub server: Arc<ServerConfig>,
    pub client_hybrid: Arc<ClientConfig>,
    pub client_classical: Arc<ClientConfig>,
}

pub static CONFIGS: LazyLock<Configs> = LazyLock::new(|| {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("self-signed certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let server = ServerConfig::builder_with_provider(Arc::new(composite_provider(true)))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .expect("server config");
    // After the handshake the server runs the own record layer (ron_shard::tls_record), as in
    // production; so does the hybrid client, while the classical client keeps rustls's
    // records: both paths, and the pairing of the two, are fuzzed.
    let mut server = server;
    server.enable_secret_extraction = true;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let client = |hybrid: bool| {
        let mut c = ClientConfig::builder_with_provider(Arc::new(composite_provider(hybrid)))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        c.resumption = Resumption::disabled();
        c.enable_secret_extraction = hybrid;
        Arc::new(c)
    };
    Configs {
        server: Arc::new(server),
        client_hybrid: client(true),
        client_classical: client(false),
    }
});

/// A (client, server) pump pair.
pub fn pumps(hybrid: bool) -> (TlsPump, TlsPump) {
    let c = &*CONFIGS;
    let ccfg = if hybrid {
        c.client_hybrid.clone()
    } else {
        c.client_classical.clone()
    };
    let name = ServerName::try_from("localhost").expect("name");
    let client = TlsPump::client(ccfg, name).expect("client pump");
    let server = TlsPump::server(c.server.clone()).expect("server pump");
    (client, server)
}
