//! The single writer task of a tokio connection (spec/IDB I-4): it owns the write half and the
//! receiving end of the bounded writer inbox, and is the connection's watchdog (idle timeout).
//!
//! # Coalescing
//! Each wake-up takes every frame already queued, up to `chunk_bytes`, and writes them with
//! vectored writes of at most `chunk_bytes` each: never one syscall per frame. Frame headers and
//! small payloads (≤ [`COPY_MAX`]) are copied into one reusable staging buffer — a 4-byte
//! header or a 100-byte payload costs far less to copy than an extra `iovec` entry (the kernel
//! copies it into the socket buffer anyway) — while larger payloads are referenced in place as
//! their own `IoSlice`, so a 1 MiB frame is never copied in user space.
//!
//! # Timeouts and pacing
//! A write that makes no progress within `write_timeout` fails the connection with
//! `Timeout{op: Write}`. Egress pacing accounts each submission with `ConnPermit::pace_egress`
//! and sleeps *before* writing it (bytes of a partial write are not accounted twice). Idle: when no byte moved in
//! either direction for `idle_timeout`, the writer fails the connection with `Timeout{op: Idle}`.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::WaitForCancellationFuture;

use crate::engine::tokio::conn::{poll_once, ConnCore, Live, Out};
use crate::engine::tokio::stream::WriteHalf;
use crate::error::{TimeoutOp, TransportError};
use crate::limits::FRAME_HEADER_LEN;
use crate::policy::now_ns;

/// Payloads up to this size are copied into the staging buffer; larger ones are written from
/// their own `Bytes` without copying.
pub(crate) const COPY_MAX: usize = 4 * 1024;
/// Most `IoSlice`s handed to one `writev` (well under `IOV_MAX`).
const MAX_IOVECS: usize = 64;

/// How the write loop ended.
enum Exit {
    /// Inbox closed and drained: shut the write side down gracefully.
    Drained,
    /// Hard cancel (or a failure recorded elsewhere): drop everything now.
    Cancelled,
    /// This task detected a failure.
    Failed(TransportError),
}

/// Runs the writer until the connection ends; then releases its share of the connection.
pub(crate) async fn run(live: Arc<Live>, wr: WriteHalf, mut rx: mpsc::Receiver<Out>) {
    let core = live.core.clone();
    let mut wr = Some(wr);
    let exit = write_loop(&live, &mut wr, &mut rx).await;
    // Plain TCP: take the write half back from the senders' slot (it was lent there between
    // batches); whatever a direct write left behind is dropped with the connection, or was
    // written by the loop.
    let mut wr = match wr {
        Some(w) => w,
        None => match reclaim(&core) {
            Some(h) => WriteHalf::Tcp(h),
            None => {
                finish_exit(&core, exit);
                return release(live, rx).await;
            }
        },
    };
    match exit {
        Exit::Drained => {
            let bound = core.policy.config().write_timeout;
            let shut = tokio::select! {
                biased;
                _ = core.cancel.cancelled() => Ok(()),
                r = tokio::time::timeout(bound, wr.shutdown()) => match r {
                    Ok(r) => r.map_err(TransportError::Io),
                    Err(_) => Err(TransportError::timeout(TimeoutOp::Write)),
                },
            };
            match shut {
                Ok(()) => core.finish(),
                Err(e) => {
                    core.fail(&e);
                }
            }
        }
        Exit::Cancelled => {}
        Exit::Failed(e) => {
            core.fail(&e);
        }
    }
    // Protocol-level failures detected by the reader (too large, read/idle timeout) still get
    // a clean TLS close_notify when the socket can take it right away.
    if matches!(
        core.terminal(),
        Some(TransportError::TooLarge { .. })
            | Some(TransportError::Timeout {
                op: TimeoutOp::Read | TimeoutOp::Idle
            })
    ) {
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            AsyncWriteExt::shutdown(&mut wr),
        )
        .await;
    }
    drop(wr);
    release(live, rx).await;
}

