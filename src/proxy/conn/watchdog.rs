//! The watchdog: one timer per connection, enforcing the header-read and
//! idle timeouts, parking, probing and the drain.

use super::*;

/// What one look of the watchdog finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Look {
    Expired(Expired),
    /// Nothing expired: look again at this moment (coarse-clock ms).
    Again(u64),
}

/// The timeouts the watchdog enforces on one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    /// After this long with nothing in flight, an HTTP/1.1 connection is
    /// parked: its HTTP state and buffers are dropped, only the socket kept.
    pub park: Option<Duration>,
    /// Whether a look that finds a request in flight resolves with
    /// [`Expired::Probe`], for a connection whose server does not watch the
    /// socket while it waits for the response.
    pub probe_client: bool,
}

/// Why the watchdog ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The client started a request and did not finish its headers in time:
    /// close at once.
    HeaderRead,
    /// Nothing happened for the idle timeout: close gracefully.
    Idle,
    /// Nothing in flight for a while: shed the HTTP/1.1 state, keep the
    /// socket.
    Park,
    /// The proxy is shutting down: finish the exchange in flight, then close.
    Drain,
    /// A request is in flight: see whether the client is still there. Not
    /// an end by itself; the watchdog is armed for its next look.
    Probe,
}

/// Resolves when the connection has expired. Sleeps until the earliest
/// possible deadline and checks again, so a busy connection costs one timer
/// wake-up per look, not one per request.
///
/// It shares its task with the connection, so it is polled at every wake-up
/// of that task (several per request). Until its timer has fired, a poll
/// answers from the timer's state alone: the armed timer already holds the
/// task's waker, and polling it again costs more than anything else the
/// watchdog does.
pub struct Watchdog<'a> {
    state: &'a ConnState,
    limits: Timeouts,
    /// Looked at with the timeouts: turns true when the proxy drains.
    shutdown: Option<&'a watch::Receiver<bool>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Whether `sleep` has been set and polled (not before the first look).
    armed: bool,
}

impl<'a> Watchdog<'a> {
    pub fn new(state: &'a ConnState, limits: Timeouts) -> Self {
        Watchdog {
            state,
            limits,
            shutdown: None,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: false,
        }
    }
}

impl<'a> Watchdog<'a> {
    /// Also resolves, with [`Expired::Drain`], at the first look after
    /// shutdown began: within one look interval (the park delay on HTTP/1.1
    /// connections), instead of a wake-up channel polled at every wake-up of
    /// the connection.
    pub fn draining(mut self, shutdown: &'a watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }
}

impl std::future::Future for Watchdog<'_> {
    type Output = Expired;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Expired> {
        let this = &mut *self;
        if this.armed && !this.sleep.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            if this.shutdown.is_some_and(|s| *s.borrow()) {
                return Poll::Ready(Expired::Drain);
            }
            let now = now_ms();
            match this.state.check(now, &this.limits) {
                Look::Expired(why) => return Poll::Ready(why),
                Look::Again(due) => {
                    // A look the timer woke, not the first one.
                    let fired = this.armed;
                    let wait = Duration::from_millis(due.saturating_sub(now).max(1));
                    this.sleep
                        .as_mut()
                        .reset(tokio::time::Instant::now() + wait);
                    this.armed = true;
                    let pending = this.sleep.as_mut().poll(cx).is_pending();
                    if fired && this.limits.probe_client && this.state.in_flight.load(Relaxed) > 0 {
                        return Poll::Ready(Expired::Probe);
                    }
                    if pending {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}
