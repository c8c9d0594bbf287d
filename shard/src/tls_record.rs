//! The TLS 1.3 record layer the shards run once rustls has finished a handshake (RFC 8446 §5).
//!
//! Owns record protection only: the AEAD keys of one direction, the sequence number, the nonce
//! (the IV XOR the sequence number), the record header as AAD, the inner content type and
//! padding, and the size limits. It seals a record **in place** around plaintext the caller
//! already wrote into its send buffer (`header | plaintext | type | tag`, the plaintext written
//! there once, by the caller), and opens a record in place in the receive buffer, returning the
//! plaintext as a range of it. Nothing is copied here beyond the AEAD's own pass.
//!
//! Does not own: what the messages mean (alerts, KeyUpdate, NewSessionTicket: [`crate::tls_pump`]
//! handles those and asks rustls for the next secrets), sockets, buffers or policy. No I/O, no
//! clock, no allocation.
//!
//! # AEAD backend
//!
//! Each key is a ring or an aws-lc-rs `LessSafeKey`; [`AeadBackend::preferred`] picks per
//! algorithm by measurement (`cargo bench -p ron-shard --bench tls_record`, numbers in
//! docs/perf.md "Own TLS record layer"). The handshake provider is not affected: X25519MLKEM768
//! stays on aws-lc-rs.
//!
//! # Secrets
//!
//! rustls's `AeadKey` zeroizes itself on drop; the IV kept here is zeroized on drop; an
//! aws-lc-rs key's schedule is cleansed by AWS-LC when it is freed. ring does not wipe its
//! expanded key schedules, which is one reason aws-lc-rs is preferred when it is not slower.

#![forbid(unsafe_code)]

use std::fmt;
use std::ops::Range;

use rustls::ConnectionTrafficSecrets;
use zeroize::Zeroize;

/// Record header: outer content type (1), legacy version (2), length (2). It is the AAD.
pub const HEADER_LEN: usize = 5;
/// AEAD tag length of every TLS 1.3 suite this layer supports.
pub const TAG_LEN: usize = 16;
/// Largest plaintext of one record (2^14).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest ciphertext (`TLSCiphertext.length`) a peer may send: 2^14 + 256 (RFC 8446 §5.2).
pub const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Bytes sealing adds around the plaintext (no padding): header, inner content type, tag.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;

/// Outer content type of every protected TLS 1.3 record.
const OUTER_CONTENT_TYPE: u8 = 23;
/// `legacy_record_version` of protected records.
const LEGACY_VERSION: u16 = 0x0303;
/// Nonce length of every supported AEAD.
const NONCE_LEN: usize = 12;

/// Inner content type of a protected record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// An alert (close_notify or a fatal alert).
    Alert,
    /// Post-handshake messages: KeyUpdate, NewSessionTicket, CertificateRequest.
    Handshake,
    /// Application data.
    ApplicationData,
}

impl ContentType {
    fn byte(self) -> u8 {
        match self {
            Self::Alert => 21,
            Self::Handshake => 22,
            Self::ApplicationData => 23,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            21 => Some(Self::Alert),
            22 => Some(Self::Handshake),
            23 => Some(Self::ApplicationData),
            _ => None,
        }
    }
}

/// The AEAD of a TLS 1.3 cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AeadAlgorithm {
    /// TLS_AES_128_GCM_SHA256.
    Aes128Gcm,
    /// TLS_AES_256_GCM_SHA384.
    Aes256Gcm,
    /// TLS_CHACHA20_POLY1305_SHA256.
    Chacha20Poly1305,
}

impl AeadAlgorithm {
    /// Records one key may protect before it must be replaced (RFC 8446 §5.5; the values rustls
    /// uses): 2^24 for AES-GCM, unlimited (the sequence space) for ChaCha20-Poly1305.
    pub fn confidentiality_limit(self) -> u64 {
        match self {
            Self::Aes128Gcm | Self::Aes256Gcm => 1 << 24,
            Self::Chacha20Poly1305 => u64::MAX,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            Self::Aes256Gcm | Self::Chacha20Poly1305 => 32,
        }
    }
}

