//! Connection ports: one connection seen as a `Send` [`PortConn`] (receive, close, cancel) and
//! cloneable [`PortTx`] senders — the shape the adapter traits above need — with two paths
//! behind one type:
//!
//! - **on the owning shard** (the consumer's future runs on the shard's executor, see
//!   [`spawn_local`](crate::spawn_local)): `recv` pops from and `send` pushes to the port's
//!   shard-local queues (a thread-local slab: no channel, no lock, no atomic read-modify-write,
//!   no syscall per frame). A waiting task is woken by its task key; what a task queued is
//!   applied by the shard right after its tasks ran (the port is marked dirty once per batch);
//! - **off the shard** (the connection or a sender moved to another thread or runtime): the
//!   same calls go through the port's shared half: a mutex-guarded inbound queue (filled once
//!   the first off-shard `recv` asked the shard to detach the connection's inbound side), a
//!   mutex-guarded writer inbox, and the connection's [`ConnRemote`] doorbell, which rings the
//!   eventfd only while the shard is parked. Wakes towards other threads are deferred to the
//!   end of the shard's completion batch (one per waiter per batch).
//!
//! Bounds are the same on both paths: inbound `inbound_capacity` frames or `inbound_bytes`
//! payload bytes (whichever is reached first; a consumer that stops calling `recv` holds at
//! most that plus one frame) before reads pause,
//! writer inbox `inbox_capacity` frames (full ⇒ [`SendError::Busy`] from `try_send`, a wait from
//! `send`), at most `high_water_bytes` moved into the socket queue at a time.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use crate::exec::{self, ConnKey, TaskKey};
use crate::handle::{HandleOptions, OutboundHooks, SendError};
use crate::handler::{CloseReason, ConnCtx, ConnHandler, ConnRemote, Frame};

/// Wake bit: the writer inbox has frames.
const WAKE_OUTPUT: u32 = 1;
/// Wake bit: the consumer made room in the inbound queue.
const WAKE_RESUME: u32 = 1 << 1;
/// Wake bit: graceful close requested.
const WAKE_CLOSE: u32 = 1 << 2;
/// Wake bit: abort requested.
const WAKE_ABORT: u32 = 1 << 3;
/// Wake bit: an off-shard consumer receives: move the inbound side to the shared half.
const WAKE_DETACH: u32 = 1 << 4;

thread_local! {
    /// The shard-local halves of this shard's ports.
    static PORTS: RefCell<Slab<LocalPort>> = const { RefCell::new(Slab::new()) };
    static NEXT_GEN: Cell<u32> = const { Cell::new(1) };
}

/// Who waits, and how to wake them.
enum Waiter {
    /// A task of this shard's executor (woken by key: no atomic, no syscall).
    Task(TaskKey),
    /// Anything else (woken after the batch).
    Waker(Waker),
}

impl Waiter {
    fn of(cx: &Context<'_>) -> Self {
        match exec::current_task() {
            Some(k) => Self::Task(k),
            None => Self::Waker(cx.waker().clone()),
        }
    }

    fn wake(self) {
        match self {
            Self::Task(k) => {
                exec::schedule(k);
            }
            Self::Waker(w) => exec::defer_wake(w),
        }
    }
}

/// A FIFO of frames whose first element is stored inline: a connection that has at most one
/// frame waiting each way (a request/response peer) never allocates a queue buffer.
#[derive(Default)]
struct FrameQueue {
    /// The oldest frame, when the queue holds any and it is not in `rest`.
    first: Option<Bytes>,
    rest: VecDeque<Bytes>,
    /// Payload bytes held.
    bytes: usize,
}

/// The inbound bounds: reads pause when either is reached and resume below half of both.
#[derive(Clone, Copy)]
struct InBounds {
    frames: usize,
    bytes: usize,
}

impl InBounds {
    fn of(opts: &HandleOptions) -> Self {
        Self {
            frames: opts.inbound_capacity.max(1),
            bytes: opts.inbound_bytes.max(1),
        }
    }

    /// Reads must pause.
    fn full(self, frames: usize, bytes: usize) -> bool {
        frames >= self.frames || bytes >= self.bytes
    }

    /// Paused reads may resume (hysteresis: half of both bounds).
    fn drained(self, frames: usize, bytes: usize) -> bool {
        frames <= self.frames / 2 && bytes <= self.bytes / 2
    }
}

