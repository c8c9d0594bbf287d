//! TLS material for the rig: a self-signed certificate generated on the fly (rcgen) and written
//! as PEM files (key mode 0600, as ron-transport requires), and rustls configs built with an
//! explicit crypto provider (the workspace enables both aws-lc-rs and ring, so there is no
//! process default to fall back on).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A crypto provider the rig can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// aws-lc-rs (rustls' default).
    AwsLcRs,
    /// ring.
    Ring,
}

impl Provider {
    /// Every provider compiled in.
    pub const ALL: [Provider; 2] = [Provider::AwsLcRs, Provider::Ring];

    /// `"aws-lc-rs"` or `"ring"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::AwsLcRs => "aws-lc-rs",
            Self::Ring => "ring",
        }
    }

    /// The provider value.
    pub fn provider(self) -> Arc<CryptoProvider> {
        Arc::new(match self {
            Self::AwsLcRs => rustls::crypto::aws_lc_rs::default_provider(),
            Self::Ring => rustls::crypto::ring::default_provider(),
        })
    }
}

/// A generated self-signed certificate and its key, in PEM and DER.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8).
    pub key_pem: String,
}

impl SelfSigned {
    /// A certificate for `localhost`, `127.0.0.1` and `::1`.
    pub fn generate() -> anyhow::Result<Self> {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .context("rcgen self-signed certificate")?;
        Ok(Self {
            cert_pem: ck.cert.pem(),
            key_pem: ck.key_pair.serialize_pem(),
        })
    }

    /// Writes `cert.pem` and `key.pem` (0600) into `dir`; returns their paths.
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &self.cert_pem)?;
        let _ = std::fs::remove_file(&key);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .with_context(|| format!("create {}", key.display()))?;
        f.write_all(self.key_pem.as_bytes())?;
        Ok((cert, key))
    }
}

/// DER certificates from PEM text.
pub fn certs_from_pem(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("certificate PEM: {e:?}"))?;
    if certs.is_empty() {
        return Err(anyhow!("no certificate in PEM"));
    }
    Ok(certs)
}

/// A private key from PEM text.
pub fn key_from_pem(pem: &[u8]) -> anyhow::Result<PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| anyhow!("key PEM: {e:?}"))
}

/// A TLS 1.3 server config over `provider` (used by the in-memory limit and tests).
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: Provider,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cfg = rustls::ServerConfig::builder_with_provider(provider.provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?)?;
    Ok(Arc::new(cfg))
}

/// A TLS 1.3 client config trusting exactly the certificates in `ca_pem`. With `resumption`
/// false, every handshake is cold.
pub fn client_config(
    ca_pem: &[u8],
    provider: Provider,
    resumption: bool,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem(ca_pem)? {
        roots.add(c)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resumption {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

/// The load client's TLS config: ron-transport's own client policy
/// (`ron_transport::tls::client_config_from_ca_pem`, aws-lc-rs, TLS 1.3 only, `pq.mode = off`),
/// trusting exactly `ca_pem`. With `resumption` false, every handshake is cold.
pub fn library_client_config(
    ca_pem: &[u8],
    resumption: bool,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let cfg = ron_transport::tls::client_config_from_ca_pem(
        ca_pem,
        ron_transport::config::PqMode::Off,
        &[],
    )
    .map_err(|e| anyhow!("client config: {e}"))?;
    if resumption {
        return Ok(cfg);
    }
    let mut cold = (*cfg).clone();
    cold.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cold))
}

/// The server name the rig dials (an IP address SAN of the generated certificate).
pub fn server_name(addr: std::net::SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.ip().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_cert_builds_configs_for_every_provider() {
        let ss = SelfSigned::generate().unwrap();
        for p in Provider::ALL {
            server_config(ss.cert_pem.as_bytes(), ss.key_pem.as_bytes(), p).unwrap();
            client_config(ss.cert_pem.as_bytes(), p, true).unwrap();
        }
        library_client_config(ss.cert_pem.as_bytes(), false).unwrap();
    }

    #[test]
    fn key_file_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (_c, k) = SelfSigned::generate()
            .unwrap()
            .write_to(dir.path())
            .unwrap();
        let mode = std::fs::metadata(k).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
