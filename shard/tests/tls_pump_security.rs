//! Hostile and broken peers: a wrong CA, garbage and corrupted ciphertext (randomized,
//! fuzz-style) all end in typed errors, never a panic; a failed pump stays failed.

#[path = "tls_pump_util.rs"]
mod util;

use ron_shard::tls_pump::{PumpError, Status};
use util::{client_config, drive, pair, server_config, Failed, Peer, Pki, Prov, Rng};

fn assert_typed(e: &PumpError) {
    let kind = e.kind();
    assert!(!kind.is_empty());
    assert_ne!(
        kind, "internal",
        "a peer must never reach an internal error: {e:?}"
    );
    assert!(e.is_fatal(), "{e:?}");
}

#[test]
fn wrong_ca_fails_with_certificate_error_and_alerts_the_server() {
    let pki = Pki::new();
    let other = Pki::new();
    let mut c = Peer::client(client_config(&other.ca_der, Prov::CompositeHybrid, &[]));
    let mut s = Peer::server(server_config(&pki, Prov::CompositeHybrid, &[]));
    let e = match drive(&mut c, &mut s) {
        Err(Failed::Client(e)) => e,
        other => panic!("expected client failure, got {other:?}"),
    };
    assert_eq!(e.kind(), "tls_certificate");
    assert!(matches!(
        e,
        PumpError::Tls(rustls::Error::InvalidCertificate(_))
    ));
    // The pump stays failed with the same error...
    assert_eq!(c.pump.handle_ciphertext(&mut []).unwrap_err(), e);
    assert_eq!(c.pump.encrypt(b"x", &mut [0u8; 64]).unwrap_err(), e);
    assert!(c.pump.is_closed());
    // ...and still hands out the alert, which the server reports as such.
    let alert = c.take_transmit();
    assert!(!alert.is_empty());
    let se = s.feed(&alert).unwrap_err();
    assert_eq!(se.kind(), "tls_alert_received");
}

#[test]
fn garbage_to_a_fresh_server_is_a_typed_error_or_needs_input() {
    let pki = Pki::new();
    let scfg = server_config(&pki, Prov::CompositeHybrid, &[]);
    let mut rng = Rng::new(0xbad);
    let mut errors = 0;
    for i in 0..600 {
        let mut s = Peer::server(scfg.clone());
        let len = rng.below(3000) as usize;
        let mut junk = rng.bytes(len);
        // Half the time, make it look like a handshake record so parsing goes deeper.
        if i % 2 == 0 && junk.len() >= 9 {
            junk[0] = 22;
            junk[1] = 3;
            junk[2] = 1 + (rng.below(3) as u8);
            let body = (junk.len() - 5) as u16;
            junk[3..5].copy_from_slice(&body.to_be_bytes());
            junk[5] = 1; // ClientHello
        }
        match s.feed_chunked(&junk, &mut rng, 1 + (i % 700)) {
            Ok(()) => assert_eq!(s.last_status, Some(Status::NeedsInput)),
            Err(e) => {
                assert_typed(&e);
                errors += 1;
                // Failed stays failed.
                assert_eq!(s.pump.handle_ciphertext(&mut []).unwrap_err(), e);
            }
        }
    }
    assert!(errors > 300, "most garbage must be rejected, got {errors}");
}

#[test]
fn corrupted_handshake_flights_are_typed_errors() {
    let pki = Pki::new();
    let ccfg = client_config(&pki.ca_der, Prov::CompositeHybrid, &[]);
    let scfg = server_config(&pki, Prov::CompositeHybrid, &[]);
    let mut rng = Rng::new(42);
    let mut client_errors = 0;
    for _ in 0..150 {
        let mut c = Peer::client(ccfg.clone());
        let mut s = Peer::server(scfg.clone());
        let hello = c.take_transmit();
        s.feed(&hello).unwrap();
        let mut flight = s.take_transmit();
        // Corrupt 1..4 random bytes of the server's flight.
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(flight.len() as u64) as usize;
            flight[at] ^= 1 + rng.below(255) as u8;
        }
        match c.feed_chunked(&flight, &mut rng, 2000) {
            Ok(()) => {
                // A corrupted length can leave the client waiting for bytes that never come.
                assert!(c.pump.is_handshaking());
            }
            Err(e) => {
                assert_typed(&e);
                client_errors += 1;
            }
        }
    }
    assert!(client_errors > 100, "{client_errors}");
}