impl FrameQueue {
    fn push_back(&mut self, b: Bytes) {
        self.bytes += b.len();
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(b);
        } else {
            self.rest.push_back(b);
        }
    }

    fn pop_front(&mut self) -> Option<Bytes> {
        let b = self.first.take().or_else(|| self.rest.pop_front())?;
        self.bytes -= b.len();
        Some(b)
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }

    /// Moves everything out, oldest first.
    fn drain_into(&mut self, out: &mut VecDeque<Bytes>) {
        while let Some(b) = self.pop_front() {
            out.push_back(b);
        }
    }
}

/// The shard-local half of a port (lives exactly as long as the connection's handler).
struct LocalPort {
    gen: u32,
    conn: ConnKey,
    inbound: FrameQueue,
    recv_waiter: Option<Waiter>,
    out: FrameQueue,
    space_waiters: Vec<Waiter>,
    /// Frames pushed into `out` since the port last reported them to the hooks.
    pushed: usize,
    /// Effects requested by on-shard calls, applied by the shard after the task batch.
    bits: u32,
    dirty: bool,
    /// Reads are paused because `inbound` is full.
    in_paused: bool,
    /// The inbound side moved to the shared half (an off-shard consumer receives).
    detached: bool,
}

/// The shared half's inbound side (used once detached, and after close).
#[derive(Default)]
struct OffIn {
    frames: VecDeque<Bytes>,
    /// Payload bytes in `frames`.
    bytes: usize,
    waker: Option<Waker>,
    detach_requested: bool,
    paused: bool,
}

impl OffIn {
    fn push(&mut self, b: Bytes) {
        self.bytes += b.len();
        self.frames.push_back(b);
    }

    fn pop(&mut self) -> Option<Bytes> {
        let b = self.frames.pop_front()?;
        self.bytes -= b.len();
        Some(b)
    }

    /// Puts the local half's frames in front of these (they are older).
    fn prepend(&mut self, local: &mut FrameQueue) {
        let mut all = VecDeque::with_capacity(local.len() + self.frames.len());
        self.bytes += local.bytes;
        local.drain_into(&mut all);
        all.append(&mut self.frames);
        self.frames = all;
    }
}

/// The queues of the shared half.
#[derive(Default)]
struct OffHalf {
    inbound: Mutex<OffIn>,
    out: Mutex<OffOut>,
}

/// The shared half's writer inbox (off-shard senders).
#[derive(Default)]
struct OffOut {
    frames: VecDeque<Bytes>,
    waiters: Vec<Waker>,
}

struct PortShared {
    /// The owning shard's identity.
    uid: u64,
    /// Key of the local half in the owning shard's `PORTS`.
    local: (u32, u32),
    remote: ConnRemote,
    opts: HandleOptions,
    hooks: Option<Arc<dyn OutboundHooks>>,
    /// The shared half's queues, allocated the first time the connection is used off its
    /// shard (most connections never are).
    off: OnceLock<Box<OffHalf>>,
    /// Frames in `off_out` (read on the shard without taking the lock when zero).
    off_out_len: AtomicUsize,
    closed: OnceLock<CloseReason>,
}

