//! TLS after the handshake against independent peers over loopback sockets, with KeyUpdates
//! sent from each side: tokio-rustls (`refresh_traffic_keys`) and OpenSSL's `s_client` /
//! `s_server` (their `K` command: KeyUpdate with update_requested), in both roles, on both
//! engines. On the uring engine the connection runs on the shards' own record layer
//! (`ron_shard::tls_record`) once the handshake is done, so these are its interop tests; the
//! tokio engine (tokio-rustls) runs the same cases as the reference. Our side also initiates
//! KeyUpdates (`RuntimeConfig::tls_key_update_records`), which OpenSSL must accept while the
//! data keeps flowing. The `openssl` binary is required (.ci/run installs it).

mod util;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use ron_shard::RuntimeConfig;
use ron_transport::config::Backend;
use ron_transport::engine::setup::EngineSetup;
use ron_transport::engine::uring::UringEngine;
use ron_transport::engine::DialOptions;
use ron_transport::rustls::pki_types::ServerName;
use ron_transport::{Config, Conn, Engine, Listener, TransportMetrics};

use util::engines::{EngineKind, TokioEng, UringEng};
use util::tls::{openssl, PemMaterial};
use util::{loopback, run_multi_thread, spawn_echo, wire_frame, within};

const SLACK: Duration = Duration::from_secs(15);

type Material = PemMaterial;

fn material() -> Material {
    PemMaterial::new()
}

fn tls_config() -> ron_transport::ValidConfig {
    let mut c = Config::default();
    c.backend = Backend::Tls;
    c.bind_addr = Some(loopback());
    c.validate().unwrap()
}

/// A uring engine whose TLS connections send a KeyUpdate every `every` records.
fn uring_rekeying(m: &Material, every: u64) -> UringEngine {
    EngineSetup::new(tls_config(), TransportMetrics::new())
        .unwrap()
        .with_tls_server(m.fixture.server.clone())
        .with_tls_client(m.fixture.client.clone())
        .build_uring_with(RuntimeConfig {
            shards: 1,
            pin: false,
            buf_entries: 64,
            tls_key_update_records: Some(every),
            ..RuntimeConfig::default()
        })
        .expect("uring engine")
}

/// KeyUpdates (sent, received) and connections on the own record layer, over all shards.
fn uring_counts(e: &UringEngine) -> (u64, u64, u64) {
    e.shard_stats().iter().fold((0, 0, 0), |a, s| {
        (
            a.0 + s.tls_key_updates_sent,
            a.1 + s.tls_key_updates_received,
            a.2 + s.tls_record_layer,
        )
    })
}

fn dial_opts() -> DialOptions {
    DialOptions {
        deadline: Duration::from_secs(5),
        ..DialOptions::default()
    }
}

/// A payload of `n` bytes that names its frame.
fn payload(i: usize, n: usize) -> Vec<u8> {
    (0..n).map(|j| (i * 131 + j * 7) as u8).collect()
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.expect("frame header");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut body).await.expect("frame body");
    body
}

// ------------------------------------------------------------------ tokio-rustls peers

const SIZES: [usize; 6] = [1, 1000, 16_384, 16_385, 70_000, 200_000];

/// A tokio-rustls client asks for a KeyUpdate before every second frame; the engine's echo
/// server answers them and every frame comes back intact.
async fn rustls_client_key_updates<E: Engine>(server: E, m: &Material) {
    let listener = server.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let echo = spawn_echo(&server, listener);
    let connector = TlsConnector::from(m.fixture.client.clone());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    for (i, n) in SIZES.iter().copied().cycle().take(18).enumerate() {
        if i % 2 == 1 {
            tls.get_mut().1.refresh_traffic_keys().unwrap();
        }
        let p = payload(i, n);
        tls.write_all(&wire_frame(&p)).await.unwrap();
        tls.flush().await.unwrap();
        let back = within("echo", SLACK, read_frame(&mut tls)).await;
        assert!(back == p, "frame {i} ({n} bytes) came back different");
    }
    echo.abort();
}

