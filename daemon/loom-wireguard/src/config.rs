//! `[wireguard]` in loomd's TOML, and its validation into a [`TunnelSpec`]. Pure: no file,
//! process or clock is touched here, so every rule is tested without root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::keys::PublicKey;

/// `[wireguard]` as written by the operator. Check it with [`WireguardConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WireguardConfig {
    pub enable: bool,
    /// The tunnel's network interface on the host.
    pub interface: String,
    /// The UDP port the host listens on.
    pub listen_port: u16,
    /// The host's tunnel address with the tunnel's prefix; peers get addresses from the prefix.
    pub address: String,
    /// The host's private key (base64, as `wg genkey` writes it, mode 0600). None: a key is
    /// generated once and kept in loomd's state dir.
    pub private_key_file: Option<PathBuf>,
    /// What clients dial, `HOST:PORT` (a name, an IPv4 address or `[IPv6]`).
    pub endpoint: Option<String>,
    /// Networks behind the host that clients reach through the tunnel (the weaver subnet).
    pub routed_subnets: Vec<String>,
    /// Seconds between the client's keepalives (for clients behind NAT); 0 leaves it out.
    pub persistent_keepalive: u16,
    pub backend: BackendChoice,
    /// wireguard-go's path for the user-space backend; None: the usual system locations.
    pub wireguard_go: Option<PathBuf>,
    /// iproute2's `ip`; None: the usual system locations.
    pub ip_command: Option<PathBuf>,
    /// Peers named in the config (the ones `add_peer` creates live in the state dir).
    pub peers: Vec<PeerEntry>,
}

impl Default for WireguardConfig {
    fn default() -> Self {
        WireguardConfig {
            enable: false,
            interface: "loomwg0".into(),
            listen_port: 51820,
            address: "10.88.0.1/24".into(),
            private_key_file: None,
            endpoint: None,
            routed_subnets: vec![],
            persistent_keepalive: 25,
            backend: BackendChoice::Auto,
            wireguard_go: None,
            ip_command: None,
            peers: vec![],
        }
    }
}

/// One `[[wireguard.peers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    pub name: String,
    pub public_key: String,
    /// The peer's tunnel address, inside `address`'s prefix (`10.88.0.7` or `10.88.0.7/32`).
    pub address: String,
}

/// Which WireGuard implementation carries the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The kernel module where it exists, else wireguard-go.
    #[default]
    Auto,
    Kernel,
    Userspace,
}

/// A validated `[wireguard]`: everything [`crate::Tunnel::up`] needs, in typed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    pub interface: String,
    pub listen_port: u16,
    /// The host's address; `.network()` is the tunnel prefix peers are allocated from.
    pub address: Ipv4Net,
    pub private_key_file: Option<PathBuf>,
    pub endpoint: String,
    pub routed_subnets: Vec<Ipv4Net>,
    pub persistent_keepalive: u16,
    pub backend: BackendChoice,
    pub wireguard_go: Option<PathBuf>,
    pub ip_command: Option<PathBuf>,
    pub peers: Vec<Peer>,
}

/// A peer the host accepts: its key and the one tunnel address it may send from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub public_key: PublicKey,
    pub address: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("wireguard.{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), message: message.into() }
}

impl WireguardConfig {
    /// Ok(None) when the tunnel is disabled (the rest is then not checked, so a half-written
    /// `[wireguard]` never stops loomd); otherwise the whole section, every error naming its field.
    pub fn validate(&self) -> Result<Option<TunnelSpec>, ConfigError> {
        if !self.enable {
            return Ok(None);
        }
        validate_interface(&self.interface).map_err(|m| err("interface", m))?;
        if self.listen_port == 0 {
            return Err(err("listen_port", "0 is not a port: use the UDP port clients dial, e.g. 51820"));
        }
        let address = parse_host_address(&self.address).map_err(|m| err("address", m))?;
        if let Some(path) = &self.private_key_file
            && !path.is_absolute()
        {
            return Err(err("private_key_file", format!("{} is not an absolute path", path.display())));
        }
        let endpoint = match &self.endpoint {
            None => {
                return Err(err("endpoint", "missing: set the HOST:PORT clients dial, e.g. \"host.example:51820\""));
            }
            Some(e) => {
                validate_endpoint(e).map_err(|m| err("endpoint", m))?;
                e.clone()
            }
        };
        let mut routed_subnets: Vec<Ipv4Net> = vec![];
        for (i, s) in self.routed_subnets.iter().enumerate() {
            let field = format!("routed_subnets[{i}]");
            let net: Ipv4Net = s
                .trim()
                .parse()
                .map_err(|_| err(&field, format!("{s:?} is not an IPv4 network: write e.g. 10.87.0.0/16")))?;
            let net = net.trunc();
            if overlaps(net, address.trunc()) {
                return Err(err(
                    &field,
                    format!("{net} overlaps the tunnel's own network {}: choose another address", address.trunc()),
                ));
            }
            if routed_subnets.iter().any(|n| overlaps(*n, net)) {
                return Err(err(&field, format!("{net} overlaps another routed subnet")));
            }
            routed_subnets.push(net);
        }
        if let Some(path) = &self.wireguard_go
            && !path.is_absolute()
        {
            return Err(err("wireguard_go", format!("{} is not an absolute path", path.display())));
        }
        if let Some(path) = &self.ip_command
            && !path.is_absolute()
        {
            return Err(err("ip_command", format!("{} is not an absolute path", path.display())));
        }
        let mut peers: Vec<Peer> = vec![];
        for (i, entry) in self.peers.iter().enumerate() {
            let peer = validate_peer(entry, address).map_err(|(f, m)| err(format!("peers[{i}].{f}"), m))?;
            if let Some(conflict) = conflict(&peers, &peer) {
                return Err(err(format!("peers[{i}]"), conflict));
            }
            peers.push(peer);
        }
        Ok(Some(TunnelSpec {
            interface: self.interface.clone(),
            listen_port: self.listen_port,
            address,
            private_key_file: self.private_key_file.clone(),
            endpoint,
            routed_subnets,
            persistent_keepalive: self.persistent_keepalive,
            backend: self.backend,
            wireguard_go: self.wireguard_go.clone(),
            ip_command: self.ip_command.clone(),
            peers,
        }))
    }
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Linux interface names: at most 15 bytes (IFNAMSIZ), and ours start with a letter or digit so
/// that no `ip` argument ever looks like an option.
pub fn validate_interface(name: &str) -> Result<(), String> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if name.is_empty() || name.len() > 15 || !ok_chars || !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!(
            "{name:?} is not an interface name: 1 to 15 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// A peer's name: what an admin types in `loom wireguard peer add NAME`.
pub fn validate_peer_name(name: &str) -> Result<(), String> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if name.is_empty() || name.len() > 64 || !ok_chars || !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!(
            "{name:?} is not a peer name: 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ));
    }
    Ok(())
}

fn parse_host_address(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net =
        s.trim().parse().map_err(|_| format!("{s:?} is not an IPv4 address with a prefix: write e.g. 10.88.0.1/24"))?;
    if net.prefix_len() < 8 || net.prefix_len() > 30 {
        return Err(format!("{s}: the prefix must be between 8 and 30, so that peers have addresses"));
    }
    if net.addr() == net.network() || net.addr() == net.broadcast() {
        return Err(format!(
            "{s}: {} is the network's {} address, not a host's: use e.g. {}/{}",
            net.addr(),
            if net.addr() == net.network() { "first" } else { "broadcast" },
            next_host(net.network()),
            net.prefix_len()
        ));
    }
    Ok(net)
}

fn next_host(a: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(a).wrapping_add(1))
}

