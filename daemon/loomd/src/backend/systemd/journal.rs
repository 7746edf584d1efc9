//! What the systemd backend reads from the journal: why a start failed, and how a unit that
//! systemd already unloaded ended (systemd's own lifecycle entries, by `MESSAGE_ID`).

use std::time::Duration;

use super::super::Observed;
use super::SystemdBackend;

/// The lines of a failed run's journal that say why, minus nspawn's harmless noise.
fn journal_tail(text: &str) -> String {
    let lines: Vec<&str> =
        text.lines().filter(|l| !l.contains("/run/systemd/nspawn/propagate") && !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// How a unit's last run ended, by systemd's (PID 1's) lifecycle entries in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunEnd {
    /// "Deactivated successfully": the main process exited 0 and nothing stopped it.
    Success,
    /// "Stopped": a stop job ended it.
    Stopped,
    /// "Failed with result": the unit failed (and was reset since).
    Failed,
    /// The last entry is its start, or there is none.
    Unknown,
}

pub(super) const MSG_UNIT_STARTED: &str = "39f53479d3a045ac8e11786248231fbf";
pub(super) const MSG_UNIT_SUCCESS: &str = "7ad2d189f7e94e70a38c781354912448";
pub(super) const MSG_UNIT_STOPPED: &str = "9d1aaa27d60140bd96365438aad20286";
pub(super) const MSG_UNIT_FAILED: &str = "d9b373ed55a64feb8242e02dbe79a49c";

/// Reads `journalctl -o json` lines, oldest first; only PID 1's entries count (a weaver's
/// output cannot carry fields, but be strict anyway).
pub(super) fn last_run_end(json_lines: &str) -> RunEnd {
    for line in json_lines.lines().rev() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["_PID"].as_str() != Some("1") {
            continue;
        }
        match v["MESSAGE_ID"].as_str() {
            Some(MSG_UNIT_SUCCESS) => return RunEnd::Success,
            Some(MSG_UNIT_STOPPED) => return RunEnd::Stopped,
            Some(MSG_UNIT_FAILED) => return RunEnd::Failed,
            Some(MSG_UNIT_STARTED) => return RunEnd::Unknown,
            _ => {}
        }
    }
    RunEnd::Unknown
}

impl SystemdBackend {
    /// What the journal says about the unit's last lines, for an error message.
    pub(super) async fn why(&self, unit: &str) -> String {
        // journald may take a moment to have the last lines of a process that just ended.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let out = tokio::process::Command::new(&self.journalctl)
            .args(["-o", "cat", "--no-pager", "-n", "20", "-u", unit])
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        match out {
            Ok(o) => journal_tail(&String::from_utf8_lossy(&o.stdout)),
            Err(_) => format!("see `journalctl -u {unit}`"),
        }
    }

    /// when the unit is loaded again meanwhile (a newer run started).
    pub(super) async fn ended_per_journal(&self, unit: &str) -> Option<Observed> {
        for attempt in 0..10 {
            let out = tokio::process::Command::new(&self.journalctl)
                .args(["-u", unit, "-o", "json", "--no-pager", "-n", "50", "--output-fields=MESSAGE_ID,_PID"])
                .stdin(std::process::Stdio::null())
                .output()
                .await;
            let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            match last_run_end(&text) {
                RunEnd::Unknown if attempt < 9 => {
                    // journald may not have the entry systemd just sent yet, or the last
                    // entry is the start of a newer run.
                    if let Ok(Some(_)) = self.sd.unit_status(unit).await {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                RunEnd::Success => return Some(Observed::Exited { code: 0 }),
                RunEnd::Stopped => {
                    return Some(Observed::Lost { reason: format!("its unit {unit} was stopped outside loom") });
                }
                RunEnd::Unknown | RunEnd::Failed => break,
            }
        }
        Some(Observed::Lost {
            reason: format!(
                "its unit {unit} is gone and the journal does not say how it ended (reset outside loom, or the host rebooted)"
            ),
        })
    }
}