/// How a writer that no longer has its half (never expected) still records the outcome.
fn finish_exit(core: &ConnCore, exit: Exit) {
    if let Exit::Failed(e) = exit {
        core.fail(&e);
    }
}

/// The end of a writer: the socket's write side is gone, queued frames are dropped.
async fn release(live: Arc<Live>, mut rx: mpsc::Receiver<Out>) {
    let core = live.core.clone();
    if let Some(slot) = core.tcp.as_ref() {
        // The socket must close now even if sender clones outlive the connection.
        let mut slot = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.half = None;
        slot.pending.clear();
    }
    rx.close();
    let mut left = 0;
    while let Ok(m) = rx.try_recv() {
        if matches!(m, Out::Frame(_)) {
            left += 1;
        }
    }
    core.inbox_depth.sub(left);
    core.finish();
    core.writer_done.cancel();
    drop(live);
}

/// Takes the plain-TCP write half back from the senders' slot.
fn reclaim(core: &ConnCore) -> Option<tokio::net::tcp::OwnedWriteHalf> {
    let slot = core.tcp.as_ref()?;
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .half
        .take()
}

async fn write_loop(live: &Live, wr: &mut Option<WriteHalf>, rx: &mut mpsc::Receiver<Out>) -> Exit {
    let core = &live.core;
    let mut draining = false;
    let mut segs: VecDeque<Bytes> = VecDeque::with_capacity(MAX_IOVECS);
    let mut stage = BytesMut::new();
    let idle = tokio::time::sleep(core.policy.config().idle_timeout);
    tokio::pin!(idle);
    // Created once and kept registered: a wake-up does not register (and unregister) waiters
    // on the connection's tokens each time.
    let cancelled = core.cancel.cancelled();
    tokio::pin!(cancelled);
    let closed = core.close.cancelled();
    tokio::pin!(closed);
    // A reload re-arms the idle deadline from the new snapshot.
    let mut config_changes = core.policy.config_handle().subscribe();
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut cancelled => return Exit::Cancelled,
            _ = &mut closed, if !draining => {
                draining = true;
                // No new frames; the ones already queued are still delivered.
                rx.close();
                continue;
            }
            m = rx.recv() => match m {
                Some(Out::Frame(f)) => {
                    core.inbox_depth.dec();
                    Some(f)
                }
                Some(Out::Kick) => None,
                None => {
                    // Drained: bytes a direct write left behind still go out first.
                    if let Err(exit) = take_back(live, wr, &mut segs) {
                        return exit;
                    }
                    if !segs.is_empty() {
                        let cfg = core.policy.config();
                        let chunk = (cfg.chunk_bytes as usize).max(FRAME_HEADER_LEN + 1);
                        let write_timeout = cfg.write_timeout;
                        drop(cfg);
                        let Some(w) = wr.as_mut() else { return Exit::Cancelled };
                        if let Err(exit) = write_segments(
                            live, w, &mut segs, chunk, write_timeout, cancelled.as_mut(),
                        )
                        .await
                        {
                            return exit;
                        }
                    }
                    return Exit::Drained;
                }
            },
            Ok(()) = config_changes.changed(), if !draining => {
                let deadline = core.last_activity() + core.policy.config().idle_timeout;
                idle.as_mut().reset(deadline);
                continue;
            }
            _ = &mut idle, if !draining => {
                let idle_timeout = core.policy.config().idle_timeout;
                let deadline = core.last_activity() + idle_timeout;
                if tokio::time::Instant::now() >= deadline {
                    return Exit::Failed(TransportError::timeout(TimeoutOp::Idle));
                }
                idle.as_mut().reset(deadline);
                continue;
            }
        };

        let cfg = core.policy.config();
        let chunk = (cfg.chunk_bytes as usize).max(FRAME_HEADER_LEN + 1);
        let write_timeout = cfg.write_timeout;
        drop(cfg);

        // The half back from the senders' slot (plain TCP), and any bytes a direct write left
        // behind: they go first.
        if let Err(exit) = take_back(live, wr, &mut segs) {
            return exit;
        }
        // Take everything already queued, up to `chunk` bytes.
        let had_first = first.is_some();
        let mut batch = match first {
            Some(f) => stage_frame(&mut stage, &mut segs, f, chunk),
            None => 0,
        };
        let mut taken = 0;
        while batch < chunk {
            match rx.try_recv() {
                Ok(Out::Frame(f)) => {
                    taken += 1;
                    batch += stage_frame(&mut stage, &mut segs, f, chunk);
                }
                Ok(Out::Kick) => {}
                Err(_) => break,
            }
        }
        if taken > 0 {
            core.inbox_depth.sub(taken);
        }
        if !stage.is_empty() {
            segs.push_back(stage.split().freeze());
        }

        let Some(w) = wr.as_mut() else {
            return Exit::Cancelled;
        };
        if let Err(exit) =
            write_segments(live, w, &mut segs, chunk, write_timeout, cancelled.as_mut()).await
        {
            return exit;
        }
        // Written: direct writes may go again once nothing else is queued.
        let written = usize::from(had_first) + taken as usize;
        core.queued
            .fetch_sub(written, std::sync::atomic::Ordering::AcqRel);
        // Idle again: lend the plain-TCP half to the senders for direct writes.
        lend(core, wr);
    }
}

