//! Egress rules of a weaver: what its processes may connect or send to.
//!
//! A rule is a network (`10.0.0.0/8`, `10.1.2.3`, `[fd00::/8]`) or a domain (`crates.io`),
//! with an optional port (`:443`, none = any port) and an optional protocol suffix (`/tcp`,
//! `/udp`, none = both). A domain rule matches the name and every name under it.
//!
//! Link-local metadata services (169.254.0.0/16 and fd00:ec2::254, see [`is_metadata`])
//! are reachable only through a rule whose network lies inside those ranges
//! ([`NetRule::names_metadata`]): `0.0.0.0/0` and `::/0` never admit them.
//!
//! IPv4 and IPv6 are separate: an IPv4-mapped IPv6 rule (`[::ffff:10.0.0.0/104]`) is the
//! IPv4 rule `10.0.0.0/8`, and `::/0` covers native IPv6 only.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Longest rule text accepted (a domain is at most 253 bytes; the rest is port and suffix).
pub const MAX_RULE_LEN: usize = 300;

/// The transport a rule is limited to; a rule without one covers both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number (`IPPROTO_TCP`, `IPPROTO_UDP`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// An address prefix with its host bits zero. IPv4-mapped IPv6 prefixes are stored as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `None` if the prefix is longer than the address or host bits are set.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        let (addr, prefix) = match addr {
            IpAddr::V6(a) if prefix >= 96 && a.to_ipv4_mapped().is_some() => {
                (IpAddr::V4(a.to_ipv4_mapped().expect("checked")), prefix - 96)
            }
            a => (a, prefix),
        };
        let net = IpNet { addr, prefix };
        (prefix <= net.max_prefix() && mask(addr, prefix) == addr).then_some(net)
    }

    /// The single address `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> IpNet {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        IpNet::new(addr, prefix).expect("a full-length prefix has no host bits")
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn max_prefix(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// Whether every address of `other` is in `self` (same family only).
    pub fn contains_net(&self, other: &IpNet) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && other.prefix >= self.prefix
            && mask(other.addr, self.prefix) == self.addr
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.contains_net(&IpNet::host(canonical(addr)))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == self.max_prefix() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; anything else unchanged.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        a => a,
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

const METADATA_V4: IpNet = IpNet { addr: IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), prefix: 16 };
const METADATA_V6: IpNet = IpNet { addr: IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)), prefix: 128 };

/// Whether `addr` is a link-local metadata address (169.254.0.0/16, fd00:ec2::254).
pub fn is_metadata(addr: IpAddr) -> bool {
    METADATA_V4.contains(addr) || METADATA_V6.contains(addr)
}

/// A rule on addresses: what the kernel enforces directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetRule {
    pub net: IpNet,
    /// `None`: any port.
    pub port: Option<u16>,
    /// `None`: TCP and UDP.
    pub protocol: Option<Protocol>,
}

impl NetRule {
    /// Whether this rule may admit metadata addresses: its network lies inside a metadata
    /// range, so it names them explicitly (a wider rule such as `0.0.0.0/0` does not).
    pub fn names_metadata(&self) -> bool {
        METADATA_V4.contains_net(&self.net) || METADATA_V6.contains_net(&self.net)
    }
}

