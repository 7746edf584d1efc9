//! journald's native protocol: pure field encoding plus the datagram sender.
//!
//! A datagram to `/run/systemd/journal/socket` carries `NAME=value\n` per
//! field, or for values with a newline (or any binary) `NAME\n`, the value's
//! length as a little-endian u64, the value, `\n`. Entries too big for one
//! datagram go in a sealed memfd whose descriptor is sent instead.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use crate::event::{AuditEvent, EventDetail, open_flag_names};

/// Why a field name cannot go to journald.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FieldNameError {
    #[error(
        "journal field name {0:?} is invalid: use 1-64 upper-case letters, digits and '_', not starting with a digit or '_'"
    )]
    Invalid(String),
}

/// Whether journald accepts `name` as a user field name.
pub fn valid_field_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && !b[0].is_ascii_digit()
        && b[0] != b'_'
        && b.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// Encode one entry in the native protocol.
pub fn encode_entry<N: AsRef<str>, V: AsRef<[u8]>>(fields: &[(N, V)]) -> Result<Vec<u8>, FieldNameError> {
    let mut out = Vec::new();
    for (name, value) in fields {
        let name = name.as_ref();
        if !valid_field_name(name) {
            return Err(FieldNameError::Invalid(name.to_string()));
        }
        let value = value.as_ref();
        out.extend_from_slice(name.as_bytes());
        if value.contains(&b'\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(value);
        } else {
            out.push(b'=');
            out.extend_from_slice(value);
        }
        out.push(b'\n');
    }
    Ok(out)
}

/// Decode an entry in the native protocol (what journald does on receipt),
/// for tests and for tools that read our datagrams.
pub fn decode_entry(mut buf: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let line_end = buf.iter().position(|&b| b == b'\n')?;
        let line = &buf[..line_end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((String::from_utf8(line[..eq].to_vec()).ok()?, line[eq + 1..].to_vec()));
            buf = &buf[line_end + 1..];
        } else {
            let name = String::from_utf8(line.to_vec()).ok()?;
            let rest = &buf[line_end + 1..];
            let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
            let value = rest.get(8..8usize.checked_add(len)?)?.to_vec();
            if rest.get(8 + len) != Some(&b'\n') {
                return None;
            }
            fields.push((name, value));
            buf = &rest[8 + len + 1..];
        }
    }
    Some(fields)
}

/// Quote an argument the way a POSIX shell would need it, only when needed.
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b)) {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', "'\\''"))
}

