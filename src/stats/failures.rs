//! A backend's failures, for the log: the first in each second is logged
//! at warn with its cause, the rest counted into the next line.
//!
//! A failing backend fails every request sent to it, tens of thousands a
//! second at load; nginx logs each one at `error`, which then becomes the
//! log's whole volume and costs the proxy a write per request. One line a
//! second per backend still says at once what is wrong (a refused
//! connection, a certificate that does not check out, a timeout) and how
//! often; the metrics count every failure.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How often a backend's failures may be logged.
const EVERY_MS: u64 = 1_000;

#[derive(Debug, Default)]
pub struct FailureLog {
    /// When the next failure may be logged, on the coarse clock.
    next_ms: AtomicU64,
    /// Failures not logged since the last line.
    unlogged: AtomicU64,
}

impl FailureLog {
    /// Whether to log a failure at `now_ms`: `Some(n)` with the `n`
    /// failures left unlogged since the last line, or `None` (this one is
    /// counted into the next).
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(next, now_ms + EVERY_MS, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.unlogged.swap(0, Relaxed));
        }
        self.unlogged.fetch_add(1, Relaxed);
        None
    }
}

/// An error and its causes, `: `-separated, as a log line wants them (the
/// top error alone often says only "connection error").
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let cause = e.to_string();
        // Some errors repeat their source in their own message.
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_the_rest_counted_into_the_next() {
        let log = FailureLog::default();
        assert_eq!(log.admit(5_000), Some(0), "the first failure is logged");
        for t in 5_001..5_010 {
            assert_eq!(log.admit(t), None);
        }
        assert_eq!(log.admit(5_999), None, "still within the second");
        assert_eq!(
            log.admit(6_000),
            Some(10),
            "a second later, with the ten unlogged"
        );
        assert_eq!(log.admit(60_000), Some(0));
    }

    #[test]
    fn a_chain_names_every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = std::io::Error::other(io);
        // io::Error::other's message is its source's: said once.
        assert_eq!(chain(&outer), "refused");
        #[derive(Debug, thiserror::Error)]
        #[error("connecting to the backend")]
        struct Connecting(#[source] std::io::Error);
        let e = Connecting(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(chain(&e), "connecting to the backend: refused");
    }
}
