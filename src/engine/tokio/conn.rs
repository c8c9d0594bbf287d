//! One tokio connection: [`TokioConn`] (the receive path and the handle), [`TokioSender`] (the
//! cloneable writer-inbox handle) and the state they share with the writer task.
//!
//! # Receive path: decoded in the caller's task
//! `recv` reads straight from the owned read half into a 64 KiB+ `BytesMut` and hands out every
//! complete frame in that buffer (split off without copying) before it reads again. There is no
//! reader task: a task would add a channel hop, a wake-up and a second buffer per batch, and a
//! bounded frame queue between the socket and the consumer would hide TCP backpressure. When the
//! consumer stops calling `recv`, the kernel receive window fills and the peer is throttled —
//! exactly what ingress pacing wants too (`pace_ingress` delays the next read). The writer task
//! doubles as the connection's watchdog (idle timeout), so a consumer that never calls `recv`
//! still sees idle connections closed.
//!
//! # Terminal state
//! The first failure (timeout, too large, TLS, I/O, cancel) is recorded once in [`ConnCore`];
//! only that first recording counts `rejected_total{reason}`. `recv` returns it once, then
//! `IoClosed`; senders return it from then on.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus::IntGauge;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
// The connection clocks (idle, read timeout) read tokio's clock: it is the real monotonic clock,
// and under `tokio::time::pause` (the memory engine's virtual clock) the paused one.
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::Backend;
use crate::engine::admission::Admission;
use crate::engine::tokio::stream::ReadHalf;
use crate::engine::tokio::EngineInner;
use crate::engine::{events, Conn, ConnInfo, EngineKind, FrameSender};
use crate::error::{TimeoutOp, TransportError};
use crate::limits::{FrameDecoder, FRAME_HEADER_LEN};
use crate::metrics::{BackendMetrics, QueueName, TaskKind, TransportMetrics};
use crate::policy::{now_ns, Policy};

/// Minimum free space in the read buffer before a read (64 KiB): one read drains a full TCP
/// segment train, and frames are split off the front without copying.
pub(crate) const READ_BUF_MIN: usize = 64 * 1024;
/// Upper bound of one read when a large frame is announced (bounds per-read reservation).
const READ_BUF_MAX: usize = 1024 * 1024 + FRAME_HEADER_LEN;

/// State shared by the `Conn`, every `TokioSender` and the writer task.
#[derive(Debug)]
pub(crate) struct ConnCore {
    pub(crate) id: u64,
    pub(crate) backend: Backend,
    pub(crate) peer: SocketAddr,
    pub(crate) corr_id: Option<Arc<str>>,
    pub(crate) policy: Arc<Policy>,
    pub(crate) metrics: Arc<TransportMetrics>,
    pub(crate) bm: BackendMetrics,
    pub(crate) inbox_depth: IntGauge,
    /// Hard stop: every per-connection task exits at its next poll.
    pub(crate) cancel: CancellationToken,
    /// Graceful close request: the writer drains the inbox, then shuts the write side down.
    pub(crate) close: CancellationToken,
    /// Set by the writer task when it has exited.
    pub(crate) writer_done: CancellationToken,
    /// The admission permit; strong references live in [`Live`] (reader + writer), so caps are
    /// released when the connection is gone even if sender clones linger.
    pub(crate) permit: Weak<Admission>,
    terminal: OnceLock<TransportError>,
    /// Plain TCP: the write half when the writer task is not using it, for the senders'
    /// direct writes (see [`TokioSender::try_direct`]). `None` for TLS.
    pub(crate) tcp: Option<Mutex<TcpSlot>>,
    /// Bytes written by direct writes (the close log adds them to the writer's).
    pub(crate) direct_bytes_out: AtomicU64,
    /// Frames handed to the writer inbox and not yet written by the writer. A direct write is
    /// taken only at 0: a frame the writer has already popped from the inbox (the inbox looks
    /// empty) but not yet written must not be overtaken.
    pub(crate) queued: std::sync::atomic::AtomicUsize,
    /// The reader already holds another complete frame: a reply to this one is queued for the
    /// writer (which coalesces the batch into one write) instead of written directly.
    pub(crate) reader_more: std::sync::atomic::AtomicBool,
    /// Live limits cached from the config (refreshed when its generation moves): the frame
    /// ceiling and whether any byte rate is set. One atomic load per frame instead of cloning
    /// the config snapshot's `Arc`.
    limits_gen: AtomicU64,
    max_frame: AtomicU64,
    rates_on: std::sync::atomic::AtomicBool,
    /// Origin of `last_activity_ns`.
    epoch: Instant,
    last_activity_ns: AtomicU64,
    pub(crate) opened: Instant,
}

