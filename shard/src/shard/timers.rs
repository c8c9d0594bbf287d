//! Timers: connection deadlines (read/write/idle/handshake), handler-requested wakes, held
//! reads, quiet direct receives, dial deadlines and listener back-off, on one deadline heap.
#![forbid(unsafe_code)]

#[allow(unused_imports)]
use super::*;

/// The heap is compacted once it holds more than this many entries and more than
/// [`STALE_FACTOR`] times the entries its live connections, dials and listeners can need.
const COMPACT_MIN: usize = 1024;
/// See [`COMPACT_MIN`]: a connection needs at most four entries (deadline, wake, held read,
/// quiet direct receive).
const STALE_FACTOR: usize = 4;

impl Shard {
    /// Drops the entries of connections and dials that are gone (or re-armed since), once they
    /// outnumber the live ones. Deadlines are removed lazily — a closed connection's entry
    /// stays until its time comes — so with long timeouts and connection churn the heap grew
    /// by one entry per closed connection for a whole idle timeout (the 30-minute soak: uring
    /// TCP's RSS rose 4 KiB every 10 s at 10 connections/s with `idle_timeout = 3600s`).
    pub(super) fn compact_timers(&mut self) {
        let live = self.conns.len()
            + self.dials.len()
            + self.listeners.len()
            + self.qconns.len()
            + self.udp_socks.len();
        let len = self.timers.len();
        if len <= COMPACT_MIN || len <= STALE_FACTOR * (live + 1) {
            return;
        }
        let (conns, dials, qconns) = (&self.conns, &self.dials, &self.qconns);
        self.timers.retain(|Reverse((t, key))| match *key {
            TimerKey::Conn(idx, gen) => conns
                .get(idx)
                .is_some_and(|c| c.gen == gen && c.io.timer == Some(*t)),
            TimerKey::Wake(idx, gen) => conns
                .get(idx)
                .is_some_and(|c| c.gen == gen && c.io.wake_armed == Some(*t)),
            TimerKey::DirectIdle(idx, gen, seq) => conns
                .get(idx)
                .is_some_and(|c| c.gen == gen && c.io.fresh_seq == seq),
            TimerKey::Resume(idx, gen) => conns.get(idx).is_some_and(|c| c.gen == gen),
            TimerKey::Dial(idx, gen) => dials.get(idx).is_some_and(|d| d.gen == gen),
            TimerKey::Listener(..) | TimerKey::UdpRearm(..) => true,
            TimerKey::Quic(q, gen) => qconns.get(q).is_some_and(|c| c.armed_at(gen, *t)),
        });
        ShardStats::add(&self.shared.stats.timer_compactions, 1);
    }

    pub(super) fn fire_timers(&mut self) {
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > self.now {
                break;
            }
            self.timers.pop();
            match key {
                TimerKey::Conn(idx, gen) => {
                    let Some(conn) = self.conns.get_mut(idx) else {
                        continue;
                    };
                    if conn.gen != gen || conn.io.timer != Some(t) {
                        continue;
                    }
                    conn.io.timer = None;
                    let hs_expired = conn
                        .tls
                        .as_ref()
                        .and_then(|t| t.hs_deadline)
                        .is_some_and(|d| d <= self.now);
                    if hs_expired {
                        // Also ends a flush that outlived the handshake deadline.
                        conn.io.close = Some((CloseReason::Timeout(TimeoutKind::Handshake), false));
                    } else if let Some(kind) = conn.state.handle_timeout(self.now) {
                        conn.io.close = Some((CloseReason::Timeout(kind), false));
                    }
                    self.service(idx);
                }
                TimerKey::Wake(idx, gen) => {
                    let Some(conn) = self.conns.get_mut(idx) else {
                        continue;
                    };
                    if conn.gen != gen || conn.io.wake_armed != Some(t) {
                        continue;
                    }
                    conn.io.wake_armed = None;
                    if let Some((_, bits)) = conn.io.wake_at.take() {
                        self.call(idx, |h, ctx| h.on_wake(ctx, bits));
                    }
                    self.service(idx);
                }
                TimerKey::DirectIdle(idx, gen, seq) => {
                    let Some(conn) = self.conns.get_mut(idx) else {
                        continue;
                    };
                    if conn.gen != gen
                        || conn.io.fresh_seq != seq
                        || conn.io.recv_kind != RecvKind::Fresh
                        || conn.io.recv_cancelled
                    {
                        continue;
                    }
                    if let Some(op) = conn.io.recv_op {
                        conn.io.direct = false;
                        conn.io.recv_cancelled = true;
                        ShardStats::add(&self.shared.stats.recv_direct_idle, 1);
                        let _ = self.ring.cancel(op);
                    }
                }
                TimerKey::Resume(idx, gen) => {
                    if self.conns.get(idx).is_some_and(|c| c.gen == gen) {
                        self.service(idx);
                    }
                }
                TimerKey::Dial(idx, gen) => {
                    if let Some(d) = self.dials.get_mut(idx) {
                        if d.gen == gen && !d.timed_out {
                            d.timed_out = true;
                            let op = d.op;
                            let _ = self.ring.cancel(op);
                        }
                    }
                }
                TimerKey::Quic(q, gen) => self.on_quic_timer(q, gen, t),
                TimerKey::UdpRearm(s, gen) => self.on_udp_timer(s, gen),
                TimerKey::Listener(idx, gen) => {
                    if self
                        .listeners
                        .get(idx)
                        .is_some_and(|l| l.gen == gen && l.op.is_none())
                    {
                        self.arm_accept(idx);
                    }
                }
            }
        }
    }

    /// Re-arms a connection's timers (its deadline and a wake it asked for).
    pub(super) fn arm_conn_timers(&mut self, idx: usize) {
        let conn = &mut self.conns[idx];
        if let Some((t, _)) = conn.io.wake_at {
            if conn.io.wake_armed != Some(t) {
                conn.io.wake_armed = Some(t);
                self.timers
                    .push(Reverse((t, TimerKey::Wake(idx, conn.gen))));
            }
        }
        let hs = conn.tls.as_ref().and_then(|t| t.hs_deadline);
        let next = match (conn.state.poll_timeout(), hs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(d) = next {
            if conn.io.timer.is_none_or(|t| d < t) {
                conn.io.timer = Some(d);
                self.timers
                    .push(Reverse((d, TimerKey::Conn(idx, conn.gen))));
            }
        }
    }
}
