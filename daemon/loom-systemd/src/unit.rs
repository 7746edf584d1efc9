//! Pure logic about weaver units: names, the properties of a transient service, and what a
//! unit's status means. No I/O here, so all of it is tested without root.

use std::fmt;

/// The prefix of every weaver unit; `list_loom_units` finds units by it.
pub const UNIT_PREFIX: &str = "loom-weaver-";
/// The suffix of every weaver unit.
pub const UNIT_SUFFIX: &str = ".service";
/// The slice every weaver unit runs in.
pub const LOOM_SLICE: &str = "loom.slice";
/// The journal field (set through `LogExtraFields=`) that carries the weaver id on every line
/// the unit logs, so `journalctl LOOM_WEAVER=ID` finds a weaver's output and the id can be read
/// back from the unit.
pub const WEAVER_FIELD: &str = "LOOM_WEAVER";
/// The longest weaver id (or name) accepted in a unit name.
pub const MAX_ID_LEN: usize = 64;

/// Why a unit name, an id or a spec was refused before anything was sent to systemd.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("invalid weaver id {0:?} for a unit name: use 1 to 64 characters of a-z, A-Z, 0-9, '-' and '_'")]
    Id(String),
    #[error("{0:?} is not a weaver unit: weaver units are named loom-weaver-<id>.service")]
    UnitName(String),
    #[error("the command for weaver {0} is empty: give at least the program to run")]
    EmptyCommand(String),
    #[error(
        "the program {program:?} for weaver {id} is not an absolute path: systemd runs ExecStart= without a search path"
    )]
    RelativeProgram { id: String, program: String },
    #[error("invalid environment entry {entry:?} for weaver {id}: use KEY=VALUE with a non-empty KEY without '='")]
    Env { id: String, entry: String },
    #[error("invalid syslog identifier {0:?}: use 1 to 64 printable characters without spaces")]
    SyslogIdentifier(String),
    #[error("{what} for weaver {id} is zero: give a positive limit or leave it unset")]
    ZeroLimit { id: String, what: &'static str },
    #[error("the {what} for weaver {id} contains a NUL byte")]
    Nul { id: String, what: &'static str },
    #[error("the network namespace of weaver {id} must be an absolute path without NUL bytes, not {path:?}")]
    NetnsPath { id: String, path: String },
}

/// Checks a weaver id for use inside a unit name.
pub fn validate_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(SpecError::Id(id.to_string())) }
}

/// `loom-weaver-<id>.service`.
pub fn unit_name(id: &str) -> Result<String, SpecError> {
    validate_id(id)?;
    Ok(format!("{UNIT_PREFIX}{id}{UNIT_SUFFIX}"))
}

/// The weaver id in a unit name, or an error if the name is not a weaver unit's.
pub fn weaver_id_of_unit(unit: &str) -> Result<&str, SpecError> {
    let id = unit
        .strip_prefix(UNIT_PREFIX)
        .and_then(|rest| rest.strip_suffix(UNIT_SUFFIX))
        .ok_or_else(|| SpecError::UnitName(unit.to_string()))?;
    validate_id(id).map_err(|_| SpecError::UnitName(unit.to_string()))?;
    Ok(id)
}

/// How systemd decides that the service has started, which is when the start job finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// The job is done once the process is forked (`Type=simple`).
    Simple,
    /// The job is done once the main process sends `READY=1` (`Type=notify`).
    /// `systemd-nspawn` sends it once the container's payload runs, so a start that returns
    /// means the weaver's first process is running, and a container that cannot start fails
    /// the job instead of starting and dying.
    #[default]
    Notify,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Simple => "simple",
            ServiceType::Notify => "notify",
        }
    }
}

/// What loomd asks for when it starts a weaver as a transient service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransientServiceSpec {
    /// The weaver id; the unit is `loom-weaver-<id>.service`.
    pub weaver_id: String,
    /// The weaver's name: the unit's `SyslogIdentifier=`, so its output is `journalctl -t NAME`.
    pub weaver_name: String,
    /// `Description=`; empty means "loom weaver NAME (ID)".
    pub description: String,
    /// The command line, argv[0] an absolute path (loomd passes `systemd-nspawn ... `).
    pub argv: Vec<String>,
    /// `Environment=` of the service (of `systemd-nspawn`, not of the weaver's payload, which
    /// gets its own through `--setenv`), as `KEY=VALUE`.
    pub environment: Vec<String>,
    /// `MemoryMax=` in bytes.
    pub memory_max: Option<u64>,
    /// `CPUQuotaPerSecUSec=`: microseconds of CPU time per second, 1_000_000 per CPU.
    pub cpu_quota_per_sec_usec: Option<u64>,
    /// `TasksMax=`.
    pub tasks_max: Option<u64>,
    pub service_type: ServiceType,
    /// `RemainAfterExit=`: when true the unit stays loaded after its process exits, so its exit
    /// status can still be read (ActiveState=active, SubState=exited, or failed on a non-zero
    /// exit) until `stop_unit`/`reset_failed` unloads it. When false, a unit that exits cleanly
    /// is garbage-collected at once and reads back as not found.
    pub remain_after_exit: bool,
    /// `NetworkNamespacePath=`: the namespace systemd starts the process in.
    pub network_namespace_path: Option<String>,
}