/// The library that runs the AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AeadBackend {
    /// ring 0.17.
    Ring,
    /// aws-lc-rs 1.x.
    AwsLc,
}

impl AeadBackend {
    /// The backend chosen for `alg` by measurement on the shard hosts (see the module docs):
    /// aws-lc-rs for every suite (AES-GCM measured faster than ring's on the VAES hosts, and
    /// ChaCha20-Poly1305 no slower), which also wipes key schedules on drop.
    pub fn preferred(alg: AeadAlgorithm) -> Self {
        match alg {
            AeadAlgorithm::Aes128Gcm
            | AeadAlgorithm::Aes256Gcm
            | AeadAlgorithm::Chacha20Poly1305 => Self::AwsLc,
        }
    }
}

/// What can go wrong sealing or opening a record. A failed open means the connection must
/// fail: nothing from that record may be used.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The header is not a protected TLS 1.3 record (outer type 23, version 0x0303).
    UnexpectedHeader {
        /// The outer content type byte.
        content_type: u8,
        /// The legacy version field.
        version: u16,
    },
    /// `TLSCiphertext.length` is over 2^14 + 256, or the plaintext over 2^14 + 1.
    Overflow {
        /// The length the peer declared.
        len: usize,
    },
    /// The record did not authenticate (tampered, truncated, reordered, replayed, or under
    /// another key).
    BadRecordMac,
    /// The decrypted record is all zero bytes: it has no inner content type.
    MissingContentType,
    /// The inner content type is not alert, handshake or application data.
    UnknownContentType(u8),
    /// The sequence number space of the key is used up (the sender must have updated keys).
    SequenceExhausted,
    /// The buffer given to seal is too small for header, plaintext, type and tag.
    InsufficientSize {
        /// Bytes the buffer needs.
        required: usize,
    },
    /// Sealing more than 2^14 bytes of plaintext in one record.
    PlaintextTooLong(usize),
    /// The traffic secret has the wrong length for its algorithm (never from rustls).
    BadKey,
}

impl RecordError {
    /// Stable reason string.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnexpectedHeader { .. } => "tls_record_header",
            Self::Overflow { .. } => "tls_record_overflow",
            Self::BadRecordMac => "tls_decrypt",
            Self::MissingContentType | Self::UnknownContentType(_) => "tls_invalid_message",
            Self::SequenceExhausted => "encrypt_exhausted",
            Self::InsufficientSize { .. } => "insufficient_size",
            Self::PlaintextTooLong(_) => "tls_record_overflow",
            Self::BadKey => "internal",
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnexpectedHeader {
                content_type,
                version,
            } => write!(
                f,
                "not a TLS 1.3 protected record (type {content_type}, version {version:#06x})"
            ),
            Self::Overflow { len } => write!(f, "record of {len} bytes exceeds the TLS limit"),
            Self::BadRecordMac => f.write_str("record failed to authenticate"),
            Self::MissingContentType => f.write_str("record has no inner content type"),
            Self::UnknownContentType(t) => write!(f, "unknown inner content type {t}"),
            Self::SequenceExhausted => f.write_str("record sequence numbers exhausted"),
            Self::InsufficientSize { required } => {
                write!(f, "seal buffer too small: {required} bytes required")
            }
            Self::PlaintextTooLong(n) => write!(f, "{n} bytes of plaintext exceed one record"),
            Self::BadKey => f.write_str("traffic secret of the wrong length"),
        }
    }
}

impl std::error::Error for RecordError {}

/// One AEAD key.
enum Key {
    /// Boxed: ring's key schedule is inline (544 bytes), aws-lc-rs's is behind a pointer.
    Ring(Box<ring::aead::LessSafeKey>),
    AwsLc(aws_lc_rs::aead::LessSafeKey),
}

