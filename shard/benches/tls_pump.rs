//! TLS pump benches, in memory on one thread: open+seal throughput of 64 KiB writes (four
//! 16 KiB records) per crypto provider and AES key size, and handshake cost (full vs resumed,
//! hybrid X25519MLKEM768 vs classical X25519).
//!
//! `cargo bench -p ron-shard --bench tls_pump -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rustls::client::Resumption;
use rustls::{CipherSuite, ClientConfig, HandshakeKind, NamedGroup};

#[path = "../tests/tls_pump_util.rs"]
mod util;

use ron_shard::tls_pump::Status;
use util::{client_config_with, drive, server_config, Peer, Pki, Prov};

const WRITE: usize = 64 * 1024;

fn provider_name(p: Prov) -> &'static str {
    match p {
        Prov::AwsHybrid | Prov::AwsClassical => "aws-lc-rs",
        Prov::Ring => "ring",
        Prov::CompositeHybrid | Prov::CompositeClassical => "composite",
    }
}

fn client_cfg(
    pki: &Pki,
    prov: Prov,
    suite: Option<CipherSuite>,
    resume: bool,
) -> Arc<ClientConfig> {
    let mut provider = prov.provider();
    if let Some(suite) = suite {
        provider.cipher_suites.retain(|s| s.suite() == suite);
    }
    let cfg = client_config_with(&pki.ca_der, provider, &[]);
    if resume {
        return cfg;
    }
    let mut cfg = (*cfg).clone();
    cfg.resumption = Resumption::disabled();
    Arc::new(cfg)
}

fn seal_open(c: &mut Criterion) {
    let pki = Pki::new();
    let mut group = c.benchmark_group("tls_pump/seal_open_64k");
    group.throughput(Throughput::Bytes(WRITE as u64));
    for suite in [
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS13_AES_256_GCM_SHA384,
    ] {
        let suite_name = if suite == CipherSuite::TLS13_AES_128_GCM_SHA256 {
            "aes128gcm"
        } else {
            "aes256gcm"
        };
        for prov in [Prov::AwsHybrid, Prov::Ring, Prov::CompositeHybrid] {
            let (mut cl, mut sv) = {
                let mut cl = Peer::client(client_cfg(&pki, prov, Some(suite), true));
                let mut sv = Peer::server(server_config(&pki, prov, &[]));
                drive(&mut cl, &mut sv).expect("handshake");
                (cl, sv)
            };
            assert_eq!(cl.pump.cipher_suite(), Some(suite));
            let plaintext = vec![0x5au8; WRITE];
            let mut ct = vec![0u8; WRITE + 4 * 64];
            group.bench_function(BenchmarkId::new(suite_name, provider_name(prov)), |b| {
                b.iter(|| {
                    // Seal straight into the "send buffer"...
                    let n = cl.pump.encrypt(&plaintext, &mut ct).expect("encrypt");
                    // ...and open in place in the "receive buffer".
                    let mut at = 0;
                    let mut got = 0;
                    loop {
                        let p = sv.pump.handle_ciphertext(&mut ct[at..n]).expect("open");
                        got += p.plaintext.len();
                        black_box(&ct[at + p.plaintext.start..at + p.plaintext.end]);
                        at += p.discard;
                        if p.status != Status::CallAgain {
                            break;
                        }
                    }
                    assert_eq!(got, WRITE);
                })
            });
            assert_eq!(sv.pump.stats().records_copied, 0);
        }
    }
    group.finish();
}

fn handshakes(c: &mut Criterion) {
    let pki = Pki::new();
    let mut group = c.benchmark_group("tls_pump/handshake");
    let cases = [
        ("full_classical", Prov::AwsClassical, false),
        ("full_classical", Prov::Ring, false),
        ("full_classical", Prov::CompositeClassical, false),
        ("full_hybrid", Prov::AwsHybrid, false),
        ("full_hybrid", Prov::CompositeHybrid, false),
        ("resumed_classical", Prov::AwsClassical, true),
        ("resumed_classical", Prov::CompositeClassical, true),
        ("resumed_hybrid", Prov::AwsHybrid, true),
        ("resumed_hybrid", Prov::CompositeHybrid, true),
    ];
    // The same handshakes with rustls protecting the records afterwards (no hand-off to the
    // own record layer): the hand-off's cost per connection is the difference.
    let cases = cases.into_iter().map(|(n, p, r)| (n, p, r, false)).chain([
        (
            "resumed_classical_rustls_records",
            Prov::AwsClassical,
            true,
            true,
        ),
        (
            "full_classical_rustls_records",
            Prov::AwsClassical,
            false,
            true,
        ),
    ]);
    for (name, prov, resume, rustls_records) in cases {
        let mut ccfg = client_cfg(&pki, prov, None, resume);
        let mut scfg = server_config(&pki, prov, &[]);
        if rustls_records {
            ccfg = util::rustls_records_client(&ccfg);
            scfg = util::rustls_records_server(&scfg);
        }
        let hybrid = matches!(prov, Prov::AwsHybrid | Prov::CompositeHybrid);
        let connect = || {
            let mut cl = Peer::client(ccfg.clone());
            let mut sv = Peer::server(scfg.clone());
            drive(&mut cl, &mut sv).expect("handshake");
            (cl, sv)
        };
        // Warm the ticket cache, then check the case is what it says.
        let _ = connect();
        let (cl, _) = connect();
        let want = if resume {
            HandshakeKind::Resumed
        } else {
            HandshakeKind::Full
        };
        assert_eq!(cl.pump.handshake_kind(), Some(want), "{name}");
        let group_want = if hybrid {
            NamedGroup::X25519MLKEM768
        } else {
            NamedGroup::X25519
        };
        assert_eq!(cl.pump.negotiated_group(), Some(group_want), "{name}");
        group.bench_function(BenchmarkId::new(name, provider_name(prov)), |b| {
            b.iter(|| black_box(connect()))
        });
    }
    group.finish();
}

criterion_group!(benches, seal_open, handshakes);
criterion_main!(benches);
