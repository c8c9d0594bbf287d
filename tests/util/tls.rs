//! In-memory TLS fixtures: rcgen self-signed certificates for `localhost` and `127.0.0.1`, and
//! the rustls configs built from them through `ron_transport::tls`.

use std::sync::Arc;

use ron_transport::rustls::{ClientConfig, ServerConfig};
use ron_transport::PqMode;

/// A server config and a client config for one test.
#[derive(Clone, Debug)]
pub struct TlsFixture {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

struct Cert {
    cert_pem: String,
    key_pem: String,
}

fn self_signed() -> Cert {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("rcgen self-signed certificate");
    Cert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
    }
}

fn server_config(c: &Cert, pq: PqMode) -> Arc<ServerConfig> {
    ron_transport::tls::server_config_from_pem(
        c.cert_pem.as_bytes(),
        zeroize::Zeroizing::new(c.key_pem.as_bytes().to_vec()),
        pq,
        &[],
    )
    .expect("server config from rcgen PEM")
}

fn client_config(trusted: &Cert, pq: PqMode) -> Arc<ClientConfig> {
    ron_transport::tls::client_config_from_ca_pem(trusted.cert_pem.as_bytes(), pq, &[])
        .expect("client config from rcgen PEM")
}

impl TlsFixture {
    /// The process-wide pair of QUIC conformance cases that bring none (their `tcp` is QUIC,
    /// which needs one), valid for every loopback address the cases listen on.
    #[allow(dead_code)]
    pub fn quic_default() -> Self {
        static FX: std::sync::OnceLock<TlsFixture> = std::sync::OnceLock::new();
        FX.get_or_init(|| {
            let names = ["localhost", "127.0.0.1", "127.0.0.2"].map(String::from);
            let ck = rcgen::generate_simple_self_signed(names.to_vec()).expect("rcgen");
            let c = Cert {
                cert_pem: ck.cert.pem(),
                key_pem: ck.key_pair.serialize_pem(),
            };
            Self {
                server: server_config(&c, PqMode::Off),
                client: client_config(&c, PqMode::Off),
            }
        })
        .clone()
    }

    /// Server and client that trust each other, both with `pq`.
    pub fn new(pq: PqMode) -> Self {
        let c = self_signed();
        Self {
            server: server_config(&c, pq),
            client: client_config(&c, pq),
        }
    }

    /// Like [`TlsFixture::new`], and the certificate's PEM (what a client trusts from a file:
    /// `tls_client.trust_store = "path"` with `tls_client.ca_bundle_path`).
    pub fn new_with_ca_pem(pq: PqMode) -> (Self, String) {
        let c = self_signed();
        let fx = Self {
            server: server_config(&c, pq),
            client: client_config(&c, pq),
        };
        (fx, c.cert_pem)
    }

    /// A trusting pair whose server offers `alpn`, and the certificate's PEM.
    pub fn with_server_alpn(alpn: &[&str]) -> (Self, String) {
        let c = self_signed();
        let alpn: Vec<String> = alpn.iter().map(|s| s.to_string()).collect();
        let server = ron_transport::tls::server_config_from_pem(
            c.cert_pem.as_bytes(),
            zeroize::Zeroizing::new(c.key_pem.as_bytes().to_vec()),
            PqMode::Off,
            &alpn,
        )
        .expect("server config with ALPN");
        let fx = Self {
            server,
            client: client_config(&c, PqMode::Off),
        };
        (fx, c.cert_pem)
    }

    /// Server and client with the given modes each.
    pub fn with_modes(server_pq: PqMode, client_pq: PqMode) -> Self {
        let c = self_signed();
        Self {
            server: server_config(&c, server_pq),
            client: client_config(&c, client_pq),
        }
    }

    /// A client that trusts a *different* self-signed CA than the server's certificate.
    pub fn wrong_ca() -> Self {
        let server_cert = self_signed();
        let other = self_signed();
        Self {
            server: server_config(&server_cert, PqMode::Off),
            client: client_config(&other, PqMode::Off),
        }
    }
}

/// A self-signed certificate for `localhost` / `127.0.0.1` in PEM (for external peers such as
/// `openssl s_server`, which read files), and the transport's own configs built from it
/// (`pq.mode = off`).
pub struct PemMaterial {
    pub cert_pem: String,
    pub key_pem: String,
    pub fixture: TlsFixture,
}

impl PemMaterial {
    pub fn new() -> Self {
        let c = self_signed();
        Self {
            fixture: TlsFixture {
                server: server_config(&c, PqMode::Off),
                client: client_config(&c, PqMode::Off),
            },
            cert_pem: c.cert_pem,
            key_pem: c.key_pem,
        }
    }
}

impl PemMaterial {
    /// `openssl s_server -accept <free loopback port> -tls1_3 -naccept 1` with this certificate
    /// and `extra` arguments, its stdio piped (s_server quits on EOF from stdin, so keep the
    /// pipe). Returns the child, its address, and the directory holding the PEM files (keep it
    /// while the child runs).
    pub fn s_server(
        &self,
        extra: &[&str],
    ) -> (
        tokio::process::Child,
        std::net::SocketAddr,
        tempfile::TempDir,
    ) {
        use std::process::Stdio;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        let addr = std::net::TcpListener::bind(super::loopback())
            .unwrap()
            .local_addr()
            .unwrap();
        let child = openssl()
            .args([
                "s_server",
                "-accept",
                &addr.to_string(),
                "-tls1_3",
                "-naccept",
                "1",
            ])
            .args(extra)
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openssl s_server");
        (child, addr, dir)
    }
}

/// An `openssl` command (the binary must be installed; .ci/run installs it), killed on drop.
pub fn openssl() -> tokio::process::Command {
    assert!(
        std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the openssl binary is required (apt-get install openssl; .ci/run installs it)"
    );
    let mut c = tokio::process::Command::new("openssl");
    c.kill_on_drop(true);
    c
}