/// The journald fields of an audit event: `SYSLOG_IDENTIFIER=loom-audit`, the
/// kind's `MESSAGE_ID`, a human `MESSAGE` and the `LOOM_*` fields.
pub fn event_fields(ev: &AuditEvent) -> Vec<(&'static str, String)> {
    let kind = ev.kind();
    let mut f: Vec<(&'static str, String)> = vec![
        ("SYSLOG_IDENTIFIER", "loom-audit".into()),
        ("MESSAGE_ID", kind.message_id().into()),
        ("PRIORITY", "6".into()),
        ("LOOM_WEAVER", ev.weaver.clone()),
        ("LOOM_EVENT", kind.as_str().into()),
        ("LOOM_SYSCALL", ev.syscall.clone()),
        ("LOOM_SEQ", ev.seq.to_string()),
        ("LOOM_KTIME_NS", ev.ts_boot_ns.to_string()),
        ("LOOM_TIME_UNIX_NS", ev.time_unix_ns.to_string()),
        ("LOOM_CGROUP_ID", ev.cgroup_id.to_string()),
        ("LOOM_PID", ev.pid.to_string()),
        ("LOOM_TID", ev.tid.to_string()),
        ("LOOM_PPID", ev.ppid.to_string()),
        ("LOOM_UID", ev.uid.to_string()),
        ("LOOM_GID", ev.gid.to_string()),
        ("LOOM_EUID", ev.euid.to_string()),
        ("LOOM_COMM", ev.comm.clone()),
    ];
    let message = match &ev.detail {
        EventDetail::Exec { path, argv, path_truncated, argv_truncated, old_pid } => {
            let line = argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
            f.push(("LOOM_PATH", path.clone()));
            f.push(("LOOM_ARGV", line.clone()));
            f.push(("LOOM_ARGC", argv.len().to_string()));
            f.push(("LOOM_OLD_PID", old_pid.to_string()));
            if *path_truncated {
                f.push(("LOOM_PATH_TRUNCATED", "1".into()));
            }
            if *argv_truncated {
                f.push(("LOOM_ARGV_TRUNCATED", "1".into()));
            }
            format!("exec {path}: {line}{}", if *argv_truncated { " …" } else { "" })
        }
        EventDetail::Exit { exit_code, signal, core_dumped } => {
            if let Some(c) = exit_code {
                f.push(("LOOM_EXIT_CODE", c.to_string()));
            }
            if let Some(s) = signal {
                f.push(("LOOM_SIGNAL", s.to_string()));
            }
            if *core_dumped {
                f.push(("LOOM_CORE_DUMPED", "1".into()));
            }
            match (exit_code, signal) {
                (_, Some(s)) => format!("exit {} killed by signal {s}", ev.comm),
                (Some(c), _) => format!("exit {} status {c}", ev.comm),
                _ => format!("exit {}", ev.comm),
            }
        }
        EventDetail::Open { path, path_truncated, dirfd, flags, mode } => {
            let names = open_flag_names(*flags);
            f.push(("LOOM_PATH", path.clone()));
            f.push(("LOOM_FLAGS", names.clone()));
            f.push(("LOOM_FLAGS_RAW", format!("{flags:#o}")));
            f.push(("LOOM_MODE", format!("{mode:#o}")));
            f.push(("LOOM_DIRFD", dirfd.to_string()));
            if *path_truncated {
                f.push(("LOOM_PATH_TRUNCATED", "1".into()));
            }
            format!("open {path} {names}")
        }
        EventDetail::Unlink { path, path_truncated, dirfd, flags } => {
            f.push(("LOOM_PATH", path.clone()));
            f.push(("LOOM_DIRFD", dirfd.to_string()));
            f.push(("LOOM_FLAGS_RAW", format!("{flags:#x}")));
            if *path_truncated {
                f.push(("LOOM_PATH_TRUNCATED", "1".into()));
            }
            format!("{} {path}", ev.syscall)
        }
        EventDetail::Rename { path, new_path, path_truncated, olddirfd, newdirfd, flags } => {
            f.push(("LOOM_PATH", path.clone()));
            f.push(("LOOM_NEW_PATH", new_path.clone()));
            f.push(("LOOM_DIRFD", olddirfd.to_string()));
            f.push(("LOOM_NEW_DIRFD", newdirfd.to_string()));
            f.push(("LOOM_FLAGS_RAW", format!("{flags:#x}")));
            if *path_truncated {
                f.push(("LOOM_PATH_TRUNCATED", "1".into()));
            }
            format!("rename {path} -> {new_path}")
        }
        EventDetail::Connect(n) | EventDetail::Bind(n) => {
            let connect = matches!(ev.detail, EventDetail::Connect(_));
            let (addr_key, port_key) =
                if connect { ("LOOM_DADDR", "LOOM_DPORT") } else { ("LOOM_LADDR", "LOOM_LPORT") };
            f.push(("LOOM_FD", n.fd.to_string()));
            f.push(("LOOM_FAMILY", n.family.clone()));
            if let Some(a) = &n.addr {
                f.push((addr_key, a.clone()));
            }
            if let Some(p) = n.port {
                f.push((port_key, p.to_string()));
            }
            if let Some(p) = &n.unix_path {
                f.push(("LOOM_PATH", p.clone()));
            }
            let target = match (&n.addr, n.port, &n.unix_path) {
                (Some(a), Some(p), _) if a.contains(':') => format!("[{a}]:{p}"),
                (Some(a), Some(p), _) => format!("{a}:{p}"),
                (_, _, Some(u)) => format!("unix:{u}"),
                _ => n.family.clone(),
            };
            format!("{} {target}", kind.as_str())
        }
        EventDetail::Listen { fd, backlog } => {
            f.push(("LOOM_FD", fd.to_string()));
            f.push(("LOOM_BACKLOG", backlog.to_string()));
            format!("listen fd {fd}")
        }
        EventDetail::Setuid { ids } => {
            let ids = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(" ");
            f.push(("LOOM_IDS", ids.clone()));
            f[2].1 = "5".into();
            format!("{} {ids}", ev.syscall)
        }
        EventDetail::Ptrace { request, request_name, target_pid, addr } => {
            let name = request_name.clone().unwrap_or_else(|| request.to_string());
            f.push(("LOOM_REQUEST", name.clone()));
            f.push(("LOOM_TARGET_PID", target_pid.to_string()));
            f.push(("LOOM_ADDR", format!("{addr:#x}")));
            f[2].1 = "5".into();
            format!("ptrace {name} pid {target_pid}")
        }
        EventDetail::Mount { source, path, fstype, flags, truncated } => {
            f.push(("LOOM_SOURCE", source.clone()));
            f.push(("LOOM_PATH", path.clone()));
            f.push(("LOOM_FSTYPE", fstype.clone()));
            f.push(("LOOM_FLAGS_RAW", format!("{flags:#x}")));
            if *truncated {
                f.push(("LOOM_PATH_TRUNCATED", "1".into()));
            }
            f[2].1 = "5".into();
            format!("{} {source} on {path} type {fstype}", ev.syscall)
        }
        EventDetail::Umount { path, path_truncated, flags } => {
            f.push(("LOOM_PATH", path.clone()));
            f.push(("LOOM_FLAGS_RAW", format!("{flags:#x}")));
            if *path_truncated {
                f.push(("LOOM_PATH_TRUNCATED", "1".into()));
            }
            f[2].1 = "5".into();
            format!("umount {path}")
        }
        EventDetail::Unshare { flags, namespaces } => {
            f.push(("LOOM_FLAGS_RAW", format!("{flags:#x}")));
            f.push(("LOOM_NAMESPACES", namespaces.join(",")));
            format!("unshare {}", namespaces.join(","))
        }
        EventDetail::Setns { fd, nstype, namespaces } => {
            f.push(("LOOM_FD", fd.to_string()));
            f.push(("LOOM_FLAGS_RAW", format!("{nstype:#x}")));
            f.push(("LOOM_NAMESPACES", namespaces.join(",")));
            format!("setns fd {fd} {}", namespaces.join(","))
        }
        EventDetail::Bpf { cmd, cmd_name, size } => {
            let name = cmd_name.clone().unwrap_or_else(|| cmd.to_string());
            f.push(("LOOM_BPF_CMD", name.clone()));
            f.push(("LOOM_SIZE", size.to_string()));
            f[2].1 = "5".into();
            format!("bpf {name}")
        }
        EventDetail::Denied { errno, errno_name } => {
            let name = errno_name.clone().unwrap_or_else(|| errno.to_string());
            f.push(("LOOM_ERRNO", name.clone()));
            f[2].1 = "4".into();
            format!("{} refused: {name}", ev.syscall)
        }
        EventDetail::NetDeny { hook, destination, protocol, reason, rules } => {
            f.push(("LOOM_HOOK", hook.clone()));
            f.push(("LOOM_DESTINATION", destination.clone()));
            f.push(("LOOM_PROTOCOL", protocol.clone()));
            f.push(("LOOM_REASON", reason.clone()));
            f.push(("LOOM_EGRESS_RULES", rules.clone()));
            f[2].1 = "4".into();
            format!("{protocol} {hook} to {destination} refused by the egress policy ({reason})")
        }
        EventDetail::Module { name, params, fd, len, flags } => {
            if let Some(n) = name {
                f.push(("LOOM_MODULE", n.clone()));
            }
            if let Some(p) = params {
                f.push(("LOOM_PARAMS", p.clone()));
            }
            if let Some(fd) = fd {
                f.push(("LOOM_FD", fd.to_string()));
            }
            if let Some(l) = len {
                f.push(("LOOM_SIZE", l.to_string()));
            }
            f.push(("LOOM_FLAGS_RAW", format!("{flags:#x}")));
            f[2].1 = "4".into();
            format!("{} {}", ev.syscall, name.as_deref().unwrap_or(""))
        }
    };
    f.push(("MESSAGE", format!("weaver {}: {} pid {}: {message}", ev.weaver, ev.comm, ev.pid)));
    f
}

