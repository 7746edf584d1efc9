//! Weaver networks on the real kernel: private weavers on their own bridge and subnet, the
//! proxy from the first process, the egress policy (TCP and UDP, live changes, domain rules
//! through loomd's resolver with a fake upstream), `loom weaver ssh`, and the WireGuard
//! operator tunnel with a peer in its own network namespace.
//!
//! Every test loomd gets its own bridge and subnet (made by the test, removed by a guard),
//! so tests running at once never share a bridge, a gateway or a resolver.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::net::{Bridge, FakeDns, FakeTailscale, SshClient, files_containing, loomd_log, sh_ok};
use common::{Loomd, privileged};

/// Python run by a weaver: helpers every probe starts with. `tcp(host, port)` and
/// `udp(host, port)` print nothing and return "OK" or the errno's name and the ms it took.
const PY_PRELUDE: &str = r#"
import errno, fcntl, socket, struct, sys, time
def addr():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", b"eth0"))[20:24])
    except OSError as e:
        return "none:" + errno.errorcode.get(e.errno, str(e.errno))
def ename(e):
    if isinstance(e, socket.timeout):
        return "TIMEOUT"
    return errno.errorcode.get(e.errno, str(e.errno))
def tcp(host, port, send=b"", timeout=3):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    t = time.monotonic()
    try:
        s.connect((host, port))
        if send:
            s.sendall(send)
        return "OK", (time.monotonic() - t) * 1000, s
    except OSError as e:
        return ename(e), (time.monotonic() - t) * 1000, None
def udp(host, port, payload):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t = time.monotonic()
    try:
        s.sendto(payload, (host, port))
        return "OK", (time.monotonic() - t) * 1000
    except OSError as e:
        return ename(e), (time.monotonic() - t) * 1000
"#;

/// [`common::net::py_probe`] with this file's prelude.
fn py_probe(d: &Loomd, name: &str, flags: &[&str], script: &str) -> String {
    common::net::py_probe(d, name, flags, PY_PRELUDE, script)
}

/// [`common::net::py_exec`] with this file's prelude.
fn py_exec(d: &Loomd, name: &str, script: &str) -> String {
    common::net::py_exec(d, name, PY_PRELUDE, script)
}