impl Key {
    fn new(backend: AeadBackend, alg: AeadAlgorithm, key: &[u8]) -> Result<Self, RecordError> {
        if key.len() != alg.key_len() {
            return Err(RecordError::BadKey);
        }
        Ok(match backend {
            AeadBackend::Ring => {
                use ring::aead as a;
                let alg = match alg {
                    AeadAlgorithm::Aes128Gcm => &a::AES_128_GCM,
                    AeadAlgorithm::Aes256Gcm => &a::AES_256_GCM,
                    AeadAlgorithm::Chacha20Poly1305 => &a::CHACHA20_POLY1305,
                };
                let k = a::UnboundKey::new(alg, key).map_err(|_| RecordError::BadKey)?;
                Self::Ring(Box::new(a::LessSafeKey::new(k)))
            }
            AeadBackend::AwsLc => {
                use aws_lc_rs::aead as a;
                let alg = match alg {
                    AeadAlgorithm::Aes128Gcm => &a::AES_128_GCM,
                    AeadAlgorithm::Aes256Gcm => &a::AES_256_GCM,
                    AeadAlgorithm::Chacha20Poly1305 => &a::CHACHA20_POLY1305,
                };
                let k = a::UnboundKey::new(alg, key).map_err(|_| RecordError::BadKey)?;
                Self::AwsLc(a::LessSafeKey::new(k))
            }
        })
    }

    /// Encrypts `in_out` in place; returns the tag.
    fn seal(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: [u8; HEADER_LEN],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], RecordError> {
        let mut tag = [0u8; TAG_LEN];
        match self {
            Self::Ring(k) => {
                use ring::aead as a;
                let t = k
                    .seal_in_place_separate_tag(
                        a::Nonce::assume_unique_for_key(nonce),
                        a::Aad::from(aad),
                        in_out,
                    )
                    .map_err(|_| RecordError::Overflow { len: in_out.len() })?;
                tag.copy_from_slice(t.as_ref());
            }
            Self::AwsLc(k) => {
                use aws_lc_rs::aead as a;
                let t = k
                    .seal_in_place_separate_tag(
                        a::Nonce::assume_unique_for_key(nonce),
                        a::Aad::from(aad),
                        in_out,
                    )
                    .map_err(|_| RecordError::Overflow { len: in_out.len() })?;
                tag.copy_from_slice(t.as_ref());
            }
        }
        Ok(tag)
    }

    /// Decrypts and authenticates `in_out` (ciphertext then tag) in place; returns the
    /// plaintext length (at the front of `in_out`).
    fn open(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: [u8; HEADER_LEN],
        in_out: &mut [u8],
    ) -> Result<usize, RecordError> {
        match self {
            Self::Ring(k) => {
                use ring::aead as a;
                k.open_in_place(
                    a::Nonce::assume_unique_for_key(nonce),
                    a::Aad::from(aad),
                    in_out,
                )
                .map(|p| p.len())
                .map_err(|_| RecordError::BadRecordMac)
            }
            Self::AwsLc(k) => {
                use aws_lc_rs::aead as a;
                k.open_in_place(
                    a::Nonce::assume_unique_for_key(nonce),
                    a::Aad::from(aad),
                    in_out,
                )
                .map(|p| p.len())
                .map_err(|_| RecordError::BadRecordMac)
            }
        }
    }
}

/// The keys of one direction: AEAD key, IV and the next sequence number.
struct Direction {
    alg: AeadAlgorithm,
    backend: AeadBackend,
    key: Key,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl Direction {
    fn from_secrets(
        secrets: &ConnectionTrafficSecrets,
        seq: u64,
        backend: Option<AeadBackend>,
    ) -> Result<Self, RecordError> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (AeadAlgorithm::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (AeadAlgorithm::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (AeadAlgorithm::Chacha20Poly1305, key, iv)
            }
            // A TLS 1.2-only AEAD or a future variant: not ours to run.
            _ => return Err(RecordError::BadKey),
        };
        let iv: [u8; NONCE_LEN] = iv.as_ref().try_into().map_err(|_| RecordError::BadKey)?;
        Self::new(alg, key.as_ref(), iv, seq, backend)
    }

