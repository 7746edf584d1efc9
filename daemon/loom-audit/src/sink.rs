//! Where audit events go: journald when its socket exists, else an NDJSON
//! file in the state directory.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::config::{AuditConfig, SinkChoice};
use crate::event::AuditEvent;
use crate::journal::{JournalClient, JournalError};

/// Why an event could not be written to its sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot open the audit NDJSON file {path}; check the state directory's permissions")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to the audit NDJSON file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sink = \"journald\" is configured but {0} does not exist; is systemd-journald running?")]
    NoJournal(PathBuf),
}

/// A destination for audit events.
pub trait AuditSink: Send + std::fmt::Debug {
    fn write(&mut self, event: &AuditEvent) -> Result<(), SinkError>;
    /// Push buffered events out (called after each batch).
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// `journald` or `ndjson:<path>`, for `loom status`.
    fn describe(&self) -> String;
}

#[derive(Debug)]
pub struct JournaldSink {
    client: JournalClient,
}

impl JournaldSink {
    pub fn new(socket: &Path) -> Result<Self, SinkError> {
        Ok(Self { client: JournalClient::new(socket)? })
    }
}

impl AuditSink for JournaldSink {
    fn write(&mut self, event: &AuditEvent) -> Result<(), SinkError> {
        Ok(self.client.send(event)?)
    }
    fn describe(&self) -> String {
        "journald".into()
    }
}

/// One JSON object per line, appended.
#[derive(Debug)]
pub struct NdjsonSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl NdjsonSink {
    /// Open for appending; a new file is created 0600 (argv and paths can be sensitive).
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| SinkError::Open { path: path.to_path_buf(), source })?;
        Ok(Self { path: path.to_path_buf(), out: BufWriter::new(file) })
    }
}

impl AuditSink for NdjsonSink {
    fn write(&mut self, event: &AuditEvent) -> Result<(), SinkError> {
        let err = |source| SinkError::Write { path: self.path.clone(), source };
        serde_json::to_writer(&mut self.out, event).map_err(|e| err(e.into()))?;
        self.out.write_all(b"\n").map_err(err)
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|source| SinkError::Write { path: self.path.clone(), source })
    }
    fn describe(&self) -> String {
        format!("ndjson:{}", self.path.display())
    }
}

/// The sink the configuration asks for: `auto` picks journald when its socket
/// exists, else `<state_dir>/audit.ndjson` (or `ndjson_file`).
pub fn open_sink(config: &AuditConfig, state_dir: &Path) -> Result<Box<dyn AuditSink>, SinkError> {
    let ndjson = || -> Result<Box<dyn AuditSink>, SinkError> {
        let path = config.ndjson_file.clone().unwrap_or_else(|| state_dir.join("audit.ndjson"));
        Ok(Box::new(NdjsonSink::open(&path)?))
    };
    match config.sink {
        SinkChoice::Ndjson => ndjson(),
        SinkChoice::Journald => {
            if !config.journal_socket.exists() {
                return Err(SinkError::NoJournal(config.journal_socket.clone()));
            }
            Ok(Box::new(JournaldSink::new(&config.journal_socket)?))
        }
        SinkChoice::Auto => {
            if config.journal_socket.exists() {
                Ok(Box::new(JournaldSink::new(&config.journal_socket)?))
            } else {
                ndjson()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventDetail;

    fn event(seq: u64) -> AuditEvent {
        let detail = EventDetail::Open {
            path: "/tmp/a\nb".into(),
            path_truncated: false,
            dirfd: -100,
            flags: 0o101,
            mode: 0o644,
        };
        AuditEvent {
            seq,
            ts_boot_ns: 1,
            time_unix_ns: 2,
            cgroup_id: 3,
            comm: "sh".into(),
            ..AuditEvent::new("w", "openat", detail)
        }
    }

    #[test]
    fn ndjson_sink_appends_one_parseable_line_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig { journal_socket: dir.path().join("no-journal"), ..AuditConfig::default() };
        let mut sink = open_sink(&config, dir.path()).unwrap();
        assert!(sink.describe().starts_with("ndjson:"));
        sink.write(&event(1)).unwrap();
        sink.write(&event(2)).unwrap();
        sink.flush().unwrap();
        drop(sink);
        let mut sink = open_sink(&config, dir.path()).unwrap();
        sink.write(&event(3)).unwrap();
        sink.flush().unwrap();
        let path = dir.path().join("audit.ndjson");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<AuditEvent> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines, vec![event(1), event(2), event(3)]);
    }

    #[test]
    fn journald_choice_without_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            sink: SinkChoice::Journald,
            journal_socket: dir.path().join("nope"),
            ..AuditConfig::default()
        };
        let err = open_sink(&config, dir.path()).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn auto_choice_uses_journald_socket_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("socket");
        let server = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
        let config = AuditConfig { journal_socket: sock, ..AuditConfig::default() };
        let mut sink = open_sink(&config, dir.path()).unwrap();
        assert_eq!(sink.describe(), "journald");
        sink.write(&event(1)).unwrap();
        let mut buf = vec![0u8; 65536];
        let n = server.recv(&mut buf).unwrap();
        let fields = crate::journal::decode_entry(&buf[..n]).unwrap();
        let path = fields.iter().find(|(k, _)| k == "LOOM_PATH").unwrap();
        assert_eq!(path.1, b"/tmp/a\nb");
    }
}
