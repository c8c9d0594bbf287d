//! One-pass sealing of a record from plaintext scattered over several slices: AWS-LC's
//! incremental AES-GCM (`EVP_CIPHER_CTX`, `EVP_EncryptUpdate`) encrypts each piece straight from
//! where it lies (a frame's header, its body in the caller's `Bytes`) into the record's slot in
//! the send buffer, so the copy into the send buffer and the cipher's pass are one pass.
//!
//! Owns only that FFI: one cipher context per sending key, created with the key, given a fresh
//! nonce and the record header (AAD) per record, freed (and its key schedule cleansed by
//! AWS-LC) on drop. [`crate::tls_record`] decides when to use it; the one-shot AEAD of
//! aws-lc-rs/ring remains the reference (the unit tests check both give the same bytes).
//!
//! Why not the one-shot APIs: TLS 1.3 puts the content type byte after the data, and the only
//! one-shot API that reads plaintext from elsewhere (`seal_in_place_scatter`) encrypts the
//! in-place part first; so sealing from a frame's own bytes needs a cipher that can be fed in
//! pieces. ChaCha20-Poly1305 keeps the copy-then-seal path.

use std::os::raw::c_int;
use std::ptr::NonNull;

use aws_lc_sys as ffi;

use crate::tls_record::{AeadAlgorithm, RecordError, TAG_LEN};

/// AES-GCM fed in pieces, for one key.
pub(crate) struct GcmStream {
    /// Owned context (from `EVP_CIPHER_CTX_new`, freed in `drop`), initialized with the key.
    ctx: NonNull<ffi::EVP_CIPHER_CTX>,
}

// SAFETY: an EVP_CIPHER_CTX is plain memory owned by this value (no thread-local state, no
// reference to the creating thread); AWS-LC allows using a context from any thread as long as
// it is not used concurrently, which `&mut self` on every use guarantees.
unsafe impl Send for GcmStream {}
// SAFETY: no method takes `&self` and touches the context, so shared references cannot race.
unsafe impl Sync for GcmStream {}

impl GcmStream {
    /// A context for `alg` (AES-128/256-GCM only) with `key`; `None` for other algorithms or if
    /// AWS-LC refuses (then the caller keeps the one-shot path).
    pub(crate) fn new(alg: AeadAlgorithm, key: &[u8]) -> Option<Self> {
        // SAFETY: these return pointers to static cipher tables; no arguments.
        let cipher = unsafe {
            match alg {
                AeadAlgorithm::Aes128Gcm if key.len() == 16 => ffi::EVP_aes_128_gcm(),
                AeadAlgorithm::Aes256Gcm if key.len() == 32 => ffi::EVP_aes_256_gcm(),
                _ => return None,
            }
        };
        // SAFETY: allocates a fresh context; null on allocation failure (checked).
        let ctx = NonNull::new(unsafe { ffi::EVP_CIPHER_CTX_new() })?;
        let this = Self { ctx };
        // SAFETY: `ctx` is a live context; `cipher` is a static AES-GCM table; `key` is valid
        // for the cipher's key length (checked above); a null IV defers the IV to `seal`.
        let ok = unsafe {
            ffi::EVP_EncryptInit_ex(
                this.ctx.as_ptr(),
                cipher,
                std::ptr::null_mut(),
                key.as_ptr(),
                std::ptr::null(),
            )
        };
        (ok == 1).then_some(this)
    }

