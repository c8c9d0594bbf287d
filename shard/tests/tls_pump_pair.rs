//! In-memory pump ↔ pump: handshake, application data of many sizes split at arbitrary byte
//! boundaries, close_notify, caller-buffer contract, and the no-spin guarantee.

#[path = "tls_pump_util.rs"]
mod util;

use ron_shard::tls_pump::{PumpError, Status, TlsPump};
use util::{
    client_config, drive, localhost, pair, rustls_records_client, rustls_records_server,
    server_config, Peer, Pki, Prov, Rng,
};

fn default_pair(pki: &Pki) -> (Peer, Peer) {
    pair(
        client_config(&pki.ca_der, Prov::CompositeHybrid, &[]),
        server_config(pki, Prov::CompositeHybrid, &[]),
    )
}

/// A pair on which rustls protects every record (configs without secret extraction).
fn rustls_records_pair(pki: &Pki) -> (Peer, Peer) {
    let (c, s) = pair(
        rustls_records_client(&client_config(&pki.ca_der, Prov::CompositeHybrid, &[])),
        rustls_records_server(&server_config(pki, Prov::CompositeHybrid, &[])),
    );
    assert!(!c.pump.seals_in_place() && !s.pump.seals_in_place());
    (c, s)
}

/// Seals `data` on `from`, delivers it to `to` in random pieces, checks it arrived intact.
fn transfer(from: &mut Peer, to: &mut Peer, data: &[u8], rng: &mut Rng, max_chunk: usize) {
    let ct = from.seal(data).expect("seal");
    assert!(ct.len() > data.len(), "ciphertext carries record overhead");
    let before = to.received.len();
    to.feed_chunked(&ct, rng, max_chunk).expect("feed");
    assert_eq!(&to.received[before..], data, "plaintext differs");
    assert_eq!(to.last_status, Some(Status::NeedsInput));
    assert!(to.rx.is_empty(), "all complete records consumed");
}

#[test]
fn handshake_then_app_data_of_many_sizes_both_ways() {
    let pki = Pki::new();
    let (mut c, mut s) = default_pair(&pki);
    assert_eq!(c.handshake_completed, 1);
    assert_eq!(s.handshake_completed, 1);
    assert!(c.pump.is_hybrid_pq() && s.pump.is_hybrid_pq());
    let mut rng = Rng::new(0x5eed);
    let sizes = [
        1usize,
        2,
        17,
        255,
        1000,
        4096,
        16383,
        16384,
        16385,
        32768,
        65535,
        65536,
        100_000,
        262_144,
        1 << 20,
    ];
    for &size in &sizes {
        let data = rng.bytes(size);
        // Arbitrary split points: pieces up to 1, 7, 1500 and 70 000 bytes.
        for max_chunk in [7usize, 1500, 70_000] {
            transfer(&mut c, &mut s, &data, &mut rng, max_chunk);
            transfer(&mut s, &mut c, &data, &mut rng, max_chunk);
        }
        if size <= 65536 {
            transfer(&mut c, &mut s, &data, &mut rng, 1);
            transfer(&mut s, &mut c, &data, &mut rng, 1);
        }
    }
    // Zero-copy receive: every record was yielded in place, none copied by the pump.
    for p in [&c, &s] {
        let st = p.pump.stats();
        assert!(st.records_in_place > 0);
        assert_eq!(st.records_copied, 0, "{st:?}");
    }
}

#[test]
fn handshake_fed_one_byte_at_a_time() {
    let pki = Pki::new();
    let mut c = Peer::client(client_config(&pki.ca_der, Prov::CompositeHybrid, &[]));
    let mut s = Peer::server(server_config(&pki, Prov::CompositeHybrid, &[]));
    let mut rng = Rng::new(7);
    assert!(
        c.pump.wants_write(),
        "client queues its ClientHello at once"
    );
    assert!(!s.pump.wants_write());
    for _ in 0..16 {
        let a = c.take_transmit();
        s.feed_chunked(&a, &mut rng, 1).expect("server");
        let b = s.take_transmit();
        c.feed_chunked(&b, &mut rng, 1).expect("client");
        if a.is_empty() && b.is_empty() {
            break;
        }
    }
    assert!(!c.pump.is_handshaking() && !s.pump.is_handshaking());
    transfer(&mut c, &mut s, b"hello", &mut rng, 1);
    transfer(&mut s, &mut c, b"world", &mut rng, 1);
}

