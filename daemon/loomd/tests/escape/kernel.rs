//! Attacks on the kernel from inside a weaver: new user namespaces, mounts, bpf, perf, keyrings,
//! ptrace of a host process, kernel memory and debug files, host device nodes, loomd's socket.
//! Run from the weaver's own process and from `loom weaver exec`, on both host backends.

use std::process::Output;
use std::time::Duration;

use crate::support::{self, Loomd, field, privileged};

/// Tries each attack and prints `NAME=OK` or `NAME=<errno name>`; `ATTACKS-DONE` at the end
/// proves the script ran to completion. Syscall numbers are the x86_64 and aarch64 ones.
const ATTACKS: &str = r#"
import ctypes, errno, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
arch = os.uname().machine
NR = {"x86_64": dict(unshare=272, clone=56, clone3=435, bpf=321, perf_event_open=298, keyctl=250, ptrace=101,
                     mount=165, io_uring_setup=425, open_by_handle_at=304, init_module=175, kexec_load=246),
      "aarch64": dict(unshare=97, clone=220, clone3=435, bpf=280, perf_event_open=241, keyctl=219, ptrace=117,
                      mount=40, io_uring_setup=425, open_by_handle_at=265, init_module=105, kexec_load=104)}[arch]
def report(name, rc):
    e = ctypes.get_errno()
    print(f"{name}=" + ("OK" if rc >= 0 else errno.errorcode.get(e, str(e))), flush=True)
def sc(name, *args):
    ctypes.set_errno(0)
    report(name, libc.syscall(NR[name.split(":")[0]], *[ctypes.c_long(a) for a in args]))
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x20000, 0x40000000, 17
sc("unshare:user", CLONE_NEWUSER)
sc("unshare:user+net", CLONE_NEWUSER | CLONE_NEWNET)
ctypes.set_errno(0)
pid = libc.syscall(NR["clone"], ctypes.c_long(CLONE_NEWUSER | SIGCHLD), 0, 0, 0, 0)
if pid == 0:
    os._exit(0)
report("clone:user", pid)
if pid > 0:
    os.waitpid(pid, 0)
sc("clone3", 0, 0)
ctypes.set_errno(0)
report("mount:tmpfs", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
ctypes.set_errno(0)
report("mount:proc", libc.mount(b"proc", b"/tmp", b"proc", 0, None))
sc("bpf", 0, 0, 0)
sc("perf_event_open", 0, 0, -1, -1, 0)
sc("keyctl", 0, -3, 0)
sc("io_uring_setup", 1, 0)
sc("open_by_handle_at", -100, 0, 0)
sc("init_module", 0, 0, 0)
sc("kexec_load", 0, 0, 0, 0)
host_pid = int(sys.argv[1])
sc("ptrace:host", 16, host_pid, 0, 0)
ctypes.set_errno(0)
report("kill:host", libc.kill(host_pid, 0))
for name, path in [("kcore", "/proc/kcore"), ("kmem", "/dev/kmem"), ("mem", "/dev/mem"), ("kmsg", "/dev/kmsg"),
                   ("debugfs", "/sys/kernel/debug/tracing/trace"), ("vda", "/dev/vda"), ("sda", "/dev/sda"),
                   ("sysrq", "/proc/sysrq-trigger")]:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        print(f"open:{name}=OK", flush=True)
    except OSError as e:
        print(f"open:{name}={errno.errorcode.get(e.errno, str(e.errno))}", flush=True)
try:
    os.mknod("/tmp/loom-sda", 0o600 | 0o060000, os.makedev(8, 0))
    print("mknod:block=OK", flush=True)
except OSError as e:
    print(f"mknod:block={errno.errorcode.get(e.errno, str(e.errno))}", flush=True)
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[2])
    print("connect:loomd=OK", flush=True)
except OSError as e:
    print(f"connect:loomd={errno.errorcode.get(e.errno, str(e.errno))}", flush=True)
print(f"caps={open('/proc/self/status').read().split('CapEff:')[1].split()[0]}", flush=True)
print("ATTACKS-DONE", flush=True)
"#;

