//! The byte layouts of `ebpf/include/loom_egress.h`: rule keys and values, and the deny
//! event with its decoding. Pure; `tests` checks the sizes and offsets against the header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use loom_core::egress::{IpNet, NetRule, Protocol};

pub const KIND_STATIC: u8 = 0;
pub const KIND_ADMITTED: u8 = 1;
pub const KIND_V4: u8 = 2;
pub const NAMES_METADATA: u32 = 1;

/// Bits of the key before the address: scope (64), kind, protocol (8 each), port (16).
pub const FIXED_BITS: u32 = 96;
/// Bytes of the key after `prefixlen`.
pub const KEY_DATA_LEN: usize = 28;

/// `struct loom_egress_key` without its `prefixlen` (aya's `lpm_trie::Key` adds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawKey {
    pub prefix_len: u32,
    pub data: [u8; KEY_DATA_LEN],
}

impl RawKey {
    /// `port` 0 means any port. The scope's bytes are in host order, as the program reads them.
    pub fn new(scope: u64, admitted: bool, protocol: u8, port: u16, net: &IpNet) -> RawKey {
        let mut data = [0u8; KEY_DATA_LEN];
        data[0..8].copy_from_slice(&scope.to_ne_bytes());
        let v4 = net.addr().is_ipv4();
        data[8] = if admitted { KIND_ADMITTED } else { KIND_STATIC } | if v4 { KIND_V4 } else { 0 };
        data[9] = protocol;
        data[10..12].copy_from_slice(&port.to_be_bytes());
        match net.addr() {
            IpAddr::V4(a) => data[12..16].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => data[12..28].copy_from_slice(&a.octets()),
        }
        RawKey { prefix_len: FIXED_BITS + u32::from(net.prefix()), data }
    }

    pub fn scope(&self) -> u64 {
        u64::from_ne_bytes(self.data[0..8].try_into().expect("8 bytes"))
    }
}

/// `struct loom_egress_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct RawValue {
    pub expires_ns: u64,
    pub flags: u32,
    pub reserved: u32,
}

// SAFETY: RawValue is repr(C), Copy, has no padding (8 + 4 + 4) and every bit pattern is valid.
unsafe impl aya::Pod for RawValue {}

/// The protocols a rule covers: its own, or TCP and UDP.
pub fn protocols(p: Option<Protocol>) -> &'static [Protocol] {
    match p {
        Some(Protocol::Tcp) => &[Protocol::Tcp],
        Some(Protocol::Udp) => &[Protocol::Udp],
        None => &[Protocol::Tcp, Protocol::Udp],
    }
}

/// The kernel entries of a static rule: one per protocol it covers.
pub fn static_entries(scope: u64, rule: &NetRule) -> impl Iterator<Item = (RawKey, RawValue)> + '_ {
    let value = RawValue { expires_ns: 0, flags: if rule.names_metadata() { NAMES_METADATA } else { 0 }, reserved: 0 };
    protocols(rule.protocol)
        .iter()
        .map(move |p| (RawKey::new(scope, false, p.number(), rule.port.unwrap_or(0), &rule.net), value))
}

/// Bytes of `struct loom_egress_event`.
pub const EVENT_LEN: usize = 72;

/// Which hook refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Sendmsg,
}

/// Why the destination was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// No rule of the weaver names the destination (the default deny).
    NoRule,
    /// A link-local metadata address, which only a rule naming it admits.
    Metadata,
    /// The task's cgroup is below an attachment whose scope was already forgotten.
    NoScope,
    /// Neither TCP nor UDP (e.g. SCTP), which rules never cover.
    Protocol,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NoRule => "no_rule",
            DenyReason::Metadata => "metadata",
            DenyReason::NoScope => "no_scope",
            DenyReason::Protocol => "protocol",
        }
    }
}

/// A refused connect or send, as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEvent {
    /// CLOCK_MONOTONIC, ns.
    pub monotonic_ns: u64,
    /// The scope (the attached weaver cgroup's id) whose rules refused; 0 if none was found.
    pub scope: u64,
    /// The cgroup the task itself is in (the scope's or one below it).
    pub cgroup_id: u64,
    /// Process id (tgid) and thread id.
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub destination: SocketAddr,
    /// IP protocol number: 6 TCP, 17 UDP, or what the socket had.
    pub protocol: u8,
    pub hook: Hook,
    pub reason: DenyReason,
}