impl std::fmt::Debug for PortShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortShared")
            .field("local", &self.local)
            .field("closed", &self.closed.get())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PortShared {
    /// The shared half's queues (allocated on first use).
    fn off(&self) -> &OffHalf {
        self.off.get_or_init(Box::default)
    }

    /// Runs `f` on the local half if this thread owns it (and it still exists).
    fn with_local<T>(&self, f: impl FnOnce(&mut LocalPort) -> T) -> Option<T> {
        if self.uid == 0 || exec::shard_uid() != self.uid {
            return None;
        }
        PORTS.with(|p| {
            let mut p = p.try_borrow_mut().ok()?;
            let lp = p.get_mut(self.local.0 as usize)?;
            (lp.gen == self.local.1).then(|| f(lp))
        })
    }

    fn terminal(&self) -> Result<Option<Bytes>, CloseReason> {
        match self.closed.get() {
            Some(r) if r.is_clean() => Ok(None),
            Some(r) => Err(r.clone()),
            None => Err(CloseReason::Aborted),
        }
    }

    fn closed_error(&self) -> SendError {
        SendError::Closed(self.closed.get().cloned())
    }

    /// Requests `bits` from the shard: locally (applied after the task batch) or through the
    /// doorbell. False if the connection is gone.
    fn request(&self, bits: u32) -> bool {
        let local = self.with_local(|lp| {
            lp.bits |= bits;
            if !lp.dirty {
                lp.dirty = true;
                exec::mark_dirty(lp.conn);
            }
        });
        match local {
            Some(()) => true,
            None => self.remote.wake(bits),
        }
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, CloseReason>> {
        let bounds = InBounds::of(&self.opts);
        let local = self.with_local(|lp| {
            if lp.detached {
                return None;
            }
            if let Some(b) = lp.inbound.pop_front() {
                if lp.in_paused && bounds.drained(lp.inbound.len(), lp.inbound.bytes) {
                    lp.bits |= WAKE_RESUME;
                    if !lp.dirty {
                        lp.dirty = true;
                        exec::mark_dirty(lp.conn);
                    }
                }
                return Some(Poll::Ready(Ok(Some(b))));
            }
            lp.recv_waiter = Some(Waiter::of(cx));
            Some(Poll::Pending)
        });
        if let Some(Some(p)) = local {
            return p;
        }
        // Off the shard (or detached, or closed): the shared half.
        let mut off = lock(&self.off().inbound);
        if let Some(b) = off.pop() {
            let resume = off.paused && bounds.drained(off.frames.len(), off.bytes);
            if resume {
                off.paused = false;
            }
            drop(off);
            if resume {
                self.remote.wake(WAKE_RESUME);
            }
            return Poll::Ready(Ok(Some(b)));
        }
        if self.closed.get().is_some() {
            return Poll::Ready(self.terminal());
        }
        match &off.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => off.waker = Some(cx.waker().clone()),
        }
        let detach = !off.detach_requested;
        off.detach_requested = true;
        drop(off);
        if detach && !self.remote.wake(WAKE_DETACH) && self.closed.get().is_some() {
            return Poll::Ready(self.poll_closed_tail());
        }
        Poll::Pending
    }

    fn poll_closed_tail(&self) -> Result<Option<Bytes>, CloseReason> {
        match lock(&self.off().inbound).pop() {
            Some(b) => Ok(Some(b)),
            None => self.terminal(),
        }
    }

    fn try_push(&self, payload: Bytes) -> Result<(), (SendError, Bytes)> {
        if self.closed.get().is_some() || self.remote.is_gone() {
            return Err((self.closed_error(), payload));
        }
        let cap = self.opts.inbox_capacity.max(1);
        let mut payload = Some(payload);
        let local = self.with_local(|lp| {
            if lp.out.len() >= cap {
                return false;
            }
            if let Some(p) = payload.take() {
                lp.out.push_back(p);
            }
            lp.pushed += 1;
            lp.bits |= WAKE_OUTPUT;
            if !lp.dirty {
                lp.dirty = true;
                exec::mark_dirty(lp.conn);
            }
            true
        });
        let payload = match (local, payload) {
            (Some(true), _) | (_, None) => return Ok(()),
            (Some(false), Some(p)) => return Err((SendError::Busy, p)),
            (None, Some(p)) => p,
        };
        let mut out = lock(&self.off().out);
        // Checked again under the lock `on_close` clears the inbox under (it sets `closed`
        // first): a frame pushed after that clear would stay counted in the inbox gauge.
        if self.closed.get().is_some() {
            return Err((self.closed_error(), payload));
        }
        if out.frames.len() >= cap {
            return Err((SendError::Busy, payload));
        }
        out.frames.push_back(payload);
        self.off_out_len.store(out.frames.len(), Ordering::Release);
        drop(out);
        if let Some(h) = &self.hooks {
            h.queued(1);
        }
        if !self.remote.wake(WAKE_OUTPUT) {
            return Err((self.closed_error(), Bytes::new()));
        }
        Ok(())
    }

    /// Registers the current task (or waker) to be woken when the inbox has room.
    fn wait_for_space(&self, cx: &Context<'_>) {
        let cap = self.opts.inbox_capacity.max(1);
        let registered = self.with_local(|lp| {
            if lp.out.len() >= cap {
                lp.space_waiters.push(Waiter::of(cx));
                true
            } else {
                // Room appeared meanwhile: poll again at once.
                cx.waker().wake_by_ref();
                true
            }
        });
        if registered.is_none() {
            let mut out = lock(&self.off().out);
            if out.frames.len() >= cap && self.closed.get().is_none() {
                out.waiters.push(cx.waker().clone());
            } else {
                cx.waker().wake_by_ref();
            }
        }
    }
}