    fn new(
        alg: AeadAlgorithm,
        key: &[u8],
        iv: [u8; NONCE_LEN],
        seq: u64,
        backend: Option<AeadBackend>,
    ) -> Result<Self, RecordError> {
        let backend = backend.unwrap_or_else(|| AeadBackend::preferred(alg));
        Ok(Self {
            alg,
            backend,
            key: Key::new(backend, alg, key)?,
            iv,
            seq,
        })
    }

    /// Takes the next sequence number and returns its nonce.
    fn next_nonce(&mut self) -> Result<[u8; NONCE_LEN], RecordError> {
        if self.seq == u64::MAX {
            return Err(RecordError::SequenceExhausted);
        }
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *n ^= s;
        }
        self.seq += 1;
        Ok(nonce)
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.iv.zeroize();
    }
}

impl fmt::Debug for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key or IV.
        f.debug_struct("Direction")
            .field("alg", &self.alg)
            .field("backend", &self.backend)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Seals outgoing records under one traffic key.
#[derive(Debug)]
pub struct RecordSealer {
    dir: Direction,
}

impl RecordSealer {
    /// A sealer for `secrets`, starting at sequence number `seq` (what rustls reports on the
    /// hand-off; 0 after a key update). `backend` overrides [`AeadBackend::preferred`].
    pub fn new(
        secrets: &ConnectionTrafficSecrets,
        seq: u64,
        backend: Option<AeadBackend>,
    ) -> Result<Self, RecordError> {
        Ok(Self {
            dir: Direction::from_secrets(secrets, seq, backend)?,
        })
    }

    /// The same from raw key material (for tests, benches and fuzzing; the shards use
    /// [`new`](Self::new) with what rustls hands over).
    pub fn from_key(
        alg: AeadAlgorithm,
        key: &[u8],
        iv: [u8; 12],
        seq: u64,
        backend: Option<AeadBackend>,
    ) -> Result<Self, RecordError> {
        Ok(Self {
            dir: Direction::new(alg, key, iv, seq, backend)?,
        })
    }

    /// Seals one record in place. `record` starts where the record goes: `HEADER_LEN` bytes of
    /// room, then the `plain_len` bytes of plaintext the caller wrote there, then at least
    /// `1 + TAG_LEN` bytes of room. Returns the record's length
    /// (`plain_len + SEAL_OVERHEAD`). Nothing is written on error.
    pub fn seal_in_place(
        &mut self,
        record: &mut [u8],
        plain_len: usize,
        content_type: ContentType,
    ) -> Result<usize, RecordError> {
        if plain_len > MAX_PLAINTEXT {
            return Err(RecordError::PlaintextTooLong(plain_len));
        }
        let total = plain_len + SEAL_OVERHEAD;
        if record.len() < total {
            return Err(RecordError::InsufficientSize { required: total });
        }
        let nonce = self.dir.next_nonce()?;
        let cipher_len = plain_len + 1 + TAG_LEN;
        let len = cipher_len.to_be_bytes();
        let header = [
            OUTER_CONTENT_TYPE,
            (LEGACY_VERSION >> 8) as u8,
            LEGACY_VERSION as u8,
            len[len.len() - 2],
            len[len.len() - 1],
        ];
        record[..HEADER_LEN].copy_from_slice(&header);
        let body_end = HEADER_LEN + plain_len + 1;
        record[body_end - 1] = content_type.byte();
        let tag = self
            .dir
            .key
            .seal(nonce, header, &mut record[HEADER_LEN..body_end])?;
        record[body_end..total].copy_from_slice(&tag);
        Ok(total)
    }

    /// Sequence number of the next record.
    pub fn seq(&self) -> u64 {
        self.dir.seq
    }

    /// The AEAD in use.
    pub fn algorithm(&self) -> AeadAlgorithm {
        self.dir.alg
    }

    /// The library running it.
    pub fn backend(&self) -> AeadBackend {
        self.dir.backend
    }
}

