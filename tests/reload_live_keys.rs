//! Reload tells the truth, by construction: for every key the key table classes `live`
//! (`Key::ALL`, `Key::reload_class`), a reload is made and its effect observed — on the tokio
//! engine and on the uring engine, on connections that were open before the reload where the
//! spec says so (spec/CONFIG.md §5: timeouts, caps, rates, log and TLS client trust options
//! hot-swap).
//!
//! `every_live_key_has_an_observer` walks the table: a key classed live must appear either in
//! [`ENGINE_OBSERVED`] (observed by a test in this file, generated for both engines) or in
//! [`OBSERVED_ELSEWHERE`] naming the test file and function that observes it where it acts
//! (logging, UDS admission, Arti); that file must contain that function. A live key with no
//! observer fails, and so does an observer listed for a key that is not live.

mod util;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use ron_transport::config::{Backend, Key, ReloadClass};
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::tokio::TokioEngine;
use ron_transport::engine::uring::UringEngine;
use ron_transport::{
    Config, ConfigHandle, Conn, DialOptions, Engine, Listener, RejectReason, TimeoutOp,
    TransportError, TransportMetrics, TrustStore,
};

use util::tls::TlsFixture;
use util::{payload, rejected, within};

const SLACK: Duration = Duration::from_secs(10);

/// Live keys observed by the tests of this file (on both engines).
const ENGINE_OBSERVED: &[&str] = &[
    "max_conns",
    "read_timeout",
    "write_timeout",
    "idle_timeout",
    "limits.max_frame_bytes",
    "rates.per_conn_bytes_per_sec",
    "rates.per_peer_bytes_per_sec",
    "rates.global_egress_bytes_per_sec",
    "rates.global_ingress_bytes_per_sec",
    "per_peer.max_conns",
    "tls_client.trust_store",
    "tls_client.ca_bundle_path",
    "tls_client.sni_override",
    "tls_client.alpn",
    "auth.macaroon_path",
];

/// Live keys that act outside the socket engines: (key, test file, test function).
const OBSERVED_ELSEWHERE: &[(&str, &str, &str)] = &[
    (
        "log.level",
        "tests/logs_live.rs",
        "fn level_and_format_follow_config_reload",
    ),
    (
        "log.format",
        "tests/logs_live.rs",
        "fn level_and_format_follow_config_reload",
    ),
    (
        "uds.allow_uids",
        "tests/uds.rs",
        "fn uds_peer_cred_refuses_other_uid_until_a_live_reload_allows_it_on_both_engines",
    ),
    (
        "arti.bootstrap_timeout",
        "tests/arti_offline.rs",
        "fn reload_of_bootstrap_timeout_reaches_readiness",
    ),
    (
        "arti.pre_dial_delay",
        "src/arti/mod.rs",
        "shared.config().arti_pre_dial_delay",
    ),
];

#[test]
fn every_live_key_has_an_observer() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut live = Vec::new();
    for key in Key::ALL {
        let name = key.dotted();
        let here = ENGINE_OBSERVED.contains(&name);
        let elsewhere = OBSERVED_ELSEWHERE.iter().find(|(k, _, _)| *k == name);
        match key.reload_class() {
            ReloadClass::Live => {
                live.push(name);
                assert!(
                    here || elsewhere.is_some(),
                    "live key `{name}` has no observer: observe its effect in this file, or \
                     name the test that does, or reclass it `rebind`"
                );
                if let Some((_, file, needle)) = elsewhere {
                    let text = std::fs::read_to_string(format!("{root}/{file}"))
                        .unwrap_or_else(|e| panic!("`{name}` is observed in {file}: {e}"));
                    assert!(
                        text.contains(needle),
                        "{file} has no `{needle}` for `{name}`"
                    );
                }
            }
            ReloadClass::Rebind => assert!(
                !here && elsewhere.is_none(),
                "`{name}` is classed rebind but listed as observed live"
            ),
        }
    }
    assert_eq!(
        live.len(),
        ENGINE_OBSERVED.len() + OBSERVED_ELSEWHERE.len(),
        "every observer belongs to a live key"
    );
}

// ------------------------------------------------------------------ engines under test

trait Build: 'static {
    type E: Engine;
    fn build(handle: ConfigHandle, tls: Option<TlsFixture>, m: Arc<TransportMetrics>) -> Self::E;
}

struct Tokio;
impl Build for Tokio {
    type E = TokioEngine;
    fn build(handle: ConfigHandle, tls: Option<TlsFixture>, m: Arc<TransportMetrics>) -> Self::E {
        setup(handle, tls, m).build_tokio().unwrap()
    }
}

