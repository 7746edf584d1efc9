//! Weaver networks, the pure half: the subnet weavers get addresses from, which address a
//! weaver gets, the names of its namespace and interfaces, and the `ip` commands that build
//! them. loomd runs the commands (`loomd::net`); everything decided here is tested without root.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network, `10.87.0.0/16`. The address is normalised to the network's first address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("{0:?} is not an IPv4 network: write ADDRESS/PREFIX, e.g. 10.87.0.0/16")]
    Syntax(String),
    #[error("{0}: the prefix must be between 8 and 30, so that weavers have addresses and it is not the internet")]
    Prefix(String),
    #[error("every address of {0} is in use: choose a larger `[network] subnet`")]
    Exhausted(Ipv4Net),
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Ipv4Net, NetError> {
        if !(8..=30).contains(&prefix) {
            return Err(NetError::Prefix(format!("{addr}/{prefix}")));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Ipv4Net { network: Ipv4Addr::from(u32::from(addr) & mask), prefix })
    }
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & (u32::MAX << (32 - self.prefix)) == u32::from(self.network)
    }
    /// The host's address on the weaver bridge: the network's first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
    /// The last address is the broadcast address; weavers get the ones between.
    fn host(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + index)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Ipv4Net, NetError> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| NetError::Syntax(s.to_string()))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| NetError::Syntax(s.to_string()))?;
        let prefix: u8 = prefix.parse().map_err(|_| NetError::Syntax(s.to_string()))?;
        Ipv4Net::new(addr, prefix)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The address a weaver gets: the one its id hashes to, so that a weaver keeps its address
/// from run to run while nothing else took it, else the next free one after it.
pub fn weaver_address(subnet: &Ipv4Net, id: &str, in_use: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, NetError> {
    // Index 0 is the network, 1 the gateway, size-1 the broadcast address.
    let usable = subnet.size() - 3;
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let first = (hash % usable as u64) as u32;
    (0..usable)
        .map(|i| subnet.host(2 + (first + i) % usable))
        .find(|a| !in_use.contains(a))
        .ok_or(NetError::Exhausted(*subnet))
}

/// The weaver's network namespace, under `/run/netns` so that `ip -n` and `ip netns exec`
/// find it when an operator debugs.
pub fn netns_name(id: &str) -> String {
    format!("loom-{id}")
}

/// The host end of the weaver's veth pair: `lw` and the id, within the kernel's 15 bytes.
pub fn host_veth(id: &str) -> String {
    let id: String = id.chars().take(13).collect();
    format!("lw{id}")
}

/// The interface the weaver sees.
pub const WEAVER_IF: &str = "eth0";

/// What one `ip -batch` run does: `netns` none for the host's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpBatch {
    pub netns: Option<String>,
    pub lines: Vec<String>,
}

/// The bridge every private weaver's veth joins, with the gateway address.
pub fn bridge_batch(bridge: &str, subnet: &Ipv4Net) -> IpBatch {
    IpBatch {
        netns: None,
        lines: vec![
            format!("addr replace {}/{} dev {bridge}", subnet.gateway(), subnet.prefix()),
            format!("link set dev {bridge} up"),
        ],
    }
}

/// The weaver's namespace with loopback up: all a `none` weaver has.
pub fn netns_batch(id: &str) -> IpBatch {
    IpBatch { netns: None, lines: vec![format!("netns add {}", netns_name(id))] }
}

/// Inside the namespace: loopback, and for a private weaver its address and default route.
pub fn inside_batch(id: &str, private: Option<(&Ipv4Net, Ipv4Addr)>) -> IpBatch {
    let mut lines = vec!["link set dev lo up".to_string()];
    if let Some((subnet, addr)) = private {
        lines.push(format!("addr add {addr}/{} dev {WEAVER_IF}", subnet.prefix()));
        lines.push(format!("link set dev {WEAVER_IF} up"));
        lines.push(format!("route add default via {}", subnet.gateway()));
    }
    IpBatch { netns: Some(netns_name(id)), lines }
}

/// The veth pair: the weaver's end moved into its namespace, the host's end on the bridge as
/// an isolated port (isolated ports forward only to the bridge itself, never to each other,
/// so weavers cannot reach each other even below IP).
pub fn veth_batch(id: &str, bridge: &str) -> IpBatch {
    let host = host_veth(id);
    IpBatch {
        netns: None,
        lines: vec![
            format!("link add {host} type veth peer name {WEAVER_IF} netns {}", netns_name(id)),
            format!("link set dev {host} master {bridge}"),
            format!("link set dev {host} type bridge_slave isolated on learning off"),
            format!("link set dev {host} up"),
        ],
    }
}

