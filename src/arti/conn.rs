//! One Arti connection: a Tor `DataStream` owned by two tasks on the side runtime (reader and
//! writer), and the consumer's handles ([`ArtiConn`], [`ArtiSender`]) on the consumer's side.
//!
//! Frames cross between the two runtimes through bounded queues only:
//! - consumer → side runtime: the writer inbox (capacity
//!   [`WRITER_INBOX_CAPACITY`](crate::engine::WRITER_INBOX_CAPACITY)); full ⇒ `Busy` for
//!   `try_send`, a wait of at most `write_timeout` for `send`;
//! - side runtime → consumer: a receive queue of [`RECV_QUEUE_FRAMES`] decoded frames. When
//!   the consumer stops calling `recv`, the reader stops reading, and Tor's stream flow control
//!   throttles the peer.
//!
//! Limits, timeouts and metrics are those of the tokio engine: the announced length is checked
//! against `max_frame_bytes` before anything is reserved for it, a started frame must complete
//! within `read_timeout`, queued output must progress within `write_timeout`, nothing moving
//! for `idle_timeout` ends the connection, ingress/egress token buckets pace the reader and the
//! writer, and every first failure counts `rejected_total{reason}` once.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arti_client::{DataReader, DataStream, DataWriter};
use bytes::{BufMut, Bytes, BytesMut};
use prometheus::IntGauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::EngineInner;
use crate::config::Backend;
use crate::engine::admission::Admission;
use crate::engine::{Conn, ConnInfo, FrameSender, WRITER_INBOX_CAPACITY};
use crate::error::{RejectReason, TimeoutOp, TransportError};
use crate::limits::{FrameDecoder, FRAME_HEADER_LEN};
use crate::metrics::{BackendMetrics, QueueName, TaskKind, TransportMetrics};
use crate::policy::{now_ns, Policy};

/// Decoded frames waiting for the consumer's `recv` (side runtime → consumer).
pub const RECV_QUEUE_FRAMES: usize = 16;
/// Read size: one Tor relay cell carries 498 bytes; read in 32 KiB steps.
const READ_BUF_MIN: usize = 32 * 1024;
/// Payloads up to this size are copied next to their header; larger ones are written alone.
const COPY_MAX: usize = 4 * 1024;

/// State shared by the handle, every sender and the two side-runtime tasks.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) id: u64,
    pub(crate) corr_id: Option<Arc<str>>,
    pub(crate) policy: Arc<Policy>,
    pub(crate) metrics: Arc<TransportMetrics>,
    pub(crate) bm: BackendMetrics,
    inbox_depth: IntGauge,
    /// Hard stop: both tasks exit at their next poll.
    pub(crate) cancel: CancellationToken,
    /// Graceful close: the writer drains the inbox, then ends the stream.
    pub(crate) close: CancellationToken,
    /// Set when the writer task has exited.
    pub(crate) writer_done: CancellationToken,
    /// The permit lives in [`Live`]; senders only see it weakly.
    permit: Weak<Admission>,
    terminal: OnceLock<TransportError>,
    /// The peer ended the stream cleanly between frames.
    eof: AtomicBool,
    epoch: Instant,
    last_activity_ns: AtomicU64,
    opened: Instant,
}

impl Core {
    fn touch(&self) {
        let ns = self.epoch.elapsed().as_nanos() as u64;
        self.last_activity_ns.store(ns, Ordering::Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.last_activity_ns.load(Ordering::Relaxed))
    }

    /// Records the first terminal error; only that one counts `rejected_total{reason}`.
    pub(crate) fn fail(&self, err: &TransportError) -> bool {
        let first = self.terminal.set(clone_error(err)).is_ok();
        if first {
            if let Some(reason) = err.reject_reason() {
                self.metrics.reject(reason);
                tracing::info!(
                    target: "ron_transport",
                    event = "reject",
                    reason = reason.as_str(),
                    conn_id = %format_args!("{:016x}", self.id),
                    corr_id = self.corr_id.as_deref(),
                    backend = Backend::Arti.as_str(),
                    engine = "arti",
                    duration_ms = self.opened.elapsed().as_millis() as u64,
                    error = %err,
                    "connection rejected"
                );
            }
            self.cancel.cancel();
        }
        first
    }

    /// A clean end (no reject).
    fn finish(&self) {
        let _ = self.terminal.set(TransportError::IoClosed);
        self.cancel.cancel();
    }

    fn terminal(&self) -> Option<TransportError> {
        self.terminal.get().map(clone_error)
    }

