//! Rust mirrors of `ebpf/include/loom_audit.h`. The layout test
//! (`tests/layout.rs`) compiles that header on the host and checks every size
//! and offset below against it; change both together.

/// `LOOM_COMM_LEN`
pub const COMM_LEN: usize = 16;
/// `LOOM_PATH_LEN`
pub const PATH_LEN: usize = 512;
/// `LOOM_AUX_LEN`
pub const AUX_LEN: usize = 32;
/// `LOOM_EXEC_FILENAME_LEN`
pub const EXEC_FILENAME_LEN: usize = 512;
/// `LOOM_EXEC_ARGV_LEN`
pub const EXEC_ARGV_LEN: usize = 2048;
/// `LOOM_UNIX_PATH_LEN`
pub const UNIX_PATH_LEN: usize = 108;
/// `LOOM_KIND_MAX`: size of the kernel's per-kind loss counter array.
pub const KIND_MAX: u32 = 18;

/// `LOOM_EXEC_FILENAME_TRUNCATED`
pub const EXEC_FILENAME_TRUNCATED: u32 = 1;
/// `LOOM_EXEC_ARGV_TRUNCATED`
pub const EXEC_ARGV_TRUNCATED: u32 = 2;

/// `enum loom_kind`
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const EXIT: u32 = 2;
    pub const OPEN: u32 = 3;
    pub const UNLINK: u32 = 4;
    pub const RENAME: u32 = 5;
    pub const CONNECT: u32 = 6;
    pub const BIND: u32 = 7;
    pub const LISTEN: u32 = 8;
    pub const SETID: u32 = 9;
    pub const PTRACE: u32 = 10;
    pub const MOUNT: u32 = 11;
    pub const UMOUNT: u32 = 12;
    pub const UNSHARE: u32 = 13;
    pub const SETNS: u32 = 14;
    pub const BPF: u32 = 15;
    pub const MODULE: u32 = 16;
    pub const DENIED: u32 = 17;
    /// Never sent by the kernel programs: loomd records egress refusals (its egress programs
    /// and its DNS resolver) into the same sinks.
    pub const NET_DENY: u32 = 1000;
}

/// `enum loom_op`, with the syscall name each stands for.
pub const OPS: &[(u32, &str)] = &[
    (1, "execve"),
    (2, "exit"),
    (3, "open"),
    (4, "openat"),
    (5, "openat2"),
    (6, "creat"),
    (7, "unlink"),
    (8, "unlinkat"),
    (9, "rmdir"),
    (10, "rename"),
    (11, "renameat"),
    (12, "renameat2"),
    (13, "connect"),
    (14, "bind"),
    (15, "listen"),
    (16, "setuid"),
    (17, "setgid"),
    (18, "setreuid"),
    (19, "setregid"),
    (20, "setresuid"),
    (21, "setresgid"),
    (22, "setfsuid"),
    (23, "setfsgid"),
    (24, "ptrace"),
    (25, "mount"),
    (26, "umount2"),
    (27, "unshare"),
    (28, "setns"),
    (29, "bpf"),
    (30, "init_module"),
    (31, "finit_module"),
    (32, "delete_module"),
    (33, "move_mount"),
    (34, "setgroups"),
    (35, "perf_event_open"),
    (36, "keyctl"),
    (37, "add_key"),
    (38, "io_uring_setup"),
    (39, "open_by_handle_at"),
    (40, "kexec_load"),
    (41, "clone"),
];

/// The syscall name of a `loom_op` value.
pub fn op_name(op: u32) -> Option<&'static str> {
    OPS.iter().find(|(n, _)| *n == op).map(|(_, s)| *s)
}

/// `struct loom_hdr`
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Hdr {
    pub seq: u64,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub kind: u32,
    pub op: u32,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub comm: [u8; COMM_LEN],
}

/// `struct loom_ev_exec`
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EvExec {
    pub hdr: Hdr,
    pub old_pid: u32,
    pub flags: u32,
    pub filename_len: u32,
    pub argv_len: u32,
    pub filename: [u8; EXEC_FILENAME_LEN],
    pub argv: [u8; EXEC_ARGV_LEN],
}

/// `struct loom_ev_args`
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EvArgs {
    pub hdr: Hdr,
    pub args: [i64; 4],
}

/// `struct loom_ev_path`
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EvPath {
    pub hdr: Hdr,
    pub args: [i64; 4],
    pub path_len: u32,
    pub _pad: u32,
    pub path: [u8; PATH_LEN],
}

/// `struct loom_ev_path2`
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EvPath2 {
    pub hdr: Hdr,
    pub args: [i64; 4],
    pub path_len: u32,
    pub path2_len: u32,
    pub aux_len: u32,
    pub _pad: u32,
    pub aux: [u8; AUX_LEN],
    pub path: [u8; PATH_LEN],
    pub path2: [u8; PATH_LEN],
}

/// `struct loom_ev_net`
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EvNet {
    pub hdr: Hdr,
    pub fd: i32,
    pub addrlen: u32,
    pub family: u16,
    pub port: u16,
    pub scope_id: u32,
    pub addr: [u8; 16],
    pub unix_path: [u8; UNIX_PATH_LEN],
    pub _pad: u32,
}

