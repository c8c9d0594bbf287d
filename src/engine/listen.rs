//! What every engine's `listen` shares: where the configuration says to listen
//! ([`configured_target`], behind [`Engine::listen_configured`](crate::engine::Engine)), and the
//! two ways a listen fails before it serves — no TLS server config for a TLS backend
//! ([`tls_config_missing`]) and a failed bind ([`bind_failed`]) — each with its readiness
//! transition, so the engines cannot drift apart. It owns no sockets.

use crate::config::{ConfigError, ValidConfig};
use crate::engine::ListenTarget;
use crate::error::TransportError;
use crate::readiness::{reasons, Readiness, ReadyState};

/// The listen target the configuration names: `uds.path` if set, else `bind_addr`; without
/// either, a config error naming `bind_addr`.
pub(crate) fn configured_target(cfg: &ValidConfig) -> Result<ListenTarget, TransportError> {
    if let Some(path) = &cfg.uds_path {
        return Ok(ListenTarget::Unix(path.clone()));
    }
    match cfg.bind_addr {
        Some(addr) => Ok(ListenTarget::Addr(addr)),
        None => Err(TransportError::Config(ConfigError::Invalid {
            key: "bind_addr",
            reason: "no listen address configured: set bind_addr (or uds.path) to listen".into(),
        })),
    }
}

/// A TLS backend without a server config: readiness goes `NotReady{tls_config_missing}` and the
/// listen fails with a config error naming both keys (`backend`, `tls.enabled`).
pub(crate) fn tls_config_missing(readiness: &Readiness) -> TransportError {
    readiness.set(ReadyState::NotReady {
        reason: reasons::TLS_CONFIG_MISSING,
    });
    TransportError::Config(ConfigError::Invalid {
        key: "tls.enabled",
        reason: "backend = \"tls\" needs a TLS server config to listen: set tls.enabled = true \
                 with tls.cert_path and tls.key_path (or inject one with \
                 EngineSetup::with_tls_server)"
            .into(),
    })
}

/// A listener that could not bind: readiness goes `NotReady{bind_failed}`.
pub(crate) fn bind_failed(readiness: &Readiness, e: std::io::Error) -> TransportError {
    readiness.set(ReadyState::NotReady {
        reason: reasons::BIND_FAILED,
    });
    TransportError::Io(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::readiness::TransportHealth;

    #[test]
    fn configured_target_prefers_uds_then_bind_addr() {
        let mut c = Config {
            bind_addr: Some(([127, 0, 0, 1], 7).into()),
            ..Config::default()
        };
        let v = c.clone().validate().unwrap();
        assert_eq!(
            configured_target(&v).unwrap(),
            ListenTarget::Addr(([127, 0, 0, 1], 7).into())
        );
        c.bind_addr = None;
        let v = c.validate().unwrap();
        let e = configured_target(&v).unwrap_err();
        assert_eq!(e.kind(), "config");
        assert!(matches!(e, TransportError::Config(ref c) if c.key() == Some("bind_addr")));
    }

    #[test]
    fn tls_missing_names_both_keys_and_sets_readiness() {
        let r = Readiness::new("t", ReadyState::Ready);
        let e = tls_config_missing(&r);
        assert_eq!(e.kind(), "config");
        let text = e.to_string();
        assert!(
            text.contains("tls.enabled") && text.contains("backend"),
            "{text}"
        );
        assert_eq!(r.readiness().reason(), Some("tls_config_missing"));
    }
}