/// The consumer end of a port: receive, close, cancel. `Send`; fastest on its owning shard.
#[derive(Debug)]
pub struct PortConn {
    tx: PortTx,
}

/// A cloneable `Send + Sync` sender into one port's writer inbox.
#[derive(Clone, Debug)]
pub struct PortTx {
    shared: Arc<PortShared>,
}

/// Builds the shard-side handler and the consumer end of a port for one connection (call on
/// the owning shard, from [`AcceptHooks::open`](crate::AcceptHooks::open) or
/// [`DialHooks::connected`](crate::DialHooks::connected)). `hooks` observe the writer inbox and
/// pace egress.
///
/// # Panics
/// Never; off a shard thread the port simply starts detached (every call takes the shared
/// path).
pub fn port(
    remote: ConnRemote,
    opts: HandleOptions,
    hooks: Option<Arc<dyn OutboundHooks>>,
) -> (PortHandler, PortConn) {
    let gen = NEXT_GEN.get();
    NEXT_GEN.set(gen.wrapping_add(1).max(1));
    let conn = remote.0.key;
    let idx = PORTS.with(|p| {
        p.borrow_mut().insert(LocalPort {
            gen,
            conn,
            inbound: FrameQueue::default(),
            recv_waiter: None,
            out: FrameQueue::default(),
            space_waiters: Vec::new(),
            pushed: 0,
            bits: 0,
            dirty: false,
            in_paused: false,
            detached: false,
        })
    });
    let uid = if exec::shard_uid() == remote.0.shard.uid {
        remote.0.shard.uid
    } else {
        0 // not built on the owner: no local half will ever be reachable
    };
    let shared = Arc::new(PortShared {
        uid,
        local: (idx as u32, gen),
        remote,
        opts,
        hooks,
        off: OnceLock::new(),
        off_out_len: AtomicUsize::new(0),
        closed: OnceLock::new(),
    });
    if uid == 0 {
        PORTS.with(|p| {
            p.borrow_mut().remove(idx);
        });
    }
    let handler = PortHandler {
        shared: shared.clone(),
        closing: false,
        high_water: opts.high_water_bytes.max(1),
        held: None,
    };
    (
        handler,
        PortConn {
            tx: PortTx { shared },
        },
    )
}

impl PortConn {
    /// A new sender into the writer inbox.
    pub fn sender(&self) -> PortTx {
        self.tx.clone()
    }

    /// The next inbound frame; `Ok(None)` once the connection ended cleanly (peer or local
    /// close), `Err(reason)` if it ended otherwise.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, CloseReason> {
        let s = &self.tx.shared;
        poll_fn(|cx| s.poll_recv(cx)).await
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.tx.shared.closed.get().cloned()
    }

    /// Requests a graceful close (the inbox is flushed first) and returns at once.
    pub fn close(&self) {
        self.tx.shared.request(WAKE_CLOSE);
    }

    /// Hard cancel: pending output is dropped and the connection closes promptly. Idempotent.
    pub fn cancel(&self) {
        self.tx.shared.request(WAKE_ABORT);
    }

    /// Closes gracefully and waits until the connection is gone (frames still arriving are
    /// discarded). Returns the close reason.
    pub async fn close_and_wait(mut self) -> CloseReason {
        self.close();
        while let Ok(Some(_)) = self.recv().await {}
        self.close_reason().unwrap_or(CloseReason::Aborted)
    }
}

impl Drop for PortConn {
    fn drop(&mut self) {
        // Nobody receives anymore: close gracefully (queued frames are still flushed).
        if self.tx.shared.closed.get().is_none() {
            self.tx.shared.request(WAKE_CLOSE);
        }
    }
}

impl PortTx {
    /// Queues `payload` as one frame without waiting: [`SendError::Busy`] if the inbox is full.
    pub fn try_send(&self, payload: Bytes) -> Result<(), SendError> {
        self.shared.try_push(payload).map_err(|(e, _)| e)
    }

    /// Queues `payload`, waiting for inbox space. `limit` bounds the wait when the caller runs
    /// on a shard thread ([`SendError::Timeout`]); elsewhere the caller bounds it with its own
    /// timer.
    pub fn send(&self, payload: Bytes, limit: Option<Duration>) -> PortSend<'_> {
        PortSend {
            tx: self,
            payload: Some(payload),
            limit,
            deadline: None,
        }
    }

    /// True once the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.get().is_some() || self.shared.remote.is_gone()
    }
}

