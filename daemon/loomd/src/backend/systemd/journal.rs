//! What the systemd backend asks one run's journal (through the seam,
//! [`SystemdManager::run_journal`](loom_systemd::SystemdManager::run_journal), by the run's
//! `InvocationID`): why a start failed, and how a run whose unit systemd already unloaded ended.

use std::time::Duration;

use loom_systemd::journal::{JournalEntry, RunEnd, last_run_end};
use loom_systemd::{SystemdError, UnitStatus};

use super::super::Observed;
use super::SystemdBackend;

/// The lines of a failed run's journal that say why, minus nspawn's harmless noise.
pub(super) fn journal_tail(entries: &[JournalEntry]) -> String {
    let lines: Vec<&str> = entries
        .iter()
        .map(|e| e.message.as_str())
        .filter(|l| !l.contains("/run/systemd/nspawn/propagate") && !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

impl SystemdBackend {
    /// What the run's journal says last, for an error message; `st` is the unit's status,
    /// which names the run.
    pub(super) async fn why(&self, unit: &str, st: Option<&UnitStatus>) -> String {
        let Some(invocation) = st.map(|s| s.invocation_id.as_str()).filter(|i| !i.is_empty()) else {
            return format!("see `journalctl -u {unit}`");
        };
        // journald may take a moment to have the last lines of a process that just ended.
        tokio::time::sleep(Duration::from_millis(100)).await;
        match self.sd.run_journal(unit, invocation, 20).await {
            Ok(entries) => journal_tail(&entries),
            Err(e) => format!("see `journalctl _SYSTEMD_INVOCATION_ID={invocation}` ({})", crate::error_chain(&e)),
        }
    }

    /// How the run `invocation` of a unit that is no longer loaded ended, by systemd's entries
    /// about it; `None` when the unit is loaded again meanwhile (the caller looks again).
    pub(super) async fn ended_per_journal(&self, unit: &str, invocation: Option<&str>) -> Option<Observed> {
        let Some(invocation) = invocation else {
            return Some(Observed::Lost {
                reason: format!("its unit {unit} is gone and its run has no invocation id to look up how it ended"),
            });
        };
        for attempt in 0..10 {
            let entries = match self.sd.run_journal(unit, invocation, 50).await {
                Ok(entries) => entries,
                Err(e @ SystemdError::InvocationId(_)) => {
                    return Some(Observed::Lost { reason: crate::error_chain(&e) });
                }
                Err(e) => {
                    tracing::warn!(unit, invocation, error = %crate::error_chain(&e), "cannot read the run's journal");
                    vec![]
                }
            };
            match last_run_end(&entries) {
                RunEnd::Unknown if attempt < 9 => {
                    // journald may not have the entry systemd just sent yet.
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
