//! The crypto provider the pump recommends: ring's TLS 1.3 AEAD cipher suites (faster bulk
//! AES-GCM here) combined with aws-lc-rs's key exchange groups (the only provider with
//! X25519MLKEM768), signature verification, key loading and randomness.
//!
//! Owns only the composition; which provider a deployment uses is decided in `src/tls.rs`.
//!
//! Measured with `cargo bench -p ron-shard --bench tls_pump` (in memory, one core, a loaded
//! 2-vCPU Xeon with AVX-512/VAES): open+seal of 64 KiB writes through the pump ran at about
//! 2.6–2.8 GiB/s with aws-lc-rs, 1.9–2.1 GiB/s with ring and 1.8–2.0 GiB/s with this composite
//! (AES-128-GCM; AES-256-GCM 2.2–2.3 / 1.6–1.8 / 1.6–1.7), and handshake costs did not differ
//! between providers beyond the noise. On such hosts pure aws-lc-rs (hybrid first) is the
//! better default; this composite only pays off where ring's AES-GCM is the faster one, which
//! the same bench shows on the target host.

use rustls::crypto::{aws_lc_rs, ring, CryptoProvider, SupportedKxGroup};
use rustls::SupportedCipherSuite;

/// A composite `CryptoProvider`: ring's TLS 1.3 cipher suites (AES-256-GCM, AES-128-GCM,
/// ChaCha20-Poly1305, in that preference order) with aws-lc-rs for everything else.
///
/// With `hybrid`, the key exchange groups are X25519MLKEM768 first, then X25519, P-256, P-384
/// (classical peers still negotiate X25519 without a HelloRetryRequest, because rustls also
/// sends an X25519 key share); without it only the classical groups are offered.
///
/// TLS 1.2 suites are left out: the pump is TLS 1.3 only.
pub fn composite_provider(hybrid: bool) -> CryptoProvider {
    let aws = aws_lc_rs::default_provider();
    let cipher_suites: Vec<SupportedCipherSuite> = ring::DEFAULT_CIPHER_SUITES
        .iter()
        .copied()
        .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
        .collect();
    CryptoProvider {
        cipher_suites,
        kx_groups: kx_groups(hybrid),
        ..aws
    }
}

/// aws-lc-rs key exchange groups: hybrid-first or classical-only.
pub(crate) fn kx_groups(hybrid: bool) -> Vec<&'static dyn SupportedKxGroup> {
    use aws_lc_rs::kx_group::{SECP256R1, SECP384R1, X25519, X25519MLKEM768};
    let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::with_capacity(4);
    if hybrid {
        groups.push(X25519MLKEM768);
    }
    groups.extend([X25519, SECP256R1, SECP384R1]);
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::NamedGroup;

    #[test]
    fn composite_has_ring_suites_and_hybrid_first() {
        let p = composite_provider(true);
        assert_eq!(p.kx_groups[0].name(), NamedGroup::X25519MLKEM768);
        assert!(p
            .cipher_suites
            .iter()
            .all(|s| matches!(s, SupportedCipherSuite::Tls13(_))));
        assert_eq!(p.cipher_suites.len(), 3);
        // The suites are ring's TLS 1.3 suites, in ring's preference order.
        let ring_ids: Vec<_> = ring::default_provider()
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
            .map(|s| s.suite())
            .collect();
        let ids: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(ids, ring_ids);
        assert_eq!(ids[0], rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
        let classical = composite_provider(false);
        assert!(classical
            .kx_groups
            .iter()
            .all(|g| g.name() != NamedGroup::X25519MLKEM768));
        assert_eq!(classical.kx_groups[0].name(), NamedGroup::X25519);
    }
}
