//! Engine auto-selection: probe io_uring and pick the uring engine where it works, the tokio
//! engine otherwise — and say which and why ([`EngineChoice`], one `event="engine_select"` log
//! line). A working tokio fallback is a healthy engine: readiness stays `Ready`; the choice and
//! its reason are reported separately, not as `Degraded`.
//!
//! [`AutoEngine`] is an enum over concrete engines and itself an [`Engine`]: consumers write
//! their code once against the traits and serve through [`Engine::serve`], which reaches the
//! picked engine's own (on uring: consumers on their connection's shard); each call costs one
//! `match`, no boxing on the frame path. io_uring usable (this probe, then the shard runtime's full probe: opcodes,
//! DEFER_TASKRUN, provided-buffer ring registration) ⇒ uring, for TCP and TLS alike (the shards
//! run the TLS pump); the uring runtime failing to start (or its TLS configs failing to load)
//! ⇒ tokio with reason `uring_start_failed`. `backend = "quic"` follows the same rule (the
//! shards drive quinn-proto themselves).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use crate::config::Backend;
use crate::engine::setup::EngineSetup;
use crate::engine::tokio::{TokioConn, TokioEngine, TokioListener, TokioSender};
use crate::engine::uring::{UringConn, UringEngine, UringListener, UringSender};
use crate::engine::{
    Conn, ConnInfo, DialOptions, DialTarget, Engine, EngineKind, FrameSender, ListenTarget,
    Listener, ShutdownReport,
};
use crate::error::TransportError;
use crate::readiness::{ReadyState, TransportHealth};

/// Reason given when io_uring works but no uring engine is compiled in yet.
pub const REASON_URING_NOT_BUILT: &str = "uring engine not built yet";

/// Why io_uring cannot be used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UringUnavailable {
    /// `kernel.io_uring_disabled` is 1 or 2 and `io_uring_setup` was refused.
    SysctlDisabled {
        /// The sysctl value read from `/proc/sys/kernel/io_uring_disabled`.
        value: u8,
    },
    /// `EPERM` with the sysctl allowing it: a seccomp profile (container runtime) blocks it.
    Seccomp,
    /// `ENOSYS`: the kernel has no io_uring (too old, or built without `CONFIG_IO_URING`), or
    /// a seccomp filter answers `ENOSYS`.
    NoSys,
    /// `ENOMEM`: locked-memory limit (`RLIMIT_MEMLOCK`) too low for the rings on older kernels.
    NoMem,
    /// Any other errno.
    Other {
        /// The raw errno (0 if none was given).
        errno: i32,
    },
}

impl UringUnavailable {
    /// Stable snake_case reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SysctlDisabled { .. } => "io_uring_disabled_sysctl",
            Self::Seccomp => "io_uring_blocked_seccomp",
            Self::NoSys => "io_uring_enosys",
            Self::NoMem => "io_uring_enomem",
            Self::Other { .. } => "io_uring_setup_failed",
        }
    }
}

/// Result of probing io_uring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UringProbe {
    /// `io_uring_setup` succeeded.
    Available,
    /// It failed, classified.
    Unavailable(UringUnavailable),
}

/// Classifies an `io_uring_setup` failure from its errno and the
/// `kernel.io_uring_disabled` sysctl (if readable). Pure: unit-tested without a kernel.
pub fn classify(errno: Option<i32>, io_uring_disabled: Option<u8>) -> UringUnavailable {
    match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => match io_uring_disabled {
            Some(v) if v > 0 => UringUnavailable::SysctlDisabled { value: v },
            _ => UringUnavailable::Seccomp,
        },
        Some(libc::ENOSYS) => UringUnavailable::NoSys,
        Some(libc::ENOMEM) => UringUnavailable::NoMem,
        Some(e) => UringUnavailable::Other { errno: e },
        None => UringUnavailable::Other { errno: 0 },
    }
}

/// Reads `/proc/sys/kernel/io_uring_disabled` (absent on kernels before 6.6).
pub fn io_uring_disabled_sysctl() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Probes io_uring by creating (and dropping) a two-entry ring.
pub fn probe_uring() -> UringProbe {
    match io_uring::IoUring::new(2) {
        Ok(ring) => {
            drop(ring);
            UringProbe::Available
        }
        Err(e) => UringProbe::Unavailable(classify_io_error(&e)),
    }
}

