//! Peer echo servers on monoio and tokio-uring (plain TCP, feature `peers`): one runtime
//! thread per shard, each with its own SO_REUSEPORT listener. Both use the same echo loop as
//! `bare-uring`, written the way each runtime intends (owned buffers passed to the kernel):
//! receive into the free tail of one growable buffer per connection, send every complete
//! frame at its head with one write, keep the partial rest.

use std::net::SocketAddr;

use anyhow::anyhow;

use super::{bind_reuseport, ServeOpts};
use crate::wire;

const INITIAL_BUF: usize = 16 * 1024;

/// Capacity the buffer needs before the next receive, given its content.
fn needed_capacity(buf: &[u8]) -> Result<usize, wire::FrameError> {
    let sc = wire::scan(buf)?;
    let need = sc
        .next_frame_len
        .map_or(buf.len() + 1, |n| sc.complete_bytes + n)
        .max(buf.len() + 1);
    Ok(need.max(INITIAL_BUF))
}

/// Runs the monoio echo server.
pub fn serve_monoio(
    opts: &ServeOpts,
    ready: &dyn Fn(SocketAddr, &ServeOpts),
) -> anyhow::Result<()> {
    let ls = bind_reuseport(opts.listen, opts.shards)?;
    let addr = ls[0].local_addr()?;
    let mut hs = Vec::new();
    for l in ls {
        hs.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(4096)
                .build()?;
            rt.block_on(async move {
                let listener = monoio::net::TcpListener::from_std(l)?;
                loop {
                    let (s, _) = listener.accept().await?;
                    let _ = s.set_nodelay(true);
                    monoio::spawn(monoio_conn(s));
                }
            })
        }));
    }
    ready(addr, opts);
    for h in hs {
        h.join().map_err(|_| anyhow!("monoio shard panicked"))??;
    }
    Ok(())
}

async fn monoio_conn(mut s: monoio::net::TcpStream) {
    use monoio::buf::{Slice, SliceMut};
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    let mut buf: Vec<u8> = Vec::with_capacity(INITIAL_BUF);
    loop {
        let Ok(need) = needed_capacity(&buf) else {
            return;
        };
        if buf.capacity() < need {
            buf.reserve(need - buf.len());
        }
        let (len, cap) = (buf.len(), buf.capacity());
        let (r, sl) = s.read(SliceMut::new(buf, len, cap)).await;
        buf = sl.into_inner();
        match r {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Ok(sc) = wire::scan(&buf) else { return };
        if sc.complete_bytes > 0 {
            let (r, sl) = s.write_all(Slice::new(buf, 0, sc.complete_bytes)).await;
            buf = sl.into_inner();
            if r.is_err() {
                return;
            }
            buf.drain(..sc.complete_bytes);
        }
    }
}

/// Runs the tokio-uring echo server.
pub fn serve_tokio_uring(
    opts: &ServeOpts,
    ready: &dyn Fn(SocketAddr, &ServeOpts),
) -> anyhow::Result<()> {
    let ls = bind_reuseport(opts.listen, opts.shards)?;
    let addr = ls[0].local_addr()?;
    let mut hs = Vec::new();
    for l in ls {
        hs.push(std::thread::spawn(move || -> anyhow::Result<()> {
            tokio_uring::start(async move {
                let listener = tokio_uring::net::TcpListener::from_std(l);
                loop {
                    let (s, _) = listener.accept().await?;
                    let _ = s.set_nodelay(true);
                    tokio_uring::spawn(tokio_uring_conn(s));
                }
            })
        }));
    }
    ready(addr, opts);
    for h in hs {
        h.join()
            .map_err(|_| anyhow!("tokio-uring shard panicked"))??;
    }
    Ok(())
}

async fn tokio_uring_conn(s: tokio_uring::net::TcpStream) {
    use tokio_uring::buf::BoundedBuf;
    let mut buf: Vec<u8> = Vec::with_capacity(INITIAL_BUF);
    loop {
        let Ok(need) = needed_capacity(&buf) else {
            return;
        };
        if buf.capacity() < need {
            buf.reserve(need - buf.len());
        }
        let len = buf.len();
        let (r, sl) = s.read(buf.slice(len..)).await;
        buf = sl.into_inner();
        match r {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Ok(sc) = wire::scan(&buf) else { return };
        if sc.complete_bytes > 0 {
            let (r, sl) = s.write_all(buf.slice(..sc.complete_bytes)).await;
            buf = sl.into_inner();
            if r.is_err() {
                return;
            }
            buf.drain(..sc.complete_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_capacity_grows_for_a_large_frame() {
        assert_eq!(needed_capacity(&[]).unwrap(), INITIAL_BUF);
        let mut f = wire::frame(100_000);
        f.truncate(10);
        assert_eq!(needed_capacity(&f).unwrap(), 100_004);
    }
}
