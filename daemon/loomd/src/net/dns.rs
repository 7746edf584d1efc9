//! loomd's resolver for private weavers (`loom-dns`), on the bridge's gateway address: a
//! weaver resolves only names its domain rules allow, and the answered addresses are
//! admitted in the kernel for their TTL before the weaver sees them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use loom_dns::Client;

use super::{Runs, egress, lock};
use crate::auditing::Auditor;

pub struct DnsPolicy {
    pub runs: Runs,
    pub egress: Option<Arc<loom_egress::Egress>>,
    pub auditor: Option<Arc<Auditor>>,
}

impl loom_dns::Policy for DnsPolicy {
    fn client(&self, src: IpAddr) -> Option<Client> {
        let IpAddr::V4(src) = src else { return None };
        lock(&self.runs).iter().find(|(_, r)| r.addr == Some(src)).map(|(id, _)| Client::new(id.as_str()))
    }

    fn may_resolve(&self, client: &Client, name: &str) -> bool {
        let runs = lock(&self.runs);
        let Some((id, run)) = runs.iter().find(|(id, _)| id.as_str() == client.key()) else { return false };
        let ok = run.rules.iter().any(|r| loom_core::egress::domain_matches(r, name));
        if !ok {
            tracing::info!(weaver = %id, %name, "a DNS question the egress policy does not allow was refused");
            if let Some(a) = &self.auditor {
                a.record(egress::deny_event(
                    id.as_str(),
                    "dns",
                    "dns",
                    name.to_string(),
                    "dns",
                    "name_not_allowed",
                    egress::describe(&run.rules),
                ));
            }
        }
        ok
    }

    fn admitted(&self, client: &Client, name: &str, addrs: &[IpAddr], ttl: Duration) {
        let Some(egress) = &self.egress else { return };
        let runs = lock(&self.runs);
        let Some(run) = runs.iter().find(|(id, _)| id.as_str() == client.key()).map(|(_, r)| r) else { return };
        if let Some(scope) = run.scope {
            egress::admit_answer(egress, scope, &run.rules, name, addrs, ttl);
        }
    }
}

/// Where the resolver forwards: `[network] dns_upstream`, else the host's resolv.conf.
pub fn upstreams(configured: &[SocketAddr]) -> Vec<SocketAddr> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    loom_dns::upstreams_from_resolv_conf(&text)
}

/// Binds the resolver on `addr` (UDP and TCP) and serves until the handle is aborted.
pub async fn start(
    addr: SocketAddr,
    policy: DnsPolicy,
    upstreams: Vec<SocketAddr>,
) -> Result<tokio::task::AbortHandle, String> {
    let udp = tokio::net::UdpSocket::bind(addr).await.map_err(|e| format!("binding {addr}/udp: {e}"))?;
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("binding {addr}/tcp: {e}"))?;
    let serve = loom_dns::serve(udp, tcp, Arc::new(policy), upstreams, loom_dns::Limits::default())
        .map_err(|e| e.to_string())?;
    Ok(tokio::spawn(serve).abort_handle())
}
