//! PEM loading for TLS: reading key and certificate files (with the Unix 0600 permission check
//! for keys), and parsing PEM into DER with every secret-bearing buffer held in
//! [`zeroize::Zeroizing`] and scrubbed on success *and* on error.
//!
//! Errors are [`TransportError::Config`] with [`ConfigError::Invalid`] naming the config key the
//! bytes belong to (`tls.key_path`, `tls.cert_path`, `tls_client.ca_bundle_path`). Messages
//! describe *what* is wrong (missing END marker, bad base64, no key found, bad mode) and never
//! echo file contents: the PEM parser's own error text can quote the offending line, so it is
//! not forwarded.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::{Zeroize, Zeroizing};

use crate::config::ConfigError;
use crate::error::TransportError;

/// Largest PEM file (key, certificate chain or CA bundle) the loaders will read: 4 MiB.
/// Larger files are refused before any allocation of their size.
pub const MAX_PEM_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Config key of the server private key.
pub(crate) const KEY_PATH: &str = "tls.key_path";
/// Config key of the server certificate chain.
pub(crate) const CERT_PATH: &str = "tls.cert_path";
/// Config key of the dialer CA bundle.
pub(crate) const CA_BUNDLE_PATH: &str = "tls_client.ca_bundle_path";

pub(crate) fn invalid(key: &'static str, reason: impl Into<String>) -> TransportError {
    TransportError::Config(ConfigError::Invalid {
        key,
        reason: reason.into(),
    })
}

/// A description of a PEM parse failure that never contains input bytes.
fn describe_pem_error(err: &pem::Error) -> &'static str {
    match err {
        pem::Error::MissingSectionEnd { .. } => "PEM section has no matching END marker",
        pem::Error::IllegalSectionStart { .. } => "malformed PEM BEGIN line",
        pem::Error::Base64Decode(_) => "invalid base64 in PEM body",
        pem::Error::Io(_) => "I/O error while reading PEM",
        pem::Error::NoItemsFound => "no PEM item of the expected type found",
        pem::Error::SectionTooLarge => "PEM section too large",
        _ => "invalid PEM",
    }
}

/// Reads the private key file at `path` for `tls.key_path`.
///
/// On Unix the file must not be accessible by group or others (mode `0600` or stricter);
/// otherwise `Config(Invalid{key: "tls.key_path"})` naming the mode. The mode is checked on
/// the opened file descriptor (no check-then-open race). The contents land in a
/// pre-sized [`Zeroizing`] buffer that never reallocates, so no unscrubbed copy is left
/// behind by growth; on a read error the partial buffer is zeroized before returning.
pub fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, TransportError> {
    read_pem_file(path, KEY_PATH, true)
}

/// Reads a certificate chain (or CA bundle, with `key = "tls_client.ca_bundle_path"`) file.
/// Certificates are public, so no permission check; the same size ceiling applies.
pub(crate) fn read_public_pem_file(
    path: &Path,
    key: &'static str,
) -> Result<Zeroizing<Vec<u8>>, TransportError> {
    read_pem_file(path, key, false)
}