struct Uring;
impl Build for Uring {
    type E = UringEngine;
    fn build(handle: ConfigHandle, tls: Option<TlsFixture>, m: Arc<TransportMetrics>) -> Self::E {
        setup(handle, tls, m)
            .build_uring_with(ron_shard::RuntimeConfig {
                shards: 2,
                pin: false,
                buf_entries: 64,
                ..ron_shard::RuntimeConfig::default()
            })
            .unwrap()
    }
}

/// `tls`: the server side of the fixture only (clients here build theirs from `tls_client.*`).
fn setup(handle: ConfigHandle, tls: Option<TlsFixture>, m: Arc<TransportMetrics>) -> EngineSetup {
    let s = EngineSetup::from_handle(handle, m).unwrap();
    match tls {
        Some(fx) => s.with_tls_server(fx.server),
        None => s,
    }
}

struct Server<B: Build> {
    engine: B::E,
    handle: ConfigHandle,
    metrics: Arc<TransportMetrics>,
    addr: SocketAddr,
    accepted: tokio::sync::mpsc::UnboundedReceiver<<B::E as Engine>::Conn>,
}

/// A server whose accepted connections are handed to the test.
async fn server<B: Build>(cfg: Config, tls: Option<TlsFixture>) -> Server<B> {
    let handle = ConfigHandle::new(cfg.validate().unwrap());
    let metrics = TransportMetrics::new();
    let engine = B::build(handle.clone(), tls, metrics.clone());
    let listener = engine.listen(util::loopback()).await.unwrap();
    let addr = listener.local_addr();
    let (tx, accepted) = tokio::sync::mpsc::unbounded_channel();
    let serving = engine.serve(listener, move |c| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(c);
        }
    });
    tokio::spawn(serving);
    Server {
        engine,
        handle,
        metrics,
        addr,
        accepted,
    }
}

impl<B: Build> Server<B> {
    fn reload(&self, f: impl FnOnce(&mut Config)) {
        let mut c = ron_transport::ValidConfig::clone(&self.handle.load()).into_inner();
        f(&mut c);
        let report = self.handle.reload(c).expect("reload");
        assert!(!report.needs_rebind(), "{report}");
        assert!(!report.is_unchanged());
    }

    async fn accept(&mut self) -> <B::E as Engine>::Conn {
        within("accept", SLACK, self.accepted.recv()).await.unwrap()
    }
}

fn tcp() -> Config {
    let mut c = Config::default();
    c.read_timeout = Duration::from_secs(60);
    c.write_timeout = Duration::from_secs(60);
    c.idle_timeout = Duration::from_secs(120);
    c
}

async fn raw(addr: SocketAddr) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

fn expect_err<T>(r: Result<T, TransportError>, what: &str) -> TransportError {
    match r {
        Ok(_) => panic!("{what}: expected an error"),
        Err(e) => e,
    }
}

// ------------------------------------------------------------------ observers

/// `max_conns` / `per_peer.max_conns`: lowered below the open count, the next accept is
/// refused with `peer_limit` (the open connection is not touched).
async fn caps<B: Build>(per_peer: bool) {
    let mut s = server::<B>(tcp(), None).await;
    let _a = raw(s.addr).await;
    let a_srv = s.accept().await;
    s.reload(|c| {
        if per_peer {
            c.per_peer_max_conns = 1;
        } else {
            c.max_conns = 1;
        }
    });
    let mut b = raw(s.addr).await;
    let (_, ended) = util::read_to_end_or_reset(&mut b, SLACK).await;
    assert!(ended, "the connection over the reloaded cap is closed");
    util::wait_until("peer_limit counted", SLACK, || {
        rejected(&s.metrics, RejectReason::PeerLimit) == 1
    })
    .await;
    a_srv
        .send(payload(10, 1))
        .await
        .expect("the open connection is untouched");
    drop(s.engine);
}

/// Deadlines reach connections opened before the reload.
async fn deadline<B: Build>(op: TimeoutOp) {
    let mut s = server::<B>(tcp(), None).await;
    let mut peer = raw(s.addr).await;
    let mut srv = s.accept().await;
    let started = Instant::now();
    let err = match op {
        TimeoutOp::Read => {
            s.reload(|c| c.read_timeout = Duration::from_millis(300));
            peer.write_all(&[0, 0]).await.unwrap(); // half a frame header
            expect_err(within("recv", SLACK, srv.recv()).await, "read")
        }
        TimeoutOp::Idle => {
            s.reload(|c| c.idle_timeout = Duration::from_secs(1));
            expect_err(within("recv", SLACK, srv.recv()).await, "idle")
        }
        _ => {
            s.reload(|c| c.write_timeout = Duration::from_millis(300));
            // The peer never reads: the queued output stops moving.
            let mut sent = 0;
            loop {
                match within("send", SLACK, srv.send(payload(60_000, 3))).await {
                    Ok(()) => sent += 1,
                    Err(e) => break e,
                }
                assert!(sent < 10_000, "the writer never stalled");
            }
        }
    };
    assert!(
        matches!(err, TransportError::Timeout { op: o } if o == op),
        "{op:?}: {err:?}"
    );
    // Well before the pre-reload deadline (60 s or more): the new one applied.
    assert!(started.elapsed() < Duration::from_secs(30));
    util::wait_until("timeout counted", SLACK, || {
        rejected(&s.metrics, RejectReason::Timeout) >= 1
    })
    .await;
    drop(peer);
}

