//! The pure decoder from ring-buffer records (the layouts in [`crate::layout`]) to
//! [`AuditEvent`]s.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::event::{AuditEvent, EventDetail, EventKind, NetDetail};
use crate::layout::{self};
use crate::names::{bpf_cmd_name, bytes_to_text, clean_dots, namespace_names, ptrace_request_name};

/// A ring-buffer record that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(
        "audit record of {len} bytes is shorter than the {need} bytes its kind {kind} needs; \
         the kernel programs and loom-audit disagree on the layout: rebuild ebpf/ and the crate from one commit"
    )]
    TooShort { kind: u32, len: usize, need: usize },
    #[error("audit record has unknown kind {0}; the kernel programs are newer than loom-audit")]
    UnknownKind(u32),
}

/// A NUL-terminated string of at most `len` bytes (the kernel's copied length) in `buf`.
fn cstr(buf: &[u8], len: u32) -> String {
    let n = (len as usize).min(buf.len());
    let s = &buf[..n];
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    bytes_to_text(&s[..end])
}

fn truncated(len: u32, cap: usize) -> bool {
    len as usize >= cap
}

/// Split the NUL-separated argument area of a new image.
pub fn split_argv(area: &[u8]) -> Vec<String> {
    let area = area.strip_suffix(&[0]).unwrap_or(area);
    if area.is_empty() {
        return Vec::new();
    }
    area.split(|&b| b == 0).map(bytes_to_text).collect()
}

fn net_detail(e: &layout::EvNet) -> NetDetail {
    let (family, addr, port, unix_path) = match e.family {
        2 => (
            "inet".to_string(),
            Some(Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]).to_string()),
            Some(e.port),
            None,
        ),
        10 => {
            let ip = Ipv6Addr::from(e.addr);
            let text = if e.scope_id != 0 { format!("{ip}%{}", e.scope_id) } else { ip.to_string() };
            ("inet6".to_string(), Some(text), Some(e.port), None)
        }
        1 => {
            let n = (e.addrlen as usize).saturating_sub(2).min(layout::UNIX_PATH_LEN);
            let raw = &e.unix_path[..n];
            let path = match raw.first() {
                Some(0) => {
                    let name = &raw[1..];
                    let end = name.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                    format!("@{}", bytes_to_text(&name[..end]))
                }
                _ => {
                    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                    bytes_to_text(&raw[..end])
                }
            };
            ("unix".to_string(), None, None, Some(path))
        }
        f => (format!("af{f}"), None, None, None),
    };
    NetDetail { fd: e.fd, family, addr, port, unix_path }
}

fn need<T: layout::Pod>(buf: &[u8], kind: u32) -> Result<T, DecodeError> {
    layout::read::<T>(buf).ok_or(DecodeError::TooShort { kind, len: buf.len(), need: std::mem::size_of::<T>() })
}

