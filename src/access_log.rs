//! The access log: one JSON line per request, as Envoy's JSON access log
//! and nginx's `log_format ... escape=json` write them.
//!
//! A request hands over an [`Entry`] of cheap clones (reference-counted
//! names and bytes, no formatting), in the box it was gathered in, by
//! pushing it onto a bounded lock-free queue; a thread of the log's own
//! wakes every [`FLUSH_EVERY`] (or when the queue is half full), formats
//! what has come and writes it. A worker never waits for the disk, and
//! wakes the writer only in bursts (measured: waking it through a channel
//! at every entry cost a request a futex call and a contended lock): when
//! the writer falls 64 Ki entries behind, entries are dropped and counted,
//! and the count is logged, as a proxy must keep serving when its log
//! cannot keep up. A write that fails (a full disk, a closed pipe) is
//! reported once, its entries counted as dropped, and writing goes on.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_queue::ArrayQueue;
use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery};
use http::{Method, Version};

use crate::target::AccessLogTarget;

/// Entries waiting for the writer at most.
const QUEUE: usize = 64 * 1024;

/// How long a line may wait to be written (nginx's `flush=` does the same
/// for a buffered log).
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A request, as it is logged once its response head is sent.
pub struct Entry {
    pub time: SystemTime,
    /// The client's address, as the connection formatted it once for
    /// `x-forwarded-for`.
    pub client: HeaderValue,
    pub method: Method,
    /// The host the request was routed by (its authority, else `Host`).
    pub host: Option<Host>,
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

/// Either of a request's hosts, kept as the request had it (no copy).
pub enum Host {
    Authority(Authority),
    Field(HeaderValue),
}

impl Host {
    fn as_str(&self) -> Option<&str> {
        match self {
            Host::Authority(a) => Some(a.as_str()),
            Host::Field(v) => v.to_str().ok(),
        }
    }
}

struct Shared {
    /// Boxes, so the queue itself stays small (a megabyte for 64 Ki).
    queue: ArrayQueue<Box<Entry>>,
    dropped: AtomicU64,
    /// Set when the last handle goes: the writer drains and ends.
    closed: AtomicBool,
}

/// Where the request path hands its entries.
pub struct AccessLog {
    shared: Arc<Shared>,
    writer: std::thread::Thread,
    /// Taken by [`AccessLog::close`], which waits for the last lines.
    joined: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("waiting", &self.shared.queue.len())
            .field("dropped", &self.shared.dropped.load(Relaxed))
            .finish()
    }
}

impl AccessLog {
    /// Opens the target (a file is appended to, and made if missing) and
    /// starts its writer, which ends, having written everything, when the
    /// log is dropped.
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
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(QUEUE),
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let theirs = shared.clone();
        let writer = std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || write_all(&theirs, io::BufWriter::with_capacity(64 * 1024, out)))?;
        Ok(Arc::new(AccessLog {
            shared,
            writer: writer.thread().clone(),
            joined: std::sync::Mutex::new(Some(writer)),
        }))
    }

    /// Hands an entry to the writer, or drops it when the writer is behind.
    pub fn record(&self, entry: Box<Entry>) {
        let queue = &self.shared.queue;
        if queue.push(entry).is_err() {
            self.shared.dropped.fetch_add(1, Relaxed);
        } else if queue.len() == queue.capacity() / 2 {
            self.writer.unpark();
        }
    }

    /// Writes what is waiting and stops the writer, waiting for it: at
    /// shutdown, after the last requests, so their lines are not lost.
    pub fn close(&self) {
        self.shared.closed.store(true, Relaxed);
        self.writer.unpark();
        let handle = self.joined.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.closed.store(true, Relaxed);
        self.writer.unpark();
    }
}

/// Writes what has come every [`FLUSH_EVERY`], and what is left at the end.
fn write_all(shared: &Shared, mut out: impl Write) {
    let mut line = Vec::with_capacity(512);
    let mut clock = Clock::default();
    // Whether the last write failed: reported once, until one succeeds.
    let mut failing = false;
    loop {
        let closing = shared.closed.load(Relaxed);
        let mut lost = 0u64;
        while let Some(entry) = shared.queue.pop() {
            line.clear();
            format(&entry, &mut clock, &mut line);
            // Freed here, on the log's thread: the request's worker paid
            // for the box, not for this.
            drop(entry);
            if failing {
                lost += 1;
                continue;
            }
            if let Err(e) = out.write_all(&line) {
                tracing::error!(error = %e, "the access log cannot be written; entries are dropped until it can");
                failing = true;
                lost += 1;
            }
        }
        if let Err(e) = out.flush() {
            if !failing {
                tracing::error!(error = %e, "the access log cannot be written; entries are dropped until it can");
            }
            failing = true;
        } else if failing {
            tracing::info!("the access log is written again");
            failing = false;
        }
        lost += shared.dropped.swap(0, Relaxed);
        if lost > 0 {
            tracing::warn!(lost, "access log entries were dropped");
        }
        if closing {
            return;
        }
        std::thread::park_timeout(FLUSH_EVERY);
    }
}