impl TransientServiceSpec {
    /// A spec with loom's defaults: `Type=notify`, `RemainAfterExit=yes`, no limits.
    pub fn new(weaver_id: impl Into<String>, weaver_name: impl Into<String>, argv: Vec<String>) -> Self {
        TransientServiceSpec {
            weaver_id: weaver_id.into(),
            weaver_name: weaver_name.into(),
            description: String::new(),
            argv,
            environment: Vec::new(),
            memory_max: None,
            cpu_quota_per_sec_usec: None,
            tasks_max: None,
            service_type: ServiceType::default(),
            remain_after_exit: true,
            network_namespace_path: None,
        }
    }

    pub fn unit_name(&self) -> Result<String, SpecError> {
        unit_name(&self.weaver_id)
    }
}

/// A property value, as systemd's D-Bus API types it. Kept independent of zbus so the
/// property list can be compared in tests; the D-Bus implementation converts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    /// `s`
    Str(String),
    /// `b`
    Bool(bool),
    /// `t`
    U64(u64),
    /// `as`
    StrList(Vec<String>),
    /// `aay`
    ByteArrays(Vec<Vec<u8>>),
    /// `a(sasb)`: (path, argv including argv[0], ignore-failure)
    ExecCommands(Vec<(String, Vec<String>, bool)>),
    /// `a(ss)`, e.g. `DeviceAllow=`: (device, access)
    StrPairs(Vec<(String, String)>),
}

/// The properties of `StartTransientUnit` for `spec`, in a stable order.
pub fn service_properties(spec: &TransientServiceSpec) -> Result<Vec<(&'static str, PropValue)>, SpecError> {
    let id = &spec.weaver_id;
    validate_id(id)?;
    validate_syslog_identifier(&spec.weaver_name)?;
    let program = spec.argv.first().ok_or_else(|| SpecError::EmptyCommand(id.clone()))?;
    if !program.starts_with('/') {
        return Err(SpecError::RelativeProgram { id: id.clone(), program: program.clone() });
    }
    if spec.argv.iter().any(|a| a.contains('\0')) {
        return Err(SpecError::Nul { id: id.clone(), what: "command" });
    }
    for entry in &spec.environment {
        let key = entry.split_once('=').map(|(k, _)| k);
        if !matches!(key, Some(k) if !k.is_empty()) || entry.contains('\0') {
            return Err(SpecError::Env { id: id.clone(), entry: entry.clone() });
        }
    }
    if spec.description.contains('\0') {
        return Err(SpecError::Nul { id: id.clone(), what: "description" });
    }
    for (what, v) in [
        ("MemoryMax", spec.memory_max),
        ("CPUQuotaPerSecUSec", spec.cpu_quota_per_sec_usec),
        ("TasksMax", spec.tasks_max),
    ] {
        if v == Some(0) {
            return Err(SpecError::ZeroLimit { id: id.clone(), what });
        }
    }

    let description = if spec.description.is_empty() {
        format!("loom weaver {} ({id})", spec.weaver_name)
    } else {
        spec.description.clone()
    };
    let mut props = vec![
        ("Description", PropValue::Str(description)),
        ("Slice", PropValue::Str(LOOM_SLICE.to_string())),
        ("Type", PropValue::Str(spec.service_type.as_str().to_string())),
        ("RemainAfterExit", PropValue::Bool(spec.remain_after_exit)),
        ("ExecStart", PropValue::ExecCommands(vec![(program.clone(), spec.argv.clone(), false)])),
        // systemd-nspawn manages the cgroup below its unit (payload/ and supervisor/).
        ("Delegate", PropValue::Bool(true)),
        // SIGTERM to systemd-nspawn alone, which shuts the container down; SIGKILL to all
        // that is left when the stop times out.
        ("KillMode", PropValue::Str("mixed".to_string())),
        ("StandardOutput", PropValue::Str("journal".to_string())),
        ("StandardError", PropValue::Str("journal".to_string())),
        ("SyslogIdentifier", PropValue::Str(spec.weaver_name.clone())),
        ("LogExtraFields", PropValue::ByteArrays(vec![format!("{WEAVER_FIELD}={id}").into_bytes()])),
        ("DevicePolicy", PropValue::Str("closed".to_string())),
        (
            "DeviceAllow",
            // Beyond the pseudo devices `DevicePolicy=closed` allows: the terminals.
            PropValue::StrPairs(loom_core::devices::systemd_device_allow()),
        ),
    ];
    if !spec.environment.is_empty() {
        props.push(("Environment", PropValue::StrList(spec.environment.clone())));
    }
    if let Some(v) = spec.memory_max {
        props.push(("MemoryAccounting", PropValue::Bool(true)));
        props.push(("MemoryMax", PropValue::U64(v)));
    }
    if let Some(v) = spec.cpu_quota_per_sec_usec {
        props.push(("CPUAccounting", PropValue::Bool(true)));
        props.push(("CPUQuotaPerSecUSec", PropValue::U64(v)));
    }
    if let Some(v) = spec.tasks_max {
        props.push(("TasksAccounting", PropValue::Bool(true)));
        props.push(("TasksMax", PropValue::U64(v)));
    }
    if let Some(ns) = &spec.network_namespace_path {
        if !ns.starts_with('/') || ns.contains('\0') {
            return Err(SpecError::NetnsPath { id: id.clone(), path: ns.clone() });
        }
        props.push(("NetworkNamespacePath", PropValue::Str(ns.clone())));
    }
    Ok(props)
}