impl ConnCore {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        backend: Backend,
        peer: SocketAddr,
        corr_id: Option<Arc<str>>,
        policy: Arc<Policy>,
        metrics: Arc<TransportMetrics>,
        permit: &Arc<Admission>,
        plain_tcp: bool,
    ) -> Self {
        let bm = metrics.backend(backend).clone();
        let inbox_depth = metrics
            .queue_depth
            .with_label_values(&[QueueName::WriterInbox.as_str()]);
        let now = Instant::now();
        Self {
            id,
            backend,
            peer,
            corr_id,
            policy,
            metrics,
            bm,
            inbox_depth,
            cancel: CancellationToken::new(),
            close: CancellationToken::new(),
            writer_done: CancellationToken::new(),
            permit: Arc::downgrade(permit),
            terminal: OnceLock::new(),
            tcp: plain_tcp.then(|| Mutex::new(TcpSlot::default())),
            direct_bytes_out: AtomicU64::new(0),
            queued: std::sync::atomic::AtomicUsize::new(0),
            reader_more: std::sync::atomic::AtomicBool::new(false),
            limits_gen: AtomicU64::new(u64::MAX),
            max_frame: AtomicU64::new(0),
            rates_on: std::sync::atomic::AtomicBool::new(false),
            epoch: now,
            last_activity_ns: AtomicU64::new(0),
            opened: now,
        }
    }

    #[inline]
    fn refresh_limits(&self) {
        let g = self.policy.config_handle().generation();
        if g != self.limits_gen.load(Ordering::Acquire) {
            let cfg = self.policy.config();
            self.max_frame.store(cfg.max_frame_bytes, Ordering::Relaxed);
            self.rates_on.store(cfg.has_byte_rates(), Ordering::Relaxed);
            self.limits_gen.store(g, Ordering::Release);
        }
    }

    /// The live frame ceiling.
    #[inline]
    pub(crate) fn max_frame(&self) -> u64 {
        self.refresh_limits();
        self.max_frame.load(Ordering::Relaxed)
    }

    /// True if any byte rate is configured (egress is then paced by the writer task).
    #[inline]
    pub(crate) fn rates_on(&self) -> bool {
        self.refresh_limits();
        self.rates_on.load(Ordering::Relaxed)
    }

    /// Records a byte moving in either direction (idle-timeout bookkeeping).
    pub(crate) fn touch(&self) {
        self.touch_at(Instant::now());
    }

    /// [`touch`](Self::touch) with a clock reading the caller already has.
    pub(crate) fn touch_at(&self, now: Instant) {
        let ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.last_activity_ns.store(ns, Ordering::Relaxed);
    }

    /// When the last byte moved.
    pub(crate) fn last_activity(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.last_activity_ns.load(Ordering::Relaxed))
    }

    /// Records the connection's terminal error if none is recorded yet. Only the first call
    /// counts `rejected_total{reason}`, logs, and cancels the connection's tasks.
    pub(crate) fn fail(&self, err: &TransportError) -> bool {
        let first = self.terminal.set(clone_error(err)).is_ok();
        if first {
            if let Some(reason) = err.reject_reason() {
                self.metrics.reject(reason);
                events::conn_reject(&self.facts(), reason, self.opened.elapsed(), err);
            }
            self.cancel.cancel();
        }
        first
    }

    /// What every event about this connection carries.
    pub(crate) fn facts(&self) -> events::ConnFacts<'_> {
        events::ConnFacts {
            conn_id: self.id,
            corr_id: self.corr_id.as_deref(),
            backend: self.backend,
            engine: EngineKind::Tokio,
            peer: self.peer,
        }
    }

    /// Records a clean end (no reject) if nothing is recorded yet and stops the tasks.
    pub(crate) fn finish(&self) {
        let _ = self.terminal.set(TransportError::IoClosed);
        self.cancel.cancel();
    }

    /// The terminal error, if the connection has ended.
    pub(crate) fn terminal(&self) -> Option<TransportError> {
        self.terminal.get().map(clone_error)
    }

    fn closed_error(&self) -> TransportError {
        self.terminal().unwrap_or(TransportError::IoClosed)
    }
}