/// The future of [`PortTx::send`]: a plain struct (a few words), since every consumer task
/// that sends holds one inside its own state.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct PortSend<'a> {
    tx: &'a PortTx,
    payload: Option<Bytes>,
    limit: Option<Duration>,
    deadline: Option<Instant>,
}

impl std::future::Future for PortSend<'_> {
    type Output = Result<(), SendError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(p) = this.payload.take() else {
            return Poll::Ready(Ok(()));
        };
        match this.tx.shared.try_push(p) {
            Ok(()) => Poll::Ready(Ok(())),
            Err((SendError::Busy, p)) => {
                if let (Some(limit), true) = (this.limit, exec::is_shard_thread()) {
                    let now = exec::now();
                    let d = *this.deadline.get_or_insert(now + limit);
                    if now >= d {
                        return Poll::Ready(Err(SendError::Timeout));
                    }
                    if let Some(k) = exec::current_task() {
                        exec::wake_at(d, k);
                    }
                }
                this.payload = Some(p);
                this.tx.shared.wait_for_space(cx);
                Poll::Pending
            }
            Err((e, _)) => Poll::Ready(Err(e)),
        }
    }
}

/// The shard-side handler of a port: install it as the connection's [`ConnHandler`] (directly
/// or inside a wrapper of the caller's, so the pair costs one allocation).
pub struct PortHandler {
    shared: Arc<PortShared>,
    closing: bool,
    high_water: usize,
    /// A frame taken from the inbox and held back by pacing, and when it may go.
    held: Option<(Bytes, Instant)>,
}

impl std::fmt::Debug for PortHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortHandler")
            .field("shared", &self.shared)
            .finish()
    }
}

impl PortHandler {
    fn local<T>(&self, f: impl FnOnce(&mut LocalPort) -> T) -> Option<T> {
        PORTS.with(|p| {
            let mut p = p.try_borrow_mut().ok()?;
            let lp = p.get_mut(self.shared.local.0 as usize)?;
            (lp.gen == self.shared.local.1 && self.shared.uid != 0).then(|| f(lp))
        })
    }

    /// Moves inbox frames (local first, then off-shard) into the socket queue up to the
    /// high-water mark, pacing each one. True if both inboxes are empty afterwards.
    fn drain_out(&mut self, ctx: &mut ConnCtx<'_>) -> bool {
        let shared: &PortShared = &self.shared;
        let cap = shared.opts.inbox_capacity.max(1);
        let hooks = shared.hooks.as_deref();
        // Inbox-depth accounting is netted per batch: frames pushed on the shard and taken in
        // the same batch cost the (shared) gauge nothing.
        let mut pushed = 0usize;
        let mut taken_local = 0usize;
        let mut taken_off = 0usize;
        let mut empty = false;
        let mut off_waiters = Vec::new();
        let mut off: Option<MutexGuard<'_, OffOut>> = None;
        let mut lp_cell = PORTS.with(|p| {
            let mut p = p.borrow_mut();
            let lp = p.get_mut(shared.local.0 as usize)?;
            if lp.gen != shared.local.1 || shared.uid == 0 {
                return None;
            }
            pushed = std::mem::take(&mut lp.pushed);
            Some(std::mem::take(&mut lp.out))
        });
        while ctx.queued_bytes() < self.high_water {
            let b = match self.held.take() {
                Some((b, until)) if until > ctx.now() => {
                    // Still paced: other wakes (new output, resume) must not release it early.
                    self.held = Some((b, until));
                    ctx.wake_after(until - ctx.now(), WAKE_OUTPUT);
                    break;
                }
                Some((b, _)) => b,
                None => {
                    let next = match lp_cell.as_mut().and_then(FrameQueue::pop_front) {
                        Some(b) => {
                            taken_local += 1;
                            Some(b)
                        }
                        None if shared.off_out_len.load(Ordering::Acquire) > 0 || off.is_some() => {
                            let g = off.get_or_insert_with(|| lock(&shared.off().out));
                            let b = g.frames.pop_front();
                            shared.off_out_len.store(g.frames.len(), Ordering::Release);
                            taken_off += usize::from(b.is_some());
                            b
                        }
                        None => None,
                    };
                    let Some(b) = next else {
                        empty = true;
                        break;
                    };
                    if let Some(h) = hooks {
                        let wait = h.pace(b.len() + 4);
                        if !wait.is_zero() {
                            self.held = Some((b, ctx.now() + wait));
                            ctx.wake_after(wait, WAKE_OUTPUT);
                            break;
                        }
                    }
                    b
                }
            };
            if ctx.send_bytes(b).is_err() {
                empty = true;
                break;
            }
        }
        if let Some(mut g) = off.take() {
            if g.frames.len() < cap {
                off_waiters = std::mem::take(&mut g.waiters);
            }
        }
        if let Some(rest) = lp_cell.take() {
            self.local(|lp| {
                // `out` was taken whole: whatever is left goes back in front of frames a
                // waiter pushed meanwhile (none can: this runs on the shard, not in a task).
                let mut rest = rest;
                while let Some(b) = lp.out.pop_front() {
                    rest.push_back(b);
                }
                lp.out = rest;
                if lp.out.len() < cap {
                    for w in lp.space_waiters.drain(..) {
                        w.wake();
                    }
                }
            });
        }
        for w in off_waiters {
            exec::defer_wake(w);
        }
        if let Some(h) = hooks {
            if pushed > taken_local {
                h.queued(pushed - taken_local);
            } else if taken_local > pushed {
                h.taken(taken_local - pushed);
            }
            if taken_off > 0 {
                h.taken(taken_off);
            }
        }
        empty && self.held.is_none()
    }

