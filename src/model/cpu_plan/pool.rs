//! Hands a layer's work items to the pool (or runs them inline on one thread), and measures
//! the time each thread spends inside them when `echonet bench --profile` asks ([`ITEM_CLOCK`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// Threads whose time inside work items [`ItemClock`] keeps apart (pool workers by index, the
/// last slot for any other thread).
const CLOCK_SLOTS: usize = 8;

/// Time each thread spends inside work items, for `echonet bench --profile` with several
/// threads: a step's wall time minus its busiest thread's time is what the hand-over to the pool
/// and the wait at its end cost, and the busiest minus the mean is the imbalance. Off (one
/// relaxed load per layer call) unless profiling; process-wide, so only one profiled plan at a
/// time reads sensible figures.
pub(super) struct ItemClock {
    on: AtomicBool,
    busy_ns: [AtomicU64; CLOCK_SLOTS],
}

pub(super) static ITEM_CLOCK: ItemClock = ItemClock {
    on: AtomicBool::new(false),
    busy_ns: [const { AtomicU64::new(0) }; CLOCK_SLOTS],
};

impl ItemClock {
    pub(super) fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// Per-thread busy time since the last call, and zeroes it.
    pub(super) fn take(&self) -> [Duration; CLOCK_SLOTS] {
        let mut out = [Duration::ZERO; CLOCK_SLOTS];
        for (o, b) in out.iter_mut().zip(&self.busy_ns) {
            *o = Duration::from_nanos(b.swap(0, Ordering::Relaxed));
        }
        out
    }

    fn add(&self, d: Duration) {
        let slot = rayon::current_thread_index()
            .unwrap_or(CLOCK_SLOTS - 1)
            .min(CLOCK_SLOTS - 1);
        self.busy_ns[slot].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Runs `items` work items on the pool (or inline for one thread or one item).
pub(super) fn for_each_item(items: usize, threads: usize, f: impl Fn(usize) + Sync + Send) {
    let timed = ITEM_CLOCK.on.load(Ordering::Relaxed);
    let run = |item| {
        if timed {
            let t = Instant::now();
            f(item);
            ITEM_CLOCK.add(t.elapsed());
        } else {
            f(item)
        }
    };
    if threads <= 1 || items <= 1 {
        (0..items).for_each(run);
    } else {
        (0..items).into_par_iter().for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The item clock adds up the time spent inside work items, per thread, while it is on (and
    /// only then): 8 items of at least 2 ms on a 2-thread pool give 16 ms or more in the pool's
    /// slots. Lower bounds only: other tests of this binary may run items at the same time, and
    /// while the clock is on those add to it too.
    #[test]
    fn item_clock_counts_time_inside_items() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let item = |_| std::thread::sleep(Duration::from_millis(2));
        ITEM_CLOCK.set(false);
        ITEM_CLOCK.take();
        pool.install(|| for_each_item(8, 2, item));
        let off = ITEM_CLOCK.take();
        ITEM_CLOCK.set(true);
        pool.install(|| for_each_item(8, 2, item));
        let on = ITEM_CLOCK.take();
        for_each_item(3, 1, item);
        let inline = ITEM_CLOCK.take();
        ITEM_CLOCK.set(false);
        assert!(
            off.iter().all(|d| d.is_zero()),
            "recorded while off: {off:?}"
        );
        assert!(on[0] + on[1] >= Duration::from_millis(16), "{on:?}");
        // One thread outside any pool: the items run inline, in the last slot.
        assert!(
            inline[CLOCK_SLOTS - 1] >= Duration::from_millis(6),
            "{inline:?}"
        );
    }
}
