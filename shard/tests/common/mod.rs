//! Shared test helpers: an echo handler, simple admission hooks, blocking frame I/O.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ron_shard::{
    AcceptHooks, AdmitToken, CloseReason, ConnCtx, ConnHandler, ConnMeta, ConnRemote, Frame,
    Reject, Runtime, RuntimeConfig,
};

/// Starts a runtime with `shards` shards and small buffers, or `None` (printed) if io_uring
/// is unusable here.
pub fn runtime(shards: usize) -> Option<Runtime> {
    let probe = ron_shard::probe();
    if !probe.usable {
        eprintln!("skipping: io_uring unusable here: {:?}", probe.failure);
        return None;
    }
    Some(
        Runtime::start(RuntimeConfig {
            shards,
            pin: false,
            buf_entries: 64,
            buf_size: 16 * 1024,
            ..RuntimeConfig::default()
        })
        .expect("runtime starts"),
    )
}

/// Echo handler: sends every frame straight back (zero-copy for in-place frames).
pub struct Echo {
    pub closes: Arc<Mutex<Vec<CloseReason>>>,
}

impl ConnHandler for Echo {
    fn on_frame(&mut self, ctx: &mut ConnCtx<'_>, frame: Frame<'_>) {
        if frame.payload() == b"close-me" {
            ctx.close();
            return;
        }
        ctx.send_frame(&frame).expect("queue echo");
    }

    fn on_drain(&mut self, ctx: &mut ConnCtx<'_>) {
        // Even-numbered connections close at once; odd ones are left to the deadline.
        if ctx.queued_bytes() == 0 && ctx.meta().id % 2 == 0 {
            ctx.close();
        }
    }

    fn on_close(&mut self, reason: &CloseReason) {
        self.closes.lock().unwrap().push(reason.clone());
    }
}

/// Accept hooks: admit unless the peer port is in `deny`, build an `Echo`.
#[derive(Default)]
pub struct EchoHooks {
    pub closes: Arc<Mutex<Vec<CloseReason>>>,
    pub deny_all: bool,
    pub admitted: AtomicUsize,
    pub opened_on: Mutex<Vec<usize>>,
    pub drain_closes_even: bool,
}

impl AcceptHooks for EchoHooks {
    fn admit(&self, _peer: SocketAddr) -> Result<AdmitToken, Reject> {
        if self.deny_all {
            return Err(Reject {
                reason: "peer_limit",
            });
        }
        self.admitted.fetch_add(1, Ordering::SeqCst);
        Ok(AdmitToken::empty())
    }

    fn open(&self, _t: AdmitToken, meta: &ConnMeta, _r: ConnRemote) -> Box<dyn ConnHandler> {
        self.opened_on.lock().unwrap().push(meta.shard);
        Box::new(Echo {
            closes: self.closes.clone(),
        })
    }
}

pub fn write_frame(s: &mut TcpStream, payload: &[u8]) {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    s.write_all(&v).unwrap();
}

pub fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h)?;
    let mut p = vec![0u8; u32::from_be_bytes(h) as usize];
    s.read_exact(&mut p)?;
    Ok(p)
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Polls `f` until true or 10 s pass.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out waiting for: {what}");
}

pub fn total(rt: &Runtime) -> ron_shard::StatsSnapshot {
    let s = rt.stats();
    s.iter().skip(1).fold(s[0], |a, b| a.merge(b))
}
