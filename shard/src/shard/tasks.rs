//! Tasks: polling the shard-local executor's ready tasks and applying what they asked of
//! their connections' ports (frames queued, closes, resumed reads).
#![forbid(unsafe_code)]

#[allow(unused_imports)]
use super::*;

impl Shard {
    /// Polls the tasks that are ready, then applies what they asked of their connections
    /// (queued frames, closes, resumed reads), a few rounds while that wakes more tasks.
    pub(super) fn run_tasks(&mut self, dirty: &mut Vec<ConnKey>) {
        for _ in 0..4 {
            let polls = exec::run(TASK_BUDGET);
            exec::take_dirty(dirty);
            if polls == 0 && dirty.is_empty() {
                break;
            }
            for (idx, gen) in dirty.drain(..) {
                let idx = idx as usize;
                if self.conns.get(idx).is_some_and(|c| c.gen == gen) {
                    self.call(idx, |h, ctx| h.on_wake(ctx, 0));
                    self.service(idx);
                }
            }
            if polls > 0 {
                let c = exec::counts();
                let st = &self.shared.stats;
                ShardStats::set(&st.tasks_spawned, c.spawned);
                ShardStats::set(&st.task_polls, c.polls);
                ShardStats::set(&st.task_panics, c.panics);
            }
        }
    }
}
