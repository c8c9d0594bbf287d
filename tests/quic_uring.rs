//! QUIC on the uring engine (feature `quic`), what only the shard driver does: stray datagrams
//! forwarded to the shard that owns their connection, garbage dropped before any state, and the
//! UDP offloads (GSO sends, GRO receives) switched by `quic.gso` / `quic.gro`.
//!
//! Forwarding: two shards, one `SO_REUSEPORT` UDP socket each: the kernel picks the socket by
//! hashing the datagram's 4-tuple. A plain quinn client (rustls's stock provider) echoes OAP/1
//! frames through our listener, then migrates: each `Endpoint::rebind` to a fresh loopback port
//! is a new 4-tuple, so its datagrams land on either shard, each time with probability 1/2,
//! while the connection ids they carry still name the shard that owns the connection. Frames
//! are echoed after every rebind, byte-exact.
#![cfg(feature = "quic")]

mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ron_shard::StatsSnapshot;
use ron_transport::config::Backend;
use ron_transport::engine::uring::UringEngine;
use ron_transport::quic::{ALPN, STREAM_PREFACE};
use ron_transport::{Config, Engine, Listener, RejectReason, TransportMetrics};

use util::engines::{EngineKind, UringEng};
use util::quic::{read_frame, write_frame};
use util::tls::PemMaterial;
use util::{loopback, payload, rejected, snap, wait_until, within};

const SLACK: Duration = Duration::from_secs(10);

/// Rebinds before giving up. Each rebind lands on the non-owning shard with probability 1/2
/// (the kernel's reuseport hash of a new source port), so all of them staying on the owner
/// has probability 2^-30: the test is deterministic in practice.
const MAX_REBINDS: usize = 30;

/// Frame sizes echoed on every path: small ones and one spanning many datagrams.
const SIZES: [usize; 4] = [0, 1, 1200, 64 * 1024];

fn quic_config() -> Config {
    let mut c = Config::default();
    c.backend = Backend::Quic;
    c.bind_addr = Some(loopback());
    c
}

/// A plain quinn client endpoint trusting `pem`'s certificate, offering ALPN `oap/1`.
fn plain_client(pem: &PemMaterial) -> quinn::Endpoint {
    util::quic::plain_client(&pem.cert_pem, ALPN)
}

/// A 2-shard uring engine on quic serving an echo; its listening address.
async fn two_shard_echo(
    pem: &PemMaterial,
    metrics: Arc<TransportMetrics>,
) -> (UringEngine, SocketAddr) {
    two_shard_echo_with(pem, metrics, quic_config()).await
}

/// [`two_shard_echo`] with `cfg`.
async fn two_shard_echo_with(
    pem: &PemMaterial,
    metrics: Arc<TransportMetrics>,
    cfg: Config,
) -> (UringEngine, SocketAddr) {
    let engine: UringEngine = UringEng::build(cfg.validate().unwrap(), Some(&pem.fixture), metrics);
    assert_eq!(engine.shard_stats().len(), 2, "two shards");
    let listener = engine.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    util::spawn_echo(&engine, listener);
    (engine, addr)
}

/// A plain quinn connection to `addr` with one stream, its preface written.
async fn open_stream(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let conn = within("connect", SLACK, async {
        ep.connect(addr, "localhost").unwrap().await
    })
    .await
    .expect("handshake with our listener");
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&STREAM_PREFACE).await.unwrap();
    (conn, send, recv)
}

/// Sends every frame of [`SIZES`] (seeded by `round`) and checks each echo byte for byte.
async fn echo_round(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, round: usize) {
    for (i, n) in SIZES.into_iter().enumerate() {
        let sent = payload(n, (round * SIZES.len() + i) as u8);
        write_frame(send, &sent).await;
        let got = within("echo", SLACK, read_frame(recv))
            .await
            .unwrap_or_else(|| panic!("stream ended instead of the echo (round {round}, {n} B)"));
        assert_eq!(got, sent, "echo of {n} bytes after rebind {round}");
    }
}

