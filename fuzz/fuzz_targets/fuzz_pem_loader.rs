//! Fuzz target `fuzz_pem_loader` (spec/TESTS.md §1.4): arbitrary bytes as certificate-chain
//! PEM and private-key PEM into the in-memory TLS config builders. Must never panic; every
//! failure is a typed `Config(Invalid)` error naming a config key; the key buffer is always
//! scrubbed (observable as an empty buffer afterwards).
#![no_main]

use ron_transport::tls::{self, Zeroizing};
use ron_transport::{ConfigError, PqMode, TransportError};

fn check(err: &TransportError) {
    match err {
        TransportError::Config(ConfigError::Invalid { key, .. }) => assert!(
            matches!(
                *key,
                "tls.key_path" | "tls.cert_path" | "tls_client.ca_bundle_path" | "tls.alpn"
            ),
            "unexpected key {key}"
        ),
        other => panic!("untyped loader error: {other:?}"),
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Byte 0 picks the PQ mode, bytes 1..3 the split between certificate and key PEM.
    if data.len() < 3 {
        return;
    }
    let pq = if data[0] & 1 == 0 {
        PqMode::Off
    } else {
        PqMode::Hybrid
    };
    let body = &data[3..];
    let split = usize::from(u16::from_be_bytes([data[1], data[2]])).min(body.len());
    let (cert_pem, key_pem) = body.split_at(split);

    // The key parser scrubs its input on every path.
    let mut key = Zeroizing::new(key_pem.to_vec());
    match tls::parse_private_key_pem(&mut key) {
        Ok(_) => {}
        Err(e) => check(&e),
    }
    assert!(key.is_empty(), "key buffer not scrubbed");

    // The full server builder.
    if let Err(e) = tls::server_config_from_pem(cert_pem, Zeroizing::new(key_pem.to_vec()), pq, &[])
    {
        check(&e);
    }

    // The whole input as a CA bundle.
    if let Err(e) = tls::client_config_from_ca_pem(body, pq, &[]) {
        match &e {
            // A bundle that parses but yields no anchors is refused as an empty trust store.
            TransportError::Config(ConfigError::Invalid {
                key: "tls_client.trust_store",
                ..
            }) => {}
            other => check(other),
        }
    }
});