/// A private weaver that stays up.
fn sleeper(d: &Loomd, name: &str, flags: &[&str]) -> serde_json::Value {
    let mut args = vec!["weaver", "create", "--name", name, "--network", "private"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sleep", "600"]);
    let w = d.cli_json(&args);
    assert_eq!(w["state"], "running", "{w}");
    w
}

fn field(log: &str, key: &str) -> String {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= missing in the probe's output:\n{log}"))
        .trim()
        .to_string()
}

/// A TCP listener on `addr` whose accepted connections (peer, first bytes) arrive on the channel.
fn tcp_listener(addr: Ipv4Addr) -> (u16, mpsc::Receiver<(std::net::SocketAddr, String)>) {
    let l = TcpListener::bind((addr, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let peer = s.peer_addr().unwrap();
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).unwrap_or(0);
            let _ = s.write_all(b"pong\n");
            if tx.send((peer, String::from_utf8_lossy(&buf[..n]).into_owned())).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// The `net_deny` audit rows of a weaver, polled until one matches `pred` (up to 5 s).
fn wait_net_deny(d: &Loomd, id: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = d.cli_json(&["audit", "--weaver", id, "--kind", "net_deny"]);
        let list = rows.as_array().cloned().or_else(|| rows["events"].as_array().cloned()).unwrap_or_default();
        if let Some(r) = list.iter().find(|r| pred(r)) {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "no net_deny row for {what} within 5 s: {rows}\n{}", loomd_log(d));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The text of a JSON row, for matching a destination anywhere in it.
fn row_has(r: &serde_json::Value, needle: &str) -> bool {
    r.to_string().contains(needle)
}

#[test]
fn two_private_weavers_get_addresses_reach_their_proxy_at_once_and_an_allowed_host_endpoint() {
    if !privileged("two_private_weavers") {
        return;
    }
    let br = Bridge::new("n1", 201);
    let d = Loomd::start_with_config(Some(&br.config()));
    let (port, accepted) = tcp_listener(br.gateway);
    let gw = br.gateway;
    let allow = format!("{gw}:{port}");
    // The very first thing the weaver's first process does is connect to its proxy.
    let script = format!(
        r#"
st, ms, s = tcp("127.0.0.1", 4141, b"GET /v1/status HTTP/1.0\r\nHost: loom\r\n\r\n", timeout=5)
print(f"PROXY={{st}}", flush=True)
if s:
    s.settimeout(5)
    try:
        print("PROXYREPLY=" + s.recv(64).decode(errors="replace").splitlines()[0], flush=True)
    except Exception as e:
        print(f"PROXYREPLY=err {{e}}", flush=True)
print("ADDR=" + addr(), flush=True)
st, ms, s = tcp("{gw}", {port}, b"hello-from-{{}}")
print(f"HOST={{st}}", flush=True)
if s:
    s.settimeout(3)
    print("HOSTREPLY=" + s.recv(16).decode().strip(), flush=True)
"#
    );
    let mut addrs = vec![];
    for name in ["na", "nb"] {
        let log = py_probe(&d, name, &["--allow", &allow], &script.replace("{}", name));
        assert_eq!(field(&log, "PROXY"), "OK", "{name}: the proxy from the first process:\n{log}");
        assert!(field(&log, "PROXYREPLY").starts_with("HTTP/1."), "{name}: the proxy answered HTTP:\n{log}");
        let a: Ipv4Addr = field(&log, "ADDR").parse().unwrap_or_else(|_| panic!("{name} has no address:\n{log}"));
        assert!(br.contains(a), "{name}'s address {a} is in {}", br.subnet);
        assert_eq!(field(&log, "HOST"), "OK", "{name}: the allowed host endpoint {allow}:\n{log}");
        assert_eq!(field(&log, "HOSTREPLY"), "pong", "{log}");
        let (peer, sent) = accepted.recv_timeout(Duration::from_secs(5)).expect("the host endpoint saw the weaver");
        assert_eq!(peer.ip(), std::net::IpAddr::V4(a), "the connection came from {name}'s own address");
        assert_eq!(sent, format!("hello-from-{name}"));
        addrs.push(a);
    }
    assert_ne!(addrs[0], addrs[1], "each weaver has its own address");
}

#[test]
fn a_denied_connect_or_sendto_fails_with_eperm_at_once_and_is_audited() {
    if !privileged("denied_connect") {
        return;
    }
    let br = Bridge::new("n2", 202);
    let d = Loomd::start_with_config(Some(&br.config()));
    let gw = br.gateway;
    // A listener that would accept, on a port the policy does not allow.
    let (denied_port, accepted) = tcp_listener(gw);
    let udp_ok = UdpSocket::bind((gw, 0)).unwrap();
    udp_ok.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let udp_ok_port = udp_ok.local_addr().unwrap().port();
    let udp_denied = UdpSocket::bind((gw, 0)).unwrap();
    udp_denied.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let udp_denied_port = udp_denied.local_addr().unwrap().port();
    let script = format!(
        r#"
st, ms, s = tcp("{gw}", {denied_port})
print(f"TCP={{st}}", flush=True)
print(f"TCPMS={{ms:.3f}}", flush=True)
st, ms, s = tcp("192.0.2.7", 80)
print(f"TCPOUT={{st}}", flush=True)
print(f"TCPOUTMS={{ms:.3f}}", flush=True)
st, ms = udp("{gw}", {udp_denied_port}, b"denied")
print(f"UDPDENIED={{st}}", flush=True)
print(f"UDPDENIEDMS={{ms:.3f}}", flush=True)
st, ms = udp("{gw}", {udp_ok_port}, b"allowed-udp")
print(f"UDPOK={{st}}", flush=True)
"#
    );
    let log = py_probe(&d, "deny", &["--allow", &format!("{gw}:{udp_ok_port}/udp")], &script);
    for (key, ms) in [("TCP", "TCPMS"), ("TCPOUT", "TCPOUTMS"), ("UDPDENIED", "UDPDENIEDMS")] {
        assert_eq!(field(&log, key), "EPERM", "{key}:\n{log}");
        let ms: f64 = field(&log, ms).parse().unwrap();
        assert!(ms < 100.0, "{key} was refused after {ms} ms, not at once:\n{log}");
    }
    assert!(accepted.try_recv().is_err(), "the denied listener accepted a connection");
    let mut buf = [0u8; 64];
    assert!(udp_denied.recv_from(&mut buf).is_err(), "the denied UDP datagram arrived");
    assert_eq!(field(&log, "UDPOK"), "OK", "{log}");
    let (n, from) = udp_ok.recv_from(&mut buf).expect("the allowed UDP datagram arrived");
    assert_eq!(&buf[..n], b"allowed-udp");
    assert!(br.contains(match from.ip() {
        std::net::IpAddr::V4(a) => a,
        other => panic!("{other}"),
    }));
    let id = d.inspect("deny")["id"].as_str().unwrap().to_string();
    let row = wait_net_deny(&d, &id, "the denied connect", |r| row_has(r, &format!("{gw}:{denied_port}")));
    assert!(row_has(&row, "connect"), "{row}");
    wait_net_deny(&d, &id, "the outside connect", |r| row_has(r, "192.0.2.7:80"));
    let row = wait_net_deny(&d, &id, "the denied sendto", |r| row_has(r, &format!("{gw}:{udp_denied_port}")));
    assert!(row_has(&row, "sendmsg") && row_has(&row, "udp"), "{row}");
}

#[test]
fn a_policy_change_takes_effect_for_the_next_connect_without_a_restart() {
    if !privileged("policy_change") {
        return;
    }
    let br = Bridge::new("n3", 203);
    let d = Loomd::start_with_config(Some(&br.config()));
    let gw = br.gateway;
    let (port, accepted) = tcp_listener(gw);
    sleeper(&d, "live", &[]);
    let before = d.inspect("live");
    let try_it = format!("st, ms, s = tcp('{gw}', {port}, b'x')\nprint(f'TCP={{st}}', flush=True)");
    assert_eq!(field(&py_exec(&d, "live", &try_it), "TCP"), "EPERM", "denied before the rule");
    let rule = format!("{gw}:{port}");
    let out = d.cli_json(&["weaver", "egress", "live", "allow", &rule]);
    assert_eq!(out["changed_live"], true, "{out}");
    let t = Instant::now();
    assert_eq!(field(&py_exec(&d, "live", &try_it), "TCP"), "OK", "allowed live");
    eprintln!("allowed connect {} ms after the change (exec included)", t.elapsed().as_millis());
    accepted.recv_timeout(Duration::from_secs(5)).expect("the listener saw the allowed connect");
    let listed = d.cli_json(&["weaver", "egress", "live", "list"]);
    assert!(listed["rules"].to_string().contains(&rule), "{listed}");
    let out = d.cli_json(&["weaver", "egress", "live", "deny", &rule]);
    assert_eq!(out["changed_live"], true, "{out}");
    assert_eq!(field(&py_exec(&d, "live", &try_it), "TCP"), "EPERM", "denied again");
    let after = d.inspect("live");
    assert_eq!(after["state"], "running", "{after}");
    assert!(before["pid"].as_u64().is_some(), "inspect shows the weaver's pid: {before}");
    assert_eq!(before["pid"], after["pid"], "the weaver's process changed: it was restarted");
    assert_eq!(before["started_at"], after["started_at"], "{after}");
    assert_eq!(after["restarts"], 0, "{after}");
}

#[test]
fn a_domain_rule_admits_only_what_loomds_resolver_answered() {
    if !privileged("domain_rules") {
        return;
    }
    let br = Bridge::new("n4", 204);
    let gw = br.gateway;
    let (port, accepted) = tcp_listener(gw);
    let table = [("svc.example.test", gw, 60), ("other.elsewhere.test", gw, 60)];
    let dns = FakeDns::start(
        Ipv4Addr::LOCALHOST,
        Box::new(move |name| table.iter().find(|(n, _, _)| *n == name).map(|(_, a, ttl)| (*a, *ttl))),
    );
    let config = format!("{}dns_upstream = [\"{}\"]\n", br.config(), dns.addr);
    let d = Loomd::start_with_config(Some(&config));
    let script = format!(
        r#"
import subprocess
st, ms, s = tcp("{gw}", {port}, b"before")
print(f"BEFORE={{st}}", flush=True)
r = subprocess.run(["getent", "hosts", "svc.example.test"], capture_output=True, text=True)
print(f"GETENT={{r.returncode}} {{r.stdout.split()[0] if r.stdout.split() else ''}}", flush=True)
st, ms, s = tcp("{gw}", {port}, b"after")
print(f"AFTER={{st}}", flush=True)
r = subprocess.run(["getent", "hosts", "other.elsewhere.test"], capture_output=True, text=True)
print(f"OTHER={{r.returncode}} {{r.stdout.strip()}}", flush=True)
"#
    );
    let log = py_probe(&d, "dom", &["--allow", &format!("example.test:{port}")], &script);
    assert_eq!(field(&log, "BEFORE"), "EPERM", "the address is not admitted before it was resolved:\n{log}");
    assert_eq!(field(&log, "GETENT"), format!("0 {gw}"), "loomd's resolver answered the allowed name:\n{log}");
    assert_eq!(field(&log, "AFTER"), "OK", "the answered address is admitted on the rule's port:\n{log}");
    let (_, sent) = accepted.recv_timeout(Duration::from_secs(5)).expect("the listener saw the admitted connect");
    assert_eq!(sent, "after");
    assert!(accepted.try_recv().is_err(), "only the admitted connect arrived");
    assert_ne!(field(&log, "OTHER").split(' ').next(), Some("0"), "a name outside the rule resolved:\n{log}");
    let seen = dns.seen();
    assert!(seen.iter().any(|n| n == "svc.example.test"), "the allowed name went upstream: {seen:?}");
    assert!(!seen.iter().any(|n| n.contains("elsewhere")), "a refused name reached the upstream: {seen:?}");
    let id = d.inspect("dom")["id"].as_str().unwrap().to_string();
    let row = wait_net_deny(&d, &id, "the refused name", |r| row_has(r, "other.elsewhere.test"));
    assert!(row_has(&row, "dns"), "{row}");
}

#[test]
fn weaver_ssh_runs_a_command_and_an_interactive_session_through_tmux() {
    if !privileged("weaver_ssh") {
        return;
    }
    let br = Bridge::new("n5", 205);
    let d = Loomd::start_with_config(Some(&br.config()));
    sleeper(&d, "shell", &[]);
    let out = d.cli(&["weaver", "ssh", "shell", "--", "sh", "-c", "echo ran-in-$(hostname); exit 7"]);
    assert_eq!(out.status.code(), Some(7), "the command's exit code passes: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ran-in-"), "the command's output: {out:?}");

    // An interactive login shell with a terminal, driven through tmux on its own server.
    let server = format!("loomtest-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new("tmux").arg("-L").arg(&server).args(args).output().unwrap();
    struct KillServer(String);
    impl Drop for KillServer {
        fn drop(&mut self) {
            let _ = Command::new("tmux").args(["-L", &self.0, "kill-server"]).output();
        }
    }
    let _guard = KillServer(server.clone());
    let file = d.dir.path().join("ssh-exit");
    let cmd = format!(
        "{} --socket {} weaver ssh shell; echo exit=$? > {}",
        common::loom_bin().display(),
        d.socket.display(),
        file.display()
    );
    let out = tmux(&["new-session", "-d", "-s", "ssh", "-x", "120", "-y", "40", &cmd]);
    assert!(out.status.success(), "{out:?}");
    let capture = || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "ssh"]).stdout).into_owned();
    let wait_pane = |what: &str, pred: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let pane = capture();
            if pred(&pane) {
                return pane;
            }
            assert!(Instant::now() < deadline, "the pane never showed {what}:\n{pane}\n{}", loomd_log(&d));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The shell's prompt, then a terminal check (stdin is a terminal of tmux's size) and
    // arithmetic only the shell can do. (`tty` prints "not a tty": the terminal is the host's
    // devpts, which has no name inside the weaver; isatty and the size hold.)
    wait_pane("a prompt", &|p| p.lines().any(|l| l.trim_end().ends_with('#') || l.trim_end().ends_with('$')));
    let out =
        tmux(&["send-keys", "-t", "ssh", "[ -t 0 ] && echo TERMINAL-$((2*2)); stty size; echo $((6*7))", "Enter"]);
    assert!(out.status.success(), "{out:?}");
    let pane = wait_pane("42", &|p| p.lines().any(|l| l.trim() == "42"));
    assert!(pane.lines().any(|l| l.trim() == "TERMINAL-4"), "the session has a terminal:\n{pane}");
    assert!(pane.lines().any(|l| l.trim() == "40 120"), "the terminal has tmux's size:\n{pane}");
    let out = tmux(&["send-keys", "-t", "ssh", "exit 3", "Enter"]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&file)
            && t.ends_with('\n')
        {
            break t;
        }
        assert!(Instant::now() < deadline, "the ssh session never ended: {}", capture());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(text.trim(), "exit=3", "the session's exit code passes");
}