#[test]
fn many_records_in_one_buffer() {
    let pki = Pki::new();
    let (mut c, mut s) = default_pair(&pki);
    let mut rng = Rng::new(99);
    let mut all = Vec::new();
    let mut expect = Vec::new();
    for i in 0..200 {
        let d = rng.bytes(1 + (i * 37) % 3000);
        all.extend_from_slice(&c.seal(&d).unwrap());
        expect.extend_from_slice(&d);
    }
    s.feed(&all).unwrap();
    assert_eq!(s.received, expect);
}

#[test]
fn close_notify_both_ways() {
    let pki = Pki::new();
    let (mut c, mut s) = default_pair(&pki);
    let mut rng = Rng::new(3);
    c.pump.queue_close_notify().expect("close");
    c.pump.queue_close_notify().expect("close is idempotent");
    assert!(c.pump.wants_write());
    assert_eq!(
        c.pump.encrypt(b"late", &mut [0u8; 256]),
        Err(PumpError::Closed)
    );
    let alert = c.take_transmit();
    s.feed(&alert).unwrap();
    assert_eq!(s.last_status, Some(Status::PeerClosed));
    assert!(s.pump.is_peer_closed());
    // Input after the peer's close_notify is ignored, not an error.
    s.feed(&[23, 3, 3, 0, 1, 0]).unwrap();
    assert_eq!(s.last_status, Some(Status::PeerClosed));
    assert!(s.rx.is_empty(), "ignored input is discarded");
    // The server may still send until it closes too.
    transfer(&mut s, &mut c, b"last words", &mut rng, 3);
    s.pump.queue_close_notify().unwrap();
    let alert = s.take_transmit();
    c.feed(&alert).unwrap();
    assert_eq!(c.last_status, Some(Status::Closed));
    assert!(c.pump.is_closed());
    // Terminal: further calls keep reporting Closed.
    let p = c.pump.handle_ciphertext(&mut []).unwrap();
    assert_eq!(p.status, Status::Closed);
    let p = s.pump.handle_ciphertext(&mut []).unwrap();
    assert_eq!(
        p.status,
        Status::Closed,
        "the server sent and received close_notify"
    );
}

#[test]
fn insufficient_size_leaves_output_untouched() {
    let pki = Pki::new();
    let (mut c, mut s) = default_pair(&pki);
    let data = vec![0x42u8; 40_000];
    let required = match c.pump.encrypt(&data, &mut []) {
        Err(PumpError::InsufficientSize { required }) => required,
        other => panic!("expected InsufficientSize, got {other:?}"),
    };
    // 3 records of at most 16 KiB, each with header, inner type and tag.
    assert_eq!(required, 40_000 + 3 * (5 + 1 + 16));
    let mut out = vec![0xAAu8; required - 1];
    let err = c.pump.encrypt(&data, &mut out).unwrap_err();
    assert_eq!(err, PumpError::InsufficientSize { required });
    assert_eq!(err.kind(), "insufficient_size");
    assert!(out.iter().all(|&b| b == 0xAA), "output touched");
    // No state was lost: the same data still goes through.
    let mut out = vec![0u8; required + 100];
    let n = c.pump.encrypt(&data, &mut out).unwrap();
    assert_eq!(n, required);
    s.feed(&out[..n]).unwrap();
    assert_eq!(s.received, data);
}

#[test]
fn pending_tickets_go_before_app_data() {
    let pki = Pki::new();
    let mut c = Peer::client(client_config(&pki.ca_der, Prov::CompositeHybrid, &[]));
    let mut s = Peer::server(server_config(&pki, Prov::CompositeHybrid, &[]));
    // ClientHello -> server flight -> client Finished.
    s.feed(&c.take_transmit()).unwrap();
    c.feed(&s.take_transmit()).unwrap();
    s.feed(&c.take_transmit()).unwrap();
    assert!(!s.pump.is_handshaking());
    assert!(s.pump.wants_write(), "server queued session tickets");
    // Encrypt without polling first: the tickets must come first in `out`.
    let n_pending = {
        let mut probe = [0u8; 0];
        match s.pump.encrypt(b"after tickets", &mut probe) {
            Err(PumpError::InsufficientSize { required }) => required,
            other => panic!("{other:?}"),
        }
    };
    assert!(
        n_pending > 13 + 22,
        "required covers tickets plus the record"
    );
    let bytes = s.seal(b"after tickets").unwrap();
    assert!(!s.pump.wants_write(), "tickets went out with the data");
    c.feed(&bytes).unwrap();
    assert_eq!(c.received, b"after tickets");
}

