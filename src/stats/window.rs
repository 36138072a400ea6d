//! A live, lock-free window of one backend's outcomes: counts by class and a
//! latency histogram per one-second slot, in a ring that covers the window.
//!
//! Recording is O(1) atomics on the request path; reading sums the slots off
//! the path. Time is passed in (seconds on a monotonic clock) so tests drive
//! it directly.
//!
//! Both the window and the lifetime counts are kept in shards, one per
//! worker (up to [`MAX_SHARDS`]): with one set of counters, two workers
//! recording the same backend pulled the same cache lines back and forth
//! between cores on every request. Readers sum the shards.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

/// The outcome class of one request, as in `sluice_requests_total{class}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A final status below 300 (an interim 1xx is never final).
    Success2xx,
    Redirect3xx,
    Client4xx,
    Server5xx,
    /// No usable response from the backend: connect failure, reset, timeout.
    Error,
}

impl Class {
    pub const ALL: [Class; 5] = [
        Class::Success2xx,
        Class::Redirect3xx,
        Class::Client4xx,
        Class::Server5xx,
        Class::Error,
    ];

    /// The class of a final status. 1xx and 2xx count as `2xx`.
    pub fn of_status(status: u16) -> Class {
        match status {
            300..=399 => Class::Redirect3xx,
            400..=499 => Class::Client4xx,
            500..=599 => Class::Server5xx,
            _ => Class::Success2xx,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Class::Success2xx => "2xx",
            Class::Redirect3xx => "3xx",
            Class::Client4xx => "4xx",
            Class::Server5xx => "5xx",
            Class::Error => "error",
        }
    }

    /// A failure in the sense of the success rate: the backend broke, not the client.
    pub fn is_failure(self) -> bool {
        matches!(self, Class::Server5xx | Class::Error)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Latencies are kept in microseconds with 5 significant bits (HdrHistogram
/// style): values below 64 µs exactly, above that 32 sub-buckets per power of
/// two, so a bucket's midpoint is within 1.6 % of any value in it.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
const LINEAR: u64 = 2 * SUB as u64;
/// Up to 2^32 µs (71 minutes); longer latencies land in the last bucket.
const BUCKETS: usize = 2 * SUB + (32 - SUB_BITS as usize - 1) * SUB;

fn bucket_of(micros: u64) -> usize {
    let v = micros.min(u32::MAX as u64);
    if v < LINEAR {
        return v as usize;
    }
    let top = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let sub = ((v >> (top - SUB_BITS)) as usize) & (SUB - 1);
    2 * SUB + (top - SUB_BITS - 1) as usize * SUB + sub
}

/// The representative value (midpoint) of a bucket, in microseconds.
fn bucket_value(index: usize) -> f64 {
    if index < LINEAR as usize {
        return index as f64;
    }
    let i = index - 2 * SUB;
    let top = (i / SUB) as u32 + SUB_BITS + 1;
    let sub = (i % SUB) as u64;
    let width = 1u64 << (top - SUB_BITS);
    let low = (1u64 << top) + sub * width;
    low as f64 + width as f64 / 2.0
}

/// How many shards a window or lifetime keeps at most. Each shard of a
/// busy backend's window holds a minute of latency histograms, so beyond
/// this many workers, workers share shards.
pub const MAX_SHARDS: usize = 4;

/// A slot's histogram is kept in chunks of 32 buckets (below 64 µs two
/// chunks, then one per power of two), each allocated when a latency first
/// falls in it. A backend's latencies span a few powers of two, so a busy
/// second holds a few chunks of 128 bytes instead of all 28 (3.5 KiB), and
/// a minute of them per shard tens of KiB instead of 214.
const CHUNK: usize = SUB;
const CHUNKS: usize = BUCKETS / CHUNK;
const _: () = assert!(BUCKETS % CHUNK == 0);

type Chunk = [AtomicU32; CHUNK];
type Chunks = [OnceLock<Box<Chunk>>; CHUNKS];

fn shard_count() -> usize {
    crate::worker::count().clamp(1, MAX_SHARDS)
}

/// Aligned to a cache line so that two workers' shards never share one.
#[repr(align(64))]
struct Slot {
    /// Which second this slot currently holds; `u64::MAX` when never used.
    epoch: AtomicU64,
    classes: [AtomicU64; 5],
    /// Allocated the first time the slot records a latency, and its chunks
    /// as latencies fall in them.
    latency: OnceLock<Box<Chunks>>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            epoch: AtomicU64::new(u64::MAX),
            classes: Default::default(),
            latency: OnceLock::new(),
        }
    }
}

/// A ring of one-second slots per shard, each made when its worker first
/// records: the backends of a large table that see no traffic cost a few
/// pointers each, and a backend only one worker serves, one ring.
pub struct Window {
    rings: Box<[OnceLock<Box<[Slot]>>]>,
    seconds: usize,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("seconds", &self.seconds)
            .field("shards", &self.rings.len())
            .finish()
    }
}

