//! [`EngineShared`]: the state one engine instance shares between its listeners, dialers and
//! connections (policy and live config, metrics, readiness, backend label, TLS configs). Built
//! by [`EngineSetup`](crate::engine::setup::EngineSetup); engines depend on this module, never
//! on the set-up that builds them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_rustls::rustls::{ClientConfig, ServerConfig};

use crate::config::{Backend, ValidConfig};
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
    /// TLS client config (dialers), when the backend is TLS and one could be built.
    pub tls_client: Option<Arc<ClientConfig>>,
    /// Why `tls_client` is missing, if building it failed.
    pub tls_client_error: Option<String>,
}

impl EngineShared {
    /// The current config snapshot.
    pub fn config(&self) -> Arc<ValidConfig> {
        self.policy.config()
    }

    /// A new process-unique connection id (never 0).
    pub fn next_conn_id(&self) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
}
