//! The models. Each runs every interleaving of its threads up to loom's preemption bound
//! (`LOOM_MAX_PREEMPTIONS`, default 2 here).

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

use crate::balance::Balancer;
use crate::doorbell::Doorbell;
use crate::wake::WakeWord;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

fn bell() -> Doorbell {
    Doorbell::new(std::fs::File::open("/dev/null").expect("/dev/null"))
}

/// The shard's side of one loop turn: take what is queued, park, look again; returns whether
/// it went to sleep (then only an eventfd write wakes it).
fn shard_turn(bell: &Doorbell, queue: &Mutex<Vec<u32>>, taken: &mut Vec<u32>) -> bool {
    taken.append(&mut queue.lock().unwrap());
    bell.park();
    let pending = !queue.lock().unwrap().is_empty();
    if pending {
        bell.unpark();
        taken.append(&mut queue.lock().unwrap());
        return false;
    }
    true
}

fn doorbell_model(posters: u32) {
    model(move || {
        let bell = Arc::new(bell());
        let queue = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..posters)
            .map(|i| {
                let (bell, queue) = (bell.clone(), queue.clone());
                thread::spawn(move || {
                    queue.lock().unwrap().push(i);
                    bell.ring();
                })
            })
            .collect();
        let mut taken = Vec::new();
        let slept = shard_turn(&bell, &queue, &mut taken);
        for h in handles {
            h.join().unwrap();
        }
        if slept && !queue.lock().unwrap().is_empty() {
            // Asleep with work queued: a poster must have written the eventfd.
            assert!(
                bell.rings() >= 1,
                "lost wake-up: asleep with a message queued"
            );
        }
    });
}

#[test]
fn doorbell_one_poster_never_loses_a_wakeup() {
    doorbell_model(1);
}

#[test]
fn doorbell_two_posters_never_lose_a_wakeup() {
    doorbell_model(2);
}

/// Two threads wake one connection while its shard takes wakes from the queue.
#[test]
fn wake_word_delivers_every_bit_and_queues_once() {
    model(|| {
        let word = Arc::new(WakeWord::default());
        // Entries of this connection in its shard's wake queue.
        let queued = Arc::new(AtomicUsize::new(0));
        let wakers: Vec<_> = [1u32, 2]
            .into_iter()
            .map(|bit| {
                let (word, queued) = (word.clone(), queued.clone());
                thread::spawn(move || {
                    if word.post(bit) {
                        let n = queued.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(n <= 1, "queued twice at once");
                    }
                })
            })
            .collect();
        let mut delivered = 0u32;
        for _ in 0..2 {
            if queued.load(Ordering::SeqCst) > 0 {
                queued.fetch_sub(1, Ordering::SeqCst);
                delivered |= word.take();
            }
        }
        for w in wakers {
            w.join().unwrap();
        }
        while queued.load(Ordering::SeqCst) > 0 {
            queued.fetch_sub(1, Ordering::SeqCst);
            delivered |= word.take();
        }
        assert_eq!(delivered, 1 | 2, "a posted bit was lost");
    });
}

