//! Thread events: appended first to a local spool (an append-only JSON-lines file in the state
//! directory), then POSTed in batches to loomd. What loomd acknowledged is recorded in
//! `spool.acked`; everything after it is sent again after a restart or crash, and loomd
//! dedupes by `(thread_id, seq)`, so nothing the agent recorded is lost or stored twice.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use loom_threads::wire::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_EVENT_TEXT};
use loom_threads::{AppendResponse, EventBatch, EventKind, ThreadEvent};
use serde_json::Value;

use crate::http::{join_url, post_json};

/// The environment variable holding the bearer token for loomd's event intake.
pub const TOKEN_ENV: &str = "LOOM_PROXY_TOKEN";

/// loomd's event intake: `${LOOM_API_URL}/loom/v1/threads/events` with a bearer token.
#[derive(Clone)]
pub struct EventsApi {
    pub url: String,
    token: String,
}

impl std::fmt::Debug for EventsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsApi").field("url", &self.url).finish_non_exhaustive()
    }
}

impl EventsApi {
    /// `base` is `LOOM_API_URL`; the token is `LOOM_PROXY_TOKEN`.
    pub fn new(base: &str, token: String) -> EventsApi {
        EventsApi { url: join_url(base, loom_threads::EVENTS_PATH), token }
    }
}

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("thread spool {path}: {op} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sending thread events to {url} failed: {message}; they stay in the spool and are sent again")]
    Send { url: String, message: String },
}

/// The spool of one thread.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    file: File,
    thread_id: String,
    weaver_id: String,
    next_seq: u64,
    acked: u64,
    pending: Vec<ThreadEvent>,
    api: Option<EventsApi>,
}

