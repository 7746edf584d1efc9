//! The egress policy as loomd enforces it: the kernel programs of `loom-egress` attached once
//! at the root of the cgroup v2 hierarchy, each private weaver's network namespace a scope
//! with its rules, and every refusal recorded as a `net_deny` audit event.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use loom_audit::{AuditEvent, EventDetail};
use loom_core::egress::{EgressRule, NetRule};
use loom_core::net::Ipv4Net;
use loom_egress::{Attachment, DenyEvent, Egress, EgressConfig, Scope};

/// Whether and how weavers' egress is enforced.
#[derive(Debug)]
pub enum Enforcement {
    /// Unit tests: no kernel programs.
    Off,
    On {
        egress: Arc<Egress>,
        _attached: Attachment,
    },
    /// The programs could not be loaded: private weavers are refused (they would run open).
    Broken(String),
}

impl Enforcement {
    /// Loads the programs and attaches them at the cgroup v2 root. Inside a tokio runtime.
    pub fn start() -> Enforcement {
        let load = || -> Result<Enforcement, String> {
            let root = loom_egress::cgroup2_mount().ok_or("no cgroup v2 hierarchy is mounted")?;
            let egress = Egress::load_with(EgressConfig { unscoped_allow: true, ..EgressConfig::default() })
                .map_err(|e| crate::error_chain(&e))?;
            let attached = egress.attach_everywhere(&root).map_err(|e| crate::error_chain(&e))?;
            Ok(Enforcement::On { egress: Arc::new(egress), _attached: attached })
        };
        load().unwrap_or_else(|e| {
            tracing::error!(error = %e, "egress enforcement is not available: private weavers will not start");
            Enforcement::Broken(e)
        })
    }

    pub fn egress(&self) -> Option<&Arc<Egress>> {
        match self {
            Enforcement::On { egress, .. } => Some(egress),
            _ => None,
        }
    }
}

/// What every private weaver may reach whatever its rules: its own loopback (the proxy
/// listens there) and loomd's DNS resolver on the gateway.
pub fn built_in_rules(subnet: &Ipv4Net) -> Vec<EgressRule> {
    ["127.0.0.0/8".to_string(), "::1/128".to_string(), format!("{}:53", subnet.gateway())]
        .iter()
        .filter_map(|r| r.parse().ok())
        .collect()
}

/// The address rules of a policy, for the kernel.
pub fn net_rules(rules: &[EgressRule]) -> Vec<NetRule> {
    rules
        .iter()
        .filter_map(|r| match r {
            EgressRule::Net(n) => Some(*n),
            EgressRule::Domain(_) => None,
        })
        .collect()
}

/// The rules as `loom weaver egress ID list` prints them, for the audit's `LOOM_EGRESS_RULES`.
pub fn describe(rules: &[EgressRule]) -> String {
    if rules.is_empty() {
        return "default deny (no rules)".into();
    }
    rules.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
}

/// A refusal as an audit event of the weaver's.
pub fn deny_event(
    weaver: &str,
    syscall: &str,
    hook: &str,
    destination: String,
    protocol: &str,
    reason: &str,
    rules: String,
) -> AuditEvent {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let detail = EventDetail::NetDeny {
        hook: hook.to_string(),
        destination,
        protocol: protocol.to_string(),
        reason: reason.to_string(),
        rules,
    };
    // No process of the weaver's is known for a resolver refusal: pid 0, not `new`'s 1.
    AuditEvent { time_unix_ns: now, pid: 0, tid: 0, ..AuditEvent::new(weaver, syscall, detail) }
}

/// The kernel's refusal, for the weaver whose scope it is.
pub fn kernel_deny_event(weaver: &str, rules: String, ev: &DenyEvent) -> AuditEvent {
    let hook = match ev.hook {
        loom_egress::Hook::Connect => "connect",
        loom_egress::Hook::Sendmsg => "sendmsg",
    };
    let protocol = match ev.protocol {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        p => format!("ip{p}"),
    };
    let mut e = deny_event(weaver, hook, hook, ev.destination.to_string(), &protocol, ev.reason.as_str(), rules);
    e.cgroup_id = ev.cgroup_id;
    e.pid = ev.pid;
    e.tid = ev.tid;
    e.comm = ev.comm.clone();
    e
}

/// Addresses of a DNS answer for `name`, admitted on the ports of every domain rule it matches.
pub fn admit_answer(
    egress: &Egress,
    scope: Scope,
    rules: &[EgressRule],
    name: &str,
    addrs: &[IpAddr],
    ttl: std::time::Duration,
) {
    for rule in rules.iter().filter(|r| loom_core::egress::domain_matches(r, name)) {
        let EgressRule::Domain(d) = rule else { continue };
        for addr in addrs {
            if let Err(e) = egress.admit(scope, *addr, d.port, d.protocol, loom_egress::Expiry::After(ttl)) {
                tracing::warn!(%name, %addr, error = %e, "an answered address was not admitted");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_are_loopback_and_the_resolver() {
        let subnet: Ipv4Net = "10.87.0.0/16".parse().unwrap();
        let b = built_in_rules(&subnet);
        assert_eq!(describe(&b), "127.0.0.0/8, ::1, 10.87.0.1:53");
        assert_eq!(net_rules(&b).len(), 3);
        assert_eq!(describe(&[]), "default deny (no rules)");
    }
}
