//! Readiness: the tri-state `Ready | Degraded{reason} | NotReady{reason}` that engines publish
//! and consumers map to `/readyz` (spec/IDB I-14, spec/OBSERVABILITY §2).
//!
//! [`Readiness`] is the publisher: it records the current state and emits exactly one event
//! (a `tracing` log line and a watch-channel update) per *transition*; setting the same state
//! again is silent. It does not decide what the state should be: engines do.

use std::sync::Arc;

use tokio::sync::watch;

/// The stable readiness reason strings (part of the observability contract, snapshot-tested:
/// changing a literal fails CI). Engines use these constants, never literals.
pub mod reasons {
    /// `NotReady`: a listener failed to bind its address.
    pub const BIND_FAILED: &str = "bind_failed";
    /// `NotReady`: a TLS listener was asked for but no server config exists (`backend = "tls"`
    /// without `tls.enabled` and its cert/key, nor an injected server config).
    pub const TLS_CONFIG_MISSING: &str = "tls_config_missing";
    /// `NotReady`: the engine was shut down.
    pub const SHUTDOWN: &str = "shutdown";
    /// `Degraded` while Arti bootstraps; `NotReady` once bootstrap failed or timed out.
    pub const ARTI_BOOTSTRAP: &str = "arti_bootstrap";
    /// `Degraded` when a uring shard's thread died (a panic in the runtime itself, not in a
    /// handler: those are contained to their connection) and the others carry on without it;
    /// `NotReady` when every shard died.
    pub const SHARD_DEAD: &str = "shard_dead";
    /// Every reason above, in declaration order.
    pub const ALL: [&str; 5] = [
        BIND_FAILED,
        TLS_CONFIG_MISSING,
        SHUTDOWN,
        ARTI_BOOTSTRAP,
        SHARD_DEAD,
    ];
}

/// The readiness of a transport instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadyState {
    /// Serving normally.
    Ready,
    /// Serving with reduced capability, e.g. `"arti_bootstrap"` or `"uring_unavailable"`.
    Degraded {
        /// Stable snake_case reason.
        reason: &'static str,
    },
    /// Not serving, e.g. `"bind_failed"`, `"tls_config_missing"`, `"shutdown"`.
    NotReady {
        /// Stable snake_case reason.
        reason: &'static str,
    },
}

impl ReadyState {
    /// `"ready"`, `"degraded"` or `"not_ready"`.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Degraded { .. } => "degraded",
            Self::NotReady { .. } => "not_ready",
        }
    }

    /// The reason, when not `Ready`.
    pub const fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Ready => None,
            Self::Degraded { reason } | Self::NotReady { reason } => Some(reason),
        }
    }
}

/// Anything that can report its readiness.
pub trait TransportHealth {
    /// The current state.
    fn readiness(&self) -> ReadyState;
}

/// A cloneable readiness publisher; clones share one state.
#[derive(Clone, Debug)]
pub struct Readiness {
    name: &'static str,
    tx: Arc<watch::Sender<ReadyState>>,
}

impl Readiness {
    /// A publisher for the instance labelled `name`, starting in `initial`.
    pub fn new(name: &'static str, initial: ReadyState) -> Self {
        let (tx, _rx) = watch::channel(initial);
        Self {
            name,
            tx: Arc::new(tx),
        }
    }

    /// Moves to `next`. Returns `true` (and emits one event) only if the state changed.
    pub fn set(&self, next: ReadyState) -> bool {
        let mut previous = None;
        let changed = self.tx.send_if_modified(|current| {
            if *current == next {
                false
            } else {
                previous = Some(std::mem::replace(current, next.clone()));
                true
            }
        });
        if let (true, Some(prev)) = (changed, previous) {
            tracing::info!(
                target: "ron_transport",
                event = "readiness",
                instance = self.name,
                from = prev.label(),
                to = next.label(),
                reason = next.reason().unwrap_or(""),
                "readiness transition"
            );
        }
        changed
    }

    /// A receiver that observes every transition (`changed().await`).
    pub fn subscribe(&self) -> watch::Receiver<ReadyState> {
        self.tx.subscribe()
    }
}

impl TransportHealth for Readiness {
    fn readiness(&self) -> ReadyState {
        self.tx.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_transition() {
        let r = Readiness::new("t", ReadyState::NotReady { reason: "starting" });
        let mut rx = r.subscribe();
        rx.mark_unchanged();
        assert!(r.set(ReadyState::Ready));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert!(!r.set(ReadyState::Ready), "same state is not a transition");
        assert!(!rx.has_changed().unwrap());
        assert!(r.set(ReadyState::Degraded {
            reason: "arti_bootstrap"
        }));
        assert_eq!(r.readiness().reason(), Some("arti_bootstrap"));
        assert_eq!(r.readiness().label(), "degraded");
    }
}