fn classify_io_error(e: &io::Error) -> UringUnavailable {
    classify(e.raw_os_error(), io_uring_disabled_sysctl())
}

/// Which engine auto-selection picked, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineChoice {
    /// The engine picked.
    pub kind: EngineKind,
    /// Stable snake_case reason (`uring_available`, an [`UringUnavailable::as_str`] value, or
    /// [`REASON_URING_NOT_BUILT`]).
    pub reason: &'static str,
    /// The probe outcome behind the choice.
    pub probe: UringProbe,
}

impl EngineChoice {
    /// The choice for a probe outcome, given which engines are compiled in.
    pub fn decide(probe: UringProbe, uring_built: bool) -> Self {
        match probe {
            UringProbe::Available if uring_built => Self {
                kind: EngineKind::Uring,
                reason: "uring_available",
                probe,
            },
            UringProbe::Available => Self {
                kind: EngineKind::Tokio,
                reason: REASON_URING_NOT_BUILT,
                probe,
            },
            UringProbe::Unavailable(why) => Self {
                kind: EngineKind::Tokio,
                reason: why.as_str(),
                probe,
            },
        }
    }
}

/// The engine auto-selection built. Match once and run generic code over the concrete engine.
#[derive(Debug)]
#[non_exhaustive]
pub enum AutoEngine {
    /// The tokio engine.
    Tokio(TokioEngine),
    /// The io_uring thread-per-core engine.
    Uring(UringEngine),
}

impl AutoEngine {
    /// Probes io_uring, builds the engine it allows, logs the choice and returns both.
    pub fn build(setup: EngineSetup) -> Result<(Self, EngineChoice), TransportError> {
        let mut choice = EngineChoice::decide(probe_uring(), true);
        if choice.kind == EngineKind::Uring {
            if let Err(reason) = crate::engine::uring::availability(&setup.config_snapshot()) {
                choice = EngineChoice {
                    kind: EngineKind::Tokio,
                    reason,
                    probe: choice.probe,
                };
            }
        }
        let mut uring = None;
        if choice.kind == EngineKind::Uring {
            match setup.build_uring() {
                Ok(e) => uring = Some(e),
                Err(e) => {
                    tracing::warn!(
                        target: "ron_transport",
                        event = "engine_select",
                        error = %e,
                        "uring engine failed to start; falling back to tokio"
                    );
                    choice.kind = EngineKind::Tokio;
                    choice.reason = "uring_start_failed";
                }
            }
        }
        tracing::info!(
            target: "ron_transport",
            event = "engine_select",
            engine = choice.kind.as_str(),
            reason = choice.reason,
            "engine selected"
        );
        let engine = match uring {
            Some(e) => Self::Uring(e),
            None => Self::Tokio(setup.build_tokio()?),
        };
        Ok((engine, choice))
    }

    /// Which engine this is.
    pub fn kind(&self) -> EngineKind {
        match self {
            Self::Tokio(_) => EngineKind::Tokio,
            Self::Uring(_) => EngineKind::Uring,
        }
    }
}

/// `AutoEngine` is itself an [`Engine`]: code written once against the traits runs on
/// whichever engine was picked (one `match` per call, no boxing). [`Engine::serve`] reaches the
/// picked engine's own `serve`, so on uring each connection's consumer runs on its shard.
impl TransportHealth for AutoEngine {
    fn readiness(&self) -> ReadyState {
        match self {
            Self::Tokio(e) => e.readiness(),
            Self::Uring(e) => e.readiness(),
        }
    }
}

impl Engine for AutoEngine {
    type Listener = AutoListener;
    type Conn = AutoConn;

    fn kind(&self) -> EngineKind {
        AutoEngine::kind(self)
    }

    fn backend(&self) -> Backend {
        match self {
            Self::Tokio(e) => e.backend(),
            Self::Uring(e) => e.backend(),
        }
    }

    fn config(&self) -> std::sync::Arc<crate::config::ValidConfig> {
        match self {
            Self::Tokio(e) => e.config(),
            Self::Uring(e) => e.config(),
        }
    }

