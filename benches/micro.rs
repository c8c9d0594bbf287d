//! Criterion micro-benches (spec/PERFORMANCE.md §2.1): frame encode/decode, the header guard,
//! the write coalescer, the bounded inflate guard, the token bucket, and one TLS 1.3 record
//! seal+open of 64 KiB between an in-memory rustls client/server pair.
//!
//! Bench ids are exactly the names of spec/PERFORMANCE.md §2.1 (no groups), so throughput is
//! derived from the times: 16 KiB, 64 × (16 KiB + 4), 1 MiB and 64 KiB per iteration.
//!
//! Run: `cargo bench --bench micro` (or `-- --quick` for a short pass).

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ron_transport::limits::{
    encode_frame, Codec, FrameDecoder, InflateGuard, WriteCoalescer, MAX_FRAME_CEILING,
};
use ron_transport::rate::TokenBucket;
use ron_transport::rustls;

const K16: usize = 16 * 1024;
const K64: usize = 64 * 1024;
const MIB: usize = 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift64*), masked to `mask` to tune compressibility.
fn noise(n: usize, mask: u8) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8) & mask
        })
        .collect()
}

fn frames(c: &mut Criterion) {
    let payload = noise(K16, 0xff);
    let mut out = BytesMut::with_capacity(K16 + 4);
    c.bench_function("oap_frame_encode_16k", |b| {
        b.iter(|| {
            out.clear();
            encode_frame(&mut out, black_box(&payload), MAX_FRAME_CEILING).unwrap();
            black_box(out.len())
        })
    });
    let mut encoded = BytesMut::new();
    encode_frame(&mut encoded, &payload, MAX_FRAME_CEILING).unwrap();
    let encoded = encoded.freeze();
    let mut d = FrameDecoder::new(MAX_FRAME_CEILING);
    c.bench_function("oap_frame_decode_16k", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&encoded[..]),
            |buf| black_box(d.decode(buf).unwrap().unwrap()),
            BatchSize::SmallInput,
        )
    });

    // The pre-allocation guard: a header announcing 2 MiB is refused without touching memory.
    let mut hostile = BytesMut::from(&(2 * MIB as u32).to_be_bytes()[..]);
    let mut d = FrameDecoder::new(MAX_FRAME_CEILING);
    c.bench_function("oap_header_parse", |b| {
        b.iter(|| black_box(d.decode(black_box(&mut hostile)).is_err()))
    });
}

fn coalesce(c: &mut Criterion) {
    // 64 frames of 16 KiB (1 MiB + headers) → 64 KiB write chunks.
    let payloads: Vec<Bytes> = (0..64).map(|_| Bytes::from(noise(K16, 0xff))).collect();
    c.bench_function("write_coalesce_64k_chunks", |b| {
        b.iter(|| {
            let mut w = WriteCoalescer::new(K64);
            for p in &payloads {
                w.push_frame(p.clone(), MAX_FRAME_CEILING).unwrap();
            }
            let mut n = 0;
            while let Some(chunk) = w.next_chunk() {
                n += chunk.len();
            }
            black_box(n)
        })
    });
}

fn inflate(c: &mut Criterion) {
    // 1 MiB of 4-bit noise: compresses ~2x, well inside the 8x guard.
    let data = noise(MIB, 0x0f);
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&data).unwrap();
    let compressed = e.finish().unwrap();
    let guard = InflateGuard::new(MAX_FRAME_CEILING);
    assert_eq!(guard.inflate(&compressed, Codec::Zlib).unwrap().len(), MIB);
    c.bench_function("bounded_inflate_guard_1mib", |b| {
        b.iter(|| black_box(guard.inflate(black_box(&compressed), Codec::Zlib).unwrap()))
    });
    // Baseline: the same stream through flate2's unguarded reader, to show the guard's cost.
    c.bench_function("inflate_unguarded_1mib_baseline", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(black_box(&compressed[..]))
                .read_to_end(&mut out)
                .unwrap();
            black_box(out)
        })
    });
}

fn bucket(c: &mut Criterion) {
    // Enabled bucket, realistic request size; the simulated clock advances so most calls pass.
    let bucket = TokenBucket::new(1 << 30, 1 << 20);
    let mut now = 1_000_000_000u64;
    c.bench_function("token_bucket_try_consume", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(bucket.try_consume(black_box(1500), now))
        })
    });
}

/// An in-memory TLS 1.3 client/server pair (aws-lc-rs provider), handshake completed.
fn tls_pair() -> (rustls::ClientConnection, rustls::ServerConnection) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client = rustls::ClientConnection::new(
        Arc::new(client_cfg),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
    client.set_buffer_limit(None);
    server.set_buffer_limit(None);
    let mut wire = Vec::new();
    for _ in 0..16 {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        pump_into_server(&mut server, &wire, &mut Vec::new());
        wire.clear();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    (client, server)
}

/// Feeds TLS bytes to the server, decrypting and draining plaintext into `plain` as it goes.
fn pump_into_server(server: &mut rustls::ServerConnection, wire: &[u8], plain: &mut Vec<u8>) {
    let mut rd = wire;
    let mut scratch = [0u8; K16];
    while !rd.is_empty() {
        server.read_tls(&mut rd).unwrap();
        server.process_new_packets().unwrap();
        loop {
            match server.reader().read(&mut scratch) {
                Ok(0) => break,
                Ok(n) => plain.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
}

fn tls(c: &mut Criterion) {
    let (mut client, mut server) = tls_pair();
    let app = noise(K64, 0xff);
    let mut wire = Vec::with_capacity(K64 + 1024);
    let mut plain = Vec::with_capacity(K64);
    c.bench_function("tls_record_seal_open_64k", |b| {
        b.iter(|| {
            client.writer().write_all(&app).unwrap();
            wire.clear();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            plain.clear();
            pump_into_server(&mut server, &wire, &mut plain);
            assert_eq!(plain.len(), K64);
            black_box(plain.len())
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = micro;
    config = config();
    targets = frames, coalesce, inflate, bucket, tls
}
criterion_main!(micro);