/// The writer inbox of `port.rs` as seen from other threads (a replica of `try_push` and the
/// shard's `drain_out` on its shared half): push under the inbox lock if below capacity
/// (`Busy` otherwise), publish the length hint, then wake the connection through its wake word;
/// the shard, when woken, reads the hint and takes frames under the lock.
#[test]
fn inbox_busy_accounting_and_no_stranded_frame() {
    const CAP: usize = 1;
    model(|| {
        let inbox = Arc::new(Mutex::new(Vec::<u32>::new()));
        let hint = Arc::new(AtomicUsize::new(0));
        let word = Arc::new(WakeWord::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let senders: Vec<_> = [1u32, 2]
            .into_iter()
            .map(|frame| {
                let (inbox, hint, word, queued) =
                    (inbox.clone(), hint.clone(), word.clone(), queued.clone());
                thread::spawn(move || {
                    let mut g = inbox.lock().unwrap();
                    if g.len() >= CAP {
                        return false; // Busy: the inbox held CAP frames just now
                    }
                    g.push(frame);
                    hint.store(g.len(), Ordering::Release);
                    drop(g);
                    if word.post(1) {
                        queued.fetch_add(1, Ordering::SeqCst);
                    }
                    true
                })
            })
            .collect();
        let mut taken = Vec::new();
        let drain = |taken: &mut Vec<u32>| {
            if queued.load(Ordering::SeqCst) > 0 {
                queued.fetch_sub(1, Ordering::SeqCst);
                let _ = word.take();
                if hint.load(Ordering::Acquire) > 0 {
                    let mut g = inbox.lock().unwrap();
                    taken.append(&mut g);
                    hint.store(0, Ordering::Release);
                }
            }
        };
        drain(&mut taken);
        let accepted: Vec<bool> = senders.into_iter().map(|s| s.join().unwrap()).collect();
        while queued.load(Ordering::SeqCst) > 0 {
            drain(&mut taken);
        }
        let ok = accepted.iter().filter(|a| **a).count();
        assert!(ok >= 1, "the first push into an empty inbox is never Busy");
        assert_eq!(taken.len(), ok, "every accepted frame was taken: {taken:?}");
        assert_eq!(hint.load(Ordering::SeqCst), inbox.lock().unwrap().len());
    });
}

/// The accepting shard picks targets from the targets' (open, adopted) counters while the
/// targets adopt hand-offs on their own threads; one hand-off is refused and undone.
#[test]
fn balancer_hand_off_books_balance() {
    model(|| {
        let adopted: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let open: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        // Each target's command queue (hand-offs waiting to be adopted), and "no more".
        let queues: Arc<[Mutex<usize>; 2]> = Arc::new([Mutex::new(0), Mutex::new(0)]);
        let adopt = |i: usize,
                     queues: &[Mutex<usize>; 2],
                     open: &[AtomicUsize; 2],
                     adopted: &[AtomicUsize; 2]| {
            let took = std::mem::take(&mut *queues[i].lock().unwrap());
            // As `Shard::adopt`: `open` counted first (in `install`), then `adopted` published
            // with Release.
            for _ in 0..took {
                open[i].fetch_add(1, Ordering::Relaxed);
                adopted[i].fetch_add(1, Ordering::Release);
            }
        };
        // Each target adopts once, concurrently with the picks; what arrives later is adopted
        // after the join (its next loop turn).
        let targets: Vec<_> = (0..2)
            .map(|i| {
                let (adopted, open, queues) = (adopted.clone(), open.clone(), queues.clone());
                thread::spawn(move || adopt(i, &queues, &open, &adopted))
            })
            .collect();
        let mut b = Balancer::new(2);
        let mut sent = [0u64; 2];
        for n in 0..3 {
            // As the accepting shard: `adopted` (Acquire) before `open`.
            let t = b.pick(|i| {
                let a = adopted[i].load(Ordering::Acquire) as u64;
                Some((open[i].load(Ordering::Relaxed) as u64, a))
            });
            if n == 1 {
                b.undo(t); // the target's queue refused this one
            } else {
                *queues[t].lock().unwrap() += 1;
                sent[t] += 1;
            }
        }
        for t in targets {
            t.join().unwrap();
        }
        for i in 0..2 {
            adopt(i, &queues, &open, &adopted);
        }
        for i in 0..2 {
            assert_eq!(adopted[i].load(Ordering::SeqCst) as u64, sent[i]);
        }
        // Two hand-offs made, spread over both targets whatever they had adopted when picked.
        assert_eq!(sent, [1, 1], "in-transit hand-offs count as load");
        // With everything adopted nothing is in transit: a tie goes to the lower index.
        let t = b.pick(|i| {
            Some((
                open[i].load(Ordering::SeqCst) as u64,
                adopted[i].load(Ordering::SeqCst) as u64,
            ))
        });
        assert_eq!(t, 0);
    });
}