/// Decode one ring-buffer record. `weaver` maps a cgroup id to its weaver id;
/// `boot_to_unix_ns` is CLOCK_REALTIME minus CLOCK_BOOTTIME.
pub fn decode(buf: &[u8], weaver: impl Fn(u64) -> String, boot_to_unix_ns: i64) -> Result<AuditEvent, DecodeError> {
    let hdr: layout::Hdr = need(buf, 0)?;
    let k = EventKind::from_raw(hdr.kind).ok_or(DecodeError::UnknownKind(hdr.kind))?;
    let raw = hdr.kind;
    let detail = match k {
        // loomd's own kind: a record claiming it came from a watched process, not from loomd.
        EventKind::NetDeny => return Err(DecodeError::UnknownKind(raw)),
        EventKind::Exec => {
            let e: layout::EvExec = need(buf, raw)?;
            let n = (e.argv_len as usize).min(layout::EXEC_ARGV_LEN);
            EventDetail::Exec {
                path: clean_dots(cstr(&e.filename, e.filename_len)),
                argv: split_argv(&e.argv[..n]),
                path_truncated: e.flags & layout::EXEC_FILENAME_TRUNCATED != 0,
                argv_truncated: e.flags & layout::EXEC_ARGV_TRUNCATED != 0,
                old_pid: e.old_pid,
            }
        }
        EventKind::Connect | EventKind::Bind => {
            let e: layout::EvNet = need(buf, raw)?;
            let d = net_detail(&e);
            if k == EventKind::Connect { EventDetail::Connect(d) } else { EventDetail::Bind(d) }
        }
        EventKind::Open | EventKind::Unlink | EventKind::Umount | EventKind::Module => {
            let e: layout::EvPath = need(buf, raw)?;
            let path = clean_dots(cstr(&e.path, e.path_len));
            let path_truncated = truncated(e.path_len, layout::PATH_LEN);
            let a = e.args;
            match k {
                EventKind::Open => EventDetail::Open {
                    path,
                    path_truncated,
                    dirfd: a[0] as i32,
                    flags: a[1] as u64,
                    mode: a[2] as u32,
                },
                EventKind::Unlink => {
                    EventDetail::Unlink { path, path_truncated, dirfd: a[0] as i32, flags: a[1] as u64 }
                }
                EventKind::Umount => EventDetail::Umount { path, path_truncated, flags: a[0] as u64 },
                _ => {
                    let delete = hdr.op == 32;
                    let init = hdr.op == 30;
                    EventDetail::Module {
                        name: delete.then(|| path.clone()),
                        params: (!delete).then_some(path),
                        fd: (hdr.op == 31).then_some(a[0] as i32),
                        len: init.then_some(a[1] as u64),
                        flags: if init { 0 } else { a[1] as u64 },
                    }
                }
            }
        }
        EventKind::Rename | EventKind::Mount => {
            let e: layout::EvPath2 = need(buf, raw)?;
            let path = clean_dots(cstr(&e.path, e.path_len));
            let path2 = clean_dots(cstr(&e.path2, e.path2_len));
            let trunc = truncated(e.path_len, layout::PATH_LEN) || truncated(e.path2_len, layout::PATH_LEN);
            let a = e.args;
            if k == EventKind::Rename {
                EventDetail::Rename {
                    path,
                    new_path: path2,
                    path_truncated: trunc,
                    olddirfd: a[0] as i32,
                    newdirfd: a[1] as i32,
                    flags: a[2] as u64,
                }
            } else {
                let move_mount = hdr.op == 33;
                EventDetail::Mount {
                    source: path,
                    path: path2,
                    fstype: cstr(&e.aux, e.aux_len),
                    flags: if move_mount { a[2] as u64 } else { a[0] as u64 },
                    truncated: trunc,
                }
            }
        }
        EventKind::Exit
        | EventKind::Listen
        | EventKind::Setuid
        | EventKind::Ptrace
        | EventKind::Unshare
        | EventKind::Setns
        | EventKind::Bpf
        | EventKind::Denied => {
            let e: layout::EvArgs = need(buf, raw)?;
            let a = e.args;
            match k {
                EventKind::Exit => {
                    let status = a[0] as i32;
                    let signal = status & 0x7f;
                    EventDetail::Exit {
                        exit_code: (signal == 0).then_some((status >> 8) & 0xff),
                        signal: (signal != 0).then_some(signal),
                        core_dumped: status & 0x80 != 0,
                    }
                }
                EventKind::Listen => EventDetail::Listen { fd: a[0] as i32, backlog: a[1] as i32 },
                EventKind::Setuid => {
                    let n = match hdr.op {
                        18 | 19 => 2,
                        20 | 21 => 3,
                        _ => 1,
                    };
                    EventDetail::Setuid { ids: a[..n].to_vec() }
                }
                EventKind::Ptrace => EventDetail::Ptrace {
                    request: a[0],
                    request_name: ptrace_request_name(a[0]).map(str::to_string),
                    target_pid: a[1] as i32,
                    addr: a[2] as u64,
                },
                EventKind::Unshare => {
                    EventDetail::Unshare { flags: a[0] as u64, namespaces: namespace_names(a[0] as u64) }
                }
                EventKind::Setns => EventDetail::Setns {
                    fd: a[0] as i32,
                    nstype: a[1] as u64,
                    namespaces: namespace_names(a[1] as u64),
                },
                EventKind::Denied => EventDetail::Denied {
                    errno: a[0],
                    errno_name: match a[0] {
                        1 => Some("EPERM".to_string()),
                        13 => Some("EACCES".to_string()),
                        _ => None,
                    },
                },
                _ => {
                    EventDetail::Bpf { cmd: a[0], cmd_name: bpf_cmd_name(a[0]).map(str::to_string), size: a[1] as u64 }
                }
            }
        }
    };
    let time = i128::from(hdr.ts_ns) + i128::from(boot_to_unix_ns);
    Ok(AuditEvent {
        seq: hdr.seq,
        ts_boot_ns: hdr.ts_ns,
        time_unix_ns: time.clamp(0, i128::from(u64::MAX)) as u64,
        weaver: weaver(hdr.cgroup_id),
        cgroup_id: hdr.cgroup_id,
        syscall: layout::op_name(hdr.op).map(str::to_string).unwrap_or_else(|| format!("op{}", hdr.op)),
        pid: hdr.pid,
        tid: hdr.tid,
        ppid: hdr.ppid,
        uid: hdr.uid,
        gid: hdr.gid,
        euid: hdr.euid,
        comm: cstr(&hdr.comm, layout::COMM_LEN as u32),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::kind;
    use crate::names::*;

    fn hdr(kind: u32, op: u32) -> layout::Hdr {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"bash");
        layout::Hdr {
            seq: 7,
            ts_ns: 1_000,
            cgroup_id: 42,
            kind,
            op,
            pid: 10,
            tid: 11,
            ppid: 1,
            uid: 1000,
            gid: 100,
            euid: 0,
            comm,
        }
    }

    fn bytes<T: layout::Pod>(v: &T) -> Vec<u8> {
        let n = std::mem::size_of::<T>();
        // SAFETY: T is Pod (plain integers), so viewing it as n bytes is sound.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), n) }.to_vec()
    }

    fn weaver(id: u64) -> String {
        format!("w{id}")
    }

    #[test]
    fn exec_record_decodes_path_argv_and_truncation() {
        let mut e = layout::EvExec {
            hdr: hdr(kind::EXEC, 1),
            old_pid: 10,
            flags: layout::EXEC_ARGV_TRUNCATED,
            filename_len: 10,
            argv_len: 0,
            filename: [0; layout::EXEC_FILENAME_LEN],
            argv: [0xff; layout::EXEC_ARGV_LEN],
        };
        e.filename[..10].copy_from_slice(b"/bin/echo\0");
        let argv = b"echo\0hello world\0x\xffy\0";
        e.argv[..argv.len()].copy_from_slice(argv);
        e.argv_len = argv.len() as u32;
        let ev = decode(&bytes(&e), weaver, 5).unwrap();
        assert_eq!(ev.weaver, "w42");
        assert_eq!(ev.comm, "bash");
        assert_eq!(ev.time_unix_ns, 1_005);
        assert_eq!(ev.syscall, "execve");
        assert_eq!(
            ev.detail,
            EventDetail::Exec {
                path: "/bin/echo".into(),
                argv: vec!["echo".into(), "hello world".into(), "x\\xffy".into()],
                path_truncated: false,
                argv_truncated: true,
                old_pid: 10,
            }
        );
    }

    #[test]
    fn clean_dots_only_touches_dot_components() {
        let check = |input: &str, want: &str| assert_eq!(clean_dots(input.into()), want, "{input}");
        check("/work/./x", "/work/x");
        check("/work/.", "/work");
        check("/a//b/./c/..", "/a/b/c/..");
        check("/", "/");
        check("rel/./x", "rel/./x");
        check("/a/.hidden", "/a/.hidden");
    }

    #[test]
    fn exit_status_splits_into_code_or_signal() {
        let check = |raw: i64, code: Option<i32>, sig: Option<i32>, core: bool| {
            let e = layout::EvArgs { hdr: hdr(kind::EXIT, 2), args: [raw, 0, 0, 0] };
            let ev = decode(&bytes(&e), weaver, 0).unwrap();
            assert_eq!(
                ev.detail,
                EventDetail::Exit { exit_code: code, signal: sig, core_dumped: core },
                "raw status {raw:#x}"
            );
        };
        check(0, Some(0), None, false);
        check(3 << 8, Some(3), None, false);
        check(9, None, Some(9), false);
        check(0x80 | 11, None, Some(11), true);
    }

    #[test]
    fn net_records_decode_every_family() {
        let mut e = layout::EvNet {
            hdr: hdr(kind::CONNECT, 13),
            fd: 3,
            addrlen: 16,
            family: 2,
            port: 8080,
            scope_id: 0,
            addr: [0; 16],
            unix_path: [0; layout::UNIX_PATH_LEN],
            _pad: 0,
        };
        e.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let ev = decode(&bytes(&e), weaver, 0).unwrap();
        let EventDetail::Connect(d) = ev.detail else { panic!("not connect: {ev:?}") };
        assert_eq!((d.addr.as_deref(), d.port), (Some("127.0.0.1"), Some(8080)));

        e.family = 10;
        e.addr = Ipv6Addr::LOCALHOST.octets();
        let ev = decode(&bytes(&e), weaver, 0).unwrap();
        let EventDetail::Connect(d) = ev.detail else { panic!() };
        assert_eq!((d.family.as_str(), d.addr.as_deref()), ("inet6", Some("::1")));

        e.family = 1;
        e.unix_path[..10].copy_from_slice(b"/run/x.skk");
        e.addrlen = 2 + 10;
        let ev = decode(&bytes(&e), weaver, 0).unwrap();
        let EventDetail::Connect(d) = ev.detail else { panic!() };
        assert_eq!(d.unix_path.as_deref(), Some("/run/x.skk"));

        e.unix_path[0] = 0;
        let ev = decode(&bytes(&e), weaver, 0).unwrap();
        let EventDetail::Connect(d) = ev.detail else { panic!() };
        assert_eq!(d.unix_path.as_deref(), Some("@run/x.skk"));

        // addrlen larger than the buffer is clamped, never a panic
        e.addrlen = u32::MAX;
        decode(&bytes(&e), weaver, 0).unwrap();
    }

    #[test]
    fn short_or_unknown_records_are_errors_not_panics() {
        let e = layout::EvArgs { hdr: hdr(kind::EXEC, 1), args: [0; 4] };
        let err = decode(&bytes(&e), weaver, 0).unwrap_err();
        assert!(matches!(err, DecodeError::TooShort { kind: 1, .. }), "{err}");
        let e = layout::EvArgs { hdr: hdr(99, 1), args: [0; 4] };
        assert_eq!(decode(&bytes(&e), weaver, 0).unwrap_err(), DecodeError::UnknownKind(99));
        assert!(decode(&[1, 2, 3], weaver, 0).is_err());
    }

    #[test]
    fn path_length_bounds_the_string_even_without_nul() {
        let mut e = layout::EvPath {
            hdr: hdr(kind::OPEN, 4),
            args: [-100, 0o1101, 0o644, 0],
            path_len: 4000,
            _pad: 0,
            path: [b'a'; layout::PATH_LEN],
        };
        let ev = decode(&bytes(&e), weaver, 0).unwrap();
        let EventDetail::Open { path, path_truncated, flags, .. } = ev.detail else { panic!() };
        assert_eq!(path.len(), layout::PATH_LEN);
        assert!(path_truncated);
        assert_eq!(open_flag_names(flags), "O_WRONLY|O_CREAT|O_TRUNC");
        e.path_len = 3;
        let ev = decode(&bytes(&e), weaver, 0).unwrap();
        assert!(matches!(ev.detail, EventDetail::Open { ref path, path_truncated: false, .. } if path == "aaa"));
    }

    #[test]
    fn events_round_trip_through_json_with_kind_tag() {
        let e = layout::EvArgs { hdr: hdr(kind::UNSHARE, 27), args: [0x1002_0000, 0, 0, 0] };
        let ev = decode(&bytes(&e), weaver, 0).unwrap();
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["kind"], "unshare");
        assert_eq!(json["namespaces"], serde_json::json!(["mnt", "user"]));
        let back: AuditEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, ev);
    }
}