/// A rule on names: loomd's resolver admits the addresses it answers for a matching name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainRule {
    /// Lower case, no trailing dot.
    pub domain: String,
    pub port: Option<u16>,
    pub protocol: Option<Protocol>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EgressRule {
    Net(NetRule),
    Domain(DomainRule),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}`: {reason}; write CIDR[:PORT] or DOMAIN[:PORT] (IPv6 in brackets with a port: [fd00::/8]:53), optionally followed by /tcp or /udp"
)]
pub struct EgressRuleError {
    /// The rule as given, cut to [`MAX_RULE_LEN`] characters.
    pub input: String,
    pub reason: String,
}

fn err(input: &str, reason: impl Into<String>) -> EgressRuleError {
    EgressRuleError { input: input.chars().take(MAX_RULE_LEN).collect(), reason: reason.into() }
}

fn parse_port(input: &str, p: &str) -> Result<u16, EgressRuleError> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(input, format!("port `{p}` is not a number")));
    }
    match p.parse::<u16>() {
        Ok(0) => Err(err(input, "port 0 is not a port (leave the port out to allow any)")),
        Ok(n) => Ok(n),
        Err(_) => Err(err(input, format!("port `{p}` is above 65535"))),
    }
}

fn parse_net(input: &str, s: &str) -> Result<IpNet, EgressRuleError> {
    let (a, prefix) = match s.split_once('/') {
        Some((a, p)) => {
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(input, format!("prefix length `/{p}` is not a number")));
            }
            (a, Some(p.parse::<u8>().map_err(|_| err(input, format!("prefix length /{p} is too long")))?))
        }
        None => (s, None),
    };
    // The input itself needs no repeating: "`300.1.1.1`: not an IPv4 address".
    let what = |family| {
        if a == input.trim() { format!("not an {family} address") } else { format!("`{a}` is not an {family} address") }
    };
    let addr: IpAddr = if a.contains(':') {
        a.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| err(input, what("IPv6")))?
    } else {
        a.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| err(input, what("IPv4")))?
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    if prefix > max {
        return Err(err(input, format!("prefix length /{prefix} is longer than the address ({max} bits)")));
    }
    IpNet::new(addr, prefix).ok_or_else(|| {
        let net = mask(addr, prefix);
        err(input, format!("`{a}/{prefix}` has host bits set (the network is {net}/{prefix})"))
    })
}

/// Lower case without one trailing dot, as names are compared.
pub fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn parse_domain(input: &str, s: &str) -> Result<String, EgressRuleError> {
    let name = normalize_name(s);
    if name.is_empty() {
        return Err(err(input, "no address or domain"));
    }
    if name.len() > 253 {
        return Err(err(input, "a domain is at most 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(err(input, format!("`{s}` is not a domain: labels are 1 to 63 characters")));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(err(input, format!("`{s}` is not a domain: only letters, digits, `-` and `_`")));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(err(input, format!("`{s}` is not a domain: a label cannot start or end with `-`")));
        }
    }
    // A name whose last label is a number would be read as an address by resolvers and people.
    if name.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err(err(input, format!("`{s}` is not an IPv4 address")));
    }
    Ok(name)
}

impl FromStr for EgressRule {
    type Err = EgressRuleError;

    fn from_str(input: &str) -> Result<EgressRule, EgressRuleError> {
        if input.len() > MAX_RULE_LEN {
            return Err(err(input, format!("longer than {MAX_RULE_LEN} bytes")));
        }
        let s = input.trim();
        let (s, protocol) = if let Some(r) = s.strip_suffix("/tcp") {
            (r, Some(Protocol::Tcp))
        } else if let Some(r) = s.strip_suffix("/udp") {
            (r, Some(Protocol::Udp))
        } else {
            (s, None)
        };
        if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| err(input, "`[` without a closing `]`"))?;
            let port = match after {
                "" => None,
                a => Some(parse_port(
                    input,
                    a.strip_prefix(':').ok_or_else(|| err(input, "expected `:PORT` after `]`"))?,
                )?),
            };
            if !inner.contains(':') {
                return Err(err(input, "brackets are for IPv6 addresses"));
            }
            return Ok(EgressRule::Net(NetRule { net: parse_net(input, inner)?, port, protocol }));
        }
        if s.contains(':') {
            if s.matches(':').count() > 1 {
                // An IPv6 address without brackets cannot carry a port.
                return Ok(EgressRule::Net(NetRule { net: parse_net(input, s)?, port: None, protocol }));
            }
            let (host, port) = s.split_once(':').expect("contains");
            let port = Some(parse_port(input, port)?);
            return host_rule(input, host, port, protocol);
        }
        host_rule(input, s, None, protocol)
    }
}

fn host_rule(
    input: &str,
    host: &str,
    port: Option<u16>,
    protocol: Option<Protocol>,
) -> Result<EgressRule, EgressRuleError> {
    let looks_v4 =
        host.split('/').next().is_some_and(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    if looks_v4 || host.contains('/') {
        return Ok(EgressRule::Net(NetRule { net: parse_net(input, host)?, port, protocol }));
    }
    Ok(EgressRule::Domain(DomainRule { domain: parse_domain(input, host)?, port, protocol }))
}

fn suffix(f: &mut fmt::Formatter<'_>, port: Option<u16>, protocol: Option<Protocol>) -> fmt::Result {
    if let Some(p) = port {
        write!(f, ":{p}")?;
    }
    if let Some(p) = protocol {
        write!(f, "/{p}")?;
    }
    Ok(())
}

impl fmt::Display for NetRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.net.addr, self.port) {
            (IpAddr::V6(_), Some(_)) => write!(f, "[{}]", self.net)?,
            _ => write!(f, "{}", self.net)?,
        }
        suffix(f, self.port, self.protocol)
    }
}

impl fmt::Display for DomainRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.domain)?;
        suffix(f, self.port, self.protocol)
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressRule::Net(r) => r.fmt(f),
            EgressRule::Domain(r) => r.fmt(f),
        }
    }
}

/// The most rules one weaver's policy holds.
pub const MAX_POLICY_RULES: usize = 256;

/// A weaver's rules as given (defaults, `--allow`, `loom weaver egress`): each parsed and kept
/// in its canonical text, duplicates dropped, order kept.
pub fn policy_of<'a>(rules: impl IntoIterator<Item = &'a String>) -> Result<Vec<String>, EgressRuleError> {
    let mut out: Vec<String> = vec![];
    for r in rules {
        let text = r.parse::<EgressRule>()?.to_string();
        if !out.contains(&text) {
            out.push(text);
        }
        if out.len() > MAX_POLICY_RULES {
            return Err(err(r, format!("a weaver holds at most {MAX_POLICY_RULES} rules")));
        }
    }
    Ok(out)
}

/// Whether `name` is the rule's domain or a name under it, ignoring case and a trailing dot.
/// Address rules match no name.
pub fn domain_matches(rule: &EgressRule, name: &str) -> bool {
    let EgressRule::Domain(r) = rule else { return false };
    let name = normalize_name(name);
    let domain = normalize_name(&r.domain);
    name == domain
        || (name.len() > domain.len()
            && name.ends_with(&domain)
            && name.as_bytes()[name.len() - domain.len() - 1] == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> NetRule {
        match s.parse::<EgressRule>().unwrap() {
            EgressRule::Net(r) => r,
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    #[test]
    fn the_documented_forms_parse_and_print_back() {
        for s in [
            "10.0.0.0/8",
            "10.1.2.3:443",
            "[fd00::/8]:53",
            "0.0.0.0/0:443",
            "crates.io",
            "github.com:443",
            "10.0.0.0/8:22/tcp",
            "::1",
            "fd00::/8",
            "[::1]:53/udp",
            "example.com/udp",
        ] {
            let r: EgressRule = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(r.to_string(), s);
        }
        assert_eq!(net("10.1.2.3/32").to_string(), "10.1.2.3");
        assert_eq!("GitHub.COM.:443".parse::<EgressRule>().unwrap().to_string(), "github.com:443");
        assert_eq!(net("[::ffff:10.0.0.0/104]:80").net, net("10.0.0.0/8").net);
    }

    #[test]
    fn bad_rules_say_what_is_wrong_and_what_to_write() {
        let e = "300.1.1.1".parse::<EgressRule>().unwrap_err().to_string();
        assert!(e.starts_with("`300.1.1.1`: not an IPv4 address; write CIDR[:PORT] or DOMAIN[:PORT]"), "{e}");
        for (s, why) in [
            ("10.1.2.3/8", "host bits set (the network is 10.0.0.0/8)"),
            ("10.0.0.0/33", "longer than the address"),
            ("1.2.3.4:0", "port 0"),
            ("1.2.3.4:70000", "above 65535"),
            ("[fd00::/8", "without a closing"),
            ("[10.0.0.1]:80", "brackets are for IPv6"),
            ("-bad.com", "cannot start or end"),
            ("a..b", "labels are 1 to 63"),
            ("", "no address or domain"),
            ("ex ample.com", "only letters"),
        ] {
            let e = s.parse::<EgressRule>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn a_domain_rule_matches_its_name_and_names_under_it_only() {
        let r: EgressRule = "crates.io".parse().unwrap();
        assert!(domain_matches(&r, "crates.io"));
        assert!(domain_matches(&r, "Static.Crates.IO."));
        assert!(!domain_matches(&r, "evilcrates.io"));
        assert!(!domain_matches(&r, "crates.io.evil.com"));
        assert!(!domain_matches(&r, "io"));
        assert!(!domain_matches(&"10.0.0.0/8".parse().unwrap(), "crates.io"));
    }

    #[test]
    fn only_rules_inside_the_metadata_ranges_name_them() {
        assert!(is_metadata("169.254.169.254".parse().unwrap()));
        assert!(is_metadata("::ffff:169.254.169.254".parse().unwrap()));
        assert!(is_metadata("fd00:ec2::254".parse().unwrap()));
        assert!(!is_metadata("fd00:ec2::253".parse().unwrap()));
        for s in ["169.254.169.254:80", "169.254.0.0/16", "[fd00:ec2::254]:80"] {
            assert!(net(s).names_metadata(), "{s}");
        }
        for s in ["0.0.0.0/0", "0.0.0.0/0:80", "169.0.0.0/8", "::/0", "fd00::/8", "10.0.0.0/8"] {
            assert!(!net(s).names_metadata(), "{s}");
        }
    }
}
