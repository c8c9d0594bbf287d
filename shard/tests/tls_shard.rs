//! TLS on the shards, end to end over loopback: a shard-local echo handler behind
//! `Runtime::listen_tls`, driven by an independent peer (rustls' buffered `StreamOwned` over a
//! blocking socket). Checks in-place decryption, assembly of records that span receive
//! buffers, handshake facts, close_notify, and handshake failure/timeout reporting.

mod common;
#[path = "tls_pump_util.rs"]
mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, runtime, total};
use ron_shard::{
    bind, AcceptHooks, AdmitToken, CloseReason, ConnCtx, ConnHandler, ConnMeta, ConnOptions,
    ConnRemote, Frame, HandshakeFailure, Reject, TimeoutKind, Timeouts, TlsFacts,
};
use util::{client_config, localhost, server_config, Pki, Prov};

#[derive(Default)]
struct Record {
    facts: Mutex<Vec<Option<TlsFacts>>>,
    closes: Mutex<Vec<CloseReason>>,
    failures: Mutex<Vec<HandshakeFailure>>,
    in_place: Mutex<u64>,
}

struct Echo(Arc<Record>);

impl ConnHandler for Echo {
    fn on_frame(&mut self, ctx: &mut ConnCtx<'_>, frame: Frame<'_>) {
        if frame.payload() == b"close-me" {
            ctx.close();
            return;
        }
        if frame.is_in_place() {
            *self.0.in_place.lock().unwrap() += 1;
        }
        ctx.send_frame(&frame).expect("queue echo");
    }

    fn on_close(&mut self, reason: &CloseReason) {
        self.0.closes.lock().unwrap().push(reason.clone());
    }
}

struct Hooks(Arc<Record>);

impl AcceptHooks for Hooks {
    fn admit(&self, _peer: SocketAddr) -> Result<AdmitToken, Reject> {
        Ok(AdmitToken::empty())
    }

    fn open(&self, _t: AdmitToken, meta: &ConnMeta, _r: ConnRemote) -> Box<dyn ConnHandler> {
        self.0
            .facts
            .lock()
            .unwrap()
            .push(meta.tls.as_deref().cloned());
        Box::new(Echo(self.0.clone()))
    }

    fn handshake_failed(&self, _t: AdmitToken, _meta: &ConnMeta, f: &HandshakeFailure) {
        self.0.failures.lock().unwrap().push(f.clone());
    }
}

fn tls_client(
    pki: &Pki,
    addr: SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let cfg = client_config(&pki.ca_der, Prov::AwsHybrid, &[b"ron/1"]);
    let conn = rustls::ClientConnection::new(cfg, localhost()).expect("client");
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.set_nodelay(true).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

fn write_frame(s: &mut impl Write, payload: &[u8]) {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    s.write_all(&v).unwrap();
    s.flush().unwrap();
}

fn read_frame(s: &mut impl Read) -> Vec<u8> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).unwrap();
    let mut p = vec![0u8; u32::from_be_bytes(h) as usize];
    s.read_exact(&mut p).unwrap();
    p
}

#[test]
fn echo_over_tls_in_place_and_assembled_then_close_notify() {
    let Some(rt) = runtime(2) else { return };
    let pki = Pki::new();
    let rec = Arc::new(Record::default());
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    let scfg = server_config(&pki, Prov::AwsHybrid, &[b"ron/1"]);
    rt.listen_tls(
        l,
        ConnOptions::default(),
        scfg,
        Arc::new(Hooks(rec.clone())),
    )
    .unwrap();

    let mut c = tls_client(&pki, addr);
    // Around the 16 KiB receive buffers, the 16 KiB record size and the 64 KiB chunk.
    let sizes = [
        0usize,
        1,
        100,
        16 * 1024 - 4,
        16 * 1024,
        40_000,
        64 * 1024,
        200_000,
        1 << 20,
    ];
    for (i, n) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..*n).map(|j| (i + j) as u8).collect();
        write_frame(&mut c, &payload);
        assert_eq!(read_frame(&mut c), payload, "size {n}");
    }
    // Many small frames in few records: delivered in place from the decrypted buffer.
    let mut burst = Vec::new();
    for i in 0..500u32 {
        burst.extend_from_slice(&4u32.to_be_bytes());
        burst.extend_from_slice(&i.to_be_bytes());
    }
    c.write_all(&burst).unwrap();
    c.flush().unwrap();
    for i in 0..500u32 {
        assert_eq!(read_frame(&mut c), i.to_be_bytes());
    }

    let facts = rec.facts.lock().unwrap().clone();
    assert_eq!(facts.len(), 1);
    let f = facts[0].clone().expect("TLS facts on a TLS connection");
    assert!(f.hybrid_pq, "both offered X25519MLKEM768");
    assert_eq!(f.group, Some(rustls::NamedGroup::X25519MLKEM768));
    assert_eq!(f.alpn.as_deref(), Some(&b"ron/1"[..]));
    assert!(!f.resumed);

    let s = total(&rt);
    assert_eq!(s.tls_handshakes, 1);
    assert_eq!(s.tls_handshake_failed, 0);
    assert_eq!(s.frames_in, (sizes.len() + 500) as u64);
    assert!(s.tls_records_in_place > 0, "{s:?}");
    assert!(
        s.tls_assembled > 0,
        "1 MiB over 16 KiB buffers spans: {s:?}"
    );
    assert!(
        *rec.in_place.lock().unwrap() > 0,
        "in-place frames reached the handler"
    );
    assert!(s.tls_encrypt_passes > 0);

    // Handler-initiated graceful close: close_notify, then FIN. rustls reports a clean end
    // (Ok(0)) only if close_notify arrived; a bare FIN would be UnexpectedEof.
    write_frame(&mut c, b"close-me");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("clean close_notify");
    assert!(rest.is_empty());
    eventually("close recorded", || {
        rec.closes.lock().unwrap().as_slice() == [CloseReason::Local]
    });
    assert_eq!(total(&rt).open, 0);
}