    /// Encrypts the concatenation of `pieces` into `out` (exactly as long as the pieces
    /// together) under `nonce` with `aad`, and returns the tag.
    pub(crate) fn seal(
        &mut self,
        nonce: &[u8; 12],
        aad: &[u8],
        pieces: &[&[u8]],
        out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], RecordError> {
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        if total != out.len() || total > c_int::MAX as usize || aad.len() > c_int::MAX as usize {
            return Err(RecordError::InsufficientSize { required: total });
        }
        let ctx = self.ctx.as_ptr();
        let mut n: c_int = 0;
        // SAFETY: `ctx` is live and initialized with a key; a null cipher and key keep them;
        // `nonce` is 12 bytes, the GCM default IV length the context was created with.
        if unsafe {
            ffi::EVP_EncryptInit_ex(
                ctx,
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null(),
                nonce.as_ptr(),
            )
        } != 1
        {
            return Err(RecordError::BadKey);
        }
        // SAFETY: a null output with GCM means "this is AAD"; `aad` is valid for its length
        // (checked to fit a c_int above); `n` is a valid out-pointer.
        if unsafe {
            ffi::EVP_EncryptUpdate(
                ctx,
                std::ptr::null_mut(),
                &mut n,
                aad.as_ptr(),
                aad.len() as c_int,
            )
        } != 1
        {
            return Err(RecordError::BadKey);
        }
        let mut at = 0;
        for p in pieces.iter().filter(|p| !p.is_empty()) {
            let dst = &mut out[at..at + p.len()];
            // SAFETY: GCM is a stream mode: EncryptUpdate writes exactly `p.len()` bytes (it
            // buffers nothing), and `dst` is exactly that long and does not overlap `p` (a
            // `&mut` and a `&` cannot alias); the length fits a c_int (the total was checked).
            let ok = unsafe {
                ffi::EVP_EncryptUpdate(ctx, dst.as_mut_ptr(), &mut n, p.as_ptr(), p.len() as c_int)
            };
            if ok != 1 || n as usize != p.len() {
                return Err(RecordError::BadKey);
            }
            at += p.len();
        }
        let mut fin = [0u8; 16];
        // SAFETY: GCM's final step writes no bytes (`fin` has room for a block anyway); `n` is
        // a valid out-pointer.
        if unsafe { ffi::EVP_EncryptFinal_ex(ctx, fin.as_mut_ptr(), &mut n) } != 1 || n != 0 {
            return Err(RecordError::BadKey);
        }
        let mut tag = [0u8; TAG_LEN];
        // SAFETY: GET_TAG copies `TAG_LEN` (16, GCM's tag length) bytes into `tag`, which is
        // that long, after the final step.
        let ok = unsafe {
            ffi::EVP_CIPHER_CTX_ctrl(
                ctx,
                ffi::EVP_CTRL_GCM_GET_TAG,
                TAG_LEN as c_int,
                tag.as_mut_ptr().cast(),
            )
        };
        if ok != 1 {
            return Err(RecordError::BadKey);
        }
        Ok(tag)
    }
}

impl Drop for GcmStream {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from EVP_CIPHER_CTX_new and is freed exactly once, here; AWS-LC
        // cleanses the key schedule before freeing it.
        unsafe { ffi::EVP_CIPHER_CTX_free(self.ctx.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed seal equals aws-lc-rs's one-shot seal, for any split of the plaintext, and
    /// repeated use with new nonces (the context is re-initialized per record).
    #[test]
    fn pieces_seal_exactly_like_the_one_shot_aead() {
        use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
        for (alg, a, klen) in [
            (AeadAlgorithm::Aes128Gcm, &AES_128_GCM, 16),
            (AeadAlgorithm::Aes256Gcm, &AES_256_GCM, 32),
        ] {
            let key: Vec<u8> = (0..klen as u8).collect();
            let mut s = GcmStream::new(alg, &key).expect("context");
            let one = LessSafeKey::new(UnboundKey::new(a, &key).unwrap());
            let plain: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
            for (round, cuts) in [
                vec![],
                vec![4],
                vec![1, 2, 3],
                vec![15, 16, 17, 4096],
                vec![5, 16_384],
                vec![19_999],
            ]
            .into_iter()
            .enumerate()
            {
                let mut nonce = [9u8; 12];
                nonce[11] = round as u8;
                let aad = [23, 3, 3, 0, 42];
                let mut pieces = Vec::new();
                let mut prev = 0;
                for c in cuts.iter().copied().chain([plain.len()]) {
                    pieces.push(&plain[prev..c]);
                    prev = c;
                }
                let mut out = vec![0u8; plain.len()];
                let tag = s.seal(&nonce, &aad, &pieces, &mut out).unwrap();
                let mut want = plain.clone();
                let wtag = one
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut want,
                    )
                    .unwrap();
                assert_eq!(out, want, "{alg:?} cuts {cuts:?}");
                assert_eq!(&tag[..], wtag.as_ref(), "{alg:?} cuts {cuts:?}");
            }
        }
    }

    #[test]
    fn only_aes_gcm_streams_and_lengths_are_checked() {
        assert!(GcmStream::new(AeadAlgorithm::Chacha20Poly1305, &[0; 32]).is_none());
        assert!(GcmStream::new(AeadAlgorithm::Aes256Gcm, &[0; 16]).is_none());
        let mut s = GcmStream::new(AeadAlgorithm::Aes128Gcm, &[0; 16]).unwrap();
        let mut out = [0u8; 3];
        assert!(s.seal(&[0; 12], &[], &[b"four"], &mut out).is_err());
    }
}
