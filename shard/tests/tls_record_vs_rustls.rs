//! The own TLS 1.3 record layer (the pump after its hand-off) against rustls itself, in memory:
//! a `TlsPump` on one side and a plain buffered `rustls::Connection` on the other, with random
//! frame sizes both ways, bytes delivered in random pieces, KeyUpdates at random points from
//! both sides (asked for and not), automatic KeyUpdates every few records, session tickets and
//! resumption, close_notify; and records that were truncated, reordered, replayed or
//! bit-flipped, which must fail the connection (typed error, alert to the peer, nothing
//! delivered from them), never loop or panic.

#[path = "tls_pump_util.rs"]
mod util;

use std::io::Write;
use std::sync::Arc;

use rustls::{AlertDescription, ClientConfig, ServerConfig};

use ron_shard::tls_pump::{PumpError, Status, TlsPump};
use ron_shard::tls_record::RecordError;
use util::{client_config, server_config, Buffered, Peer, Pki, Prov, Rng};

/// Shuttles handshake bytes until both are done.
fn handshake(p: &mut Peer, r: &mut Buffered, rng: &mut Rng) {
    for _ in 0..16 {
        let a = p.take_transmit();
        r.feed(&a).unwrap();
        let b = r.take_transmit();
        p.feed_chunked(&b, rng, 700).unwrap();
        if !p.pump.is_handshaking() && !r.conn.is_handshaking() && !p.pump.wants_write() {
            break;
        }
    }
    let a = p.take_transmit();
    r.feed(&a).unwrap();
    assert!(!p.pump.is_handshaking() && !r.conn.is_handshaking());
}

fn configs(pki: &Pki) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    (
        client_config(&pki.ca_der, Prov::AwsHybrid, &[]),
        server_config(pki, Prov::AwsHybrid, &[]),
    )
}

/// Random traffic both ways with KeyUpdates from both sides; returns the pump's stats.
fn exchange(p: &mut Peer, r: &mut Buffered, rng: &mut Rng, steps: usize) {
    let (mut to_pump, mut to_plain) = (Vec::new(), Vec::new());
    // The pump answers a requested KeyUpdate once until it sends application data again.
    let mut may_answer = true;
    for _ in 0..steps {
        match rng.below(10) {
            0..=3 => {
                let n = 1 + rng.below(40_000) as usize;
                let data = rng.bytes(n);
                r.conn.writer().write_all(&data).unwrap();
                to_pump.extend_from_slice(&data);
                let ct = r.take_transmit();
                let piece = 1 + rng.below(20_000) as usize;
                p.feed_chunked(&ct, rng, piece).unwrap();
            }
            4..=7 => {
                let n = 1 + rng.below(40_000) as usize;
                let data = rng.bytes(n);
                let ct = if rng.below(2) == 0 {
                    p.seal(&data).unwrap()
                } else {
                    seal_in_place(&mut p.pump, &data)
                };
                to_plain.extend_from_slice(&data);
                r.feed(&ct).unwrap();
                may_answer = true;
            }
            8 => {
                // rustls asks for a KeyUpdate (update_requested); the pump answers.
                r.conn.refresh_traffic_keys().unwrap();
                let ct = r.take_transmit();
                let sent = p.pump.stats().key_updates_sent;
                p.feed(&ct).unwrap();
                let answer = p.take_transmit();
                assert_eq!(
                    p.pump.stats().key_updates_sent - sent,
                    u64::from(may_answer),
                    "a requested KeyUpdate is answered once"
                );
                assert_eq!(answer.is_empty(), !may_answer);
                may_answer = false;
                r.feed(&answer).unwrap();
            }
            _ => {
                p.pump.queue_key_update(rng.below(2) == 0).unwrap();
                let ct = p.take_transmit();
                r.feed(&ct).unwrap();
                let answer = r.take_transmit();
                p.feed(&answer).unwrap();
            }
        }
        assert_eq!(p.received, to_pump, "rustls → pump stream differs");
        assert_eq!(r.received, to_plain, "pump → rustls stream differs");
    }
}

