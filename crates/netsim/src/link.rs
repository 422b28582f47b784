//! One direction of a simulated link as a plain state machine: datagrams go
//! in with [`LinkState::admit`] at some `now`, and come out of
//! [`LinkState::take_due`] once their due time has passed.
//!
//! No sockets and no clock of its own, so the model (loss, duplication,
//! jitter, reordering, rate, partitions, the queue bound) is unit tested with
//! made-up instants, and a relay run is reproducible from its seed as long as
//! datagrams arrive in the same order.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::stats::LinkCounters;
use crate::LinkConditions;

/// A datagram waiting for its due time. `dest` says where it goes; the relay
/// uses a socket or client address, tests use `()`.
#[derive(Debug)]
pub(crate) struct Scheduled<D> {
    pub due: Instant,
    /// Admission order, so datagrams due at the same instant keep FIFO order.
    seq: u64,
    pub dest: D,
    pub payload: Vec<u8>,
}

impl<D> PartialEq for Scheduled<D> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<D> Eq for Scheduled<D> {}

impl<D> PartialOrd for Scheduled<D> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<D> Ord for Scheduled<D> {
    /// Reversed, so `BinaryHeap` (a max-heap) pops the earliest due first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// The state of one direction: its conditions, RNG and delay queue.
#[derive(Debug)]
pub(crate) struct LinkState<D> {
    conditions: LinkConditions,
    rng: StdRng,
    queue: BinaryHeap<Scheduled<D>>,
    capacity: usize,
    next_seq: u64,
    /// When the rate-limited bottleneck finishes sending what it has accepted.
    link_free_at: Option<Instant>,
}

impl<D: Clone> LinkState<D> {
    pub fn new(conditions: LinkConditions, seed: u64, capacity: usize) -> Self {
        LinkState {
            conditions,
            rng: StdRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            capacity,
            next_seq: 0,
            link_free_at: None,
        }
    }

    pub fn conditions(&self) -> &LinkConditions {
        &self.conditions
    }

    /// Replaces the conditions. Already queued datagrams keep their due times
    /// (they are "on the wire"), except that a partition drops them when due.
    pub fn set_conditions(&mut self, conditions: LinkConditions) {
        if conditions.rate_bytes_per_sec.is_none() {
            self.link_free_at = None;
        }
        self.conditions = conditions;
    }

    pub fn set_partitioned(&mut self, partitioned: bool) {
        self.conditions.partitioned = partitioned;
    }

    /// Applies the conditions to one arriving datagram. Returns whether the
    /// earliest due time changed, i.e. whether the dispatcher must re-arm its
    /// timer.
    pub fn admit(
        &mut self,
        now: Instant,
        payload: Vec<u8>,
        dest: D,
        counters: &LinkCounters,
    ) -> bool {
        let c = &self.conditions;
        if c.partitioned {
            LinkCounters::bump(&counters.dropped_partition);
            return false;
        }
        if c.loss > 0.0 && self.rng.random_bool(c.loss) {
            LinkCounters::bump(&counters.dropped_loss);
            return false;
        }
        let duplicate = c.duplicate > 0.0 && self.rng.random_bool(c.duplicate);
        let earliest_before = self.queue.peek().map(|s| s.due);
        if duplicate {
            LinkCounters::bump(&counters.duplicated);
            self.enqueue(now, payload.clone(), dest.clone(), counters);
        }
        self.enqueue(now, payload, dest, counters);
        let earliest_after = self.queue.peek().map(|s| s.due);
        earliest_after.is_some() && earliest_after != earliest_before
    }