/// The engine dials a tokio-rustls echo server that asks for a KeyUpdate before every echo.
async fn rustls_server_key_updates<E: Engine>(client: E, m: &Material) {
    let l = TcpListener::bind(loopback()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(m.fixture.server.clone());
    let peer = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        for _ in 0..12 {
            let f = read_frame(&mut tls).await;
            tls.get_mut().1.refresh_traffic_keys().unwrap();
            tls.write_all(&wire_frame(&f)).await.unwrap();
            tls.flush().await.unwrap();
        }
        // Read on until our close: our answer to the last KeyUpdate request is still on its
        // way, and closing with it unread would reset the connection under the last echo.
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "no data after the last echo");
    });
    let mut conn = within("dial", SLACK, client.dial(addr, dial_opts()))
        .await
        .unwrap();
    for (i, n) in SIZES.iter().copied().cycle().take(12).enumerate() {
        let p = payload(i, n);
        conn.send(Bytes::from(p.clone())).await.unwrap();
        let back = within("echo", SLACK, conn.recv()).await.unwrap().unwrap();
        assert!(
            back[..] == p[..],
            "frame {i} ({n} bytes) came back different"
        );
    }
    let _ = conn.close().await;
    within("peer", SLACK, peer).await.unwrap();
}

// ------------------------------------------------------------------ OpenSSL peers

/// A child's stdout, read until it contains every marker.
struct Output {
    out: tokio::process::ChildStdout,
    text: Vec<u8>,
}

