//! [`ConnCtx`]: a handler's view of its connection during a callback, over the connection's
//! I/O bookkeeping ([`ConnIo`]) that the shard loop reconciles after the callback returns.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use crate::conn::{ConnState, Timeouts};
use crate::meta::{CloseReason, ConnMeta, CtxSendError, Frame, FrameSrc};
use crate::remote::ConnRemote;
use crate::sys::{Body, OpId, OutSeg, RingPin, RingSlice};

/// What a connection's receive in flight reads into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecvKind {
    /// Multishot into the provided-buffer ring.
    Ring,
    /// The missing bytes of the frame in progress, into its lent body buffer.
    Body,
    /// A fresh buffer sized for one frame like the last (starts at a frame boundary).
    Fresh,
}

/// Per-connection I/O bookkeeping (what the ctx touches, plus op handles).
pub(crate) struct ConnIo {
    pub(crate) out: VecDeque<OutSeg>,
    pub(crate) want_read: bool,
    /// Output above the high-water mark pauses reading (see [`ConnCtx::set_output_pauses_reading`]).
    pub(crate) output_pauses_reading: bool,
    /// Reading is held until then (rate pacing), independently of `want_read`.
    pub(crate) read_hold: Option<Instant>,
    pub(crate) read_hold_armed: Option<Instant>,
    /// Received bytes held back while reads are held (delivered as the hold allows).
    pub(crate) deferred: bytes::BytesMut,
    pub(crate) close: Option<(CloseReason, bool)>,
    pub(crate) remote: ConnRemote,
    pub(crate) recv_op: Option<OpId>,
    pub(crate) recv_cancelled: bool,
    /// What the receive in flight reads into.
    pub(crate) recv_kind: RecvKind,
    /// Direct-receive mode (plain TCP carrying large frames): receives go straight into the
    /// frame's buffer, or into a fresh buffer sized for one frame like the last, instead of
    /// the provided-buffer ring.
    pub(crate) direct: bool,
    /// Payload length of the last large frame (sizes the next fresh direct buffer).
    pub(crate) direct_len: usize,
    /// Counts fresh direct receives armed (matches a `DirectIdle` timer to its receive).
    pub(crate) fresh_seq: u32,
    /// Reading is paused because queued output reached the high-water mark.
    pub(crate) out_paused: bool,
    pub(crate) starved: bool,
    pub(crate) send_op: Option<OpId>,
    pub(crate) zc_sent: Option<i32>,
    pub(crate) eof: bool,
    pub(crate) timer: Option<Instant>,
    /// A wake requested by the handler itself ([`ConnCtx::wake_after`]): when, which bits.
    pub(crate) wake_at: Option<(Instant, u32)>,
    pub(crate) wake_armed: Option<Instant>,
    /// Provided buffers held by this connection's queued output (in-place echoes), created at
    /// the first in-place echo.
    pub(crate) ring_pins: Option<Rc<Cell<u16>>>,
    /// In-place echoes copied out of their receive buffer because pinning it would exceed
    /// this connection's share of the ring (drained into the shard's stats).
    pub(crate) pin_copies: u32,
}

impl ConnIo {
    /// Whether an in-place echo of a frame in `slice` may keep its receive buffer held until
    /// the send completes, and the pin that counts it (`None` when the buffer is already held
    /// by the segment queued just before, so it is counted already).
    ///
    /// The provided-buffer ring is shared by every connection of the shard, and a peer that
    /// stops reading keeps echoed frames queued: pinned buffers would then never return, and
    /// one such peer sending one tiny frame per segment could take the whole ring (every other
    /// connection's receives fail with ENOBUFS). So a connection may pin at most
    /// `entries / 16` buffers (at least 1), and nobody pins while fewer than a quarter of the
    /// ring's buffers are free; past that the frame is copied (its bytes count against the
    /// output high-water mark, which pauses reading).
    fn pin_ring(&mut self, slice: &RingSlice) -> Result<Option<RingPin>, ()> {
        let bid = slice.bid();
        if self.out.back().and_then(OutSeg::ring_bid) == Some(bid) {
            return Ok(None);
        }
        let entries = slice.ring_entries();
        let per_conn = (entries / 16).max(1);
        let reserve = (entries / 4).max(1);
        let pins = self.ring_pins.get_or_insert_with(Default::default);
        if usize::from(pins.get()) >= per_conn || slice.ring_free() < reserve {
            return Err(());
        }
        Ok(Some(RingPin::new(pins)))
    }
}

/// The handler's view of its connection during a callback.
pub struct ConnCtx<'a> {
    pub(crate) io: &'a mut ConnIo,
    pub(crate) state: &'a mut ConnState,
    pub(crate) meta: &'a ConnMeta,
    pub(crate) now: Instant,
}

impl std::fmt::Debug for ConnCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnCtx").field("meta", self.meta).finish()
    }
}