impl Window {
    /// A window able to answer for spans up to `span` (at least one minute).
    pub fn new(span: Duration) -> Self {
        let seconds = span.as_secs().max(60) as usize + 1;
        Window {
            rings: (0..shard_count()).map(|_| OnceLock::new()).collect(),
            seconds,
        }
    }

    /// The longest span this window can answer for.
    pub fn span(&self) -> Duration {
        Duration::from_secs(self.seconds as u64 - 1)
    }

    /// Records one outcome at second `now_sec`. Lock-free; a request racing
    /// the rollover into a new second may be lost, never double-counted into
    /// another second.
    pub fn record(&self, now_sec: u64, class: Class, latency: Duration) {
        let ring = self.rings[crate::worker::index(self.rings.len())]
            .get_or_init(|| (0..self.seconds).map(|_| Slot::new()).collect());
        let slot = &ring[(now_sec % self.seconds as u64) as usize];
        let seen = slot.epoch.load(Relaxed);
        if seen != now_sec {
            if seen != u64::MAX && seen > now_sec {
                return; // a stale clock reading; the slot already moved on
            }
            if slot
                .epoch
                .compare_exchange(seen, now_sec, Relaxed, Relaxed)
                .is_ok()
            {
                for c in &slot.classes {
                    c.store(0, Relaxed);
                }
                if let Some(chunks) = slot.latency.get() {
                    for b in chunks
                        .iter()
                        .filter_map(OnceLock::get)
                        .flat_map(|c| c.iter())
                    {
                        b.store(0, Relaxed);
                    }
                }
            }
        }
        slot.classes[class.index()].fetch_add(1, Relaxed);
        if class != Class::Error {
            let bucket = bucket_of(latency.as_micros() as u64);
            let chunks = slot
                .latency
                .get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
            let chunk = chunks[bucket / CHUNK]
                .get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU32::new(0))));
            chunk[bucket % CHUNK].fetch_add(1, Relaxed);
        }
    }

    /// Sums the last `span` seconds up to and including `now_sec`.
    pub fn snapshot(&self, now_sec: u64, span: Duration) -> Snapshot {
        let span = span.as_secs().clamp(1, self.seconds as u64 - 1);
        let oldest = now_sec.saturating_sub(span - 1);
        let mut snap = Snapshot::default();
        let mut latency: Option<Vec<u64>> = None;
        for slot in self
            .rings
            .iter()
            .filter_map(OnceLock::get)
            .flat_map(|r| r.iter())
        {
            let epoch = slot.epoch.load(Relaxed);
            if epoch == u64::MAX || epoch < oldest || epoch > now_sec {
                continue;
            }
            for (sum, c) in snap.classes.iter_mut().zip(&slot.classes) {
                *sum += c.load(Relaxed);
            }
            if let Some(chunks) = slot.latency.get() {
                let acc = latency.get_or_insert_with(|| vec![0; BUCKETS]);
                for (acc, chunk) in acc.chunks_mut(CHUNK).zip(chunks.iter()) {
                    let Some(chunk) = chunk.get() else { continue };
                    for (a, b) in acc.iter_mut().zip(chunk.iter()) {
                        *a += b.load(Relaxed) as u64;
                    }
                }
            }
        }
        snap.latency = latency;
        snap
    }
}