#[test]
fn default_pairs_run_on_the_own_record_layer() {
    let pki = Pki::new();
    let (mut c, mut s) = default_pair(&pki);
    assert!(c.pump.seals_in_place() && s.pump.seals_in_place());
    // No rustls step per record any more, either way.
    let before = (c.pump.stats().transitions, s.pump.stats().transitions);
    let mut rng = Rng::new(3);
    for i in 0..50usize {
        transfer(&mut c, &mut s, &rng.bytes(1 + i * 333), &mut rng, 4096);
        transfer(&mut s, &mut c, &rng.bytes(1 + i * 77), &mut rng, 4096);
    }
    assert_eq!(
        (c.pump.stats().transitions, s.pump.stats().transitions),
        before
    );
    assert!(s.pump.stats().records_in_place >= 50);
    assert!(c.pump.stats().records_sealed >= 50);
}

#[test]
fn drive_loop_never_spins_on_write_traffic() {
    let pki = Pki::new();
    let (mut c, mut s) = rustls_records_pair(&pki);
    // Idle calls: exactly one rustls transition each (WriteTraffic), and NeedsInput.
    for _ in 0..100 {
        let before = s.pump.stats().transitions;
        let p = s.pump.handle_ciphertext(&mut []).unwrap();
        assert_eq!(p.status, Status::NeedsInput);
        assert_eq!(p.discard, 0);
        assert!(p.plaintext.is_empty());
        assert_eq!(s.pump.stats().transitions - before, 1);
    }
    // Per record: one transition to decrypt it, one to learn there is nothing more.
    s.max_transitions_per_call = 0;
    for i in 0..100usize {
        let before = c.pump.stats().transitions;
        let mut out = vec![0u8; 20_000];
        let n = c
            .pump
            .encrypt(&vec![i as u8; 1 + i * 100], &mut out)
            .unwrap();
        assert_eq!(
            c.pump.stats().transitions - before,
            1,
            "encrypt is one transition"
        );
        s.feed(&out[..n]).unwrap();
    }
    assert!(
        s.max_transitions_per_call <= 1,
        "{}",
        s.max_transitions_per_call
    );
    assert!(!s.pump.wants_write());
}

#[test]
fn encrypt_and_close_before_handshake_are_typed_errors() {
    let pki = Pki::new();
    let mut c = TlsPump::client(
        client_config(&pki.ca_der, Prov::CompositeHybrid, &[]),
        localhost(),
    )
    .unwrap();
    assert!(c.is_handshaking());
    let mut out = [0u8; 128];
    let e = c.encrypt(b"too early", &mut out).unwrap_err();
    assert_eq!(e, PumpError::HandshakeNotComplete);
    assert_eq!(e.kind(), "handshake_not_complete");
    assert!(!e.is_fatal());
    assert_eq!(c.queue_close_notify(), Err(PumpError::HandshakeNotComplete));
    // The pump is not failed by that: the handshake still completes.
    let mut c = Peer::new(c);
    let mut s = Peer::server(server_config(&pki, Prov::CompositeHybrid, &[]));
    drive(&mut c, &mut s).unwrap();
    assert!(!c.pump.is_handshaking());
}

#[test]
fn poll_transmit_partial_writes() {
    let pki = Pki::new();
    let mut c = Peer::client(client_config(&pki.ca_der, Prov::CompositeHybrid, &[]));
    let mut hello = Vec::new();
    let mut small = [0u8; 3];
    loop {
        let n = c.pump.poll_transmit(&mut small).unwrap();
        if n == 0 {
            break;
        }
        assert!(n <= 3);
        hello.extend_from_slice(&small[..n]);
    }
    assert_eq!(hello[0], 22, "handshake record");
    assert!(
        hello.len() > 1000,
        "hybrid key share makes a large ClientHello"
    );
    assert_eq!(c.pump.poll_transmit(&mut small).unwrap(), 0);
    let mut s = Peer::server(server_config(&pki, Prov::CompositeHybrid, &[]));
    s.feed(&hello).unwrap();
    drive(&mut c, &mut s).unwrap();
    assert!(!s.pump.is_handshaking());
}

