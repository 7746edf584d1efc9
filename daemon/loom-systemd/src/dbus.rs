//! The real [`SystemdManager`]: systemd's `org.freedesktop.systemd1.Manager` over the system
//! bus, with zbus on the caller's Tokio runtime.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use zbus::{Connection, DBusError, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant, Variant};

use crate::journal::{self, JournalEntry};
use crate::manager::{JobKind, SystemdError, SystemdManager};
use crate::unit::{self, LoomUnit, PropValue, StartedUnit, TransientServiceSpec, UNIT_PREFIX, UNIT_SUFFIX, UnitStatus};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";
const MACHINED: &str = "org.freedesktop.machine1";
const MACHINED_PATH: &str = "/org/freedesktop/machine1";
const MACHINED_MANAGER: &str = "org.freedesktop.machine1.Manager";
const MACHINE_IFACE: &str = "org.freedesktop.machine1.Machine";
const JOB_IFACE: &str = "org.freedesktop.systemd1.Job";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// How long a job may be quiet before we check whether it still exists.
const JOB_POLL: Duration = Duration::from_secs(1);

/// Signals queued per subscription: every `JobRemoved` on the bus passes through it, and
/// loomd may start or stop many weavers at once.
const SIGNAL_QUEUE: NonZeroUsize = NonZeroUsize::new(4096).expect("non-zero");

/// The system bus's usual address, used when `DBUS_SYSTEM_BUS_ADDRESS` is unset.
pub const SYSTEM_BUS_ADDRESS: &str = "unix:path=/run/dbus/system_bus_socket";

/// How long a job may take by default. Starting `systemd-nspawn` takes well under a second;
/// stopping a container waits for its payload, which systemd bounds by `TimeoutStopSec`
/// (90 s by default) before it kills.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// systemd's manager over D-Bus. Cheap to clone; clones share one connection.
#[derive(Debug, Clone)]
pub struct DbusSystemd {
    conn: Connection,
    job_timeout: Duration,
    /// Absolute: journalctl is run without a search path.
    journalctl: PathBuf,
    /// Whose journal files are read: `None` for this system's, else a root below which a
    /// booted container keeps its own (`journalctl --root`).
    journal_root: Option<PathBuf>,
}

/// How long reading one run's journal may take; journalctl answers a match on an invocation
/// id from the journal's index in milliseconds.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// journalctl on PATH, else where distributions put it.
fn find_journalctl() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("journalctl"))
        .find(|p| p.is_absolute() && p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/journalctl"))
}

