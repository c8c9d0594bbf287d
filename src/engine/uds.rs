//! Unix-domain stream sockets, shared by both engines: the socket-file rules of `uds.path`
//! ([`bind`]), the `SO_PEERCRED` allowlist of `uds.allow_uids` ([`permit_peer`]) and the
//! synthetic per-uid address a Unix peer is admitted, capped and rate-limited under.
//!
//! # Socket-file rules
//! - The parent directory must be mode `0700` (checked, never changed); the error names it.
//! - The socket is created `0600` with no moment in which it is wider: the unbound socket's
//!   inode is `fchmod`ed to `0600` *before* `bind`, and Linux creates the file with that mode
//!   (masked further by the umask), so the file appears already `0600`. It is never chmodded
//!   after creation; [`bind`] re-checks the mode it got and refuses anything wider.
//! - Something already at the path: a socket nobody listens on (`connect` is refused) is a
//!   stale leftover and is replaced; a live listener, a regular file, a directory or a symlink
//!   is an error naming the path.
//! - The file is removed when its listener is dropped and when the engine shuts down (only if
//!   the path still holds the very socket this listener created).
//!
//! # Peer credentials
//! Right after accept, before any byte is read, the peer's uid (`SO_PEERCRED`) is checked
//! against the live `uds.allow_uids`: a uid not in it is closed, logged
//! (`uds peer not permitted`, with uid and pid) and counted in
//! `rejected_total{reason="peer_limit"}`. An empty allowlist admits only the uid the server
//! runs as. An admitted peer then goes through the same caps and rate limits as a TCP peer,
//! keyed by the synthetic address `[100::<uid>]:0` ([`uid_addr`]): per-peer limits apply per
//! uid. Its `ConnInfo::peer_addr` is that address; `local_addr` is the server's own uid address.
#![forbid(unsafe_code)]

use std::fs::{File, Permissions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

pub use ron_shard::unix::{addr_uid, current_uid, peer_cred, uid_addr, PeerCred};

use crate::config::{ConfigError, ValidConfig};
use crate::engine::EngineKind;
use crate::error::{RejectReason, TransportError};
use crate::metrics::TransportMetrics;

/// Listen backlog of a Unix-domain listener (as for TCP listeners).
const BACKLOG: i32 = 4096;

/// A socket file this process created; removed (once) when dropped or at engine shutdown, and
/// only while the path still holds this very socket (same device and inode).
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    removed: AtomicBool,
}

impl SocketFile {
    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file if it is still ours. Idempotent.
    pub(crate) fn remove(&self) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(
                        target: "ron_transport",
                        event = "listen",
                        uds_path = %self.path.display(),
                        error = %e,
                        "could not remove the uds socket file"
                    );
                }
            }
            _ => {} // gone, or replaced by somebody else's: not ours to remove
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The socket files of one engine's listeners, removed at engine shutdown.
#[derive(Debug, Default)]
pub(crate) struct SocketFiles(Mutex<Vec<Weak<SocketFile>>>);

impl SocketFiles {
    /// Remembers `file` (weakly: a dropped listener has removed its file already).
    pub(crate) fn track(&self, file: &Arc<SocketFile>) {
        let mut v = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(file));
    }

    /// Removes every tracked file still present.
    pub(crate) fn remove_all(&self) {
        let files = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for f in files.iter().filter_map(Weak::upgrade) {
            f.remove();
        }
    }
}

fn invalid(reason: String) -> TransportError {
    TransportError::Config(ConfigError::Invalid {
        key: "uds.path",
        reason,
    })
}

fn in_the_way(path: &Path, what: &str, kind: io::ErrorKind) -> TransportError {
    TransportError::Io(io::Error::new(
        kind,
        format!("uds.path {}: {what}", path.display()),
    ))
}

/// Checks that `path`'s parent directory is mode `0700` (not changed here).
pub(crate) fn check_parent(path: &Path) -> Result<(), TransportError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(parent)
        .map_err(|e| invalid(format!("parent directory {}: {e}", parent.display())))?;
    if !meta.is_dir() {
        return Err(invalid(format!("{} is not a directory", parent.display())));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode != 0o700 {
        return Err(invalid(format!(
            "parent directory {} has mode {mode:04o}, must be 0700",
            parent.display()
        )));
    }
    Ok(())
}

