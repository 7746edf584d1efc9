//! A lab of real network namespaces: "host" (where loomd's tunnel runs), "weaver" (behind the
//! host on a veth, serving a TCP echo) and "peer" (an operator's machine, reaching the host
//! over a veth standing in for the internet, running its own wireguard-go). Every namespace,
//! process and socket the lab made is removed when it drops, on every path.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const WEAVER_SUBNET: &str = "10.87.0.0/16";
pub const WEAVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 87, 0, 2);
pub const ECHO_PORT: u16 = 7777;
/// The host's address on the "internet" veth: what clients dial.
pub const HOST_PUBLIC: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);

/// Root, TUN, wireguard-go, wg and ip; without them the test is skipped loudly, unless
/// LOOM_REQUIRE_PRIVILEGED=1 (CI), where a missing one is a failure.
pub fn privileged(what: &str) -> bool {
    let mut missing = vec![];
    if !nix::unistd::geteuid().is_root() {
        missing.push("root");
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun");
    }
    for (tool, hint) in [
        ("/usr/bin/wireguard-go", "wireguard-go (apt-get install wireguard-go)"),
        ("/usr/bin/wg", "wg (apt-get install wireguard-tools)"),
    ] {
        if !Path::new(tool).exists() {
            missing.push(hint);
        }
    }
    if !["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"].iter().any(|p| Path::new(p).exists()) {
        missing.push("ip (iproute2)");
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{what}: needs {}", missing.join(", "));
    if std::env::var("LOOM_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("LOOM_REQUIRE_PRIVILEGED=1 but {msg}");
    }
    eprintln!("SKIPPED (not privileged): {msg}");
    false
}

pub fn run(program: &str, args: &[&str]) -> String {
    let out =
        Command::new(program).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// Runs `f` on a thread inside the named network namespace (the calling thread stays put).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn enter(ns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("netns {ns}: {e}"));
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {ns}: {e}"));
}

pub struct Lab {
    pub tag: String,
    pub host: String,
    pub weaver: String,
    pub peer: String,
    /// The host tunnel's interface name.
    pub wg_host: String,
    pub wg_peer: String,
    pub state: tempfile::TempDir,
    children: Mutex<Vec<Child>>,
    /// wireguard-go processes the tunnel under test started (not the lab's children).
    pub tunnel_pids: Mutex<Vec<u32>>,
    echo_stop: Arc<AtomicBool>,
    echo: Option<std::thread::JoinHandle<()>>,
}

impl Lab {
    /// `n` tells the labs of one test binary apart.
    pub fn new(n: u32) -> Lab {
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let lab = Lab {
            host: format!("lwg-h-{tag}"),
            weaver: format!("lwg-w-{tag}"),
            peer: format!("lwg-p-{tag}"),
            wg_host: format!("lwh{tag}"),
            wg_peer: format!("lwp{tag}"),
            state: tempfile::tempdir().unwrap(),
            children: Mutex::new(vec![]),
            tunnel_pids: Mutex::new(vec![]),
            echo_stop: Arc::new(AtomicBool::new(false)),
            echo: None,
            tag,
        };
        for ns in [&lab.host, &lab.weaver, &lab.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let (hw, wh) = (format!("lvw{}", lab.tag), format!("lvwb{}", lab.tag));
        let (hp, ph) = (format!("lvp{}", lab.tag), format!("lvpb{}", lab.tag));
        ip(&["link", "add", &hw, "netns", &lab.host, "type", "veth", "peer", "name", &wh, "netns", &lab.weaver]);
        ip(&["link", "add", &hp, "netns", &lab.host, "type", "veth", "peer", "name", &ph, "netns", &lab.peer]);
        ip(&["-n", &lab.host, "address", "add", "10.87.0.1/16", "dev", &hw]);
        ip(&["-n", &lab.weaver, "address", "add", "10.87.0.2/16", "dev", &wh]);
        ip(&["-n", &lab.host, "address", "add", "10.250.0.1/30", "dev", &hp]);
        ip(&["-n", &lab.peer, "address", "add", "10.250.0.2/30", "dev", &ph]);
        for (ns, dev) in [(&lab.host, &hw), (&lab.weaver, &wh), (&lab.host, &hp), (&lab.peer, &ph)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&["-n", &lab.weaver, "route", "add", "default", "via", "10.87.0.1"]);
        // Only the weaver side forwards, as loom's bridge does; the tunnel must enable its own
        // side, so a tunnel that forgot to fails here. (A new namespace copies the root
        // namespace's IPv4 settings, which may forward everywhere: switch that off first.)
        let sysctl = |key: &str, value: &str| {
            let path = format!("/proc/sys/net/ipv4/{key}");
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
        };
        in_netns(&lab.host, || {
            sysctl("conf/all/forwarding", "0");
            sysctl("conf/default/forwarding", "0");
            sysctl(&format!("conf/{hw}/forwarding"), "1");
        });
        lab
    }

    /// A TCP echo on the weaver's address, until the lab drops.
    pub fn serve_echo(&mut self) {
        let stop = self.echo_stop.clone();
        let weaver = self.weaver.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.echo = Some(std::thread::spawn(move || {
            enter(&weaver);
            let listener = TcpListener::bind(SocketAddr::from((WEAVER_ADDR, ECHO_PORT))).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut buf = [0u8; 256];
                        if let Ok(n) = s.read(&mut buf) {
                            let _ = s.write_all(&buf[..n]);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("echo server listening");
    }

    /// Connects from the peer namespace to the weaver's echo and checks the answer.
    pub fn peer_reaches_weaver(&self, timeout: Duration) -> Result<Duration, String> {
        in_netns(&self.peer, || {
            let start = Instant::now();
            let addr = SocketAddr::from((WEAVER_ADDR, ECHO_PORT));
            let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
            let took = start.elapsed();
            s.set_read_timeout(Some(timeout)).unwrap();
            let msg = format!("hello from {}", self.tag);
            s.write_all(msg.as_bytes()).map_err(|e| format!("write: {e}"))?;
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
            assert_eq!(buf, msg.as_bytes(), "the echo answers what was sent");
            Ok(took)
        })
    }

    /// The operator's side: wireguard-go in the peer namespace, configured from the client
    /// config text `add_peer` produced, the way wg-quick would (strip, setconf, address, routes).
    pub fn start_peer(&self, client_config: &str) {
        let sock = PathBuf::from(loom_wireguard::UAPI_DIR).join(format!("{}.sock", self.wg_peer));
        if !sock.exists() {
            let child = Command::new("ip")
                .args(["netns", "exec", &self.peer, "/usr/bin/wireguard-go", "-f", &self.wg_peer])
                .env("LOG_LEVEL", "error")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            self.children.lock().unwrap().push(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::os::unix::net::UnixStream::connect(&sock).is_err() {
                assert!(Instant::now() < deadline, "the peer's wireguard-go socket {} never appeared", sock.display());
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let value = |key: &str| {
            client_config
                .lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.trim_start().strip_prefix('=')))
                .unwrap_or_else(|| panic!("{key} missing from the client config"))
                .trim()
                .to_string()
        };
        let address = value("Address");
        let allowed = value("AllowedIPs");
        let conf = self.state.path().join(format!("{}.conf", self.wg_peer));
        std::fs::write(&conf, loom_wireguard::strip_wg_quick(client_config)).unwrap();
        run("ip", &["netns", "exec", &self.peer, "wg", "setconf", &self.wg_peer, conf.to_str().unwrap()]);
        std::fs::remove_file(&conf).unwrap();
        ip(&["-n", &self.peer, "address", "flush", "dev", &self.wg_peer]);
        ip(&["-n", &self.peer, "address", "add", &address, "dev", &self.wg_peer]);
        ip(&["-n", &self.peer, "link", "set", &self.wg_peer, "up"]);
        for net in allowed.split(',').map(str::trim) {
            ip(&["-n", &self.peer, "route", "replace", net, "dev", &self.wg_peer]);
        }
    }

    pub fn host_links(&self) -> String {
        ip(&["-n", &self.host, "-o", "link", "show"])
    }
}

pub fn pid_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has exited; it only waits to be reaped.
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.echo_stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.echo.take() {
            let _ = h.join();
        }
        for mut child in self.children.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.tunnel_pids.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            // Only while it is still this process's child: a reaped pid may be anyone's now.
            if parent_of(pid) != Some(std::process::id()) {
                continue;
            }
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        for ns in [&self.host, &self.weaver, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for wg in [&self.wg_host, &self.wg_peer] {
            let _ = std::fs::remove_file(PathBuf::from(loom_wireguard::UAPI_DIR).join(format!("{wg}.sock")));
        }
    }
}