/// One record opened by [`RecordOpener::open_in_place`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The inner content type.
    pub content_type: ContentType,
    /// The plaintext (padding and content type removed), as a range of the buffer given to
    /// `open_in_place`.
    pub plaintext: Range<usize>,
    /// Bytes the record took at the front of that buffer (header included).
    pub record_len: usize,
}

/// Opens incoming records under one traffic key.
#[derive(Debug)]
pub struct RecordOpener {
    dir: Direction,
}

impl RecordOpener {
    /// An opener for `secrets`, expecting sequence number `seq` next. `backend` overrides
    /// [`AeadBackend::preferred`].
    pub fn new(
        secrets: &ConnectionTrafficSecrets,
        seq: u64,
        backend: Option<AeadBackend>,
    ) -> Result<Self, RecordError> {
        Ok(Self {
            dir: Direction::from_secrets(secrets, seq, backend)?,
        })
    }

    /// The same from raw key material (for tests, benches and fuzzing; the shards use
    /// [`new`](Self::new) with what rustls hands over).
    pub fn from_key(
        alg: AeadAlgorithm,
        key: &[u8],
        iv: [u8; 12],
        seq: u64,
        backend: Option<AeadBackend>,
    ) -> Result<Self, RecordError> {
        Ok(Self {
            dir: Direction::new(alg, key, iv, seq, backend)?,
        })
    }

    /// Bytes still missing for the record `buf` starts with to be complete (0 when it is).
    /// Fails on a header no peer may send, so an oversized length is refused before its
    /// bytes are waited for.
    pub fn need(buf: &[u8]) -> Result<usize, RecordError> {
        if buf.len() < HEADER_LEN {
            return Ok(HEADER_LEN - buf.len());
        }
        let len = check_header(buf)?;
        Ok((HEADER_LEN + len).saturating_sub(buf.len()))
    }

    /// Opens the record at the front of `buf` in place. Returns `Ok(None)` when the record is
    /// not complete yet (nothing changed). On `Err` the buffer's record bytes are garbage and
    /// the connection must fail.
    pub fn open_in_place(&mut self, buf: &mut [u8]) -> Result<Option<Opened>, RecordError> {
        if Self::need(buf)? > 0 {
            return Ok(None);
        }
        let len = check_header(buf)?;
        if len < 1 + TAG_LEN {
            return Err(RecordError::BadRecordMac);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&buf[..HEADER_LEN]);
        let nonce = self.dir.next_nonce()?;
        let body = &mut buf[HEADER_LEN..HEADER_LEN + len];
        let n = self.dir.key.open(nonce, header, body)?;
        // Strip the zero padding; the last non-zero byte is the content type.
        let Some(type_at) = body[..n].iter().rposition(|&b| b != 0) else {
            return Err(RecordError::MissingContentType);
        };
        if type_at > MAX_PLAINTEXT {
            return Err(RecordError::Overflow { len: type_at });
        }
        let content_type = ContentType::from_byte(body[type_at])
            .ok_or(RecordError::UnknownContentType(body[type_at]))?;
        Ok(Some(Opened {
            content_type,
            plaintext: HEADER_LEN..HEADER_LEN + type_at,
            record_len: HEADER_LEN + len,
        }))
    }

    /// Sequence number of the next record expected.
    pub fn seq(&self) -> u64 {
        self.dir.seq
    }
}

