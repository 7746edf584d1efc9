//! Weaver networks as loomd runs them. Every weaver not on the host's network gets a network
//! namespace that loomd makes *before* its first process (`/run/netns/loom-ID`, which
//! systemd-nspawn is started in), so the proxy listener is there from the first instant and
//! the namespace is owned by the host, not by the weaver's user namespace. A `private`
//! weaver also gets a veth pair to the host bridge, an address from `[network] subnet`, a
//! default route through the bridge (NAT out through nftables), loomd's resolver as its DNS,
//! and its egress policy in the kernel from before its first process.
//!
//! What is decided (names, addresses, the `ip` lines) is `loom_core::net`; the host is
//! changed only through [`HostNet`] (`host`); the kernel's egress programs are `egress`, the
//! resolver `dns`.

mod dns;
mod egress;
mod host;

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use loom_core::config::NetworkConfig;
use loom_core::egress::EgressRule;
use loom_core::net as plan;
use loom_core::weaver::{NetworkMode, RunId, WeaverId};

pub use egress::Enforcement;
pub use host::{HostNet, HostNetError, IpTool, NETNS_DIR, RecordingNet, in_netns, netns_path};

use crate::auditing::Auditor;
use crate::daemon::WeaverHooks;
use crate::store::WeaverRecord;

/// One run's network, released in that run's `after_stop`.
#[derive(Debug, Clone)]
struct NetRun {
    run: RunId,
    addr: Option<Ipv4Addr>,
    cookie: Option<u64>,
    /// Its scope in the egress programs (private weavers, with enforcement on).
    scope: Option<loom_egress::Scope>,
    /// Its policy: the built-in rules, then the weaver's own.
    rules: Vec<EgressRule>,
}

type Runs = Arc<Mutex<HashMap<WeaverId, NetRun>>>;

/// What a [`WeaverNet`] is made of.
#[derive(Debug)]
pub struct NetParts {
    pub host: Arc<dyn HostNet>,
    pub config: NetworkConfig,
    /// The operator tunnel's interface: forwarded only into the weaver subnet.
    pub tunnel: Option<String>,
    pub enforcement: Enforcement,
    pub auditor: Option<Arc<Auditor>>,
    /// Where loomd keeps the weavers' resolv.conf.
    pub state_dir: PathBuf,
}

/// The network as a [`WeaverHooks`]: the namespace, veth and egress scope of a run are made
/// in `before_start` (before the proxy hook binds its listener in the namespace) and removed
/// in that run's `after_stop`.
#[derive(Debug)]
pub struct WeaverNet {
    host: Arc<dyn HostNet>,
    config: NetworkConfig,
    tunnel: Option<String>,
    enforcement: Enforcement,
    auditor: Option<Arc<Auditor>>,
    resolv_conf: PathBuf,
    /// Set once the bridge, its address, NAT and the resolver are in place; an error is
    /// retried at the next start.
    bridge_ready: tokio::sync::Mutex<bool>,
    dns: Mutex<Option<tokio::task::AbortHandle>>,
    runs: Runs,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for WeaverNet {
    fn drop(&mut self) {
        if let Some(dns) = lock(&self.dns).take() {
            dns.abort();
        }
    }
}

/// What a weaver's spec asks for, parsed (the spec holds them validated; a rule that no
/// longer parses is left out with a warning rather than failing the start).
fn own_rules(rec: &WeaverRecord) -> Vec<EgressRule> {
    rec.info
        .spec
        .egress
        .iter()
        .filter_map(|r| match r.parse::<EgressRule>() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(weaver = %rec.info.id, error = %e, "an egress rule of the weaver's no longer parses; left out");
                None
            }
        })
        .collect()
}

