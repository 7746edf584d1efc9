//! The operator tunnel on real network namespaces with real wireguard-go at both ends: a peer
//! reaches a weaver's service through the tunnel, and cannot once its peer entry or the
//! tunnel is gone. Needs root; skips loudly without it unless LOOM_REQUIRE_PRIVILEGED=1.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{HOST_PUBLIC, Lab, WEAVER_SUBNET, in_netns, ip, pid_running, privileged};
use loom_wireguard::{ActiveBackend, BackendChoice, PeerSource, Tunnel, TunnelSpec, WgError, WireguardConfig};

const REFUSED_WITHIN: Duration = Duration::from_secs(2);
const REACHED_WITHIN: Duration = Duration::from_secs(5);

fn spec(lab: &Lab, extra_peers: &str) -> TunnelSpec {
    let text = format!(
        "enable = true\ninterface = \"{}\"\nlisten_port = 51820\naddress = \"10.88.0.1/24\"\n\
         endpoint = \"{HOST_PUBLIC}:51820\"\nrouted_subnets = [\"{WEAVER_SUBNET}\"]\n\
         backend = \"auto\"\nwireguard_go = \"/usr/bin/wireguard-go\"\n{extra_peers}",
        lab.wg_host
    );
    let cfg: WireguardConfig = toml::from_str(&text).unwrap();
    cfg.validate().unwrap().unwrap()
}

fn up(lab: &Lab, spec: &TunnelSpec, backend: BackendChoice) -> Result<Tunnel, WgError> {
    let state = lab.state.path().join("wireguard");
    let tunnel = in_netns(&lab.host, || Tunnel::up(spec, &state, backend))?;
    if let Some(pid) = tunnel.userspace_pid() {
        lab.tunnel_pids.lock().unwrap().push(pid);
    }
    Ok(tunnel)
}

fn kernel_has_wireguard() -> bool {
    Path::new("/sys/module/wireguard").exists()
}

#[test]
fn a_peer_reaches_a_weaver_only_through_the_tunnel() {
    if !privileged("a_peer_reaches_a_weaver_only_through_the_tunnel") {
        return;
    }
    let mut lab = Lab::new(1);
    lab.serve_echo();
    lab.peer_reaches_weaver(REFUSED_WITHIN).expect_err("no tunnel yet: the weaver subnet is not reachable");

    let spec = spec(&lab, "");
    let tunnel = up(&lab, &spec, BackendChoice::Auto).unwrap();
    if !kernel_has_wireguard() {
        assert_eq!(tunnel.backend(), ActiveBackend::Userspace, "no kernel module here: wireguard-go carries it");
        assert!(tunnel.userspace_pid().is_some());
    }
    let routes = ip(&["-n", &lab.host, "-4", "route", "show", "dev", &lab.wg_host]);
    assert!(routes.contains("10.88.0.0/24"), "the tunnel network is routed through {}: {routes}", lab.wg_host);
    let addrs = ip(&["-n", &lab.host, "-4", "-o", "address", "show", "dev", &lab.wg_host]);
    assert!(addrs.contains("inet 10.88.0.1/24"), "{addrs}");

    let alice = tunnel.add_peer("alice").unwrap();
    assert_eq!(alice.address.to_string(), "10.88.0.2");
    let text = alice.client_config.text();
    assert!(text.contains(&format!("PublicKey = {}", tunnel.public_key())), "{text}");
    assert!(text.contains("AllowedIPs = 10.88.0.1/32, 10.87.0.0/16"), "{text}");
    assert!(!alice.qr_terminal().unwrap().is_empty());
    lab.start_peer(text);
    let took = lab.peer_reaches_weaver(REACHED_WITHIN).expect("through the tunnel the weaver answers");
    eprintln!("first connect through the tunnel (handshake included): {took:?}");
    let took = lab.peer_reaches_weaver(REACHED_WITHIN).unwrap();
    eprintln!("second connect through the tunnel: {took:?}");

    let peers = tunnel.list_peers().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].name, "alice");
    assert_eq!(peers[0].source, PeerSource::Added);
    assert!(peers[0].last_handshake.is_some(), "a handshake happened: {peers:?}");
    assert!(peers[0].rx_bytes > 0 && peers[0].tx_bytes > 0, "{peers:?}");
    assert!(peers[0].endpoint.is_some_and(|e| e.ip().to_string() == "10.250.0.2"), "{peers:?}");

    assert!(matches!(tunnel.add_peer("alice"), Err(WgError::PeerExists(_))));
    assert!(matches!(tunnel.remove_peer("nobody"), Err(WgError::UnknownPeer(_))));
    assert!(matches!(tunnel.add_peer("-bad"), Err(WgError::Config(_))));

    tunnel.remove_peer("alice").unwrap();
    assert!(tunnel.list_peers().unwrap().is_empty());
    lab.peer_reaches_weaver(REFUSED_WITHIN).expect_err("a removed peer no longer gets through");

    // Its address is free again; a new peer with a new key gets in.
    let bob = tunnel.add_peer("bob").unwrap();
    assert_eq!(bob.address.to_string(), "10.88.0.2");
    assert_ne!(bob.public_key, alice.public_key);
    lab.start_peer(bob.client_config.text());
    lab.peer_reaches_weaver(REACHED_WITHIN).expect("bob gets through");

    let pid = tunnel.userspace_pid();
    in_netns(&lab.host, || tunnel.down()).unwrap();
    assert!(!lab.host_links().contains(&lab.wg_host), "down removes the interface: {}", lab.host_links());
    if let Some(pid) = pid {
        assert!(!pid_running(pid), "down stops wireguard-go");
    }
    assert!(matches!(tunnel.add_peer("carol"), Err(WgError::Down(_))));
    lab.peer_reaches_weaver(REFUSED_WITHIN).expect_err("with the tunnel down the weaver is out of reach");
}