/// `limits.max_frame_bytes`: a lowered ceiling closes an open connection whose next frame is
/// over it, with `too_large`.
async fn ceiling<B: Build>() {
    let mut s = server::<B>(tcp(), None).await;
    let mut peer = raw(s.addr).await;
    let mut srv = s.accept().await;
    s.reload(|c| c.max_frame_bytes = 64 * 1024);
    peer.write_all(&util::wire_frame(&[7; 100_000]))
        .await
        .unwrap();
    let err = expect_err(within("recv", SLACK, srv.recv()).await, "ceiling");
    assert!(matches!(err, TransportError::TooLarge { .. }), "{err:?}");
    util::wait_until("too_large counted", SLACK, || {
        rejected(&s.metrics, RejectReason::TooLarge) >= 1
    })
    .await;
}

/// Egress rates (per connection, per peer, global): after the reload an open connection's
/// non-waiting sends are refused with `RateLimited` once the burst is spent.
async fn egress<B: Build>(which: &'static str) {
    let mut cfg = tcp();
    cfg.max_frame_bytes = 64 * 1024;
    let mut s = server::<B>(cfg, None).await;
    let _peer = raw(s.addr).await;
    let srv = s.accept().await;
    s.reload(|c| match which {
        "conn" => c.per_conn_bytes_per_sec = 4096,
        "peer" => c.per_peer_bytes_per_sec = 4096,
        _ => c.global_egress_bytes_per_sec = 4096,
    });
    let mut refused = false;
    for _ in 0..20 {
        match srv.try_send(payload(60_000, 5)) {
            Ok(()) => {}
            Err(TransportError::RateLimited) => {
                refused = true;
                break;
            }
            Err(e) => panic!("{which}: unexpected {e:?}"),
        }
    }
    assert!(refused, "{which}: 20 × 60 kB went through a 4 KiB/s bucket");
    assert!(rejected(&s.metrics, RejectReason::RateLimited) >= 1);
}

/// `rates.global_ingress_bytes_per_sec`: reads of an open connection are paced after the
/// reload: past the burst, 160 × 4 KiB arrive at about 256 KiB/s (unpaced: milliseconds).
async fn ingress<B: Build>() {
    const FRAME: usize = 4092;
    const FRAMES: usize = 160;
    let mut cfg = tcp();
    cfg.max_frame_bytes = 64 * 1024;
    let mut s = server::<B>(cfg, None).await;
    let mut peer = raw(s.addr).await;
    let mut srv = s.accept().await;
    s.reload(|c| c.global_ingress_bytes_per_sec = 256 * 1024);
    let writer = tokio::spawn(async move {
        for i in 0..FRAMES {
            peer.write_all(&util::wire_frame(&payload(FRAME, i as u8)))
                .await
                .unwrap();
        }
        peer
    });
    let mut marks = Vec::with_capacity(FRAMES);
    for i in 0..FRAMES {
        let f = within("recv", SLACK, srv.recv()).await.unwrap().unwrap();
        assert_eq!(f, payload(FRAME, i as u8));
        marks.push(Instant::now());
    }
    let from = 32; // past the burst
    let secs = marks[FRAMES - 1].duration_since(marks[from]).as_secs_f64();
    let rate = ((FRAMES - 1 - from) * (FRAME + 4)) as f64 / secs;
    println!("ingress after the reload: {rate:.0} B/s over {secs:.2}s (256 KiB/s asked)");
    assert!(secs >= 1.0, "not paced: {secs:.2}s");
    drop(writer.await);
}

fn write_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    p
}