/// The nftables ruleset for NAT out of the weaver subnet, and what the host forwards: nothing
/// between weavers, and from the operator tunnel (`tunnel`) only into the weaver subnet, so a
/// peer that widens its own AllowedIPs reaches no other network of the host. One transaction:
/// the table is made (if missing), deleted and made again, so a re-run replaces, never doubles.
pub fn nat_ruleset(bridge: &str, subnet: &Ipv4Net, tunnel: Option<&str>) -> String {
    let tunnel = tunnel
        .map(|t| {
            format!("    iifname \"{t}\" oifname != \"{bridge}\" drop\n    iifname \"{t}\" ip daddr != {subnet} drop\n")
        })
        .unwrap_or_default();
    // One table per bridge, so loomds on different bridges never replace each other's rules.
    let table = nft_table(bridge);
    format!(
        "table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {subnet} oifname != \"{bridge}\" masquerade\n  }}\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    iifname \"{bridge}\" oifname \"{bridge}\" drop\n{tunnel}  }}\n}}\n"
    )
}

/// The nftables table of a bridge's weavers: `loom_` and the bridge, `-` as `_`.
pub fn nft_table(bridge: &str) -> String {
    format!("loom_{}", bridge.replace('-', "_"))
}

/// A bridge name the kernel accepts and `ip`'s batch syntax cannot misread.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_normalise_and_refuse() {
        let n: Ipv4Net = "10.87.3.4/16".parse().unwrap();
        assert_eq!(n.to_string(), "10.87.0.0/16");
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 87, 0, 1));
        assert!(n.contains(Ipv4Addr::new(10, 87, 255, 1)));
        assert!(!n.contains(Ipv4Addr::new(10, 88, 0, 1)));
        for bad in ["10.87.0.0", "10.87.0.0/", "10.87.0/16", "x/16", "10.0.0.0/x"] {
            assert!(matches!(bad.parse::<Ipv4Net>(), Err(NetError::Syntax(_))), "{bad}");
        }
        for bad in ["10.0.0.0/31", "0.0.0.0/0", "10.0.0.0/7", "10.0.0.0/33"] {
            assert!(matches!(bad.parse::<Ipv4Net>(), Err(NetError::Prefix(_))), "{bad}");
        }
    }

    #[test]
    fn a_weaver_keeps_its_address_and_collisions_move_on() {
        let n: Ipv4Net = "10.87.0.0/16".parse().unwrap();
        let mut used = BTreeSet::new();
        let a = weaver_address(&n, "0123456789ab", &used).unwrap();
        assert_eq!(a, weaver_address(&n, "0123456789ab", &used).unwrap());
        assert!(n.contains(a) && a != n.gateway() && a != n.network());
        used.insert(a);
        let b = weaver_address(&n, "0123456789ab", &used).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_full_subnet_says_so() {
        let n: Ipv4Net = "10.9.0.0/30".parse().unwrap();
        let mut used = BTreeSet::new();
        let a = weaver_address(&n, "a", &used).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2), "the one address between gateway and broadcast");
        used.insert(a);
        let e = weaver_address(&n, "b", &used).unwrap_err();
        assert!(e.to_string().contains("larger `[network] subnet`"), "{e}");
    }

    #[test]
    fn names_fit_the_kernel() {
        assert!(valid_ifname(&host_veth("0123456789ab")));
        assert!(valid_ifname(&host_veth("0123456789abcdef0123")));
        assert!(!valid_ifname("a b") && !valid_ifname("") && !valid_ifname("-x") && !valid_ifname("0123456789abcdef"));
    }

    #[test]
    fn the_private_plan_routes_through_the_gateway() {
        let n: Ipv4Net = "10.87.0.0/16".parse().unwrap();
        let b = inside_batch("w1", Some((&n, Ipv4Addr::new(10, 87, 1, 2))));
        assert_eq!(b.netns.as_deref(), Some("loom-w1"));
        assert!(b.lines.contains(&"addr add 10.87.1.2/16 dev eth0".to_string()));
        assert!(b.lines.contains(&"route add default via 10.87.0.1".to_string()));
        assert_eq!(inside_batch("w1", None).lines, vec!["link set dev lo up"]);
        assert!(veth_batch("w1", "loom0").lines.iter().any(|l| l.contains("isolated on")));
        assert!(nat_ruleset("loom0", &n, None).contains("ip saddr 10.87.0.0/16 oifname != \"loom0\" masquerade"));
        assert!(nat_ruleset("loom-a", &n, None).starts_with("table ip loom_loom_a {}"));
        let with_tunnel = nat_ruleset("loom0", &n, Some("loomwg0"));
        assert!(with_tunnel.contains("iifname \"loomwg0\" oifname != \"loom0\" drop"), "{with_tunnel}");
    }
}