/// Seals `data` the way the shard does: plaintext written into record slots, sealed in place.
fn seal_in_place(pump: &mut TlsPump, data: &[u8]) -> Vec<u8> {
    use ron_shard::tls_record::{HEADER_LEN, MAX_PLAINTEXT, SEAL_OVERHEAD};
    let records = data.len().div_ceil(MAX_PLAINTEXT);
    pump.reserve_records(records as u64).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let n = pump.poll_transmit(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    for chunk in data.chunks(MAX_PLAINTEXT) {
        let at = out.len();
        out.resize(at + chunk.len() + SEAL_OVERHEAD, 0);
        out[at + HEADER_LEN..at + HEADER_LEN + chunk.len()].copy_from_slice(chunk);
        let n = pump.seal_in_place(&mut out[at..], chunk.len()).unwrap();
        assert_eq!(n, chunk.len() + SEAL_OVERHEAD);
    }
    out
}

#[test]
fn pump_client_against_rustls_server_with_key_updates_and_tickets() {
    let pki = Pki::new();
    let (ccfg, scfg) = configs(&pki);
    for seed in 1..=6u64 {
        let mut rng = Rng::new(seed);
        let mut p = Peer::client(ccfg.clone());
        if seed % 2 == 0 {
            // Automatic KeyUpdates every few records.
            p.pump.set_key_update_interval(1 + rng.below(5));
        }
        let mut r = Buffered::server(scfg.clone());
        handshake(&mut p, &mut r, &mut rng);
        // The tickets rustls sent after the handshake reach the pump's record layer.
        let tickets = r.take_transmit();
        p.feed(&tickets).unwrap();
        assert!(p.pump.seals_in_place(), "seed {seed}: no hand-off");
        exchange(&mut p, &mut r, &mut rng, 60);
        let st = p.pump.stats();
        assert!(st.key_updates_received > 0, "seed {seed}: {st:?}");
        assert!(st.key_updates_sent > 0, "seed {seed}: {st:?}");
        assert!(st.records_sealed > 0 && st.records_in_place > 0);
        assert_eq!(st.records_copied, 0);
        // close_notify both ways.
        p.pump.queue_close_notify().unwrap();
        r.feed(&p.take_transmit()).unwrap();
        r.conn.send_close_notify();
        p.feed(&r.take_transmit()).unwrap();
        assert_eq!(p.last_status, Some(Status::Closed));
    }
    // Every connection above stored tickets through KernelConnection: this one resumes.
    let mut rng = Rng::new(99);
    let mut p = Peer::client(ccfg);
    let mut r = Buffered::server(scfg);
    handshake(&mut p, &mut r, &mut rng);
    assert!(
        p.pump.is_resumed(),
        "tickets from the record layer did not resume"
    );
    p.feed(&r.take_transmit()).unwrap();
    exchange(&mut p, &mut r, &mut rng, 10);
}

#[test]
fn pump_server_against_rustls_client_with_key_updates() {
    let pki = Pki::new();
    let (ccfg, scfg) = configs(&pki);
    for seed in 11..=16u64 {
        let mut rng = Rng::new(seed);
        let mut r = Buffered::client(ccfg.clone());
        let mut p = Peer::server(scfg.clone());
        if seed % 2 == 1 {
            p.pump.set_key_update_interval(1 + rng.below(5));
        }
        // The client speaks first.
        let hello = r.take_transmit();
        p.feed(&hello).unwrap();
        handshake(&mut p, &mut r, &mut rng);
        assert!(p.pump.seals_in_place());
        exchange(&mut p, &mut r, &mut rng, 60);
        let st = p.pump.stats();
        assert!(
            st.key_updates_received > 0 && st.key_updates_sent > 0,
            "{st:?}"
        );
        r.conn.send_close_notify();
        p.feed(&r.take_transmit()).unwrap();
        assert_eq!(p.last_status, Some(Status::PeerClosed));
        // Sending still works after the peer's close_notify, then ours closes.
        let ct = p.seal(b"last words").unwrap();
        r.feed(&ct).unwrap();
        assert!(r.received.ends_with(b"last words"));
        p.pump.queue_close_notify().unwrap();
        assert!(p.pump.is_closed());
    }
    // The server's tickets (sent by rustls before the hand-off) resume.
    let mut rng = Rng::new(98);
    let mut r = Buffered::client(ccfg);
    let mut p = Peer::server(scfg);
    p.feed(&r.take_transmit()).unwrap();
    handshake(&mut p, &mut r, &mut rng);
    assert!(p.pump.is_resumed());
}

/// A connected pump client, rustls server pair, with some records from the server queued
/// (not yet fed): returns them one record per element.
fn pair_with_records(n: usize) -> (Peer, Buffered, Vec<Vec<u8>>) {
    let pki = Pki::new();
    let (ccfg, scfg) = configs(&pki);
    let mut rng = Rng::new(7);
    let mut p = Peer::client(ccfg);
    let mut r = Buffered::server(scfg);
    handshake(&mut p, &mut r, &mut rng);
    p.feed(&r.take_transmit()).unwrap();
    assert!(p.pump.seals_in_place());
    let mut records = Vec::new();
    for i in 0..n {
        r.conn
            .writer()
            .write_all(format!("record {i}").as_bytes())
            .unwrap();
        records.push(r.take_transmit());
    }
    (p, r, records)
}

/// The pump refused `bad`: a typed error, the same error again on the next call, nothing
/// from it delivered, and an alert the peer reads as `alert`.
fn assert_refused(
    mut p: Peer,
    mut r: Buffered,
    bad: &[u8],
    delivered: &[u8],
    alert: AlertDescription,
) {
    let e = p.feed(bad).unwrap_err();
    assert_eq!(e, PumpError::Record(RecordError::BadRecordMac));
    assert_eq!(e.kind(), "tls_decrypt");
    assert!(e.is_fatal());
    assert_eq!(
        p.received, delivered,
        "nothing from the bad record is delivered"
    );
    assert_eq!(p.pump.handle_ciphertext(&mut []).unwrap_err(), e);
    assert!(p.pump.encrypt(b"x", &mut [0u8; 64]).is_err());
    let to_peer = p.take_transmit();
    assert_eq!(
        r.feed(&to_peer).unwrap_err(),
        rustls::Error::AlertReceived(alert)
    );
}

#[test]
fn a_bit_flipped_record_fails_the_connection() {
    let (p, r, records) = pair_with_records(1);
    for at in [5, records[0].len() / 2, records[0].len() - 1] {
        let (p, r, mut records) = pair_with_records(1);
        records[0][at] ^= 0x01;
        assert_refused(p, r, &records[0], b"", AlertDescription::BadRecordMac);
    }
    drop((p, r));
}

#[test]
fn reordered_replayed_and_truncated_records_fail_the_connection() {
    // Reordered: the second record first.
    let (p, r, records) = pair_with_records(2);
    assert_refused(p, r, &records[1], b"", AlertDescription::BadRecordMac);
    // Replayed: the first record twice (the first copy is delivered).
    let (mut p, r, records) = pair_with_records(2);
    p.feed(&records[0]).unwrap();
    assert_refused(
        p,
        r,
        &records[0],
        b"record 0",
        AlertDescription::BadRecordMac,
    );
    // Truncated: a record one byte short, its length field adjusted to match.
    let (p, r, records) = pair_with_records(1);
    let mut t = records[0][..records[0].len() - 1].to_vec();
    let len = u16::from_be_bytes([t[3], t[4]]) - 1;
    t[3..5].copy_from_slice(&len.to_be_bytes());
    assert_refused(p, r, &t, b"", AlertDescription::BadRecordMac);
    // Cut short without adjusting: the record is incomplete, the pump waits (no error, no
    // plaintext), and the rest completes it.
    let (mut p, _r, records) = pair_with_records(1);
    let cut = records[0].len() - 3;
    p.feed(&records[0][..cut]).unwrap();
    assert_eq!(p.last_status, Some(Status::NeedsInput));
    assert!(p.received.is_empty());
    p.feed(&records[0][cut..]).unwrap();
    assert_eq!(p.received, b"record 0");
}

#[test]
fn headers_no_tls13_peer_sends_fail_with_typed_errors() {
    // An oversized length is refused from the header alone, before its bytes arrive.
    let (mut p, _r, _) = pair_with_records(0);
    let e = p.feed(&[23, 3, 3, 0x48, 0x01]).unwrap_err();
    assert_eq!(e, PumpError::Record(RecordError::Overflow { len: 0x4801 }));
    assert_eq!(e.kind(), "tls_record_overflow");
    // A plaintext handshake record after the handshake.
    let (mut p, _r, _) = pair_with_records(0);
    let e = p.feed(&[22, 3, 3, 0, 1, 0]).unwrap_err();
    assert_eq!(e.kind(), "tls_record_header");
}

#[test]
fn a_fatal_alert_from_the_peer_fails_the_connection() {
    let (mut p, mut r, _) = pair_with_records(0);
    // rustls sends a fatal alert when it fails: make it fail on a corrupt record from us.
    let mut ct = p.seal(b"hello").unwrap();
    let last = ct.len() - 1;
    ct[last] ^= 1;
    assert!(r.feed(&ct).is_err());
    let alert = r.take_transmit();
    let e = p.feed(&alert).unwrap_err();
    assert_eq!(
        e,
        PumpError::Tls(rustls::Error::AlertReceived(AlertDescription::BadRecordMac))
    );
    assert_eq!(e.kind(), "tls_alert_received");
}

#[test]
fn nothing_follows_our_close_notify_not_even_a_key_update_answer() {
    let (mut p, mut r, _) = pair_with_records(0);
    p.pump.queue_close_notify().unwrap();
    r.feed(&p.take_transmit()).unwrap();
    // rustls may still send, and asks for a KeyUpdate.
    r.conn.refresh_traffic_keys().unwrap();
    r.conn.writer().write_all(b"after your close").unwrap();
    p.feed(&r.take_transmit()).unwrap();
    assert_eq!(
        p.received, b"after your close",
        "the new receive key was installed"
    );
    assert!(!p.pump.wants_write(), "no answer after close_notify");
    assert_eq!(p.pump.stats().key_updates_sent, 0);
    assert_eq!(p.pump.stats().key_updates_received, 1);
}
