//! One run's journal: what systemd (PID 1) logged about one activation of a unit and what
//! that activation's processes wrote, picked by the activation's `InvocationID`, so that an
//! earlier or later run of the same unit name never answers for it. Reading it is a method of
//! the seam ([`crate::SystemdManager::run_journal`]); this module is the pure part: the
//! `journalctl` arguments, parsing its JSON, and what systemd's entries say about the end.

/// systemd's catalog ids of the unit lifecycle entries PID 1 writes.
pub const MSG_UNIT_STARTED: &str = "39f53479d3a045ac8e11786248231fbf";
/// "Deactivated successfully": the main process exited 0 and nothing stopped it.
pub const MSG_UNIT_SUCCESS: &str = "7ad2d189f7e94e70a38c781354912448";
/// "Stopped": a stop job ended the unit.
pub const MSG_UNIT_STOPPED: &str = "9d1aaa27d60140bd96365438aad20286";
/// "Failed with result": the unit failed.
pub const MSG_UNIT_FAILED: &str = "d9b373ed55a64feb8242e02dbe79a49c";

/// One journal entry, reduced to what loom reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JournalEntry {
    /// `MESSAGE_ID`, for systemd's catalogued entries.
    pub message_id: Option<String>,
    /// `_PID` (journald's, trusted): 1 for systemd's own entries.
    pub pid: Option<u32>,
    pub message: String,
}

impl JournalEntry {
    /// An entry of systemd itself (PID 1) about the unit.
    pub fn from_manager(message_id: &str, message: &str) -> Self {
        JournalEntry { message_id: Some(message_id.to_string()), pid: Some(1), message: message.to_string() }
    }

    /// A line the run's own processes wrote.
    pub fn output(pid: u32, message: &str) -> Self {
        JournalEntry { message_id: None, pid: Some(pid), message: message.to_string() }
    }

    fn is_managers(&self) -> bool {
        self.pid == Some(1)
    }
}

/// Whether `id` has the shape of an `InvocationID` (32 lowercase hex digits, as
/// [`crate::UnitStatus::invocation_id`] gives it); nothing else reaches a journal match.
pub fn is_invocation_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `journalctl`'s arguments for the last `max` entries of one run: the run's output
/// (`_SYSTEMD_INVOCATION_ID`, set by journald) or systemd's own entries about it
/// (`INVOCATION_ID` from `_PID=1`). Only the fields [`parse_json_lines`] reads are asked for.
pub fn journalctl_args(invocation: &str, max: usize) -> Vec<String> {
    vec![
        "-o".into(),
        "json".into(),
        "--no-pager".into(),
        "-n".into(),
        max.to_string(),
        "--output-fields=MESSAGE,MESSAGE_ID,_PID".into(),
        format!("_SYSTEMD_INVOCATION_ID={invocation}"),
        "+".into(),
        format!("INVOCATION_ID={invocation}"),
        "_PID=1".into(),
    ]
}

/// A field as text: journald gives a string, or an array of bytes for one that is not UTF-8.
fn text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(a) => {
            let bytes: Option<Vec<u8>> = a.iter().map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect();
            bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
        }
        _ => None,
    }
}

/// Parses `journalctl -o json` output, one object a line, oldest first; lines that are not
/// entries are skipped.
pub fn parse_json_lines(out: &str) -> Vec<JournalEntry> {
    out.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(serde_json::Value::is_object)
        .map(|v| JournalEntry {
            message_id: text(&v["MESSAGE_ID"]),
            pid: text(&v["_PID"]).and_then(|p| p.parse().ok()),
            message: text(&v["MESSAGE"]).unwrap_or_default(),
        })
        .collect()
}

/// How a run ended, by systemd's lifecycle entries about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// "Deactivated successfully": the main process exited 0 and nothing stopped it.
    Success,
    /// "Stopped": a stop job ended it.
    Stopped,
    /// "Failed with result": the unit failed (and was reset since).
    Failed,
    /// The last entry is its start, or there is none (journald may not have it yet).
    Unknown,
}

/// The last lifecycle entry of systemd's (PID 1's) among `entries`, oldest first. A weaver's
/// output cannot set `_PID`, so it never counts.
pub fn last_run_end(entries: &[JournalEntry]) -> RunEnd {
    for e in entries.iter().rev().filter(|e| e.is_managers()) {
        match e.message_id.as_deref() {
            Some(MSG_UNIT_SUCCESS) => return RunEnd::Success,
            Some(MSG_UNIT_STOPPED) => return RunEnd::Stopped,
            Some(MSG_UNIT_FAILED) => return RunEnd::Failed,
            Some(MSG_UNIT_STARTED) => return RunEnd::Unknown,
            _ => {}
        }
    }
    RunEnd::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemds_last_lifecycle_entry_tells_how_a_run_ended() {
        let m = JournalEntry::from_manager;
        let check = |entries: &[JournalEntry], want: RunEnd| assert_eq!(last_run_end(entries), want, "{entries:?}");
        check(&[m(MSG_UNIT_STARTED, "Started"), m(MSG_UNIT_SUCCESS, "Deactivated")], RunEnd::Success);
        check(&[m(MSG_UNIT_SUCCESS, ""), m(MSG_UNIT_STARTED, "")], RunEnd::Unknown);
        check(&[m(MSG_UNIT_STARTED, ""), m(MSG_UNIT_FAILED, ""), m(MSG_UNIT_STOPPED, "")], RunEnd::Stopped);
        check(&[m(MSG_UNIT_STARTED, ""), m(MSG_UNIT_FAILED, ""), JournalEntry::output(7, "bye")], RunEnd::Failed);
        let forged = JournalEntry { pid: Some(4242), ..m(MSG_UNIT_SUCCESS, "") };
        check(&[m(MSG_UNIT_STARTED, ""), forged], RunEnd::Unknown);
        check(&[], RunEnd::Unknown);
    }

    #[test]
    fn journalctl_json_is_parsed_leniently() {
        let out = format!(
            "{{\"MESSAGE_ID\":\"{MSG_UNIT_SUCCESS}\",\"_PID\":\"1\",\"MESSAGE\":\"x.service: Deactivated successfully.\"}}\n\
             not json\n\
             [1,2]\n\
             {{\"_PID\":\"4242\",\"MESSAGE\":[104,105,255]}}\n\
             {{\"MESSAGE\":null,\"_PID\":\"many\"}}\n"
        );
        let got = parse_json_lines(&out);
        assert_eq!(
            got,
            [
                JournalEntry::from_manager(MSG_UNIT_SUCCESS, "x.service: Deactivated successfully."),
                JournalEntry::output(4242, "hi\u{fffd}"),
                JournalEntry::default(),
            ]
        );
        assert_eq!(last_run_end(&got), RunEnd::Success);
    }

    #[test]
    fn the_journal_is_read_for_one_invocation_only() {
        let id = "0123456789abcdef0123456789abcdef";
        assert!(is_invocation_id(id));
        for bad in ["", "0123", "0123456789ABCDEF0123456789ABCDEF", "0123456789abcdef0123456789abcdeg", "a=b + c"] {
            assert!(!is_invocation_id(bad), "{bad:?}");
        }
        let args = journalctl_args(id, 20);
        assert_eq!(args[3..5], ["-n", "20"]);
        assert_eq!(
            args[6..],
            [format!("_SYSTEMD_INVOCATION_ID={id}"), "+".into(), format!("INVOCATION_ID={id}"), "_PID=1".into()]
        );
    }
}