/// Takes the write half back from the senders' slot (plain TCP) with the bytes a direct write
/// left behind, which go in front of everything else.
fn take_back(
    live: &Live,
    wr: &mut Option<WriteHalf>,
    segs: &mut VecDeque<Bytes>,
) -> Result<(), Exit> {
    let core = &live.core;
    let Some(slot) = core.tcp.as_ref() else {
        return Ok(());
    };
    let mut slot = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if wr.is_none() {
        match slot.half.take() {
            Some(h) => *wr = Some(WriteHalf::Tcp(h)),
            None => return Err(Exit::Cancelled),
        }
    }
    for b in slot.pending.drain(..).rev() {
        segs.push_front(b);
    }
    Ok(())
}

/// Lends the plain-TCP write half to the senders (the writer has nothing to write).
fn lend(core: &ConnCore, wr: &mut Option<WriteHalf>) {
    let Some(slot) = core.tcp.as_ref() else {
        return;
    };
    match wr.take() {
        Some(WriteHalf::Tcp(h)) => {
            slot.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .half = Some(h);
        }
        other => *wr = other,
    }
}

/// Appends one frame (header + payload) to the pending segments; returns its wire size.
fn stage_frame(
    stage: &mut BytesMut,
    segs: &mut VecDeque<Bytes>,
    payload: Bytes,
    chunk: usize,
) -> usize {
    let wire = FRAME_HEADER_LEN + payload.len();
    if stage.capacity() - stage.len() < FRAME_HEADER_LEN + COPY_MAX {
        stage.reserve(chunk.max(FRAME_HEADER_LEN + COPY_MAX));
    }
    // Lengths were checked against `max_frame_bytes` (≤ 1 MiB) when queued.
    stage.put_u32(payload.len() as u32);
    if payload.len() <= COPY_MAX {
        stage.put_slice(&payload);
    } else {
        segs.push_back(stage.split().freeze());
        segs.push_back(payload);
    }
    wire
}

