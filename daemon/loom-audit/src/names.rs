//! Kernel values as text: bytes of a hostile file name, paths the kernel joined, and the
//! names of clone, ptrace, bpf and open flags.

/// Render bytes as text: valid UTF-8 as is, every other byte as `\xNN`, so a
/// hostile file name can neither be lost nor forge another value.
pub fn bytes_to_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Drop `.` components and doubled slashes from an absolute path (the kernel
/// side joins a resolved directory and the caller's relative path). `..` stays:
/// removing it lexically could be wrong when the relative part has symlinks.
pub fn clean_dots(path: String) -> String {
    if !path.starts_with('/') || !(path.contains("/./") || path.ends_with("/.") || path.contains("//")) {
        return path;
    }
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    format!("/{}", parts.join("/"))
}

const CLONE_FLAGS: &[(u64, &str)] = &[
    (0x0000_0080, "time"),
    (0x0000_0200, "fs"),
    (0x0000_0400, "files"),
    (0x0002_0000, "mnt"),
    (0x0004_0000, "sysvsem"),
    (0x0200_0000, "cgroup"),
    (0x0400_0000, "uts"),
    (0x0800_0000, "ipc"),
    (0x1000_0000, "user"),
    (0x2000_0000, "pid"),
    (0x4000_0000, "net"),
];

/// Namespace (and other unshare) flag names in a clone-flags value.
pub fn namespace_names(flags: u64) -> Vec<String> {
    CLONE_FLAGS.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, n)| (*n).to_string()).collect()
}

/// `PTRACE_*` request names.
pub fn ptrace_request_name(request: i64) -> Option<&'static str> {
    Some(match request {
        0 => "PTRACE_TRACEME",
        1 => "PTRACE_PEEKTEXT",
        2 => "PTRACE_PEEKDATA",
        3 => "PTRACE_PEEKUSER",
        4 => "PTRACE_POKETEXT",
        5 => "PTRACE_POKEDATA",
        6 => "PTRACE_POKEUSER",
        7 => "PTRACE_CONT",
        8 => "PTRACE_KILL",
        9 => "PTRACE_SINGLESTEP",
        12 => "PTRACE_GETREGS",
        13 => "PTRACE_SETREGS",
        16 => "PTRACE_ATTACH",
        17 => "PTRACE_DETACH",
        24 => "PTRACE_SYSCALL",
        0x4200 => "PTRACE_SETOPTIONS",
        0x4206 => "PTRACE_SEIZE",
        0x4207 => "PTRACE_INTERRUPT",
        _ => return None,
    })
}

/// `BPF_*` command names.
pub fn bpf_cmd_name(cmd: i64) -> Option<&'static str> {
    Some(match cmd {
        0 => "BPF_MAP_CREATE",
        1 => "BPF_MAP_LOOKUP_ELEM",
        2 => "BPF_MAP_UPDATE_ELEM",
        3 => "BPF_MAP_DELETE_ELEM",
        4 => "BPF_MAP_GET_NEXT_KEY",
        5 => "BPF_PROG_LOAD",
        6 => "BPF_OBJ_PIN",
        7 => "BPF_OBJ_GET",
        8 => "BPF_PROG_ATTACH",
        9 => "BPF_PROG_DETACH",
        10 => "BPF_PROG_TEST_RUN",
        17 => "BPF_RAW_TRACEPOINT_OPEN",
        18 => "BPF_BTF_LOAD",
        28 => "BPF_LINK_CREATE",
        _ => return None,
    })
}

/// Open flag names (`O_WRONLY|O_CREAT|…`) for display.
pub fn open_flag_names(flags: u64) -> String {
    let mut names = vec![match flags & 3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        2 => "O_RDWR",
        _ => "O_ACCMODE",
    }];
    for (bit, name) in [
        (0o100, "O_CREAT"),
        (0o200, "O_EXCL"),
        (0o1000, "O_TRUNC"),
        (0o2000, "O_APPEND"),
        (0o200000, "O_DIRECTORY"),
        (0o2000000, "O_CLOEXEC"),
        (0o20000000, "O_TMPFILE"),
    ] {
        if flags & bit != 0 {
            names.push(name);
        }
    }
    names.join("|")
}