fn validate_syslog_identifier(s: &str) -> Result<(), SpecError> {
    let ok = !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic());
    if ok { Ok(()) } else { Err(SpecError::SyslogIdentifier(s.to_string())) }
}

/// The weaver id carried in a unit's `LogExtraFields`, if any.
pub fn weaver_id_from_extra_fields(fields: &[Vec<u8>]) -> Option<String> {
    fields.iter().find_map(|f| {
        let s = std::str::from_utf8(f).ok()?;
        let id = s.strip_prefix(WEAVER_FIELD)?.strip_prefix('=')?;
        validate_id(id).ok()?;
        Some(id.to_string())
    })
}

/// How the main process of a service ended, from `ExecMainCode` and `ExecMainStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code (`CLD_EXITED`).
    Code(i32),
    /// A signal killed it (`CLD_KILLED`, or `CLD_DUMPED` with `core_dumped`).
    Signal { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    /// The code a shell would report: the exit code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal { signal, .. } => 128 + signal,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signal { signal, core_dumped: false } => write!(f, "killed by signal {signal}"),
            ExitStatus::Signal { signal, core_dumped: true } => write!(f, "killed by signal {signal} (core dumped)"),
        }
    }
}

/// `siginfo_t.si_code` values systemd reports in `ExecMainCode`.
const CLD_EXITED: i32 = 1;
const CLD_KILLED: i32 = 2;
const CLD_DUMPED: i32 = 3;

/// Maps `ExecMainCode`/`ExecMainStatus` to an exit status; `None` while the main process has
/// not ended (code 0) or for a code systemd does not report for a main process.
pub fn exit_status(exec_main_code: i32, exec_main_status: i32) -> Option<ExitStatus> {
    match exec_main_code {
        CLD_EXITED => Some(ExitStatus::Code(exec_main_status)),
        CLD_KILLED => Some(ExitStatus::Signal { signal: exec_main_status, core_dumped: false }),
        CLD_DUMPED => Some(ExitStatus::Signal { signal: exec_main_status, core_dumped: true }),
        _ => None,
    }
}

/// What systemd says about a loaded unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    pub name: String,
    /// `ActiveState`: active, reloading, inactive, failed, activating, deactivating.
    pub active_state: String,
    /// `SubState`, e.g. running, exited, dead, failed, start, stop-sigterm.
    pub sub_state: String,
    /// `Result` of the service: success, exit-code, signal, timeout, oom-kill, ...
    pub result: String,
    /// 0 when there is no main process.
    pub main_pid: u32,
    /// How the main process ended, once it has.
    pub exit: Option<ExitStatus>,
    /// The unit's cgroup path below the cgroup root, e.g. `/loom.slice/loom-weaver-ID.service`;
    /// empty when the unit has none (not running).
    pub control_group: String,
    /// The weaver id from `LogExtraFields`, if set.
    pub weaver_id: Option<String>,
    /// `InvocationID` as 32 hex digits: systemd's id of the unit's current (or last)
    /// activation, different for every run under the same unit name; empty if unknown.
    pub invocation_id: String,
}

