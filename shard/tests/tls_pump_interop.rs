//! Interop: pump ↔ buffered rustls (both directions), composite provider ↔ pure aws-lc-rs,
//! session resumption, hybrid post-quantum vs classical key exchange, and ALPN.

#[path = "tls_pump_util.rs"]
mod util;

use ron_shard::tls_pump::{composite_provider, Status};
use rustls::{HandshakeKind, NamedGroup};
use util::{
    client_config, client_config_with, drive, pair, server_config, Buffered, Peer, Pki, Prov, Rng,
};

/// Shuttles bytes between a pump and a buffered connection until both are quiet.
fn drive_mixed(pump: &mut Peer, other: &mut Buffered) {
    for _ in 0..64 {
        let a = pump.take_transmit();
        if !a.is_empty() {
            other.feed(&a).expect("buffered side");
        }
        let b = other.take_transmit();
        if !b.is_empty() {
            pump.feed(&b).expect("pump side");
        }
        if a.is_empty() && b.is_empty() {
            return;
        }
    }
    panic!("never quiet");
}

fn exchange_data(pump: &mut Peer, other: &mut Buffered, rng: &mut Rng) {
    for size in [1usize, 1000, 16384, 16385, 100_000, 1 << 20] {
        let data = rng.bytes(size);
        let ct = pump.seal(&data).unwrap();
        let before = other.received.len();
        other.feed(&ct).unwrap();
        assert_eq!(&other.received[before..], &data[..]);

        let ct = other.send(&data);
        let before = pump.received.len();
        pump.feed_chunked(&ct, rng, 5000).unwrap();
        assert_eq!(&pump.received[before..], &data[..]);
    }
}

#[test]
fn pump_client_with_buffered_rustls_server() {
    let pki = Pki::new();
    let mut c = Peer::client(client_config(&pki.ca_der, Prov::CompositeHybrid, &[]));
    let mut s = Buffered::server(server_config(&pki, Prov::AwsHybrid, &[]));
    drive_mixed(&mut c, &mut s);
    assert!(!c.pump.is_handshaking() && !s.conn.is_handshaking());
    assert!(c.pump.is_hybrid_pq());
    let mut rng = Rng::new(11);
    exchange_data(&mut c, &mut s, &mut rng);
    // close_notify both ways.
    c.pump.queue_close_notify().unwrap();
    s.feed(&c.take_transmit()).unwrap();
    s.conn.send_close_notify();
    c.feed(&s.take_transmit()).unwrap();
    assert_eq!(c.last_status, Some(Status::Closed));
}

#[test]
fn buffered_rustls_client_with_pump_server() {
    let pki = Pki::new();
    let mut c = Buffered::client(client_config(&pki.ca_der, Prov::AwsHybrid, &[]));
    let mut s = Peer::server(server_config(&pki, Prov::CompositeHybrid, &[]));
    // The buffered client speaks first.
    for _ in 0..64 {
        let a = c.take_transmit();
        if !a.is_empty() {
            s.feed(&a).unwrap();
        }
        let b = s.take_transmit();
        if !b.is_empty() {
            c.feed(&b).unwrap();
        }
        if a.is_empty() && b.is_empty() {
            break;
        }
    }
    assert!(!c.conn.is_handshaking() && !s.pump.is_handshaking());
    assert!(s.pump.is_hybrid_pq());
    let mut rng = Rng::new(12);
    exchange_data(&mut s, &mut c, &mut rng);
    c.conn.send_close_notify();
    s.feed(&c.take_transmit()).unwrap();
    assert_eq!(s.last_status, Some(Status::PeerClosed));
}

