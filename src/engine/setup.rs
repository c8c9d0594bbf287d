//! Engine-neutral set-up: turns a validated configuration and a metrics instance into the state
//! every engine shares — the admission/pacing [`Policy`], the [`Readiness`] publisher, the TLS
//! server/client configs the config asks for, the backend label and the process-wide
//! connection-id allocator — bundled as [`EngineShared`].
//!
//! It owns no sockets and no runtime: [`EngineSetup::build_tokio`] hands the shared state to the
//! tokio engine, and the uring engine consumes the same [`EngineShared`]. Tests and the perf rig
//! inject in-memory TLS configs with [`EngineSetup::with_tls_server`] /
//! [`EngineSetup::with_tls_client`] instead of files.

use std::sync::Arc;

use tokio_rustls::rustls::{ClientConfig, ServerConfig};

use crate::config::{Backend, ConfigHandle, ValidConfig};
use crate::engine::shared::ClientTls;
pub use crate::engine::shared::EngineShared;
use crate::engine::tokio::TokioEngine;
use crate::error::TransportError;
use crate::metrics::{PqLabel, TransportMetrics};
use crate::policy::Policy;
use crate::readiness::{Readiness, ReadyState};

/// Builder for the state shared by an engine instance.
#[derive(Debug)]
pub struct EngineSetup {
    config: ConfigHandle,
    metrics: Arc<TransportMetrics>,
    tls_server: Option<Arc<ServerConfig>>,
    tls_client: Option<Arc<ClientConfig>>,
    readiness: Option<Readiness>,
}

impl EngineSetup {
    /// Set-up over a fixed validated config. Fails with `Unsupported` for a backend no engine
    /// here can speak (`arti` needs its own side runtime).
    pub fn new(cfg: ValidConfig, metrics: Arc<TransportMetrics>) -> Result<Self, TransportError> {
        Self::from_handle(ConfigHandle::new(cfg), metrics)
    }

    /// Set-up over a live config handle: timeouts, limits and rates are re-read from its
    /// current snapshot on every operation, so a reload applies to open connections.
    pub fn from_handle(
        config: ConfigHandle,
        metrics: Arc<TransportMetrics>,
    ) -> Result<Self, TransportError> {
        if config.load().backend == Backend::Arti {
            return Err(TransportError::Unsupported {
                what: "backend `arti` is served by the arti side runtime, not a socket engine"
                    .into(),
            });
        }
        Ok(Self {
            config,
            metrics,
            tls_server: None,
            tls_client: None,
            readiness: None,
        })
    }

    /// Uses `cfg` as the TLS server config instead of loading `tls.cert_path`/`tls.key_path`.
    ///
    /// The engine sets `enable_secret_extraction` on (a copy of) it, so that the uring shards
    /// can run their own record layer after the handshake.
    pub fn with_tls_server(mut self, cfg: Arc<ServerConfig>) -> Self {
        self.tls_server = Some(server_with_record_layer(cfg));
        self
    }

    /// Uses `cfg` as the TLS client config instead of building one from `tls_client.*`
    /// (`enable_secret_extraction` is set as for [`with_tls_server`](Self::with_tls_server)).
    pub fn with_tls_client(mut self, cfg: Arc<ClientConfig>) -> Self {
        self.tls_client = Some(client_with_record_layer(cfg));
        self
    }

    /// Publishes readiness through `readiness` (e.g. one shared with a consumer's `/readyz`).
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Builds the shared state. For `backend = "tls"`: the server config comes from the
    /// override or, if `tls.enabled`, from the PEM files (errors are fatal: fail closed); the
    /// client config comes from the override or `tls_client.*` (an error there only disables
    /// dialing, reported by `dial`, so a listener-only node does not need a trust store).
    pub fn build_shared(self) -> Result<Arc<EngineShared>, TransportError> {
        let cfg = self.config.load();
        let backend = cfg.backend;
        let mut tls_server = self.tls_server;
        if backend.is_tls() && tls_server.is_none() && cfg.tls_enabled {
            tls_server = Some(load_server_config(&cfg)?);
        }
        let tls_client = client_slot(self.tls_client);
        let readiness = self
            .readiness
            .unwrap_or_else(|| Readiness::new("ron-transport", ReadyState::Ready));
        readiness.set(ReadyState::Ready);
        let policy = Policy::new(self.config, self.metrics.clone());
        Ok(Arc::new(EngineShared {
            policy,
            metrics: self.metrics,
            readiness,
            backend,
            pq_mode: if cfg.pq_mode == crate::config::PqMode::Hybrid {
                PqLabel::Hybrid
            } else {
                PqLabel::Off
            },
            tls_server,
            tls_client,
        }))
    }

