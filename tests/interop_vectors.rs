//! The OAP/1 interop vectors of spec/INTEROP.md §4 (`tests/vectors/oap1.json`) over every
//! transport in [`TRANSPORTS`] (tcp, tls, uds and, with feature `quic`, quic) on both engines.
//!
//! A test-support OAP host (`host`, built on `tests/util/oap.rs`; the transport itself never
//! parses OAP) serves each connection: HELLO gets the §4.1 answer, a plain request gets
//! `200` with its payload length, a `COMP` request is inflated through the transport's
//! [`InflateGuard`] and gets `200` with the inflated length or `413` on `TooLarge`. A dialing
//! engine then sends every vector and checks the answer. The frame one byte over
//! `max_frame_bytes` is checked on both sides: the dialer's transport refuses to send it
//! (`too_large`), and a raw peer that sends it anyway has its connection closed by the
//! listening transport before the body is read, counted as `rejected_total{reason="too_large"}`.

mod util;

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use ron_transport::config::Backend;
use ron_transport::engine::{DialOptions, DialTarget, ListenTarget};
use ron_transport::limits::{Codec, InflateGuard};
use ron_transport::{
    Config, Conn, Engine, Listener, PqMode, RejectReason, TransportError, TransportMetrics,
};

use util::engines::EngineKind;
use util::oap::{self, Frame};
use util::tls::TlsFixture;
use util::{loopback, rejected, wait_until, within};

const SLACK: Duration = Duration::from_secs(10);
const VECTORS: &str = include_str!("vectors/oap1.json");

// ------------------------------------------------------------------ transports

/// A byte stream a raw peer writes arbitrary bytes on.
trait RawStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> RawStream for T {}

type RawConnect =
    fn(DialTarget, TlsFixture) -> Pin<Box<dyn Future<Output = Box<dyn RawStream>> + Send>>;

/// One transport the vectors run over. Adding a transport (uds, arti) is one more line in
/// [`TRANSPORTS`] naming its backend, listen target and raw peer.
struct Transport {
    name: &'static str,
    backend: Backend,
    /// Where the server listens; `dir` is a private (0700) temporary directory.
    listen: fn(dir: &Path) -> ListenTarget,
    /// A raw client on the transport's byte stream (no framing), for the oversize frame.
    raw: RawConnect,
}

#[rustfmt::skip] // one line per transport
const TRANSPORTS: &[Transport] = &[
    Transport { name: "tcp", backend: Backend::Tcp, listen: listen_loopback, raw: raw_tcp },
    Transport { name: "tls", backend: Backend::Tls, listen: listen_loopback, raw: raw_tls },
    Transport { name: "uds", backend: Backend::Tcp, listen: listen_unix, raw: raw_unix },
    #[cfg(feature = "quic")]
    Transport { name: "quic", backend: Backend::Quic, listen: listen_loopback, raw: raw_quic },
];

fn listen_unix(dir: &Path) -> ListenTarget {
    use std::os::unix::fs::PermissionsExt;
    // `uds.path` needs a private (0700) parent directory.
    let private = dir.join("uds");
    std::fs::create_dir_all(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    ListenTarget::Unix(private.join("vectors.sock"))
}

fn raw_unix(
    target: DialTarget,
    _tls: TlsFixture,
) -> Pin<Box<dyn Future<Output = Box<dyn RawStream>> + Send>> {
    Box::pin(async move {
        let path = target.unix_path().expect("a socket path").to_path_buf();
        Box::new(tokio::net::UnixStream::connect(path).await.unwrap()) as Box<dyn RawStream>
    })
}

fn listen_loopback(_dir: &Path) -> ListenTarget {
    ListenTarget::Addr(loopback())
}

async fn tcp_connect(target: DialTarget) -> tokio::net::TcpStream {
    match target {
        DialTarget::Addr(a) => tokio::net::TcpStream::connect(a).await.unwrap(),
        other => panic!("tcp peer cannot reach {other:?}"),
    }
}

fn raw_tcp(
    target: DialTarget,
    _tls: TlsFixture,
) -> Pin<Box<dyn Future<Output = Box<dyn RawStream>> + Send>> {
    Box::pin(async move { Box::new(tcp_connect(target).await) as Box<dyn RawStream> })
}

fn raw_tls(
    target: DialTarget,
    tls: TlsFixture,
) -> Pin<Box<dyn Future<Output = Box<dyn RawStream>> + Send>> {
    Box::pin(async move {
        let tcp = tcp_connect(target).await;
        let name = ron_transport::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let s = tokio_rustls::TlsConnector::from(tls.client)
            .connect(name, tcp)
            .await
            .expect("raw TLS handshake");
        Box::new(s) as Box<dyn RawStream>
    })
}

/// A raw QUIC peer: a quinn connection (our client crypto: trust, provider, ALPN `oap/1`) and
/// one bidirectional stream with the OAP/1 preface written, as a byte stream.
#[cfg(feature = "quic")]
fn raw_quic(
    target: DialTarget,
    tls: TlsFixture,
) -> Pin<Box<dyn Future<Output = Box<dyn RawStream>> + Send>> {
    Box::pin(async move {
        let DialTarget::Addr(addr) = target else {
            panic!("quic peer cannot reach {target:?}");
        };
        let mut c = Config::default();
        c.backend = Backend::Quic;
        let cfg = c.validate().unwrap();
        let crypto = ron_transport::quic::client_crypto(&cfg, &tls.client).unwrap();
        let mut ep = quinn::Endpoint::client(loopback()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(crypto));
        let conn = ep
            .connect(addr, "localhost")
            .unwrap()
            .await
            .expect("raw QUIC handshake");
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&ron_transport::quic::STREAM_PREFACE)
            .await
            .unwrap();
        // The endpoint and connection live as long as the streams (quinn keeps them).
        Box::new(tokio::io::join(recv, send)) as Box<dyn RawStream>
    })
}