impl DenyEvent {
    pub fn protocol_name(&self) -> String {
        match self.protocol {
            6 => "tcp".into(),
            17 => "udp".into(),
            n => format!("ip-proto-{n}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("deny record of {0} bytes, expected {EVENT_LEN}")]
    Length(usize),
    #[error("deny record with unknown {field} {value}")]
    Unknown { field: &'static str, value: u8 },
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

/// Decode one ring buffer record; any bytes give `Ok` or an `Err`, never a panic.
pub fn decode(b: &[u8]) -> Result<DenyEvent, DecodeError> {
    if b.len() != EVENT_LEN {
        return Err(DecodeError::Length(b.len()));
    }
    let addr: [u8; 16] = b[32..48].try_into().expect("16 bytes");
    let port = u16::from_ne_bytes([b[48], b[49]]);
    let ip = match b[50] {
        2 => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        10 => IpAddr::V6(Ipv6Addr::from(addr)),
        value => return Err(DecodeError::Unknown { field: "family", value }),
    };
    let hook = match b[52] {
        1 => Hook::Connect,
        2 => Hook::Sendmsg,
        value => return Err(DecodeError::Unknown { field: "hook", value }),
    };
    let reason = match b[53] {
        1 => DenyReason::NoRule,
        2 => DenyReason::Metadata,
        3 => DenyReason::NoScope,
        4 => DenyReason::Protocol,
        value => return Err(DecodeError::Unknown { field: "reason", value }),
    };
    let comm = &b[56..72];
    let comm = &comm[..comm.iter().position(|&c| c == 0).unwrap_or(comm.len())];
    Ok(DenyEvent {
        monotonic_ns: u64_at(b, 0),
        scope: u64_at(b, 8),
        cgroup_id: u64_at(b, 16),
        pid: u32_at(b, 24),
        tid: u32_at(b, 28),
        comm: String::from_utf8_lossy(comm).into_owned(),
        destination: SocketAddr::new(ip, port),
        protocol: b[51],
        hook,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = include_str!("../../../ebpf/include/loom_egress.h");

    #[test]
    fn the_header_has_the_fields_in_the_order_decoded_here() {
        let ev = &HEADER[HEADER.find("struct loom_egress_event {").unwrap()..];
        let ev = &ev[..ev.find("};").unwrap()];
        let order = [
            "__u64 ktime_ns",
            "__u64 scope",
            "__u64 cgroup_id",
            "__u32 tgid",
            "__u32 pid",
            "__u8 addr[16]",
            "__u16 port",
            "__u8 family",
            "__u8 protocol",
            "__u8 hook",
            "__u8 reason",
            "__u8 reserved[2]",
            "char comm[16]",
        ];
        let sizes = [8, 8, 8, 4, 4, 16, 2, 1, 1, 1, 1, 2, 16];
        let mut at = 0;
        for f in order {
            let i = ev.find(f).unwrap_or_else(|| panic!("{f} not in the event"));
            assert!(i >= at, "{f} out of order");
            at = i;
        }
        assert_eq!(sizes.iter().sum::<usize>(), EVENT_LEN);
        for (c, v) in [("KIND_ADMITTED", KIND_ADMITTED), ("KIND_V4", KIND_V4)] {
            assert!(HEADER.contains(&format!("#define LOOM_EGRESS_{c} {v}\n")), "{c}");
        }
        assert!(HEADER.contains(&format!("#define LOOM_EGRESS_NAMES_METADATA {NAMES_METADATA}\n")));
        assert_eq!(std::mem::size_of::<RawValue>(), 16);
    }

    #[test]
    fn keys_put_the_fixed_fields_first_and_ipv4_in_the_first_address_bytes() {
        let net = IpNet::new("10.0.0.0".parse().unwrap(), 8).unwrap();
        let k = RawKey::new(7, true, 6, 443, &net);
        assert_eq!(k.prefix_len, 96 + 8);
        assert_eq!(k.scope(), 7);
        assert_eq!(&k.data[8..16], &[KIND_ADMITTED | KIND_V4, 6, 0x01, 0xbb, 10, 0, 0, 0]);
        let net6 = IpNet::new("fd00::".parse().unwrap(), 8).unwrap();
        let k6 = RawKey::new(7, false, 17, 0, &net6);
        assert_eq!((k6.prefix_len, k6.data[8], k6.data[12]), (104, KIND_STATIC, 0xfd));
    }

    #[test]
    fn records_decode_and_garbage_is_an_error() {
        let mut b = [0u8; EVENT_LEN];
        b[8..16].copy_from_slice(&5u64.to_ne_bytes());
        b[24..28].copy_from_slice(&42u32.to_ne_bytes());
        b[32..36].copy_from_slice(&[127, 0, 0, 3]);
        b[48..50].copy_from_slice(&8080u16.to_ne_bytes());
        (b[50], b[51], b[52], b[53]) = (2, 6, 1, 1);
        b[56..60].copy_from_slice(b"curl");
        let e = decode(&b).unwrap();
        assert_eq!((e.scope, e.pid, e.comm.as_str()), (5, 42, "curl"));
        assert_eq!(e.destination, "127.0.0.3:8080".parse().unwrap());
        assert_eq!((e.protocol_name(), e.hook, e.reason), ("tcp".to_string(), Hook::Connect, DenyReason::NoRule));
        assert_eq!(decode(&b[..10]), Err(DecodeError::Length(10)));
        b[50] = 9;
        assert!(decode(&b).is_err());
        for n in 0..=255u8 {
            let mut g = [n; EVENT_LEN];
            g[50] = n;
            let _ = decode(&g);
        }
    }
}
