//! The access log: one JSON line per request, as Envoy's JSON access log
//! and nginx's `log_format ... escape=json` write them.
//!
//! A request hands over an [`Entry`] of cheap clones (reference-counted
//! names and bytes, no formatting) through a bounded channel; a thread of
//! the log's own formats and writes. A worker never waits for the disk:
//! when the writer falls 64 Ki entries behind, entries are dropped and
//! counted, and the count is logged, as a proxy must keep serving when its
//! log cannot keep up.

use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::HeaderValue;
use http::uri::PathAndQuery;
use http::{Method, Version};

use crate::config::AccessLogTarget;

/// Entries waiting for the writer at most.
const QUEUE: usize = 64 * 1024;

/// A request, as it is logged once its response head is sent.
pub struct Entry {
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: Method,
    /// The host the request was routed by (its authority, else `Host`).
    pub host: Option<HeaderValue>,
    pub target: Option<PathAndQuery>,
    pub version: Version,
    pub status: u16,
    /// The route and backend that served it; none for requests sluice
    /// answered before choosing them (no route, a bad request).
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    /// From the request head to the response head.
    pub latency: Duration,
}

/// Where the request path hands its entries.
pub struct AccessLog {
    tx: SyncSender<Entry>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("dropped", &self.dropped.load(Relaxed))
            .finish()
    }
}

impl AccessLog {
    /// Opens the target (a file is appended to, and made if missing) and
    /// starts its writer, which ends when the last handle is dropped.
    pub fn open(target: &AccessLogTarget) -> io::Result<Arc<AccessLog>> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || write_all(rx, io::BufWriter::new(out), &counted))?;
        Ok(Arc::new(AccessLog { tx, dropped }))
    }

    /// Hands an entry to the writer, or drops it when the writer is behind.
    pub fn record(&self, entry: Entry) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Relaxed);
            }
            // The writer stopped on a write error it has logged.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Writes entries as they come, flushing whenever none is waiting, so a
/// line is on disk within moments at any load.
fn write_all(rx: Receiver<Entry>, mut out: impl Write, dropped: &AtomicU64) {
    let mut line = Vec::with_capacity(512);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(entry) = next {
            line.clear();
            format(&entry, &mut line);
            if let Err(e) = out.write_all(&line) {
                tracing::error!(error = %e, "the access log cannot be written; it stops");
                return;
            }
            next = rx.try_recv().ok();
        }
        let lost = dropped.swap(0, Relaxed);
        if lost > 0 {
            tracing::warn!(lost, "the access log fell behind; entries were dropped");
        }
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "the access log cannot be written; it stops");
            return;
        }
    }
}

/// One JSON line.
fn format(e: &Entry, out: &mut Vec<u8>) {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        time: String,
        client: IpAddr,
        method: &'a str,
        host: Option<&'a str>,
        path: Option<&'a str>,
        protocol: &'a str,
        status: u16,
        route: Option<&'a str>,
        backend: Option<&'a str>,
        latency_ms: f64,
    }
    let time = jiff::Timestamp::try_from(e.time)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_default();
    let protocol = match e.version {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    };
    let line = Line {
        time,
        client: e.client,
        method: e.method.as_str(),
        host: e.host.as_ref().and_then(|h| h.to_str().ok()),
        path: e.target.as_ref().map(|t| t.as_str()),
        protocol,
        status: e.status,
        route: e.route.as_deref(),
        backend: e.backend.as_deref(),
        latency_ms: (e.latency.as_secs_f64() * 1e6).round() / 1e3,
    };
    // Serializing plain fields into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_one_json_line() {
        let e = Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_600_000_123),
            client: "127.0.0.1".parse().unwrap(),
            method: Method::POST,
            // Whatever a client sends is escaped, never a line of its own.
            host: Some(HeaderValue::from_static("api.example.com\"}\\")),
            target: Some(PathAndQuery::from_static("/orders?id=7")),
            version: Version::HTTP_2,
            status: 201,
            route: Some(Arc::from("api")),
            backend: Some(Arc::from("canary")),
            latency: Duration::from_micros(1234),
        };
        let mut out = Vec::new();
        format(&e, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["time"], "2025-12-01T14:40:00.123Z");
        assert_eq!(v["host"], "api.example.com\"}\\");
        assert_eq!(v["path"], "/orders?id=7");
        assert_eq!(v["protocol"], "HTTP/2");
        assert_eq!(v["backend"], "canary");
        assert_eq!(v["latency_ms"], 1.234);
    }
}
