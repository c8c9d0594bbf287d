//! Unix-domain sockets on both engines (issue 11 item 1): listen and dial on a socket path, the
//! socket-file rules (parent 0700 checked, socket 0600 from the start, stale socket replaced,
//! anything else an error naming the path, file removed on drop and shutdown), and the
//! `SO_PEERCRED` allowlist against a real other uid (a child process that runs as 65534),
//! including a live reload of `uds.allow_uids` that admits it.

mod util;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ron_shard::RuntimeConfig;
use ron_transport::config::{Backend, ConfigHandle};
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::uds::{current_uid, uid_addr};
use ron_transport::engine::{DialOptions, DialTarget, EngineKind};
use ron_transport::{Config, Conn, Engine, Listener, RejectReason, TransportMetrics};

use util::*;

const SLACK: Duration = Duration::from_secs(5);
/// The uid the refused peer runs as.
const NOBODY: u32 = 65534;

/// A fresh directory with mode 0700.
fn private_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

fn config(allow: Vec<u32>) -> Config {
    let mut c = Config::default();
    c.bind_addr = None;
    c.uds_allow_uids = allow;
    c
}

/// Builds `kind` over `handle` (live config), counting into `metrics`.
async fn with_engine<F, Fut>(kind: EngineKind, handle: ConfigHandle, f: F)
where
    F: FnOnce(AnyEngine, Arc<TransportMetrics>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let metrics = TransportMetrics::new();
    let setup = EngineSetup::from_handle(handle, metrics.clone()).unwrap();
    let engine = match kind {
        EngineKind::Tokio => AnyEngine::Tokio(setup.build_tokio().unwrap()),
        _ => AnyEngine::Uring(
            setup
                .build_uring_with(RuntimeConfig {
                    shards: 2,
                    pin: false,
                    buf_entries: 64,
                    ..RuntimeConfig::default()
                })
                .expect("uring engine (io_uring usable here)"),
        ),
    };
    f(engine, metrics).await
}

/// Either engine, for tests that run the same steps on both.
enum AnyEngine {
    Tokio(ron_transport::engine::tokio::TokioEngine),
    Uring(ron_transport::engine::uring::UringEngine),
}

macro_rules! on_engine {
    ($e:expr, |$eng:ident| $body:expr) => {
        match $e {
            AnyEngine::Tokio($eng) => $body,
            AnyEngine::Uring($eng) => $body,
        }
    };
}

fn both(f: impl Fn(EngineKind)) {
    for kind in [EngineKind::Tokio, EngineKind::Uring] {
        f(kind);
    }
}

#[test]
fn uds_echo_dial_and_file_lifecycle_on_both_engines() {
    both(|kind| {
        run_multi_thread(async move {
            let dir = private_dir();
            let path = dir.path().join("echo.sock");
            let handle = ConfigHandle::new(config(vec![]).validate().unwrap());
            with_engine(kind, handle, |engine, metrics| async move {
                on_engine!(engine, |engine| {
                    let listener = engine.listen(path.as_path()).await.expect("listen");
                    assert_eq!(listener.dial_target(), DialTarget::Unix(path.clone()));
                    let meta = std::fs::symlink_metadata(&path).unwrap();
                    assert!(meta.file_type().is_socket());
                    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{kind:?}");
                    drop(util::spawn_echo(&engine, listener));

                    let mut conn = engine
                        .dial(listener_path(&path), DialOptions::default())
                        .await
                        .expect("dial");
                    let me = uid_addr(current_uid());
                    assert_eq!(conn.info().peer_addr, me);
                    assert_eq!(conn.info().local_addr, me);
                    assert_eq!(conn.info().backend, Backend::Tcp);
                    for n in [0usize, 1, 5, 4096, 70_000, 1 << 20] {
                        let p = payload(n, n as u8);
                        conn.send(p.clone()).await.unwrap();
                        let got = within("echo", SLACK, conn.recv()).await.unwrap().unwrap();
                        assert_eq!(got, p, "{kind:?}: {n} bytes");
                    }
                    let s = snap(&metrics, Backend::Tcp);
                    assert_eq!(s.accepts, 1, "{kind:?}");
                    assert_eq!(s.dials_ok, 1, "{kind:?}");
                    conn.close().await.unwrap();

                    let report = engine.shutdown(Duration::from_secs(2)).await;
                    assert_eq!(report.aborted, 0);
                    assert!(!path.exists(), "{kind:?}: socket file removed at shutdown");
                })
            })
            .await;
        })
    });
}

fn listener_path(p: &Path) -> DialTarget {
    DialTarget::Unix(p.to_path_buf())
}

#[test]
fn uds_listener_drop_removes_the_file_and_rules_hold_on_both_engines() {
    both(|kind| {
        run_multi_thread(async move {
            let dir = private_dir();
            let path = dir.path().join("rules.sock");
            let handle = ConfigHandle::new(config(vec![]).validate().unwrap());
            with_engine(kind, handle, |engine, _metrics| async move {
                on_engine!(engine, |engine| {
                    // A live listener at the path: a second listen is an error naming it.
                    let l = engine.listen(path.clone()).await.unwrap();
                    let e = engine.listen(path.clone()).await.unwrap_err();
                    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
                    drop(l);
                    wait_until("socket file removed on drop", SLACK, || !path.exists()).await;

                    // A regular file is never replaced.
                    std::fs::write(&path, b"data").unwrap();
                    let e = engine.listen(path.clone()).await.unwrap_err();
                    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
                    assert_eq!(std::fs::read(&path).unwrap(), b"data");
                    std::fs::remove_file(&path).unwrap();

                    // A stale socket (nobody listens) is replaced.
                    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
                    let l = engine.listen(path.clone()).await.expect("stale replaced");
                    drop(l);

                    // The parent must be 0700: checked, not changed.
                    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750))
                        .unwrap();
                    let e = engine.listen(path.clone()).await.unwrap_err();
                    assert_eq!(e.kind(), "config");
                    assert!(e.to_string().contains("0750"), "{e}");
                    assert!(
                        e.to_string().contains(&dir.path().display().to_string()),
                        "{e}"
                    );
                    let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
                    assert_eq!(mode & 0o777, 0o750);
                    engine.shutdown(Duration::from_secs(1)).await;
                })
            })
            .await;
        })
    });
}