fn sum(stats: &[StatsSnapshot], f: impl Fn(&StatsSnapshot) -> u64) -> u64 {
    stats.iter().map(f).sum()
}

fn show(stats: &[StatsSnapshot]) -> String {
    stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "shard {i}: datagrams_in={} forwarded={} forwarded_in={} dropped={} conns={}",
                s.quic_datagrams_in,
                s.quic_forwarded,
                s.quic_forwarded_in,
                s.quic_dropped,
                s.quic_conns
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn a_datagram_on_the_wrong_shard_is_forwarded_to_the_owner() {
    util::run_multi_thread(async {
        let pem = PemMaterial::new();
        let metrics = TransportMetrics::new();
        let (engine, addr) = two_shard_echo(&pem, metrics.clone()).await;
        let ep = plain_client(&pem);
        let (conn, mut send, mut recv) = open_stream(&ep, addr).await;
        echo_round(&mut send, &mut recv, 0).await;
        let before = engine.shard_stats();
        assert_eq!(sum(&before, |s| s.quic_forwarded), 0, "{}", show(&before));
        assert_eq!(sum(&before, |s| s.quic_conns), 1, "{}", show(&before));

        let mut rounds = 0;
        for round in 1..=MAX_REBINDS {
            ep.rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap();
            echo_round(&mut send, &mut recv, round).await;
            rounds = round;
            if sum(&engine.shard_stats(), |s| s.quic_forwarded) > 0 {
                break;
            }
        }
        // One more path after the forwarding started, and the last path again.
        ep.rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        echo_round(&mut send, &mut recv, rounds + 1).await;
        echo_round(&mut send, &mut recv, rounds + 2).await;

        // Every forwarded datagram arrived at the owner.
        wait_until("forwarded datagrams received", SLACK, || {
            let st = engine.shard_stats();
            sum(&st, |s| s.quic_forwarded) == sum(&st, |s| s.quic_forwarded_in)
        })
        .await;
        let st = engine.shard_stats();
        let fwd = sum(&st, |s| s.quic_forwarded);
        eprintln!("after {rounds} rebinds: {}", show(&st));
        assert!(
            fwd > 0,
            "no datagram forwarded in {rounds} rebinds: {}",
            show(&st)
        );
        let from = st.iter().position(|s| s.quic_forwarded > 0).unwrap();
        let to = st.iter().position(|s| s.quic_forwarded_in > 0);
        assert!(
            to.is_some_and(|to| to != from),
            "forwarded by shard {from} but not received by the other: {}",
            show(&st)
        );
        // Only the owner holds the connection; the stray shard forwarded, never dropped.
        assert_eq!(st[to.unwrap()].quic_conns, 1, "{}", show(&st));
        assert_eq!(sum(&st, |s| s.quic_conns), 1, "{}", show(&st));
        assert_eq!(sum(&st, |s| s.quic_dropped), 0, "{}", show(&st));

        // One QUIC connection (migrated, not re-established), no reject anywhere.
        assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
        let s = snap(&metrics, Backend::Quic);
        assert_eq!((s.accepts, s.hs_off, s.tls_failures), (1, 1, 0), "{s:?}");
        for r in RejectReason::ALL {
            assert_eq!(rejected(&metrics, r), 0, "{r}");
        }
        conn.close(0u32.into(), b"done");
        engine.shutdown(Duration::from_secs(1)).await;
    });
}

/// A flood of garbage datagrams (short headers with connection ids we never issued, runt long
/// headers, random bytes) creates no connection, no forwarding and no reject, is counted as
/// dropped, and leaves the listener serving a real client at once.
#[test]
fn a_garbage_flood_is_dropped_before_any_connection_state() {
    util::run_multi_thread(async {
        let pem = PemMaterial::new();
        let metrics = TransportMetrics::new();
        let (engine, addr) = two_shard_echo(&pem, metrics.clone()).await;

        const FLOOD: usize = 5_000;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..FLOOD {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut d = x.to_le_bytes().repeat(8);
            match i % 3 {
                0 => d[0] = 0x40 | (d[0] & 0x3f), // short header, a foreign id
                1 => d[0] = 0xc0,                 // long header, runt (not an Initial ≥ 1200)
                _ => {}                           // anything
            }
            sock.send_to(&d, addr).unwrap();
            if i % 64 == 63 {
                // Bursts the socket's receive buffer takes (a full buffer drops in the kernel).
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Settled: no datagram arrives for 300 ms. Most of the flood must have been received.
        let mut last = u64::MAX;
        loop {
            let now = sum(&engine.shard_stats(), |s| s.quic_datagrams_in);
            if now == last {
                break;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let st = engine.shard_stats();
        assert!(last >= (FLOOD / 2) as u64, "{}", show(&st));
        assert_eq!(sum(&st, |s| s.quic_conns), 0, "{}", show(&st));
        assert_eq!(sum(&st, |s| s.quic_forwarded), 0, "{}", show(&st));
        // The short-header third is dropped before any copy (the rest reach quinn-proto, which
        // drops them too, without state).
        assert!(sum(&st, |s| s.quic_dropped) >= last / 4, "{}", show(&st));
        for r in RejectReason::ALL {
            assert_eq!(rejected(&metrics, r), 0, "{r}");
        }

        // A real client right after the flood.
        let ep = plain_client(&pem);
        let (conn, mut send, mut recv) = open_stream(&ep, addr).await;
        echo_round(&mut send, &mut recv, 0).await;
        conn.close(0u32.into(), b"done");
        engine.shutdown(Duration::from_secs(1)).await;
    });
}

/// Bulk echo (16 × 256 KiB each way) through a uring QUIC listener with `gso` / `gro` set; the
/// summed shard stats afterwards.
fn bulk_echo(gso: bool, gro: bool) -> Vec<StatsSnapshot> {
    let stats = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = stats.clone();
    util::run_multi_thread(async move {
        let pem = PemMaterial::new();
        let mut cfg = quic_config();
        cfg.quic_gso = gso;
        cfg.quic_gro = gro;
        let (engine, addr) = two_shard_echo_with(&pem, TransportMetrics::new(), cfg).await;
        let ep = plain_client(&pem);
        let (conn, mut send, mut recv) = open_stream(&ep, addr).await;
        for i in 0..16 {
            let sent = payload(256 * 1024, i);
            write_frame(&mut send, &sent).await;
            let got = within("bulk echo", SLACK, read_frame(&mut recv))
                .await
                .expect("echo");
            assert_eq!(got, sent, "bulk echo {i}");
        }
        *out.lock().unwrap() = engine.shard_stats();
        conn.close(0u32.into(), b"done");
        engine.shutdown(Duration::from_secs(1)).await;
    });
    let st = stats.lock().unwrap().clone();
    st
}

/// `quic.gso` / `quic.gro` on (the defaults): bulk data leaves in `UDP_SEGMENT` batches and
/// arrives in GRO batches (the quinn client sends GSO batches, which loopback hands over
/// whole). Off: one datagram per `sendmsg` and per receive completion.
#[test]
fn udp_offloads_follow_quic_gso_and_quic_gro() {
    let on = bulk_echo(true, true);
    assert!(sum(&on, |s| s.quic_gso_sends) > 0, "{}", show(&on));
    assert!(sum(&on, |s| s.quic_gro_batches) > 0, "{}", show(&on));
    assert!(
        sum(&on, |s| s.quic_datagrams_out) > sum(&on, |s| s.send_submissions),
        "GSO: more datagrams than sendmsg calls: {}",
        show(&on)
    );
    let off = bulk_echo(false, false);
    assert_eq!(sum(&off, |s| s.quic_gso_sends), 0, "{}", show(&off));
    assert_eq!(sum(&off, |s| s.quic_gro_batches), 0, "{}", show(&off));
}