// ------------------------------------------------------------------ vectors

struct Vector {
    name: String,
    frame: Frame,
    expect: Value,
}

fn vectors() -> (Value, Vec<Vector>) {
    let doc: Value = serde_json::from_str(VECTORS).expect("oap1.json parses");
    let list = doc["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| Vector {
            name: v["name"].as_str().unwrap().to_owned(),
            frame: request(&v["request"]),
            expect: v["expect"].clone(),
        })
        .collect();
    (doc, list)
}

fn num(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(s) => match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
            None => s.parse().unwrap(),
        },
        other => panic!("not a number: {other}"),
    }
}

fn request(r: &Value) -> Frame {
    let p = &r["payload"];
    let payload: Bytes = if let Some(h) = p["hex"].as_str() {
        hex(h).into()
    } else if let Some(len) = p.get("len") {
        vec![num(&p["fill"]) as u8; num(len) as usize].into()
    } else if let Some(zeros) = p.get("zlib_of_zeros") {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; num(zeros) as usize]).unwrap();
        enc.finish().unwrap().into()
    } else {
        panic!("unknown payload description {p}");
    };
    let names: Vec<String> = serde_json::from_value(r["flags"].clone()).unwrap();
    Frame {
        ver: num(&r["ver"]) as u8,
        flags: oap::flags_from_names(&names).expect("known flags"),
        code: num(&r["code"]) as u16,
        app_proto_id: num(&r["app_proto_id"]) as u16,
        tenant_id: u128::from(num(&r["tenant_id"])),
        corr_id: num(&r["corr_id"]),
        cap: Bytes::new(),
        payload,
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The vectors' own invariants: the HELLO encoding matches `wire_hex`, sizes match the notes.
#[test]
fn vectors_are_consistent() {
    let (doc, list) = vectors();
    let max = num(&doc["encoding"]["max_frame_bytes"]);
    assert_eq!(max, ron_transport::limits::MAX_FRAME_CEILING);
    assert_eq!(
        num(&doc["encoding"]["header_len"]) as usize,
        oap::HEADER_LEN
    );
    for (raw, v) in doc["vectors"].as_array().unwrap().iter().zip(&list) {
        if let Some(w) = raw["wire_hex"].as_str() {
            assert_eq!(v.frame.encode_wire(), hex(w), "{}", v.name);
        }
        if let Some(len) = raw.get("frame_len") {
            assert_eq!(v.frame.encode().len() as u64, num(len), "{}", v.name);
        }
        if let Some(c) = raw.get("compressed_len") {
            assert_eq!(v.frame.payload.len() as u64, num(c), "{}", v.name);
            let inflated = num(&raw["inflated_len"]);
            assert!(inflated == 8 * num(c) || inflated == 8 * num(c) + 1);
        }
        // Round trip through the test codec.
        assert_eq!(
            Frame::decode(v.frame.encode()).unwrap(),
            v.frame,
            "{}",
            v.name
        );
    }
    let names: Vec<&str> = list.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "hello",
            "frame_at_max_frame_bytes",
            "frame_one_byte_over",
            "compressed_at_8x_bound",
            "compressed_one_byte_over_8x_bound",
            "compressed_over_absolute_bound"
        ]
    );
}

// ------------------------------------------------------------------ the OAP host

/// The answer of the test-support OAP host to one request body.
fn answer(body: Bytes, max_frame: u64) -> Frame {
    let req = match Frame::decode(body) {
        Ok(f) if f.ver == 1 => f,
        Ok(f) => return f.response(400, Bytes::new()),
        Err(_) => return Frame::request(oap::RESP, 0, 0, Bytes::new()).response(400, Bytes::new()),
    };
    if req.app_proto_id == 0 && req.flags & oap::REQ != 0 {
        let hello = json!({
            "max_frame": max_frame,
            "max_inflight": 64,
            "features": ["COMP", "APP_E2E", "TOR", "QUIC"],
            "transports": ["tls", "tor", "quic"],
        });
        return req.response(200, serde_json::to_vec(&hello).unwrap().into());
    }
    if req.flags & oap::COMP != 0 {
        return match InflateGuard::new(max_frame).inflate(&req.payload, Codec::Zlib) {
            Ok(plain) => req.response(200, (plain.len() as u64).to_be_bytes().to_vec().into()),
            Err(TransportError::TooLarge { .. }) => req.response(413, Bytes::new()),
            Err(_) => req.response(400, Bytes::new()),
        };
    }
    req.response(
        200,
        (req.payload.len() as u64).to_be_bytes().to_vec().into(),
    )
}