impl ConnCtx<'_> {
    /// Connection facts.
    pub fn meta(&self) -> &ConnMeta {
        self.meta
    }

    /// The shard's current time (taken once per loop iteration).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.state.queued()
    }

    /// Queues a frame, copying `payload`.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), CtxSendError> {
        self.send_bytes(Bytes::copy_from_slice(payload))
    }

    /// Queues a frame whose payload is `payload` (no copy).
    pub fn send_bytes(&mut self, payload: Bytes) -> Result<(), CtxSendError> {
        if u32::try_from(payload.len()).is_err() {
            return Err(CtxSendError::TooLarge);
        }
        self.push(OutSeg::frame(Body::Bytes(payload)))
    }

    /// Queues `frame` back (echo) without copying: an in-place frame keeps its receive buffer
    /// held until the send completes — within this connection's share of the shared receive
    /// ring; past it (a peer that does not read its echoes) the frame is copied instead.
    pub fn send_frame(&mut self, frame: &Frame<'_>) -> Result<(), CtxSendError> {
        let body = match frame.src {
            FrameSrc::Ring(slice, start) => match self.io.pin_ring(slice) {
                Ok(pin) => Body::Ring(slice.sub(start, frame.payload.len()), pin),
                Err(()) => {
                    self.io.pin_copies += 1;
                    Body::Bytes(Bytes::copy_from_slice(frame.payload))
                }
            },
            FrameSrc::Owned(b) => Body::Bytes(b.clone()),
        };
        self.push(OutSeg::frame(body))
    }

    /// Queues bytes written verbatim, without a length prefix (already-framed data).
    pub fn send_raw(&mut self, bytes: Bytes) -> Result<(), CtxSendError> {
        self.push(OutSeg::raw(bytes))
    }

    fn push(&mut self, seg: OutSeg) -> Result<(), CtxSendError> {
        if self.io.close.is_some() {
            return Err(CtxSendError::Closing);
        }
        self.state.handle_queued(self.now, seg.wire_len());
        self.io.out.push_back(seg);
        Ok(())
    }

    /// Stops receiving (no new receive is armed; frames of a chunk already received are still
    /// delivered). For backpressure.
    pub fn pause_reading(&mut self) {
        self.io.want_read = false;
    }

    /// Resumes receiving.
    pub fn resume_reading(&mut self) {
        self.io.want_read = true;
    }

    /// True unless reading is paused.
    pub fn is_reading(&self) -> bool {
        self.io.want_read
    }

    /// Holds reading for `delay` (rate pacing), independently of
    /// [`pause_reading`](Self::pause_reading) / [`resume_reading`](Self::resume_reading): the
    /// shard re-arms the receive by itself when the hold ends. A longer hold extends a shorter
    /// one. Frames of a chunk already received are still delivered.
    pub fn hold_reading_for(&mut self, delay: std::time::Duration) {
        if delay.is_zero() {
            return;
        }
        let until = self.now + delay;
        if self.io.read_hold.is_none_or(|t| t < until) {
            self.io.read_hold = Some(until);
        }
    }

    /// Whether output above the shard's high-water mark pauses reading (default: true). Right
    /// for handlers whose output follows their input (an echo must not read without bound
    /// from a peer that does not read); a handler that bounds its output itself and whose
    /// reads must not wait on its writes (two pipelining peers would deadlock otherwise) turns
    /// it off. The handle bridge does.
    pub fn set_output_pauses_reading(&mut self, on: bool) {
        self.io.output_pauses_reading = on;
    }

    /// Replaces this connection's deadlines.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.state.set_timeouts(timeouts);
    }

    /// Graceful close: stop reading, flush queued output (bounded by the write timeout), shut
    /// the write side down, then close. `on_close(Local)` follows.
    pub fn close(&mut self) {
        if self.io.close.is_none() {
            self.io.close = Some((CloseReason::Local, true));
        }
    }

    /// Hard close: queued output is dropped, in-flight ops are cancelled. `on_close(Aborted)`
    /// follows.
    pub fn abort(&mut self) {
        self.abort_with(CloseReason::Aborted);
    }

    /// Hard close for `reason` (e.g. a frame above a ceiling the caller enforces itself):
    /// like [`abort`](Self::abort), and `on_close(reason)` follows.
    pub fn abort_with(&mut self, reason: CloseReason) {
        match &self.io.close {
            Some((_, false)) => {}
            _ => self.io.close = Some((reason, false)),
        }
    }

    /// Calls [`ConnHandler::on_wake`] with `bits` after `delay` (on this shard's timer).
    /// Requests merge: one wake is pending per connection, at the earliest time asked for,
    /// carrying every bit asked for — so two users of it (e.g. egress pacing and a handler's
    /// own timer) never lose each other's wake. A handler woken before its own time simply
    /// asks again.
    pub fn wake_after(&mut self, delay: std::time::Duration, bits: u32) {
        let at = self.now + delay;
        self.io.wake_at = Some(match self.io.wake_at {
            Some((t, b)) => (t.min(at), b | bits),
            None => (at, bits),
        });
    }

    /// A `Send` doorbell for this connection.
    pub fn remote(&self) -> ConnRemote {
        self.io.remote.clone()
    }
}