/// `HOST:PORT` as a client's `Endpoint =`: a DNS name, an IPv4 address or a bracketed IPv6 one.
pub fn validate_endpoint(s: &str) -> Result<(), String> {
    let usage = "write HOST:PORT, e.g. \"host.example:51820\" or \"[2001:db8::1]:51820\"";
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, port) = rest.split_once("]:").ok_or_else(|| format!("{s:?}: {usage}"))?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| format!("{s:?}: {v6:?} is not an IPv6 address"))?;
        (None, port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} has no port: {usage}"))?;
        if host.contains(':') {
            return Err(format!("{s:?}: an IPv6 address needs brackets: {usage}"));
        }
        (Some(host), port)
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("{s:?}: {port:?} is not a port (1 to 65535)")),
    }
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(format!("{s:?}: {host:?} is not a host name or IPv4 address"));
        }
    }
    Ok(())
}

/// Parses one peer; errors are (field, message).
fn validate_peer(entry: &PeerEntry, host: Ipv4Net) -> Result<Peer, (&'static str, String)> {
    validate_peer_name(&entry.name).map_err(|m| ("name", m))?;
    let public_key: PublicKey = entry.public_key.trim().parse().map_err(|m| ("public_key", m))?;
    let a = entry.address.trim();
    let address: Ipv4Addr = a
        .strip_suffix("/32")
        .unwrap_or(a)
        .parse()
        .map_err(|_| ("address", format!("{a:?} is not an IPv4 address (e.g. {})", next_host(host.addr()))))?;
    check_peer_address(address, host).map_err(|m| ("address", m))?;
    Ok(Peer { name: entry.name.clone(), public_key, address })
}

/// A peer's address must be a host address of the tunnel network other than the host's own.
pub fn check_peer_address(address: Ipv4Addr, host: Ipv4Net) -> Result<(), String> {
    let net = host.trunc();
    if !net.contains(&address) {
        return Err(format!("{address} is outside the tunnel network {net}"));
    }
    if address == host.addr() {
        return Err(format!("{address} is the host's own tunnel address"));
    }
    if address == net.network() || address == net.broadcast() {
        return Err(format!("{address} is the network or broadcast address of {net}"));
    }
    Ok(())
}

/// Why `peer` cannot sit beside `peers` (same name, key or address), if it cannot.
pub fn conflict(peers: &[Peer], peer: &Peer) -> Option<String> {
    for p in peers {
        if p.name == peer.name {
            return Some(format!("a peer named {:?} already exists", peer.name));
        }
        if p.public_key == peer.public_key {
            return Some(format!("{:?} has the same public key as peer {:?}", peer.name, p.name));
        }
        if p.address == peer.address {
            return Some(format!("{:?} has the same address {} as peer {:?}", peer.name, peer.address, p.name));
        }
    }
    None
}

/// The next free host address of the tunnel network, lowest first.
pub fn next_free_address(host: Ipv4Net, taken: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, AllocError> {
    host.trunc().hosts().find(|a| *a != host.addr() && !taken.contains(a)).ok_or(AllocError::Exhausted {
        network: host.trunc(),
        peers: taken.iter().filter(|a| **a != host.addr()).count(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error(
        "every address of the tunnel network {network} is taken ({peers} peers and the host): remove a peer \
         or give `[wireguard] address` a shorter prefix"
    )]
    Exhausted { network: Ipv4Net, peers: usize },
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
