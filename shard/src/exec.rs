//! The shard-local executor: futures spawned on a shard ([`spawn_local`]) run on that shard's
//! thread, polled by the shard loop between completion batches, so a connection's consumer
//! runs where its connection lives.
//!
//! What it owns (all in one thread-local of the shard thread): the task slab, the run queue,
//! task timers, the list of connections whose ports have effects to apply (`dirty`), and wakers
//! of other threads' tasks to fire once per batch (`deferred`).
//!
//! Wakes:
//! - **on the shard**: a port wakes the task waiting on it by task key: a push onto the run
//!   queue, no atomic, no syscall (the task being polled is known through [`current_task`]);
//! - **from other threads** (a future inside the task awaits something fed elsewhere): the
//!   task's [`Waker`] posts its key to the shard's remote-wake queue (once until the shard
//!   takes it: an `AtomicBool` dedups) and rings the [`Doorbell`], which writes the eventfd
//!   only while the shard is parked.
//!
//! A panicking task is dropped (its connection closes) and counted; the shard keeps running.
//! It does not decide anything about connections: `port` and the shard loop do.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use slab::Slab;

use crate::doorbell::Doorbell;

/// A task's slab index and generation.
pub(crate) type TaskKey = (u32, u32);

/// A connection's key in its shard's slab (index, generation).
pub(crate) type ConnKey = (u32, u32);

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

/// Process-unique shard identities (0 = "not a shard thread").
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// A new process-unique shard identity.
pub(crate) fn new_uid() -> u64 {
    NEXT_UID.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    /// The identity of the shard this thread runs (0 on other threads).
    static SHARD_UID: Cell<u64> = const { Cell::new(0) };
    /// The task being polled right now.
    static CURRENT: Cell<Option<TaskKey>> = const { Cell::new(None) };
    static EXEC: RefCell<Option<Exec>> = const { RefCell::new(None) };
}

/// The parts of a shard's executor other threads reach: the remote-wake queue and the bell.
#[derive(Debug)]
pub(crate) struct ExecRemote {
    tx: Sender<Arc<TaskWaker>>,
    bell: Arc<Doorbell>,
}

impl ExecRemote {
    /// A remote side over `bell`, and the receiving end the shard drains.
    pub(crate) fn new(bell: Arc<Doorbell>) -> (Arc<Self>, Receiver<Arc<TaskWaker>>) {
        // Unbounded by type, bounded by construction: a task is queued at most once until the
        // shard takes it (its `queued` flag), so the queue never holds more than its tasks.
        let (tx, rx) = crossbeam_channel::unbounded();
        (Arc::new(Self { tx, bell }), rx)
    }
}

/// The waker of one shard task (any thread may wake it).
#[derive(Debug)]
pub(crate) struct TaskWaker {
    uid: u64,
    key: TaskKey,
    queued: AtomicBool,
    remote: Arc<ExecRemote>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if SHARD_UID.get() == self.uid && schedule(self.key) {
            return;
        }
        if !self.queued.swap(true, Ordering::AcqRel) {
            if self.remote.tx.send(self.clone()).is_err() {
                return; // the shard has exited
            }
            self.remote.bell.ring();
        }
    }
}

struct Task {
    gen: u32,
    /// `None` while the task is being polled.
    fut: Option<LocalFuture>,
    /// Taken out with the future while polling (so no clone per poll).
    waker: Option<Waker>,
    scheduled: bool,
}

/// Counters of one shard's executor (read by the shard's stats).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ExecCounts {
    pub spawned: u64,
    pub polls: u64,
    pub panics: u64,
}

struct Exec {
    uid: u64,
    tasks: Slab<Task>,
    next_gen: u32,
    runq: VecDeque<TaskKey>,
    timers: BinaryHeap<Reverse<(Instant, TaskKey)>>,
    dirty: Vec<ConnKey>,
    deferred: Vec<Waker>,
    remote: Arc<ExecRemote>,
    now: Instant,
    counts: ExecCounts,
}

/// Makes this thread shard `uid`'s executor thread.
pub(crate) fn install(uid: u64, remote: Arc<ExecRemote>) {
    SHARD_UID.set(uid);
    EXEC.with(|e| {
        *e.borrow_mut() = Some(Exec {
            uid,
            tasks: Slab::new(),
            next_gen: 1,
            runq: VecDeque::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            deferred: Vec::new(),
            remote,
            now: Instant::now(),
            counts: ExecCounts::default(),
        });
    });
}

