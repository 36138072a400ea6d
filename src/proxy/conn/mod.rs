//! One downstream connection: its activity clock, and the watchdog that
//! enforces the header-read and idle timeouts.
//!
//! hyper's own header-read timeout also runs while a keep-alive connection
//! waits for its next request (so it would cap the idle timeout) and
//! allocates a timer per request; this watchdog keeps one timer per
//! connection instead and tells the two cases apart.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::atomic::AtomicCell;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::upstream::{BodyOpen, OpenBodies};

mod metered;
mod watchdog;

pub use metered::MeteredIo;
use watchdog::Look;
pub use watchdog::{Expired, Timeouts, Watchdog};

/// Milliseconds on the process's coarse clock: one atomic load, no system
/// call, on every socket read and write.
pub fn now_ms() -> u64 {
    crate::clock::coarse_ms()
}

/// What the connection and its requests share.
#[derive(Debug, Default)]
pub struct ConnState {
    last_activity: AtomicU64,
    /// When the first bytes of a request head arrived while no request was
    /// in flight; 0 when not reading a head.
    head_started: AtomicU64,
    in_flight: AtomicU32,
    /// HTTP/1.1 request bodies not yet read to their end. While one is, the
    /// connection's bytes belong to that body: it must not be parked.
    open_bodies: AtomicU32,
    /// HTTP/2 multiplexes: frames between requests are not a head being read.
    multiplexed: AtomicBool,
    /// Route-timeout timers of finished requests, for the next ones. A
    /// request's timer is almost never due (the backend answers
    /// first); a fresh timer takes the time driver's lock to register and
    /// again to deregister, every request; a kept
    /// one is left where it is when it is due no later than the new
    /// deadline, and moved on only when it fires early: about once per route
    /// timeout per busy connection.
    spare_timers: SpareTimers,
}

/// Timers kept for the next requests: one slot, taken and put back with an
/// atomic swap, which is all HTTP/1.1 needs (a request at a time), and for
/// HTTP/2's concurrent streams a bounded queue beside it, made when a
/// connection first has two to keep. A kept timer still holds the waker
/// of the stream task that last polled it, and with it that task's small
/// allocation, until the timer fires (within a route timeout) or is polled
/// again: at most 16 per HTTP/2 connection. (A type of its own also because
/// `AtomicCell` shows its contents in `Debug`, which a timer it would have
/// to copy out cannot.)
#[derive(Default)]
struct SpareTimers {
    first: AtomicCell<Option<Pin<Box<Sleep>>>>,
    more: OnceLock<ArrayQueue<Pin<Box<Sleep>>>>,
}

/// How many timers an HTTP/2 connection keeps beyond the first: enough for
/// the streams a client keeps in flight at once (the benchmarks run h2load
/// with ten a connection); a timer beyond them is dropped.
const MORE_TIMERS: usize = 15;

impl std::fmt::Debug for SpareTimers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpareTimers")
    }
}

impl ConnState {
    pub fn new() -> Arc<Self> {
        let s = ConnState::default();
        s.last_activity.store(now_ms(), Relaxed);
        Arc::new(s)
    }

