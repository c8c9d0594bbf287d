//! Fuzz target `fuzz_tls_record_open`: the opener of the shards' own TLS 1.3 record layer
//! (`ron_shard::tls_record::RecordOpener`).
//!
//! Two kinds of input, chosen by the first byte:
//! - arbitrary bytes walked as a record stream (what any peer can send): never a panic, never
//!   a record opened (no tag is forgeable), every error typed, `need` consistent with
//!   `open_in_place`;
//! - an arbitrary *inner plaintext* (content, type byte, padding: anything) sealed under the
//!   opener's key by an independent AEAD call (aws-lc-rs directly), optionally with one byte
//!   flipped: the opener must agree with a reference parse of RFC 8446 §5.4 (strip trailing
//!   zeros, the last non-zero byte is the type, content at most 2^14 bytes), and refuse any
//!   flipped record.
#![no_main]

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use libfuzzer_sys::fuzz_target;
use ron_shard::tls_record::{
    AeadAlgorithm, AeadBackend, ContentType, RecordError, RecordOpener, HEADER_LEN,
    MAX_CIPHERTEXT, MAX_PLAINTEXT, TAG_LEN,
};

const KEY: [u8; 32] = [0x11; 32];
const IV: [u8; 12] = [0x22; 12];

fn opener(chacha: bool, ring: bool) -> RecordOpener {
    let alg = if chacha {
        AeadAlgorithm::Chacha20Poly1305
    } else {
        AeadAlgorithm::Aes256Gcm
    };
    let backend = if ring {
        AeadBackend::Ring
    } else {
        AeadBackend::AwsLc
    };
    RecordOpener::from_key(alg, &KEY, IV, 0, Some(backend)).expect("opener")
}

fn walk(data: &[u8], chacha: bool, ring: bool) {
    let mut o = opener(chacha, ring);
    let mut buf = data.to_vec();
    let mut pos = 0;
    while pos < buf.len() {
        let need = RecordOpener::need(&buf[pos..]);
        match o.open_in_place(&mut buf[pos..]) {
            Ok(Some(op)) => panic!("a record without the key opened: {op:?}"),
            Ok(None) => {
                assert!(matches!(need, Ok(n) if n > 0), "need {need:?} but incomplete");
                return;
            }
            Err(e) => {
                assert!(!e.kind().is_empty());
                if let Err(ne) = need {
                    assert_eq!(ne, e);
                }
                // A failed connection: the shard stops here; so do we.
                return;
            }
        }
    }
}

fn sealed(data: &[u8], chacha: bool, ring: bool) {
    let (flip, inner) = match data.split_first() {
        Some((f, rest)) => (*f, rest),
        None => return,
    };
    let inner = &inner[..inner.len().min(MAX_CIPHERTEXT - TAG_LEN)];
    let alg = if chacha { &CHACHA20_POLY1305 } else { &AES_256_GCM };
    let key = LessSafeKey::new(UnboundKey::new(alg, &KEY).expect("key"));
    let len = (inner.len() + TAG_LEN) as u16;
    let header = [23, 3, 3, (len >> 8) as u8, len as u8];
    let mut rec = header.to_vec();
    rec.extend_from_slice(inner);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(IV), // sequence number 0
            Aad::from(header),
            &mut rec[HEADER_LEN..],
        )
        .expect("seal");
    rec.extend_from_slice(tag.as_ref());
    let flipped = flip & 1 == 1;
    if flipped {
        let at = usize::from(flip >> 1) % rec.len();
        rec[at] ^= 0x80;
    }
    let mut o = opener(chacha, ring);
    let got = o.open_in_place(&mut rec);
    if flipped {
        assert!(!matches!(got, Ok(Some(_))), "a flipped record opened");
        return;
    }
    // Reference parse of TLSInnerPlaintext.
    let expect = match inner.iter().rposition(|&b| b != 0) {
        // Shorter than a tag plus the type byte: refused before decrypting.
        None if inner.is_empty() => Err(RecordError::BadRecordMac),
        None => Err(RecordError::MissingContentType),
        Some(at) if at > MAX_PLAINTEXT => Err(RecordError::Overflow { len: at }),
        Some(at) => match inner[at] {
            21 => Ok((ContentType::Alert, at)),
            22 => Ok((ContentType::Handshake, at)),
            23 => Ok((ContentType::ApplicationData, at)),
            t => Err(RecordError::UnknownContentType(t)),
        },
    };
    match (got, expect) {
        (Ok(Some(op)), Ok((ty, n))) => {
            assert_eq!(op.content_type, ty);
            assert_eq!(op.plaintext, HEADER_LEN..HEADER_LEN + n);
            assert_eq!(&rec[op.plaintext.clone()], &inner[..n]);
            assert_eq!(op.record_len, HEADER_LEN + inner.len() + TAG_LEN);
        }
        (Err(e), Err(x)) => assert_eq!(e, x),
        (g, x) => panic!("opener {g:?}, reference {x:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let chacha = mode & 2 != 0;
    let ring = mode & 4 != 0;
    if mode & 1 == 0 {
        walk(rest, chacha, ring);
    } else {
        sealed(rest, chacha, ring);
    }
});