impl WeaverNet {
    pub fn new(parts: NetParts) -> Arc<WeaverNet> {
        let NetParts { host, config, tunnel, enforcement, auditor, state_dir } = parts;
        let net = Arc::new(WeaverNet {
            host,
            config,
            tunnel,
            enforcement,
            auditor,
            resolv_conf: state_dir.join("net").join("resolv.conf"),
            bridge_ready: tokio::sync::Mutex::new(false),
            dns: Mutex::new(None),
            runs: Arc::new(Mutex::new(HashMap::new())),
        });
        if let Some(mut events) = net.enforcement.egress().and_then(|e| e.take_events()) {
            let (runs, auditor) = (net.runs.clone(), net.auditor.clone());
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    let Some((id, rules)) = lock(&runs)
                        .iter()
                        .find(|(_, r)| r.scope == Some(ev.scope))
                        .map(|(id, r)| (id.clone(), egress::describe(&r.rules)))
                    else {
                        continue;
                    };
                    tracing::info!(weaver = %id, destination = %ev.destination, reason = ev.reason.as_str(), "egress refused");
                    if let Some(a) = &auditor {
                        a.record(egress::kernel_deny_event(id.as_str(), rules, &ev));
                    }
                }
            });
        }
        net
    }

    /// The bridge, its gateway address, NAT and the resolver; done at the first private start,
    /// not at loomd's, so a host that only runs `none` weavers never gets a bridge.
    async fn ensure_bridge(&self) -> Result<(), String> {
        let mut ready = self.bridge_ready.lock().await;
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
        if self.enforcement.egress().is_some() {
            self.start_dns().await?;
        }
        *ready = true;
        Ok(())
    }

    async fn start_dns(&self) -> Result<(), String> {
        let gateway = self.config.subnet.gateway();
        let conf = format!("# loomd: the weaver's only resolver\nnameserver {gateway}\noptions edns0\n");
        if let Some(dir) = self.resolv_conf.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        std::fs::write(&self.resolv_conf, conf).map_err(|e| format!("writing {}: {e}", self.resolv_conf.display()))?;
        let upstreams = dns::upstreams(&self.config.dns_upstream);
        if upstreams.is_empty() {
            tracing::warn!("no DNS upstream ([network] dns_upstream or /etc/resolv.conf): weavers resolve nothing");
            return Ok(());
        }
        let policy = dns::DnsPolicy {
            runs: self.runs.clone(),
            egress: self.enforcement.egress().cloned(),
            auditor: self.auditor.clone(),
        };
        match dns::start(SocketAddr::from((gateway, 53)), policy, upstreams).await {
            Ok(handle) => *lock(&self.dns) = Some(handle),
            // Another loomd on this bridge answers; its policy does not know our weavers.
            Err(e) => {
                tracing::warn!(error = %e, "the weavers' DNS resolver could not start: domain rules admit nothing")
            }
        }
        Ok(())
    }

    async fn build(&self, id: &WeaverId, rec: &WeaverRecord) -> Result<NetRun, String> {
        let key = id.as_str();
        let mode = rec.info.spec.network;
        // One `ip` run on the host's side (namespace, then its veth), one inside.
        let mut host_side = plan::netns_batch(key);
        let addr = if mode == NetworkMode::Private {
            self.ensure_bridge().await?;
            host_side.lines.extend(plan::veth_batch(key, &self.config.bridge).lines);
            // Chosen and held under one lock, so two starts at once never take the same one.
            let mut runs = lock(&self.runs);
            let in_use: BTreeSet<Ipv4Addr> = runs.values().filter_map(|r| r.addr).collect();
            let addr = plan::weaver_address(&self.config.subnet, key, &in_use).map_err(|e| e.to_string())?;
            runs.insert(
                id.clone(),
                NetRun { run: RunId::UNKNOWN, addr: Some(addr), cookie: None, scope: None, rules: vec![] },
            );
            Some(addr)
        } else {
            None
        };
        self.host.ip(&host_side).map_err(|e| format!("making the weaver's network namespace and veth: {e}"))?;
        self.host
            .ip(&plan::inside_batch(key, addr.map(|a| (&self.config.subnet, a))))
            .map_err(|e| format!("configuring the weaver's network: {e}"))?;
        let cookie = self.host.netns_cookie(&netns_path(id)).map_err(|e| e.to_string())?;
        if let Err(e) = self.host.open_low_ports(&netns_path(id)) {
            // Only ports below 1024 are at stake (e.g. loomd itself in a container, whose
            // /proc/sys is read-only): the weaver runs, binding from 1024 up.
            tracing::warn!(weaver = %id, error = %crate::error_chain(&e), "the weaver cannot bind ports below 1024");
        }
        let mut rules = egress::built_in_rules(&self.config.subnet);
        rules.extend(own_rules(rec));
        let scope = match (&self.enforcement, mode) {
            (Enforcement::On { egress: e, .. }, NetworkMode::Private) => {
                let scope =
                    e.register_netns(cookie).map_err(|e| format!("registering the weaver's egress scope: {e}"))?;
                if let Err(err) = e.set_rules(scope, &egress::net_rules(&rules)) {
                    let _ = e.forget(scope);
                    return Err(format!("setting the weaver's egress rules: {err}"));
                }
                Some(scope)
            }
            _ => None,
        };
        Ok(NetRun { run: RunId::UNKNOWN, addr, cookie: Some(cookie), scope, rules })
    }

    fn teardown(&self, id: &WeaverId, only: Option<RunId>) {
        let gone = {
            let mut runs = lock(&self.runs);
            match runs.get(id) {
                Some(live) if only.is_some_and(|r| r != live.run) => return,
                _ => runs.remove(id),
            }
        };
        if let (Some(scope), Some(e)) = (gone.and_then(|r| r.scope), self.enforcement.egress())
            && let Err(err) = e.forget(scope)
        {
            tracing::warn!(weaver = %id, error = %err, "the weaver's egress scope was not released");
        }
        self.host.remove_leftovers(id.as_str());
    }

    /// The address of a weaver's live run, for `inspect` and the DNS resolver.
    pub fn addr_of(&self, id: &WeaverId) -> Option<Ipv4Addr> {
        lock(&self.runs).get(id).and_then(|r| r.addr)
    }

    /// The network namespace cookie of a weaver's live run.
    pub fn cookie_of(&self, id: &WeaverId) -> Option<u64> {
        lock(&self.runs).get(id).and_then(|r| r.cookie)
    }

    /// What loomd binds into a weaver for its network: its resolv.conf (private weavers).
    pub fn binds_for(&self, mode: NetworkMode) -> Vec<(PathBuf, String)> {
        match mode {
            NetworkMode::Private if self.resolv_conf.exists() => {
                vec![(self.resolv_conf.clone(), "/etc/resolv.conf".to_string())]
            }
            _ => vec![],
        }
    }

    /// The built-in rules every private weaver has.
    pub fn built_in_rules(&self) -> Vec<String> {
        egress::built_in_rules(&self.config.subnet).iter().map(|r| r.to_string()).collect()
    }

    /// A running weaver's new policy (its own rules, as stored), in force for its next
    /// connect; what DNS answers admitted under the old rules is dropped.
    pub fn apply_policy(&self, id: &WeaverId, own: &[String]) -> Result<bool, String> {
        let mut runs = lock(&self.runs);
        let Some(run) = runs.get_mut(id) else { return Ok(false) };
        let mut rules = egress::built_in_rules(&self.config.subnet);
        rules.extend(own.iter().filter_map(|r| r.parse::<EgressRule>().ok()));
        if let (Some(scope), Some(e)) = (run.scope, self.enforcement.egress()) {
            e.set_rules(scope, &egress::net_rules(&rules)).map_err(|e| format!("setting the egress rules: {e}"))?;
            e.clear_admitted(scope).map_err(|e| format!("dropping what DNS admitted: {e}"))?;
        }
        run.rules = rules;
        Ok(true)
    }

    /// Whether private weavers can start: what `loom status` warns about.
    pub fn warning(&self) -> Option<String> {
        match &self.enforcement {
            Enforcement::Broken(e) => Some(format!("egress enforcement is off, private weavers cannot start: {e}")),
            _ => None,
        }
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
        if let (Enforcement::Broken(e), NetworkMode::Private) = (&self.enforcement, mode) {
            return Err(format!("its egress policy cannot be enforced ({e}); `--network none` runs without a network"));
        }
        match self.build(id, rec).await {
            Ok(net) => {
                lock(&self.runs).insert(id.clone(), NetRun { run, ..net });
                Ok(vec![])
            }
            Err(e) => {
                self.teardown(id, None);
                Err(e)
            }
        }
    }

    async fn on_adopt(&self, id: &WeaverId, run: RunId, rec: &WeaverRecord) -> Result<(), String> {
        // The namespace outlived loomd; the egress programs did not: the weaver's scope and
        // rules go back in before anything else of it is served.
        let ns = netns_path(id);
        if rec.info.spec.network == NetworkMode::Host || !ns.exists() {
            return Ok(());
        }
        if let (Enforcement::Broken(e), NetworkMode::Private) = (&self.enforcement, rec.info.spec.network) {
            return Err(format!("its egress policy cannot be enforced ({e})"));
        }
        let addr = self.host.weaver_addr(id.as_str());
        let cookie = self.host.netns_cookie(&ns).ok();
        let mut rules = egress::built_in_rules(&self.config.subnet);
        rules.extend(own_rules(rec));
        let mut scope = None;
        if cookie.is_none() && rec.info.spec.network == NetworkMode::Private && self.enforcement.egress().is_some() {
            return Err("its network namespace could not be read back, so its egress policy cannot be restored".into());
        }
        if let (Some(e), Some(cookie), NetworkMode::Private) =
            (self.enforcement.egress(), cookie, rec.info.spec.network)
        {
            if addr.is_some() {
                let _ = self.ensure_bridge().await;
            }
            let s = e
                .register_netns(cookie)
                .and_then(|s| e.set_rules(s, &egress::net_rules(&rules)).map(|_| s))
                .map_err(|err| format!("its egress rules could not be restored: {err}"))?;
            scope = Some(s);
        }
        lock(&self.runs).insert(id.clone(), NetRun { run, addr, cookie, scope, rules });
        Ok(())
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
                "egress": match &self.enforcement {
                    Enforcement::On { .. } => "enforced".to_string(),
                    Enforcement::Off => "off".to_string(),
                    Enforcement::Broken(e) => format!("unavailable: {e}"),
                },
            }),
        ))
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

    fn net() -> (Arc<RecordingNet>, Arc<WeaverNet>) {
        let host = Arc::new(RecordingNet::default());
        let parts = NetParts {
            host: host.clone(),
            config: NetworkConfig::default(),
            tunnel: None,
            enforcement: Enforcement::Off,
            auditor: None,
            state_dir: std::env::temp_dir(),
        };
        (host.clone(), WeaverNet::new(parts))
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