#[test]
fn fragmented_handshake_messages_and_encrypt_while_bytes_are_retained() {
    let pki = Pki::new();
    let mut scfg =
        (*rustls_records_server(&server_config(&pki, Prov::CompositeHybrid, &[]))).clone();
    // 64-byte records: every handshake message, tickets included, spans several records.
    scfg.max_fragment_size = Some(64);
    let scfg = std::sync::Arc::new(scfg);
    let ccfg = rustls_records_client(&client_config(&pki.ca_der, Prov::CompositeHybrid, &[]));
    let mut rng = Rng::new(64);
    let mut c = Peer::client(ccfg.clone());
    let mut s = Peer::server(scfg.clone());
    s.feed(&c.take_transmit()).unwrap();
    let flight = s.take_transmit();
    c.feed_chunked(&flight, &mut rng, 50).unwrap();
    assert!(!c.pump.is_handshaking());
    s.feed(&c.take_transmit()).unwrap();
    let tickets = s.take_transmit();
    let first_len = 5 + usize::from(u16::from_be_bytes([tickets[3], tickets[4]]));
    assert!(
        tickets.len() > first_len,
        "the ticket flight spans several records"
    );
    // Give the client only the first fragment of a ticket: rustls keeps referring to it.
    c.feed(&tickets[..first_len]).unwrap();
    assert_eq!(c.last_status, Some(Status::NeedsInput));
    assert_eq!(
        c.rx.len(),
        first_len,
        "the partial handshake message is retained"
    );
    // Sending works meanwhile, and the retained bytes stay valid.
    let ct = c.seal(b"while retained").unwrap();
    s.feed(&ct).unwrap();
    assert_eq!(s.received, b"while retained");
    c.process().unwrap();
    assert_eq!(c.rx.len(), first_len);
    // The rest of the tickets arrives (one byte at a time), then app data.
    c.feed_chunked(&tickets[first_len..], &mut rng, 1).unwrap();
    assert!(c.rx.is_empty());
    let ct = s.seal(b"after tickets").unwrap();
    c.feed_chunked(&ct, &mut rng, 7).unwrap();
    assert_eq!(c.received, b"after tickets");
    // Those fragmented tickets were good: the next handshake resumes.
    let (c2, s2) = pair(ccfg, scfg);
    assert!(c2.pump.is_resumed() && s2.pump.is_resumed());
}

#[test]
fn tickets_split_across_records_reach_rustls_from_the_record_layer() {
    let pki = Pki::new();
    let mut scfg = (*server_config(&pki, Prov::CompositeHybrid, &[])).clone();
    // 64-byte records: every ticket spans several records.
    scfg.max_fragment_size = Some(64);
    let scfg = std::sync::Arc::new(scfg);
    let ccfg = client_config(&pki.ca_der, Prov::CompositeHybrid, &[]);
    let mut rng = Rng::new(65);
    let mut c = Peer::client(ccfg.clone());
    let mut s = Peer::server(scfg.clone());
    s.feed(&c.take_transmit()).unwrap();
    c.feed_chunked(&s.take_transmit(), &mut rng, 50).unwrap();
    assert!(
        c.pump.seals_in_place(),
        "the client hands off at its Finished"
    );
    s.feed(&c.take_transmit()).unwrap();
    assert!(s.pump.seals_in_place());
    let tickets = s.take_transmit();
    let first_len = 5 + usize::from(u16::from_be_bytes([tickets[3], tickets[4]]));
    assert!(tickets.len() > first_len);
    // The first fragment is held by the record layer, not by the caller's buffer.
    c.feed(&tickets[..first_len]).unwrap();
    assert!(c.rx.is_empty());
    let ct = c.seal(b"between fragments").unwrap();
    s.feed(&ct).unwrap();
    assert_eq!(s.received, b"between fragments");
    c.feed_chunked(&tickets[first_len..], &mut rng, 9).unwrap();
    let ct = s.seal(b"after tickets").unwrap();
    c.feed_chunked(&ct, &mut rng, 7).unwrap();
    assert_eq!(c.received, b"after tickets");
    // rustls stored the tickets: the next handshake resumes, and runs on the record layer too.
    let (mut c2, mut s2) = pair(ccfg, scfg);
    assert!(c2.pump.is_resumed() && s2.pump.is_resumed());
    transfer(&mut c2, &mut s2, b"resumed", &mut rng, 3);
}
