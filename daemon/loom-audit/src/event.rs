//! Decoded audit events and the pure decoder from ring-buffer records.
//!
//! An event keeps the kernel timestamp (CLOCK_BOOTTIME), the wall time derived
//! from it, the pid, tid and ppid, so a later consumer can join events to the
//! agent tool call (a process subtree within a time window) that caused them.

use serde::{Deserialize, Serialize};

use crate::layout::kind;

/// What kind of thing a weaver did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Exec,
    Exit,
    Open,
    Unlink,
    Rename,
    Connect,
    Bind,
    Listen,
    /// The whole set*id family (setuid, setresgid, setgroups, …).
    Setuid,
    Ptrace,
    Mount,
    Umount,
    Unshare,
    Setns,
    Bpf,
    Module,
    /// A privileged syscall refused (by the weaver's seccomp filter or the kernel).
    Denied,
    /// A connection, datagram or name lookup the weaver's egress policy refused.
    NetDeny,
}

impl EventKind {
    pub const ALL: [EventKind; 18] = [
        EventKind::Exec,
        EventKind::Exit,
        EventKind::Open,
        EventKind::Unlink,
        EventKind::Rename,
        EventKind::Connect,
        EventKind::Bind,
        EventKind::Listen,
        EventKind::Setuid,
        EventKind::Ptrace,
        EventKind::Mount,
        EventKind::Umount,
        EventKind::Unshare,
        EventKind::Setns,
        EventKind::Bpf,
        EventKind::Module,
        EventKind::Denied,
        EventKind::NetDeny,
    ];

    /// The name used in `LOOM_EVENT`, the index and `--kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Exec => "exec",
            EventKind::Exit => "exit",
            EventKind::Open => "open",
            EventKind::Unlink => "unlink",
            EventKind::Rename => "rename",
            EventKind::Connect => "connect",
            EventKind::Bind => "bind",
            EventKind::Listen => "listen",
            EventKind::Setuid => "setuid",
            EventKind::Ptrace => "ptrace",
            EventKind::Mount => "mount",
            EventKind::Umount => "umount",
            EventKind::Unshare => "unshare",
            EventKind::Setns => "setns",
            EventKind::Bpf => "bpf",
            EventKind::Module => "module",
            EventKind::Denied => "denied",
            EventKind::NetDeny => "net_deny",
        }
    }

    /// Parse a `--kind` argument.
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The journald `MESSAGE_ID` of this kind; fixed forever.
    pub fn message_id(self) -> &'static str {
        match self {
            EventKind::Exec => "f5ff1ffaecae4072bab3924c1b95eded",
            EventKind::Exit => "37648ddec9af4efbb797f79a81ee202d",
            EventKind::Open => "a50cb18fd89b4126a20a4948f9a43bf9",
            EventKind::Unlink => "798aae5dd1b742519db3d95c7b68c70c",
            EventKind::Rename => "5432d0948d23470e9444a4fe406203cf",
            EventKind::Connect => "32c5d164369b4890b496f9321a9b7199",
            EventKind::Bind => "b1fe725d27c94a329a456f89e5102207",
            EventKind::Listen => "6bb2ddfb5d0240d2a2e5ab4e1b78a573",
            EventKind::Setuid => "912c310c0aa84baca0ac5046f331be70",
            EventKind::Ptrace => "560ba3581ea64b239880d32698dcebdd",
            EventKind::Mount => "e891688beb66439da18999ecf98a803a",
            EventKind::Umount => "1503995193c142a8a9016004c4b09124",
            EventKind::Unshare => "a3adde977dde4b5fa31266adde227eb7",
            EventKind::Setns => "886172c32be74e5a8f9653da61fcb8a1",
            EventKind::Bpf => "04d94e51171d4b059e1b200fc8844d08",
            EventKind::Module => "c67ff33496fc4ff3a36448d6d9e0118a",
            EventKind::Denied => "5c1f0e6ad4b84b9c8e0a63d2f7a91e07",
            EventKind::NetDeny => "f39880e5bef44dcb974c33d740b84aa0",
        }
    }

    /// The kernel's `enum loom_kind` value.
    pub fn raw(self) -> u32 {
        match self {
            EventKind::Exec => kind::EXEC,
            EventKind::Exit => kind::EXIT,
            EventKind::Open => kind::OPEN,
            EventKind::Unlink => kind::UNLINK,
            EventKind::Rename => kind::RENAME,
            EventKind::Connect => kind::CONNECT,
            EventKind::Bind => kind::BIND,
            EventKind::Listen => kind::LISTEN,
            EventKind::Setuid => kind::SETID,
            EventKind::Ptrace => kind::PTRACE,
            EventKind::Mount => kind::MOUNT,
            EventKind::Umount => kind::UMOUNT,
            EventKind::Unshare => kind::UNSHARE,
            EventKind::Setns => kind::SETNS,
            EventKind::Bpf => kind::BPF,
            EventKind::Module => kind::MODULE,
            EventKind::Denied => kind::DENIED,
            EventKind::NetDeny => kind::NET_DENY,
        }
    }

    /// From the kernel's `enum loom_kind` value.
    pub fn from_raw(raw: u32) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.raw() == raw)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing a process inside a weaver did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Kernel sequence number; a gap means events were lost (see `AuditStats`).
    pub seq: u64,
    /// Kernel timestamp, CLOCK_BOOTTIME nanoseconds.
    pub ts_boot_ns: u64,
    /// Wall-clock time derived from `ts_boot_ns`, nanoseconds since the epoch.
    pub time_unix_ns: u64,
    /// The weaver id given to `Audit::watch`.
    pub weaver: String,
    /// The weaver's cgroup id (the watched cgroup, not a sub-cgroup).
    pub cgroup_id: u64,
    /// The syscall (or `execve`/`exit` for the sched events).
    pub syscall: String,
    /// Thread group id.
    pub pid: u32,
    pub tid: u32,
    /// Parent's thread group id.
    pub ppid: u32,
    /// Real uid/gid and effective uid, as seen from the host.
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub detail: EventDetail,
}

