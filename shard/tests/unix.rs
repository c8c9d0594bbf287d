//! AF_UNIX on the shard: a Unix-domain listener accepted by the same multishot accept, the
//! peer's `SO_PEERCRED` handed to `AcceptHooks::admit_unix` before any receive is armed, frames
//! received and sent through the same ring paths as TCP (small frames through the provided
//! buffers, large ones through direct receives), and dials to a socket path.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ron_shard::unix::{current_uid, uid_addr, PeerCred};
use ron_shard::{
    AcceptHooks, AdmitToken, CloseReason, ConnCtx, ConnHandler, ConnMeta, ConnOptions, ConnRemote,
    DialError, DialHooks, Frame, Reject,
};

/// Admits Unix peers by credentials (unless `deny`), records what it saw, echoes.
#[derive(Default)]
struct UnixHooks {
    deny: bool,
    creds: Mutex<Vec<PeerCred>>,
    metas: Mutex<Vec<(SocketAddr, SocketAddr)>>,
    tcp_admits: AtomicBool,
    closes: Arc<Mutex<Vec<CloseReason>>>,
}

impl AcceptHooks for UnixHooks {
    fn admit(&self, _peer: SocketAddr) -> Result<AdmitToken, Reject> {
        self.tcp_admits.store(true, Ordering::SeqCst);
        Err(Reject { reason: "tcp" })
    }

    fn admit_unix(&self, cred: PeerCred) -> Result<AdmitToken, Reject> {
        self.creds.lock().unwrap().push(cred);
        if self.deny {
            return Err(Reject {
                reason: "peer_limit",
            });
        }
        Ok(AdmitToken::empty())
    }

    fn open(&self, _t: AdmitToken, meta: &ConnMeta, _r: ConnRemote) -> Box<dyn ConnHandler> {
        self.metas.lock().unwrap().push((meta.peer, meta.local));
        Box::new(Echo {
            closes: self.closes.clone(),
        })
    }
}

/// A private directory removed when dropped.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn socket_path(name: &str) -> (Dir, PathBuf) {
    let d = std::env::temp_dir().join(format!("ron-shard-unix-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    let p = d.join(name);
    (Dir(d), p)
}

fn listen_unix(rt: &ron_shard::Runtime, hooks: Arc<dyn AcceptHooks>, path: &PathBuf) {
    let l = UnixListener::bind(path).unwrap();
    rt.listen_unix(l, ConnOptions::default(), hooks).unwrap();
}

fn unix_connect(path: &PathBuf) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn write_frame_to(s: &mut UnixStream, payload: &[u8]) {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    s.write_all(&v).unwrap();
}

fn read_frame_from(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h)?;
    let mut p = vec![0u8; u32::from_be_bytes(h) as usize];
    s.read_exact(&mut p)?;
    Ok(p)
}

#[test]
fn unix_echo_through_the_ring_with_peer_credentials() {
    let Some(rt) = runtime(2) else { return };
    let (_d, path) = socket_path("echo.sock");
    let hooks = Arc::new(UnixHooks::default());
    listen_unix(&rt, hooks.clone(), &path);
    let mut c = unix_connect(&path);
    // Small frames (provided buffers) and large ones (direct receives), up to the ceiling.
    for (i, n) in [0usize, 1, 100, 16 * 1024, 40_000, 200_000, 1 << 20, 7]
        .into_iter()
        .enumerate()
    {
        let p: Vec<u8> = (0..n).map(|j| ((i * 31 + j) % 251) as u8).collect();
        write_frame_to(&mut c, &p);
        assert_eq!(read_frame_from(&mut c).unwrap(), p, "{n} bytes");
    }
    let creds = hooks.creds.lock().unwrap().clone();
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].uid, current_uid());
    assert_eq!(creds[0].pid, std::process::id() as i32);
    let metas = hooks.metas.lock().unwrap().clone();
    assert_eq!(
        metas,
        vec![(uid_addr(current_uid()), uid_addr(current_uid()))]
    );
    assert!(!hooks.tcp_admits.load(Ordering::SeqCst));
    let s = total(&rt);
    assert_eq!((s.accepted, s.adopted, s.rejected), (1, 1, 0));
    assert!(s.bytes_in > 1 << 20);
}

