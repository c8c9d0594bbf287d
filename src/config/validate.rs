//! The fail-closed validation rules of spec/CONFIG.md §4, applied on load and on every reload.
//! Each violation is a [`ConfigError::Invalid`] naming the dotted key. File checks (TLS
//! cert/key, CA bundle, UDS parent directory, macaroon) look at the filesystem; the TLS key is
//! read into a [`Zeroizing`] buffer, parsed once and scrubbed.
//!
//! What was compiled in (features `tls`, `pq`, `arti`) is an argument ([`CompiledFeatures`]) so
//! the feature gates are testable in any build.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::{Backend, Config, ConfigError, PqMode, TrustStore};

/// Lower bound of `limits.max_frame_bytes` (64 KiB).
pub const MIN_FRAME_BYTES: u64 = 64 * 1024;
/// Upper bound of `limits.max_frame_bytes` (1 MiB, the OAP/1 frame cap).
pub const MAX_FRAME_BYTES: u64 = 1024 * 1024;
/// Lower bound of `limits.chunk_bytes` (4 KiB).
pub const MIN_CHUNK_BYTES: u64 = 4 * 1024;
/// Upper bound of `limits.chunk_bytes` (256 KiB).
pub const MAX_CHUNK_BYTES: u64 = 256 * 1024;
/// The fixed decompression guard (not configurable).
pub const DECOMPRESSION_GUARD_RATIO: u64 = 8;
/// `log.format` values.
pub const LOG_FORMATS: [&str; 2] = ["json", "text"];
/// `log.level` values.
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Upper bound of `quic.max_streams` (the spec's Ref-B figure is 1024; 65536 leaves room).
pub const MAX_QUIC_STREAMS: u32 = 65_536;
/// Upper bound of `quic.idle_timeout` (10 minutes).
pub const MAX_QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// PEM files (cert, key, CA bundle) larger than this are rejected without reading further.
const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;
/// Longest UDS path that fits `sockaddr_un.sun_path` with its NUL terminator.
const MAX_UDS_PATH_BYTES: usize = 107;

// The frame ceiling and the decompression guard are fixed by the limits layer; keep them in
// lock-step with the validation bounds.
const _: () = assert!(MAX_FRAME_BYTES == crate::limits::MAX_FRAME_CEILING);
const _: () = assert!(DECOMPRESSION_GUARD_RATIO == crate::limits::INFLATE_RATIO_MAX);

/// Which optional features this build has; validation refuses values needing absent ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompiledFeatures {
    /// Cargo feature `tls` (TLS listeners and dialers).
    pub tls: bool,
    /// Cargo feature `pq` (`pq.mode = "hybrid"`).
    pub pq: bool,
    /// The Arti backend (`backend = "arti"`).
    pub arti: bool,
    /// The QUIC backend (`backend = "quic"`).
    pub quic: bool,
}

