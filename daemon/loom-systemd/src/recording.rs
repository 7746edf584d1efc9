//! A [`SystemdManager`] that records every call and keeps units in memory, behaving as
//! systemd does for a weaver unit with `RemainAfterExit=yes`, so loomd's backend logic can be
//! tested without root or systemd.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::journal::{self, JournalEntry, MSG_UNIT_FAILED, MSG_UNIT_STARTED, MSG_UNIT_STOPPED, MSG_UNIT_SUCCESS};
use crate::manager::{JobKind, SystemdError, SystemdManager};
use crate::unit::{self, ExitStatus, LoomUnit, StartedUnit, TransientServiceSpec, UnitStatus};

/// One call made through the seam.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    StartTransientService(TransientServiceSpec),
    UnitStatus(String),
    StopUnit(String),
    ResetFailed(String),
    ListLoomUnits,
    MachineLeader(String),
    RunJournal { unit: String, invocation: String },
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    units: BTreeMap<String, UnitStatus>,
    next_pid: u32,
    fail_next_start: Option<String>,
    /// unit name → machine (weaver) name
    machines: BTreeMap<String, String>,
    /// invocation id → its entries, oldest first: systemd's lifecycle entries as it writes
    /// them, and whatever a test says the run wrote.
    journal: BTreeMap<String, Vec<JournalEntry>>,
}

impl State {
    fn log(&mut self, invocation: &str, entry: JournalEntry) {
        self.journal.entry(invocation.to_string()).or_default().push(entry);
    }
}

/// The recording fake. Main PIDs are made up (from 1000 up).
#[derive(Debug, Default)]
pub struct RecordingSystemd {
    state: Mutex<State>,
}

impl RecordingSystemd {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock already failed; keep the state readable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Makes the next start's job end with `result` (e.g. "failed"), leaving the unit loaded
    /// and failed, as systemd does when `systemd-nspawn` exits before it is ready.
    pub fn fail_next_start(&self, result: &str) {
        self.lock().fail_next_start = Some(result.to_string());
    }

    /// Puts a unit in place as if it had been there before (a loomd restart).
    pub fn insert_unit(&self, status: UnitStatus) {
        self.lock().units.insert(status.name.clone(), status);
    }

    /// Makes a running unit's main process end with `exit`: a clean exit leaves it
    /// active/exited, anything else failed.
    pub fn exit_unit(&self, unit: &str, exit: ExitStatus) -> Result<(), SystemdError> {
        let mut st = self.lock();
        let u = st.units.get_mut(unit).ok_or_else(|| SystemdError::NoSuchUnit(unit.to_string()))?;
        let invocation = u.invocation_id.clone();
        u.main_pid = 0;
        u.exit = Some(exit);
        if exit == ExitStatus::Code(0) {
            u.active_state = "active".into();
            u.sub_state = "exited".into();
            u.result = "success".into();
        } else {
            u.active_state = "failed".into();
            u.sub_state = "failed".into();
            u.control_group.clear();
            u.result = match exit {
                ExitStatus::Code(_) => "exit-code".into(),
                ExitStatus::Signal { core_dumped: true, .. } => "core-dump".into(),
                ExitStatus::Signal { .. } => "signal".into(),
            };
            let failed = format!("{unit}: Failed with result '{}'.", u.result);
            st.log(&invocation, JournalEntry::from_manager(MSG_UNIT_FAILED, &failed));
        }
        Ok(())
    }

    /// Makes a running unit's main process exit 0 the way systemd-nspawn does (it says
    /// `STOPPING=1` first): systemd deactivates and unloads the unit at once, and only the
    /// journal still says how the run ended.
    pub fn finish_unit(&self, unit: &str) -> Result<(), SystemdError> {
        let mut st = self.lock();
        let u = st.units.remove(unit).ok_or_else(|| SystemdError::NoSuchUnit(unit.to_string()))?;
        let done = format!("{unit}: Deactivated successfully.");
        st.log(&u.invocation_id, JournalEntry::from_manager(MSG_UNIT_SUCCESS, &done));
        Ok(())
    }

    /// A line the unit's current run writes (its processes' output, as journald records it).
    pub fn write_output(&self, unit: &str, line: &str) -> Result<(), SystemdError> {
        let mut st = self.lock();
        let u = st.units.get(unit).ok_or_else(|| SystemdError::NoSuchUnit(unit.to_string()))?;
        let (invocation, pid) = (u.invocation_id.clone(), u.main_pid.max(2));
        st.log(&invocation, JournalEntry::output(pid, line));
        Ok(())
    }
}