fn read_pem_file(
    path: &Path,
    key: &'static str,
    secret: bool,
) -> Result<Zeroizing<Vec<u8>>, TransportError> {
    let mut file = File::open(path)
        .map_err(|e| invalid(key, format!("cannot open {}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| invalid(key, format!("cannot stat {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(invalid(
            key,
            format!("{} is not a regular file", path.display()),
        ));
    }
    if secret {
        check_key_mode(&meta, path)?;
    }
    let len = meta.len();
    if len > MAX_PEM_FILE_BYTES {
        return Err(invalid(
            key,
            format!(
                "{} is {len} bytes, more than the {MAX_PEM_FILE_BYTES}-byte limit",
                path.display()
            ),
        ));
    }
    // Pre-size (one spare byte detects a file that grew after the stat) and never grow:
    // a growing Vec would leave unscrubbed copies of the key in freed memory.
    let cap = usize::try_from(len).unwrap_or(usize::MAX - 1) + 1;
    let mut buf = Zeroizing::new(vec![0u8; cap]);
    let mut filled = 0usize;
    loop {
        if filled == buf.len() {
            // `buf` is dropped (and zeroized) on this path.
            return Err(invalid(
                key,
                format!("{} changed size while being read", path.display()),
            ));
        }
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(invalid(key, format!("cannot read {}: {e}", path.display()))),
        }
    }
    // Truncating does not reallocate; the bytes past `filled` are zeros already.
    buf.truncate(filled);
    Ok(buf)
}

#[cfg(unix)]
fn check_key_mode(meta: &std::fs::Metadata, path: &Path) -> Result<(), TransportError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(invalid(
            KEY_PATH,
            format!(
                "{} has mode {mode:04o}: private keys must not be accessible by group or \
                 others (use 0600 or stricter)",
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_key_mode(_meta: &std::fs::Metadata, _path: &Path) -> Result<(), TransportError> {
    Ok(())
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) in `key_pem`.
///
/// `key_pem` is zeroized (scrubbed over its whole capacity and emptied) before this returns,
/// whether parsing succeeded or failed; the caller can observe `key_pem.is_empty()`. The
/// returned DER is scrubbed by rustls when it is loaded into a signing key. Errors are
/// `Config(Invalid{key: "tls.key_path"})` and never contain key bytes.
pub fn parse_private_key_pem(
    key_pem: &mut Zeroizing<Vec<u8>>,
) -> Result<PrivateKeyDer<'static>, TransportError> {
    let parsed = if key_pem.iter().all(u8::is_ascii_whitespace) {
        Err(invalid(KEY_PATH, "private key PEM is empty"))
    } else {
        PrivateKeyDer::from_pem_slice(key_pem.as_slice()).map_err(|e| {
            let what = match e {
                pem::Error::NoItemsFound => {
                    "no private key found (expected a PKCS#8, PKCS#1 or SEC1 PEM block)"
                }
                ref other => describe_pem_error(other),
            };
            invalid(KEY_PATH, what)
        })
    };
    key_pem.zeroize();
    parsed
}

/// Parses every `CERTIFICATE` block of `pem_bytes` (other block types are skipped). Empty
/// input, no certificate, or a malformed block is `Config(Invalid{key})`.
pub(crate) fn parse_certs_pem(
    pem_bytes: &[u8],
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    if pem_bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid(key, "certificate PEM is empty"));
    }
    let mut certs = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(pem_bytes).enumerate() {
        match item {
            Ok(cert) => certs.push(cert),
            Err(e) => {
                return Err(invalid(
                    key,
                    format!("PEM item {i}: {}", describe_pem_error(&e)),
                ))
            }
        }
    }
    if certs.is_empty() {
        return Err(invalid(key, "no CERTIFICATE block found in PEM"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GARBAGE_KEY: &[u8] =
        b"-----BEGIN PRIVATE KEY-----\n!!!notbase64!!!\n-----END PRIVATE KEY-----\n";

    fn key_of(err: &TransportError) -> &'static str {
        match err {
            TransportError::Config(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected Config(Invalid), got {other:?}"),
        }
    }

    #[test]
    fn key_buffer_is_scrubbed_on_error() {
        for input in [&b""[..], b"   \n", b"hello", GARBAGE_KEY] {
            let mut buf = Zeroizing::new(input.to_vec());
            let err = parse_private_key_pem(&mut buf).unwrap_err();
            assert_eq!(key_of(&err), KEY_PATH);
            assert!(buf.is_empty(), "buffer emptied after error");
        }
    }

    #[test]
    fn key_buffer_is_scrubbed_on_success() {
        let kp = rcgen::KeyPair::generate().unwrap();
        let pem = kp.serialize_pem();
        let mut buf = Zeroizing::new(pem.into_bytes());
        let der = parse_private_key_pem(&mut buf).unwrap();
        assert!(matches!(der, PrivateKeyDer::Pkcs8(_)));
        assert!(buf.is_empty(), "buffer emptied after success");
    }

    #[test]
    fn errors_never_echo_input() {
        let secret_line = b"-----BEGIN PRIVATE KEY SECRETSECRET\nAAAA\n";
        let mut buf = Zeroizing::new(secret_line.to_vec());
        let err = parse_private_key_pem(&mut buf).unwrap_err();
        assert!(!err.to_string().contains("SECRETSECRET"), "{err}");
        let err =
            parse_certs_pem(b"-----BEGIN CERTIFICATE-----\nSECRETSECRET", CERT_PATH).unwrap_err();
        assert!(!err.to_string().contains("SECRETSECRET"), "{err}");
    }

    #[test]
    fn certs_need_at_least_one_certificate() {
        let kp = rcgen::KeyPair::generate().unwrap();
        let err = parse_certs_pem(kp.serialize_pem().as_bytes(), CERT_PATH).unwrap_err();
        assert_eq!(key_of(&err), CERT_PATH);
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        assert_eq!(
            key_of(&parse_certs_pem(b"", CERT_PATH).unwrap_err()),
            CERT_PATH
        );
    }

    #[cfg(unix)]
    #[test]
    fn key_file_mode_and_size() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, b"data").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o644, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let got = read_key_file(&path);
            assert_eq!(got.is_ok(), ok, "mode {mode:o}");
            if let Ok(buf) = got {
                assert_eq!(buf.as_slice(), b"data");
            } else {
                let err = got.unwrap_err();
                assert_eq!(key_of(&err), KEY_PATH);
                assert!(err.to_string().contains("0600"), "{err}");
            }
        }
        // A directory is not a key file.
        assert_eq!(key_of(&read_key_file(dir.path()).unwrap_err()), KEY_PATH);
        // Missing file.
        assert_eq!(
            key_of(&read_key_file(&dir.path().join("nope")).unwrap_err()),
            KEY_PATH
        );
    }
}