    fn closed_error(&self) -> TransportError {
        self.terminal().unwrap_or(TransportError::IoClosed)
    }
}

/// Keeps the connection in flight; held by the reader and the writer task. The last drop
/// releases the caps, lowers `conn_inflight`, forgets the connection and logs `close`.
#[derive(Debug)]
struct Live {
    core: Arc<Core>,
    permit: Arc<Admission>,
    engine: Weak<EngineInner>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Drop for Live {
    fn drop(&mut self) {
        let core = &self.core;
        if let Some(engine) = self.engine.upgrade() {
            engine.forget(core.id);
        }
        let reason = core
            .terminal
            .get()
            .and_then(|e| e.reject_reason())
            .map(|r| r.as_str());
        // No peer address: Tor peers are not logged (spec/OBSERVABILITY: redact under Arti).
        tracing::info!(
            target: "ron_transport",
            event = "close",
            conn_id = %format_args!("{:016x}", core.id),
            corr_id = core.corr_id.as_deref(),
            backend = Backend::Arti.as_str(),
            engine = "arti",
            reason,
            duration_ms = core.opened.elapsed().as_millis() as u64,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out.load(Ordering::Relaxed),
            "connection closed"
        );
    }
}

/// Turns an established stream into a connection: spawns its reader and writer on the side
/// runtime (`rt`) and returns the consumer's handle.
pub(crate) fn make_conn(
    engine: &Arc<EngineInner>,
    stream: DataStream,
    permit: Admission,
    info: ConnInfo,
    corr_id: Option<Arc<str>>,
) -> ArtiConn {
    let shared = &engine.shared;
    let metrics = shared.metrics.clone();
    let permit = Arc::new(permit);
    let now = Instant::now();
    let core = Arc::new(Core {
        id: info.conn_id,
        corr_id,
        policy: shared.policy.clone(),
        bm: metrics.backend(Backend::Arti).clone(),
        inbox_depth: metrics
            .queue_depth
            .with_label_values(&[QueueName::WriterInbox.as_str()]),
        metrics,
        cancel: CancellationToken::new(),
        close: CancellationToken::new(),
        writer_done: CancellationToken::new(),
        permit: Arc::downgrade(&permit),
        terminal: OnceLock::new(),
        eof: AtomicBool::new(false),
        epoch: now,
        last_activity_ns: AtomicU64::new(0),
        opened: now,
    });
    let live = Arc::new(Live {
        core: core.clone(),
        permit,
        engine: Arc::downgrade(engine),
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
    });
    engine.register(core.clone());
    let (rd, wr) = stream.split();
    let (tx, rx) = mpsc::channel(WRITER_INBOX_CAPACITY);
    let (frames_tx, frames_rx) = mpsc::channel(RECV_QUEUE_FRAMES);
    for kind in [TaskKind::Writer, TaskKind::Reader] {
        core.metrics
            .tasks_spawned
            .with_label_values(&[kind.as_str()])
            .inc();
    }
    engine.spawn(write_task(live.clone(), wr, rx));
    engine.spawn(read_task(live, rd, frames_tx));
    if engine.shutdown.is_cancelled() {
        core.close.cancel();
    }
    ArtiConn {
        info,
        sender: ArtiSender { core, tx },
        frames: frames_rx,
        end: ReadEnd::Open,
    }
}

/// Cloneable handle into one connection's bounded writer inbox.
#[derive(Clone, Debug)]
pub struct ArtiSender {
    core: Arc<Core>,
    tx: mpsc::Sender<Bytes>,
}

impl ArtiSender {
    fn precheck(&self, frame: &Bytes) -> Result<(), TransportError> {
        if let Some(e) = self.core.terminal() {
            return Err(e);
        }
        let max = self.core.policy.config().max_frame_bytes;
        if frame.len() as u64 > max {
            self.core.metrics.reject(RejectReason::TooLarge);
            return Err(TransportError::TooLarge {
                len: frame.len() as u64,
                max,
            });
        }
        Ok(())
    }
}

impl FrameSender for ArtiSender {
    fn try_send(&self, frame: Bytes) -> Result<(), TransportError> {
        self.precheck(&frame)?;
        let Some(permit) = self.core.permit.upgrade() else {
            return Err(self.core.closed_error());
        };
        let wire = (frame.len() + FRAME_HEADER_LEN) as u64;
        if !permit.egress_available(wire, now_ns()) {
            self.core.metrics.reject(RejectReason::RateLimited);
            return Err(TransportError::RateLimited);
        }
        drop(permit);
        self.core.inbox_depth.inc();
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.core.inbox_depth.dec();
                self.core
                    .metrics
                    .queue_dropped
                    .with_label_values(&[QueueName::WriterInbox.as_str()])
                    .inc();
                self.core.metrics.reject(RejectReason::Busy);
                Err(TransportError::Busy)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.core.inbox_depth.dec();
                Err(self.core.closed_error())
            }
        }
    }

    async fn send(&self, frame: Bytes) -> Result<(), TransportError> {
        self.precheck(&frame)?;
        match self.tx.try_reserve() {
            Ok(slot) => {
                self.core.inbox_depth.inc();
                slot.send(frame);
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(())) => return Err(self.core.closed_error()),
            Err(mpsc::error::TrySendError::Full(())) => {}
        }
        let wait = self.core.policy.config().write_timeout;
        tokio::select! {
            biased;
            _ = self.core.cancel.cancelled() => Err(self.core.closed_error()),
            r = tokio::time::timeout(wait, self.tx.reserve()) => match r {
                Ok(Ok(slot)) => {
                    self.core.inbox_depth.inc();
                    slot.send(frame);
                    Ok(())
                }
                Ok(Err(_)) => Err(self.core.closed_error()),
                Err(_) => {
                    let e = TransportError::timeout(TimeoutOp::Write);
                    self.core.fail(&e);
                    Err(e)
                }
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadEnd {
    Open,
    Eof,
    Reported,
}

/// An established Arti connection (a Tor stream carrying frames).
#[derive(Debug)]
pub struct ArtiConn {
    info: ConnInfo,
    sender: ArtiSender,
    frames: mpsc::Receiver<Bytes>,
    end: ReadEnd,
}

impl ArtiConn {
    /// The side-runtime tasks of this connection have both ended.
    pub fn is_finished(&self) -> bool {
        self.sender.core.writer_done.is_cancelled() && self.frames.is_closed()
    }
}

impl Conn for ArtiConn {
    type Sender = ArtiSender;

    fn info(&self) -> &ConnInfo {
        &self.info
    }

    fn sender(&self) -> ArtiSender {
        self.sender.clone()
    }

    fn try_send(&self, frame: Bytes) -> Result<(), TransportError> {
        self.sender.try_send(frame)
    }

    async fn send(&self, frame: Bytes) -> Result<(), TransportError> {
        self.sender.send(frame).await
    }

    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        match self.end {
            ReadEnd::Eof => return Ok(None),
            ReadEnd::Reported => return Err(TransportError::IoClosed),
            ReadEnd::Open => {}
        }
        let core = self.sender.core.clone();
        match self.frames.recv().await {
            Some(frame) => Ok(Some(frame)),
            None => {
                if core.eof.load(Ordering::Acquire) {
                    self.end = ReadEnd::Eof;
                    Ok(None)
                } else {
                    self.end = ReadEnd::Reported;
                    Err(core.closed_error())
                }
            }
        }
    }

    async fn close(mut self) -> Result<(), TransportError> {
        let core = self.sender.core.clone();
        self.frames.close();
        core.close.cancel();
        let bound = core.policy.config().write_timeout * 4 + Duration::from_millis(100);
        drop(self);
        if tokio::time::timeout(bound, core.writer_done.cancelled())
            .await
            .is_err()
        {
            core.metrics
                .tasks_aborted
                .with_label_values(&[TaskKind::Writer.as_str()])
                .inc();
            let e = TransportError::timeout(TimeoutOp::Shutdown);
            core.fail(&e);
            return Err(e);
        }
        match core.terminal() {
            None | Some(TransportError::IoClosed) => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn cancel(&self) {
        let core = &self.sender.core;
        if core.terminal.set(TransportError::Cancelled).is_ok() {
            tracing::debug!(
                target: "ron_transport",
                event = "close",
                conn_id = %format_args!("{:016x}", core.id),
                backend = Backend::Arti.as_str(),
                engine = "arti",
                reason = "cancelled",
                "connection cancelled"
            );
        }
        core.cancel.cancel();
    }
}

impl Drop for ArtiConn {
    fn drop(&mut self) {
        // Graceful close in the background (the writer drains what is queued).
        self.sender.core.close.cancel();
    }
}

/// The reader: decodes frames from the stream and queues them for the consumer.
async fn read_task(live: Arc<Live>, mut rd: DataReader, frames: mpsc::Sender<Bytes>) {
    let core = live.core.clone();
    let mut buf = BytesMut::with_capacity(READ_BUF_MIN);
    let mut decoder = FrameDecoder::new(core.policy.config().max_frame_bytes);
    let mut frame_started: Option<Instant> = None;
    let mut last_read = Instant::now();
    loop {
        let cfg = core.policy.config();
        let read_timeout = cfg.read_timeout;
        decoder.set_max(cfg.max_frame_bytes);
        drop(cfg);
        // Hand out every complete frame before reading again.
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    frame_started = (!buf.is_empty()).then_some(last_read);
                    let sent = tokio::select! {
                        biased;
                        _ = core.cancel.cancelled() => false,
                        r = frames.send(frame) => r.is_ok(),
                    };
                    if !sent {
                        // Cancelled, or the consumer dropped its handle.
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // Announced length above the ceiling: nothing was reserved for it.
                    core.fail(&e);
                    return;
                }
            }
        }
        reserve_for_next_read(&mut buf);
        let deadline = frame_started.map(|t| tokio::time::Instant::from_std(t + read_timeout));
        let read = tokio::select! {
            biased;
            _ = core.cancel.cancelled() => return,
            r = rd.read_buf(&mut buf) => r,
            _ = sleep_until_opt(deadline) => {
                core.fail(&TransportError::timeout(TimeoutOp::Read));
                return;
            }
        };
        match read {
            Ok(0) => {
                if buf.is_empty() {
                    core.eof.store(true, Ordering::Release);
                    return;
                }
                core.fail(&TransportError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed inside a frame",
                )));
                return;
            }
            Ok(n) => {
                core.touch();
                core.bm.io_read_size.observe(n as f64);
                core.bm.bytes_in.inc_by(n as u64);
                live.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                last_read = Instant::now();
                if frame_started.is_none() {
                    frame_started = Some(last_read);
                }
                let pause = live.permit.pace_ingress(n as u64, now_ns());
                if !pause.is_zero() {
                    tokio::select! {
                        biased;
                        _ = core.cancel.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
            Err(e) => {
                // A stream the peer ended with END(DONE) reads as a clean EOF above; anything
                // else (circuit collapse, END with an error reason) lands here.
                core.fail(&TransportError::Io(e));
                return;
            }
        }
    }
}

/// Room for the next read: at least [`READ_BUF_MIN`], or the rest of an announced frame.
fn reserve_for_next_read(buf: &mut BytesMut) {
    let mut want = READ_BUF_MIN;
    if buf.len() >= FRAME_HEADER_LEN {
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let total = (len + FRAME_HEADER_LEN).min(crate::limits::MAX_FRAME_CEILING as usize + 4);
        want = want.max(total.saturating_sub(buf.len()));
    }
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

enum Exit {
    Drained,
    Cancelled,
    Failed(TransportError),
}

/// The single writer: drains the inbox in `chunk_bytes` batches, paces egress, watches idle.
async fn write_task(live: Arc<Live>, mut wr: DataWriter, mut rx: mpsc::Receiver<Bytes>) {
    let core = live.core.clone();
    let exit = write_loop(&live, &mut wr, &mut rx).await;
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
    drop(wr);
    rx.close();
    let mut left = 0;
    while rx.try_recv().is_ok() {
        left += 1;
    }
    core.inbox_depth.sub(left);
    core.finish();
    core.writer_done.cancel();
    drop(live);
}

async fn write_loop(live: &Live, wr: &mut DataWriter, rx: &mut mpsc::Receiver<Bytes>) -> Exit {
    let core = &live.core;
    let mut draining = false;
    let mut stage = BytesMut::new();
    let idle = tokio::time::sleep(core.policy.config().idle_timeout);
    tokio::pin!(idle);
    loop {
        let first = tokio::select! {
            biased;
            _ = core.cancel.cancelled() => return Exit::Cancelled,
            _ = core.close.cancelled(), if !draining => {
                draining = true;
                rx.close();
                continue;
            }
            m = rx.recv() => match m {
                Some(f) => {
                    core.inbox_depth.dec();
                    f
                }
                None => return Exit::Drained,
            },
            _ = &mut idle, if !draining => {
                let idle_timeout = core.policy.config().idle_timeout;
                let deadline = core.last_activity() + idle_timeout;
                if Instant::now() >= deadline {
                    return Exit::Failed(TransportError::timeout(TimeoutOp::Idle));
                }
                idle.as_mut().reset(tokio::time::Instant::from_std(deadline));
                continue;
            }
        };
        let cfg = core.policy.config();
        let chunk = (cfg.chunk_bytes as usize).max(FRAME_HEADER_LEN + 1);
        let write_timeout = cfg.write_timeout;
        drop(cfg);
        let mut segs: Vec<Bytes> = Vec::new();
        let mut batch = stage_frame(&mut stage, &mut segs, first);
        while batch < chunk {
            match rx.try_recv() {
                Ok(f) => {
                    core.inbox_depth.dec();
                    batch += stage_frame(&mut stage, &mut segs, f);
                }
                Err(_) => break,
            }
        }
        if !stage.is_empty() {
            segs.push(stage.split().freeze());
        }
        for seg in segs {
            // At most `chunk_bytes` per write, paced before it is written.
            for piece in seg.chunks(chunk) {
                let pause = live.permit.pace_egress(piece.len() as u64, now_ns());
                if !pause.is_zero() {
                    tokio::select! {
                        biased;
                        _ = core.cancel.cancelled() => return Exit::Cancelled,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                let r = tokio::select! {
                    biased;
                    _ = core.cancel.cancelled() => return Exit::Cancelled,
                    r = tokio::time::timeout(write_timeout, wr.write_all(piece)) => r,
                };
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Exit::Failed(TransportError::Io(e)),
                    Err(_) => return Exit::Failed(TransportError::timeout(TimeoutOp::Write)),
                }
                let n = piece.len();
                core.touch();
                core.bm.io_write_size.observe(n as f64);
                core.bm.bytes_out.inc_by(n as u64);
                live.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        // A Tor stream sends a partly filled cell only on flush.
        let r = tokio::select! {
            biased;
            _ = core.cancel.cancelled() => return Exit::Cancelled,
            r = tokio::time::timeout(write_timeout, wr.flush()) => r,
        };
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Exit::Failed(TransportError::Io(e)),
            Err(_) => return Exit::Failed(TransportError::timeout(TimeoutOp::Write)),
        }
    }
}

/// Appends one frame (header + payload); small payloads are copied next to the header, large
/// ones become their own segment. Returns the frame's wire size.
fn stage_frame(stage: &mut BytesMut, segs: &mut Vec<Bytes>, payload: Bytes) -> usize {
    let wire = FRAME_HEADER_LEN + payload.len();
    // Lengths were checked against `max_frame_bytes` (≤ 1 MiB) when queued.
    stage.put_u32(payload.len() as u32);
    if payload.len() <= COPY_MAX {
        stage.put_slice(&payload);
    } else {
        segs.push(stage.split().freeze());
        segs.push(payload);
    }
    wire
}

/// `TransportError` is not `Clone`; terminal errors are handed out many times.
pub(crate) fn clone_error(e: &TransportError) -> TransportError {
    match e {
        TransportError::Timeout { op } => TransportError::Timeout { op: *op },
        TransportError::PeerLimit => TransportError::PeerLimit,
        TransportError::RateLimited => TransportError::RateLimited,
        TransportError::TooLarge { len, max } => TransportError::TooLarge {
            len: *len,
            max: *max,
        },
        TransportError::Tls { detail } => TransportError::Tls {
            detail: detail.clone(),
        },
        TransportError::ArtiBootstrap => TransportError::ArtiBootstrap,
        TransportError::IoClosed => TransportError::IoClosed,
        TransportError::Busy => TransportError::Busy,
        TransportError::Cancelled => TransportError::Cancelled,
        TransportError::Unsupported { what } => TransportError::Unsupported { what: what.clone() },
        TransportError::Io(io) => TransportError::Io(io::Error::new(io.kind(), io.to_string())),
        other => TransportError::Unsupported {
            what: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_copies_small_and_separates_large() {
        let mut stage = BytesMut::new();
        let mut segs = Vec::new();
        assert_eq!(
            stage_frame(&mut stage, &mut segs, Bytes::from_static(b"hi")),
            6
        );
        let large = Bytes::from(vec![1u8; COPY_MAX + 1]);
        stage_frame(&mut stage, &mut segs, large.clone());
        assert_eq!(&segs[0][..], b"\0\0\0\x02hi\0\0\x10\x01");
        assert_eq!(segs[1].as_ptr(), large.as_ptr());
    }

    #[test]
    fn reservation_is_capped_at_the_ceiling() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        reserve_for_next_read(&mut buf);
        assert!(buf.capacity() <= 2 * 1024 * 1024);
    }
}