/// Upper bounds (le) of `sluice_request_duration_seconds`, in nanoseconds
/// so a sample is compared exactly: 0.5 ms, 1, 2.5, 5, 10, 25, 50, 100,
/// 250, 500 ms, 1, 2.5, 5, 10, 30, 60 s.
pub const PROM_EDGES_NS: [u64; 16] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// A lifetime's latencies: the fine histogram the gates read, and the
/// Prometheus buckets `/metrics` renders (one per edge, then `+Inf`; not
/// cumulative, so a request touches one).
struct LifetimeLatency {
    fine: [AtomicU64; BUCKETS],
    prom: [AtomicU64; PROM_EDGES_NS.len() + 1],
    /// In microseconds (rounded): room for 5.8e5 years of summed latency,
    /// where nanoseconds would wrap within months on a busy backend.
    sum_us: AtomicU64,
}

/// Counts since the backend first appeared, for evidence that accumulates
/// across windows (rollout checkpoints take differences of these) and for
/// the Prometheus counters and histogram, which are rendered from these
/// atomics at scrape time instead of being recorded a second time.
pub struct Lifetime {
    shards: Box<[LifetimeShard]>,
}

/// One worker's part of a lifetime, on cache lines of its own.
#[repr(align(64))]
#[derive(Default)]
struct LifetimeShard {
    classes: [AtomicU64; 5],
    latency: OnceLock<Box<LifetimeLatency>>,
}

impl Default for Lifetime {
    fn default() -> Self {
        Lifetime {
            shards: (0..shard_count())
                .map(|_| LifetimeShard::default())
                .collect(),
        }
    }
}

impl std::fmt::Debug for Lifetime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lifetime")
    }
}

/// The Prometheus view of a lifetime: counts by class, and the duration
/// histogram as cumulative bucket counts (the last is `+Inf`, equal to the
/// count) with the sum of latencies in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromView {
    pub classes: [u64; 5],
    pub cumulative: [u64; PROM_EDGES_NS.len() + 1],
    pub sum_seconds: f64,
}

impl Lifetime {
    pub fn record(&self, class: Class, latency: Duration) {
        let shard = &self.shards[crate::worker::index(self.shards.len())];
        shard.classes[class.index()].fetch_add(1, Relaxed);
        if class != Class::Error {
            let h = shard.latency.get_or_init(|| {
                Box::new(LifetimeLatency {
                    fine: std::array::from_fn(|_| AtomicU64::new(0)),
                    prom: std::array::from_fn(|_| AtomicU64::new(0)),
                    sum_us: AtomicU64::new(0),
                })
            });
            let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
            h.fine[bucket_of(ns / 1_000)].fetch_add(1, Relaxed);
            let edge = PROM_EDGES_NS
                .iter()
                .position(|&e| ns <= e)
                .unwrap_or(PROM_EDGES_NS.len());
            h.prom[edge].fetch_add(1, Relaxed);
            h.sum_us.fetch_add(ns.saturating_add(500) / 1_000, Relaxed);
        }
    }

    /// Requests recorded, whatever became of them.
    pub fn requests(&self) -> u64 {
        self.classes().iter().sum()
    }

    fn classes(&self) -> [u64; 5] {
        let mut sum = [0; 5];
        for shard in self.shards.iter() {
            for (s, c) in sum.iter_mut().zip(&shard.classes) {
                *s += c.load(Relaxed);
            }
        }
        sum
    }