/// Drops every task (on the shard thread, while the shard still exists, so their connections
/// close through the normal path), then stops being an executor thread.
pub(crate) fn uninstall() {
    // Tasks' drops may touch the executor (ports mark themselves dirty): take them out first.
    loop {
        let tasks = EXEC.with(|e| {
            e.borrow_mut()
                .as_mut()
                .map(|e| std::mem::take(&mut e.tasks))
        });
        match tasks {
            Some(t) if !t.is_empty() => drop(t),
            _ => break,
        }
    }
    let deferred = EXEC.with(|e| {
        e.borrow_mut()
            .as_mut()
            .map(|e| std::mem::take(&mut e.deferred))
    });
    for w in deferred.into_iter().flatten() {
        w.wake();
    }
    EXEC.with(|e| e.borrow_mut().take());
    SHARD_UID.set(0);
}

/// True on a shard thread (where [`spawn_local`] works).
pub fn is_shard_thread() -> bool {
    SHARD_UID.get() != 0
}

/// The identity of this thread's shard (0 if none).
pub(crate) fn shard_uid() -> u64 {
    SHARD_UID.get()
}

/// Spawns `fut` on the current shard: it is polled on this thread between completion batches
/// until it completes (or the shard shuts down, which drops it). Gives the future back if this
/// is not a shard thread.
pub fn spawn_local<F>(fut: F) -> Result<(), F>
where
    F: Future<Output = ()> + 'static,
{
    if !is_shard_thread() {
        return Err(fut);
    }
    let mut fut = Some(fut);
    EXEC.with(|e| {
        let Ok(mut e) = e.try_borrow_mut() else {
            return;
        };
        let Some(e) = e.as_mut() else { return };
        let Some(f) = fut.take() else { return };
        let gen = e.next_gen;
        e.next_gen = e.next_gen.wrapping_add(1).max(1);
        let entry = e.tasks.vacant_entry();
        let key = (entry.key() as u32, gen);
        let waker = Waker::from(Arc::new(TaskWaker {
            uid: e.uid,
            key,
            queued: AtomicBool::new(false),
            remote: e.remote.clone(),
        }));
        entry.insert(Task {
            gen,
            fut: Some(Box::pin(f)),
            waker: Some(waker),
            scheduled: true,
        });
        e.runq.push_back(key);
        e.counts.spawned += 1;
    });
    match fut {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

/// The task being polled on this thread, if any.
pub(crate) fn current_task() -> Option<TaskKey> {
    CURRENT.get()
}

/// Queues `key` to be polled (on its shard's thread). False if the executor is not reachable
/// from here right now (the caller then wakes through the task's waker instead).
pub(crate) fn schedule(key: TaskKey) -> bool {
    EXEC.with(|e| {
        let Ok(mut e) = e.try_borrow_mut() else {
            return false;
        };
        let Some(e) = e.as_mut() else { return false };
        if let Some(t) = e.tasks.get_mut(key.0 as usize) {
            if t.gen == key.1 && !t.scheduled {
                t.scheduled = true;
                e.runq.push_back(key);
            }
        }
        true
    })
}

/// Wakes `w` after the current completion batch (one wake per waiter per batch).
pub(crate) fn defer_wake(w: Waker) {
    let rest = EXEC.with(|e| match e.try_borrow_mut() {
        Ok(mut e) => match e.as_mut() {
            Some(e) => {
                e.deferred.push(w);
                None
            }
            None => Some(w),
        },
        Err(_) => Some(w),
    });
    if let Some(w) = rest {
        w.wake();
    }
}

/// Fires the wakes deferred during this batch.
pub(crate) fn flush_deferred(buf: &mut Vec<Waker>) {
    EXEC.with(|e| {
        if let Some(e) = e.borrow_mut().as_mut() {
            std::mem::swap(buf, &mut e.deferred);
        }
    });
    for w in buf.drain(..) {
        w.wake();
    }
}

/// Records that the port of connection `conn` has effects for the shard to apply.
pub(crate) fn mark_dirty(conn: ConnKey) {
    EXEC.with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            if let Some(e) = e.as_mut() {
                e.dirty.push(conn);
            }
        }
    });
}

