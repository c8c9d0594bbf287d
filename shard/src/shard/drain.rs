//! Shutdown: stop accepting, ask every connection to drain, abort the rest at the deadline,
//! and report.
#![forbid(unsafe_code)]

#[allow(unused_imports)]
use super::*;

impl Shard {
    pub(super) fn begin_drain(
        &mut self,
        deadline: Instant,
        reply: tokio::sync::oneshot::Sender<ShardReport>,
    ) {
        self.stop_listen(None);
        self.stop_listen_quic(None);
        let ops: Vec<OpId> = self.dials.iter().map(|(_, d)| d.op).collect();
        for op in ops {
            let _ = self.ring.cancel(op);
        }
        self.drain = Some(Drain {
            deadline,
            reply: Some(reply),
            drained: 0,
        });
        let idxs: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for idx in idxs {
            self.call(idx, |h, ctx| h.on_drain(ctx));
            self.service(idx);
        }
    }

    pub(super) fn abort_all(&mut self, reason: CloseReason) -> u64 {
        let idxs: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        let n = idxs.len() as u64;
        for idx in idxs {
            self.finish(idx, reason.clone());
        }
        n
    }

    /// True when the shard should exit.
    pub(super) fn check_drain(&mut self) -> bool {
        let Some(d) = &self.drain else {
            return false;
        };
        let deadline = d.deadline;
        if self.conns.is_empty() && self.dials.is_empty() && !self.quic_busy() {
            let drained = d.drained;
            self.quic_shutdown();
            self.reply(ShardReport {
                drained,
                aborted: 0,
            });
            return true;
        }
        if self.now >= deadline {
            let aborted = self.abort_all(CloseReason::Shutdown);
            let drained = self.drain.as_ref().map_or(0, |d| d.drained);
            // Pending dials: their cancels are in flight; report them failed now.
            let dials: Vec<usize> = self.dials.iter().map(|(i, _)| i).collect();
            for i in dials {
                let mut d = self.dials.remove(i);
                let _ = self.ring.cancel(d.op);
                if let Some(h) = d.hooks.take() {
                    self.dial_failed(h, DialError::Unavailable("shutdown"));
                }
            }
            self.quic_shutdown();
            self.reply(ShardReport { drained, aborted });
            return true;
        }
        false
    }

    pub(super) fn reply(&mut self, r: ShardReport) {
        if let Some(tx) = self.drain.as_mut().and_then(|d| d.reply.take()) {
            let _ = tx.send(r);
        }
    }
}