    /// The shards' latency histograms, those that exist.
    fn latencies(&self) -> impl Iterator<Item = &LifetimeLatency> {
        self.shards
            .iter()
            .filter_map(|s| s.latency.get().map(|h| &**h))
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut latency: Option<Vec<u64>> = None;
        for h in self.latencies() {
            let acc = latency.get_or_insert_with(|| vec![0; BUCKETS]);
            for (a, b) in acc.iter_mut().zip(&h.fine) {
                *a += b.load(Relaxed);
            }
        }
        Snapshot {
            classes: self.classes(),
            latency,
        }
    }

    pub fn prometheus(&self) -> PromView {
        let mut view = PromView {
            classes: self.classes(),
            ..PromView::default()
        };
        let mut sum_us = 0;
        for h in self.latencies() {
            for (c, b) in view.cumulative.iter_mut().zip(&h.prom) {
                *c += b.load(Relaxed);
            }
            sum_us += h.sum_us.load(Relaxed);
        }
        let mut running = 0;
        for c in view.cumulative.iter_mut() {
            running += *c;
            *c = running;
        }
        view.sum_seconds = sum_us as f64 / 1e6;
        view
    }
}

/// The sum of a window's slots over a span.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    classes: [u64; 5],
    latency: Option<Vec<u64>>,
}

impl Snapshot {
    /// Counts read from Prometheus: by class (in [`Class::ALL`] order) and
    /// by bucket of `sluice_request_duration_seconds` (one count per edge of
    /// [`PROM_EDGES_NS`], then above the last; not cumulative). A bucket's
    /// responses are placed just above its lower edge, so a latency line
    /// counts a response as slower only when its whole bucket lies above
    /// the line: coarse evidence never makes a canary look worse than it is.
    pub fn from_prometheus(classes: [u64; 5], buckets: &[u64; PROM_EDGES_NS.len() + 1]) -> Self {
        let mut latency = vec![0; BUCKETS];
        for (i, n) in buckets.iter().enumerate() {
            let fine = match i {
                0 => 0,
                _ => (bucket_of(PROM_EDGES_NS[i - 1] / 1_000) + 1).min(BUCKETS - 1),
            };
            latency[fine] += n;
        }
        Snapshot {
            classes,
            latency: buckets.iter().any(|n| *n > 0).then_some(latency),
        }
    }

    /// What happened after `earlier` (a snapshot of the same lifetime counters).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let latency = match (&self.latency, &earlier.latency) {
            (Some(now), Some(then)) => Some(
                now.iter()
                    .zip(then)
                    .map(|(a, b)| a.saturating_sub(*b))
                    .collect(),
            ),
            (now, _) => now.clone(),
        };
        Snapshot {
            classes: std::array::from_fn(|i| self.classes[i].saturating_sub(earlier.classes[i])),
            latency,
        }
    }

    pub fn count(&self, class: Class) -> u64 {
        self.classes[class.index()]
    }

    pub fn requests(&self) -> u64 {
        self.classes.iter().sum()
    }

    pub fn failures(&self) -> u64 {
        self.count(Class::Server5xx) + self.count(Class::Error)
    }

    /// Share of requests that did not fail, or `None` with no requests.
    pub fn success_rate(&self) -> Option<f64> {
        let n = self.requests();
        (n > 0).then(|| 1.0 - self.failures() as f64 / n as f64)
    }

    /// The `q` quantile (0..=1) of latency to response headers, over
    /// requests that got a response.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let h = self.latency.as_ref()?;
        let total: u64 = h.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in h.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_nanos((bucket_value(i) * 1000.0) as u64));
            }
        }
        None
    }

    /// How many responses took longer than `limit` (bucket resolution).
    pub fn slower_than(&self, limit: Duration) -> u64 {
        let Some(h) = &self.latency else { return 0 };
        let edge = bucket_of(limit.as_micros() as u64);
        h[edge + 1..].iter().sum()
    }
}

#[cfg(test)]
mod tests;