/// Moves the dirty connections into `out`.
pub(crate) fn take_dirty(out: &mut Vec<ConnKey>) {
    EXEC.with(|e| {
        if let Some(e) = e.borrow_mut().as_mut() {
            std::mem::swap(out, &mut e.dirty);
        }
    });
}

/// Wakes `key` at `at` (on the shard's timer).
pub(crate) fn wake_at(at: Instant, key: TaskKey) {
    EXEC.with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            if let Some(e) = e.as_mut() {
                e.timers.push(Reverse((at, key)));
            }
        }
    });
}

/// The shard loop's clock (taken once per loop iteration).
pub(crate) fn now() -> Instant {
    EXEC.with(|e| e.borrow().as_ref().map_or_else(Instant::now, |e| e.now))
}

/// Sets the loop clock and fires due task timers.
pub(crate) fn tick(now: Instant) {
    EXEC.with(|e| {
        if let Some(e) = e.borrow_mut().as_mut() {
            e.now = now;
            while let Some(Reverse((t, key))) = e.timers.peek().copied() {
                if t > now {
                    break;
                }
                e.timers.pop();
                if let Some(task) = e.tasks.get_mut(key.0 as usize) {
                    if task.gen == key.1 && !task.scheduled {
                        task.scheduled = true;
                        e.runq.push_back(key);
                    }
                }
            }
        }
    });
}

/// Takes the remote wakes posted by other threads.
pub(crate) fn take_remote(rx: &Receiver<Arc<TaskWaker>>) {
    while let Ok(w) = rx.try_recv() {
        w.queued.store(false, Ordering::Release);
        schedule(w.key);
    }
}

/// True if a task is ready to be polled.
pub(crate) fn has_ready() -> bool {
    EXEC.with(|e| e.borrow().as_ref().is_some_and(|e| !e.runq.is_empty()))
}

/// The earliest task timer.
pub(crate) fn next_timer() -> Option<Instant> {
    EXEC.with(|e| {
        e.borrow()
            .as_ref()
            .and_then(|e| e.timers.peek().map(|Reverse((t, _))| *t))
    })
}

/// Counters so far.
pub(crate) fn counts() -> ExecCounts {
    EXEC.with(|e| e.borrow().as_ref().map(|e| e.counts).unwrap_or_default())
}