    async fn listen(
        &self,
        target: impl Into<ListenTarget> + Send,
    ) -> Result<AutoListener, TransportError> {
        let addr = target.into();
        Ok(match self {
            Self::Tokio(e) => AutoListener::Tokio(e.listen(addr).await?),
            Self::Uring(e) => AutoListener::Uring(e.listen(addr).await?),
        })
    }

    async fn dial(
        &self,
        target: impl Into<DialTarget> + Send,
        opts: DialOptions,
    ) -> Result<AutoConn, TransportError> {
        let addr = target.into();
        Ok(match self {
            Self::Tokio(e) => AutoConn::Tokio(e.dial(addr, opts).await?),
            Self::Uring(e) => AutoConn::Uring(e.dial(addr, opts).await?),
        })
    }

    async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        match self {
            Self::Tokio(e) => e.shutdown(deadline).await,
            Self::Uring(e) => e.shutdown(deadline).await,
        }
    }

    fn serve<H, Fut>(
        &self,
        listener: AutoListener,
        handler: H,
    ) -> impl Future<Output = Result<(), TransportError>> + Send + 'static
    where
        H: Fn(AutoConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let serving: Pin<Box<dyn Future<Output = Result<(), TransportError>> + Send>> =
            match (self, listener) {
                (Self::Tokio(e), AutoListener::Tokio(l)) => {
                    Box::pin(e.serve(l, move |c| handler(AutoConn::Tokio(c))))
                }
                (Self::Uring(e), AutoListener::Uring(l)) => {
                    Box::pin(e.serve(l, move |c| handler(AutoConn::Uring(c))))
                }
                _ => Box::pin(std::future::ready(Err(TransportError::Unsupported {
                    what: "a listener of another engine".into(),
                }))),
            };
        serving
    }
}

/// A listener of the engine [`AutoEngine`] picked.
#[derive(Debug)]
#[non_exhaustive]
pub enum AutoListener {
    /// The tokio engine's.
    Tokio(TokioListener),
    /// The uring engine's.
    Uring(UringListener),
}

impl Listener for AutoListener {
    type Conn = AutoConn;

    fn local_addr(&self) -> SocketAddr {
        match self {
            Self::Tokio(l) => l.local_addr(),
            Self::Uring(l) => l.local_addr(),
        }
    }

    async fn accept(&mut self) -> Result<AutoConn, TransportError> {
        Ok(match self {
            Self::Tokio(l) => AutoConn::Tokio(l.accept().await?),
            Self::Uring(l) => AutoConn::Uring(l.accept().await?),
        })
    }
}

/// A connection of the engine [`AutoEngine`] picked.
#[derive(Debug)]
#[non_exhaustive]
pub enum AutoConn {
    /// The tokio engine's.
    Tokio(TokioConn),
    /// The uring engine's.
    Uring(UringConn),
}

/// A sender of an [`AutoConn`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AutoSender {
    /// The tokio engine's.
    Tokio(TokioSender),
    /// The uring engine's.
    Uring(UringSender),
}

impl FrameSender for AutoSender {
    fn try_send(&self, frame: Bytes) -> Result<(), TransportError> {
        match self {
            Self::Tokio(s) => s.try_send(frame),
            Self::Uring(s) => s.try_send(frame),
        }
    }

    async fn send(&self, frame: Bytes) -> Result<(), TransportError> {
        match self {
            Self::Tokio(s) => s.send(frame).await,
            Self::Uring(s) => s.send(frame).await,
        }
    }
}

impl Conn for AutoConn {
    type Sender = AutoSender;

    fn info(&self) -> &ConnInfo {
        match self {
            Self::Tokio(c) => c.info(),
            Self::Uring(c) => c.info(),
        }
    }

    fn sender(&self) -> AutoSender {
        match self {
            Self::Tokio(c) => AutoSender::Tokio(c.sender()),
            Self::Uring(c) => AutoSender::Uring(c.sender()),
        }
    }

    fn try_send(&self, frame: Bytes) -> Result<(), TransportError> {
        match self {
            Self::Tokio(c) => c.try_send(frame),
            Self::Uring(c) => c.try_send(frame),
        }
    }

