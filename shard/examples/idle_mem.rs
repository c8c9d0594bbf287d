//! Measures the user-space memory an idle connection costs (RSS delta over N idle connections,
//! client sockets in the same process), for the shard-local handler API and for handles.
//!
//! `cargo run --release -p ron-shard --example idle_mem -- [connections]`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use ron_shard::{
    bind, handle_listener, AcceptHooks, AdmitToken, CloseReason, ConnCtx, ConnHandler, ConnMeta,
    ConnOptions, ConnRemote, Frame, HandleOptions, Reject, Runtime, RuntimeConfig,
};

struct Echo;
impl ConnHandler for Echo {
    fn on_frame(&mut self, ctx: &mut ConnCtx<'_>, frame: Frame<'_>) {
        let _ = ctx.send_frame(&frame);
    }
    fn on_close(&mut self, _reason: &CloseReason) {}
}
struct Hooks;
impl AcceptHooks for Hooks {
    fn admit(&self, _p: SocketAddr) -> Result<AdmitToken, Reject> {
        Ok(AdmitToken::empty())
    }
    fn open(&self, _t: AdmitToken, _m: &ConnMeta, _r: ConnRemote) -> Box<dyn ConnHandler> {
        Box::new(Echo)
    }
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

fn open(addr: SocketAddr, n: usize, round_trip: bool) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            if round_trip {
                c.write_all(&[0, 0, 0, 1, 7]).unwrap();
                let mut b = [0u8; 5];
                c.read_exact(&mut b).unwrap();
            }
            c
        })
        .collect()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    let rt = Runtime::start(RuntimeConfig {
        shards: 1,
        ..RuntimeConfig::default()
    })
    .unwrap();
    // Handler API.
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(l, ConnOptions::default(), Arc::new(Hooks))
        .unwrap();
    let _warm = open(addr, 10, true);
    let before = rss_kib();
    let conns = open(addr, n, true);
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_kib();
    println!(
        "handler API: {n} idle connections, RSS +{} KiB = {:.0} B per connection (incl. client side)",
        after - before,
        (after - before) as f64 * 1024.0 / n as f64
    );
    drop(conns);
    // Handles (two bounded channels per connection).
    let (hooks, mut accepted) = handle_listener(
        |_| Ok(AdmitToken::empty()),
        n + 16,
        HandleOptions::default(),
    );
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(l, ConnOptions::default(), hooks).unwrap();
    let _warm = open(addr, 10, false);
    std::thread::sleep(Duration::from_millis(200));
    let mut handles = Vec::new();
    while let Some(h) = accepted.try_accept() {
        handles.push(h);
    }
    let before = rss_kib();
    let conns = open(addr, n, false);
    std::thread::sleep(Duration::from_millis(300));
    while let Some(h) = accepted.try_accept() {
        handles.push(h);
    }
    let after = rss_kib();
    println!(
        "handles: {} idle connections, RSS +{} KiB = {:.0} B per connection (incl. client side)",
        handles.len() - 10,
        after - before,
        (after - before) as f64 * 1024.0 / n as f64
    );
    drop((conns, handles));
    rt.shutdown(Duration::ZERO).wait();
}