/// Keeps a connection "in flight": held by the reader state and by the writer task. When the
/// last holder drops, `conn_inflight` goes down, the admission permit (caps) is released, the
/// engine forgets the connection and one `close` event is logged.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) core: Arc<ConnCore>,
    pub(crate) permit: Arc<Admission>,
    pub(crate) engine: Weak<EngineInner>,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

impl Drop for Live {
    fn drop(&mut self) {
        let core = &self.core;
        if let Some(engine) = self.engine.upgrade() {
            engine.forget(core.id);
        }
        let reason = core.terminal.get().and_then(|e| e.reject_reason());
        events::close(
            &core.facts(),
            reason,
            core.opened.elapsed(),
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed) + core.direct_bytes_out.load(Ordering::Relaxed),
        );
    }
}

/// Cloneable handle into one connection's bounded writer inbox.
#[derive(Clone, Debug)]
pub struct TokioSender {
    pub(crate) core: Arc<ConnCore>,
    pub(crate) tx: mpsc::Sender<Out>,
}

/// What the writer inbox carries.
#[derive(Debug)]
pub(crate) enum Out {
    /// A frame payload (the writer adds the length prefix).
    Frame(Bytes),
    /// A direct write left bytes behind (see [`TcpSlot::pending`]): write them.
    Kick,
}

/// The plain-TCP write half while the writer task is not using it, and the bytes a direct
/// write could not finish.
#[derive(Debug, Default)]
pub(crate) struct TcpSlot {
    /// The write half, lent back by the writer task between batches.
    pub(crate) half: Option<tokio::net::tcp::OwnedWriteHalf>,
    /// Wire bytes (prefix included) a direct write left unwritten; the writer writes them
    /// before anything from the inbox.
    pub(crate) pending: std::collections::VecDeque<Bytes>,
}

impl TokioSender {
    /// Terminal state and frame ceiling, shared by `try_send` and `send`.
    fn precheck(&self, frame: &Bytes) -> Result<(), TransportError> {
        if let Some(e) = self.core.terminal() {
            return Err(e);
        }
        let max = self.core.max_frame();
        if frame.len() as u64 > max {
            self.core
                .metrics
                .reject(crate::error::RejectReason::TooLarge);
            return Err(TransportError::TooLarge {
                len: frame.len() as u64,
                max,
            });
        }
        Ok(())
    }
}

impl TokioSender {
    /// The direct write: on plain TCP, with no byte rate set, when nothing is queued and the
    /// writer task is idle (its write half is lent back in the core's slot), the caller writes
    /// the frame itself with one non-blocking `writev` — no hop to the writer task, no wake.
    /// Bytes the socket did not take stay in the slot and the writer is kicked to finish them
    /// (it writes them before anything queued later, so frames never interleave). `false`: not
    /// taken (the caller queues the frame).
    fn try_direct(&self, frame: &Bytes) -> bool {
        let Some(slot) = self.core.tcp.as_ref() else {
            return false;
        };
        if self.core.queued.load(Ordering::Acquire) != 0
            || self.tx.capacity() != self.tx.max_capacity()
            || self.core.reader_more.load(Ordering::Relaxed)
            || self.core.rates_on()
        {
            return false;
        }
        let Ok(mut slot) = slot.try_lock() else {
            return false;
        };
        if !slot.pending.is_empty() {
            return false;
        }
        let Some(half) = slot.half.as_ref() else {
            return false;
        };
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let hdr = len.to_be_bytes();
        let total = FRAME_HEADER_LEN + frame.len();
        // Would block, or an error the writer will meet and report: it writes it all (0).
        let written = half
            .try_write_vectored(&[std::io::IoSlice::new(&hdr), std::io::IoSlice::new(frame)])
            .unwrap_or_default();
        if written > 0 {
            let core = &self.core;
            core.touch();
            core.bm.io_write_size.observe(written as f64);
            core.bm.bytes_out.inc_by(written as u64);
            core.direct_bytes_out
                .fetch_add(written as u64, Ordering::Relaxed);
        }
        if written < total {
            if written < FRAME_HEADER_LEN {
                slot.pending
                    .push_back(Bytes::copy_from_slice(&hdr[written..]));
                slot.pending.push_back(frame.clone());
            } else {
                slot.pending
                    .push_back(frame.slice(written - FRAME_HEADER_LEN..));
            }
            drop(slot);
            // Full inbox: the writer is awake already and looks at the slot first.
            let _ = self.tx.try_send(Out::Kick);
        }
        true
    }
}