/// Network namespaces and links the WireGuard test made, removed when dropped (the peer's
/// wireguard-go runs in the foreground as a child and is killed first).
#[derive(Debug, Default)]
struct Scaffold {
    netns: Vec<String>,
    links: Vec<String>,
    children: Vec<std::process::Child>,
    files: Vec<std::path::PathBuf>,
}

impl Drop for Scaffold {
    fn drop(&mut self) {
        for c in &mut self.children {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        for n in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// `ip netns exec NS python3 -c PRELUDE+script` from the host side; its stdout.
#[test]
fn an_ssh_weaver_lets_in_its_keys_under_the_host_key_loomd_made_and_no_one_else() {
    if !privileged("weaver_sshd") {
        return;
    }
    let br = Bridge::new("n7", 207);
    let d = Loomd::start_with_config(Some(&br.config()));
    let c = SshClient::new();
    sleeper(&d, "sshd", &["--ssh", "--ssh-keys", &c.public_key_file()]);
    let w = d.inspect("sshd");
    let addr = w["address"].as_str().unwrap_or_else(|| panic!("no address: {w}")).to_string();
    let host_key = w["spec"]["ssh"]["host_key"].as_str().unwrap_or_default().to_string();
    assert!(host_key.starts_with("ssh-ed25519 "), "inspect shows the host key: {w}");
    c.trust(&addr, &host_key);

    // The first connection, with no retry: create returns once sshd listens.
    let out = c.ssh("id", &addr, &["echo in-$(hostname); id -u"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the weaver's key logs in under the pinned host key: {out:?}\n{}", d.logs("sshd"));
    assert!(stdout.lines().any(|l| l == "0"), "as the weaver's root: {stdout}");
    assert!(stdout.lines().any(|l| l == "in-sshd"), "inside the weaver: {stdout}");
    let out = c.ssh("id", &addr, &["exit 3"]);
    assert_eq!(out.status.code(), Some(3), "the remote exit code passes: {out:?}");

    let out = c.ssh("stranger", &addr, &["true"]);
    assert_eq!(out.status.code(), Some(255), "a key the weaver was not given is refused: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");

    // A weaver without --ssh runs no sshd.
    sleeper(&d, "plain", &[]);
    let out = c.ssh("id", d.inspect("plain")["address"].as_str().unwrap(), &["true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Connection refused"), "{out:?}");

    // Bad requests say what was wrong.
    let bad = c.dir.path().join("bad.pub");
    std::fs::write(&bad, "command=\"/bin/sh\" ssh-ed25519 AAAA x\n").unwrap();
    let out = d.cli(&["weaver", "create", "--ssh", "--ssh-keys", bad.to_str().unwrap(), "--", "true"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("options"), "{out:?}");
    let out =
        d.cli(&["weaver", "create", "--ssh", "--ssh-keys", &c.public_key_file(), "--network", "none", "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ssh needs --network private"), "{out:?}");
}

#[test]
fn a_tailscale_weaver_joins_with_the_sops_auth_key_which_then_leaves_its_root() {
    if !privileged("weaver_tailscale") {
        return;
    }
    let fake = FakeTailscale::install();
    let br = Bridge::new("n8", 208);
    let d = Loomd::start_with_config(Some(&(br.config() + &fake.config())));
    let w = sleeper(&d, "tsnode", &["--tailscale"]);
    let root = d.state_dir().join("weavers").join(w["id"].as_str().unwrap()).join("root");
    let read = |f: &str| std::fs::read_to_string(root.join(".loom").join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    // The key the SOPS file holds under test_key ("test_value") is what `tailscale up` read.
    let expected = sh_ok("sh", &["-c", "printf test_value | sha256sum | cut -d' ' -f1"]);
    assert_eq!(read("fake-tailscale.keyhash").trim(), expected.trim(), "tailscale up got the SOPS key");
    let up = read("fake-tailscale.args");
    assert!(
        up.contains("up --auth-key=file:/.loom/tailscale/authkey --hostname=tsnode --advertise-tags=tag:loom-ci --ssh"),
        "{up}"
    );
    let daemon = read("fake-tailscaled.args");
    assert!(daemon.contains("--tun=userspace-networking --state=mem:"), "{daemon}");
    // After the start the key is nowhere: not in the weaver's root (env file included), its
    // log, or loomd's log.
    assert!(!root.join(loom_core::tailscale::AUTH_KEY).exists(), "the key file is gone");
    assert_eq!(files_containing(&root, b"test_value"), Vec::<std::path::PathBuf>::new());
    assert!(!d.logs("tsnode").contains("test_value"));
    assert!(!std::fs::read_to_string(d.log_path()).unwrap().contains("test_value"), "loomd's log");
    let rules = d.cli_json(&["weaver", "egress", "tsnode", "list"]).to_string();
    assert!(rules.contains("tailscale.com:443/tcp"), "tailscaled may reach the coordination server: {rules}");

    // A join that fails fails the create, and takes the key with it.
    let out = d.cli(&["weaver", "create", "--name", "tsfail", "--tailscale", "--", "sleep", "600"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("tailscale up failed"), "{out:?}");
    let failed = d.inspect("tsfail");
    let failed_root = d.state_dir().join("weavers").join(failed["id"].as_str().unwrap()).join("root");
    assert_eq!(files_containing(&failed_root, b"test_value"), Vec::<std::path::PathBuf>::new());
    let out = d.cli(&["weaver", "create", "--tailscale", "--network", "none", "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tailscale needs --network private"), "{out:?}");
}

fn py_in_netns(ns: &str, script: &str) -> String {
    let code = format!("{PY_PRELUDE}\n{script}\nprint('PROBE-DONE', flush=True)\n");
    let out = Command::new("ip").args(["netns", "exec", ns, "/usr/bin/python3", "-c", &code]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("PROBE-DONE"), "the probe in {ns} did not finish: {out:?}");
    text
}

#[test]
fn a_wireguard_peer_in_its_own_namespace_reaches_a_weaver_over_the_tunnel_and_not_without_it() {
    if !privileged("wireguard_peer") {
        return;
    }
    let br = Bridge::new("n6", 206);
    let mut sc = Scaffold::default();
    // The peer's namespace, reaching the host's endpoint over a veth pair of its own.
    let (ns, host_if, peer_if, wg_host, wg_peer) = ("ltpeer6", "ltwh6", "ltwp6", "ltwg6", "ltwgc6");
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
    let _ = Command::new("ip").args(["link", "del", host_if]).output();
    let _ = Command::new("ip").args(["link", "del", wg_host]).output();
    sh_ok("ip", &["netns", "add", ns]);
    sc.netns.push(ns.into());
    sh_ok("ip", &["link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", ns]);
    sc.links.push(host_if.into());
    sc.links.push(wg_host.into());
    sh_ok("ip", &["addr", "add", "10.216.0.1/30", "dev", host_if]);
    sh_ok("ip", &["link", "set", host_if, "up"]);
    for args in [
        vec!["addr", "add", "10.216.0.2/30", "dev", peer_if],
        vec!["link", "set", peer_if, "up"],
        vec!["link", "set", "lo", "up"],
    ] {
        let mut full = vec!["-n", ns];
        full.extend(args);
        sh_ok("ip", &full);
    }
    let port = 51906;
    let config = format!(
        "{}[wireguard]\nenable = true\ninterface = \"{wg_host}\"\nlisten_port = {port}\naddress = \"10.226.0.1/24\"\n\
         endpoint = \"10.216.0.1:{port}\"\nbackend = \"userspace\"\npersistent_keepalive = 0\n",
        br.config()
    );
    let d = Loomd::start_with_config(Some(&config));

    // A weaver serving TCP on all its addresses.
    let server = r#"
import socket
print("ADDR=" + addr(), flush=True)
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 8080)); l.listen(16)
print("LISTENING=1", flush=True)
while True:
    c, peer = l.accept()
    c.sendall(b"weaver-says-hi " + peer[0].encode() + b"\n"); c.close()
"#;
    let code = format!("{PY_PRELUDE}\n{server}");
    let w = d.cli_json(&[
        "weaver",
        "create",
        "--name",
        "srv",
        "--network",
        "private",
        "--",
        "/usr/bin/python3",
        "-c",
        &code,
    ]);
    assert_eq!(w["state"], "running", "{w}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = d.logs("srv");
        if log.contains("LISTENING=1") {
            break log;
        }
        assert!(Instant::now() < deadline, "the weaver's server never listened:\n{log}\n{}", loomd_log(&d));
        std::thread::sleep(Duration::from_millis(100));
    };
    let weaver: Ipv4Addr = field(&log, "ADDR").parse().unwrap();
    assert!(br.contains(weaver));
    let reach = format!(
        "st, ms, s = tcp('{weaver}', 8080, timeout=3)\nprint(f'TCP={{st}}', flush=True)\n\
         print('REPLY=' + (s.recv(64).decode().strip() if s else ''), flush=True)"
    );
    // Without the tunnel the peer's namespace has no way to the weaver.
    let before = py_in_netns(ns, &reach);
    assert_ne!(field(&before, "TCP"), "OK", "the peer reached the weaver without a tunnel:\n{before}");

    let peer = d.cli_json(&["wireguard", "peer", "add", "alice"]);
    let client = peer["client_config"].as_str().unwrap_or_else(|| panic!("no client config: {peer}")).to_string();
    assert!(client.contains("[Interface]") && client.contains("PrivateKey") && client.contains("[Peer]"), "{client}");
    assert!(client.contains(&format!("Endpoint = 10.216.0.1:{port}")), "{client}");
    let value = |key: &str| {
        client
            .lines()
            .find_map(|l| l.split_once('=').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| panic!("{key} missing in the client config:\n{client}"))
    };
    let address = value("Address");
    let allowed: Vec<String> = value("AllowedIPs").split(',').map(|s| s.trim().to_string()).collect();
    assert!(allowed.iter().any(|a| a == &br.subnet), "the weaver subnet is routed: {allowed:?}");

    // The peer: wireguard-go in its namespace, the stripped config, its address and routes.
    let wg = Command::new("ip")
        .args(["netns", "exec", ns, "wireguard-go", "-f", wg_peer])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    sc.children.push(wg);
    sc.files.push(std::path::Path::new(loom_wireguard::UAPI_DIR).join(format!("{wg_peer}.sock")));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Command::new("ip").args(["-n", ns, "link", "show", wg_peer]).output().unwrap().status.success() {
        assert!(Instant::now() < deadline, "wireguard-go never made {wg_peer}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let conf = d.dir.path().join("alice.conf");
    std::fs::write(&conf, loom_wireguard::strip_wg_quick(&client)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The UAPI socket may appear a moment after the interface.
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "wg", "setconf", wg_peer, conf.to_str().unwrap()])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "wg setconf: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let address = if address.contains('/') { address } else { format!("{address}/32") };
    sh_ok("ip", &["-n", ns, "addr", "add", &address, "dev", wg_peer]);
    sh_ok("ip", &["-n", ns, "link", "set", wg_peer, "up"]);
    for a in &allowed {
        sh_ok("ip", &["-n", ns, "route", "replace", a, "dev", wg_peer]);
    }

    // Over the tunnel: the weaver answers, and sees the peer's tunnel address.
    let deadline = Instant::now() + Duration::from_secs(20);
    let over = loop {
        let out = py_in_netns(ns, &reach);
        if field(&out, "TCP") == "OK" {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "the peer never reached the weaver over the tunnel:\n{out}\nwg show: {}\n{}",
            String::from_utf8_lossy(&Command::new("wg").arg("show").output().unwrap().stdout),
            loomd_log(&d)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let peer_ip = address.split('/').next().unwrap();
    assert_eq!(field(&over, "REPLY"), format!("weaver-says-hi {peer_ip}"), "{over}");

    // Removed, the peer is cut off within a few seconds.
    let out = d.cli_json(&["wireguard", "peer", "rm", "alice"]);
    assert_eq!(out["removed"], "alice", "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = py_in_netns(ns, &reach.replace("timeout=3", "timeout=1"));
        if field(&out, "TCP") != "OK" {
            break;
        }
        assert!(Instant::now() < deadline, "the removed peer still reaches the weaver:\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = py_in_netns(ns, &reach);
    assert!(
        ["TIMEOUT", "ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH"].contains(&field(&after, "TCP").as_str()),
        "{after}"
    );
    drop(d);
    drop(sc);
}
