//! Hands a layer's work items to the plan's own thread pool ([`SpinPool`], or rayon's, or runs
//! them inline on one thread), and measures the time each thread spends inside them when
//! `echonet bench --profile` asks ([`ITEM_CLOCK`]).

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
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
        let slot = worker_index()
            .unwrap_or(CLOCK_SLOTS - 1)
            .min(CLOCK_SLOTS - 1);
        self.busy_ns[slot].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Runs `items` work items: inline for one thread or one item; otherwise on the [`SpinPool`]
/// installed on this thread ([`SpinPool::install`]), or else on rayon's pool.
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
        return;
    }
    let installed = INSTALLED.with(Cell::get);
    if installed.is_null() {
        (0..items).into_par_iter().for_each(run);
    } else {
        // SAFETY: `install` keeps the pool alive, and the pointer set, only while its closure
        // runs on this thread.
        unsafe { &*installed }.run(items, &run);
    }
}

/// The pool thread this is (0.. for a [`SpinPool`]'s workers, then the thread that installed
/// it; else rayon's worker index), or `None` for any other thread: per-thread scratch slots are
/// picked by it.
pub(super) fn worker_index() -> Option<usize> {
    if let Some(i) = WORKER.with(Cell::get) {
        return Some(i);
    }
    let installed = INSTALLED.with(Cell::get);
    if installed.is_null() {
        rayon::current_thread_index()
    } else {
        // SAFETY: as in `for_each_item`. The caller of an installed pool comes after its workers.
        Some(unsafe { &*installed }.workers.len())
    }
}

thread_local! {
    /// The pool [`for_each_item`] hands work to on this thread (null: rayon's).
    static INSTALLED: Cell<*const SpinPool> = const { Cell::new(std::ptr::null()) };
    /// This thread's index among its [`SpinPool`]'s workers.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How long an idle worker keeps polling for the next layer before it sleeps. Layers of one
/// frame follow each other within microseconds, so a frame's hand-overs find the workers awake
/// (waking a sleeping thread costs several microseconds, about 200 times a frame); between
/// frames (100 ms apart in the daemon) they sleep, so an idle daemon burns no CPU.
const SPIN: Duration = Duration::from_micros(300);

/// Polls between a worker's checks of the clock, each followed by a yield of its core.
const POLLS_PER_YIELD: u32 = 64;

/// The work the caller has handed over: a fat pointer to its item function, valid until every
/// worker has reported the generation done.
type ItemFn = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped (SeqCst) for each hand-over; workers wait for it to change.
    generation: AtomicU64,
    job: UnsafeCell<ItemFn>,
    /// Per thread (the caller's first, then worker `i`'s at `i + 1`): its block of the items,
    /// which it takes first, in order, so a thread keeps the same rows and weight panels from layer to layer
    /// (they stay in its core's cache; handing items to whoever is free measured 6 % more time
    /// inside items). A thread with its own block done takes items left in the others'.
    blocks: Box<[Block]>,
    /// Workers that have not finished the current generation.
    pending: AtomicUsize,
    /// Workers asleep (or about to be) on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
    /// The first panic of an item on a worker, re-raised on the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `job` is written only by the caller while no worker reads it (between generations: all
// workers have reported the previous one done, none has seen the next), and read by workers only
// after they see the generation that publishes it (SeqCst on `generation` orders the two).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// The plan's own thread pool: `threads - 1` workers that, with the calling thread, share a
/// layer's work items (each its own block first, see `Shared::blocks`). Unlike rayon's, its idle workers poll for [`SPIN`] before
/// sleeping, so the ~200 hand-overs of a frame cost a store and a poll instead of a wake-up; the
/// caller works on the items too and waits (polling) for the last one. One hand-over at a time:
/// the plan's workspace lock already allows one forward at a time.
pub struct SpinPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held for a hand-over; a hand-over asked for meanwhile runs inline (see `run`).
    calls: Mutex<()>,
}