/// Why an entry could not be sent to journald.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot create a datagram socket for journald")]
    Socket(#[source] std::io::Error),
    #[error("cannot send an entry to journald at {path}; is systemd-journald running?")]
    Send {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot pass a large entry to journald at {path} through a memfd")]
    Memfd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Field(#[from] FieldNameError),
}

/// A client of journald's native socket.
#[derive(Debug)]
pub struct JournalClient {
    socket: UnixDatagram,
    path: PathBuf,
}

impl JournalClient {
    pub const DEFAULT_SOCKET: &'static str = "/run/systemd/journal/socket";

    pub fn new(path: &Path) -> Result<Self, JournalError> {
        let socket = UnixDatagram::unbound().map_err(JournalError::Socket)?;
        Ok(Self { socket, path: path.to_path_buf() })
    }

    /// Send one encoded entry; falls back to a memfd when the datagram is too big.
    pub fn send_encoded(&self, data: &[u8]) -> Result<(), JournalError> {
        match self.socket.send_to(data, &self.path) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE) | Some(libc::ENOBUFS)) => {
                self.send_memfd(data).map_err(|source| JournalError::Memfd { path: self.path.clone(), source })
            }
            Err(source) => Err(JournalError::Send { path: self.path.clone(), source }),
        }
    }

    pub fn send(&self, ev: &AuditEvent) -> Result<(), JournalError> {
        let data = encode_entry(&event_fields(ev))?;
        self.send_encoded(&data)
    }

    fn send_memfd(&self, data: &[u8]) -> std::io::Result<()> {
        // SAFETY: the name is a valid NUL-terminated string; the flags are constants.
        let fd =
            unsafe { libc::memfd_create(c"loom-audit-journal".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut file = std::fs::File::from(fd);
        file.write_all(data)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on a descriptor we own, with an integer argument.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        send_fd(&self.socket, &self.path, file.as_raw_fd())
    }
}

/// Send `fd` with SCM_RIGHTS and an empty payload to the socket at `path`.
fn send_fd(socket: &UnixDatagram, path: &Path, fd: i32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let p = path.as_os_str().as_bytes();
    if p.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "journal socket path too long"));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(p) {
        *d = *s as libc::c_char;
    }
    let space = {
        // SAFETY: CMSG_SPACE is a pure computation on a constant size.
        unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize }
    };
    let mut cmsg_buf = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; zeroed is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut addr).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as u32;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at a buffer of CMSG_SPACE(sizeof(int)) bytes,
    // so the first header and its data fit; we write exactly one int.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
    }
    // SAFETY: msg and everything it points to live until sendmsg returns.
    let r = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(fields: &[(&str, &[u8])], expected: &[u8]) {
        let got = encode_entry(fields).unwrap();
        assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(&got));
        let back = decode_entry(&got).unwrap();
        let want: Vec<(String, Vec<u8>)> = fields.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        assert_eq!(back, want);
    }

    #[test]
    fn simple_values_use_the_equals_form() {
        check(&[("MESSAGE", b"hi there"), ("LOOM_PID", b"12")], b"MESSAGE=hi there\nLOOM_PID=12\n");
        check(&[("EMPTY", b"")], b"EMPTY=\n");
    }

    #[test]
    fn values_with_newlines_use_the_binary_length_form() {
        let mut want = b"LOOM_ARGV\n".to_vec();
        want.extend_from_slice(&5u64.to_le_bytes());
        want.extend_from_slice(b"a\nb=c\nX=1\n");
        check(&[("LOOM_ARGV", b"a\nb=c"), ("X", b"1")], &want);
        // binary data with NUL and newline survives
        let blob: &[u8] = &[0, 10, 255, 61, 10];
        let got = encode_entry(&[("B", blob)]).unwrap();
        assert_eq!(decode_entry(&got).unwrap()[0].1, blob);
    }

    #[test]
    fn invalid_field_names_are_rejected() {
        for bad in ["", "lower", "_TRUSTED", "1ABC", "A-B", "A=B", &"A".repeat(65)] {
            let err = encode_entry(&[(bad, b"x")]).unwrap_err();
            assert!(err.to_string().contains("invalid"), "{bad}: {err}");
        }
        assert!(valid_field_name("LOOM_DADDR"));
    }

    #[test]
    fn shell_quote_only_when_needed() {
        assert_eq!(shell_quote("/bin/echo"), "/bin/echo");
        assert_eq!(shell_quote("hello world"), "'hello world'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn event_fields_are_all_valid_names_and_carry_the_contract() {
        use crate::event::{AuditEvent, EventDetail, NetDetail};
        let base = AuditEvent {
            seq: 1,
            ts_boot_ns: 2,
            time_unix_ns: 3,
            weaver: "w1".into(),
            cgroup_id: 9,
            syscall: "connect".into(),
            pid: 5,
            tid: 5,
            ppid: 4,
            uid: 0,
            gid: 0,
            euid: 0,
            comm: "curl".into(),
            detail: EventDetail::Connect(NetDetail {
                fd: 3,
                family: "inet".into(),
                addr: Some("10.0.0.1".into()),
                port: Some(443),
                unix_path: None,
            }),
        };
        let f = event_fields(&base);
        let get = |k: &str| f.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("SYSLOG_IDENTIFIER"), Some("loom-audit"));
        assert_eq!(get("LOOM_WEAVER"), Some("w1"));
        assert_eq!(get("LOOM_EVENT"), Some("connect"));
        assert_eq!(get("LOOM_DADDR"), Some("10.0.0.1"));
        assert_eq!(get("LOOM_DPORT"), Some("443"));
        assert_eq!(get("MESSAGE_ID"), Some("32c5d164369b4890b496f9321a9b7199"));
        encode_entry(&f).unwrap();

        let exec = AuditEvent {
            syscall: "execve".into(),
            detail: EventDetail::Exec {
                path: "/bin/sh".into(),
                argv: vec!["sh".into(), "-c".into(), "echo a\necho b".into()],
                path_truncated: false,
                argv_truncated: false,
                old_pid: 5,
            },
            ..base
        };
        let f = event_fields(&exec);
        let data = encode_entry(&f).unwrap();
        let back = decode_entry(&data).unwrap();
        let argv = back.iter().find(|(n, _)| n == "LOOM_ARGV").unwrap();
        assert_eq!(argv.1, b"sh -c 'echo a\necho b'");
    }

    #[test]
    fn big_entries_go_through_a_memfd() {
        // A real datagram socket standing in for journald: receives the
        // descriptor and reads the entry back from it.
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let client = JournalClient::new(&path).unwrap();
        let big = "x".repeat(1 << 20);
        let data = encode_entry(&[("MESSAGE", big.as_bytes())]).unwrap();
        let sender = std::thread::spawn(move || client.send_encoded(&data));
        let fd = recv_fd(&server);
        sender.join().unwrap().unwrap();
        let mut f = std::fs::File::from(fd);
        // journald reads the memfd from offset 0; ours still points at the end
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).unwrap();
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        let fields = decode_entry(&got).unwrap();
        assert_eq!(fields[0].1.len(), 1 << 20);
    }

    fn recv_fd(sock: &UnixDatagram) -> OwnedFd {
        let mut buf = [0u8; 16];
        let mut cmsg = [0u64; 8];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: zeroed msghdr is valid; pointers set below outlive recvmsg.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
        // SAFETY: msg is fully initialised and its buffers are live.
        let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
        assert!(r >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: the kernel filled the control buffer; we read the first header's int.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            assert!(!c.is_null());
            assert_eq!((*c).cmsg_type, libc::SCM_RIGHTS);
            OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>()))
        }
    }
}
