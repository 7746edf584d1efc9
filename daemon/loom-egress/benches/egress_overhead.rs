//! What the egress policy costs a weaver, measured in one run on the same cgroup with the
//! programs attached and detached in turn: connect latency, UDP send latency (the send hook
//! runs per unconnected datagram), bulk TCP throughput over loopback, and how soon after
//! `set_rules` returns the next connect sees the change. Needs root; prints medians and ratios.
//!
//! `cargo bench -p loom-egress --bench egress_overhead` (ROUNDS, CONNECTS, BULK_MIB override).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use common::{Outcome, Probe, TestCgroup};
use loom_core::egress::{EgressRule, NetRule};
use loom_egress::{Egress, Expiry};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ok(o: Outcome, what: &str) -> u64 {
    match o {
        Outcome::Ok(n) => n,
        e => panic!("{what}: {e:?}"),
    }
}

fn rule(s: &str) -> NetRule {
    match s.parse::<EgressRule>().unwrap() {
        EgressRule::Net(r) => r,
        other => panic!("{other:?}"),
    }
}

fn sink() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.2:0").unwrap();
    common::deepen_backlog(&l);
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    a
}

fn main() {
    if !common::privileged("egress_overhead") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let egress = Egress::load().expect("load egress programs");
    let rounds = env("ROUNDS", 5) as usize;
    let connects = env("CONNECTS", 2000);
    let bulk = env("BULK_MIB", 1024) << 20;
    let tcp = sink();
    let udp_sink = UdpSocket::bind("127.0.0.2:0").unwrap();
    let udp = udp_sink.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while udp_sink.recv(&mut b).is_ok() {}
    });

    let cg = TestCgroup::new("bench");
    let mut probe = Probe::start(Some(&cg), false);
    // a realistic policy: the allowed endpoints among 60 other rules and 200 admissions
    let mut rules: Vec<NetRule> = (0..60).map(|i| rule(&format!("10.{i}.0.0/16:443"))).collect();
    rules.push(rule(&format!("{}/32", tcp.ip())));
    egress.set_rules(cg.id, &rules).unwrap();
    for i in 0..200u32 {
        let a = std::net::Ipv4Addr::from(0xc633_6400 + i); // 198.51.100.0/24 and on
        egress.admit(cg.id, a.into(), Some(443), None, Expiry::After(Duration::from_secs(3600))).unwrap();
    }

    let (mut c_on, mut c_off, mut u_on, mut u_off, mut t_on, mut t_off) = Default::default();
    let measure = |p: &mut Probe, c: &mut Vec<f64>, u: &mut Vec<f64>, t: &mut Vec<f64>| {
        c.push(ok(p.ask(&format!("loop {connects} {tcp}")), "connect loop") as f64 / 1000.0);
        u.push(ok(p.ask(&format!("udp-loop {connects} {udp}")), "udp loop") as f64 / 1000.0);
        let ns = ok(p.ask(&format!("bulk {tcp} {bulk}")), "bulk");
        t.push(bulk as f64 / (1u64 << 20) as f64 / (ns as f64 / 1e9));
    };
    for _ in 0..rounds {
        let att = egress.attach(&cg.path).unwrap();
        measure(&mut probe, &mut c_on, &mut u_on, &mut t_on);
        att.detach().unwrap();
        measure(&mut probe, &mut c_off, &mut u_off, &mut t_off);
    }

    // policy change → the next connect of the running process sees it
    let _att = egress.attach(&cg.path).unwrap();
    let without: Vec<NetRule> = rules[..60].to_vec();
    let (mut visible, mut update) = (Vec::new(), Vec::new());
    for i in 0..100u32 {
        let t = Instant::now();
        egress.set_rules(cg.id, if i.is_multiple_of(2) { &without } else { &rules }).unwrap();
        update.push(t.elapsed().as_secs_f64() * 1e6);
        let want_denied = i.is_multiple_of(2);
        let denied = probe.errno(&format!("tcp {tcp}")) == Some(libc::EPERM);
        assert_eq!(denied, want_denied, "round {i}");
        visible.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let worst = visible.iter().copied().fold(0.0, f64::max);
    // the same 61 rules (122 entries) written whole, as a weaver's first set_rules does
    let mut whole = Vec::new();
    for _ in 0..20 {
        egress.set_rules(cg.id, &[]).unwrap();
        let t = Instant::now();
        egress.set_rules(cg.id, &rules).unwrap();
        whole.push(t.elapsed().as_secs_f64() * 1e6);
    }

    let (c1, c0, u1, u0, t1, t0) =
        (median(c_on), median(c_off), median(u_on), median(u_off), median(t_on), median(t_off));
    println!("egress policy overhead ({rounds} rounds, {connects} connects and sends each, {} MiB bulk)", bulk >> 20);
    println!(
        "  TCP connect   median {c1:8.2} µs with policy, {c0:8.2} µs without: +{:.2} µs ({:.3}x)",
        c1 - c0,
        c1 / c0
    );
    println!(
        "  UDP sendto    median {u1:8.2} µs with policy, {u0:8.2} µs without: +{:.2} µs ({:.3}x)",
        u1 - u0,
        u1 / u0
    );
    println!("  TCP bulk      median {t1:8.0} MiB/s with policy, {t0:8.0} MiB/s without: {:.3}x", t1 / t0);
    println!(
        "  policy change → next connect sees it: median {:.1} µs, worst {worst:.1} µs \
         (set_rules changing one rule: median {:.1} µs; the rest is the probe's round trip and connect)",
        median(visible),
        median(update)
    );
    println!("  set_rules of 61 rules into an empty scope: median {:.1} µs", median(whole));
}