#[async_trait]
impl SystemdManager for RecordingSystemd {
    async fn start_transient_service(&self, spec: &TransientServiceSpec) -> Result<StartedUnit, SystemdError> {
        let mut st = self.lock();
        st.calls.push(Call::StartTransientService(spec.clone()));
        let name = spec.unit_name()?;
        unit::service_properties(spec)?;
        if st.units.contains_key(&name) {
            return Err(SystemdError::UnitExists(name));
        }
        let failed = st.fail_next_start.take();
        st.next_pid = st.next_pid.max(999) + 1;
        let main_pid = st.next_pid;
        let control_group = format!("/{}/{name}", unit::LOOM_SLICE);
        let mut status = UnitStatus {
            name: name.clone(),
            active_state: "active".into(),
            sub_state: "running".into(),
            result: "success".into(),
            main_pid,
            exit: None,
            control_group: control_group.clone(),
            weaver_id: Some(spec.weaver_id.clone()),
            // A new one per start, as systemd makes.
            invocation_id: format!("{:032x}", 0xc0de_0000_u64 + u64::from(main_pid)),
        };
        let invocation_id = status.invocation_id.clone();
        st.log(&invocation_id, JournalEntry::from_manager(MSG_UNIT_STARTED, &format!("Started {name}.")));
        if let Some(result) = failed {
            st.log(
                &invocation_id,
                JournalEntry::from_manager(MSG_UNIT_FAILED, &format!("{name}: Failed with result 'exit-code'.")),
            );
            status.active_state = "failed".into();
            status.sub_state = "failed".into();
            status.result = "exit-code".into();
            status.main_pid = 0;
            status.exit = Some(ExitStatus::Code(1));
            status.control_group.clear();
            st.units.insert(name.clone(), status);
            return Err(SystemdError::JobFailed { unit: name, kind: JobKind::Start, result });
        }
        st.units.insert(name.clone(), status);
        st.machines.insert(name.clone(), spec.weaver_name.clone());
        Ok(StartedUnit {
            job: format!("/org/freedesktop/systemd1/job/{main_pid}"),
            name,
            main_pid,
            control_group,
            invocation_id,
        })
    }

    async fn unit_status(&self, unit: &str) -> Result<Option<UnitStatus>, SystemdError> {
        let mut st = self.lock();
        st.calls.push(Call::UnitStatus(unit.to_string()));
        Ok(st.units.get(unit).cloned())
    }

    async fn stop_unit(&self, unit: &str) -> Result<Option<UnitStatus>, SystemdError> {
        let mut st = self.lock();
        st.calls.push(Call::StopUnit(unit.to_string()));
        let u = st.units.get(unit).ok_or_else(|| SystemdError::NoSuchUnit(unit.to_string()))?;
        // A failed unit stays failed (and loaded) until reset; anything else is unloaded.
        if u.active_state == "failed" {
            return Ok(Some(u.clone()));
        }
        let invocation = u.invocation_id.clone();
        st.units.remove(unit);
        st.log(&invocation, JournalEntry::from_manager(MSG_UNIT_STOPPED, &format!("Stopped {unit}.")));
        Ok(None)
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        let mut st = self.lock();
        st.calls.push(Call::ResetFailed(unit.to_string()));
        let u = st.units.get(unit).ok_or_else(|| SystemdError::NoSuchUnit(unit.to_string()))?;
        if u.active_state == "failed" {
            st.units.remove(unit);
        }
        Ok(())
    }

    /// A running unit's machine is its weaver name (loomd passes `-M NAME`); its made-up
    /// leader is the main PID + 1.
    async fn machine_leader(&self, machine: &str) -> Result<Option<u32>, SystemdError> {
        let mut st = self.lock();
        st.calls.push(Call::MachineLeader(machine.to_string()));
        let leader = st.units.values().find_map(|u| {
            let running = u.main_pid != 0 && u.active_state == "active";
            (running && st.machines.get(&u.name).map(String::as_str) == Some(machine)).then_some(u.main_pid + 1)
        });
        Ok(leader)
    }

    async fn run_journal(&self, unit: &str, invocation: &str, max: usize) -> Result<Vec<JournalEntry>, SystemdError> {
        let mut st = self.lock();
        st.calls.push(Call::RunJournal { unit: unit.to_string(), invocation: invocation.to_string() });
        if !journal::is_invocation_id(invocation) {
            return Err(SystemdError::InvocationId(invocation.to_string()));
        }
        let entries = st.journal.get(invocation).map(Vec::as_slice).unwrap_or_default();
        Ok(entries[entries.len().saturating_sub(max)..].to_vec())
    }

