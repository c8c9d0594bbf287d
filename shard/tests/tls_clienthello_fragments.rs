//! Issue 12 finding 6 (measured): a ClientHello split into one-byte TLS records, fed one
//! record per receive (as a peer sending one record per TCP segment makes the shard do).

#[path = "tls_pump_util.rs"]
mod util;

use std::time::{Duration, Instant};

use ron_shard::tls_pump::{PumpError, MAX_HANDSHAKE_TRANSITIONS};

use util::{client_config, server_config, Peer, Pki, Prov};

/// A real ClientHello (one record) with a padding extension of `pad` bytes added.
fn client_hello(pki: &Pki, pad: usize) -> Vec<u8> {
    let mut c = Peer::client(client_config(&pki.ca_der, Prov::AwsHybrid, &[b"ron/1"]));
    let rec = c.take_transmit();
    assert_eq!(rec[0], 0x16);
    let mut hs = rec[5..].to_vec();
    assert_eq!(hs[0], 1, "ClientHello");
    // Walk the ClientHello body to the extensions block.
    let mut at = 4 + 2 + 32;
    at += 1 + hs[at] as usize; // session id
    at += 2 + u16::from_be_bytes([hs[at], hs[at + 1]]) as usize; // cipher suites
    at += 1 + hs[at] as usize; // compression methods
    let ext_len_at = at;
    let ext_len = u16::from_be_bytes([hs[at], hs[at + 1]]) as usize;
    assert_eq!(ext_len_at + 2 + ext_len, hs.len());
    // Padding (type 21) first, so pre_shared_key (if any) stays last.
    let mut padding = vec![0x00, 0x15];
    padding.extend_from_slice(&(pad as u16).to_be_bytes());
    padding.resize(4 + pad, 0);
    hs.splice(ext_len_at + 2..ext_len_at + 2, padding.iter().copied());
    let new_ext = (ext_len + padding.len()) as u16;
    hs[ext_len_at..ext_len_at + 2].copy_from_slice(&new_ext.to_be_bytes());
    let body = (hs.len() - 4) as u32;
    hs[1..4].copy_from_slice(&body.to_be_bytes()[1..]);
    hs
}

/// Feeds `hs` as records of `frag` payload bytes, one `feed` each.
fn feed_fragmented(pki: &Pki, hs: &[u8], frag: usize) -> (Peer, Result<(), PumpError>, Duration) {
    let mut s = Peer::server(server_config(pki, Prov::AwsHybrid, &[b"ron/1"]));
    let start = Instant::now();
    let mut r = Ok(());
    for piece in hs.chunks(frag) {
        let mut rec = vec![0x16, 0x03, 0x03];
        rec.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        rec.extend_from_slice(piece);
        r = s.feed(&rec);
        if r.is_err() {
            break;
        }
    }
    (s, r, start.elapsed())
}

/// Before the fix the cost grew quadratically with the number of records (rustls re-walks
/// every retained fragment per call): measured in release at 9,649 / 17,841 / 34,225 records,
/// 10.4 / 37.9 / 118.1 ms (1.08 / 2.12 / 3.45 us per record). Now the pump refuses a
/// handshake past `MAX_HANDSHAKE_TRANSITIONS` rustls steps with a typed error, so the work
/// per connection is bounded; a moderately fragmented ClientHello still works.
#[test]
fn one_byte_record_client_hello_is_refused_in_bounded_work() {
    let pki = Pki::new();
    for pad in [1024usize, 8192, 32768] {
        let hs = client_hello(&pki, pad);
        let (s, r, took) = feed_fragmented(&pki, &hs, 1);
        let e = r.expect_err("refused");
        assert_eq!(e.kind(), "handshake_fragmented", "{e}");
        let t = s.pump.stats().transitions;
        assert!(t <= 2 * MAX_HANDSHAKE_TRANSITIONS + 64, "{t} transitions");
        println!(
            "records {:>6}: refused after {t} transitions in {:.3} ms",
            hs.len(),
            took.as_secs_f64() * 1e3
        );
    }
    // Fragmented, but not absurdly: 64-byte records.
    let hs = client_hello(&pki, 1024);
    let (s, r, _) = feed_fragmented(&pki, &hs, 64);
    r.expect("a ClientHello in 64-byte records is accepted");
    assert!(s.pump.wants_write(), "the server answered the ClientHello");
}