/// How each attack must fail: the errno it gets.
const EXPECTED: &[(&str, &[&str])] = &[
    ("unshare:user", &["EPERM"]),
    ("unshare:user+net", &["EPERM"]),
    ("clone:user", &["EPERM"]),
    // The filter answers "no such call", so that the C library falls back to clone.
    ("clone3", &["ENOSYS"]),
    ("mount:tmpfs", &["EPERM"]),
    ("mount:proc", &["EPERM"]),
    ("bpf", &["EPERM"]),
    ("perf_event_open", &["EPERM"]),
    ("keyctl", &["EPERM"]),
    ("io_uring_setup", &["EPERM"]),
    ("open_by_handle_at", &["EPERM"]),
    ("init_module", &["EPERM"]),
    ("kexec_load", &["EPERM"]),
    // The host process is not in the weaver's pid namespace: there is nothing to attach to.
    ("ptrace:host", &["ESRCH"]),
    ("kill:host", &["ESRCH"]),
    ("open:kcore", &["ENOENT", "EACCES", "EPERM"]),
    ("open:kmem", &["ENOENT"]),
    ("open:mem", &["ENOENT"]),
    ("open:kmsg", &["ENOENT"]),
    ("open:debugfs", &["ENOENT", "EACCES", "EPERM"]),
    ("open:vda", &["ENOENT"]),
    ("open:sda", &["ENOENT"]),
    ("open:sysrq", &["ENOENT", "EACCES", "EROFS", "EPERM"]),
    ("mknod:block", &["EPERM"]),
    ("connect:loomd", &["ENOENT"]),
];

/// CapEff of a weaver's root: exactly the kept set (see loomd's sandbox): chown, dac_override,
/// fowner, fsetid, kill, setgid, setuid.
const KEPT_CAPS_HEX: &str = "00000000000000fb";

/// Checks every line of what the attack script printed, and that it ran to the end.
pub fn assert_attacks_failed(out: &str, context: &str) {
    assert!(out.contains("ATTACKS-DONE"), "{context}: the attack script did not finish:\n{out}");
    for (name, allowed) in EXPECTED {
        let got = field(out, name);
        assert!(allowed.contains(&got.as_str()), "{context}: {name} gave {got}, expected one of {allowed:?}\n{out}");
    }
    assert_eq!(field(out, "caps"), KEPT_CAPS_HEX, "{context}: the weaver's root has other capabilities:\n{out}");
}

/// A host process the weaver will try to reach: a sleep of our own, killed on drop.
pub struct HostProcess(pub std::process::Child);