    async fn send(&self, frame: Bytes) -> Result<(), TransportError> {
        match self {
            Self::Tokio(c) => c.send(frame).await,
            Self::Uring(c) => c.send(frame).await,
        }
    }

    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        match self {
            Self::Tokio(c) => c.recv().await,
            Self::Uring(c) => c.recv().await,
        }
    }

    async fn close(self) -> Result<(), TransportError> {
        match self {
            Self::Tokio(c) => c.close().await,
            Self::Uring(c) => c.close().await,
        }
    }

    fn cancel(&self) {
        match self {
            Self::Tokio(c) => c.cancel(),
            Self::Uring(c) => c.cancel(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(
            classify(Some(libc::EPERM), Some(2)),
            UringUnavailable::SysctlDisabled { value: 2 }
        );
        assert_eq!(
            classify(Some(libc::EPERM), Some(1)),
            UringUnavailable::SysctlDisabled { value: 1 }
        );
        assert_eq!(
            classify(Some(libc::EPERM), Some(0)),
            UringUnavailable::Seccomp
        );
        assert_eq!(classify(Some(libc::EPERM), None), UringUnavailable::Seccomp);
        assert_eq!(
            classify(Some(libc::ENOSYS), Some(0)),
            UringUnavailable::NoSys
        );
        assert_eq!(classify(Some(libc::ENOMEM), None), UringUnavailable::NoMem);
        assert_eq!(
            classify(Some(libc::EINVAL), None),
            UringUnavailable::Other {
                errno: libc::EINVAL
            }
        );
        assert_eq!(classify(None, None).as_str(), "io_uring_setup_failed");
    }

    #[test]
    fn decisions() {
        let c = EngineChoice::decide(UringProbe::Available, false);
        assert_eq!(
            (c.kind, c.reason),
            (EngineKind::Tokio, REASON_URING_NOT_BUILT)
        );
        let c = EngineChoice::decide(UringProbe::Available, true);
        assert_eq!((c.kind, c.reason), (EngineKind::Uring, "uring_available"));
        let c = EngineChoice::decide(UringProbe::Unavailable(UringUnavailable::Seccomp), true);
        assert_eq!(
            (c.kind, c.reason),
            (EngineKind::Tokio, "io_uring_blocked_seccomp")
        );
    }

    #[test]
    fn probe_matches_sysctl() {
        // On this host the probe either works or is explained; it never panics.
        match probe_uring() {
            UringProbe::Available => {}
            UringProbe::Unavailable(why) => {
                println!("io_uring unavailable here: {}", why.as_str());
            }
        }
    }

    #[tokio::test]
    async fn build_picks_uring_where_usable_and_stays_ready() {
        use crate::readiness::{ReadyState, TransportHealth};
        let cfg = crate::config::ValidConfig::defaults();
        let usable = crate::engine::uring::availability(&cfg);
        let setup = EngineSetup::new(cfg, crate::metrics::TransportMetrics::new()).unwrap();
        let (engine, choice) = AutoEngine::build(setup).unwrap();
        assert_eq!(engine.kind(), choice.kind);
        match (&engine, usable) {
            (AutoEngine::Uring(e), Ok(())) => {
                assert_eq!(choice.reason, "uring_available");
                assert_eq!(e.readiness(), ReadyState::Ready);
            }
            (AutoEngine::Tokio(e), Err(reason)) => {
                println!("uring not usable here: {reason}");
                assert_eq!(choice.reason, reason);
                assert_eq!(e.readiness(), ReadyState::Ready);
            }
            (e, u) => panic!("picked {:?} with availability {u:?}", e.kind()),
        }
    }

    #[tokio::test]
    async fn tls_config_picks_uring_where_usable() {
        let c = crate::config::Config {
            backend: crate::config::Backend::Tls,
            ..crate::config::Config::default()
        };
        let Ok(cfg) = c.validate() else { return };
        let setup = EngineSetup::new(cfg, crate::metrics::TransportMetrics::new()).unwrap();
        let usable = crate::engine::uring::availability(&setup.config_snapshot());
        let (engine, choice) = AutoEngine::build(setup).unwrap();
        assert_eq!(engine.kind(), choice.kind);
        match usable {
            Ok(()) => {
                assert_eq!(engine.kind(), EngineKind::Uring);
                assert_eq!(choice.reason, "uring_available");
            }
            Err(reason) => {
                assert_eq!(engine.kind(), EngineKind::Tokio);
                assert_eq!(choice.reason, reason);
            }
        }
    }
}