impl CompiledFeatures {
    /// The features of this build.
    pub const fn current() -> Self {
        Self {
            tls: cfg!(feature = "tls"),
            pq: cfg!(feature = "pq"),
            arti: cfg!(feature = "arti"),
            quic: cfg!(feature = "quic"),
        }
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Applies every rule of §4 in order; the first violation is returned.
pub(crate) fn check(cfg: &Config, features: &CompiledFeatures) -> Result<(), ConfigError> {
    // backend
    match cfg.backend {
        Backend::Arti if !features.arti => {
            return Err(invalid(
                "backend",
                "`arti` requires the `arti` feature, which this build lacks",
            ))
        }
        Backend::Tls if !features.tls => {
            return Err(invalid(
                "backend",
                "`tls` requires the `tls` feature, which this build lacks",
            ))
        }
        Backend::Quic if !features.quic => {
            return Err(invalid(
                "backend",
                "`quic` requires the `quic` feature, which this build lacks",
            ))
        }
        _ => {}
    }

    // TLS meaning (one meaning, never plaintext when TLS was asked for): `tls.enabled` with
    // `backend = "tcp"` is TLS on the TCP listener (see `normalize`); with `arti` it means
    // nothing and is refused; TLS is not served on a Unix socket.
    if cfg.tls_enabled && cfg.backend == Backend::Arti {
        return Err(invalid(
            "tls.enabled",
            "tls.enabled = true cannot be combined with backend = \"arti\" (Arti streams are \
             not TLS listeners): unset tls.enabled or choose backend \"tcp\"/\"tls\"",
        ));
    }
    if cfg.uds_path.is_some() && cfg.backend == Backend::Quic {
        return Err(invalid(
            "uds.path",
            "uds.path cannot be combined with backend = \"quic\" (QUIC runs over UDP): unset \
             one of them",
        ));
    }
    if cfg.uds_path.is_some() && (cfg.tls_enabled || cfg.backend == Backend::Tls) {
        return Err(invalid(
            "uds.path",
            "uds.path cannot be combined with TLS (tls.enabled = true or backend = \"tls\"): \
             a Unix socket is served in plaintext, so unset one of them",
        ));
    }

    // bind vs UDS
    if cfg.uds_path.is_some() && cfg.bind_addr.is_some() {
        return Err(invalid(
            "uds.path",
            "bind_addr and uds.path are mutually exclusive (unset one of them)",
        ));
    }

    // UDS carries plain frames only: no TLS over a Unix socket.
    if cfg.uds_path.is_some() && (cfg.tls_enabled || cfg.backend == Backend::Tls) {
        return Err(invalid(
            "uds.path",
            "TLS over a Unix socket is not offered: unset tls.enabled and use backend = \"tcp\" \
             with uds.path",
        ));
    }

    if cfg.max_conns == 0 {
        return Err(invalid("max_conns", "must be > 0"));
    }

    // timeouts
    if cfg.read_timeout.is_zero() {
        return Err(invalid("read_timeout", "must be > 0"));
    }
    if cfg.write_timeout.is_zero() {
        return Err(invalid("write_timeout", "must be > 0"));
    }
    if cfg.idle_timeout < Duration::from_secs(1) {
        return Err(invalid("idle_timeout", "must be >= 1s"));
    }

    // sizes
    if !(MIN_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&cfg.max_frame_bytes) {
        return Err(invalid(
            "limits.max_frame_bytes",
            format!(
                "must be within [64KiB, 1MiB], got {}",
                super::format_size(cfg.max_frame_bytes)
            ),
        ));
    }
    if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&cfg.chunk_bytes) {
        return Err(invalid(
            "limits.chunk_bytes",
            format!(
                "must be within [4KiB, 256KiB], got {}",
                super::format_size(cfg.chunk_bytes)
            ),
        ));
    }
    if cfg.chunk_bytes > cfg.max_frame_bytes {
        return Err(invalid(
            "limits.chunk_bytes",
            format!(
                "must be <= limits.max_frame_bytes ({} > {})",
                super::format_size(cfg.chunk_bytes),
                super::format_size(cfg.max_frame_bytes)
            ),
        ));
    }

    // server TLS
    if cfg.tls_enabled {
        if !features.tls {
            return Err(invalid(
                "tls.enabled",
                "requires the `tls` feature, which this build lacks",
            ));
        }
        let cert = cfg
            .tls_cert_path
            .as_deref()
            .ok_or_else(|| invalid("tls.cert_path", "required when tls.enabled = true"))?;
        let key = cfg
            .tls_key_path
            .as_deref()
            .ok_or_else(|| invalid("tls.key_path", "required when tls.enabled = true"))?;
        check_cert(cert)?;
        check_key(key)?;
    }

    // client TLS
    if cfg.tls_client_trust_store == TrustStore::Path {
        let bundle = cfg.tls_client_ca_bundle.as_deref().ok_or_else(|| {
            invalid(
                "tls_client.ca_bundle_path",
                "required when tls_client.trust_store = \"path\"",
            )
        })?;
        let pem = read_capped("tls_client.ca_bundle_path", bundle)?;
        if !CertificateDer::pem_slice_iter(&pem).any(|c| c.is_ok()) {
            return Err(invalid(
                "tls_client.ca_bundle_path",
                "contains no PEM certificate",
            ));
        }
    }

    // UDS
    if let Some(path) = cfg.uds_path.as_deref() {
        check_uds(path)?;
    }

    // macaroon
    if let Some(path) = cfg.macaroon_path.as_deref() {
        check_secret_perms("auth.macaroon_path", path)?;
        let meta = regular_file("auth.macaroon_path", path)?;
        if meta.len() == 0 {
            return Err(invalid("auth.macaroon_path", "file is empty"));
        }
        // Readable? Open it; the contents are never read here (and never logged).
        std::fs::File::open(path)
            .map_err(|e| invalid("auth.macaroon_path", format!("cannot open: {e}")))?;
    }

    // PQ
    if cfg.pq_mode == PqMode::Hybrid && !features.pq {
        return Err(invalid(
            "pq.mode",
            "`hybrid` requires the `pq` feature, which this build lacks",
        ));
    }

    // Arti knobs: only meaningful (and only checked) with the Arti backend.
    if cfg.backend == Backend::Arti && cfg.arti_bootstrap_timeout.is_zero() {
        return Err(invalid("arti.bootstrap_timeout", "must be > 0"));
    }

    // QUIC knobs: only meaningful (and only checked) with the QUIC backend.
    if cfg.backend == Backend::Quic {
        check_quic(cfg)?;
    }

    // log
    if !LOG_FORMATS.contains(&cfg.log_format.as_str()) {
        return Err(invalid("log.format", "must be one of json, text"));
    }
    if !LOG_LEVELS.contains(&cfg.log_level.as_str()) {
        return Err(invalid(
            "log.level",
            "must be one of trace, debug, info, warn, error",
        ));
    }
    Ok(())
}

/// The `quic.*` rules (backend = "quic").
fn check_quic(cfg: &Config) -> Result<(), ConfigError> {
    if !(1..=MAX_QUIC_STREAMS).contains(&cfg.quic_max_streams) {
        return Err(invalid(
            "quic.max_streams",
            format!(
                "must be within [1, {MAX_QUIC_STREAMS}], got {}",
                cfg.quic_max_streams
            ),
        ));
    }
    if cfg.quic_idle_timeout < Duration::from_secs(1)
        || cfg.quic_idle_timeout > MAX_QUIC_IDLE_TIMEOUT
    {
        return Err(invalid(
            "quic.idle_timeout",
            format!(
                "must be within [1s, 10m], got {}",
                super::format_duration(cfg.quic_idle_timeout)
            ),
        ));
    }
    if !cfg.quic_keep_alive.is_zero() && cfg.quic_keep_alive >= cfg.quic_idle_timeout {
        return Err(invalid(
            "quic.keep_alive",
            format!(
                "must be 0s (off) or shorter than quic.idle_timeout ({} >= {})",
                super::format_duration(cfg.quic_keep_alive),
                super::format_duration(cfg.quic_idle_timeout)
            ),
        ));
    }
    Ok(())
}

/// The one meaning of the TLS keys, applied to a config that passed [`check`]:
/// `tls.enabled = true` with `backend = "tcp"` is TLS on the TCP listener, so the validated
/// config's backend becomes `tls` (the listener never serves plaintext when TLS was asked for).
pub(crate) fn normalize(cfg: &mut Config) {
    if cfg.tls_enabled && cfg.backend == Backend::Tcp {
        cfg.backend = Backend::Tls;
    }
}

fn check_cert(path: &Path) -> Result<(), ConfigError> {
    let pem = read_capped("tls.cert_path", path)?;
    let mut certs = 0usize;
    for item in CertificateDer::pem_slice_iter(&pem) {
        item.map_err(|e| invalid("tls.cert_path", format!("invalid PEM: {e}")))?;
        certs += 1;
    }
    if certs == 0 {
        return Err(invalid("tls.cert_path", "contains no PEM certificate"));
    }
    Ok(())
}

/// Permission check first (a readable-by-others key is refused without being read), then one
/// parse from a zeroized buffer.
fn check_key(path: &Path) -> Result<(), ConfigError> {
    check_secret_perms("tls.key_path", path)?;
    let pem = read_capped("tls.key_path", path)?;
    if pem.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("tls.key_path", "file is empty"));
    }
    // The parsed DER is dropped at the end of this statement; the PEM buffer is scrubbed when
    // `pem` drops.
    PrivateKeyDer::from_pem_slice(&pem)
        .map(drop)
        // The parser's message can quote the offending input line (key material): never
        // forward it.
        .map_err(|_| invalid("tls.key_path", "no usable PEM private key in file"))
}