/// Marker for the plain-old-data mirrors above: every bit pattern is valid.
///
/// # Safety
/// Implement only for `repr(C)` structs made of integers and integer arrays.
pub unsafe trait Pod: Copy {}
// SAFETY: all five are repr(C) and contain only integers and integer arrays.
unsafe impl Pod for Hdr {}
// SAFETY: as above.
unsafe impl Pod for EvExec {}
// SAFETY: as above.
unsafe impl Pod for EvArgs {}
// SAFETY: as above.
unsafe impl Pod for EvPath {}
// SAFETY: as above.
unsafe impl Pod for EvPath2 {}
// SAFETY: as above.
unsafe impl Pod for EvNet {}

/// Copy a record out of a byte buffer; `None` if the buffer is too short.
pub fn read<T: Pod>(buf: &[u8]) -> Option<T> {
    if buf.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked above, read_unaligned has no alignment
    // requirement, and T: Pod accepts any bit pattern.
    Some(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// One row of [`layout_table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLayout {
    /// C struct name, without `struct`.
    pub strukt: &'static str,
    /// Field name; `""` for the row that gives the struct's size.
    pub field: &'static str,
    pub offset: usize,
    pub size: usize,
}

fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    std::mem::size_of::<F>()
}

/// Size, field offsets and field sizes of every mirror, named as in the C
/// header, for the layout test.
pub fn layout_table() -> Vec<FieldLayout> {
    use std::mem::{offset_of, size_of};
    macro_rules! fields {
        ($v:ident, $cname:literal, $t:ty, [$($f:ident),*]) => {
            $v.push(FieldLayout { strukt: $cname, field: "", offset: 0, size: size_of::<$t>() });
            $( $v.push(FieldLayout {
                strukt: $cname,
                field: stringify!($f),
                offset: offset_of!($t, $f),
                size: field_size::<$t, _>(|s| &s.$f),
            }); )*
        };
    }
    let mut v = Vec::new();
    fields!(v, "loom_hdr", Hdr, [seq, ts_ns, cgroup_id, kind, op, pid, tid, ppid, uid, gid, euid, comm]);
    fields!(v, "loom_ev_exec", EvExec, [hdr, old_pid, flags, filename_len, argv_len, filename, argv]);
    fields!(v, "loom_ev_args", EvArgs, [hdr, args]);
    fields!(v, "loom_ev_path", EvPath, [hdr, args, path_len, _pad, path]);
    fields!(v, "loom_ev_path2", EvPath2, [hdr, args, path_len, path2_len, aux_len, _pad, aux, path, path2]);
    fields!(v, "loom_ev_net", EvNet, [hdr, fd, addrlen, family, port, scope_id, addr, unix_path, _pad]);
    v
}

/// Constants shared with the C header, for the layout test: `(C name, value)`.
pub fn constant_table() -> Vec<(&'static str, i64)> {
    vec![
        ("LOOM_COMM_LEN", COMM_LEN as i64),
        ("LOOM_PATH_LEN", PATH_LEN as i64),
        ("LOOM_AUX_LEN", AUX_LEN as i64),
        ("LOOM_EXEC_FILENAME_LEN", EXEC_FILENAME_LEN as i64),
        ("LOOM_EXEC_ARGV_LEN", EXEC_ARGV_LEN as i64),
        ("LOOM_UNIX_PATH_LEN", UNIX_PATH_LEN as i64),
        ("LOOM_KIND_MAX", i64::from(KIND_MAX)),
        ("LOOM_EXEC_FILENAME_TRUNCATED", i64::from(EXEC_FILENAME_TRUNCATED)),
        ("LOOM_EXEC_ARGV_TRUNCATED", i64::from(EXEC_ARGV_TRUNCATED)),
        ("LOOM_KIND_EXEC", i64::from(kind::EXEC)),
        ("LOOM_KIND_EXIT", i64::from(kind::EXIT)),
        ("LOOM_KIND_OPEN", i64::from(kind::OPEN)),
        ("LOOM_KIND_UNLINK", i64::from(kind::UNLINK)),
        ("LOOM_KIND_RENAME", i64::from(kind::RENAME)),
        ("LOOM_KIND_CONNECT", i64::from(kind::CONNECT)),
        ("LOOM_KIND_BIND", i64::from(kind::BIND)),
        ("LOOM_KIND_LISTEN", i64::from(kind::LISTEN)),
        ("LOOM_KIND_SETID", i64::from(kind::SETID)),
        ("LOOM_KIND_PTRACE", i64::from(kind::PTRACE)),
        ("LOOM_KIND_MOUNT", i64::from(kind::MOUNT)),
        ("LOOM_KIND_UMOUNT", i64::from(kind::UMOUNT)),
        ("LOOM_KIND_UNSHARE", i64::from(kind::UNSHARE)),
        ("LOOM_KIND_SETNS", i64::from(kind::SETNS)),
        ("LOOM_KIND_BPF", i64::from(kind::BPF)),
        ("LOOM_KIND_MODULE", i64::from(kind::MODULE)),
        ("LOOM_KIND_DENIED", i64::from(kind::DENIED)),
    ]
}