#[test]
fn unix_refusal_by_credentials_closes_without_reading() {
    let Some(rt) = runtime(1) else { return };
    let (_d, path) = socket_path("deny.sock");
    let hooks = Arc::new(UnixHooks {
        deny: true,
        ..UnixHooks::default()
    });
    listen_unix(&rt, hooks.clone(), &path);
    for _ in 0..3 {
        let mut c = unix_connect(&path);
        let _ = c.write_all(b"\0\0\0\x01x");
        let mut buf = [0u8; 8];
        assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    }
    eventually("3 rejections", || total(&rt).rejected == 3);
    let s = total(&rt);
    assert_eq!((s.accepted, s.adopted, s.bytes_in), (3, 0, 0));
    assert_eq!(hooks.creds.lock().unwrap().len(), 3);
    assert!(hooks.metas.lock().unwrap().is_empty());
}

#[test]
fn hooks_without_admit_unix_refuse_unix_peers() {
    let Some(rt) = runtime(1) else { return };
    let (_d, path) = socket_path("default.sock");
    let hooks = Arc::new(EchoHooks::default());
    listen_unix(&rt, hooks.clone(), &path);
    let mut c = unix_connect(&path);
    let mut buf = [0u8; 8];
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    eventually("refused", || total(&rt).rejected == 1);
    assert!(hooks.opened_on.lock().unwrap().is_empty());
}

/// Dial side: sends `ping` on open, records what comes back.
struct Pinger {
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    meta: Arc<Mutex<Option<(SocketAddr, SocketAddr)>>>,
    failed: Arc<Mutex<Option<String>>>,
}

struct PingHandler(Arc<Mutex<Vec<Vec<u8>>>>);

impl ConnHandler for PingHandler {
    fn on_open(&mut self, ctx: &mut ConnCtx<'_>) {
        ctx.send(b"ping").unwrap();
    }
    fn on_frame(&mut self, _ctx: &mut ConnCtx<'_>, frame: Frame<'_>) {
        self.0.lock().unwrap().push(frame.payload().to_vec());
    }
    fn on_close(&mut self, _reason: &CloseReason) {}
}

impl DialHooks for Pinger {
    fn connected(self: Box<Self>, meta: &ConnMeta, _r: ConnRemote) -> Box<dyn ConnHandler> {
        *self.meta.lock().unwrap() = Some((meta.peer, meta.local));
        Box::new(PingHandler(self.got.clone()))
    }
    fn failed(self: Box<Self>, err: DialError) {
        *self.failed.lock().unwrap() = Some(err.to_string());
    }
}

#[test]
fn dial_unix_connects_on_the_ring_and_names_the_listener_uid() {
    let Some(rt) = runtime(2) else { return };
    let (_d, path) = socket_path("dial.sock");
    listen_unix(&rt, Arc::new(UnixHooks::default()), &path);
    let got = Arc::new(Mutex::new(Vec::new()));
    let meta = Arc::new(Mutex::new(None));
    let failed = Arc::new(Mutex::new(None));
    let hooks = Box::new(Pinger {
        got: got.clone(),
        meta: meta.clone(),
        failed: failed.clone(),
    });
    if rt
        .dial_unix(&path, Duration::from_secs(5), ConnOptions::default(), hooks)
        .is_err()
    {
        panic!("dial_unix refused");
    }
    eventually("echoed ping", || !got.lock().unwrap().is_empty());
    assert_eq!(got.lock().unwrap()[0], b"ping");
    let me = uid_addr(current_uid());
    assert_eq!(*meta.lock().unwrap(), Some((me, me)));

    // A path nobody listens on: the dial fails with the OS error, no connection.
    let hooks = Box::new(Pinger {
        got: got.clone(),
        meta: Arc::new(Mutex::new(None)),
        failed: failed.clone(),
    });
    let missing = path.with_extension("missing");
    if rt
        .dial_unix(
            &missing,
            Duration::from_secs(5),
            ConnOptions::default(),
            hooks,
        )
        .is_err()
    {
        panic!("dial_unix refused");
    }
    eventually("dial failed", || failed.lock().unwrap().is_some());
    let e = failed.lock().unwrap().clone().unwrap();
    assert!(e.to_lowercase().contains("no such file"), "{e}");
}