/// The time field, its date and second formatted once a second.
#[derive(Default)]
struct Clock {
    second: u64,
    prefix: String,
}

impl Clock {
    /// `2026-12-01T14:53:59.581Z`.
    fn write(&mut self, t: SystemTime, out: &mut Vec<u8>) {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        if since.as_secs() != self.second || self.prefix.is_empty() {
            self.second = since.as_secs();
            self.prefix = jiff::Timestamp::from_second(since.as_secs() as i64)
                .map(|t| t.to_string())
                .unwrap_or_default();
            // "…:59Z" without its "Z", the milliseconds go before it.
            self.prefix.pop();
        }
        out.extend_from_slice(self.prefix.as_bytes());
        out.push(b'.');
        thousandths(since.subsec_millis(), out);
        out.push(b'Z');
    }
}

/// One JSON line. Fields sluice made (names, numbers, the time) go out
/// as they are; what the client sent (host, path) is escaped.
fn format(e: &Entry, clock: &mut Clock, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    clock.write(e.time, out);
    out.extend_from_slice(b"\",\"client\":");
    optional(e.client.to_str().ok(), out);
    out.extend_from_slice(b",\"method\":");
    string(e.method.as_str(), out);
    out.extend_from_slice(b",\"host\":");
    optional(e.host.as_ref().and_then(Host::as_str), out);
    out.extend_from_slice(b",\"path\":");
    optional(e.target.as_ref().map(|t| t.as_str()), out);
    let protocol = match e.version {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    };
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(protocol.as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(e.status).as_bytes());
    out.extend_from_slice(b",\"route\":");
    optional(e.route.as_deref(), out);
    out.extend_from_slice(b",\"backend\":");
    optional(e.backend.as_deref(), out);
    let micros = e.latency.as_micros();
    out.extend_from_slice(b",\"latency_ms\":");
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    out.push(b'.');
    thousandths((micros % 1000) as u32, out);
    out.extend_from_slice(b"}\n");
}

/// `n` (below 1000) in three digits: the fraction after a decimal point.
fn thousandths(n: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&[
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

fn optional(s: Option<&str>, out: &mut Vec<u8>) {
    match s {
        Some(s) => string(s, out),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: as it is when nothing in it needs escaping (the usual
/// case, found by one pass), else by serde_json.
fn string(s: &str, out: &mut Vec<u8>) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_one_json_line() {
        let e = Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_600_000_123),
            client: HeaderValue::from_static("127.0.0.1"),
            method: Method::POST,
            // Whatever a client sends is escaped, never a line of its own.
            host: Some(Host::Field(HeaderValue::from_static(
                "api.example.com\"}\\",
            ))),
            target: Some(PathAndQuery::from_static("/orders?id=7")),
            version: Version::HTTP_2,
            status: 201,
            route: Some(Arc::from("api")),
            backend: Some(Arc::from("canary")),
            latency: Duration::from_micros(1234),
        };
        let mut out = Vec::new();
        format(&e, &mut Clock::default(), &mut out);
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

    fn entry(path: &'static str) -> Box<Entry> {
        Box::new(Entry {
            time: SystemTime::now(),
            client: HeaderValue::from_static("127.0.0.1"),
            method: Method::GET,
            host: None,
            target: Some(PathAndQuery::from_static(path)),
            version: Version::HTTP_11,
            status: 200,
            route: None,
            backend: None,
            latency: Duration::ZERO,
        })
    }

    /// Fails its first write; tells each flush.
    struct Flaky {
        fail: bool,
        written: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        flushed: std::sync::mpsc::Sender<()>,
    }

    impl Write for Flaky {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if std::mem::take(&mut self.fail) {
                return Err(io::Error::other("disk full"));
            }
            self.written.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            let _ = self.flushed.send(());
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_loses_its_entries_and_writing_goes_on() {
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(8),
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flushed, flushes) = std::sync::mpsc::channel();
        let out = Flaky {
            fail: true,
            written: written.clone(),
            flushed,
        };
        assert!(shared.queue.push(entry("/lost")).is_ok());
        let theirs = shared.clone();
        let writer = std::thread::spawn(move || write_all(&theirs, out));
        flushes.recv().unwrap(); // the round that failed
        assert!(shared.queue.push(entry("/kept")).is_ok());
        shared.closed.store(true, Relaxed);
        writer.thread().unpark();
        writer.join().unwrap();
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("/lost") && text.contains("/kept"), "{text}");
    }
}