#[test]
fn a_restarted_loomd_takes_over_the_interface_with_its_peers() {
    if !privileged("a_restarted_loomd_takes_over_the_interface_with_its_peers") {
        return;
    }
    let mut lab = Lab::new(2);
    lab.serve_echo();
    let carol_key = loom_wireguard::PrivateKey::generate().public_key();
    let static_peer = format!("[[peers]]\nname = \"carol\"\npublic_key = \"{carol_key}\"\naddress = \"10.88.0.2\"\n");
    let spec = spec(&lab, &static_peer);
    let first = up(&lab, &spec, BackendChoice::Userspace).unwrap();
    assert_eq!(first.backend(), ActiveBackend::Userspace);
    let wireguard_go = first.userspace_pid().expect("this process started wireguard-go");
    let dave = first.add_peer("dave").unwrap();
    assert_eq!(dave.address.to_string(), "10.88.0.3", "carol's configured address is taken");
    lab.start_peer(dave.client_config.text());
    lab.peer_reaches_weaver(REACHED_WITHIN).expect("dave gets through");
    let host_key = first.public_key();
    // A crash: nothing is torn down.
    drop(first);
    assert!(pid_running(wireguard_go), "wireguard-go outlives the loomd that started it");

    let second = up(&lab, &spec, BackendChoice::Auto).unwrap();
    assert_eq!(second.backend(), ActiveBackend::Userspace, "the running wireguard-go is taken over");
    assert_eq!(second.userspace_pid(), None, "no second wireguard-go");
    assert!(pid_running(wireguard_go));
    assert_eq!(second.public_key(), host_key, "the generated host key is kept in the state dir");
    let links = lab.host_links();
    assert_eq!(links.matches(&format!(": {}:", lab.wg_host)).count(), 1, "one interface, not two: {links}");
    let names: Vec<(String, PeerSource)> =
        second.list_peers().unwrap().into_iter().map(|p| (p.name, p.source)).collect();
    assert_eq!(names, vec![("carol".into(), PeerSource::Config), ("dave".into(), PeerSource::Added)]);
    assert!(matches!(second.remove_peer("carol"), Err(WgError::ConfiguredPeer(_))));
    lab.peer_reaches_weaver(REACHED_WITHIN).expect("dave still gets through after the restart");

    in_netns(&lab.host, || second.down()).unwrap();
    assert!(!lab.host_links().contains(&lab.wg_host));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while pid_running(wireguard_go) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pid_running(wireguard_go), "the taken-over wireguard-go exits when its interface goes");
    lab.peer_reaches_weaver(REFUSED_WITHIN).expect_err("down means out of reach");
}

#[test]
fn a_foreign_interface_or_a_missing_kernel_module_is_a_clear_error() {
    if !privileged("a_foreign_interface_or_a_missing_kernel_module_is_a_clear_error") {
        return;
    }
    let lab = Lab::new(3);
    let spec = spec(&lab, "");
    ip(&["-n", &lab.host, "link", "add", &lab.wg_host, "type", "bridge"]);
    let e = up(&lab, &spec, BackendChoice::Auto).unwrap_err();
    assert!(matches!(e, WgError::NotWireguard(_)), "{e}");
    assert!(e.to_string().contains("not a WireGuard interface"), "{e}");
    ip(&["-n", &lab.host, "link", "del", &lab.wg_host]);

    match up(&lab, &spec, BackendChoice::Kernel) {
        Err(e) => {
            assert!(!kernel_has_wireguard(), "the module is loaded, yet: {e}");
            assert!(matches!(e, WgError::KernelUnavailable(_)), "{e}");
            assert!(e.to_string().contains("backend = \"userspace\""), "{e}");
            assert!(!lab.host_links().contains(&lab.wg_host), "nothing is left behind");
        }
        Ok(t) => {
            assert_eq!(t.backend(), ActiveBackend::Kernel);
            in_netns(&lab.host, || t.down()).unwrap();
        }
    }
}

#[test]
fn a_wireguard_go_that_died_is_replaced_on_the_next_start() {
    if !privileged("a_wireguard_go_that_died_is_replaced_on_the_next_start") {
        return;
    }
    let lab = Lab::new(4);
    // The operator's own key file and a state dir that does not exist yet.
    let key_file = lab.state.path().join("host.key");
    std::fs::write(&key_file, "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n").unwrap();
    std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut spec = spec(&lab, "");
    spec.private_key_file = Some(key_file);
    let first = up(&lab, &spec, BackendChoice::Userspace).unwrap();
    assert_eq!(first.public_key().to_string(), "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=");
    let erin = first.add_peer("erin").unwrap();
    let old = first.userspace_pid().unwrap();
    // Killed outright: its TUN device goes with it, its socket file stays behind.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(old as i32), None);
    assert!(matches!(first.add_peer("frank"), Err(WgError::InterfaceGone(_))), "a dead wireguard-go is reported");
    drop(first);

    let second = up(&lab, &spec, BackendChoice::Auto).unwrap();
    let new = second.userspace_pid().expect("a new wireguard-go");
    assert_ne!(new, old);
    let peers = second.list_peers().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(
        (peers[0].name.as_str(), peers[0].public_key),
        ("erin", erin.public_key),
        "erin is back from the state dir"
    );
    let links = lab.host_links();
    assert_eq!(links.matches(&format!(": {}:", lab.wg_host)).count(), 1, "{links}");
    in_netns(&lab.host, || second.down()).unwrap();
    assert!(!pid_running(new));
}
