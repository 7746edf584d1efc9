//! The one seam that changes the host's network: `ip -batch` and `nft -f` with loomd's own
//! lines (never a value a weaver chose), and the namespace calls. The real implementation
//! runs the tools found once in loomd's PATH with an empty environment; the recording one
//! keeps what it was asked, for unit tests.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use loom_core::net::{self as plan, IpBatch};
use loom_core::weaver::WeaverId;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The namespace file a non-host weaver runs in.
pub fn netns_path(id: &WeaverId) -> PathBuf {
    Path::new(NETNS_DIR).join(plan::netns_name(id.as_str()))
}

#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("`{tool}` is not installed (loomd looked in its PATH); install iproute2 and nftables")]
    Missing { tool: &'static str },
    #[error("`{tool}` failed ({status}): {stderr}")]
    Failed { tool: &'static str, status: String, stderr: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Everything loomd does to the host's network. The real one runs `ip` and `nft`; the
/// recording one keeps what it was asked, for unit tests.
pub trait HostNet: Send + Sync + std::fmt::Debug {
    fn ip(&self, batch: &IpBatch) -> Result<(), HostNetError>;
    fn nft(&self, ruleset: &str) -> Result<(), HostNetError>;
    /// Makes the bridge if it does not exist.
    fn ensure_bridge(&self, name: &str) -> Result<(), HostNetError>;
    fn enable_forwarding(&self) -> Result<(), HostNetError>;
    /// Best effort: what a crashed run left (its namespace, the host end of its veth).
    fn remove_leftovers(&self, id: &str);
    /// The kernel's cookie of a namespace: what the egress programs key a weaver's rules by.
    fn netns_cookie(&self, netns: &Path) -> Result<u64, HostNetError>;
    /// Lets every user of the namespace bind ports below 1024 (`ip_unprivileged_port_start`),
    /// which the weaver's root could not otherwise: the namespace belongs to the host.
    fn open_low_ports(&self, netns: &Path) -> Result<(), HostNetError>;
    /// The address a weaver's interface has now (after a loomd restart).
    fn weaver_addr(&self, id: &str) -> Option<Ipv4Addr>;
}

/// The real [`HostNet`]: `ip` and `nft` found once in loomd's own PATH and run with an empty
/// environment.
#[derive(Debug)]
pub struct IpTool {
    ip: Option<PathBuf>,
    nft: Option<PathBuf>,
}

impl IpTool {
    pub fn from_path() -> IpTool {
        IpTool { ip: find_tool("ip"), nft: find_tool("nft") }
    }

    fn run(
        &self,
        tool: &'static str,
        path: &Option<PathBuf>,
        args: &[&str],
        stdin: &str,
    ) -> Result<String, HostNetError> {
        let path = path.as_ref().ok_or(HostNetError::Missing { tool })?;
        let io = |context: &str| {
            let context = format!("running {tool} to {context}");
            move |source| HostNetError::Io { context, source }
        };
        let mut child = Command::new(path)
            .args(args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("start it"))?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).map_err(io("write its input"))?;
        }
        let out = child.wait_with_output().map_err(io("wait for it"))?;
        if !out.status.success() {
            return Err(HostNetError::Failed {
                tool,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().chars().take(500).collect(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path =
        std::env::var_os("PATH").unwrap_or_else(|| "/run/current-system/sw/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

impl HostNet for IpTool {
    fn ip(&self, batch: &IpBatch) -> Result<(), HostNetError> {
        let mut args = vec![];
        if let Some(ns) = &batch.netns {
            args.extend(["-n", ns.as_str()]);
        }
        args.extend(["-batch", "-"]);
        self.run("ip", &self.ip, &args, &(batch.lines.join("\n") + "\n")).map(drop)
    }

    fn nft(&self, ruleset: &str) -> Result<(), HostNetError> {
        self.run("nft", &self.nft, &["-f", "-"], ruleset).map(drop)
    }

    fn ensure_bridge(&self, name: &str) -> Result<(), HostNetError> {
        if Path::new("/sys/class/net").join(name).exists() {
            return Ok(());
        }
        self.run("ip", &self.ip, &["link", "add", name, "type", "bridge"], "").map(drop)
    }

    fn enable_forwarding(&self) -> Result<(), HostNetError> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|source| HostNetError::Io { context: "enabling IPv4 forwarding".into(), source })
    }

    fn remove_leftovers(&self, id: &str) {
        let ns = plan::netns_name(id);
        if Path::new(NETNS_DIR).join(&ns).exists() {
            let _ = self.run("ip", &self.ip, &["netns", "delete", &ns], "");
        }
        let veth = plan::host_veth(id);
        if Path::new("/sys/class/net").join(&veth).exists() {
            let _ = self.run("ip", &self.ip, &["link", "delete", &veth], "");
        }
    }

    fn netns_cookie(&self, netns: &Path) -> Result<u64, HostNetError> {
        in_netns(netns, loom_egress::current_netns_cookie).map_err(|source| HostNetError::Io {
            context: format!("reading the cookie of {}", netns.display()),
            source,
        })
    }

    fn open_low_ports(&self, netns: &Path) -> Result<(), HostNetError> {
        // /proc/sys/net is the namespace of the task that opens it: the thread's, here.
        in_netns(netns, || std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")).map_err(|source| {
            HostNetError::Io { context: format!("opening the low ports of {}", netns.display()), source }
        })
    }

    fn weaver_addr(&self, id: &str) -> Option<Ipv4Addr> {
        let ns = plan::netns_name(id);
        let out =
            self.run("ip", &self.ip, &["-n", &ns, "-4", "-o", "addr", "show", "dev", plan::WEAVER_IF], "").ok()?;
        // `2: eth0    inet 10.87.1.2/16 brd ...`
        let cidr = out.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
        cidr.split('/').next()?.parse().ok()
    }
}

/// Runs `f` on a thread of its own that entered `netns`, so that no other work of loomd ever
/// runs in a weaver's namespace; sockets `f` makes stay in the namespace they were made in.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let ns = File::open(netns)?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// A [`HostNet`] that changes nothing and keeps what it was asked, for unit tests.
#[derive(Debug, Default)]
pub struct RecordingNet {
    pub calls: Mutex<Vec<String>>,
}

impl HostNet for RecordingNet {
    fn ip(&self, batch: &IpBatch) -> Result<(), HostNetError> {
        let ns = batch.netns.as_deref().unwrap_or("host");
        lock(&self.calls).extend(batch.lines.iter().map(|l| format!("ip[{ns}] {l}")));
        Ok(())
    }
    fn nft(&self, ruleset: &str) -> Result<(), HostNetError> {
        lock(&self.calls).push(format!("nft {} lines", ruleset.lines().count()));
        Ok(())
    }
    fn ensure_bridge(&self, name: &str) -> Result<(), HostNetError> {
        lock(&self.calls).push(format!("bridge {name}"));
        Ok(())
    }
    fn enable_forwarding(&self) -> Result<(), HostNetError> {
        lock(&self.calls).push("forwarding".into());
        Ok(())
    }
    fn remove_leftovers(&self, id: &str) {
        lock(&self.calls).push(format!("remove {id}"));
    }
    fn netns_cookie(&self, _netns: &Path) -> Result<u64, HostNetError> {
        Ok(7)
    }
    fn open_low_ports(&self, netns: &Path) -> Result<(), HostNetError> {
        lock(&self.calls).push(format!("low ports {}", netns.display()));
        Ok(())
    }
    fn weaver_addr(&self, _id: &str) -> Option<Ipv4Addr> {
        None
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
