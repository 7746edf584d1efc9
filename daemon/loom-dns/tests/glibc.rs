//! glibc's own resolver against loom-dns: a "weaver" network namespace whose only DNS server
//! is the resolver on a "gateway" namespace across a veth pair, as a weaver on `private` has
//! it. `getent -s dns ahosts` (getaddrinfo, AF_UNSPEC: A and AAAA in parallel on one socket)
//! must resolve an allowed name, fail on a refused one, work over TCP (`options use-vc`) and
//! retry over TCP on its own when a UDP answer is truncated.
//!
//! Needs root, `ip` and `getent`; skips loudly without them unless LOOM_REQUIRE_PRIVILEGED=1.
//! Every address lives in the two namespaces the test makes; the host's network is untouched.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Arc;

use common::*;
use loom_dns::{Limits, Resolver};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 253, 53, 1);
const WEAVER: Ipv4Addr = Ipv4Addr::new(10, 253, 53, 2);

fn privileged() -> bool {
    let mut missing = vec![];
    if !nix::unistd::geteuid().is_root() {
        missing.push("root");
    }
    if Command::new("ip").arg("-V").output().map(|o| !o.status.success()).unwrap_or(true) {
        missing.push("ip (iproute2)");
    }
    if Command::new("getent").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        missing.push("getent (glibc)");
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("glibc resolver test: needs {}", missing.join(", "));
    if std::env::var("LOOM_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("LOOM_REQUIRE_PRIVILEGED=1 but {msg}");
    }
    eprintln!("SKIPPED (not privileged): {msg}");
    false
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The two namespaces and the weaver's resolv.conf, removed on drop.
struct Net {
    weaver: String,
    gateway: String,
}

impl Net {
    fn new() -> Self {
        let pid = std::process::id();
        let net = Net { weaver: format!("loomdns-w-{pid}"), gateway: format!("loomdns-g-{pid}") };
        ip(&["netns", "add", &net.weaver]);
        ip(&["netns", "add", &net.gateway]);
        let (vw, vg) = (format!("ldw{pid}"), format!("ldg{pid}"));
        ip(&["link", "add", &vw, "netns", &net.weaver, "type", "veth", "peer", "name", &vg, "netns", &net.gateway]);
        for (ns, dev, addr) in [(&net.weaver, &vw, WEAVER), (&net.gateway, &vg, GATEWAY)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn resolv_conf(&self, text: &str) {
        let dir = format!("/etc/netns/{}", self.weaver);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/resolv.conf"), text).unwrap();
    }

    /// `getent -s dns ahosts NAME` in the weaver: its exit code and the addresses it printed.
    async fn getent(&self, name: &str) -> (i32, Vec<IpAddr>) {
        let out = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.weaver, "getent", "-s", "dns", "ahosts", name])
            .output()
            .await
            .unwrap();
        let mut addrs: Vec<IpAddr> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        addrs.sort();
        addrs.dedup();
        (out.status.code().unwrap_or(-1), addrs)
    }

    /// UDP and TCP sockets on the gateway's port 53, bound from a thread inside its namespace
    /// (as loomd opens a weaver's proxy listener); they stay in that namespace afterwards.
    fn bind_gateway(&self) -> (std::net::UdpSocket, std::net::TcpListener) {
        let path = format!("/run/netns/{}", self.gateway);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let udp = std::net::UdpSocket::bind((GATEWAY, 53)).unwrap();
            let tcp = std::net::TcpListener::bind((GATEWAY, 53)).unwrap();
            udp.set_nonblocking(true).unwrap();
            tcp.set_nonblocking(true).unwrap();
            (udp, tcp)
        })
        .join()
        .unwrap()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.weaver, &self.gateway] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.weaver));
        // Only removed when empty: another test's namespace may have its directory there.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glibc_getaddrinfo_through_the_resolver() {
    if !privileged() {
        return;
    }
    let v4: Ipv4Addr = "192.0.2.10".parse().unwrap();
    let v6: Ipv6Addr = "2001:db8::10".parse().unwrap();
    let up = FakeUpstream::start(vec![
        ("allowed.test", answer(vec![("allowed.test", 0, Rr::A(v4)), ("allowed.test", 0, Rr::Aaaa(v6))])),
        ("big.test", answer((1..=60).map(|i| ("big.test", 60, Rr::A(Ipv4Addr::new(198, 51, 100, i)))).collect())),
    ])
    .await;
    let policy = Arc::new(RecordingPolicy {
        clients: [(IpAddr::V4(WEAVER), "weaver".to_string())].into(),
        allowed: vec!["allowed.test".into(), "big.test".into()],
        ..Default::default()
    });
    let net = Net::new();
    let (udp, tcp) = net.bind_gateway();
    let resolver = Arc::new(Resolver::new(policy.clone(), vec![up.addr], Limits::default()).unwrap());
    let serving = tokio::spawn(
        resolver
            .clone()
            .serve(tokio::net::UdpSocket::from_std(udp).unwrap(), tokio::net::TcpListener::from_std(tcp).unwrap()),
    );

    net.resolv_conf(&format!("nameserver {GATEWAY}\noptions timeout:2 attempts:1\n"));
    let (code, addrs) = net.getent("allowed.test").await;
    assert_eq!((code, addrs), (0, vec![IpAddr::V4(v4), IpAddr::V6(v6)]));
    {
        let admitted = policy.admitted.lock().unwrap();
        let mut got: Vec<IpAddr> = admitted.iter().flat_map(|a| a.addrs.clone()).collect();
        got.sort();
        assert_eq!(got, vec![IpAddr::V4(v4), IpAddr::V6(v6)], "{admitted:?}");
        assert!(admitted.iter().all(|a| a.client == "weaver" && a.name == "allowed.test"));
    }

    // Refused: getent finds nothing, and the name never left for the upstream.
    let (code, addrs) = net.getent("denied.test").await;
    assert_eq!((code, addrs), (2, vec![]));
    assert!(!up.seen_names().iter().any(|n| n.starts_with("denied.test")), "{:?}", up.seen_names());

    assert_eq!(resolver.stats().tcp, 0);

    // 60 A records do not fit the 512 bytes of a client without EDNS: glibc gets TC and asks
    // again over TCP (glibc would take the long datagram, so the counters tell the paths).
    let (code, addrs) = net.getent("big.test").await;
    assert_eq!((code, addrs.len()), (0, 60), "{addrs:?}");
    let stats = resolver.stats();
    assert!(stats.truncated >= 1 && stats.tcp >= 1, "{stats:?}");

    // Over TCP from the start (A and AAAA written back to back on one connection).
    net.resolv_conf(&format!("nameserver {GATEWAY}\noptions use-vc timeout:2 attempts:1\n"));
    let before = (policy.admitted.lock().unwrap().len(), resolver.stats());
    let (code, addrs) = net.getent("allowed.test").await;
    assert_eq!((code, addrs), (0, vec![IpAddr::V4(v4), IpAddr::V6(v6)]));
    assert_eq!(policy.admitted.lock().unwrap().len(), before.0 + 2);
    let stats = resolver.stats();
    assert_eq!((stats.udp, stats.tcp), (before.1.udp, before.1.tcp + 2), "{stats:?}");

    serving.abort();
}
