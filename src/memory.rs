//! Handing the memory of parked connections back to the system.
//!
//! glibc's allocator keeps freed chunks in its arenas, so the 16 KiB of
//! buffers a parked connection frees would still count in RSS, interleaved
//! with live allocations it can never trim from the top. `malloc_trim`
//! returns whole free pages from anywhere in the arenas. It runs on its own
//! thread, only after connections were parked, never on a busy proxy.

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

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim only releases free memory; it takes the arenas'
    // locks itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