    /// Builds the shared state and the tokio engine over it.
    pub fn build_tokio(self) -> Result<TokioEngine, TransportError> {
        Ok(TokioEngine::new(self.build_shared()?))
    }

    /// The current config snapshot (for engine selection).
    pub fn config_snapshot(&self) -> Arc<ValidConfig> {
        self.config.load()
    }

    /// Builds the uring engine (one shard per core) from the same config, metrics and
    /// readiness. Leaves `self` usable, so a failure can fall back to [`build_tokio`].
    ///
    /// [`build_tokio`]: Self::build_tokio
    pub fn build_uring(&self) -> Result<crate::engine::uring::UringEngine, TransportError> {
        self.build_uring_with(ron_shard::RuntimeConfig::default())
    }

    /// [`build_uring`](Self::build_uring) with explicit runtime knobs (shard count, buffer
    /// pool, ...). For `backend = "tls"` the TLS configs are resolved as in
    /// [`build_shared`](Self::build_shared): overrides first, then `tls.*` / `tls_client.*`.
    pub fn build_uring_with(
        &self,
        runtime: ron_shard::RuntimeConfig,
    ) -> Result<crate::engine::uring::UringEngine, TransportError> {
        let cfg = self.config.load();
        let mut tls = crate::engine::uring::UringTls {
            server: self.tls_server.clone(),
            client: client_slot(self.tls_client.clone()),
        };
        if matches!(cfg.backend, Backend::Tls | Backend::Quic)
            && tls.server.is_none()
            && cfg.tls_enabled
        {
            tls.server = Some(load_server_config(&cfg)?);
        }
        crate::engine::uring::UringEngine::build_with_tls(
            self.config.clone(),
            self.metrics.clone(),
            runtime,
            self.readiness.clone(),
            tls,
        )
    }
}

#[cfg(feature = "tls")]
fn load_server_config(cfg: &ValidConfig) -> Result<Arc<ServerConfig>, TransportError> {
    crate::tls::server_config(cfg)
}

/// `cfg` with `enable_secret_extraction` set: after the handshake rustls hands the traffic
/// secrets to the shard's own TLS record layer (the tokio engine ignores the flag). Copies the
/// config only when the flag is off.
pub(crate) fn server_with_record_layer(cfg: Arc<ServerConfig>) -> Arc<ServerConfig> {
    if cfg.enable_secret_extraction {
        return cfg;
    }
    let mut c = (*cfg).clone();
    c.enable_secret_extraction = true;
    Arc::new(c)
}

/// The client counterpart of [`server_with_record_layer`].
pub(crate) fn client_with_record_layer(cfg: Arc<ClientConfig>) -> Arc<ClientConfig> {
    if cfg.enable_secret_extraction {
        return cfg;
    }
    let mut c = (*cfg).clone();
    c.enable_secret_extraction = true;
    Arc::new(c)
}

/// The caller's client config, else one built from `tls_client.*` at the first TLS dial (on a
/// loader thread) and rebuilt when a reload changes those keys.
fn client_slot(given: Option<Arc<ClientConfig>>) -> ClientTls {
    given.map_or_else(ClientTls::from_config, ClientTls::fixed)
}

#[cfg(not(feature = "tls"))]
fn load_server_config(_cfg: &ValidConfig) -> Result<Arc<ServerConfig>, TransportError> {
    Err(TransportError::Unsupported {
        what: "backend `tls` needs the `tls` feature".into(),
    })
}