#[test]
fn composite_interops_with_pure_aws_lc_rs_both_ways_hybrid() {
    let pki = Pki::new();
    let mut rng = Rng::new(13);
    for (cp, sp) in [
        (Prov::CompositeHybrid, Prov::AwsHybrid),
        (Prov::AwsHybrid, Prov::CompositeHybrid),
    ] {
        let (mut c, mut s) = pair(
            client_config(&pki.ca_der, cp, &[]),
            server_config(&pki, sp, &[]),
        );
        for p in [&c, &s] {
            assert_eq!(p.pump.negotiated_group(), Some(NamedGroup::X25519MLKEM768));
            assert!(p.pump.is_hybrid_pq());
            assert_eq!(
                p.pump.cipher_suite(),
                Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384)
            );
        }
        let data = rng.bytes(200_000);
        let ct = c.seal(&data).unwrap();
        s.feed(&ct).unwrap();
        assert_eq!(s.received, data);
        let ct = s.seal(&data).unwrap();
        c.feed(&ct).unwrap();
        assert_eq!(c.received, data);
    }
    // And with ring on the other end (classical, since ring has no ML-KEM).
    let (c, s) = pair(
        client_config(&pki.ca_der, Prov::CompositeHybrid, &[]),
        server_config(&pki, Prov::Ring, &[]),
    );
    assert_eq!(c.pump.negotiated_group(), Some(NamedGroup::X25519));
    assert_eq!(s.pump.negotiated_group(), Some(NamedGroup::X25519));
}

#[test]
fn hybrid_when_both_offer_classical_fallback_otherwise() {
    let pki = Pki::new();
    let cases = [
        (Prov::AwsHybrid, Prov::AwsHybrid, NamedGroup::X25519MLKEM768),
        (
            Prov::CompositeHybrid,
            Prov::CompositeHybrid,
            NamedGroup::X25519MLKEM768,
        ),
        (Prov::AwsHybrid, Prov::AwsClassical, NamedGroup::X25519),
        (
            Prov::CompositeHybrid,
            Prov::CompositeClassical,
            NamedGroup::X25519,
        ),
        (Prov::AwsClassical, Prov::AwsHybrid, NamedGroup::X25519),
        (
            Prov::CompositeClassical,
            Prov::CompositeHybrid,
            NamedGroup::X25519,
        ),
    ];
    for (cp, sp, want) in cases {
        let (c, s) = pair(
            client_config(&pki.ca_der, cp, &[]),
            server_config(&pki, sp, &[]),
        );
        assert_eq!(c.pump.negotiated_group(), Some(want), "{cp:?} -> {sp:?}");
        assert_eq!(s.pump.negotiated_group(), Some(want), "{cp:?} -> {sp:?}");
        assert_eq!(c.pump.is_hybrid_pq(), want == NamedGroup::X25519MLKEM768);
        // Fallback costs no extra round trip (the client also sent an X25519 share).
        assert_eq!(
            c.pump.handshake_kind(),
            Some(HandshakeKind::Full),
            "{cp:?} -> {sp:?}"
        );
    }
}

#[test]
fn second_handshake_with_same_client_config_is_resumed() {
    let pki = Pki::new();
    for hybrid in [true, false] {
        let (cp, sp) = if hybrid {
            (Prov::CompositeHybrid, Prov::CompositeHybrid)
        } else {
            (Prov::CompositeClassical, Prov::CompositeClassical)
        };
        let ccfg = client_config(&pki.ca_der, cp, &[]);
        let scfg = server_config(&pki, sp, &[]);
        let (c1, s1) = pair(ccfg.clone(), scfg.clone());
        assert!(!c1.pump.is_resumed() && !s1.pump.is_resumed());
        assert_eq!(c1.pump.handshake_kind(), Some(HandshakeKind::Full));
        let (mut c2, mut s2) = pair(ccfg, scfg);
        assert!(c2.pump.is_resumed(), "client resumed (hybrid={hybrid})");
        assert!(s2.pump.is_resumed(), "server resumed (hybrid={hybrid})");
        assert_eq!(
            c2.pump.is_hybrid_pq(),
            hybrid,
            "resumption keeps (EC)DHE: psk_dhe_ke"
        );
        let ct = c2.seal(b"resumed data").unwrap();
        s2.feed(&ct).unwrap();
        assert_eq!(s2.received, b"resumed data");
    }
}