impl Output {
    async fn wait_for(&mut self, what: &str, markers: &[&[u8]]) {
        let text = &mut self.text;
        let out = &mut self.out;
        let r = tokio::time::timeout(SLACK, async {
            let mut buf = [0u8; 8192];
            loop {
                if markers.iter().all(|m| contains(text, m)) {
                    return;
                }
                match out.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        panic!("{what}: output ended:\n{}", String::from_utf8_lossy(text))
                    }
                    Ok(n) => text.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        if r.is_err() {
            panic!(
                "timed out after {SLACK:?}: {what}; output:\n{}",
                String::from_utf8_lossy(&self.text)
            );
        }
    }

    async fn wait_until(&mut self, what: &str, cond: impl Fn(&Self) -> bool) {
        let r = tokio::time::timeout(SLACK, async {
            let mut buf = [0u8; 8192];
            while !cond(self) {
                match self.out.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => self.text.extend_from_slice(&buf[..n]),
                }
            }
            true
        })
        .await;
        if r != Ok(true) {
            panic!(
                "{what}: not seen; output:\n{}",
                String::from_utf8_lossy(&self.text)
            );
        }
    }

    fn count(&self, needle: &[u8]) -> usize {
        self.text
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const KU_RECEIVED: &[u8] = b"<<< TLS 1.3, Handshake [length 0005], KeyUpdate";
const KU_SENT: &[u8] = b">>> TLS 1.3, Handshake [length 0005], KeyUpdate";

/// `openssl s_client -msg` sends frames to the engine's echo server, with a KeyUpdate
/// (update_requested, its `K` command) between them; the server's answer is seen by OpenSSL
/// and the frames keep coming back. With `rekey`, our side also sends KeyUpdates on its own.
async fn openssl_client<E: Engine>(server: &E, rekey: bool) -> Output {
    let listener = server.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let echo = spawn_echo(server, listener);
    let mut child = openssl()
        .args(["s_client", "-connect", &addr.to_string(), "-tls1_3", "-msg"])
        .args(["-servername", "localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl s_client");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = Output {
        out: child.stdout.take().unwrap(),
        text: Vec::new(),
    };
    // s_client reports a `K` command on stderr ("KEYUPDATE"): collect it, so the next frame
    // is written only after the command was read on its own.
    let err_text = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = err_text.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let commands = |t: &Arc<std::sync::Mutex<Vec<u8>>>| {
        let t = t.lock().unwrap();
        t.windows(9).filter(|w| *w == b"KEYUPDATE").count()
    };
    // Printable payloads (s_client prints what it receives); a frame's length prefix starts
    // with a zero byte, so s_client never takes a frame for one of its commands.
    for i in 0..6 {
        let mark = format!(
            "openssl-frame-{i}-{}",
            "x".repeat(if rekey { 3000 } else { 10 })
        );
        stdin.write_all(&wire_frame(mark.as_bytes())).await.unwrap();
        stdin.flush().await.unwrap();
        out.wait_for("echo from the engine", &[mark.as_bytes()])
            .await;
        if i % 2 == 0 {
            // s_client reads "K\n" in one read: SSL_key_update(REQUESTED), sent with the
            // next write.
            let before = commands(&err_text);
            stdin.write_all(b"K\n").await.unwrap();
            stdin.flush().await.unwrap();
            util::wait_until("s_client read its K command", SLACK, || {
                commands(&err_text) > before
            })
            .await;
        }
    }
    out.wait_for("s_client saw KeyUpdates", &[KU_SENT, KU_RECEIVED])
        .await;
    drop(stdin);
    let _ = within("s_client exit", SLACK, child.wait()).await;
    echo.abort();
    out
}

/// The engine dials `openssl s_server -msg`; s_server asks for a KeyUpdate (`K`) between the
/// frames it sends; our answers are seen by OpenSSL and data flows both ways throughout.
async fn openssl_server<E: Engine>(client: &E, m: &Material, rekey: bool) -> Output {
    let (mut child, addr, _pem_dir) = m.s_server(&["-msg"]);
    let mut stdin = child.stdin.take().unwrap();
    let mut out = Output {
        out: child.stdout.take().unwrap(),
        text: Vec::new(),
    };
    out.wait_for("s_server ACCEPT", &[b"ACCEPT"]).await;
    let mut conn = within("dial", SLACK, client.dial(addr, dial_opts()))
        .await
        .unwrap();
    for i in 0..6 {
        // Ours to OpenSSL: s_server prints it.
        let up = format!(
            "engine-frame-{i}-{}",
            "y".repeat(if rekey { 3000 } else { 10 })
        );
        conn.send(Bytes::from(up.clone().into_bytes()))
            .await
            .unwrap();
        out.wait_for("s_server got our frame", &[up.as_bytes()])
            .await;
        if i % 2 == 0 {
            stdin.write_all(b"K\n").await.unwrap();
            stdin.flush().await.unwrap();
            // Its stdout is buffered: the KeyUpdate line shows once it went out.
            let before = out.count(KU_SENT);
            out.wait_until("s_server sent its KeyUpdate", |o| o.count(KU_SENT) > before)
                .await;
        }
        // OpenSSL's to ours: stdin bytes go out as they are, so write a whole frame.
        let down = format!("openssl-frame-{i}");
        stdin.write_all(&wire_frame(down.as_bytes())).await.unwrap();
        stdin.flush().await.unwrap();
        let got = within("frame from s_server", SLACK, conn.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], down.as_bytes());
    }
    out.wait_for("s_server saw our KeyUpdates", &[KU_RECEIVED, KU_SENT])
        .await;
    let _ = conn.close().await;
    let _ = child.kill().await;
    out
}

fn engine<K: EngineKind>(m: &Material) -> K::E {
    K::build(tls_config(), Some(&m.fixture), TransportMetrics::new())
}

async fn rustls_peers<K: EngineKind>() {
    let m = material();
    let server = engine::<K>(&m);
    rustls_client_key_updates(server, &m).await;
    let client = engine::<K>(&m);
    rustls_server_key_updates(client, &m).await;
}

async fn openssl_peers<K: EngineKind>() {
    let m = material();
    let e = engine::<K>(&m);
    let out = openssl_client(&e, false).await;
    assert!(out.count(KU_RECEIVED) >= 3, "one answer per request");
    let out = openssl_server(&e, &m, false).await;
    assert!(out.count(KU_RECEIVED) >= 3, "one answer per request");
    e.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn tokio_engine_with_rustls_peers() {
    run_multi_thread(rustls_peers::<TokioEng>());
}

#[test]
fn uring_engine_with_rustls_peers() {
    run_multi_thread(rustls_peers::<UringEng>());
}

#[test]
fn tokio_engine_with_openssl_peers() {
    run_multi_thread(openssl_peers::<TokioEng>());
}

#[test]
fn uring_engine_with_openssl_peers() {
    run_multi_thread(async {
        let m = material();
        let e = engine::<UringEng>(&m);
        let out = openssl_client(&e, false).await;
        assert!(out.count(KU_RECEIVED) >= 3, "one answer per request");
        let out = openssl_server(&e, &m, false).await;
        assert!(out.count(KU_RECEIVED) >= 3, "one answer per request");
        let (sent, received, record_layer) = uring_counts(&e);
        assert_eq!(
            record_layer, 2,
            "both connections ran on the own record layer"
        );
        assert!(
            received >= 6 && sent >= 6,
            "sent {sent}, received {received}"
        );
        e.shutdown(Duration::from_secs(2)).await;
    });
}

/// Our side sends KeyUpdates on its own (every 2 records), to OpenSSL as a server and as a
/// client, while OpenSSL also asks for them.
#[test]
fn uring_engine_initiates_key_updates_with_openssl() {
    run_multi_thread(async {
        let m = material();
        let e = uring_rekeying(&m, 2);
        let out = openssl_client(&e, true).await;
        let (sent_server, ..) = uring_counts(&e);
        // 3 answers, plus the ones of our own (at least one per two records sent).
        assert!(sent_server >= 5, "server sent {sent_server} KeyUpdates");
        assert!(out.count(KU_RECEIVED) as u64 >= sent_server);
        let out = openssl_server(&e, &m, true).await;
        let (sent, ..) = uring_counts(&e);
        assert!(
            sent - sent_server >= 5,
            "client sent {} KeyUpdates",
            sent - sent_server
        );
        assert!(out.count(KU_RECEIVED) as u64 >= sent - sent_server);
        e.shutdown(Duration::from_secs(2)).await;
    });
}

// ------------------------------------------------------------------ tampered records

/// A rustls client over a plain socket sends a good frame, then the next record with one bit
/// flipped (or the first record again, replayed): the engine's connection fails with kind `tls`
/// (the handler's `recv` says so), the client gets a `bad_record_mac` alert, and nothing from
/// the tampered record reaches the handler.
async fn tampered_record_fails_the_connection<K: EngineKind>() {
    use std::io::{Read, Write};
    let m = material();
    let server = engine::<K>(&m);
    let listener = server.listen(loopback()).await.unwrap();
    let addr = listener.local_addr();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Vec<u8>, String>>();
    let serving = server.serve(listener, move |mut conn: <K::E as Engine>::Conn| {
        let tx = tx.clone();
        async move {
            loop {
                match conn.recv().await {
                    Ok(Some(f)) => {
                        let _ = tx.send(Ok(f.to_vec()));
                        if conn.send(f).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e.kind().to_string()));
                        break;
                    }
                }
            }
        }
    });
    let serving = tokio::spawn(async move {
        let _ = serving.await;
    });
    for tamper in ["flip", "replay"] {
        let client_cfg = m.fixture.client.clone();
        let alert = tokio::task::spawn_blocking(move || {
            let mut sock = std::net::TcpStream::connect(addr).unwrap();
            sock.set_read_timeout(Some(SLACK)).unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = rustls::ClientConnection::new(client_cfg, name).unwrap();
            while tls.is_handshaking() {
                tls.complete_io(&mut sock).unwrap();
            }
            // A good frame first, echoed.
            let seal = |tls: &mut rustls::ClientConnection, payload: &[u8]| {
                tls.writer().write_all(&wire_frame(payload)).unwrap();
                let mut rec = Vec::new();
                while tls.wants_write() {
                    tls.write_tls(&mut rec).unwrap();
                }
                rec
            };
            let good = seal(&mut tls, b"good frame");
            sock.write_all(&good).unwrap();
            let mut echoed = Vec::new();
            while echoed.len() < 14 {
                tls.complete_io(&mut sock).unwrap();
                let mut buf = [0u8; 64];
                if let Ok(n) = tls.reader().read(&mut buf) {
                    echoed.extend_from_slice(&buf[..n]);
                }
            }
            let bad = match tamper {
                "flip" => {
                    let mut rec = seal(&mut tls, b"tampered frame");
                    let mid = rec.len() / 2;
                    rec[mid] ^= 0x04;
                    rec
                }
                _ => good,
            };
            sock.write_all(&bad).unwrap();
            // The server answers with a fatal alert and closes.
            let mut wire = Vec::new();
            let _ = sock.read_to_end(&mut wire);
            let mut rd = &wire[..];
            let mut err = None;
            while !rd.is_empty() && err.is_none() {
                if tls.read_tls(&mut rd).is_err() {
                    break;
                }
                err = tls.process_new_packets().err();
            }
            err
        })
        .await
        .unwrap();
        assert_eq!(
            alert,
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::BadRecordMac
            )),
            "{tamper}: the client must get bad_record_mac"
        );
        let first = within("good frame", SLACK, rx.recv()).await.unwrap();
        assert_eq!(first.unwrap(), wire_frame(b"good frame")[4..].to_vec());
        let second = within("failure", SLACK, rx.recv()).await.unwrap();
        assert_eq!(second, Err("tls".to_string()), "{tamper}");
    }
    serving.abort();
    server.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn tokio_engine_fails_tampered_records() {
    run_multi_thread(tampered_record_fails_the_connection::<TokioEng>());
}

#[test]
fn uring_engine_fails_tampered_records() {
    run_multi_thread(tampered_record_fails_the_connection::<UringEng>());
}