impl AuditEvent {
    /// An event of `weaver`'s: `syscall` and `detail`, with every other field zero or empty
    /// (pid and tid 1), for who builds events rather than decodes them.
    pub fn new(weaver: impl Into<String>, syscall: impl Into<String>, detail: EventDetail) -> Self {
        AuditEvent {
            seq: 0,
            ts_boot_ns: 0,
            time_unix_ns: 0,
            weaver: weaver.into(),
            cgroup_id: 0,
            syscall: syscall.into(),
            pid: 1,
            tid: 1,
            ppid: 0,
            uid: 0,
            gid: 0,
            euid: 0,
            comm: String::new(),
            detail,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self.detail {
            EventDetail::Exec { .. } => EventKind::Exec,
            EventDetail::Exit { .. } => EventKind::Exit,
            EventDetail::Open { .. } => EventKind::Open,
            EventDetail::Unlink { .. } => EventKind::Unlink,
            EventDetail::Rename { .. } => EventKind::Rename,
            EventDetail::Connect(_) => EventKind::Connect,
            EventDetail::Bind(_) => EventKind::Bind,
            EventDetail::Listen { .. } => EventKind::Listen,
            EventDetail::Setuid { .. } => EventKind::Setuid,
            EventDetail::Ptrace { .. } => EventKind::Ptrace,
            EventDetail::Mount { .. } => EventKind::Mount,
            EventDetail::Umount { .. } => EventKind::Umount,
            EventDetail::Unshare { .. } => EventKind::Unshare,
            EventDetail::Setns { .. } => EventKind::Setns,
            EventDetail::Bpf { .. } => EventKind::Bpf,
            EventDetail::Module { .. } => EventKind::Module,
            EventDetail::Denied { .. } => EventKind::Denied,
            EventDetail::NetDeny { .. } => EventKind::NetDeny,
        }
    }
}

/// A socket address as the caller passed it to connect/bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDetail {
    pub fd: i32,
    /// `inet`, `inet6`, `unix` or `af<N>`.
    pub family: String,
    pub addr: Option<String>,
    pub port: Option<u16>,
    /// Unix socket path; abstract names start with `@`.
    pub unix_path: Option<String>,
}

/// The kind-specific part of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventDetail {
    Exec {
        path: String,
        argv: Vec<String>,
        path_truncated: bool,
        argv_truncated: bool,
        /// The tid that called execve (differs from pid when a thread did).
        old_pid: u32,
    },
    Exit {
        /// Exit status when the process exited normally.
        exit_code: Option<i32>,
        /// Terminating signal when it was killed.
        signal: Option<i32>,
        core_dumped: bool,
    },
    Open {
        path: String,
        path_truncated: bool,
        /// -100 (AT_FDCWD) when the path is relative to the working directory.
        dirfd: i32,
        flags: u64,
        mode: u32,
    },
    Unlink {
        path: String,
        path_truncated: bool,
        dirfd: i32,
        flags: u64,
    },
    Rename {
        path: String,
        new_path: String,
        path_truncated: bool,
        olddirfd: i32,
        newdirfd: i32,
        flags: u64,
    },
    Connect(NetDetail),
    Bind(NetDetail),
    Listen {
        fd: i32,
        backlog: i32,
    },
    /// The ids as passed (-1: unchanged); for setgroups, the group count.
    Setuid {
        ids: Vec<i64>,
    },
    Ptrace {
        request: i64,
        request_name: Option<String>,
        target_pid: i32,
        addr: u64,
    },
    Mount {
        /// Source (mount) or the moved mount's path (move_mount).
        source: String,
        /// Mount point.
        path: String,
        fstype: String,
        flags: u64,
        truncated: bool,
    },
    Umount {
        path: String,
        path_truncated: bool,
        flags: u64,
    },
    Unshare {
        flags: u64,
        namespaces: Vec<String>,
    },
    Setns {
        fd: i32,
        nstype: u64,
        namespaces: Vec<String>,
    },
    Bpf {
        cmd: i64,
        cmd_name: Option<String>,
        size: u64,
    },
    Module {
        /// Module name (delete_module).
        name: Option<String>,
        /// Parameter string (init_module, finit_module).
        params: Option<String>,
        /// finit_module's file descriptor.
        fd: Option<i32>,
        /// init_module's image length.
        len: Option<u64>,
        flags: u64,
    },
    /// The syscall (in `syscall`) was refused with this errno.
    Denied {
        errno: i64,
        errno_name: Option<String>,
    },
    /// Refused by the weaver's egress policy: a connect or send (`connect`, `sendmsg`) to an
    /// address, or a DNS question (`dns`) for a name.
    NetDeny {
        hook: String,
        /// `ADDRESS:PORT`, or the name asked for.
        destination: String,
        protocol: String,
        /// Why: `no_rule`, `metadata`, `protocol`, `name_not_allowed`.
        reason: String,
        /// The weaver's rule set at that moment, as `loom weaver egress ID list` prints it.
        rules: String,
    },
}

// The decoder and the kernel's names live beside the types; their old paths stay.
pub use crate::decode::{DecodeError, decode, split_argv};
pub use crate::names::{
    bpf_cmd_name, bytes_to_text, clean_dots, namespace_names, open_flag_names, ptrace_request_name,
};