impl DbusSystemd {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else
    /// `/run/dbus/system_bus_socket`). Must be called inside a Tokio runtime.
    pub async fn connect_system() -> Result<Self, SystemdError> {
        let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
            .ok()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| SYSTEM_BUS_ADDRESS.to_string());
        Self::connect(&address).await
    }

    /// Connects to the bus at a D-Bus address such as `unix:path=/proc/PID/root/run/dbus/system_bus_socket`
    /// (how a test on the host reaches the systemd of a container it booted) and subscribes
    /// to the manager's signals, without which systemd sends no `JobRemoved`.
    pub async fn connect(address: &str) -> Result<Self, SystemdError> {
        let connect_err = |source| SystemdError::Connect { address: address.to_string(), source };
        let conn = zbus::connection::Builder::address(address).build().await.map_err(connect_err)?;
        conn.call_method(Some(DEST), PATH, Some(MANAGER), "Subscribe", &()).await.map_err(connect_err)?;
        Ok(DbusSystemd { conn, job_timeout: DEFAULT_JOB_TIMEOUT, journalctl: find_journalctl(), journal_root: None })
    }

    /// Reads journals below `root` (a container's root as the host sees it) instead of this
    /// system's: the systemd behind a container's bus logs into the container's journal.
    pub fn with_journal_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.journal_root = Some(root.into());
        self
    }

    /// Sets how long to wait for a start or stop job.
    pub fn with_job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    async fn manager_call<B>(&self, method: &'static str, unit: &str, body: &B) -> Result<zbus::Message, SystemdError>
    where
        B: serde::Serialize + zbus::DynamicType,
    {
        self.conn
            .call_method(Some(DEST), PATH, Some(MANAGER), method, body)
            .await
            .map_err(|e| classify(e, method, unit))
    }

    /// A stream of the manager's `JobRemoved` signals, opened before a job is queued so that
    /// its end cannot be missed.
    async fn job_removed_stream(&self, unit: &str, method: &'static str) -> Result<MessageStream, SystemdError> {
        let call_err = |source| SystemdError::Call { method, unit: unit.to_string(), source };
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(DEST)
            .path(PATH)
            .interface(MANAGER)
            .member("JobRemoved")
            .build()
            .map_err(call_err)?;
        MessageStream::for_match_rule(rule, &self.conn, Some(SIGNAL_QUEUE)).await.map_err(call_err)
    }

    /// Waits for `JobRemoved` of `job` and turns its result into an error unless it is `done`.
    async fn wait_job(
        &self,
        mut stream: MessageStream,
        job: &OwnedObjectPath,
        unit: &str,
        kind: JobKind,
    ) -> Result<(), SystemdError> {
        let wait = async {
            loop {
                let msg = match tokio::time::timeout(JOB_POLL, stream.next()).await {
                    Ok(Some(Ok(msg))) => msg,
                    Ok(Some(Err(_))) => continue,
                    Ok(None) => return None,
                    Err(_) => {
                        // Quiet for a while: if the job is gone, its signal was lost (a full
                        // queue when many jobs end at once), so read the outcome off the unit.
                        if !self.job_exists(job).await {
                            return Some(self.job_result_from_unit(unit, kind).await);
                        }
                        continue;
                    }
                };
                let body = msg.body();
                let Ok((_id, path, _unit, result)) = body.deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if &path == job {
                    return Some(result);
                }
            }
        };
        match tokio::time::timeout(self.job_timeout, wait).await {
            Err(_) => Err(SystemdError::JobTimeout { unit: unit.to_string(), kind, after: self.job_timeout }),
            Ok(None) => Err(SystemdError::Disconnected { unit: unit.to_string(), kind }),
            Ok(Some(result)) if result == "done" => Ok(()),
            Ok(Some(result)) => Err(SystemdError::JobFailed { unit: unit.to_string(), kind, result }),
        }
    }

    /// False once systemd no longer knows the job (it finished); true while it does, and when
    /// asking fails otherwise (keep waiting for the signal).
    async fn job_exists(&self, job: &OwnedObjectPath) -> bool {
        let reply = self.conn.call_method(Some(DEST), job, Some(PROPERTIES), "Get", &(JOB_IFACE, "State")).await;
        match reply {
            Ok(_) => true,
            Err(e) => error_name(&e).as_deref() != Some("org.freedesktop.DBus.Error.UnknownObject"),
        }
    }

    /// The result a finished job must have had, judged by where its unit ended up.
    async fn job_result_from_unit(&self, unit: &str, kind: JobKind) -> String {
        let active = match self.unit_status(unit).await {
            Ok(Some(st)) => st.active_state,
            Ok(None) => "inactive".to_string(),
            Err(_) => return "unknown".to_string(),
        };
        let done = match kind {
            JobKind::Start => active == "active" || active == "reloading",
            JobKind::Stop => active == "inactive" || active == "failed",
        };
        if done { "done" } else { "failed" }.to_string()
    }

    async fn get_all(
        &self,
        path: &OwnedObjectPath,
        iface: &str,
        unit: &str,
    ) -> Result<Option<HashMap<String, OwnedVariant>>, SystemdError> {
        let reply = self.conn.call_method(Some(DEST), path, Some(PROPERTIES), "GetAll", &(iface,)).await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) if error_name(&e).as_deref() == Some("org.freedesktop.DBus.Error.UnknownObject") => {
                return Ok(None);
            }
            Err(e) => return Err(classify(e, "GetAll", unit)),
        };
        let props = reply
            .body()
            .deserialize::<HashMap<String, OwnedVariant>>()
            .map_err(|source| SystemdError::Reply { method: "GetAll", unit: unit.to_string(), source })?;
        Ok(Some(props))
    }
}

