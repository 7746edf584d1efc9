//! Weaver networks as loomd runs them. Every weaver not on the host's network gets a network
//! namespace that loomd makes *before* its first process (`/run/netns/loom-ID`, joined by
//! systemd-nspawn with `--network-namespace-path`), so the proxy listener is there from the
//! first instant and the namespace is owned by the host, not by the weaver's user namespace.
//! A `private` weaver also gets a veth pair to the host bridge, an address from
//! `[network] subnet`, and a default route through the bridge (NAT out through nftables).
//!
//! What is decided (names, addresses, the `ip` lines) is `loom_core::net`; the one seam that
//! changes the host is [`HostNet`]: `ip -batch` and `nft -f` with loomd's own lines (never a
//! value a weaver chose) and the namespace calls, with a recording implementation for tests.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use loom_core::config::NetworkConfig;
use loom_core::net::{self as plan, IpBatch};
use loom_core::weaver::{NetworkMode, RunId, WeaverId};

use crate::daemon::WeaverHooks;
use crate::store::WeaverRecord;

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
        in_netns(netns, || {
            let sock = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            // SAFETY: a valid socket and a buffer of the size given.
            let rc = unsafe {
                libc::getsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_NETNS_COOKIE,
                    (&mut cookie as *mut u64).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(cookie)
        })
        .map_err(|source| HostNetError::Io { context: format!("reading the cookie of {}", netns.display()), source })
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

/// One run's network, released in that run's `after_stop`.
#[derive(Debug, Clone)]
struct NetRun {
    run: RunId,
    addr: Option<Ipv4Addr>,
    cookie: Option<u64>,
}

/// The network as a [`WeaverHooks`]: the namespace and veth of a run are made in
/// `before_start` (before the proxy hook binds its listener in the namespace) and removed in
/// that run's `after_stop`.
#[derive(Debug)]
pub struct WeaverNet {
    host: Arc<dyn HostNet>,
    config: NetworkConfig,
    /// Set once the bridge, its address and NAT are in place; an error is retried at the next start.
    bridge_ready: Mutex<bool>,
    runs: Mutex<HashMap<WeaverId, NetRun>>,
    /// The operator tunnel's interface: forwarded only into the weaver subnet.
    tunnel: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WeaverNet {
    pub fn new(host: Arc<dyn HostNet>, config: NetworkConfig, tunnel: Option<String>) -> WeaverNet {
        WeaverNet { host, config, bridge_ready: Mutex::new(false), runs: Mutex::new(HashMap::new()), tunnel }
    }

    /// The bridge, its gateway address and NAT; done at the first private start, not at
    /// loomd's, so a host that only runs `none` weavers never gets a bridge.
    fn ensure_bridge(&self) -> Result<(), String> {
        let mut ready = lock(&self.bridge_ready);
        if *ready {
            return Ok(());
        }
        let c = &self.config;
        self.host.ensure_bridge(&c.bridge).map_err(|e| format!("making the weaver bridge {}: {e}", c.bridge))?;
        self.host.ip(&plan::bridge_batch(&c.bridge, &c.subnet)).map_err(|e| format!("addressing {}: {e}", c.bridge))?;
        if c.nat {
            // Without NAT weavers still reach the host and the proxy; say so and go on.
            let ruleset = plan::nat_ruleset(&c.bridge, &c.subnet, self.tunnel.as_deref());
            if let Err(e) = self.host.enable_forwarding().and_then(|_| self.host.nft(&ruleset)) {
                tracing::warn!(error = %e, "NAT for the weaver subnet is not set up: weavers reach only this host");
            }
        }
        *ready = true;
        Ok(())
    }

    fn build(&self, id: &WeaverId, mode: NetworkMode) -> Result<NetRun, String> {
        let key = id.as_str();
        self.host.ip(&plan::netns_batch(key)).map_err(|e| format!("making the weaver's network namespace: {e}"))?;
        let addr = if mode == NetworkMode::Private {
            self.ensure_bridge()?;
            let in_use: BTreeSet<Ipv4Addr> = lock(&self.runs).values().filter_map(|r| r.addr).collect();
            let addr = plan::weaver_address(&self.config.subnet, key, &in_use).map_err(|e| e.to_string())?;
            self.host
                .ip(&plan::veth_batch(key, &self.config.bridge))
                .map_err(|e| format!("making the weaver's veth: {e}"))?;
            Some(addr)
        } else {
            None
        };
        self.host
            .ip(&plan::inside_batch(key, addr.map(|a| (&self.config.subnet, a))))
            .map_err(|e| format!("configuring the weaver's network: {e}"))?;
        let cookie = self.host.netns_cookie(&netns_path(id)).map_err(|e| e.to_string())?;
        Ok(NetRun { run: RunId::UNKNOWN, addr, cookie: Some(cookie) })
    }

    fn teardown(&self, id: &WeaverId, only: Option<RunId>) {
        {
            let mut runs = lock(&self.runs);
            match runs.get(id) {
                Some(live) if only.is_some_and(|r| r != live.run) => return,
                _ => runs.remove(id),
            };
        }
        self.host.remove_leftovers(id.as_str());
    }

    /// The address of a weaver's live run, for `inspect` and the DNS resolver.
    pub fn addr_of(&self, id: &WeaverId) -> Option<Ipv4Addr> {
        lock(&self.runs).get(id).and_then(|r| r.addr)
    }

    /// The network namespace cookie of a weaver's live run: its key in the egress maps.
    pub fn cookie_of(&self, id: &WeaverId) -> Option<u64> {
        lock(&self.runs).get(id).and_then(|r| r.cookie)
    }
}

#[async_trait::async_trait]
impl WeaverHooks for WeaverNet {
    async fn before_start(
        &self,
        id: &WeaverId,
        run: RunId,
        rec: &WeaverRecord,
    ) -> Result<Vec<(String, String)>, String> {
        let mode = rec.info.spec.network;
        self.teardown(id, None);
        if mode == NetworkMode::Host {
            return Ok(vec![]);
        }
        match self.build(id, mode) {
            Ok(net) => {
                lock(&self.runs).insert(id.clone(), NetRun { run, ..net });
                Ok(vec![])
            }
            Err(e) => {
                self.host.remove_leftovers(id.as_str());
                Err(e)
            }
        }
    }

    async fn after_start(&self, id: &WeaverId, run: RunId, _leader_pid: i32, _cgroup_id: Option<u64>) {
        if lock(&self.runs).get(id).is_some_and(|r| r.run == run) {
            return;
        }
        // Adopted after a loomd restart: the namespace outlived loomd, read back what it has.
        let ns = netns_path(id);
        if !ns.exists() {
            return;
        }
        let addr = self.host.weaver_addr(id.as_str());
        let cookie = self.host.netns_cookie(&ns).ok();
        lock(&self.runs).insert(id.clone(), NetRun { run, addr, cookie });
    }

    async fn after_stop(&self, id: &WeaverId, run: RunId, _rec: &WeaverRecord) {
        self.teardown(id, Some(run));
    }

    async fn on_remove(&self, id: &WeaverId, _last_run: Option<RunId>) {
        self.teardown(id, None);
    }

    fn status(&self) -> Option<(String, serde_json::Value)> {
        let runs = lock(&self.runs);
        Some((
            "network".into(),
            serde_json::json!({
                "bridge": self.config.bridge,
                "subnet": self.config.subnet.to_string(),
                "weavers": runs.len(),
            }),
        ))
    }
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
    fn weaver_addr(&self, _id: &str) -> Option<Ipv4Addr> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loom_core::api::CreateWeaver;
    use loom_core::config::WeaverDefaults;
    use loom_core::weaver::resolve_spec;

    fn rec(network: &str) -> WeaverRecord {
        let req =
            CreateWeaver { command: vec!["/bin/true".into()], network: Some(network.into()), ..Default::default() };
        let spec = resolve_spec(req, &WeaverDefaults::default(), "w1".into()).unwrap();
        WeaverRecord::new_for_tests(WeaverId::from_random([1, 2, 3, 4, 5, 6]), spec)
    }

    fn net() -> (Arc<RecordingNet>, WeaverNet) {
        let host = Arc::new(RecordingNet::default());
        (host.clone(), WeaverNet::new(host, NetworkConfig::default(), None))
    }

    #[tokio::test]
    async fn a_private_run_gets_a_namespace_a_veth_and_an_address_and_gives_them_back() {
        let (host, net) = net();
        let r = rec("private");
        let id = r.info.id.clone();
        let run = RunId::from_random(1);
        net.before_start(&id, run, &r).await.unwrap();
        let calls = lock(&host.calls).clone();
        for want in
            ["bridge loom0", "ip[host] netns add loom-010203040506", "ip[host] link add lw010203040506 type veth"]
        {
            assert!(calls.iter().any(|c| c.starts_with(want)), "{want} in {calls:?}");
        }
        assert!(
            calls.iter().any(|c| c.starts_with("ip[loom-010203040506] route add default via 10.87.0.1")),
            "{calls:?}"
        );
        let addr = net.addr_of(&id).unwrap();
        assert!(NetworkConfig::default().subnet.contains(addr));
        assert_eq!(net.cookie_of(&id), Some(7));
        // A stale run's end leaves the live run alone; its own end releases it.
        net.after_stop(&id, RunId::from_random(2), &r).await;
        assert_eq!(net.addr_of(&id), Some(addr));
        net.after_stop(&id, run, &r).await;
        assert_eq!(net.addr_of(&id), None);
        assert_eq!(lock(&host.calls).last().unwrap(), "remove 010203040506");
    }

    #[tokio::test]
    async fn none_has_loopback_only_and_host_has_nothing() {
        let (host, net) = net();
        let r = rec("none");
        net.before_start(&r.info.id, RunId::from_random(1), &r).await.unwrap();
        let calls = lock(&host.calls).clone();
        assert!(!calls.iter().any(|c| c.contains("veth") || c.starts_with("bridge")), "{calls:?}");
        assert!(calls.iter().any(|c| c == "ip[loom-010203040506] link set dev lo up"), "{calls:?}");
        assert_eq!(net.addr_of(&r.info.id), None);
        let (host, net) = self::net();
        let r = rec("host");
        net.before_start(&r.info.id, RunId::from_random(1), &r).await.unwrap();
        assert!(lock(&host.calls).iter().all(|c| c.starts_with("remove")), "{:?}", lock(&host.calls));
    }
}