/// A weaver's condition as loomd cares about it, folded from a unit's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Being started: the start job has not finished.
    Starting,
    /// The main process runs.
    Running,
    /// Being stopped.
    Stopping,
    /// The main process ended on its own or was stopped; `exit` if known.
    Exited(Option<ExitStatus>),
    /// systemd marked the unit failed (non-zero exit, signal, timeout, OOM kill, start failure).
    Failed(Option<ExitStatus>),
}

impl UnitStatus {
    /// Folds ActiveState/SubState into a [`Phase`].
    pub fn phase(&self) -> Phase {
        match self.active_state.as_str() {
            "failed" => Phase::Failed(self.exit),
            "activating" | "reloading" => Phase::Starting,
            "deactivating" => Phase::Stopping,
            "active" if self.sub_state == "exited" => Phase::Exited(self.exit),
            "active" => Phase::Running,
            // inactive, maintenance, or anything newer systemd invents: not running.
            _ => Phase::Exited(self.exit),
        }
    }
}

/// A weaver unit as `list_loom_units` finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoomUnit {
    pub name: String,
    /// From the unit name.
    pub weaver_id: String,
    pub description: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
}

/// What a started transient service looks like right after its start job finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedUnit {
    pub name: String,
    /// The D-Bus path of the start job.
    pub job: String,
    /// 0 if the process already exited (a very short command with `Type=simple`).
    pub main_pid: u32,
    pub control_group: String,
    /// The run's `InvocationID` (see [`UnitStatus::invocation_id`]).
    pub invocation_id: String,
}

