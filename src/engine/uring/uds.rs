//! The uring engine on Unix-domain sockets: listening on a `uds.path` socket (the shard accepts
//! it with the same multishot accept and receives on it through the same ring paths as TCP),
//! the `SO_PEERCRED` admission the shard asks for right after accept (before any receive is
//! armed), and dials to a socket path. The socket-file rules and the allowlist live in
//! [`crate::engine::uds`], shared with the tokio engine. A Unix connection is a plain-frame
//! connection (backend label `tcp`) with the same limits, timeouts, caps, rate limits and
//! metrics as a TCP one; its peer address is the uid address of [`crate::engine::uds`].

use std::path::PathBuf;

use super::{
    oneshot, AcceptHooks, AcceptSide, Accepted, AdmitToken, Arc, DialError, DialSide, EngineKind,
    Inner, OnceLock, Reject, RejectReason, TimeoutOp, TransportError, UringListener,
    ACCEPT_BACKLOG,
};
use crate::engine::admission::{self, Direction};
use crate::engine::uds::{self, PeerCred};

/// Binds a listener on the Unix-domain socket at `path` and hands it to the shards.
pub(super) async fn listen(
    inner: Arc<Inner>,
    path: PathBuf,
) -> Result<UringListener, TransportError> {
    if inner.is_tls() {
        return Err(uds::no_tls(&format_args!("unix:{}", path.display())));
    }
    let (l, file) = uds::bind(&path)?;
    inner.uds_files.track(&file);
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_BACKLOG);
    let serve = Arc::new(OnceLock::new());
    let hooks = Arc::new(AcceptSide {
        inner: Arc::downgrade(&inner),
        tx,
        serve: serve.clone(),
    });
    let id = inner
        .rt
        .listen_unix(l, inner.conn_options(), hooks)
        .map_err(|e| TransportError::Unsupported {
            what: format!("uring listener: {e}"),
        })?;
    let local = uds::uid_addr(uds::current_uid());
    tracing::info!(
        target: "ron_transport",
        event = "listen",
        backend = inner.backend().as_str(),
        engine = "uring",
        local_addr = %local,
        uds_path = %path.display(),
        "listening"
    );
    Ok(UringListener {
        inner,
        local,
        rx,
        id,
        serve,
        uds: Some(file),
    })
}

/// The shard's admission of one accepted Unix peer: the live `uds.allow_uids` first, then the
/// same caps and rate state as a TCP peer, keyed by the peer's uid address.
pub(super) fn admit_unix(side: &AcceptSide, cred: PeerCred) -> Result<AdmitToken, Reject> {
    let Some(inner) = side.inner.upgrade() else {
        return Err(Reject { reason: "shutdown" });
    };
    if !uds::permit_peer(&inner.cfg(), &inner.metrics, cred, EngineKind::Uring) {
        return Err(Reject {
            reason: RejectReason::PeerLimit.as_str(),
        });
    }
    side.admit(cred.addr())
}

/// Dials the Unix-domain socket at `path`: admitted like a TCP dial (caps and rate state,
/// keyed by this process's uid address) before the connect is submitted, connected within
/// `deadline` by a shard. The caller's dial books count the outcome.
pub(super) async fn dial(
    inner: &Arc<Inner>,
    path: &std::path::Path,
    deadline: std::time::Duration,
    corr_id: Option<Arc<str>>,
) -> Result<Accepted, TransportError> {
    if inner.is_tls() {
        return Err(uds::no_tls(&format_args!("unix:{}", path.display())));
    }
    let own = uds::uid_addr(uds::current_uid());
    let admitted = admission::admit(
        &inner.policy,
        &inner.metrics,
        inner.backend(),
        EngineKind::Uring,
        own,
        Direction::Outbound,
    )?;
    let (tx, rx) = oneshot::channel();
    let hooks = Box::new(DialSide {
        inner: Arc::downgrade(inner),
        tx,
        admitted: Some(admitted),
        corr_id,
    });
    if let Err((e, _)) = inner
        .rt
        .dial_unix(path, deadline, inner.conn_options(), hooks)
    {
        return Err(TransportError::Unsupported {
            what: format!("uring dial: {e}"),
        });
    }
    match rx.await {
        Ok(Ok(accepted)) => Ok(accepted),
        Ok(Err(DialError::Timeout)) => Err(TransportError::timeout(TimeoutOp::Dial)),
        Ok(Err(DialError::Io(e))) => Err(TransportError::Io(e)),
        Ok(Err(_)) | Err(_) => Err(TransportError::Cancelled),
    }
}