/// Clears the way for a new socket at `path`: nothing there is fine; a stale socket (connect
/// refused) is removed; anything else is an error naming the path.
fn clear_stale(path: &Path) -> Result<(), TransportError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(in_the_way(path, &e.to_string(), e.kind())),
    };
    let ft = meta.file_type();
    if !ft.is_socket() {
        let what = if ft.is_file() {
            "a regular file is in the way (not removed)"
        } else if ft.is_dir() {
            "a directory is in the way (not removed)"
        } else if ft.is_symlink() {
            "a symlink is in the way (not followed, not removed)"
        } else {
            "something that is not a socket is in the way (not removed)"
        };
        return Err(in_the_way(path, what, io::ErrorKind::AlreadyExists));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(in_the_way(
            path,
            "another listener is live on this socket",
            io::ErrorKind::AddrInUse,
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            // Nobody listens: a leftover of a process that died without cleaning up.
            match std::fs::remove_file(path) {
                Ok(()) => {
                    tracing::info!(
                        target: "ron_transport",
                        event = "listen",
                        uds_path = %path.display(),
                        "replaced a stale uds socket file"
                    );
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(in_the_way(path, &format!("stale socket: {e}"), e.kind())),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(in_the_way(
            path,
            &format!("cannot tell whether the socket there is live: {e}"),
            e.kind(),
        )),
    }
}

/// Creates the listening socket at `path` under the socket-file rules (module docs).
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, Arc<SocketFile>), TransportError> {
    check_parent(path)?;
    clear_stale(path)?;
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM.cloexec(), None)?;
    // 0600 on the socket's inode before bind: the file is created with this mode (& ~umask).
    let file = File::from(OwnedFd::from(sock));
    file.set_permissions(Permissions::from_mode(0o600))?;
    let sock = socket2::Socket::from(OwnedFd::from(file));
    let addr = socket2::SockAddr::unix(path)?;
    if let Err(e) = sock.bind(&addr) {
        return Err(if e.kind() == io::ErrorKind::AddrInUse {
            in_the_way(path, "appeared while binding (another listener?)", e.kind())
        } else {
            in_the_way(path, &format!("bind: {e}"), e.kind())
        });
    }
    let meta = std::fs::symlink_metadata(path)?;
    let socket_file = Arc::new(SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
        removed: AtomicBool::new(false),
    });
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        // Not reachable on Linux (the pre-bind fchmod decides the mode); refuse rather than
        // serve a wider socket if a platform ignores it.
        return Err(in_the_way(
            path,
            &format!("socket created with mode {mode:04o}, wider than 0600"),
            io::ErrorKind::PermissionDenied,
        ));
    }
    sock.listen(BACKLOG)?;
    Ok((sock.into(), socket_file))
}

/// The `uds.allow_uids` check of one accepted Unix peer, with the live config: `true` admits
/// (caps and rate limits come next); `false` was logged (`uds peer not permitted`) and
/// counted (`rejected_total{reason="peer_limit"}`); the caller closes the socket unread.
pub(crate) fn permit_peer(
    cfg: &ValidConfig,
    metrics: &TransportMetrics,
    cred: PeerCred,
    engine: EngineKind,
) -> bool {
    let allowed = if cfg.uds_allow_uids.is_empty() {
        cred.uid == current_uid()
    } else {
        cfg.uds_allow_uids.contains(&cred.uid)
    };
    if !allowed {
        metrics.reject(RejectReason::PeerLimit);
        tracing::warn!(
            target: "ron_transport",
            event = "reject",
            reason = RejectReason::PeerLimit.as_str(),
            engine = engine.as_str(),
            uid = cred.uid,
            pid = cred.pid,
            "uds peer not permitted"
        );
    }
    allowed
}

/// The error an engine gives for TLS over a Unix-domain socket (not offered).
pub(crate) fn no_tls(target: &dyn std::fmt::Display) -> TransportError {
    TransportError::Unsupported {
        what: format!("tls over a unix socket ({target}): use backend tcp for uds.path"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(mode: u32) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), Permissions::from_mode(mode)).unwrap();
        d
    }

    #[test]
    fn socket_is_0600_and_removed_when_dropped() {
        let d = dir(0o700);
        let p = d.path().join("s.sock");
        let (l, f) = bind(&p).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        drop(l);
        drop(f);
        assert!(!p.exists());
    }

    #[test]
    fn parent_must_be_0700_and_is_not_changed() {
        let d = dir(0o755);
        let p = d.path().join("s.sock");
        let e = bind(&p).unwrap_err();
        assert_eq!(e.kind(), "config");
        assert!(e.to_string().contains("uds.path"), "{e}");
        assert!(
            e.to_string().contains(&d.path().display().to_string()),
            "{e}"
        );
        assert!(e.to_string().contains("0755"), "{e}");
        let mode = std::fs::metadata(d.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        assert!(!p.exists());
    }

    #[test]
    fn regular_file_and_live_listener_are_errors_naming_the_path() {
        let d = dir(0o700);
        let p = d.path().join("s.sock");
        std::fs::write(&p, b"keep me").unwrap();
        let e = bind(&p).unwrap_err();
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        assert!(e.to_string().contains("regular file"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"keep me");
        std::fs::remove_file(&p).unwrap();
        let (_l, _f) = bind(&p).unwrap();
        let e = bind(&p).unwrap_err();
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        assert!(e.to_string().contains("live"), "{e}");
        assert!(p.exists(), "the live listener's socket stays");
    }

    #[test]
    fn stale_socket_is_replaced() {
        let d = dir(0o700);
        let p = d.path().join("s.sock");
        // A socket nobody listens on: bound by std, then the listener is gone.
        drop(UnixListener::bind(&p).unwrap());
        assert!(p.exists());
        let (_l, _f) = bind(&p).unwrap();
        UnixStream::connect(&p).unwrap();
    }

    #[test]
    fn removal_spares_a_successor_socket() {
        let d = dir(0o700);
        let p = d.path().join("s.sock");
        let (l, f) = bind(&p).unwrap();
        drop(l);
        // Someone replaced the (now stale) socket with their own. A second link keeps the old
        // inode alive, so the successor cannot be handed the same inode number (which the
        // file system may reuse at once, and the identity check could not tell apart).
        std::fs::hard_link(&p, d.path().join("old.sock")).unwrap();
        std::fs::remove_file(&p).unwrap();
        let (_l2, _f2) = bind(&p).unwrap();
        drop(f);
        assert!(p.exists(), "the successor's socket was not removed");
    }
}
