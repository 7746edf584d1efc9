//! The host side: iproute2's `ip` (fixed arguments, empty environment), wireguard-go (argv and
//! environment chosen here, nothing from a weaver or client), the forwarding sysctl. Every
//! command runs in the calling thread's network namespace.

use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::WgError;

/// Where wireguard-go (and wireguard-control) keep the UAPI sockets.
pub const UAPI_DIR: &str = "/var/run/wireguard";

const IP_CANDIDATES: [&str; 4] = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/run/current-system/sw/bin/ip"];
const WG_GO_CANDIDATES: [&str; 3] =
    ["/usr/bin/wireguard-go", "/usr/local/bin/wireguard-go", "/run/current-system/sw/bin/wireguard-go"];

/// The programs loomd runs, by absolute path (never a `PATH` lookup).
#[derive(Debug, Clone)]
pub struct Tools {
    pub ip: PathBuf,
    pub wireguard_go: Option<PathBuf>,
}

fn resolve(configured: Option<&Path>, candidates: &[&str], tool: &'static str) -> Result<PathBuf, WgError> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(WgError::ToolMissing { tool, tried: p.display().to_string() })
        };
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| WgError::ToolMissing { tool, tried: candidates.join(", ") })
}

impl Tools {
    pub fn resolve(ip: Option<&Path>, wireguard_go: Option<&Path>) -> Result<Tools, WgError> {
        let ip = resolve(ip, &IP_CANDIDATES, "ip (iproute2)")?;
        // wireguard-go is needed only where the kernel has no module: a missing one is an error
        // when the user-space backend is chosen, not before.
        let wireguard_go = match resolve(wireguard_go, &WG_GO_CANDIDATES, "wireguard-go") {
            Ok(p) => Some(p),
            Err(e) if wireguard_go.is_some() => return Err(e),
            Err(_) => None,
        };
        Ok(Tools { ip, wireguard_go })
    }

    pub fn wireguard_go(&self) -> Result<&Path, WgError> {
        self.wireguard_go
            .as_deref()
            .ok_or_else(|| WgError::ToolMissing { tool: "wireguard-go", tried: WG_GO_CANDIDATES.join(", ") })
    }

    /// Runs `ip ARGS`; its stdout, or an error with its stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String, WgError> {
        let out = Command::new(&self.ip)
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .map_err(|e| WgError::Io { what: format!("running {}", self.ip.display()), source: e })?;
        if !out.status.success() {
            return Err(WgError::Command {
                command: format!("ip {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// What an interface of the tunnel's name is, if one exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    None,
    /// A kernel WireGuard link.
    Kernel,
    /// A TUN device with a live wireguard-go UAPI socket.
    Userspace,
    /// Something else holds the name.
    Other,
}

pub fn existing(tools: &Tools, name: &str) -> Result<Existing, WgError> {
    // `ip -d link show` prints the link kind ("wireguard", "tun", ...) on its second line.
    let out = match tools.ip(&["-d", "-o", "link", "show", "dev", name]) {
        Ok(out) => out,
        Err(WgError::Command { stderr, .. }) if stderr.contains("does not exist") => return Ok(Existing::None),
        Err(e) => return Err(e),
    };
    let words: Vec<&str> = out.split_whitespace().collect();
    if words.contains(&"wireguard") {
        Ok(Existing::Kernel)
    } else if words.contains(&"tun") && uapi_alive(name) {
        Ok(Existing::Userspace)
    } else {
        Ok(Existing::Other)
    }
}

pub fn uapi_socket(name: &str) -> PathBuf {
    Path::new(UAPI_DIR).join(format!("{name}.sock"))
}

pub fn uapi_alive(name: &str) -> bool {
    UnixStream::connect(uapi_socket(name)).is_ok()
}

/// A wireguard-go this loomd started.
#[derive(Debug)]
pub struct WireguardGo {
    pub child: Child,
    log: PathBuf,
}

/// Starts wireguard-go in the foreground for `name` and waits until its UAPI socket answers.
/// Its output goes to `log` (truncated, 0600) rather than a pipe: it outlives a crashed loomd,
/// and a pipe with no reader would kill it at its next log line.
pub fn spawn_wireguard_go(tools: &Tools, name: &str, log: &Path) -> Result<WireguardGo, WgError> {
    let program = tools.wireguard_go()?;
    std::fs::create_dir_all(UAPI_DIR).map_err(|e| WgError::Io { what: format!("creating {UAPI_DIR}"), source: e })?;
    // A socket left by a wireguard-go that died would make the new one refuse the name.
    let _ = std::fs::remove_file(uapi_socket(name));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| WgError::Io { what: format!("opening {}", log.display()), source: e })?;
    let err = out.try_clone().map_err(|e| WgError::Io { what: format!("opening {}", log.display()), source: e })?;
    let child = Command::new(program)
        .arg("-f")
        .arg(name)
        .env_clear()
        .env("LOG_LEVEL", "error")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| WgError::Io { what: format!("starting {}", program.display()), source: e })?;
    let mut wg = WireguardGo { child, log: log.to_path_buf() };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if uapi_alive(name) {
            tracing::info!(interface = name, pid = wg.child.id(), "wireguard-go started");
            return Ok(wg);
        }
        if let Ok(Some(status)) = wg.child.try_wait() {
            return Err(WgError::UserspaceStart { message: format!("it exited with {status}"), output: wg.output() });
        }
        if Instant::now() > deadline {
            wg.kill();
            return Err(WgError::UserspaceStart {
                message: format!("its UAPI socket {} did not appear within 10 s", uapi_socket(name).display()),
                output: wg.output(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl WireguardGo {
    fn output(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after two seconds; reaps it either way.
    pub fn kill(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Packets arriving on the tunnel may be forwarded to the routed subnets. Per interface, so
/// the host's other interfaces keep whatever forwarding they had.
pub fn enable_forwarding(name: &str) -> Result<(), WgError> {
    let path = format!("/proc/sys/net/ipv4/conf/{name}/forwarding");
    std::fs::write(&path, b"1").map_err(|e| WgError::Io { what: format!("writing 1 to {path}"), source: e })
}