#[async_trait]
impl SystemdManager for DbusSystemd {
    async fn start_transient_service(&self, spec: &TransientServiceSpec) -> Result<StartedUnit, SystemdError> {
        let unit = spec.unit_name()?;
        let props = unit::service_properties(spec)?;
        let variants: Vec<(&str, Variant<'_>)> = props.iter().map(|(name, v)| (*name, to_variant(v))).collect();
        let aux: Vec<(&str, Vec<(&str, Variant<'_>)>)> = Vec::new();

        let stream = self.job_removed_stream(&unit, "StartTransientUnit").await?;
        let reply = self.manager_call("StartTransientUnit", &unit, &(unit.as_str(), "fail", variants, aux)).await?;
        let job = job_path(&reply, "StartTransientUnit", &unit)?;
        tracing::debug!(unit, job = job.as_str(), "start job queued");
        self.wait_job(stream, &job, &unit, JobKind::Start).await?;

        let status = self.unit_status(&unit).await?;
        let (main_pid, control_group, invocation_id) =
            status.map(|s| (s.main_pid, s.control_group, s.invocation_id)).unwrap_or_default();
        Ok(StartedUnit { name: unit, job: job.as_str().to_string(), main_pid, control_group, invocation_id })
    }

    async fn unit_status(&self, unit: &str) -> Result<Option<UnitStatus>, SystemdError> {
        let path = match self.manager_call("GetUnit", unit, &(unit,)).await {
            Ok(reply) => reply.body().deserialize::<OwnedObjectPath>().map_err(|source| SystemdError::Reply {
                method: "GetUnit",
                unit: unit.to_string(),
                source,
            })?,
            Err(SystemdError::NoSuchUnit(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(u) = self.get_all(&path, UNIT_IFACE, unit).await? else {
            return Ok(None);
        };
        if str_prop(&u, "LoadState") == "not-found" {
            return Ok(None);
        }
        // A unit that is not a service (a name given by mistake) has no Service interface.
        let s = self.get_all(&path, SERVICE_IFACE, unit).await?.unwrap_or_default();
        let code = i32_prop(&s, "ExecMainCode");
        let status = i32_prop(&s, "ExecMainStatus");
        let extra: Vec<Vec<u8>> = u
            .get("LogExtraFields")
            .or_else(|| s.get("LogExtraFields"))
            .and_then(|v| v.try_clone().ok())
            .and_then(|v| Vec::<Vec<u8>>::try_from(v).ok())
            .unwrap_or_default();
        Ok(Some(UnitStatus {
            name: unit.to_string(),
            active_state: str_prop(&u, "ActiveState"),
            sub_state: str_prop(&u, "SubState"),
            result: str_prop(&s, "Result"),
            main_pid: u32_prop(&s, "MainPID"),
            exit: unit::exit_status(code, status),
            control_group: str_prop(&s, "ControlGroup"),
            weaver_id: unit::weaver_id_from_extra_fields(&extra),
            invocation_id: u
                .get("InvocationID")
                .and_then(|v| v.try_clone().ok())
                .and_then(|v| Vec::<u8>::try_from(v).ok())
                .map(|b| unit::invocation_hex(&b))
                .unwrap_or_default(),
        }))
    }

    async fn stop_unit(&self, unit: &str) -> Result<Option<UnitStatus>, SystemdError> {
        let stream = self.job_removed_stream(unit, "StopUnit").await?;
        let reply = self.manager_call("StopUnit", unit, &(unit, "replace")).await?;
        let job = job_path(&reply, "StopUnit", unit)?;
        self.wait_job(stream, &job, unit, JobKind::Stop).await?;
        self.unit_status(unit).await
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager_call("ResetFailedUnit", unit, &(unit,)).await.map(drop)
    }

    async fn machine_leader(&self, machine: &str) -> Result<Option<u32>, SystemdError> {
        self.machine_leader_impl(machine).await
    }

    async fn run_journal(&self, unit: &str, invocation: &str, max: usize) -> Result<Vec<JournalEntry>, SystemdError> {
        if !journal::is_invocation_id(invocation) {
            return Err(SystemdError::InvocationId(invocation.to_string()));
        }
        let journal_err = |reason: String| SystemdError::Journal { unit: unit.to_string(), reason };
        let mut cmd = tokio::process::Command::new(&self.journalctl);
        if let Some(root) = &self.journal_root {
            cmd.arg(format!("--root={}", root.display()));
        }
        cmd.args(journal::journalctl_args(invocation, max))
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(JOURNAL_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(journal_err(format!("running {}: {e}", self.journalctl.display()))),
            Err(_) => return Err(journal_err(format!("journalctl took longer than {JOURNAL_TIMEOUT:?}"))),
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(journal_err(format!("journalctl {}: {}", out.status, stderr.trim())));
        }
        Ok(journal::parse_json_lines(&String::from_utf8_lossy(&out.stdout)))
    }

    async fn list_loom_units(&self) -> Result<Vec<LoomUnit>, SystemdError> {
        let pattern = format!("{UNIT_PREFIX}*{UNIT_SUFFIX}");
        let states: Vec<&str> = Vec::new();
        let reply = self.manager_call("ListUnitsByPatterns", &pattern, &(states, vec![pattern.as_str()])).await?;
        type Row = (String, String, String, String, String, String, OwnedObjectPath, u32, String, OwnedObjectPath);
        let rows = reply.body().deserialize::<Vec<Row>>().map_err(|source| SystemdError::Reply {
            method: "ListUnitsByPatterns",
            unit: pattern.clone(),
            source,
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, description, load_state, active_state, sub_state, ..)| {
                let weaver_id = unit::weaver_id_of_unit(&name).ok()?.to_string();
                Some(LoomUnit { name, weaver_id, description, load_state, active_state, sub_state })
            })
            .collect())
    }
}

impl DbusSystemd {
    async fn machine_leader_impl(&self, machine: &str) -> Result<Option<u32>, SystemdError> {
        let reply = self
            .conn
            .call_method(Some(MACHINED), MACHINED_PATH, Some(MACHINED_MANAGER), "GetMachine", &(machine,))
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) if error_name(&e).as_deref() == Some("org.freedesktop.machine1.NoSuchMachine") => {
                return Ok(None);
            }
            Err(source) => return Err(SystemdError::Call { method: "GetMachine", unit: machine.to_string(), source }),
        };
        let path = reply.body().deserialize::<OwnedObjectPath>().map_err(|source| SystemdError::Reply {
            method: "GetMachine",
            unit: machine.to_string(),
            source,
        })?;
        let reply =
            self.conn.call_method(Some(MACHINED), &path, Some(PROPERTIES), "Get", &(MACHINE_IFACE, "Leader")).await;
        let reply = match reply {
            Ok(r) => r,
            // Gone between the two calls.
            Err(e) if error_name(&e).as_deref() == Some("org.freedesktop.DBus.Error.UnknownObject") => {
                return Ok(None);
            }
            Err(source) => return Err(SystemdError::Call { method: "Get Leader", unit: machine.to_string(), source }),
        };
        let leader =
            reply.body().deserialize::<OwnedVariant>().ok().and_then(|v| u32::try_from(&*v).ok()).ok_or_else(|| {
                SystemdError::Reply {
                    method: "Get Leader",
                    unit: machine.to_string(),
                    source: zbus::Error::InvalidReply,
                }
            })?;
        Ok(Some(leader))
    }
}

fn to_variant(v: &PropValue) -> Variant<'_> {
    match v {
        PropValue::Str(s) => Variant::from(s.as_str()),
        PropValue::Bool(b) => Variant::from(*b),
        PropValue::U64(n) => Variant::from(*n),
        PropValue::StrList(l) => Variant::from(l.iter().map(String::as_str).collect::<Vec<_>>()),
        PropValue::ByteArrays(l) => Variant::from(l.clone()),
        PropValue::ExecCommands(cmds) => Variant::from(
            cmds.iter()
                .map(|(path, argv, ignore)| {
                    (path.as_str(), argv.iter().map(String::as_str).collect::<Vec<_>>(), *ignore)
                })
                .collect::<Vec<_>>(),
        ),
        PropValue::StrPairs(pairs) => {
            Variant::from(pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect::<Vec<_>>())
        }
    }
}

fn job_path(reply: &zbus::Message, method: &'static str, unit: &str) -> Result<OwnedObjectPath, SystemdError> {
    reply.body().deserialize::<OwnedObjectPath>().map_err(|source| SystemdError::Reply {
        method,
        unit: unit.to_string(),
        source,
    })
}

/// The D-Bus error name of a failed call, if the failure was an error reply.
fn error_name(e: &zbus::Error) -> Option<String> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str().to_string()),
        zbus::Error::FDO(fdo) => Some(fdo.name().as_str().to_string()),
        _ => None,
    }
}

fn classify(e: zbus::Error, method: &'static str, unit: &str) -> SystemdError {
    match error_name(&e).as_deref() {
        Some("org.freedesktop.systemd1.NoSuchUnit") => SystemdError::NoSuchUnit(unit.to_string()),
        Some("org.freedesktop.systemd1.UnitExists") => SystemdError::UnitExists(unit.to_string()),
        _ => SystemdError::Call { method, unit: unit.to_string(), source: e },
    }
}

fn str_prop(props: &HashMap<String, OwnedVariant>, key: &str) -> String {
    props.get(key).and_then(|v| <&str>::try_from(&**v).ok()).unwrap_or_default().to_string()
}

fn u32_prop(props: &HashMap<String, OwnedVariant>, key: &str) -> u32 {
    props.get(key).and_then(|v| u32::try_from(&**v).ok()).unwrap_or_default()
}

fn i32_prop(props: &HashMap<String, OwnedVariant>, key: &str) -> i32 {
    props.get(key).and_then(|v| i32::try_from(&**v).ok()).unwrap_or_default()
}
