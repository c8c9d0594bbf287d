//! Quick, bounded loopback echo throughput check used to choose the receive mode and the
//! SENDMSG_ZC threshold (not a test: nothing is asserted). Compares the shard runtime's echo
//! handler (several buffer sizes, zero-copy on/off) with a tokio echo server on the same box.
//!
//! `cargo run --release -p ron-shard --example echo_bench -- [frame_bytes] [total_mib] [conns]`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ron_shard::{
    bind, AcceptHooks, AdmitToken, CloseReason, ConnCtx, ConnHandler, ConnMeta, ConnOptions,
    ConnRemote, Frame, Reject, Runtime, RuntimeConfig,
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

fn client(addr: SocketAddr, frame: usize, total: usize, conns: usize) -> f64 {
    let per_conn = total / conns;
    let frames = (per_conn / frame).max(1);
    let mut wire = Vec::with_capacity((frame + 4) * 16);
    for _ in 0..16 {
        wire.extend_from_slice(&(frame as u32).to_be_bytes());
        wire.extend(std::iter::repeat_n(0xabu8, frame));
    }
    let wire = Arc::new(wire);
    let t0 = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..conns {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = s.try_clone().unwrap();
        let wire = wire.clone();
        let writer = std::thread::spawn(move || {
            let mut left = frames;
            while left > 0 {
                let n = left.min(16);
                w.write_all(&wire[..n * (frame + 4)]).unwrap();
                left -= n;
            }
        });
        let mut r = s;
        let reader = std::thread::spawn(move || {
            let mut want = frames * (frame + 4);
            let mut buf = vec![0u8; 256 * 1024];
            while want > 0 {
                let n = r.read(&mut buf).unwrap();
                assert!(n > 0, "early EOF");
                want -= n.min(want);
            }
        });
        joins.push(writer);
        joins.push(reader);
    }
    for j in joins {
        j.join().unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    (frames * conns * frame) as f64 / secs / (1024.0 * 1024.0)
}

fn uring(
    entries: u16,
    buf_size: u32,
    zc: Option<usize>,
    frame: usize,
    total: usize,
    conns: usize,
) -> f64 {
    let rt = Runtime::start(RuntimeConfig {
        shards: 1,
        buf_entries: entries,
        buf_size,
        zc_threshold: zc,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(l, ConnOptions::default(), Arc::new(Hooks))
        .unwrap();
    let r = client(addr, frame, total, conns);
    let s = rt.stats()[0];
    eprintln!(
        "    [recv completions {} frames in place {}/{} send submissions {} zc {} enobufs {}]",
        s.recv_completions,
        s.frames_in_place,
        s.frames_in,
        s.send_submissions,
        s.sends_zc,
        s.recv_no_buffers
    );
    rt.shutdown(Duration::ZERO).wait();
    r
}

fn tokio_echo(frame: usize, total: usize, conns: usize) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let th = std::thread::spawn(move || {
        rt.block_on(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                s.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
                    loop {
                        if buf.capacity() - buf.len() < 16 * 1024 {
                            buf.reserve(64 * 1024);
                        }
                        match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        // Echo every complete frame.
                        let mut end = 0;
                        while buf.len() - end >= 4 {
                            let n =
                                u32::from_be_bytes(buf[end..end + 4].try_into().unwrap()) as usize;
                            if buf.len() - end < 4 + n {
                                break;
                            }
                            end += 4 + n;
                        }
                        if end > 0 {
                            let out = buf.split_to(end);
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        })
    });
    let r = client(addr, frame, total, conns);
    drop(th); // detached; process exits at the end
    r
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let frame = args.first().copied().unwrap_or(64 * 1024);
    let total = args.get(1).copied().unwrap_or(256) * 1024 * 1024;
    let conns = args.get(2).copied().unwrap_or(4);
    println!(
        "frame {frame} B, {} MiB per run, {conns} connections",
        total >> 20
    );
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let configs: [(u16, u32, Option<usize>); 7] = [
        (256, 16 * 1024, None),
        (64, 16 * 1024, None),
        (64, 32 * 1024, None),
        (32, 64 * 1024, None),
        (128, 32 * 1024, None),
        (64, 32 * 1024, Some(16 * 1024)),
        (64, 32 * 1024, Some(64 * 1024)),
    ];
    let mut best_tokio = 0f64;
    let mut best = [0f64; 7];
    for round in 0..rounds {
        let t = tokio_echo(frame, total, conns);
        println!("round {round}: tokio {t:.0}");
        best_tokio = best_tokio.max(t);
        for (i, (n, bs, zc)) in configs.iter().enumerate() {
            let r = uring(*n, *bs, *zc, frame, total, conns);
            best[i] = best[i].max(r);
        }
    }
    println!("best of {rounds} (MiB/s): tokio echo (1 thread) {best_tokio:.0}");
    for (i, (n, bs, zc)) in configs.iter().enumerate() {
        println!(
            "  uring 1 shard, {n:>3} x {:>2} KiB buffers, zc {:<8} {:6.0}  ({:.2}x tokio)",
            bs / 1024,
            zc.map_or("off".to_string(), |z| format!(">={}K", z / 1024)),
            best[i],
            best[i] / best_tokio
        );
    }
}