impl FrameSender for TokioSender {
    fn try_send(&self, frame: Bytes) -> Result<(), TransportError> {
        self.precheck(&frame)?;
        if self.try_direct(&frame) {
            return Ok(());
        }
        let Some(permit) = self.core.permit.upgrade() else {
            return Err(self.core.closed_error());
        };
        let wire = (frame.len() + FRAME_HEADER_LEN) as u64;
        if !permit.egress_available(wire, now_ns()) {
            self.core
                .metrics
                .reject(crate::error::RejectReason::RateLimited);
            return Err(TransportError::RateLimited);
        }
        drop(permit);
        self.core.inbox_depth.inc();
        self.core.queued.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(Out::Frame(frame)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.core.inbox_depth.dec();
                self.core.queued.fetch_sub(1, Ordering::AcqRel);
                self.core
                    .metrics
                    .queue_dropped
                    .with_label_values(&[QueueName::WriterInbox.as_str()])
                    .inc();
                self.core.metrics.reject(crate::error::RejectReason::Busy);
                Err(TransportError::Busy)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.core.inbox_depth.dec();
                self.core.queued.fetch_sub(1, Ordering::AcqRel);
                Err(self.core.closed_error())
            }
        }
    }

    async fn send(&self, frame: Bytes) -> Result<(), TransportError> {
        self.precheck(&frame)?;
        if self.try_direct(&frame) {
            return Ok(());
        }
        match self.tx.try_reserve() {
            Ok(slot) => {
                self.core.inbox_depth.inc();
                self.core.queued.fetch_add(1, Ordering::AcqRel);
                slot.send(Out::Frame(frame));
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
        self.core.queued.fetch_add(1, Ordering::AcqRel);
                    slot.send(Out::Frame(frame));
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

/// The receive side: owned read half, read buffer and decoder.
pub(crate) struct ReaderState {
    pub(crate) rd: ReadHalf,
    pub(crate) buf: BytesMut,
    pub(crate) decoder: FrameDecoder,
    /// When the partially buffered frame started arriving (read-timeout origin).
    pub(crate) frame_started: Option<Instant>,
    /// When the last read returned bytes.
    pub(crate) last_read: Instant,
    /// Ingress pacing: do not read again before this.
    pub(crate) pause_until: Option<tokio::time::Instant>,
    pub(crate) live: Arc<Live>,
    /// Completes when the connection is cancelled. Created once per connection and kept
    /// registered, so a read does not register (and unregister) a waiter each time.
    pub(crate) cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Sees every reload: a read already waiting re-arms its deadline from the new snapshot.
    pub(crate) config_changes: tokio::sync::watch::Receiver<Arc<crate::config::ValidConfig>>,
}

/// What `recv` reports after the reader is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadEnd {
    Open,
    /// Clean EOF between frames was reported (`Ok(None)`); keep reporting it.
    Eof,
    /// The terminal error was reported once; from now on `IoClosed`.
    Reported,
}

/// An established tokio connection (TCP or TLS).
pub struct TokioConn {
    pub(crate) info: ConnInfo,
    pub(crate) sender: TokioSender,
    /// `recv` uses `get_mut` (no locking); `cancel(&self)` takes it out to drop the socket.
    pub(crate) reader: Mutex<Option<ReaderState>>,
    end: ReadEnd,
}

impl std::fmt::Debug for TokioConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioConn")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl TokioConn {
    pub(crate) fn new(info: ConnInfo, sender: TokioSender, reader: ReaderState) -> Self {
        Self {
            info,
            sender,
            reader: Mutex::new(Some(reader)),
            end: ReadEnd::Open,
        }
    }

    fn core(&self) -> &Arc<ConnCore> {
        &self.sender.core
    }

    /// Drops the read half (and its share of the connection).
    fn drop_reader(&mut self) {
        *self
            .reader
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Reports the terminal error once, then `IoClosed`.
    fn report_end(&mut self, err: TransportError) -> Result<Option<Bytes>, TransportError> {
        self.drop_reader();
        match self.end {
            ReadEnd::Open => {
                self.end = ReadEnd::Reported;
                Err(err)
            }
            ReadEnd::Eof => Ok(None),
            ReadEnd::Reported => Err(TransportError::IoClosed),
        }
    }

    async fn recv_inner(&mut self) -> Result<Option<Bytes>, TransportError> {
        let core = self.sender.core.clone();
        let step = {
            let reader = self
                .reader
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner);
            match reader.as_mut() {
                Some(st) => next_frame(st, &core).await,
                None => Step::Failed(core.closed_error()),
            }
        };
        match step {
            Step::Frame(frame) => Ok(Some(frame)),
            Step::Eof => {
                // Clean EOF between frames. The write side may still be in use.
                self.drop_reader();
                self.end = ReadEnd::Eof;
                Ok(None)
            }
            Step::Failed(e) => self.report_end(e),
        }
    }
}

/// Outcome of one `recv`.
enum Step {
    Frame(Bytes),
    Eof,
    /// The connection ended; the error is already recorded in the core.
    Failed(TransportError),
}

/// Polls `fut` once: `Ready(output)` if it completed, `Pending` if it would wait (its waker is
/// then registered; keep polling the same future).
pub(crate) async fn poll_once<F: Future + ?Sized>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// True if `buf` starts with a whole frame (header and body).
fn holds_complete_frame(buf: &[u8]) -> bool {
    match buf.get(..FRAME_HEADER_LEN) {
        Some(h) => {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            buf.len() - FRAME_HEADER_LEN >= len
        }
        None => false,
    }
}

/// The pacing clock ([`now_ns`]) at `now`, without reading the clock again.
fn ns_at(now: Instant) -> u64 {
    // `now_ns` counts from a process-wide origin; derive the same scale from one reading. The
    // origin is a real clock reading even when `now` comes from a paused tokio clock.
    static ORIGIN: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
    let (origin, base) = *ORIGIN.get_or_init(|| (std::time::Instant::now(), now_ns()));
    base.saturating_add(now.into_std().saturating_duration_since(origin).as_nanos() as u64)
}

/// Decodes the next frame, reading (and pacing) as needed. Every complete frame already in the
/// buffer is handed out before the socket is read again.
async fn next_frame(st: &mut ReaderState, core: &ConnCore) -> Step {
    st.decoder.set_max(core.policy.config().max_frame_bytes);
    loop {
        if let Some(e) = core.terminal() {
            return Step::Failed(e);
        }
        match st.decoder.decode(&mut st.buf) {
            Ok(Some(frame)) => {
                // The leftover (a started next frame) arrived with the last read.
                st.frame_started = (!st.buf.is_empty()).then_some(st.last_read);
                core.reader_more
                    .store(holds_complete_frame(&st.buf), Ordering::Relaxed);
                return Step::Frame(frame);
            }
            Ok(None) => {}
            Err(e) => {
                // Announced length above the ceiling: nothing was reserved for it.
                core.fail(&e);
                return Step::Failed(e);
            }
        }
        if let Some(until) = st.pause_until.take() {
            tokio::select! {
                biased;
                _ = st.cancelled.as_mut() => continue,
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        reserve_for_next_read(&mut st.buf);
        // Data is often already there (pipelining peers, a read that split a frame): try once
        // before arming the cancellation and deadline branches.
        let read = {
            let mut read = std::pin::pin!(st.rd.read_buf(&mut st.buf));
            match poll_once(read.as_mut()).await {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    let read_timeout = core.policy.config().read_timeout;
                    let deadline = st.frame_started.map(|t| t + read_timeout);
                    tokio::select! {
                        biased;
                        _ = st.cancelled.as_mut() => continue,
                        r = read => r,
                        // A reload: re-arm with the new deadline and ceiling.
                        Ok(()) = st.config_changes.changed() => {
                            st.decoder.set_max(core.policy.config().max_frame_bytes);
                            continue;
                        }
                        _ = sleep_until_opt(deadline) => {
                            let e = TransportError::timeout(TimeoutOp::Read);
                            core.fail(&e);
                            return Step::Failed(e);
                        }
                    }
                }
            }
        };
        match read {
            Ok(0) => {
                if st.buf.is_empty() {
                    return Step::Eof;
                }
                let e = TransportError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed inside a frame",
                ));
                core.fail(&e);
                return Step::Failed(e);
            }
            Ok(n) => {
                // One clock reading per read serves the idle, read-timeout and pacing clocks.
                let now = Instant::now();
                core.touch_at(now);
                core.bm.io_read_size.observe(n as f64);
                core.bm.bytes_in.inc_by(n as u64);
                st.live.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                st.last_read = now;
                if st.frame_started.is_none() {
                    st.frame_started = Some(now);
                }
                let pause = st.live.permit.pace_ingress(n as u64, ns_at(now));
                if !pause.is_zero() {
                    st.pause_until = Some(now + pause);
                }
            }
            Err(e) => {
                let e = map_read_error(e, core.backend);
                core.fail(&e);
                return Step::Failed(e);
            }
        }
    }
}