/// `InvocationID` (16 bytes) as the 32 hex digits journald shows; empty if not 16 bytes.
pub fn invocation_hex(bytes: &[u8]) -> String {
    if bytes.len() != 16 || bytes.iter().all(|b| *b == 0) {
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TransientServiceSpec {
        TransientServiceSpec::new("0123456789ab", "alpha", vec!["/usr/bin/systemd-nspawn".into(), "--keep-unit".into()])
    }

    #[test]
    fn unit_names_round_trip() {
        assert_eq!(unit_name("0123456789ab").unwrap(), "loom-weaver-0123456789ab.service");
        assert_eq!(weaver_id_of_unit("loom-weaver-0123456789ab.service").unwrap(), "0123456789ab");
        for bad in ["", "a b", "a/b", "a.service", "ü", &"x".repeat(65)] {
            assert_eq!(unit_name(bad), Err(SpecError::Id(bad.to_string())), "{bad:?}");
        }
        for bad in ["loom-weaver-.service", "loom-weaver-x.scope", "other-x.service", "loom-weaver-a.b.service"] {
            assert!(weaver_id_of_unit(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn properties_carry_everything_loomd_asks_for() {
        let mut s = spec();
        s.environment = vec!["A=1".into(), "B=".into()];
        s.memory_max = Some(256 << 20);
        s.cpu_quota_per_sec_usec = Some(1_500_000);
        s.tasks_max = Some(512);
        let props = service_properties(&s).unwrap();
        let get = |k: &str| props.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("Slice"), Some(PropValue::Str("loom.slice".into())));
        assert_eq!(get("Delegate"), Some(PropValue::Bool(true)));
        assert_eq!(get("KillMode"), Some(PropValue::Str("mixed".into())));
        assert_eq!(get("Type"), Some(PropValue::Str("notify".into())));
        assert_eq!(get("RemainAfterExit"), Some(PropValue::Bool(true)));
        assert_eq!(get("MemoryMax"), Some(PropValue::U64(256 << 20)));
        assert_eq!(get("CPUQuotaPerSecUSec"), Some(PropValue::U64(1_500_000)));
        assert_eq!(get("TasksMax"), Some(PropValue::U64(512)));
        assert_eq!(get("StandardOutput"), Some(PropValue::Str("journal".into())));
        assert_eq!(get("StandardError"), Some(PropValue::Str("journal".into())));
        assert_eq!(get("SyslogIdentifier"), Some(PropValue::Str("alpha".into())));
        assert_eq!(get("Description"), Some(PropValue::Str("loom weaver alpha (0123456789ab)".into())));
        assert_eq!(get("Environment"), Some(PropValue::StrList(vec!["A=1".into(), "B=".into()])));
        assert_eq!(get("LogExtraFields"), Some(PropValue::ByteArrays(vec![b"LOOM_WEAVER=0123456789ab".to_vec()])));
        assert_eq!(
            get("ExecStart"),
            Some(PropValue::ExecCommands(vec![(
                "/usr/bin/systemd-nspawn".into(),
                vec!["/usr/bin/systemd-nspawn".into(), "--keep-unit".into()],
                false
            )]))
        );
        // Every property appears once.
        let mut names: Vec<_> = props.iter().map(|(n, _)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), props.len());
    }

    #[test]
    fn unset_limits_are_left_out() {
        let props = service_properties(&spec()).unwrap();
        for absent in ["MemoryMax", "CPUQuotaPerSecUSec", "TasksMax", "Environment"] {
            assert!(props.iter().all(|(n, _)| *n != absent), "{absent}");
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        let check = |f: &dyn Fn(&mut TransientServiceSpec), want: SpecError| {
            let mut s = spec();
            f(&mut s);
            assert_eq!(service_properties(&s), Err(want));
        };
        let id = "0123456789ab".to_string();
        check(&|s| s.argv.clear(), SpecError::EmptyCommand(id.clone()));
        check(
            &|s| s.argv[0] = "systemd-nspawn".into(),
            SpecError::RelativeProgram { id: id.clone(), program: "systemd-nspawn".into() },
        );
        check(&|s| s.environment = vec!["NOVALUE".into()], SpecError::Env { id: id.clone(), entry: "NOVALUE".into() });
        check(&|s| s.environment = vec!["=x".into()], SpecError::Env { id: id.clone(), entry: "=x".into() });
        check(&|s| s.memory_max = Some(0), SpecError::ZeroLimit { id: id.clone(), what: "MemoryMax" });
        check(&|s| s.weaver_name = "has space".into(), SpecError::SyslogIdentifier("has space".into()));
        check(&|s| s.argv.push("a\0b".into()), SpecError::Nul { id: id.clone(), what: "command" });
        check(&|s| s.weaver_id = "../x".into(), SpecError::Id("../x".into()));
    }

    #[test]
    fn exit_status_mapping() {
        let check = |code, status, want: Option<ExitStatus>| {
            assert_eq!(exit_status(code, status), want, "{code}/{status}");
        };
        check(0, 0, None);
        check(1, 0, Some(ExitStatus::Code(0)));
        check(1, 3, Some(ExitStatus::Code(3)));
        check(2, 9, Some(ExitStatus::Signal { signal: 9, core_dumped: false }));
        check(3, 11, Some(ExitStatus::Signal { signal: 11, core_dumped: true }));
        check(4, 0, None);
        check(-1, 0, None);
        assert_eq!(ExitStatus::Code(7).shell_code(), 7);
        assert_eq!(ExitStatus::Signal { signal: 15, core_dumped: false }.shell_code(), 143);
        assert_eq!(ExitStatus::Signal { signal: 9, core_dumped: false }.to_string(), "killed by signal 9");
    }

    #[test]
    fn phases() {
        let st = |a: &str, s: &str, exit| UnitStatus {
            name: "loom-weaver-x.service".into(),
            active_state: a.into(),
            sub_state: s.into(),
            result: String::new(),
            main_pid: 0,
            exit,
            control_group: String::new(),
            weaver_id: None,
            invocation_id: String::new(),
        };
        let ok = Some(ExitStatus::Code(0));
        let bad = Some(ExitStatus::Code(2));
        assert_eq!(st("active", "running", None).phase(), Phase::Running);
        assert_eq!(st("active", "exited", ok).phase(), Phase::Exited(ok));
        assert_eq!(st("failed", "failed", bad).phase(), Phase::Failed(bad));
        assert_eq!(st("activating", "start", None).phase(), Phase::Starting);
        assert_eq!(st("deactivating", "stop-sigterm", None).phase(), Phase::Stopping);
        assert_eq!(st("inactive", "dead", ok).phase(), Phase::Exited(ok));
    }

    #[test]
    fn weaver_id_from_log_extra_fields() {
        assert_eq!(
            weaver_id_from_extra_fields(&[b"OTHER=1".to_vec(), b"LOOM_WEAVER=abc".to_vec()]),
            Some("abc".into())
        );
        assert_eq!(weaver_id_from_extra_fields(&[b"LOOM_WEAVERX=abc".to_vec()]), None);
        assert_eq!(weaver_id_from_extra_fields(&[b"LOOM_WEAVER=a/b".to_vec()]), None);
        assert_eq!(weaver_id_from_extra_fields(&[vec![0xff, 0xfe]]), None);
    }
}