    fn resume(&mut self, ctx: &mut ConnCtx<'_>) {
        let bounds = InBounds::of(&self.shared.opts);
        let local = self.local(|lp| {
            if lp.detached {
                return None;
            }
            if lp.in_paused && !bounds.full(lp.inbound.len(), lp.inbound.bytes) {
                lp.in_paused = false;
                return Some(true);
            }
            Some(false)
        });
        let resume = match local.flatten() {
            Some(r) => r,
            None => {
                let off = lock(&self.shared.off().inbound);
                !off.paused && !bounds.full(off.frames.len(), off.bytes)
            }
        };
        if resume {
            ctx.resume_reading();
        }
    }

    fn detach(&mut self) {
        let moved = self.local(|lp| {
            if lp.detached {
                return None;
            }
            lp.detached = true;
            let paused = std::mem::take(&mut lp.in_paused);
            Some((
                std::mem::take(&mut lp.inbound),
                paused,
                lp.recv_waiter.take(),
            ))
        });
        if let Some(Some((mut frames, paused, waiter))) = moved {
            let mut off = lock(&self.shared.off().inbound);
            off.prepend(&mut frames);
            off.paused = paused;
            let w = off.waker.take();
            drop(off);
            if let Some(w) = w {
                exec::defer_wake(w);
            }
            if let Some(w) = waiter {
                w.wake();
            }
        }
    }
}

impl ConnHandler for PortHandler {
    fn on_open(&mut self, ctx: &mut ConnCtx<'_>) {
        // The consumer reads and writes independently: inbound is bounded by the inbound
        // queue (reads pause when it is full), outbound by the inbox and the high-water mark
        // in `drain_out`. Pausing reads on output would deadlock two pipelining peers.
        ctx.set_output_pauses_reading(false);
    }

    fn on_frame(&mut self, ctx: &mut ConnCtx<'_>, frame: Frame<'_>) {
        let bounds = InBounds::of(&self.shared.opts);
        let mut b = Some(frame.to_bytes());
        let local = self.local(|lp| {
            if lp.detached {
                return false;
            }
            if let Some(b) = b.take() {
                lp.inbound.push_back(b);
            }
            if bounds.full(lp.inbound.len(), lp.inbound.bytes) && !lp.in_paused {
                lp.in_paused = true;
                ctx.pause_reading();
            }
            if let Some(w) = lp.recv_waiter.take() {
                w.wake();
            }
            true
        });
        if local == Some(true) {
            return;
        }
        let Some(b) = b else { return };
        let mut off = lock(&self.shared.off().inbound);
        off.push(b);
        if bounds.full(off.frames.len(), off.bytes) && !off.paused {
            off.paused = true;
            ctx.pause_reading();
        }
        let w = off.waker.take();
        drop(off);
        if let Some(w) = w {
            exec::defer_wake(w);
        }
    }