impl Conn for TokioConn {
    type Sender = TokioSender;

    fn info(&self) -> &ConnInfo {
        &self.info
    }

    fn sender(&self) -> TokioSender {
        self.sender.clone()
    }

    fn try_send(&self, frame: Bytes) -> Result<(), TransportError> {
        self.sender.try_send(frame)
    }

    async fn send(&self, frame: Bytes) -> Result<(), TransportError> {
        self.sender.send(frame).await
    }

    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        if self.end == ReadEnd::Eof {
            return Ok(None);
        }
        self.recv_inner().await
    }

    async fn close(mut self) -> Result<(), TransportError> {
        let core = self.core().clone();
        self.drop_reader();
        core.close.cancel();
        // The writer bounds its own drain by `write_timeout` of no progress; this outer bound
        // only guards against a writer that keeps making slow progress forever.
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
        let core = self.core();
        if core.terminal.set(TransportError::Cancelled).is_ok() {
            tracing::debug!(
                target: "ron_transport",
                event = "close",
                conn_id = %format_args!("{:016x}", core.id),
                backend = core.backend.as_str(),
                engine = "tokio",
                reason = "cancelled",
                "connection cancelled"
            );
        }
        core.cancel.cancel();
        // Drop the read half now (the writer task drops the write half at its next poll).
        let taken = self
            .reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(taken);
    }
}