/// Writes every pending segment: vectored writes of at most `chunk` bytes, each bounded by
/// `write_timeout` of no progress, paced by the egress buckets.
async fn write_segments(
    live: &Live,
    wr: &mut WriteHalf,
    segs: &mut VecDeque<Bytes>,
    chunk: usize,
    write_timeout: std::time::Duration,
    mut cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
) -> Result<(), Exit> {
    let core = &live.core;
    // Bytes already accounted with the egress buckets but not yet accepted by the socket (a
    // partial write is not paced twice).
    let mut paced_ahead = 0usize;
    while !segs.is_empty() {
        // At most `chunk` bytes per submission, except that a small tail (a header, a short
        // frame) rides along instead of costing a syscall of its own.
        let pending: usize = segs.iter().map(Bytes::len).sum();
        let limit = if pending <= chunk + COPY_MAX {
            pending
        } else {
            chunk
        };
        let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        let mut total = 0;
        for seg in segs.iter() {
            if count == MAX_IOVECS || total >= limit {
                break;
            }
            let take = seg.len().min(limit - total);
            slices[count] = IoSlice::new(&seg[..take]);
            count += 1;
            total += take;
        }
        // Pace before writing: by any time t at most `burst + rate * t` bytes have left.
        let need = total.saturating_sub(paced_ahead);
        if need > 0 {
            paced_ahead += need;
            let pause = live.permit.pace_egress(need as u64, now_ns());
            if !pause.is_zero() {
                tokio::select! {
                    biased;
                    _ = cancelled.as_mut() => return Err(Exit::Cancelled),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
        let slices = &slices[..count];
        // The socket usually takes the write at once: only a write that has to wait arms the
        // cancellation and write-timeout branches.
        let written = {
            let mut write = std::pin::pin!(wr.write_vectored(slices));
            match poll_once(write.as_mut()).await {
                Poll::Ready(r) => Ok(r),
                Poll::Pending => tokio::select! {
                    biased;
                    _ = cancelled.as_mut() => return Err(Exit::Cancelled),
                    r = tokio::time::timeout(write_timeout, write) => r,
                },
            }
        };
        let n = match written {
            Ok(Ok(0)) => return Err(Exit::Failed(TransportError::IoClosed)),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(Exit::Failed(TransportError::Io(e))),
            Err(_) => return Err(Exit::Failed(TransportError::timeout(TimeoutOp::Write))),
        };
        paced_ahead = paced_ahead.saturating_sub(n);
        advance(segs, n);
        core.touch();
        core.bm.io_write_size.observe(n as f64);
        core.bm.bytes_out.inc_by(n as u64);
        live.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
    // TLS: push out ciphertext rustls still buffers (a no-op for TCP).
    let flushed = {
        let mut flush = std::pin::pin!(wr.flush());
        match poll_once(flush.as_mut()).await {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => tokio::select! {
                biased;
                _ = cancelled.as_mut() => return Err(Exit::Cancelled),
                r = tokio::time::timeout(write_timeout, flush) => r,
            },
        }
    };
    match flushed {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Exit::Failed(TransportError::Io(e))),
        Err(_) => Err(Exit::Failed(TransportError::timeout(TimeoutOp::Write))),
    }
}

/// Drops `n` written bytes from the front of `segs`.
fn advance(segs: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = segs.front_mut() else {
            return;
        };
        if front.len() <= n {
            n -= front.len();
            segs.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
    while segs.front().is_some_and(|s| s.is_empty()) {
        segs.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_copies_small_and_references_large() {
        let mut stage = BytesMut::new();
        let mut segs = VecDeque::new();
        let small = Bytes::from_static(b"hello");
        let large = Bytes::from(vec![7u8; COPY_MAX + 1]);
        assert_eq!(stage_frame(&mut stage, &mut segs, small, 65536), 9);
        assert_eq!(
            stage_frame(&mut stage, &mut segs, large.clone(), 65536),
            COPY_MAX + 5
        );
        stage_frame(&mut stage, &mut segs, Bytes::new(), 65536);
        segs.push_back(stage.split().freeze());
        // [hdr+hello+hdr] [large] [hdr(0)]
        assert_eq!(segs.len(), 3);
        assert_eq!(&segs[0][..], b"\0\0\0\x05hello\0\0\x10\x01");
        assert_eq!(segs[1].as_ptr(), large.as_ptr(), "large payload not copied");
        assert_eq!(&segs[2][..], b"\0\0\0\0");
    }

    #[test]
    fn advance_across_segments() {
        let mut segs: VecDeque<Bytes> = [
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"fgh"),
        ]
        .into_iter()
        .collect();
        advance(&mut segs, 4);
        assert_eq!(segs.len(), 2);
        assert_eq!(&segs[0][..], b"e");
        advance(&mut segs, 1);
        assert_eq!(&segs[0][..], b"fgh");
        advance(&mut segs, 3);
        assert!(segs.is_empty());
    }
}
