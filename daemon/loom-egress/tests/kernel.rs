//! Real-kernel tests: load the committed programs, attach them to a test v2 cgroup with the
//! probe inside, and check what it may reach. Need root; see common::privileged.

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use common::{Outcome, Probe, TestCgroup, privileged};
use loom_core::egress::{EgressRule, NetRule};
use loom_egress::{DenyEvent, DenyReason, Egress, EgressConfig, EgressError, Expiry, Hook};
use tokio::sync::mpsc;

const EPERM: i32 = libc::EPERM;

fn rules(list: &[&str]) -> Vec<NetRule> {
    list.iter()
        .map(|s| match s.parse::<EgressRule>().unwrap() {
            EgressRule::Net(r) => r,
            other => panic!("{s} is {other:?}"),
        })
        .collect()
}

/// A listener that accepts and drops every connection (so a full backlog never slows a
/// connect), on a thread that lives as long as the test process.
fn listen(addr: &str) -> ((), SocketAddr) {
    let l = TcpListener::bind(addr).unwrap();
    common::deepen_backlog(&l);
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    ((), a)
}

async fn deny_for(rx: &mut mpsc::Receiver<DenyEvent>, dest: SocketAddr, hook: Hook) -> DenyEvent {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(ev)) if ev.destination == dest && ev.hook == hook => return ev,
            Ok(Some(_)) => continue,
            _ => panic!("no deny event for {dest} ({hook:?}) within 5 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_destinations_work_denied_ones_fail_at_once_and_are_reported() {
    if !privileged("allowed_and_denied") {
        return;
    }
    let egress = Egress::load().expect("load egress programs");
    let mut rx = egress.take_events().unwrap();
    let (_a, allowed) = listen("127.0.0.2:0");
    let (_b, denied) = listen("127.0.0.3:0");
    let cg = TestCgroup::new("basic");
    let mut probe = Probe::start(Some(&cg), false);
    let _att = egress.attach(&cg.path).unwrap();
    egress.set_rules(cg.id, &rules(&[&format!("{allowed}/tcp")])).unwrap();

    assert_eq!(probe.errno(&format!("tcp {allowed}")), None, "allowed connect");
    match probe.ask(&format!("tcp {denied}")) {
        Outcome::Err { errno, micros } => {
            assert_eq!(errno, EPERM);
            assert!(micros < 100_000, "denied connect took {micros} µs");
            eprintln!("denied connect failed after {micros} µs");
        }
        ok => panic!("denied connect worked: {ok:?}"),
    }
    let ev = deny_for(&mut rx, denied, Hook::Connect).await;
    assert_eq!((ev.scope, ev.cgroup_id, ev.pid), (cg.id, cg.id, probe.pid()));
    assert_eq!((ev.protocol_name().as_str(), ev.reason), ("tcp", DenyReason::NoRule));
    assert_eq!(ev.comm, "loom-egress-pro");

    // the rule is TCP only: UDP to the same address:port is refused, sent or connected
    let udp = UdpSocket::bind("127.0.0.3:0").unwrap();
    let udp_addr = udp.local_addr().unwrap();
    assert_eq!(probe.errno(&format!("udp-send {allowed}")), Some(EPERM));
    assert_eq!(probe.errno(&format!("udp-send {udp_addr}")), Some(EPERM));
    let ev = deny_for(&mut rx, udp_addr, Hook::Sendmsg).await;
    assert_eq!(ev.protocol_name(), "udp");
    assert_eq!(probe.errno(&format!("udp-connect {udp_addr}")), Some(EPERM));
    deny_for(&mut rx, udp_addr, Hook::Connect).await;

    // a TCP Fast Open connect (inside sendto) is refused like connect()
    assert_eq!(probe.errno(&format!("tcp-fastopen {denied}")), Some(EPERM));
    assert_eq!(deny_for(&mut rx, denied, Hook::Connect).await.pid, probe.pid());
    assert_eq!(probe.errno(&format!("tcp-fastopen {allowed}")), None);

    // a process in a cgroup below the weaver's is under the weaver's rules
    let sub = cg.child("payload");
    let mut nested = Probe::start(Some(&sub), false);
    assert_eq!(nested.errno(&format!("tcp {allowed}")), None);
    assert_eq!(nested.errno(&format!("tcp {denied}")), Some(EPERM));
    let ev = deny_for(&mut rx, denied, Hook::Connect).await;
    assert_eq!((ev.scope, ev.cgroup_id, ev.pid), (cg.id, sub.id, nested.pid()));
    drop(nested);

    // a process outside the cgroup is not affected
    let mut outside = Probe::start(None, false);
    assert_eq!(outside.errno(&format!("tcp {denied}")), None);
    assert_eq!(outside.errno(&format!("udp-send {udp_addr}")), None);
    assert_eq!(egress.lost(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_change_is_seen_by_the_next_connect_and_never_leaves_a_gap() {
    if !privileged("rule_change") {
        return;
    }
    let egress = Egress::load().expect("load egress programs");
    let (_a, a) = listen("127.0.0.2:0");
    let (_b, b) = listen("127.0.0.3:0");
    let cg = TestCgroup::new("change");
    let mut probe = Probe::start(Some(&cg), false);
    let _att = egress.attach(&cg.path).unwrap();
    let only_a = rules(&[&a.to_string()]);
    let both = rules(&[&a.to_string(), "127.0.0.3/32"]);
    egress.set_rules(cg.id, &only_a).unwrap();
    assert_eq!(probe.errno(&format!("tcp {b}")), Some(EPERM));

    let mut worst = Duration::ZERO;
    for i in 0..20u32 {
        let t = Instant::now();
        egress.set_rules(cg.id, if i.is_multiple_of(2) { &both } else { &only_a }).unwrap();
        let want = if i.is_multiple_of(2) { None } else { Some(EPERM) };
        assert_eq!(probe.errno(&format!("tcp {b}")), want, "round {i}");
        worst = worst.max(t.elapsed());
    }
    eprintln!("policy change → next connect sees it: worst {worst:?} (update + one connect)");
    assert!(worst < Duration::from_millis(10), "{worst:?}");

    // Swapping rule sets while connects run: the rule for `a` is in both, so none may fail.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let flipper = {
        let (only_a, both) = (only_a.clone(), both.clone());
        let egress = &egress;
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                let mut n = 0u32;
                while stop_rx.try_recv().is_err() {
                    egress.set_rules(cg.id, if n.is_multiple_of(2) { &both } else { &only_a }).unwrap();
                    n += 1;
                }
                n
            });
            let t = Instant::now();
            let r = probe.ask(&format!("loop 2000 {a}"));
            eprintln!("2000 connects during swaps took {:?} (median {r:?} ns)", t.elapsed());
            stop_tx.send(()).unwrap();
            (r, h.join().unwrap())
        })
    };
    assert!(matches!(flipper.0, Outcome::Ok(_)), "a connect to the rule in both sets failed: {flipper:?}");
    eprintln!("{} rule-set swaps during 2000 connects", flipper.1);
    assert!(flipper.1 > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_addresses_work_until_they_expire_and_do_not_shadow_static_rules() {
    if !privileged("admitted") {
        return;
    }
    let egress = Egress::load().expect("load egress programs");
    let (_b, b) = listen("127.0.0.3:0");
    let (_c, c) = listen("127.0.0.4:0");
    let cg = TestCgroup::new("admit");
    let mut probe = Probe::start(Some(&cg), false);
    let _att = egress.attach(&cg.path).unwrap();
    egress.set_rules(cg.id, &rules(&["127.0.0.4/32"])).unwrap();
    assert_eq!(probe.errno(&format!("tcp {b}")), Some(EPERM));
    egress.admit(cg.id, b.ip(), Some(b.port()), None, Expiry::After(Duration::from_millis(300))).unwrap();
    assert_eq!(probe.errno(&format!("tcp {b}")), None);
    // an admission for the static rule's address that expires must not hide the rule
    egress.admit(cg.id, c.ip(), None, None, Expiry::After(Duration::from_millis(300))).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(probe.errno(&format!("tcp {b}")), Some(EPERM), "expired admission still admits");
    assert_eq!(probe.errno(&format!("tcp {c}")), None, "static rule shadowed by an expired admission");
    // re-admitting extends; Never never expires; admit sweeps the expired ones of its scope
    egress.admit(cg.id, b.ip(), None, None, Expiry::Never).unwrap();
    assert_eq!(probe.errno(&format!("tcp {b}")), None);
    let (entries, scopes) = egress.kernel_entries();
    assert_eq!((entries, scopes), (2 + 2, 1), "two static (tcp, udp) and two admitted entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_and_ipv4_mapped_destinations_follow_the_rules() {
    if !privileged("ipv6") {
        return;
    }
    let egress = Egress::load().expect("load egress programs");
    let mut rx = egress.take_events().unwrap();
    let (_v6, v6) = listen("[::1]:0");
    let (_v4, v4) = listen("127.0.0.2:0");
    let cg = TestCgroup::new("ipv6");
    let mut probe = Probe::start(Some(&cg), false);
    let _att = egress.attach(&cg.path).unwrap();
    let mapped: SocketAddr = format!("[::ffff:127.0.0.2]:{}", v4.port()).parse().unwrap();

    // ::/0 covers native IPv6 only, not IPv4 reached through a mapped address
    egress.set_rules(cg.id, &rules(&["::/0"])).unwrap();
    assert_eq!(probe.errno(&format!("tcp {v6}")), None);
    assert_eq!(probe.errno(&format!("tcp {mapped}")), Some(EPERM));
    let ev = deny_for(&mut rx, v4, Hook::Connect).await;
    assert_eq!(ev.destination, v4, "a mapped destination is reported as the IPv4 address it is");

    egress.set_rules(cg.id, &rules(&[&format!("[::1]:{}", v6.port() ^ 1), &v4.to_string()])).unwrap();
    assert_eq!(probe.errno(&format!("tcp {v6}")), Some(EPERM));
    deny_for(&mut rx, v6, Hook::Connect).await;
    assert_eq!(probe.errno(&format!("tcp {mapped}")), None, "an IPv4 rule covers its mapped address");
    assert_eq!(probe.errno(&format!("udp-send {v6}")), Some(EPERM));
    deny_for(&mut rx, v6, Hook::Sendmsg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_addresses_need_a_rule_that_names_them() {
    if !privileged("metadata") {
        return;
    }
    let egress = Egress::load().expect("load egress programs");
    let mut rx = egress.take_events().unwrap();
    let cg = TestCgroup::new("metadata");
    // its own network namespace: an admitted destination fails with ENETUNREACH, nothing leaves
    let mut probe = Probe::start(Some(&cg), true);
    let _att = egress.attach(&cg.path).unwrap();
    let md: SocketAddr = "169.254.169.254:80".parse().unwrap();
    let md6: SocketAddr = "[fd00:ec2::254]:80".parse().unwrap();
    let other: SocketAddr = "192.0.2.1:80".parse().unwrap();

    egress.set_rules(cg.id, &rules(&["0.0.0.0/0", "::/0"])).unwrap();
    assert_eq!(probe.errno(&format!("udp-connect {md}")), Some(EPERM));
    assert_eq!(deny_for(&mut rx, md, Hook::Connect).await.reason, DenyReason::Metadata);
    assert_eq!(probe.errno(&format!("udp-send {md6}")), Some(EPERM));
    assert_eq!(deny_for(&mut rx, md6, Hook::Sendmsg).await.reason, DenyReason::Metadata);
    assert_ne!(probe.errno(&format!("udp-connect {other}")), Some(EPERM), "0.0.0.0/0 admits the rest");

    egress.set_rules(cg.id, &rules(&["169.254.169.254:80", "[fd00:ec2::254]:80"])).unwrap();
    assert_ne!(probe.errno(&format!("udp-connect {md}")), Some(EPERM));
    assert_ne!(probe.errno(&format!("udp-send {md6}")), Some(EPERM));
    // an admission (from a DNS answer) cannot open a metadata address
    egress.set_rules(cg.id, &[]).unwrap();
    egress.admit(cg.id, md.ip(), None, None, Expiry::Never).unwrap();
    assert_eq!(probe.errno(&format!("udp-connect {md}")), Some(EPERM));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_weavers_leaves_nothing_behind() {
    if !privileged("forget") {
        return;
    }
    let egress = Egress::load().expect("load egress programs");
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = fds();
    for i in 0..300u32 {
        let cg = TestCgroup::new(&format!("forget-{i}"));
        let att = egress.attach(&cg.path).unwrap();
        egress.set_rules(cg.id, &rules(&["10.0.0.0/8:443", "[fd00::/8]:53/udp"])).unwrap();
        egress.admit(cg.id, "192.0.2.7".parse().unwrap(), Some(443), None, Expiry::Never).unwrap();
        egress
            .admit(cg.id, "2001:db8::1".parse().unwrap(), None, None, Expiry::After(Duration::from_secs(60)))
            .unwrap();
        assert_eq!(egress.kernel_entries(), (3 + 4, 1));
        egress.forget(cg.id).unwrap();
        if i.is_multiple_of(2) { att.detach().unwrap() } else { drop(att) }
    }
    assert_eq!(egress.kernel_entries(), (0, 0));
    let after = fds();
    assert!(after <= before + 2, "file descriptors grew from {before} to {after}");

    // a process left in a forgotten scope's cgroup is refused everything
    let cg = TestCgroup::new("forgotten");
    let mut probe = Probe::start(Some(&cg), false);
    let (_l, a) = listen("127.0.0.2:0");
    let att = egress.attach(&cg.path).unwrap();
    egress.set_rules(cg.id, &rules(&["127.0.0.0/8"])).unwrap();
    assert_eq!(probe.errno(&format!("tcp {a}")), None);
    egress.forget(cg.id).unwrap();
    assert_eq!(probe.errno(&format!("tcp {a}")), Some(EPERM));
    // and once detached, the cgroup is free again
    drop(att);
    assert_eq!(probe.errno(&format!("tcp {a}")), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_maps_are_clear_errors_and_keep_the_old_rules() {
    if !privileged("limits") {
        return;
    }
    let config = EgressConfig { max_rules: 6, max_admitted_per_scope: 2, ..EgressConfig::default() };
    let egress = Egress::load_with(config).expect("load egress programs");
    let (_a, a) = listen("127.0.0.2:0");
    let cg = TestCgroup::new("limits");
    let mut probe = Probe::start(Some(&cg), false);
    let _att = egress.attach(&cg.path).unwrap();
    let old = rules(&[&a.to_string(), "10.0.0.0/8"]);
    egress.set_rules(cg.id, &old).unwrap();
    let e = egress.set_rules(cg.id, &rules(&["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16", &a.to_string()]));
    assert!(matches!(e, Err(EgressError::RulesFull { max: 6 })), "{e:?}");
    assert!(e.unwrap_err().to_string().contains("raise EgressConfig::max_rules"));
    assert_eq!(egress.rules(cg.id), old);
    assert_eq!(egress.kernel_entries(), (4, 1), "the failed update left nothing behind");
    assert_eq!(probe.errno(&format!("tcp {a}")), None, "the old rules still hold");

    egress.admit(cg.id, "192.0.2.1".parse().unwrap(), None, None, Expiry::Never).unwrap();
    let e = egress.admit(cg.id, "192.0.2.2".parse().unwrap(), None, None, Expiry::Never);
    assert!(matches!(e, Err(EgressError::TooManyAdmitted { max: 2, .. })), "{e:?}");

    let e = egress.attach(std::path::Path::new("/proc")).unwrap_err().to_string();
    assert!(e.contains("/proc") && e.contains("cgroup v2 mount"), "{e}");
}

/// A named network namespace with loopback up, deleted on drop.
struct TestNetns(String);

impl TestNetns {
    fn new(tag: &str) -> TestNetns {
        let name = format!("ltegress-{tag}-{}", std::process::id());
        let ip = |args: &[&str]| {
            assert!(std::process::Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}")
        };
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        TestNetns(name)
    }
    fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(&self.0)
    }
    /// Runs `f` on a thread inside the namespace (sockets it makes stay there).
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = std::fs::File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
    fn cookie(&self) -> u64 {
        self.inside(|| loom_egress::current_netns_cookie().unwrap())
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

/// How loomd runs it: attached once at the root of the hierarchy, weavers scoped by their
/// network namespace, every other socket of the host untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_namespace_is_default_deny_from_the_root_and_the_host_is_untouched() {
    if !privileged("netns_scope") {
        return;
    }
    let egress = Egress::load_with(EgressConfig { unscoped_allow: true, ..EgressConfig::default() }).expect("load");
    let mut rx = egress.take_events().unwrap();
    let root = loom_egress::cgroup2_mount().expect("a cgroup v2 mount");
    let _attached = egress.attach_everywhere(&root).expect("attach at the root");
    let ns = TestNetns::new("scope");
    let (allowed, denied) = ns.inside(|| (listen("127.0.0.2:0").1, listen("127.0.0.3:0").1));
    let scope = egress.register_netns(ns.cookie()).unwrap();
    assert_ne!(scope & loom_egress::NETNS_SCOPE, 0);
    egress.set_rules(scope, &rules(&[&format!("127.0.0.2:{}/tcp", allowed.port())])).unwrap();

    let mut probe = Probe::start_in_netns(&ns.path());
    assert!(matches!(probe.ask(&format!("tcp {allowed}")), Outcome::Ok(_)));
    assert_eq!(probe.errno(&format!("tcp {denied}")), Some(EPERM));
    let ev = deny_for(&mut rx, denied, Hook::Connect).await;
    assert_eq!(ev.scope, scope);
    assert_eq!(ev.reason, DenyReason::NoRule);

    // The host's own sockets (this test, in the host's namespace) are not a weaver's.
    let (_h, host_side) = listen("127.0.0.3:0");
    std::net::TcpStream::connect(host_side).expect("the host is unaffected");

    // A namespace released is not a weaver's any more.
    egress.forget(scope).unwrap();
    assert!(matches!(probe.ask(&format!("tcp {denied}")), Outcome::Ok(_)));
    assert_eq!(egress.kernel_entries(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attaching_at_the_root_needs_unscoped_allow() {
    if !privileged("root_attach_guard") {
        return;
    }
    let egress = Egress::load().expect("load");
    let root = loom_egress::cgroup2_mount().expect("a cgroup v2 mount");
    let e = egress.attach_everywhere(&root).unwrap_err().to_string();
    assert!(e.contains("would refuse every socket"), "{e}");
}
