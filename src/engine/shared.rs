//! [`EngineShared`]: the state one engine instance shares between its listeners, dialers and
//! connections (policy and live config, metrics, readiness, backend label, TLS configs). Built
//! by [`EngineSetup`](crate::engine::setup::EngineSetup); engines depend on this module, never
//! on the set-up that builds them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ServerConfig};

use crate::config::{Backend, PqMode, TrustStore, ValidConfig};
use crate::engine::{DialOptions, DialTarget};
use crate::error::TransportError;
use crate::metrics::{PqLabel, TransportMetrics};
use crate::policy::Policy;
use crate::readiness::Readiness;

/// The state one engine instance shares between its listeners, dialers and connections.
#[derive(Debug)]
pub struct EngineShared {
    /// Admission (caps) and pacing (token buckets); also the live config snapshot.
    pub policy: Arc<Policy>,
    /// The metrics instance every event is counted in.
    pub metrics: Arc<TransportMetrics>,
    /// The readiness publisher.
    pub readiness: Readiness,
    /// The backend label this engine speaks.
    pub backend: Backend,
    /// The configured key-exchange posture (the `mode` of a failed `pq_handshake_total`).
    pub pq_mode: PqLabel,
    /// TLS server config (listeners), when the backend is TLS and one is configured.
    pub tls_server: Option<Arc<ServerConfig>>,
    /// TLS client config (dialers): the caller's, or built from `tls_client.*` and rebuilt
    /// after a reload changes those keys.
    pub tls_client: ClientTls,
}

impl EngineShared {
    /// The current config snapshot.
    pub fn config(&self) -> Arc<ValidConfig> {
        self.policy.config()
    }

    /// The client TLS config for the next dial (see [`ClientTls::current`]).
    pub async fn client_tls(&self) -> Result<Arc<ClientConfig>, TransportError> {
        self.tls_client.current(&self.config()).await
    }

    /// The TLS server name of a dial to `addr` (reached through `target`): the dial's
    /// explicit name, `tls_client.sni_override`, the target's host name, else the IP.
    pub fn server_name(
        &self,
        opts: &DialOptions,
        target: &DialTarget,
        addr: SocketAddr,
    ) -> Result<ServerName<'static>, TransportError> {
        let cfg = self.config();
        crate::engine::target::tls_server_name(opts, cfg.tls_client_sni.as_deref(), target, addr)
    }

    /// A new process-unique connection id (never 0).
    pub fn next_conn_id(&self) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
}

/// The config values a client TLS config is built from: when a reload changes any of them, the
/// next dial gets a config rebuilt from the new values.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ClientKeys {
    trust_store: TrustStore,
    ca_bundle_path: Option<std::path::PathBuf>,
    alpn: Vec<String>,
    pq_mode: PqMode,
}

impl ClientKeys {
    fn of(cfg: &ValidConfig) -> Self {
        Self {
            trust_store: cfg.tls_client_trust_store,
            ca_bundle_path: cfg.tls_client_ca_bundle.clone(),
            alpn: cfg.tls_client_alpn.clone(),
            pq_mode: cfg.pq_mode,
        }
    }
}

/// A built client config and the keys it was built from (or why building failed).
#[derive(Debug)]
struct BuiltClient {
    keys: ClientKeys,
    result: Result<Arc<ClientConfig>, String>,
}

/// An engine's client TLS config: either fixed by the caller
/// ([`EngineSetup::with_tls_client`](crate::engine::setup::EngineSetup::with_tls_client)), or
/// built from `tls_client.*` on a loader thread (trust roots and CA files are read there, never
/// on an async worker or a shard) at the first TLS dial, and rebuilt at the first dial after a
/// reload changed `tls_client.trust_store`, `tls_client.ca_bundle_path`, `tls_client.alpn` or
/// `pq.mode` (spec/CONFIG.md §5: TLS client trust options hot-swap). A failed build is
/// remembered for its keys and reported by every dial until the keys change.
#[derive(Debug, Default)]
pub struct ClientTls {
    fixed: Option<Arc<ClientConfig>>,
    built: ArcSwapOption<BuiltClient>,
}

impl ClientTls {
    /// A slot that always answers `cfg`.
    pub fn fixed(cfg: Arc<ClientConfig>) -> Self {
        Self {
            fixed: Some(cfg),
            built: ArcSwapOption::empty(),
        }
    }

    /// A slot built from `tls_client.*` when first needed.
    pub fn from_config() -> Self {
        Self::default()
    }

    /// The client config for a dial under `cfg` (the live snapshot).
    pub async fn current(&self, cfg: &ValidConfig) -> Result<Arc<ClientConfig>, TransportError> {
        if let Some(c) = &self.fixed {
            return Ok(c.clone());
        }
        let keys = ClientKeys::of(cfg);
        let built = self.built.load_full();
        let built = match built {
            Some(b) if b.keys == keys => b,
            _ => {
                let snapshot = cfg.clone();
                let result = crate::blocking::run("TLS client config", move || {
                    load_client_config(&snapshot).map_err(|e| e.to_string())
                })
                .await?;
                if let Err(e) = &result {
                    tracing::warn!(
                        target: "ron_transport",
                        event = "setup",
                        backend = "tls",
                        error = %e,
                        "TLS client config unavailable; dials fail until tls_client.* changes"
                    );
                }
                let b = Arc::new(BuiltClient { keys, result });
                self.built.store(Some(b.clone()));
                b
            }
        };
        built
            .result
            .clone()
            .map_err(|e| TransportError::Unsupported {
                what: format!("tls dial without a client config: {e}"),
            })
    }
}

#[cfg(feature = "tls")]
fn load_client_config(cfg: &ValidConfig) -> Result<Arc<ClientConfig>, TransportError> {
    crate::tls::client_config(cfg)
}

#[cfg(not(feature = "tls"))]
fn load_client_config(_cfg: &ValidConfig) -> Result<Arc<ClientConfig>, TransportError> {
    Err(TransportError::Unsupported {
        what: "backend `tls` needs the `tls` feature".into(),
    })
}