    /// Counts a request as in flight until the returned guard is dropped:
    /// when its response body has been sent, or when the request is
    /// abandoned (an HTTP/2 reset drops the service future).
    pub fn request_started(self: &Arc<Self>, http2: bool) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_started.store(0, Relaxed);
        if http2 {
            self.multiplexed.store(true, Relaxed);
        }
        InFlight(self.clone())
    }

    /// Counts an HTTP/1.1 request body as open until [`BodyOpen::finish`]
    /// (never, if the body is dropped unread: that connection is not
    /// parked, hyper closes it).
    pub fn body_started(self: &Arc<Self>) -> BodyOpen {
        self.open_bodies.fetch_add(1, Relaxed);
        BodyOpen::new(self.clone())
    }

    /// A timer due no later than `deadline`: the spare one (moved only if it
    /// was due later; one due earlier is moved on when it fires, see
    /// `proxy::service::Within`), or a new one.
    pub fn timer(&self, deadline: Instant) -> Pin<Box<Sleep>> {
        let spare = &self.spare_timers;
        match spare.first.take().or_else(|| spare.more.get()?.pop()) {
            Some(mut t) => {
                if t.deadline() > deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Keeps a finished request's timer for the next request.
    pub fn keep_timer(&self, timer: Pin<Box<Sleep>>) {
        let spare = &self.spare_timers;
        if let Some(second) = spare.first.swap(Some(timer)) {
            if self.multiplexed.load(Relaxed) {
                // Full: the timer is dropped, as it would be unkept.
                let _ = spare
                    .more
                    .get_or_init(|| ArrayQueue::new(MORE_TIMERS))
                    .push(second);
            }
        }
    }

    /// Drops the spare timers (a parked connection keeps only its socket).
    pub fn drop_timers(&self) {
        self.spare_timers.first.take();
        if let Some(more) = self.spare_timers.more.get() {
            while more.pop().is_some() {}
        }
    }

    fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.last_activity.store(now_ms(), Relaxed);
    }

    /// An HTTP/2 connection (by preface or ALPN): frames between requests
    /// are not a request head being read.
    pub fn set_multiplexed(&self) {
        self.multiplexed.store(true, Relaxed);
        self.head_started.store(0, Relaxed);
    }

    pub fn last_activity_ms(&self) -> u64 {
        self.last_activity.load(Relaxed)
    }

    /// Forgets bytes read so far (a TLS handshake) as the start of a head.
    pub fn reset_head(&self) {
        self.head_started.store(0, Relaxed);
    }

    fn on_read(&self) {
        let now = now_ms();
        self.last_activity.store(now, Relaxed);
        if self.in_flight.load(Relaxed) == 0
            && self.head_started.load(Relaxed) == 0
            && !self.multiplexed.load(Relaxed)
        {
            self.head_started.store(now, Relaxed);
        }
    }

    fn on_write(&self) {
        self.last_activity.store(now_ms(), Relaxed);
    }

    /// What a look finds: a verdict if something expired, else the next
    /// moment to look again.
    /// A head may start at any read, unseen by the sleeping watchdog, so it
    /// never sleeps longer than half the header read timeout: a stalled
    /// head is cut within 1.5 times that timeout.
    fn check(&self, now: u64, limits: &Timeouts) -> Look {
        let Timeouts {
            header_read,
            idle,
            park,
            probe_client: _,
        } = *limits;
        // A parking connection also looks every `park`: the request in
        // flight now may end long before the next header-read check.
        let every = (header_read / 2).min(park.unwrap_or(Duration::MAX));
        let look_again = now + (every.as_millis() as u64).max(1);
        let head = self.head_started.load(Relaxed);
        if head != 0 && self.in_flight.load(Relaxed) == 0 {
            let due = head + header_read.as_millis() as u64;
            return if now >= due {
                Look::Expired(Expired::HeaderRead)
            } else {
                Look::Again(due.min(look_again))
            };
        }
        if self.in_flight.load(Relaxed) > 0 {
            return Look::Again(look_again);
        }
        let last = self.last_activity.load(Relaxed);
        let due = last + idle.as_millis() as u64;
        if now >= due {
            return Look::Expired(Expired::Idle);
        }
        let mut next = due.min(look_again);
        if let Some(park) = park {
            if self.open_bodies.load(Relaxed) == 0 {
                let park_due = last + park.as_millis() as u64;
                if now >= park_due {
                    return Look::Expired(Expired::Park);
                }
                next = next.min(park_due);
            }
        }
        Look::Again(next)
    }
}

impl OpenBodies for ConnState {
    fn body_finished(&self) {
        self.open_bodies.fetch_sub(1, Relaxed);
    }
}

/// Marks one request in flight on its connection while alive.
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_millis(100),
        idle: Duration::from_millis(1000),
        park: None,
        probe_client: false,
    };
    const PARKING: Timeouts = Timeouts {
        park: Some(Duration::from_millis(250)),
        probe_client: false,
        ..T
    };

    /// The spare timer's slot is a plain atomic swap, no lock behind it.
    #[test]
    fn the_spare_timer_slot_is_lock_free() {
        assert!(AtomicCell::<Option<Pin<Box<Sleep>>>>::is_lock_free());
    }

    /// HTTP/1.1 keeps one timer; HTTP/2 keeps one per stream that was in
    /// flight at once, up to a bound, and hands them out again.
    #[tokio::test]
    async fn spare_timers_one_for_http1_several_for_http2() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let h1 = ConnState::new();
        let (a, b) = (h1.timer(deadline), h1.timer(deadline));
        h1.keep_timer(a);
        h1.keep_timer(b);
        assert!(h1.spare_timers.more.get().is_none(), "one slot only");
        let h2 = ConnState::new();
        h2.set_multiplexed();
        let timers: Vec<_> = (0..MORE_TIMERS + 3).map(|_| h2.timer(deadline)).collect();
        let kept: Vec<*const Sleep> = timers.iter().map(|t| &**t as *const Sleep).collect();
        for t in timers {
            h2.keep_timer(t);
        }
        assert_eq!(h2.spare_timers.more.get().unwrap().len(), MORE_TIMERS);
        let again: Vec<_> = (0..MORE_TIMERS + 1).map(|_| h2.timer(deadline)).collect();
        assert!(
            again.iter().all(|t| kept.contains(&(&**t as *const Sleep))),
            "the kept timers come back"
        );
        assert!(
            h2.spare_timers.more.get().unwrap().is_empty(),
            "all handed out"
        );
        for t in again {
            h2.keep_timer(t);
        }
        h2.drop_timers();
        assert!(h2.spare_timers.first.take().is_none());
        assert!(h2.spare_timers.more.get().unwrap().is_empty());
    }

    #[test]
    fn idle_expires_only_without_requests() {
        let s = Arc::new(ConnState::default());
        s.last_activity.store(1000, Relaxed);
        assert_eq!(
            s.check(1500, &T),
            Look::Again(1550),
            "looks again within half the header timeout"
        );
        assert_eq!(s.check(1990, &T), Look::Again(2000));
        assert_eq!(s.check(2000, &T), Look::Expired(Expired::Idle));
        let guard = s.request_started(false);
        assert!(matches!(s.check(5000, &T), Look::Again(_)));
        drop(guard);
        assert!(
            matches!(s.check(now_ms(), &T), Look::Again(_)),
            "finishing a request is activity"
        );
    }

    #[test]
    fn a_started_head_must_finish_in_time() {
        let s = Arc::new(ConnState::default());
        s.last_activity.store(1000, Relaxed);
        s.head_started.store(1000, Relaxed);
        assert_eq!(s.check(1050, &T), Look::Again(1100));
        assert_eq!(s.check(1100, &T), Look::Expired(Expired::HeaderRead));
        let _guard = s.request_started(false);
        assert!(matches!(s.check(1100, &T), Look::Again(_)));
    }

    #[test]
    fn parks_when_nothing_is_in_flight_or_unread() {
        let s = Arc::new(ConnState::default());
        s.last_activity.store(1000, Relaxed);
        assert_eq!(s.check(1100, &PARKING), Look::Again(1150));
        assert_eq!(s.check(1250, &PARKING), Look::Expired(Expired::Park));
        assert_eq!(s.check(1250, &T), Look::Again(1300), "parking is off");
        let guard = s.request_started(false);
        assert!(
            matches!(s.check(1250, &PARKING), Look::Again(_)),
            "a request in flight"
        );
        drop(guard);
        s.last_activity.store(1000, Relaxed);
        let mut body = s.body_started();
        assert_eq!(
            s.check(1250, &PARKING),
            Look::Again(1300),
            "an unread body owns the bytes"
        );
        body.finish();
        assert_eq!(s.check(1250, &PARKING), Look::Expired(Expired::Park));
        assert_eq!(
            s.check(2000, &PARKING),
            Look::Expired(Expired::Idle),
            "idle wins"
        );
        let slow_heads = Timeouts {
            header_read: Duration::from_secs(10),
            ..PARKING
        };
        let _busy = s.request_started(false);
        assert_eq!(
            s.check(3000, &slow_heads),
            Look::Again(3250),
            "a busy connection is looked at again within the park delay"
        );
    }

    #[tokio::test]
    async fn a_busy_connection_is_probed_at_each_look_but_the_first() {
        let s = ConnState::new();
        let _busy = s.request_started(false);
        let limits = Timeouts {
            header_read: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            park: Some(Duration::from_millis(50)),
            probe_client: true,
        };
        let mut dog = Watchdog::new(&s, limits);
        for look in ["second", "third"] {
            let started = std::time::Instant::now();
            let why = tokio::time::timeout(Duration::from_secs(2), &mut dog).await;
            assert_eq!(why, Ok(Expired::Probe), "{look} look");
            // Not the first look, and re-armed after each probe, not
            // resolving again at once.
            assert!(
                started.elapsed() >= Duration::from_millis(40),
                "{look} look after {:?}",
                started.elapsed()
            );
        }
    }

    #[tokio::test]
    async fn the_watchdog_sees_a_drain_at_its_next_look() {
        let s = ConnState::new();
        let _busy = s.request_started(false);
        let (tx, rx) = watch::channel(false);
        let limits = Timeouts {
            header_read: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            park: Some(Duration::from_millis(50)),
            probe_client: false,
        };
        let mut dog = Watchdog::new(&s, limits).draining(&rx);
        let quiet = tokio::time::timeout(Duration::from_millis(200), &mut dog).await;
        assert!(quiet.is_err(), "a busy connection has no verdict");
        tx.send(true).unwrap();
        let why = tokio::time::timeout(Duration::from_secs(2), &mut dog).await;
        assert_eq!(why, Ok(Expired::Drain));
    }
}