/// Polls up to `budget` ready tasks (tasks woken meanwhile included). Returns how many polls
/// were made.
pub(crate) fn run(budget: usize) -> usize {
    let mut polls = 0;
    while polls < budget {
        let next = EXEC.with(|e| {
            let mut e = e.borrow_mut();
            let e = e.as_mut()?;
            while let Some(key) = e.runq.pop_front() {
                let Some(t) = e.tasks.get_mut(key.0 as usize) else {
                    continue;
                };
                if t.gen != key.1 {
                    continue;
                }
                t.scheduled = false;
                if let (Some(f), Some(w)) = (t.fut.take(), t.waker.take()) {
                    return Some((key, f, w));
                }
            }
            None
        });
        let Some((key, mut fut, waker)) = next else {
            break;
        };
        polls += 1;
        CURRENT.set(Some(key));
        let res = {
            let mut cx = Context::from_waker(&waker);
            catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)))
        };
        CURRENT.set(None);
        let done = match res {
            Ok(Poll::Pending) => None,
            Ok(Poll::Ready(())) => Some(false),
            Err(_) => Some(true),
        };
        let finished = EXEC.with(|e| {
            let mut e = e.borrow_mut();
            let e = e.as_mut()?;
            e.counts.polls += 1;
            match done {
                None => {
                    let t = &mut e.tasks[key.0 as usize];
                    t.fut = Some(fut);
                    t.waker = Some(waker);
                    None
                }
                Some(panicked) => {
                    if panicked {
                        e.counts.panics += 1;
                    }
                    e.tasks.remove(key.0 as usize);
                    Some((fut, waker))
                }
            }
        });
        // Outside the borrow: dropping a task drops its connection handles, which reach the
        // executor again. A drop that panics is contained like a poll that panics.
        if let Some(f) = finished {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(f)));
        }
    }
    polls
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn with_exec<T>(f: impl FnOnce(&Receiver<Arc<TaskWaker>>) -> T) -> T {
        let bell = Arc::new(Doorbell::new(crate::sys::eventfd().expect("eventfd")));
        let (remote, rx) = ExecRemote::new(bell);
        install(new_uid(), remote);
        let r = f(&rx);
        uninstall();
        r
    }

    /// A future that is pending until its flag is set, and wakes through the current task key
    /// (as ports do) or through its waker (as foreign futures do).
    struct Gate {
        open: Rc<Cell<bool>>,
        waiter: Rc<Cell<Option<TaskKey>>>,
    }

    impl Future for Gate {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            if self.open.get() {
                Poll::Ready(())
            } else {
                self.waiter.set(current_task());
                Poll::Pending
            }
        }
    }

    #[test]
    fn local_wake_by_key_repolls_without_the_waker() {
        with_exec(|_| {
            let open = Rc::new(Cell::new(false));
            let waiter = Rc::new(Cell::new(None));
            let done = Rc::new(Cell::new(false));
            let (o, w, d) = (open.clone(), waiter.clone(), done.clone());
            assert!(spawn_local(async move {
                Gate { open: o, waiter: w }.await;
                d.set(true);
            })
            .is_ok());
            assert_eq!(run(16), 1);
            let key = waiter.get().expect("the gate saw its task");
            assert_eq!(run(16), 0, "nothing woke it");
            open.set(true);
            assert!(schedule(key));
            assert!(has_ready());
            assert_eq!(run(16), 1);
            assert!(done.get());
            assert_eq!(counts().spawned, 1);
        });
    }

    #[test]
    fn remote_wake_posts_once_until_taken() {
        with_exec(|rx| {
            let (tx, rx_w) = std::sync::mpsc::channel::<Waker>();
            let open = Arc::new(AtomicBool::new(false));
            let o = open.clone();
            let _ = spawn_local(std::future::poll_fn(move |cx| {
                if o.load(Ordering::Acquire) {
                    Poll::Ready(())
                } else {
                    let _ = tx.send(cx.waker().clone());
                    Poll::Pending
                }
            }));
            run(16);
            let w = rx_w.recv().expect("waker");
            std::thread::spawn(move || {
                w.wake_by_ref();
                w.wake_by_ref();
            })
            .join()
            .unwrap();
            assert_eq!(rx.len(), 1, "deduplicated until the shard takes it");
            open.store(true, Ordering::Release);
            take_remote(rx);
            assert_eq!(run(16), 1);
            assert_eq!(counts().polls, 2);
        });
    }

    #[test]
    fn a_panicking_task_is_dropped_and_counted() {
        with_exec(|_| {
            let dropped = Rc::new(Cell::new(false));
            struct Flag(Rc<Cell<bool>>);
            impl Drop for Flag {
                fn drop(&mut self) {
                    self.0.set(true);
                }
            }
            let flag = Flag(dropped.clone());
            let _ = spawn_local(async move {
                let _f = flag;
                panic!("task panics");
            });
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            run(16);
            std::panic::set_hook(hook);
            assert!(dropped.get(), "its state was dropped");
            assert_eq!(counts().panics, 1);
            let ran = Rc::new(Cell::new(false));
            let r = ran.clone();
            let _ = spawn_local(async move { r.set(true) });
            run(16);
            assert!(ran.get(), "the executor keeps running");
        });
    }

    #[test]
    fn timers_wake_due_tasks_only() {
        with_exec(|_| {
            let open = Rc::new(Cell::new(false));
            let waiter = Rc::new(Cell::new(None));
            let _ = spawn_local(Gate {
                open: open.clone(),
                waiter: waiter.clone(),
            });
            run(16);
            let key = waiter.get().unwrap();
            let t0 = Instant::now();
            wake_at(t0 + std::time::Duration::from_millis(5), key);
            tick(t0);
            assert!(!has_ready());
            assert_eq!(next_timer(), Some(t0 + std::time::Duration::from_millis(5)));
            tick(t0 + std::time::Duration::from_millis(5));
            assert!(has_ready());
        });
    }

    #[test]
    fn spawn_off_a_shard_gives_the_future_back() {
        assert!(!is_shard_thread());
        assert!(spawn_local(async {}).is_err());
    }
}