    fn enqueue(&mut self, now: Instant, payload: Vec<u8>, dest: D, counters: &LinkCounters) {
        if self.queue.len() >= self.capacity {
            LinkCounters::bump(&counters.dropped_queue_full);
            return;
        }
        let c = &self.conditions;
        let mut delay_us = c.delay_ms * 1000;
        if c.jitter_ms > 0 {
            let jitter_us = c.jitter_ms * 1000;
            let offset = self.rng.random_range(0..=2 * jitter_us);
            // delay ± jitter, clamped at zero.
            delay_us = (delay_us + offset).saturating_sub(jitter_us);
        }
        if c.reorder > 0.0 && self.rng.random_bool(c.reorder) {
            LinkCounters::bump(&counters.reordered);
            delay_us += c.reorder_gap_ms * 1000;
        }
        let sent_at = match c.rate_bytes_per_sec {
            Some(rate) => {
                let start = self.link_free_at.map_or(now, |free| free.max(now));
                let tx_ns = payload.len() as u128 * 1_000_000_000 / u128::from(rate);
                let done = start + Duration::from_nanos(u64::try_from(tx_ns).unwrap_or(u64::MAX));
                self.link_free_at = Some(done);
                done
            }
            None => now,
        };
        let due = sent_at + Duration::from_micros(delay_us);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Scheduled {
            due,
            seq,
            dest,
            payload,
        });
        counters.queued.store(
            self.queue.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Moves every datagram due at or before `now` into `out` (in due order)
    /// and returns the next due time, if any. Datagrams that fall due while
    /// the link is partitioned are dropped and counted instead.
    pub fn take_due(
        &mut self,
        now: Instant,
        out: &mut Vec<Scheduled<D>>,
        counters: &LinkCounters,
    ) -> Option<Instant> {
        while self.queue.peek().is_some_and(|s| s.due <= now) {
            let Some(item) = self.queue.pop() else { break };
            if self.conditions.partitioned {
                LinkCounters::bump(&counters.dropped_partition);
            } else {
                out.push(item);
            }
        }
        counters.queued.store(
            self.queue.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.queue.peek().map(|s| s.due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(link: &mut LinkState<u32>, at: Instant, c: &LinkCounters) -> Vec<u32> {
        let mut out = Vec::new();
        link.take_due(at, &mut out, c);
        out.into_iter().map(|s| s.dest).collect()
    }

    #[test]
    fn delay_holds_datagrams_until_due_and_keeps_fifo_order() {
        let c = LinkCounters::default();
        let mut link = LinkState::new(LinkConditions::delay(50), 1, 100);
        let t0 = Instant::now();
        assert!(link.admit(t0, vec![0; 10], 1, &c));
        // Same due time as before is not "earlier", but a new queue head is.
        link.admit(t0, vec![0; 10], 2, &c);
        link.admit(t0 + ms(10), vec![0; 10], 3, &c);
        let mut out = Vec::new();
        assert_eq!(link.take_due(t0 + ms(49), &mut out, &c), Some(t0 + ms(50)));
        assert!(out.is_empty());
        assert_eq!(drain(&mut link, t0 + ms(50), &c), vec![1, 2]);
        assert_eq!(drain(&mut link, t0 + ms(60), &c), vec![3]);
        assert_eq!(c.snapshot().queued, 0);
    }

    #[test]
    fn same_seed_same_fate() {
        let cond = LinkConditions {
            delay_ms: 10,
            jitter_ms: 5,
            loss: 0.3,
            duplicate: 0.2,
            reorder: 0.2,
            ..Default::default()
        };
        let run = |seed| {
            let c = LinkCounters::default();
            let mut link = LinkState::new(cond.clone(), seed, 10_000);
            let t0 = Instant::now();
            for i in 0..500 {
                link.admit(t0 + ms(i as u64), vec![0; 8], i, &c);
            }
            (drain(&mut link, t0 + ms(10_000), &c), c.snapshot())
        };
        let (a, sa) = run(7);
        let (b, sb) = run(7);
        let (d, _) = run(8);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        assert_ne!(a, d);
        assert!(sa.dropped_loss > 100 && sa.dropped_loss < 200, "{sa:?}");
        assert!(sa.duplicated > 40, "{sa:?}");
        assert_eq!(a.len() as u64, 500 - sa.dropped_loss + sa.duplicated);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let c = LinkCounters::default();
        let cond = LinkConditions {
            delay_ms: 20,
            jitter_ms: 5,
            ..Default::default()
        };
        let mut link = LinkState::new(cond, 3, 10_000);
        let t0 = Instant::now();
        for i in 0..1000 {
            link.admit(t0, vec![], i, &c);
        }
        assert_eq!(drain(&mut link, t0 + ms(14), &c), Vec::<u32>::new());
        let early = drain(&mut link, t0 + ms(20), &c).len();
        let late = drain(&mut link, t0 + ms(25), &c).len();
        assert_eq!(early + late, 1000);
        assert!(early > 300 && late > 300, "early {early} late {late}");
    }

    #[test]
    fn reorder_lets_later_datagrams_overtake() {
        let c = LinkCounters::default();
        let cond = LinkConditions {
            delay_ms: 10,
            reorder: 0.5,
            reorder_gap_ms: 30,
            ..Default::default()
        };
        let mut link = LinkState::new(cond, 11, 1000);
        let t0 = Instant::now();
        for i in 0..100 {
            link.admit(t0 + ms(i as u64), vec![], i, &c);
        }
        let order = drain(&mut link, t0 + ms(1000), &c);
        assert_eq!(order.len(), 100);
        assert!(order.windows(2).any(|w| w[0] > w[1]), "no reordering");
        let reordered = c.snapshot().reordered;
        assert!((25..=75).contains(&reordered), "{reordered}");
    }

    #[test]
    fn rate_limit_serializes_datagrams() {
        let c = LinkCounters::default();
        let cond = LinkConditions {
            rate_bytes_per_sec: Some(10_000),
            ..Default::default()
        };
        let mut link = LinkState::new(cond, 1, 100);
        let t0 = Instant::now();
        for i in 0..5 {
            // 1000 bytes at 10 kB/s: 100 ms each.
            link.admit(t0, vec![0; 1000], i, &c);
        }
        assert_eq!(drain(&mut link, t0 + ms(99), &c), Vec::<u32>::new());
        assert_eq!(drain(&mut link, t0 + ms(100), &c), vec![0]);
        assert_eq!(drain(&mut link, t0 + ms(499), &c), vec![1, 2, 3]);
        assert_eq!(drain(&mut link, t0 + ms(500), &c), vec![4]);
        // An idle bottleneck does not bank credit.
        link.admit(t0 + ms(2000), vec![0; 1000], 9, &c);
        assert_eq!(drain(&mut link, t0 + ms(2099), &c), Vec::<u32>::new());
        assert_eq!(drain(&mut link, t0 + ms(2100), &c), vec![9]);
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let c = LinkCounters::default();
        let mut link = LinkState::new(LinkConditions::delay(10), 1, 3);
        let t0 = Instant::now();
        for i in 0..10 {
            link.admit(t0, vec![], i, &c);
        }
        let s = c.snapshot();
        assert_eq!((s.queued, s.dropped_queue_full), (3, 7));
        assert_eq!(drain(&mut link, t0 + ms(10), &c), vec![0, 1, 2]);
    }

    #[test]
    fn loss_duplicate_and_partition() {
        let c = LinkCounters::default();
        let mut link = LinkState::new(
            LinkConditions {
                loss: 1.0,
                ..Default::default()
            },
            1,
            100,
        );
        let t0 = Instant::now();
        link.admit(t0, vec![], 1, &c);
        assert_eq!(c.snapshot().dropped_loss, 1);

        link.set_conditions(LinkConditions {
            duplicate: 1.0,
            delay_ms: 5,
            ..Default::default()
        });
        link.admit(t0, vec![], 2, &c);
        assert_eq!(c.snapshot().duplicated, 1);
        // Partitioned while in flight: dropped when due.
        link.set_partitioned(true);
        link.admit(t0, vec![], 3, &c);
        assert_eq!(drain(&mut link, t0 + ms(5), &c), Vec::<u32>::new());
        assert_eq!(c.snapshot().dropped_partition, 3);
        link.set_partitioned(false);
        link.admit(t0 + ms(5), vec![], 4, &c);
        assert_eq!(drain(&mut link, t0 + ms(10), &c), vec![4, 4]);
    }
}