    fn on_writable(&mut self, ctx: &mut ConnCtx<'_>) {
        let empty = self.drain_out(ctx);
        if self.closing && empty {
            ctx.close();
        }
    }

    fn on_wake(&mut self, ctx: &mut ConnCtx<'_>, bits: u32) {
        let local_bits = self
            .local(|lp| {
                lp.dirty = false;
                std::mem::take(&mut lp.bits)
            })
            .unwrap_or(0);
        let bits = bits | local_bits;
        if bits & WAKE_ABORT != 0 {
            ctx.abort();
            return;
        }
        if bits & WAKE_DETACH != 0 {
            self.detach();
        }
        if bits & WAKE_RESUME != 0 {
            self.resume(ctx);
        }
        if bits & WAKE_CLOSE != 0 {
            self.closing = true;
        }
        let empty = self.drain_out(ctx);
        if self.closing && empty {
            ctx.close();
        }
    }

    fn on_drain(&mut self, ctx: &mut ConnCtx<'_>) {
        // Runtime shutdown: flush what the application queued, then close gracefully.
        self.closing = true;
        if self.drain_out(ctx) {
            ctx.close();
        }
    }

    fn on_close(&mut self, reason: &CloseReason) {
        let _ = self.shared.closed.set(reason.clone());
        let idx = self.shared.local.0 as usize;
        let local = PORTS.with(|p| {
            let mut p = p.borrow_mut();
            match p.get(idx) {
                Some(lp) if lp.gen == self.shared.local.1 && self.shared.uid != 0 => {
                    Some(p.remove(idx))
                }
                _ => None,
            }
        });
        // A frame held back by pacing already left the inbox (counted when taken).
        drop(self.held.take());
        let mut undelivered = 0;
        let mut pushed = 0;
        let mut waiters = Vec::new();
        let mut off_wakers = Vec::new();
        // What the consumer has not received yet stays receivable, before the end (in the
        // shared half, which is allocated here only if there is such a tail).
        let tail = local.as_ref().is_some_and(|lp| !lp.inbound.is_empty());
        let off_half = if tail {
            Some(self.shared.off())
        } else {
            self.shared.off.get().map(|b| &**b)
        };
        if let Some(mut lp) = local {
            if let Some(h) = off_half.filter(|_| tail) {
                lock(&h.inbound).prepend(&mut lp.inbound);
            }
            undelivered += lp.out.len();
            pushed = lp.pushed;
            if let Some(w) = lp.recv_waiter.take() {
                waiters.push(w);
            }
            waiters.append(&mut lp.space_waiters);
        }
        if let Some(h) = off_half {
            off_wakers.extend(lock(&h.inbound).waker.take());
            let mut out = lock(&h.out);
            undelivered += out.frames.len();
            out.frames.clear();
            self.shared.off_out_len.store(0, Ordering::Release);
            off_wakers.append(&mut out.waiters);
        }
        if let Some(h) = &self.shared.hooks {
            if pushed > 0 {
                h.queued(pushed);
            }
            if undelivered > 0 {
                h.taken(undelivered);
            }
        }
        for w in waiters {
            w.wake();
        }
        for w in off_wakers {
            exec::defer_wake(w);
        }
    }
}

impl Drop for PortHandler {
    fn drop(&mut self) {
        // A handler dropped without `on_close` (never expected) must not leak its slot.
        let idx = self.shared.local.0 as usize;
        let _ = PORTS.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                if p.get(idx)
                    .is_some_and(|lp| lp.gen == self.shared.local.1 && self.shared.uid != 0)
                {
                    p.remove(idx);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_queue_keeps_fifo_order_across_the_inline_slot() {
        let mut q = FrameQueue::default();
        let b = |i: u8| Bytes::from(vec![i]);
        q.push_back(b(1));
        assert!(q.rest.is_empty(), "the first frame is inline: no buffer");
        q.push_back(b(2));
        assert_eq!(q.pop_front(), Some(b(1)));
        q.push_back(b(3));
        q.push_back(b(4));
        assert_eq!(q.len(), 3);
        let mut out = VecDeque::new();
        q.drain_into(&mut out);
        assert_eq!(out, [b(2), b(3), b(4)]);
        assert!(q.is_empty());
        q.push_back(b(5));
        assert_eq!(q.pop_front(), Some(b(5)));
        assert_eq!(q.pop_front(), None);
    }
}