impl HostProcess {
    pub fn start() -> HostProcess {
        HostProcess(std::process::Command::new("sleep").arg("300").spawn().unwrap())
    }
    pub fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The python command line that runs [`ATTACKS`] against `host_pid` and `socket`.
pub fn attack_command(host_pid: &str, socket: &str) -> Vec<String> {
    ["/usr/bin/python3", "-c", ATTACKS, host_pid, socket].iter().map(|s| s.to_string()).collect()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn kernel_attacks_fail_from_the_weavers_own_process_and_from_exec() {
    if !privileged("kernel_attacks_fail_from_the_weavers_own_process_and_from_exec") {
        return;
    }
    let d: Loomd = support::loomd("[audit]\nrequired = true\nsink = \"ndjson\"\n");
    let host = HostProcess::start();
    let socket = d.socket.display().to_string();
    let cmd = attack_command(&host.pid(), &socket);

    // The weaver's own first process.
    let mut args = vec!["weaver", "create", "--name", "kern"];
    args.push("--");
    args.extend(cmd.iter().map(String::as_str));
    let w = d.cli_json(&args);
    assert_eq!(w["state"], "running", "{w}");
    d.wait_for("kern", "exited", Duration::from_secs(60), |v| v["state"] == "exited");
    assert_attacks_failed(&d.logs("kern"), "the weaver's own process");
    // What seccomp refused never reached a sys_enter tracepoint, but each refusal is audited
    // (module and kexec calls too, on kernels that have their tracepoints; this one has not).
    let denied = d.cli_json(&["audit", "--weaver", "kern", "--kind", "denied", "--limit", "1000"]);
    let refused: Vec<&str> = denied.as_array().unwrap().iter().filter_map(|e| e["syscall"].as_str()).collect();
    for call in ["unshare", "clone", "mount", "bpf", "perf_event_open", "keyctl", "io_uring_setup"] {
        assert!(refused.contains(&call), "no denied event for {call}: {denied}");
    }

    // A command run by `loom weaver exec`, which loomd starts from the host.
    support::sleeper(&d, "kern-exec", &[]);
    let mut args = vec!["weaver", "exec", "kern-exec", "--"];
    args.extend(cmd.iter().map(String::as_str));
    let out = d.cli(&args);
    assert_attacks_failed(&text(&out), "loom weaver exec");

    // The `unshare` tool, as an agent would try it.
    let out = support::exec_sh(&d, "kern-exec", "unshare -Urn id; echo UNSHARE=$?");
    let t = text(&out);
    assert_eq!(field(&t, "UNSHARE"), "1", "{t}");
    assert!(t.contains("Operation not permitted"), "{t}");
}

#[test]
fn a_nested_weaver_may_make_user_namespaces_but_still_not_bpf() {
    if !privileged("a_nested_weaver_may_make_user_namespaces_but_still_not_bpf") {
        return;
    }
    let d = support::loomd("");
    let out = support::probe(
        &d,
        "nest",
        &["--nested"],
        "unshare -Urn id -u; echo UNSHARE=$?; python3 -c 'import ctypes; l=ctypes.CDLL(None, use_errno=True); \
         print(\"BPF=\" + str(l.syscall(321, 0, 0, 0)) + \" \" + str(ctypes.get_errno()))'",
    );
    assert_eq!(field(&out, "UNSHARE"), "0", "a nested weaver makes user namespaces: {out}");
    assert_eq!(field(&out, "BPF"), "-1 1", "bpf stays refused with EPERM: {out}");
}

#[test]
fn an_operator_may_ask_for_neither_the_host_network_nor_nesting() {
    if !privileged("an_operator_may_ask_for_neither_the_host_network_nor_nesting") {
        return;
    }
    let d = support::loomd("");
    for (flags, what) in [(&["--network", "host"][..], "--network host"), (&["--nested"][..], "--nested")] {
        let mut args = vec!["weaver", "create", "--name", "op-try"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "sleep", "60"]);
        let out = support::as_operator(&d, 4712, &args);
        assert!(!out.status.success(), "an operator got {what}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("forbidden") && err.contains(what), "{what}: {err}");
    }
    // Nothing was made, and an admin (root) may.
    assert!(d.cli_json(&["weaver", "ps"]).as_array().unwrap().is_empty());
    support::sleeper(&d, "admin-host", &["--network", "host"]);
}

#[test]
fn a_weaver_with_no_network_has_no_proxy_either() {
    if !privileged("a_weaver_with_no_network_has_no_proxy_either") {
        return;
    }
    let d = support::loomd("");
    // bash for /dev/tcp; a few tries, since the proxy listener opens just after the first process.
    let script = "echo KEY=${ANTHROPIC_API_KEY:-unset}; for i in 1 2 3 4 5 6 7 8 9 10; do \
                  if (exec 3<>/dev/tcp/127.0.0.1/4141) 2>/dev/null; then echo PROXY=open; exit; fi; sleep 0.2; \
                  done; echo PROXY=refused";
    let probe = |name: &str, network: &str| {
        support::probe(&d, name, &["--network", network], &format!("exec /bin/bash -c '{script}'"))
    };
    // The same probe sees the proxy where there is one, so a refusal below is the network's doing.
    let private = probe("withnet", "private");
    assert_ne!(field(&private, "KEY"), "unset", "{private}");
    assert_eq!(field(&private, "PROXY"), "open", "{private}");
    let none = probe("nonet", "none");
    assert_eq!(field(&none, "KEY"), "unset", "{none}");
    assert_eq!(field(&none, "PROXY"), "refused", "{none}");
}

#[test]
fn an_image_an_operator_names_cannot_bind_host_directories() {
    if !privileged("an_image_an_operator_names_cannot_bind_host_directories") {
        return;
    }
    let d = support::loomd("");
    // A directory the operator made, whose usr is a symlink to a host directory.
    let planted = tempfile::Builder::new().prefix("loom-img").tempdir_in("/var/lib").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(planted.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("/etc", planted.path().join("usr")).unwrap();
    let image = planted.path().display().to_string();
    let out = support::as_operator(&d, 4713, &["weaver", "create", "--image", &image, "--", "sleep", "60"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("image root"), "{}", String::from_utf8_lossy(&out.stderr));
    // Root is refused the symlink too: what gets bound must be what the path says.
    let out = d.cli(&["--json", "weaver", "create", "--image", &image, "--", "sleep", "60"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlink"), "{}", String::from_utf8_lossy(&out.stderr));
}