/// Validates a protected record's header; returns `TLSCiphertext.length`.
fn check_header(buf: &[u8]) -> Result<usize, RecordError> {
    let version = u16::from_be_bytes([buf[1], buf[2]]);
    if buf[0] != OUTER_CONTENT_TYPE || version != LEGACY_VERSION {
        return Err(RecordError::UnexpectedHeader {
            content_type: buf[0],
            version,
        });
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if len > MAX_CIPHERTEXT {
        return Err(RecordError::Overflow { len });
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test key material: algorithm, key bytes, IV.
    #[derive(Clone, Copy)]
    struct Sec(AeadAlgorithm, [u8; 32], [u8; 12]);

    fn secrets(alg: AeadAlgorithm, fill: u8) -> Sec {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = fill ^ i as u8;
        }
        Sec(alg, k, [fill; 12])
    }

    fn sealer(s: &Sec, seq: u64, b: Option<AeadBackend>) -> RecordSealer {
        RecordSealer::from_key(s.0, &s.1[..s.0.key_len()], s.2, seq, b).unwrap()
    }

    fn opener(s: &Sec, seq: u64, b: Option<AeadBackend>) -> RecordOpener {
        RecordOpener::from_key(s.0, &s.1[..s.0.key_len()], s.2, seq, b).unwrap()
    }

    const ALGS: [AeadAlgorithm; 3] = [
        AeadAlgorithm::Aes128Gcm,
        AeadAlgorithm::Aes256Gcm,
        AeadAlgorithm::Chacha20Poly1305,
    ];
    const BACKENDS: [AeadBackend; 2] = [AeadBackend::Ring, AeadBackend::AwsLc];

    fn seal(s: &mut RecordSealer, plain: &[u8], ct: ContentType) -> Vec<u8> {
        let mut buf = vec![0u8; plain.len() + SEAL_OVERHEAD];
        buf[HEADER_LEN..HEADER_LEN + plain.len()].copy_from_slice(plain);
        let n = s.seal_in_place(&mut buf, plain.len(), ct).unwrap();
        assert_eq!(n, buf.len());
        buf
    }

    #[test]
    fn every_backend_opens_what_every_backend_sealed() {
        for alg in ALGS {
            for sb in BACKENDS {
                for ob in BACKENDS {
                    let sec = secrets(alg, 7);
                    let mut s = sealer(&sec, 5, Some(sb));
                    let mut o = opener(&sec, 5, Some(ob));
                    for len in [0usize, 1, 100, MAX_PLAINTEXT] {
                        let plain: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
                        let mut rec = seal(&mut s, &plain, ContentType::ApplicationData);
                        assert_eq!(&rec[..3], &[23, 3, 3]);
                        let op = o.open_in_place(&mut rec).unwrap().unwrap();
                        assert_eq!(op.content_type, ContentType::ApplicationData);
                        assert_eq!(op.record_len, rec.len());
                        assert_eq!(&rec[op.plaintext], &plain[..], "{alg:?} {sb:?}->{ob:?}");
                    }
                    assert_eq!(s.seq(), 9);
                    assert_eq!(o.seq(), 9);
                }
            }
        }
    }

    #[test]
    fn tampered_replayed_reordered_and_truncated_records_fail() {
        let sec = secrets(AeadAlgorithm::Aes256Gcm, 1);
        let mut s = sealer(&sec, 0, None);
        let a = seal(&mut s, b"first", ContentType::ApplicationData);
        let b = seal(&mut s, b"second", ContentType::ApplicationData);
        // Bit flip anywhere (header = AAD, body, tag).
        for at in 0..a.len() {
            let mut o = opener(&sec, 0, None);
            let mut r = a.clone();
            r[at] ^= 0x10;
            // A flipped length may only make the record look incomplete; it never opens.
            assert!(
                !matches!(o.open_in_place(&mut r), Ok(Some(_))),
                "flip at {at} opened"
            );
        }
        // Reordered: b first.
        let mut o = opener(&sec, 0, None);
        assert_eq!(
            o.open_in_place(&mut b.clone()),
            Err(RecordError::BadRecordMac)
        );
        // Replayed: a twice.
        let mut o = opener(&sec, 0, None);
        assert!(o.open_in_place(&mut a.clone()).unwrap().is_some());
        assert_eq!(
            o.open_in_place(&mut a.clone()),
            Err(RecordError::BadRecordMac)
        );
        // Truncated: a shorter length in the header over the shorter body.
        let mut o = opener(&sec, 0, None);
        let mut t = a[..a.len() - 1].to_vec();
        t[4] -= 1;
        assert_eq!(o.open_in_place(&mut t), Err(RecordError::BadRecordMac));
        // Incomplete is not an error.
        let mut o = opener(&sec, 0, None);
        assert_eq!(o.open_in_place(&mut a[..a.len() - 1].to_vec()), Ok(None));
        assert_eq!(o.seq(), 0);
    }

    #[test]
    fn headers_no_peer_may_send_are_refused_early() {
        assert_eq!(RecordOpener::need(&[23, 3]), Ok(3));
        assert_eq!(RecordOpener::need(&[23, 3, 3, 0, 20, 0]), Ok(19));
        assert_eq!(
            RecordOpener::need(&[23, 3, 3, 0x41, 0x01]),
            Err(RecordError::Overflow { len: 0x4101 })
        );
        assert!(matches!(
            RecordOpener::need(&[22, 3, 3, 0, 1]),
            Err(RecordError::UnexpectedHeader {
                content_type: 22,
                ..
            })
        ));
        assert!(matches!(
            RecordOpener::need(&[23, 3, 1, 0, 1]),
            Err(RecordError::UnexpectedHeader {
                version: 0x0301,
                ..
            })
        ));
    }

    #[test]
    fn padding_is_stripped_and_all_zero_records_refused() {
        // Build a padded record by hand: plaintext "hi", type 23, three zero bytes.
        let sec = secrets(AeadAlgorithm::Chacha20Poly1305, 3);
        let key = Key::new(AeadBackend::AwsLc, AeadAlgorithm::Chacha20Poly1305, &{
            let mut k = [0u8; 32];
            for (i, b) in k.iter_mut().enumerate() {
                *b = 3 ^ i as u8;
            }
            k
        })
        .unwrap();
        let mk = |inner: &[u8]| {
            let len = (inner.len() + TAG_LEN) as u16;
            let header = [23, 3, 3, (len >> 8) as u8, len as u8];
            let mut body = inner.to_vec();
            let tag = key.seal([3u8; 12], header, &mut body).unwrap();
            let mut rec = header.to_vec();
            rec.extend_from_slice(&body);
            rec.extend_from_slice(&tag);
            rec
        };
        let mut o = opener(&sec, 0, None);
        let mut rec = mk(b"hi\x17\0\0\0");
        let op = o.open_in_place(&mut rec).unwrap().unwrap();
        assert_eq!(&rec[op.plaintext], b"hi");
        let mut o = opener(&sec, 0, None);
        assert_eq!(
            o.open_in_place(&mut mk(&[0, 0, 0])),
            Err(RecordError::MissingContentType)
        );
        let mut o = opener(&sec, 0, None);
        assert_eq!(
            o.open_in_place(&mut mk(b"x\x14")),
            Err(RecordError::UnknownContentType(20))
        );
    }

    #[test]
    fn seal_refuses_oversize_and_short_buffers_without_using_a_nonce() {
        let sec = secrets(AeadAlgorithm::Aes128Gcm, 9);
        let mut s = sealer(&sec, 0, None);
        let mut big = vec![0u8; MAX_PLAINTEXT + 1 + SEAL_OVERHEAD];
        assert_eq!(
            s.seal_in_place(&mut big, MAX_PLAINTEXT + 1, ContentType::ApplicationData),
            Err(RecordError::PlaintextTooLong(MAX_PLAINTEXT + 1))
        );
        let mut short = vec![0u8; 10];
        assert_eq!(
            s.seal_in_place(&mut short, 4, ContentType::ApplicationData),
            Err(RecordError::InsufficientSize { required: 26 })
        );
        assert_eq!(s.seq(), 0);
    }

    #[test]
    fn the_last_sequence_number_is_never_used() {
        let sec = secrets(AeadAlgorithm::Chacha20Poly1305, 2);
        let mut s = sealer(&sec, u64::MAX - 1, None);
        let mut buf = vec![0u8; SEAL_OVERHEAD];
        s.seal_in_place(&mut buf, 0, ContentType::ApplicationData)
            .unwrap();
        assert_eq!(
            s.seal_in_place(&mut buf, 0, ContentType::ApplicationData),
            Err(RecordError::SequenceExhausted)
        );
    }
}