/// Cuts every string inside `v` to `max` bytes, so a payload stays bounded.
pub fn cap_json(v: &Value, max: usize) -> Value {
    match v {
        Value::String(s) if s.len() > max => {
            Value::String(format!("{}… [{} bytes cut]", loom_threads::text::truncate_str(s, max), s.len() - max))
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| cap_json(x, max)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), cap_json(x, max))).collect()),
        other => other.clone(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Makes `s` a valid thread/weaver id (A-Z a-z 0-9 - _ . :, at most 64 chars).
pub fn sanitize_id(s: &str) -> String {
    let mut out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.:".contains(c) { c } else { '-' }).take(64).collect();
    if out.is_empty() {
        out.push_str("local");
    }
    out
}

impl Spool {
    /// Opens (or creates) the spool in `dir`. The thread id is kept in `dir/thread_id`, so a
    /// restarted agent goes on with the same thread and the next seq.
    pub fn open(dir: &Path, weaver_id: &str, api: Option<EventsApi>) -> Result<Spool, SpoolError> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| SpoolError::Io { op, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("creating the state directory", dir))?;
        let weaver_id = sanitize_id(weaver_id);
        let id_path = dir.join("thread_id");
        let thread_id = match std::fs::read_to_string(&id_path) {
            Ok(s) if !s.trim().is_empty() => sanitize_id(s.trim()),
            _ => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let id = sanitize_id(&format!("{}-{}-{:x}", weaver_id, now_ms(), nanos ^ std::process::id()));
                std::fs::write(&id_path, &id).map_err(io("writing thread_id", &id_path))?;
                id
            }
        };
        let acked_path = dir.join("spool.acked");
        let acked: u64 = std::fs::read_to_string(&acked_path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let path = dir.join("spool.jsonl");
        let mut file =
            OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io("opening", &path))?;
        let mut last_seq = 0;
        let mut pending = Vec::new();
        let mut ends_with_newline = true;
        {
            let mut r = BufReader::new(&file);
            r.seek(SeekFrom::Start(0)).map_err(io("reading", &path))?;
            let mut line = String::new();
            loop {
                line.clear();
                let n = r.read_line(&mut line).map_err(io("reading", &path))?;
                if n == 0 {
                    break;
                }
                ends_with_newline = line.ends_with('\n');
                // A line cut by a crash is skipped; everything before and after it is kept.
                let Ok(ev) = serde_json::from_str::<ThreadEvent>(line.trim_end()) else {
                    tracing::warn!(path = %path.display(), "skipping a damaged spool line");
                    continue;
                };
                if ev.thread_id != thread_id {
                    continue;
                }
                last_seq = last_seq.max(ev.seq);
                if ev.seq > acked {
                    pending.push(ev);
                }
            }
        }
        if !ends_with_newline {
            file.write_all(b"\n").map_err(io("repairing", &path))?;
        }
        Ok(Spool { dir: dir.to_path_buf(), file, thread_id, weaver_id, next_seq: last_seq + 1, acked, pending, api })
    }

    pub fn thread_id(&self) -> &str {
        &self.thread_id
    }

    pub fn weaver_id(&self) -> &str {
        &self.weaver_id
    }

    /// Events recorded but not yet acknowledged by loomd.
    pub fn unacked(&self) -> usize {
        self.pending.len()
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("spool.jsonl")
    }

    /// Appends an event to the spool (one `write`), returning its seq.
    pub fn record(&mut self, kind: EventKind, iteration: u32, text: &str, payload: Value) -> Result<u64, SpoolError> {
        let ev = ThreadEvent {
            thread_id: self.thread_id.clone(),
            weaver_id: self.weaver_id.clone(),
            seq: self.next_seq,
            ts_ms: now_ms(),
            kind,
            iteration,
            text: crate::tools::truncate_middle(text, MAX_EVENT_TEXT - 200),
            payload: cap_json(&payload, 8 * 1024),
        };
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        self.file.write_all(&line).map_err(|source| SpoolError::Io { op: "appending", path: self.path(), source })?;
        self.next_seq += 1;
        if self.api.is_some() {
            self.pending.push(ev);
        }
        Ok(self.next_seq - 1)
    }

    /// Makes the spool durable on disk (at iteration boundaries, not per event).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.file.sync_data().map_err(|source| SpoolError::Io { op: "syncing", path: self.path(), source })
    }

    /// Every event of this thread in the spool, in order (for tests and local inspection).
    pub fn read_all(&self) -> Result<Vec<ThreadEvent>, SpoolError> {
        let text = std::fs::read_to_string(self.path()).map_err(|source| SpoolError::Io {
            op: "reading",
            path: self.path(),
            source,
        })?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<ThreadEvent>(l).ok())
            .filter(|e| e.thread_id == self.thread_id)
            .collect())
    }

    /// Sends unacknowledged events to loomd, in batches. Returns how many were acknowledged.
    /// Without an events API this does nothing.
    pub async fn flush(&mut self, timeout: Duration) -> Result<usize, SpoolError> {
        let Some(api) = self.api.clone() else {
            return Ok(0);
        };
        let mut sent = 0;
        while !self.pending.is_empty() {
            // At most MAX_BATCH_EVENTS events and about half of loomd's body limit per batch.
            let mut n = 0;
            let mut bytes = 0;
            while n < self.pending.len().min(MAX_BATCH_EVENTS) {
                let size = serde_json::to_vec(&self.pending[n]).map(|v| v.len()).unwrap_or(0);
                if n > 0 && bytes + size > MAX_BATCH_BYTES / 2 {
                    break;
                }
                bytes += size;
                n += 1;
            }
            let batch = EventBatch { events: self.pending[..n].to_vec() };
            let body = serde_json::to_vec(&batch).unwrap_or_default();
            let bearer = format!("Bearer {}", api.token);
            let err = |message: String| SpoolError::Send { url: api.url.clone(), message };
            let resp = post_json(&api.url, &[("authorization", &bearer)], body, timeout)
                .await
                .map_err(|e| err(e.to_string()))?;
            let status = resp.status;
            let text = resp.text(64 * 1024).await.map_err(|e| err(e.to_string()))?;
            if !(200..300).contains(&status) {
                return Err(err(format!("HTTP {status}: {}", text.trim())));
            }
            if serde_json::from_str::<AppendResponse>(&text).is_err() {
                return Err(err(format!("answer is not an AppendResponse: {}", text.trim())));
            }
            let last = self.pending[n - 1].seq;
            self.pending.drain(..n);
            self.acked = last;
            let acked_path = self.dir.join("spool.acked");
            let tmp = self.dir.join("spool.acked.tmp");
            std::fs::write(&tmp, last.to_string())
                .and_then(|_| std::fs::rename(&tmp, &acked_path))
                .map_err(|source| SpoolError::Io { op: "recording the acknowledgement", path: acked_path, source })?;
            sent += n;
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn restart_goes_on_with_the_same_thread_and_next_seq() {
        let d = tempfile::tempdir().unwrap();
        let api = Some(EventsApi::new("http://127.0.0.1:9", "t".into()));
        let mut s = Spool::open(d.path(), "w 1", api.clone()).unwrap();
        assert_eq!(s.weaver_id(), "w-1");
        assert_eq!(s.record(EventKind::ThreadStart, 0, "hello", json!({})).unwrap(), 1);
        assert_eq!(s.record(EventKind::Output, 1, "out", Value::Null).unwrap(), 2);
        let id = s.thread_id().to_owned();
        drop(s);
        // A crash mid-write leaves half a line.
        let mut f = OpenOptions::new().append(true).open(d.path().join("spool.jsonl")).unwrap();
        f.write_all(b"{\"thread_id\":\"").unwrap();
        drop(f);
        let mut s = Spool::open(d.path(), "w 1", api).unwrap();
        assert_eq!(s.thread_id(), id);
        assert_eq!(s.unacked(), 2, "nothing was acknowledged yet");
        assert_eq!(s.record(EventKind::Output, 1, "more", Value::Null).unwrap(), 3);
        let all = s.read_all().unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(all[2].text, "more");
    }

    #[test]
    fn payload_strings_are_capped() {
        let v = cap_json(&json!({"a": ["x".repeat(100)], "b": 1}), 10);
        assert!(v["a"][0].as_str().unwrap().starts_with("xxxxxxxxxx… [90 bytes cut]"));
        assert_eq!(v["b"], 1);
    }
}
