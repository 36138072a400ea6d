//! Time on the request path without a system call per reading.
//!
//! Connection activity and stats slots need milliseconds, not nanoseconds,
//! and are read on every socket read and write. A process-wide thread
//! refreshes a coarse millisecond clock every few milliseconds; the request
//! path reads it with one atomic load. Everything here counts from one
//! monotonic epoch, so coarse and precise readings compare.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often the coarse clock is refreshed.
pub const RESOLUTION: Duration = Duration::from_millis(5);

static COARSE_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the epoch, read from the OS; never 0.
pub fn precise_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Milliseconds since the epoch, at most [`RESOLUTION`] behind; never 0.
pub fn coarse_ms() -> u64 {
    match COARSE_MS.load(Relaxed) {
        0 => {
            start();
            precise_ms()
        }
        ms => ms,
    }
}

/// Seconds since the epoch (the live windows' slot clock).
pub fn now_sec() -> u64 {
    coarse_ms() / 1000
}

/// Starts the refreshing thread once per process (first use starts it).
pub fn start() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        COARSE_MS.store(precise_ms(), Relaxed);
        let spawned = std::thread::Builder::new()
            .name("sluice-clock".into())
            .spawn(|| loop {
                COARSE_MS.store(precise_ms(), Relaxed);
                std::thread::sleep(RESOLUTION);
            });
        if spawned.is_err() {
            // Without the thread the coarse clock would stand still: fall
            // back to reading the OS clock every time.
            COARSE_MS.store(0, Relaxed);
        }
    });
}