fn serve_oap<E: Engine>(engine: &E, listener: E::Listener, max_frame: u64) {
    let serving = engine.serve(listener, move |mut conn: E::Conn| async move {
        while let Ok(Some(body)) = conn.recv().await {
            if conn.send(answer(body, max_frame).encode()).await.is_err() {
                break;
            }
        }
        let _ = conn.close().await;
    });
    tokio::spawn(async move {
        let _ = serving.await;
    });
}

/// The §4.1 JSON view of a HELLO response.
fn hello_json(resp: &Frame) -> Value {
    json!({
        "ver": resp.ver,
        "flags": oap::flag_names(resp.flags),
        "code": resp.code,
        "hello": serde_json::from_slice::<Value>(&resp.payload).unwrap(),
    })
}

// ------------------------------------------------------------------ the test

async fn every_vector_over_every_transport<K: EngineKind>() {
    let (doc, list) = vectors();
    let max_frame = num(&doc["encoding"]["max_frame_bytes"]);
    for t in TRANSPORTS {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsFixture::new(PqMode::Off);
        let mut c = Config::default();
        c.backend = t.backend;
        c.max_frame_bytes = max_frame;
        c.read_timeout = Duration::from_secs(5);
        c.write_timeout = Duration::from_secs(5);
        let cfg = c.validate().unwrap();
        let server_metrics = TransportMetrics::new();
        let server = K::build(cfg.clone(), Some(&tls), server_metrics.clone());
        let client = K::build(cfg, Some(&tls), TransportMetrics::new());
        let listener = server.listen((t.listen)(dir.path())).await.unwrap();
        let target = listener.dial_target();
        serve_oap(&server, listener, max_frame);

        let opts = DialOptions {
            deadline: Duration::from_secs(5),
            ..DialOptions::default()
        };
        let mut conn = within("dial", SLACK, client.dial(target.clone(), opts))
            .await
            .unwrap_or_else(|e| panic!("{}: dial: {e}", t.name));
        for v in &list {
            let what = format!(
                "{} over {} on {}",
                v.name,
                t.name,
                std::any::type_name::<K>()
            );
            let body = v.frame.encode();
            if v.expect["reject"] == "too_large" {
                // The dialer's transport refuses it; the connection stays usable.
                let err = conn.send(body.clone()).await.expect_err(&what);
                assert_eq!(err.kind(), "too_large", "{what}");
                continue;
            }
            conn.send(body)
                .await
                .unwrap_or_else(|e| panic!("{what}: send: {e}"));
            let resp = within(&what, SLACK, conn.recv())
                .await
                .unwrap_or_else(|e| panic!("{what}: recv: {e}"))
                .unwrap_or_else(|| panic!("{what}: closed"));
            let resp = Frame::decode(resp).unwrap();
            assert_eq!(resp.corr_id, v.frame.corr_id, "{what}: corr_id preserved");
            assert_eq!(resp.flags, oap::RESP, "{what}");
            if let Some(r) = v.expect.get("response") {
                assert_eq!(&hello_json(&resp), r, "{what}");
                continue;
            }
            assert_eq!(u64::from(resp.code), num(&v.expect["code"]), "{what}");
            for key in ["payload_len", "inflated_len"] {
                if let Some(n) = v.expect.get(key) {
                    let got = u64::from_be_bytes(resp.payload[..8].try_into().unwrap());
                    assert_eq!(got, num(n), "{what}: {key}");
                }
            }
        }
        let _ = conn.close().await;

        // The oversize frame from a raw peer: closed by the listener before the body is read.
        let over = list
            .iter()
            .find(|v| v.expect["reject"] == "too_large")
            .unwrap();
        let wire = over.frame.encode_wire();
        let mut raw = (t.raw)(target.clone(), tls.clone()).await;
        let before = rejected(&server_metrics, RejectReason::TooLarge);
        // Only the length prefix and the header: the rejection must not wait for the body.
        raw.write_all(&wire[..4 + oap::HEADER_LEN]).await.unwrap();
        raw.flush().await.unwrap();
        let mut sink = vec![0u8; 1024];
        let closed = within("listener closes the oversize frame", SLACK, async {
            loop {
                match raw.read(&mut sink).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed, "{}", t.name);
        wait_until("rejected{too_large}", SLACK, || {
            rejected(&server_metrics, RejectReason::TooLarge) == before + 1
        })
        .await;

        server.shutdown(Duration::from_secs(2)).await;
        client.shutdown(Duration::from_secs(2)).await;
    }
}

per_engine!(every_vector_over_every_transport);
