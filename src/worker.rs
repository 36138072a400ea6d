//! Which proxy worker the current thread is. Each worker is one thread with
//! its own runtime, so a structure kept apart per worker (idle upstream
//! connections, stats shards) is touched from one core: nothing bounces
//! between caches and no socket wakes a thread across cores. (Where a
//! structure has fewer parts than there are workers, capped or made before
//! more were reserved, workers share parts: still correct, only shared.)

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// How many workers per-worker structures are made for: the most any
/// running sluice in this process asked for.
static WORKERS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The worker this thread is; threads that are no worker count as 0.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Makes per-worker structures created from now on have room for `n`
/// workers. Called before the first table is compiled.
pub fn reserve(n: usize) {
    WORKERS.fetch_max(n.max(1), Relaxed);
}

/// How many workers per-worker structures are made for.
pub fn count() -> usize {
    WORKERS.load(Relaxed)
}

/// Marks the current thread as worker `i`.
pub fn set_current(i: usize) {
    WORKER.with(|w| w.set(i));
}

/// The current thread's place among `len` per-worker parts. Workers beyond
/// `len` (a structure made before more were reserved, or a capped one)
/// share a part with an earlier worker.
#[inline]
pub fn index(len: usize) -> usize {
    let i = WORKER.with(Cell::get);
    if i < len {
        i
    } else {
        i % len
    }
}