    async fn list_loom_units(&self) -> Result<Vec<LoomUnit>, SystemdError> {
        let mut st = self.lock();
        st.calls.push(Call::ListLoomUnits);
        Ok(st
            .units
            .values()
            .filter_map(|u| {
                Some(LoomUnit {
                    weaver_id: unit::weaver_id_of_unit(&u.name).ok()?.to_string(),
                    name: u.name.clone(),
                    description: String::new(),
                    load_state: "loaded".into(),
                    active_state: u.active_state.clone(),
                    sub_state: u.sub_state.clone(),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::Phase;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime").block_on(f)
    }

    #[test]
    fn lifecycle_is_recorded_and_mirrors_systemd() {
        block(async {
            let sd = RecordingSystemd::new();
            let spec = TransientServiceSpec::new("aaaaaaaaaaaa", "one", vec!["/bin/true".into()]);
            let started = sd.start_transient_service(&spec).await.unwrap();
            assert_eq!(started.name, "loom-weaver-aaaaaaaaaaaa.service");
            assert_eq!(started.control_group, "/loom.slice/loom-weaver-aaaaaaaaaaaa.service");
            assert!(matches!(sd.start_transient_service(&spec).await, Err(SystemdError::UnitExists(_))));
            let st = sd.unit_status(&started.name).await.unwrap().unwrap();
            assert_eq!(st.phase(), Phase::Running);
            assert_eq!(sd.machine_leader("one").await.unwrap(), Some(started.main_pid + 1));
            assert_eq!(sd.machine_leader("other").await.unwrap(), None);
            sd.exit_unit(&started.name, ExitStatus::Code(3)).unwrap();
            assert_eq!(sd.machine_leader("one").await.unwrap(), None, "no machine once exited");
            let st = sd.unit_status(&started.name).await.unwrap().unwrap();
            assert_eq!(st.phase(), Phase::Failed(Some(ExitStatus::Code(3))));
            sd.stop_unit(&started.name).await.unwrap();
            assert_eq!(sd.list_loom_units().await.unwrap().len(), 1, "failed stays loaded");
            sd.reset_failed(&started.name).await.unwrap();
            assert!(sd.unit_status(&started.name).await.unwrap().is_none());
            assert!(matches!(sd.stop_unit(&started.name).await, Err(SystemdError::NoSuchUnit(_))));
            let calls = sd.calls();
            assert_eq!(calls[0], Call::StartTransientService(spec));
            assert_eq!(calls.last(), Some(&Call::StopUnit(started.name.clone())));
        });
    }

    #[test]
    fn each_run_has_its_own_journal() {
        block(async {
            let sd = RecordingSystemd::new();
            let spec = TransientServiceSpec::new("cccccccccccc", "three", vec!["/bin/true".into()]);
            let first = sd.start_transient_service(&spec).await.unwrap();
            sd.write_output(&first.name, "first run").unwrap();
            sd.finish_unit(&first.name).unwrap();
            assert!(sd.unit_status(&first.name).await.unwrap().is_none(), "a clean end unloads the unit");
            let second = sd.start_transient_service(&spec).await.unwrap();
            assert_ne!(first.invocation_id, second.invocation_id);
            sd.write_output(&second.name, "second run").unwrap();
            sd.stop_unit(&second.name).await.unwrap();

            let one = sd.run_journal(&first.name, &first.invocation_id, 10).await.unwrap();
            let messages: Vec<&str> = one.iter().map(|e| e.message.as_str()).collect();
            assert_eq!(messages[1], "first run", "{messages:?}");
            assert!(!messages.contains(&"second run"));
            assert_eq!(journal::last_run_end(&one), journal::RunEnd::Success);
            let two = sd.run_journal(&second.name, &second.invocation_id, 10).await.unwrap();
            assert_eq!(journal::last_run_end(&two), journal::RunEnd::Stopped);
            assert_eq!(sd.run_journal(&second.name, &second.invocation_id, 1).await.unwrap().len(), 1);
            assert!(matches!(sd.run_journal(&first.name, "", 10).await, Err(SystemdError::InvocationId(_))));
        });
    }

    #[test]
    fn a_failed_start_leaves_a_failed_unit() {
        block(async {
            let sd = RecordingSystemd::new();
            sd.fail_next_start("failed");
            let spec = TransientServiceSpec::new("bbbbbbbbbbbb", "two", vec!["/bin/false".into()]);
            match sd.start_transient_service(&spec).await {
                Err(SystemdError::JobFailed { result, kind: JobKind::Start, .. }) => {
                    assert_eq!(result, "failed")
                }
                other => panic!("expected a failed job, got {other:?}"),
            }
            let units = sd.list_loom_units().await.unwrap();
            assert_eq!(units.len(), 1);
            assert_eq!(units[0].weaver_id, "bbbbbbbbbbbb");
            assert_eq!(units[0].active_state, "failed");
        });
    }

    #[test]
    fn bad_specs_never_reach_the_units() {
        block(async {
            let sd = RecordingSystemd::new();
            let spec = TransientServiceSpec::new("bad id", "x", vec!["/bin/true".into()]);
            assert!(matches!(sd.start_transient_service(&spec).await, Err(SystemdError::Spec(_))));
            assert!(sd.list_loom_units().await.unwrap().is_empty());
        });
    }
}
