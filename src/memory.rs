//! Handing the memory of parked connections back to the system.
//!
//! The binary's allocator, mimalloc, gives the pages of freed memory back
//! to the system a while after they became free (its purge delay, a
//! second), but only when some thread next calls into it past that delay:
//! a proxy whose connections all went quiet and parked makes no such call,
//! and would keep the 16 KiB of buffers each parked connection freed
//! (22.5 KiB per idle keep-alive connection at 1 000 connections, measured,
//! against 4.6–5.3 KiB with them given back). A side thread asks mimalloc
//! to give back the free pages its arenas hold now, whichever thread freed
//! them (`mi_collect`), only after connections were parked, never on a
//! busy proxy. A purge delay of zero would do it without the thread, but
//! at load it cost a page fault per request and a system call every dozen
//! (measured).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

/// How often the trimming thread looks.
const EVERY: Duration = Duration::from_millis(250);

/// Buffers freed by parking since the last trim: below this, not worth it.
const WORTH_TRIMMING: usize = 1 << 20;

/// What hyper allocates per HTTP/1.1 connection (read and head buffers).
pub const PARKED_CONNECTION_BYTES: usize = 16 << 10;

static FREED: AtomicUsize = AtomicUsize::new(0);

/// Records `bytes` freed; starts the trimming thread on first use.
pub fn freed(bytes: usize) {
    FREED.fetch_add(bytes, Relaxed);
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let _ = std::thread::Builder::new()
            .name("sluice-trim".into())
            .spawn(|| loop {
                std::thread::sleep(EVERY);
                if FREED.load(Relaxed) >= WORTH_TRIMMING {
                    FREED.store(0, Relaxed);
                    trim();
                }
            });
    });
}

#[allow(unsafe_code)]
fn trim() {
    // SAFETY: neither call takes pointers; both are safe from any thread.
    // mi_collect collects the calling thread's own heap and then, forced,
    // purges every free page that went back to mimalloc's arenas,
    // whichever thread freed it; on a thread whose heap was never set up
    // (this one allocates nothing itself) it would return before the
    // purge, hence mi_thread_init first (which does nothing the second
    // time). Pages a worker still holds (the last free page it keeps per
    // size, blocks another thread freed into its pages) wait for that
    // worker's next allocations. In a process whose global allocator is
    // not mimalloc (the library's tests) there is nothing to give back.
    unsafe {
        libmimalloc_sys::mi_thread_init();
        libmimalloc_sys::mi_collect(true);
    }
}