impl std::fmt::Debug for SpinPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpinPool")
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl SpinPool {
    /// A pool for `threads` threads in all: the caller and `threads - 1` workers (none for one
    /// thread). A worker that cannot be started leaves the pool smaller, never broken.
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(std::ptr::null::<fn(usize)>() as ItemFn),
            blocks: (0..threads.max(1)).map(|_| Block::default()).collect(),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            panic: Mutex::new(None),
        });
        let workers = (0..threads.saturating_sub(1))
            .map_while(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("echonet-plan-{i}"))
                    .spawn(move || worker(&shared, i))
                    .ok()
            })
            .collect();
        Self {
            shared,
            workers,
            calls: Mutex::new(()),
        }
    }

    /// Runs `f` with this pool receiving this thread's [`for_each_item`] hand-overs.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const SpinPool);
        impl Drop for Restore {
            fn drop(&mut self) {
                INSTALLED.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(INSTALLED.with(|c| c.replace(self as *const SpinPool)));
        f()
    }

    /// Runs items `0..items` of `f` on the workers and this thread; returns when all are done.
    fn run(&self, items: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            (0..items).for_each(f);
            return;
        }
        // One hand-over at a time. A call made while one is under way (from inside an item on
        // this thread, or from a second thread) runs its items inline rather than waiting for a
        // hand-over that may be waiting for it. A poisoned lock only means an earlier caller
        // panicked (after its hand-over ended).
        let _call = match self.calls.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                (0..items).for_each(f);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY: every worker has reported the previous generation done (the wait below), so
        // none reads `job` until the generation bump publishes the new one; the pointer's
        // lifetime is erased, and this function does not return before every worker is done
        // with it.
        unsafe {
            *s.job.get() = std::mem::transmute::<&(dyn Fn(usize) + Sync), ItemFn>(f);
        }
        // Blocks past the threads that started (a worker that could not be spawned) stay empty.
        let n = self.workers.len() + 1;
        for (t, b) in s.blocks.iter().enumerate() {
            let (from, to) = if t < n {
                (t * items / n, (t + 1) * items / n)
            } else {
                (0, 0)
            };
            b.next.store(from, Ordering::Relaxed);
            b.end.store(to, Ordering::Relaxed);
        }
        s.pending.store(self.workers.len(), Ordering::Relaxed);
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }
        // An item that panics here must not unwind past the wait below: the workers may still
        // be running `f`, which borrows the caller's frame.
        let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| take_items(s, 0, f)));
        if own.is_err() {
            stop_items(s);
        }
        let mut polls = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
            // Poll briefly, then give the core away: a worker the OS descheduled needs it.
            polls += 1;
            if polls < 2000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let panic = s.panic.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(payload) = own.err().or(panic) {
            std::panic::resume_unwind(payload);
        }
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        {
            let _g = s.lock.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One thread's block of a hand-over's items: `next..end` left to take.
#[derive(Default)]
#[repr(align(128))] // its own cache lines: threads take from their own blocks at the same time
struct Block {
    next: AtomicUsize,
    end: AtomicUsize,
}

/// Takes items of the current generation until none is left: block `own` first, then what is
/// left of the others.
fn take_items(s: &Shared, own: usize, f: &(dyn Fn(usize) + Sync)) {
    let blocks = s.blocks.len();
    for k in 0..blocks {
        let Some(b) = s.blocks.get((own + k) % blocks) else {
            return;
        };
        let end = b.end.load(Ordering::Relaxed);
        loop {
            let i = b.next.fetch_add(1, Ordering::Relaxed);
            if i >= end {
                break;
            }
            f(i);
        }
    }
}

/// After a panic in an item: no thread takes another item of this hand-over.
fn stop_items(s: &Shared) {
    for b in s.blocks.iter() {
        b.next.store(usize::MAX / 2, Ordering::Relaxed);
    }
}

/// A worker's life: wait for a generation (polling, then asleep), take its items, report done.
fn worker(s: &Shared, index: usize) {
    WORKER.with(|c| c.set(Some(index)));
    let mut seen = 0u64;
    loop {
        let polled = Instant::now();
        let mut polls = 0u32;
        while s.generation.load(Ordering::SeqCst) == seen {
            polls = polls.wrapping_add(1);
            std::hint::spin_loop();
            if !polls.is_multiple_of(POLLS_PER_YIELD) {
                continue;
            }
            if polled.elapsed() < SPIN {
                // Lets another runnable thread of this core go first (returns at once when
                // there is none): with more threads than cores (tests in parallel, the daemon's
                // capture and display beside inference), polling must not starve them.
                std::thread::yield_now();
            } else {
                let mut g = s.lock.lock().unwrap_or_else(|p| p.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.generation.load(Ordering::SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                break;
            }
        }
        seen = s.generation.load(Ordering::SeqCst);
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: published by the generation just seen; valid until `pending` reaches 0.
        let f = unsafe { &**s.job.get() };
        if let Err(payload) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| take_items(s, index + 1, f)))
        {
            // Let the caller stop too: no item is left for anyone.
            stop_items(s);
            let mut p = s.panic.lock().unwrap_or_else(|p| p.into_inner());
            p.get_or_insert(payload);
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item of every hand-over runs exactly once, for item counts below, at and above the
    /// thread count, over many hand-overs in a row (workers polling) and after a pause long
    /// enough for them to sleep (woken by the next hand-over); each thread of a hand-over has
    /// its own [`worker_index`] (the per-thread scratch slots depend on it).
    #[test]
    fn a_spin_pool_runs_every_item_once_on_distinct_slots() {
        for threads in [2, 3] {
            let pool = SpinPool::new(threads);
            for round in 0..400 {
                let items = [0, 1, 2, 3, 5, 8, 64][round % 7];
                let runs: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
                let slots = Mutex::new(std::collections::HashMap::new());
                if round == 200 {
                    std::thread::sleep(SPIN * 20);
                }
                pool.install(|| {
                    for_each_item(items, threads, |i| {
                        runs[i].fetch_add(1, Ordering::Relaxed);
                        let me = (std::thread::current().id(), worker_index());
                        slots.lock().unwrap().insert(me.0, me.1);
                        std::thread::sleep(Duration::from_micros((i % 3) as u64 * 20));
                    })
                });
                assert!(
                    runs.iter().all(|r| r.load(Ordering::Relaxed) == 1),
                    "{threads} threads, {items} items, round {round}: {runs:?}"
                );
                let slots = slots.into_inner().unwrap();
                let mut seen: Vec<_> = slots.values().copied().collect();
                seen.sort();
                seen.dedup();
                assert_eq!(seen.len(), slots.len(), "shared slots: {slots:?}");
                assert!(
                    seen.iter().all(|s| s.is_some_and(|s| s < threads)),
                    "{slots:?}"
                );
            }
        }
    }

    /// An item that panics, on a worker or on the caller, surfaces as the caller's panic after
    /// every thread has left the hand-over (the items borrow the caller's frame), and the pool
    /// keeps working.
    #[test]
    fn a_panicking_item_reaches_the_caller_and_the_pool_survives() {
        let pool = SpinPool::new(2);
        for bad in [0, 3] {
            let done = AtomicUsize::new(0);
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.install(|| {
                    for_each_item(4, 2, |i| {
                        if i == bad {
                            panic!("item {i} failed");
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    })
                })
            }));
            let payload = caught.expect_err("the panic must reach the caller");
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default();
            assert_eq!(text, format!("item {bad} failed"));
            assert!(done.load(Ordering::Relaxed) <= 3);
        }
        let sum = AtomicUsize::new(0);
        pool.install(|| {
            for_each_item(10, 2, |i| {
                sum.fetch_add(i, Ordering::Relaxed);
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }

    /// A hand-over started from inside an item of another (on the installing thread) runs
    /// inline instead of waiting for the pool it is part of; every inner item runs once.
    #[test]
    fn a_nested_hand_over_runs_inline() {
        let pool = SpinPool::new(2);
        let inner = AtomicUsize::new(0);
        pool.install(|| {
            for_each_item(4, 2, |_| {
                for_each_item(3, 2, |_| {
                    inner.fetch_add(1, Ordering::Relaxed);
                })
            })
        });
        assert_eq!(inner.load(Ordering::Relaxed), 12);
    }

    /// Installing is scoped: outside `install` the hand-overs go to rayon again, and a pool of
    /// one thread has no workers and runs everything on the caller.
    #[test]
    fn install_is_scoped_and_one_thread_runs_inline() {
        let pool = SpinPool::new(1);
        assert!(pool.workers.is_empty());
        let caller = std::thread::current().id();
        pool.install(|| for_each_item(6, 2, |_| assert_eq!(std::thread::current().id(), caller)));
        assert!(INSTALLED.with(Cell::get).is_null());
        let two = SpinPool::new(2);
        two.install(|| assert!(!INSTALLED.with(Cell::get).is_null()));
        assert!(INSTALLED.with(Cell::get).is_null());
    }

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