#[test]
fn corrupted_and_forged_records_after_handshake() {
    let pki = Pki::new();
    let ccfg = client_config(&pki.ca_der, Prov::CompositeHybrid, &[]);
    let scfg = server_config(&pki, Prov::CompositeHybrid, &[]);
    let mut rng = Rng::new(77);
    for round in 0..60 {
        let (mut c, mut s) = pair(ccfg.clone(), scfg.clone());
        let n = 1 + rng.below(40_000) as usize;
        let data = rng.bytes(n);
        let mut ct = c.seal(&data).unwrap();
        let e = match round % 3 {
            0 => {
                // Flip a byte in a record body (never a header): authentication fails.
                let bodies: Vec<usize> = header_positions(&ct)
                    .into_iter()
                    .flat_map(|h| {
                        let len = usize::from(u16::from_be_bytes([ct[h + 3], ct[h + 4]]));
                        h + 5..h + 5 + len
                    })
                    .collect();
                let at = bodies[rng.below(bodies.len() as u64) as usize];
                ct[at] ^= 0x80;
                s.feed(&ct).unwrap_err()
            }
            1 => {
                // A forged record of random bytes with a valid header.
                let n = 17 + rng.below(2000) as usize;
                let body = rng.bytes(n);
                let mut rec = vec![23, 3, 3];
                rec.extend_from_slice(&(body.len() as u16).to_be_bytes());
                rec.extend_from_slice(&body);
                s.feed(&rec).unwrap_err()
            }
            _ => {
                // An oversized length field.
                s.feed(&[23, 3, 3, 0xff, 0xff, 1, 2, 3]).unwrap_err()
            }
        };
        assert_typed(&e);
        if round % 3 != 2 {
            assert_eq!(e.kind(), "tls_decrypt", "{e:?}");
        }
        // The client learns about it through the alert.
        let alert = s.take_transmit();
        if !alert.is_empty() {
            let ce = c.feed(&alert).unwrap_err();
            assert_eq!(ce.kind(), "tls_alert_received");
        }
    }
}

#[test]
fn random_garbage_after_handshake_never_panics() {
    let pki = Pki::new();
    let ccfg = client_config(&pki.ca_der, Prov::CompositeHybrid, &[]);
    let scfg = server_config(&pki, Prov::CompositeHybrid, &[]);
    let mut rng = Rng::new(5150);
    for _ in 0..40 {
        let (mut c, mut s) = pair(ccfg.clone(), scfg.clone());
        // Valid data, then garbage, fed in random pieces to both sides.
        let good = c.seal(b"fine").unwrap();
        let mut stream = good.clone();
        let n = rng.below(5000) as usize;
        stream.extend_from_slice(&rng.bytes(n));
        if let Err(e) = s.feed_chunked(&stream, &mut rng, 300) {
            assert_typed(&e);
        }
        assert!(s.received.starts_with(b"fine") || s.received.is_empty());
        let n = rng.below(5000) as usize;
        let junk = rng.bytes(n);
        if let Err(e) = c.feed_chunked(&junk, &mut rng, 300) {
            assert_typed(&e);
        }
    }
}

/// Start offsets of the record headers in a well-formed record stream.
fn header_positions(ct: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut out = Vec::new();
    while at + 5 <= ct.len() {
        out.push(at);
        at += 5 + usize::from(u16::from_be_bytes([ct[at + 3], ct[at + 4]]));
    }
    out
}

#[test]
fn failing_handshake_followed_by_garbage_in_the_same_buffer() {
    // The server fails while processing a good record (ALPN mismatch) and more bytes follow:
    // the pump must hand out the alert without re-reading the rest.
    let pki = Pki::new();
    let ccfg = client_config(&pki.ca_der, Prov::CompositeHybrid, &[b"nope/0"]);
    let scfg = server_config(&pki, Prov::CompositeHybrid, &[b"ron/1"]);
    let mut rng = Rng::new(9);
    for i in 0..100 {
        let mut c = Peer::client(ccfg.clone());
        let mut s = Peer::server(scfg.clone());
        let mut bytes = c.take_transmit();
        let n = rng.below(3000) as usize;
        let mut junk = rng.bytes(n);
        if i % 2 == 0 && junk.len() > 5 {
            junk[0] = 23;
            junk[1] = 3;
            junk[2] = 3;
        }
        bytes.extend_from_slice(&junk);
        let e = s.feed_chunked(&bytes, &mut rng, 4000).unwrap_err();
        assert_eq!(e.kind(), "tls_no_alpn");
        let out = s.take_transmit();
        assert!(!out.is_empty());
        let ce = c.feed(&out).unwrap_err();
        assert_eq!(ce.kind(), "tls_alert_received");
    }
}