#[test]
fn handshake_timeout_and_failure_are_reported_to_the_hooks() {
    let Some(rt) = runtime(1) else { return };
    let pki = Pki::new();
    let rec = Arc::new(Record::default());
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    let opts = ConnOptions {
        timeouts: Timeouts {
            read: Some(Duration::from_millis(200)),
            write: None,
            idle: None,
        },
        ..ConnOptions::default()
    };
    let scfg = server_config(&pki, Prov::AwsClassical, &[]);
    rt.listen_tls(l, opts, scfg, Arc::new(Hooks(rec.clone())))
        .unwrap();

    // Slow loris: connects, never sends a ClientHello.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 16];
    assert_eq!(idle.read(&mut b).unwrap_or(0), 0, "closed by the deadline");
    eventually("timeout reported", || {
        rec.failures.lock().unwrap().len() == 1
    });
    let f = rec.failures.lock().unwrap()[0].clone();
    assert_eq!(f.reason, CloseReason::Timeout(TimeoutKind::Handshake));
    assert_eq!(f.reason.as_str(), "timeout");
    assert!(f.elapsed >= Duration::from_millis(150), "{:?}", f.elapsed);

    // Not TLS at all: a TLS failure (the alert is flushed, then the socket closes).
    let mut junk = TcpStream::connect(addr).unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = junk.read_to_end(&mut got);
    eventually("tls failure reported", || {
        rec.failures.lock().unwrap().len() == 2
    });
    let f = rec.failures.lock().unwrap()[1].clone();
    assert!(matches!(f.reason, CloseReason::Tls(_)), "{:?}", f.reason);
    assert_eq!(f.reason.as_str(), "tls");
    if let Some(&first) = got.first() {
        assert_eq!(first, 0x15, "an alert record went out before the close");
    }

    let s = total(&rt);
    assert_eq!((s.tls_handshakes, s.tls_handshake_failed), (0, 2));
    assert!(rec.facts.lock().unwrap().is_empty(), "open never ran");
    assert!(rec.closes.lock().unwrap().is_empty());
    eventually("nothing open", || total(&rt).open == 0);
}

/// Issue 12 finding 6: a TLS handshake that completes while the runtime drains opens no
/// handler; the hooks hear `handshake_failed(Shutdown)`. Before, `open` ran during the drain.
#[test]
fn a_handshake_completing_during_drain_opens_no_handler() {
    let Some(rt) = runtime(1) else { return };
    let pki = Pki::new();
    let rec = Arc::new(Record::default());
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen_tls(
        l,
        ConnOptions::default(),
        server_config(&pki, Prov::AwsHybrid, &[b"ron/1"]),
        Arc::new(Hooks(rec.clone())),
    )
    .unwrap();
    // Connected (and admitted) before the drain, handshake only after it began.
    let mut c = tls_client(&pki, addr);
    eventually("accepted", || total(&rt).accepted == 1);
    let shutdown = rt.shutdown(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(100));
    let _ = c.write_all(&[0, 0, 0, 1, 7]);
    let _ = c.flush();
    let mut buf = [0u8; 8];
    let _ = c.read(&mut buf);
    shutdown.wait();
    assert!(
        rec.facts.lock().unwrap().is_empty(),
        "no handler was opened during the drain"
    );
    let failures = rec.failures.lock().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].reason, CloseReason::Shutdown);
}
