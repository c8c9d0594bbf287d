//! The accept balancer's choice, sans-IO: the accepting shard hands each admitted connection to
//! the shard with the fewest open connections, counting hand-offs still in transit (so a burst
//! of accepts spreads evenly before the targets have even adopted them), ties to the lowest
//! index. A dead shard (its thread panicked) is never picked. An fd handed to a shard never
//! moves again.
#![forbid(unsafe_code)]

/// Accepting-shard-local bookkeeping of hand-offs.
#[derive(Debug, Clone)]
pub struct Balancer {
    handed: Vec<u64>,
}

impl Balancer {
    /// For `shards` shards.
    pub fn new(shards: usize) -> Self {
        Self {
            handed: vec![0; shards],
        }
    }

    /// Picks a target given each shard's `(open, adopted)` counters (read from the shards'
    /// stats cells; `None` for a dead shard), and records the hand-off. With every shard dead
    /// it picks shard 0 (whose queue then refuses the hand-off).
    pub fn pick(&mut self, counters: impl Fn(usize) -> Option<(u64, u64)>) -> usize {
        let mut best = 0;
        let mut best_load = None;
        for (i, handed) in self.handed.iter().enumerate() {
            let Some((open, adopted)) = counters(i) else {
                continue;
            };
            let in_transit = handed.saturating_sub(adopted);
            let load = open.saturating_add(in_transit);
            if best_load.is_none_or(|b| load < b) {
                best = i;
                best_load = Some(load);
            }
        }
        self.handed[best] += 1;
        best
    }

    /// A hand-off to `shard` could not be delivered (queue full): undo its bookkeeping.
    pub fn undo(&mut self, shard: usize) {
        self.handed[shard] = self.handed[shard].saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_transit_hand_offs_count_as_load() {
        let mut b = Balancer::new(2);
        // Targets have not adopted anything yet: alternate.
        let picks: Vec<usize> = (0..6).map(|_| b.pick(|_| Some((0, 0)))).collect();
        assert_eq!(picks, vec![0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn fewest_open_wins() {
        let mut b = Balancer::new(3);
        // shard 0 has 10 open, shard 1 has 2, shard 2 has 5; all adopted.
        let open = [10u64, 2, 5];
        let pick = b.pick(|i| Some((open[i], 0)));
        assert_eq!(pick, 1);
        // The hand-off is in transit to 1 (load 3); next goes to 1 again until it reaches 5.
        assert_eq!(b.pick(|i| Some((open[i], 0))), 1);
        assert_eq!(b.pick(|i| Some((open[i], 0))), 1);
        assert_eq!(b.pick(|i| Some((open[i], 0))), 1); // 1: 2 + 3 in transit = 5 vs 2: 5 -> tie, lowest index
        assert_eq!(b.pick(|i| Some((open[i], 0))), 2);
    }

    #[test]
    fn dead_shards_are_never_picked() {
        let mut b = Balancer::new(3);
        // Shard 0 died (and reports 0 open); 1 and 2 are loaded.
        let counters = |i: usize| [None, Some((5, 0)), Some((7, 0))][i];
        for _ in 0..10 {
            assert_ne!(b.pick(counters), 0);
        }
        assert_eq!(
            b.pick(|_| None),
            0,
            "all dead: shard 0, whose queue refuses"
        );
    }

    #[test]
    fn undo_restores_load() {
        let mut b = Balancer::new(2);
        assert_eq!(b.pick(|_| Some((0, 0))), 0);
        b.undo(0);
        assert_eq!(b.pick(|_| Some((0, 0))), 0);
    }
}
