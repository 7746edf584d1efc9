//! The host's upstream resolvers, from the text of its /etc/resolv.conf.

use std::net::{IpAddr, SocketAddr};

/// The `nameserver` lines of a resolv.conf, in order, on port 53. Loopback stubs such as
/// systemd-resolved's 127.0.0.53 are kept: loomd runs on the host, where they answer.
/// Comments (`#`, `;`), other options and unparsable addresses are skipped, as glibc does;
/// an IPv6 link-local address keeps its `%zone` when the zone is a numeric interface index.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        let Some(sock) = parse_nameserver(addr) else { continue };
        if !out.contains(&sock) {
            out.push(sock);
        }
    }
    out
}

fn parse_nameserver(word: &str) -> Option<SocketAddr> {
    let (ip, zone) = match word.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (word, None),
    };
    match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) if zone.is_none() => Some(SocketAddr::from((v4, 53))),
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) => {
            let scope = match zone {
                None => 0,
                // An interface name would need a kernel lookup; loomd's hosts use none.
                Some(z) => z.parse::<u32>().ok()?,
            };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(v6, 53, 0, scope)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &[&str]) {
        let got: Vec<String> = upstreams_from_resolv_conf(text).iter().map(|s| s.to_string()).collect();
        assert_eq!(got, expected, "for {text:?}");
    }

    #[test]
    fn nameserver_lines() {
        check("nameserver 1.1.1.1\n", &["1.1.1.1:53"]);
        check("# generated\nsearch example.com\nnameserver 127.0.0.53\noptions edns0 trust-ad\n", &["127.0.0.53:53"]);
        check("nameserver 10.0.0.2\nnameserver 2001:db8::1\n", &["10.0.0.2:53", "[2001:db8::1]:53"]);
        check("  nameserver\t9.9.9.9  # quad9\n", &["9.9.9.9:53"]);
        check("nameserver fe80::1%2\n", &["[fe80::1%2]:53"]);
        check("nameserver 8.8.8.8\nnameserver 8.8.8.8\n", &["8.8.8.8:53"]);
    }

    #[test]
    fn what_is_skipped() {
        check("", &[]);
        check("#nameserver 1.1.1.1\n;nameserver 1.1.1.2\n", &[]);
        check("nameserver\nnameserver not-an-ip\nnameserver 1.2.3.4:5353\n", &[]);
        check("nameservers 1.1.1.1\nNAMESERVER 1.1.1.1\n", &[]);
        check("nameserver fe80::1%eth0\nnameserver 1.1.1.1%3\n", &[]);
        check("nameserver 1.1.1.1;comment\n", &["1.1.1.1:53"]);
    }
}