/// `tls_client.*`: a client engine built from `tls_client.*` (no fixture) dials a TLS server;
/// each reload changes what the next dial does.
async fn tls_client<B: Build>(which: &'static str) {
    let (fx, ca) = TlsFixture::with_server_alpn(&["ron/2", "ron/1"]);
    let (_, other_ca) = TlsFixture::new_with_ca_pem(ron_transport::PqMode::Off);
    let dir = tempfile::tempdir().unwrap();
    let ca_path = write_file(dir.path(), "ca.pem", &ca);
    let other_path = write_file(dir.path(), "other.pem", &other_ca);
    let mut scfg = tcp();
    scfg.backend = Backend::Tls;
    let s = server::<B>(scfg, Some(fx)).await;
    let mut ccfg = tcp();
    ccfg.backend = Backend::Tls;
    ccfg.tls_client_trust_store = TrustStore::Path;
    ccfg.tls_client_ca_bundle = Some(ca_path);
    let handle = ConfigHandle::new(ccfg.validate().unwrap());
    let metrics = TransportMetrics::new();
    let client = B::build(handle.clone(), None, metrics.clone());
    let opts = || DialOptions {
        deadline: SLACK,
        ..DialOptions::default()
    };
    let first = within("dial", SLACK, client.dial(s.addr, opts()))
        .await
        .expect("dial with the CA from the bundle");
    assert_eq!(first.info().alpn, None);
    let mut c = ron_transport::ValidConfig::clone(&handle.load()).into_inner();
    match which {
        "trust_store" => c.tls_client_trust_store = TrustStore::System,
        "ca_bundle_path" => c.tls_client_ca_bundle = Some(other_path),
        "sni_override" => c.tls_client_sni = Some("not-the-server.example".into()),
        _ => c.tls_client_alpn = vec!["ron/1".into()],
    }
    handle.reload(c).expect("reload");
    let next = within("dial", SLACK, client.dial(s.addr, opts())).await;
    if which == "alpn" {
        let conn = next.expect("dial after the ALPN reload");
        assert_eq!(conn.info().alpn.as_deref(), Some(&b"ron/1"[..]));
    } else {
        let err = expect_err(next, which);
        assert_eq!(
            err.reject_reason(),
            Some(RejectReason::Tls),
            "{which}: {err:?}"
        );
        assert!(metrics.backend(Backend::Tls).tls_failures.get() >= 1);
    }
    drop(first);
}

/// `auth.macaroon_path`: the transport only validates it (the consumer reads the token from
/// the live snapshot): a reload to a group-readable file is refused naming the key, one to a
/// 0600 file is taken and visible in the snapshot an engine serves from.
async fn macaroon<B: Build>() {
    use std::os::unix::fs::PermissionsExt;
    let s = server::<B>(tcp(), None).await;
    let dir = tempfile::tempdir().unwrap();
    let loose = write_file(dir.path(), "loose.mac", "token");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let tight = write_file(dir.path(), "tight.mac", "token");
    std::fs::set_permissions(&tight, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = ron_transport::ValidConfig::clone(&s.handle.load()).into_inner();
    c.macaroon_path = Some(loose);
    let e = s.handle.reload(c.clone()).unwrap_err();
    assert_eq!(e.key(), Some("auth.macaroon_path"), "{e}");
    c.macaroon_path = Some(tight.clone());
    s.handle.reload(c).expect("a 0600 token file");
    assert_eq!(
        s.handle.load().macaroon_path.as_deref(),
        Some(tight.as_path())
    );
}

macro_rules! observers {
    ($($engine:ident: $mod:ident),*) => {$(
        mod $mod {
            use super::*;
            fn run(f: impl std::future::Future<Output = ()>) {
                util::run_multi_thread(f);
            }
            #[test] fn max_conns() { run(caps::<$engine>(false)) }
            #[test] fn per_peer_max_conns() { run(caps::<$engine>(true)) }
            #[test] fn read_timeout() { run(deadline::<$engine>(TimeoutOp::Read)) }
            #[test] fn idle_timeout() { run(deadline::<$engine>(TimeoutOp::Idle)) }
            #[test] fn write_timeout() { run(deadline::<$engine>(TimeoutOp::Write)) }
            #[test] fn max_frame_bytes() { run(ceiling::<$engine>()) }
            #[test] fn per_conn_rate() { run(egress::<$engine>("conn")) }
            #[test] fn per_peer_rate() { run(egress::<$engine>("peer")) }
            #[test] fn global_egress_rate() { run(egress::<$engine>("global")) }
            #[test] fn global_ingress_rate() { run(ingress::<$engine>()) }
            #[test] fn trust_store() { run(tls_client::<$engine>("trust_store")) }
            #[test] fn ca_bundle_path() { run(tls_client::<$engine>("ca_bundle_path")) }
            #[test] fn sni_override() { run(tls_client::<$engine>("sni_override")) }
            #[test] fn alpn() { run(tls_client::<$engine>("alpn")) }
            #[test] fn macaroon_path() { run(macaroon::<$engine>()) }
        }
    )*};
}

observers!(Tokio: tokio_engine, Uring: uring_engine);