#[test]
fn resumption_across_pump_and_buffered_rustls() {
    let pki = Pki::new();
    // Pump client, buffered server.
    let ccfg = client_config(&pki.ca_der, Prov::CompositeHybrid, &[]);
    let scfg = server_config(&pki, Prov::AwsHybrid, &[]);
    for round in 0..2 {
        let mut c = Peer::client(ccfg.clone());
        let mut s = Buffered::server(scfg.clone());
        drive_mixed(&mut c, &mut s);
        assert_eq!(c.pump.is_resumed(), round == 1, "pump client round {round}");
        assert_eq!(
            s.conn.handshake_kind() == Some(HandshakeKind::Resumed),
            round == 1
        );
    }
    // Buffered client, pump server.
    let ccfg = client_config(&pki.ca_der, Prov::AwsHybrid, &[]);
    let scfg = server_config(&pki, Prov::CompositeHybrid, &[]);
    for round in 0..2 {
        let mut c = Buffered::client(ccfg.clone());
        let mut s = Peer::server(scfg.clone());
        for _ in 0..64 {
            let a = c.take_transmit();
            if !a.is_empty() {
                s.feed(&a).unwrap();
            }
            let b = s.take_transmit();
            if !b.is_empty() {
                c.feed(&b).unwrap();
            }
            if a.is_empty() && b.is_empty() {
                break;
            }
        }
        assert_eq!(s.pump.is_resumed(), round == 1, "pump server round {round}");
        assert_eq!(
            c.conn.handshake_kind() == Some(HandshakeKind::Resumed),
            round == 1
        );
    }
}

#[test]
fn alpn_agreed_and_mismatch_is_typed() {
    let pki = Pki::new();
    let (c, s) = pair(
        client_config(&pki.ca_der, Prov::CompositeHybrid, &[b"ron/1", b"h2"]),
        server_config(&pki, Prov::CompositeHybrid, &[b"h2", b"ron/1"]),
    );
    assert!(c.pump.alpn_protocol().is_some());
    assert_eq!(c.pump.alpn_protocol(), s.pump.alpn_protocol());
    // No ALPN offered by the client: none negotiated, handshake still fine.
    let (c, s) = pair(
        client_config(&pki.ca_der, Prov::CompositeHybrid, &[]),
        server_config(&pki, Prov::CompositeHybrid, &[b"ron/1"]),
    );
    assert_eq!(c.pump.alpn_protocol(), None);
    assert_eq!(s.pump.alpn_protocol(), None);
    // Disjoint lists: the server refuses with a typed error and tells the client.
    let mut c = Peer::client(client_config(
        &pki.ca_der,
        Prov::CompositeHybrid,
        &[b"other/9"],
    ));
    let mut s = Peer::server(server_config(&pki, Prov::CompositeHybrid, &[b"ron/1"]));
    match drive(&mut c, &mut s) {
        Err(util::Failed::Server(e)) => assert_eq!(e.kind(), "tls_no_alpn"),
        other => panic!("expected server ALPN failure, got {other:?}"),
    }
    let alert = s.take_transmit();
    assert!(
        !alert.is_empty(),
        "server sends the no_application_protocol alert"
    );
    let e = c.feed(&alert).unwrap_err();
    assert_eq!(e.kind(), "tls_alert_received");
}

#[test]
fn composite_provider_is_usable_directly() {
    let pki = Pki::new();
    let ccfg = client_config_with(&pki.ca_der, composite_provider(true), &[]);
    let (mut c, mut s) = pair(ccfg, server_config(&pki, Prov::AwsClassical, &[]));
    assert_eq!(c.pump.negotiated_group(), Some(NamedGroup::X25519));
    let ct = c.seal(b"ok").unwrap();
    s.feed(&ct).unwrap();
    assert_eq!(s.received, b"ok");
}
