//! The journal: every change to what sluice does, as events with time,
//! cause and the facts they were judged on. Kept in memory for `GET /events`
//! and, with a `state_dir`, appended to `journal.jsonl` and fsynced, so the
//! record survives a crash.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// How many events memory keeps; the file keeps all.
const MEMORY: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// Milliseconds since the Unix epoch, for `?since=` and arithmetic.
    pub unix_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub kind: String,
    /// Who caused it: `file`, `signal`, `admin`, `startup`, `controller`.
    pub actor: String,
    pub message: String,
    #[serde(skip_serializing_if = "serde_json::Value::is_null", default)]
    pub detail: serde_json::Value,
}

#[derive(Debug)]
pub struct Journal {
    inner: Mutex<Inner>,
    file: Option<PathBuf>,
}

#[derive(Debug)]
struct Inner {
    next_seq: u64,
    events: VecDeque<Event>,
}

/// A filter for reading the journal.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub route: Option<String>,
    /// Only events after this: a sequence number, or a time (RFC 3339).
    pub since_seq: Option<u64>,
    pub since_unix_ms: Option<i64>,
    pub limit: Option<usize>,
}

pub fn now_rfc3339(ts: jiff::Timestamp) -> String {
    format!("{ts:.3}")
}

impl Journal {
    /// A journal kept in memory, and in `state_dir/journal.jsonl` if given;
    /// events already in that file are read back so sequence numbers and
    /// `GET /events` continue across restarts.
    pub fn open(state_dir: Option<PathBuf>) -> std::io::Result<Self> {
        let file = state_dir.map(|d| d.join("journal.jsonl"));
        let mut events = VecDeque::new();
        let mut next_seq = 1;
        if let Some(path) = &file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    for line in text.lines() {
                        // A torn last line from a crash is skipped, not fatal.
                        if let Ok(e) = serde_json::from_str::<Event>(line) {
                            next_seq = next_seq.max(e.seq + 1);
                            events.push_back(e);
                            if events.len() > MEMORY {
                                events.pop_front();
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Journal {
            inner: Mutex::new(Inner { next_seq, events }),
            file,
        })
    }

    /// Appends an event; returns it as recorded.
    pub fn record(
        &self,
        route: Option<&str>,
        kind: &str,
        actor: &str,
        message: impl Into<String>,
        detail: serde_json::Value,
    ) -> Event {
        let now = jiff::Timestamp::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let event = Event {
            seq: inner.next_seq,
            time: now_rfc3339(now),
            unix_ms: now.as_millisecond(),
            route: route.map(str::to_string),
            kind: kind.to_string(),
            actor: actor.to_string(),
            message: message.into(),
            detail,
        };
        inner.next_seq += 1;
        if let Some(path) = &self.file {
            let line = serde_json::to_vec(&event).expect("events serialize");
            if let Err(e) = crate::state::append_line(path, &line) {
                tracing::error!(error = %e, path = %path.display(), "cannot append to the journal");
            }
        }
        tracing::info!(seq = event.seq, route = event.route.as_deref(), kind = %event.kind, actor = %event.actor, "{}", event.message);
        inner.events.push_back(event.clone());
        if inner.events.len() > MEMORY {
            inner.events.pop_front();
        }
        event
    }

    pub fn query(&self, q: &Query) -> Vec<Event> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Event> = inner
            .events
            .iter()
            .filter(|e| {
                q.route
                    .as_deref()
                    .is_none_or(|r| e.route.as_deref() == Some(r))
            })
            .filter(|e| q.since_seq.is_none_or(|s| e.seq > s))
            .filter(|e| q.since_unix_ms.is_none_or(|t| e.unix_ms > t))
            .cloned()
            .collect();
        if let Some(limit) = q.limit {
            let skip = out.len().saturating_sub(limit);
            out.drain(..skip);
        }
        out
    }
}