/// Reads a regular file of at most [`MAX_PEM_FILE_BYTES`] into a zeroizing buffer.
fn read_capped(key: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    let meta = regular_file(key, path)?;
    if meta.len() > MAX_PEM_FILE_BYTES {
        return Err(invalid(key, "file is larger than 1 MiB"));
    }
    let file = std::fs::File::open(path).map_err(|e| invalid(key, format!("cannot open: {e}")))?;
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| invalid(key, format!("cannot read: {e}")))?;
    if buf.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(invalid(key, "file is larger than 1 MiB"));
    }
    Ok(buf)
}

fn regular_file(key: &'static str, path: &Path) -> Result<std::fs::Metadata, ConfigError> {
    let meta =
        std::fs::metadata(path).map_err(|e| invalid(key, format!("cannot access file: {e}")))?;
    if !meta.is_file() {
        return Err(invalid(key, "not a regular file"));
    }
    Ok(meta)
}

/// On Unix, refuses group/world permission bits (require 0600 or stricter).
fn check_secret_perms(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    let meta = regular_file(key, path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(invalid(
                key,
                format!("insecure permissions {mode:04o}: must not be group/world accessible (require 0600)"),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

fn check_uds(path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().len() > MAX_UDS_PATH_BYTES {
        return Err(invalid(
            "uds.path",
            "longer than 107 bytes (sockaddr_un limit)",
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let meta = std::fs::metadata(&parent).map_err(|e| {
            invalid(
                "uds.path",
                format!("parent directory {}: {e}", parent.display()),
            )
        })?;
        if !meta.is_dir() {
            return Err(invalid("uds.path", "parent is not a directory"));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode != 0o700 {
            return Err(invalid(
                "uds.path",
                format!("parent directory mode is {mode:04o}, must be 0700"),
            ));
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = PathBuf::new();
        Err(invalid(
            "uds.path",
            "Unix domain sockets need a Unix platform",
        ))
    }
}
