//! Where Arti keeps its state and cache, and the permission rules for them.
//!
//! - Without amnesia: the directories of [`ArtiOptions`](super::ArtiOptions) (or Arti's own
//!   defaults under `$HOME` when unset) with Arti's native keystore under `state/keystore`.
//!   Directories that exist must not be group- or world-writable (checked here with a clear
//!   error before Arti's own `fs-mistrust` checks run).
//! - With `amnesia.enabled`: a fresh private (0700) directory on a RAM-backed filesystem
//!   (tmpfs/ramfs; `$XDG_RUNTIME_DIR` or `/dev/shm` unless `amnesia_root` names one), holding
//!   `state/` and `cache/`; keys live in Arti's ephemeral (in-memory) keystore. The directory is
//!   removed when the engine's side runtime has stopped (shutdown or drop). A root that is not
//!   RAM-backed is refused (fail closed).

use std::io;
use std::path::{Path, PathBuf};

use crate::error::TransportError;

/// The resolved storage of one Arti client.
#[derive(Debug)]
pub(crate) struct Storage {
    /// Arti's state directory (`None`: Arti's default).
    pub(crate) state_dir: Option<PathBuf>,
    /// Arti's cache directory (`None`: Arti's default).
    pub(crate) cache_dir: Option<PathBuf>,
    /// The amnesia directory, removed when dropped.
    pub(crate) amnesia: Option<AmnesiaDir>,
}

impl Storage {
    /// Resolves the directories for `amnesia` (checks permissions; creates the amnesia dir).
    pub(crate) fn resolve(
        amnesia: bool,
        state_dir: Option<&Path>,
        cache_dir: Option<&Path>,
        amnesia_root: Option<&Path>,
    ) -> Result<Self, TransportError> {
        if amnesia {
            let dir = AmnesiaDir::create(amnesia_root)?;
            return Ok(Self {
                state_dir: Some(dir.path.join("state")),
                cache_dir: Some(dir.path.join("cache")),
                amnesia: Some(dir),
            });
        }
        for dir in [state_dir, cache_dir].into_iter().flatten() {
            check_private_dir(dir)?;
        }
        Ok(Self {
            state_dir: state_dir.map(Path::to_path_buf),
            cache_dir: cache_dir.map(Path::to_path_buf),
            amnesia: None,
        })
    }
}

/// Refuses an existing directory that is group- or world-writable.
pub(crate) fn check_private_dir(dir: &Path) -> Result<(), TransportError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(TransportError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("arti storage path {} is not a directory", dir.display()),
                )));
            }
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o022 != 0 {
                return Err(TransportError::Io(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "arti storage directory {} has insecure permissions {mode:04o}: it must \
                         not be group- or world-writable (use 0700)",
                        dir.display()
                    ),
                )));
            }
            Ok(())
        }
        // Arti creates missing directories itself (0700).
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TransportError::Io(e)),
    }
}

/// A private directory on a RAM-backed filesystem, removed on drop.
#[derive(Debug)]
pub(crate) struct AmnesiaDir {
    pub(crate) path: PathBuf,
}

impl AmnesiaDir {
    fn create(root: Option<&Path>) -> Result<Self, TransportError> {
        let root = match root {
            Some(r) => r.to_path_buf(),
            None => default_ram_root().ok_or_else(|| TransportError::Unsupported {
                what: "amnesia needs a RAM-backed directory: neither $XDG_RUNTIME_DIR nor \
                           /dev/shm is on tmpfs (set ArtiOptions::amnesia_root)"
                    .into(),
            })?,
        };
        let root = root.canonicalize().map_err(|e| {
            TransportError::Io(io::Error::new(
                e.kind(),
                format!("amnesia root {}: {e}", root.display()),
            ))
        })?;
        match fs_type(&root) {
            Some(t) if is_ram_fs(&t) => {}
            other => {
                return Err(TransportError::Unsupported {
                    what: format!(
                        "amnesia root {} is on {} , not a RAM-backed filesystem (tmpfs/ramfs)",
                        root.display(),
                        other.as_deref().unwrap_or("an unknown filesystem")
                    ),
                })
            }
        }
        use std::os::unix::fs::DirBuilderExt;
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o700);
        let mut last = None;
        for _ in 0..16 {
            let name = format!("ron-arti-{}-{:016x}", std::process::id(), random_u64());
            let path = root.join(name);
            match builder.create(&path) {
                Ok(()) => {
                    // The umask cannot widen 0700, but make it exact.
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
                    for sub in ["state", "cache"] {
                        builder.create(path.join(sub))?;
                    }
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(TransportError::Io(e)),
            }
        }
        Err(TransportError::Io(last.unwrap_or_else(|| {
            io::Error::other("could not create an amnesia directory")
        })))
    }
}

impl Drop for AmnesiaDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => tracing::info!(
                target: "ron_transport",
                event = "amnesia",
                backend = "arti",
                "arti amnesia directory removed"
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(
                target: "ron_transport",
                event = "amnesia",
                backend = "arti",
                error = %e,
                "could not remove the arti amnesia directory"
            ),
        }
    }
}

fn is_ram_fs(t: &str) -> bool {
    matches!(t, "tmpfs" | "ramfs")
}

/// `$XDG_RUNTIME_DIR`, then `/dev/shm`, whichever is RAM-backed first.
fn default_ram_root() -> Option<PathBuf> {
    let candidates = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::iter::once(PathBuf::from("/dev/shm")));
    for c in candidates {
        let Ok(c) = c.canonicalize() else { continue };
        if fs_type(&c).is_some_and(|t| is_ram_fs(&t)) {
            return Some(c);
        }
    }
    None
}

/// The filesystem type of the mount holding `path` (from `/proc/self/mountinfo`; the longest
/// mount point that is a prefix of the canonical path wins).
pub(crate) fn fs_type(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        // id parent major:minor root mount_point options [optional...] - fstype source super
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4)?;
        let mount_point = unescape_mount(mount_point);
        let rest = line.split(" - ").nth(1)?;
        let fstype = rest.split(' ').next()?.to_owned();
        if path.starts_with(&mount_point) {
            let len = mount_point.len();
            if best.as_ref().is_none_or(|(l, _)| len >= *l) {
                best = Some((len, fstype));
            }
        }
    }
    best.map(|(_, t)| t)
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A random value for directory names (std's randomly keyed hasher; no extra dependency).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_unescape() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }

    #[test]
    fn root_is_not_ram_backed_or_is_known() {
        // `/` always has a type; `/proc` is procfs.
        assert!(fs_type(Path::new("/")).is_some());
        assert_eq!(fs_type(Path::new("/proc/self")).as_deref(), Some("proc"));
    }
}
