//! Own TLS 1.3 record layer, in memory on one thread: seal and open of full 16 KiB records
//! per AEAD (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305) and backend (ring, aws-lc-rs). This is
//! the measurement behind `AeadBackend::preferred`, and the "open+seal limit" the TLS stream rows
//! are compared against.
//!
//! `cargo bench -p ron-shard --bench tls_record -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ron_shard::tls_record::{
    AeadAlgorithm, AeadBackend, ContentType, RecordOpener, RecordSealer, HEADER_LEN, MAX_PLAINTEXT,
    SEAL_OVERHEAD,
};

fn seal_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("tls_record/seal_open_16k");
    group.throughput(Throughput::Bytes(MAX_PLAINTEXT as u64));
    let key = [0x42u8; 32];
    for (alg, name, klen) in [
        (AeadAlgorithm::Aes128Gcm, "aes128gcm", 16),
        (AeadAlgorithm::Aes256Gcm, "aes256gcm", 32),
        (AeadAlgorithm::Chacha20Poly1305, "chacha20poly1305", 32),
    ] {
        for (backend, bname) in [
            (AeadBackend::Ring, "ring"),
            (AeadBackend::AwsLc, "aws-lc-rs"),
        ] {
            let mut s =
                RecordSealer::from_key(alg, &key[..klen], [7; 12], 0, Some(backend)).unwrap();
            let mut o =
                RecordOpener::from_key(alg, &key[..klen], [7; 12], 0, Some(backend)).unwrap();
            let mut buf = vec![0u8; MAX_PLAINTEXT + SEAL_OVERHEAD];
            group.bench_function(BenchmarkId::new(name, bname), |b| {
                b.iter(|| {
                    buf[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&[1; 8]);
                    let n = s
                        .seal_in_place(&mut buf, MAX_PLAINTEXT, ContentType::ApplicationData)
                        .unwrap();
                    let op = o.open_in_place(&mut buf[..n]).unwrap().unwrap();
                    black_box(op.plaintext.len())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, seal_open);
criterion_main!(benches);