#[test]
fn uds_socket_is_0600_even_with_umask_0_on_both_engines() {
    // With umask 0 a socket file gets exactly the mode of the socket's inode at bind time:
    // 0777 unless it was narrowed before bind. 0600 here shows the file was created 0600
    // (never wider; nothing chmods it afterwards).
    // SAFETY: `umask` takes an integer and only swaps the process's file-creation mask.
    let old = unsafe { libc::umask(0) };
    both(|kind| {
        run_multi_thread(async move {
            let dir = private_dir();
            let path = dir.path().join("umask.sock");
            let handle = ConfigHandle::new(config(vec![]).validate().unwrap());
            with_engine(kind, handle, |engine, _m| async move {
                on_engine!(engine, |engine| {
                    let l = engine.listen(path.clone()).await.unwrap();
                    let mode = std::fs::symlink_metadata(&path)
                        .unwrap()
                        .permissions()
                        .mode();
                    assert_eq!(mode & 0o777, 0o600, "{kind:?}");
                    drop(l);
                    engine.shutdown(Duration::from_secs(1)).await;
                })
            })
            .await;
        })
    });
    // SAFETY: as above; restores the mask this test found.
    unsafe { libc::umask(old) };
}

/// A child process running as `uid` connects to `path`, sends one frame `hello` and prints
/// what it read back (hex) before EOF or reset.
fn peer_as(uid: u32, path: &Path) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    const SCRIPT: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
got = b""
try:
    s.sendall(struct.pack(">I", 5) + b"hello")
    while len(got) < 9:
        c = s.recv(9 - len(got))
        if not c:
            break
        got += c
except OSError as e:
    sys.stderr.write("oserror %s\n" % e)
sys.stdout.write(got.hex())
"#;
    std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("python3 as another uid")
}

#[test]
fn uds_peer_cred_refuses_other_uid_until_a_live_reload_allows_it_on_both_engines() {
    if current_uid() != 0 {
        eprintln!("SKIPPED uds_peer_cred: needs root to run a peer as uid {NOBODY}");
        return;
    }
    both(|kind| {
        run_multi_thread(async move {
            let dir = private_dir();
            // The other uid must be able to reach the socket: it owns the directory (still
            // 0700) and, once created, the socket file (still 0600).
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
            let path = dir.path().join("cred.sock");
            let handle = ConfigHandle::new(config(vec![]).validate().unwrap());
            with_engine(kind, handle.clone(), |engine, metrics| async move {
                on_engine!(engine, |engine| {
                    let l = engine.listen(path.clone()).await.unwrap();
                    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
                    drop(util::spawn_echo(&engine, l));
                    let before = rejected(&metrics, RejectReason::PeerLimit);

                    // Empty allowlist: only the server's own uid (root) is admitted.
                    let p2 = path.clone();
                    let out = tokio::task::spawn_blocking(move || peer_as(NOBODY, &p2))
                        .await
                        .unwrap();
                    assert!(out.status.success(), "{out:?}");
                    assert_eq!(
                        String::from_utf8_lossy(&out.stdout),
                        "",
                        "{kind:?}: refused"
                    );
                    assert_eq!(rejected(&metrics, RejectReason::PeerLimit), before + 1);
                    assert_eq!(snap(&metrics, Backend::Tcp).accepts, 0, "{kind:?}");

                    // Root (the server's uid) is admitted with the empty list.
                    let mut c = engine
                        .dial(path.clone(), DialOptions::default())
                        .await
                        .unwrap();
                    c.send(Bytes::from_static(b"x")).await.unwrap();
                    assert_eq!(c.recv().await.unwrap().unwrap(), Bytes::from_static(b"x"));
                    drop(c);

                    // A live reload admits the other uid (read at accept, no rebind).
                    handle.reload(config(vec![NOBODY])).unwrap();
                    let p2 = path.clone();
                    let out = tokio::task::spawn_blocking(move || peer_as(NOBODY, &p2))
                        .await
                        .unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(&out.stdout),
                        "0000000568656c6c6f",
                        "{kind:?}: echoed after reload ({out:?})"
                    );
                    assert_eq!(rejected(&metrics, RejectReason::PeerLimit), before + 1);

                    // And the explicit list now leaves out root itself.
                    let r = engine.dial(path.clone(), DialOptions::default()).await;
                    if let Ok(mut c) = r {
                        let got = within("refused dial closes", SLACK, c.recv()).await;
                        assert!(!matches!(got, Ok(Some(_))), "{kind:?}: {got:?}");
                    }
                    wait_until("root refused under [65534]", SLACK, || {
                        rejected(&metrics, RejectReason::PeerLimit) == before + 2
                    })
                    .await;
                    engine.shutdown(Duration::from_secs(1)).await;
                })
            })
            .await;
        })
    });
}
