//! `tls_client.trust_store = "system"`: an OS store with no usable root is a typed error, never
//! a client config that silently trusts nothing. Its own test binary because it points
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` (process-global) at empty locations.

#![cfg(feature = "tls")]

use ron_transport::tls;
use ron_transport::{Config, ConfigError, TransportError, TrustStore};

#[test]
fn tls_system_store_empty_is_a_typed_error_and_populated_store_works() {
    let mut cfg = Config::default();
    cfg.tls_client_trust_store = TrustStore::System;
    let cfg = cfg.validate().unwrap();

    // Whatever this machine has: either a usable store or the typed error, never a panic.
    match tls::client_config(&cfg) {
        Ok(c) => assert!(c.alpn_protocols.is_empty()),
        Err(e) => assert_eq!(e.kind(), "config", "{e}"),
    }

    // Force an empty store: an empty CA file and an empty CA directory.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("empty.pem");
    std::fs::write(&file, b"").unwrap();
    let empty_dir = dir.path().join("certs");
    std::fs::create_dir(&empty_dir).unwrap();
    std::env::set_var("SSL_CERT_FILE", &file);
    std::env::set_var("SSL_CERT_DIR", &empty_dir);

    let err = tls::client_config(&cfg).unwrap_err();
    match &err {
        TransportError::Config(ConfigError::Invalid { key, reason }) => {
            assert_eq!(*key, "tls_client.trust_store");
            assert!(reason.contains("trusts nothing"), "{reason}");
        }
        other => panic!("expected Config(Invalid), got {other:?}"),
    }
    assert!(tls::system_roots().is_err());

    // A real bundle through SSL_CERT_FILE is picked up.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    std::fs::write(&file, ca.pem()).unwrap();
    assert_eq!(tls::system_roots().unwrap().len(), 1);
    tls::client_config(&cfg).unwrap();

    std::env::remove_var("SSL_CERT_FILE");
    std::env::remove_var("SSL_CERT_DIR");
}