impl Drop for TokioConn {
    fn drop(&mut self) {
        // Dropping the handle closes gracefully in the background: the writer drains what is
        // queued (bounded by `write_timeout`) and shuts the write side down.
        self.sender.core.close.cancel();
    }
}

/// Makes room for the next read: at least [`READ_BUF_MIN`] free, or the rest of an announced
/// frame (up to [`READ_BUF_MAX`]) so a large frame arrives in few reads. The announced length
/// was already checked by the decoder against the ceiling when it got here.
fn reserve_for_next_read(buf: &mut BytesMut) {
    let mut want = READ_BUF_MIN;
    if buf.len() >= FRAME_HEADER_LEN {
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let total = (len + FRAME_HEADER_LEN).min(READ_BUF_MAX);
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

/// TLS record errors surface from tokio-rustls as `InvalidData` wrapping a rustls error.
fn map_read_error(e: io::Error, backend: Backend) -> TransportError {
    #[cfg(feature = "quic")]
    if backend == Backend::Quic {
        if let Some(mapped) = super::quic::stream_error(&e) {
            return mapped;
        }
    }
    if backend == Backend::Tls && e.kind() == io::ErrorKind::InvalidData {
        TransportError::Tls {
            detail: e.to_string(),
        }
    } else {
        TransportError::Io(e)
    }
}

/// `TransportError` is not `Clone` (it carries an `io::Error`); terminal errors are handed out
/// many times, so this rebuilds an equivalent value.
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
        TransportError::Config(c) => TransportError::Unsupported {
            what: c.to_string(),
        },
        TransportError::Unsupported { what } => TransportError::Unsupported { what: what.clone() },
        TransportError::Io(io) => TransportError::Io(io::Error::new(io.kind(), io.to_string())),
        TransportError::QuicPath { detail } => TransportError::QuicPath {
            detail: detail.clone(),
        },
    }
}
