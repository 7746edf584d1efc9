use super::*;

const KEY_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const KEY_B: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

fn parse(toml_text: &str) -> Result<Option<TunnelSpec>, ConfigError> {
    let cfg: WireguardConfig = toml::from_str(toml_text).expect("toml");
    cfg.validate()
}

fn valid() -> String {
    "enable = true\nendpoint = \"host.example:51820\"\nrouted_subnets = [\"10.87.0.0/16\"]\n".to_string()
}

fn error_of(extra: &str) -> ConfigError {
    parse(&format!("{}{extra}", valid())).expect_err("must be refused")
}

#[test]
fn defaults_validate_into_a_spec() {
    let spec = parse(&valid()).unwrap().unwrap();
    assert_eq!(spec.interface, "loomwg0");
    assert_eq!(spec.listen_port, 51820);
    assert_eq!(spec.address, "10.88.0.1/24".parse::<Ipv4Net>().unwrap());
    assert_eq!(spec.routed_subnets, vec!["10.87.0.0/16".parse::<Ipv4Net>().unwrap()]);
    assert_eq!(spec.persistent_keepalive, 25);
    assert_eq!(spec.backend, BackendChoice::Auto);
    assert!(spec.peers.is_empty());
}

#[test]
fn disabled_is_not_checked() {
    assert_eq!(parse("address = \"nonsense\"").unwrap(), None);
}

#[test]
fn a_full_section_with_peers() {
    let text = format!(
        "{}interface = \"wgops\"\nlisten_port = 4500\naddress = \"10.90.3.1/28\"\nbackend = \"userspace\"\n\
         private_key_file = \"/etc/loom/wg.key\"\npersistent_keepalive = 0\n\
         [[peers]]\nname = \"alice\"\npublic_key = \"{KEY_A}\"\naddress = \"10.90.3.2\"\n\
         [[peers]]\nname = \"bob.laptop\"\npublic_key = \"{KEY_B}\"\naddress = \"10.90.3.14/32\"\n",
        valid()
    );
    let spec = parse(&text).unwrap().unwrap();
    assert_eq!(spec.interface, "wgops");
    assert_eq!(spec.backend, BackendChoice::Userspace);
    assert_eq!(spec.peers.len(), 2);
    assert_eq!(spec.peers[1].address, Ipv4Addr::new(10, 90, 3, 14));
    assert_eq!(spec.peers[0].public_key.to_string(), KEY_A);
}

#[test]
fn unknown_keys_are_refused() {
    let cfg: Result<WireguardConfig, _> = toml::from_str("enable = true\nlisten_prot = 1");
    assert!(cfg.unwrap_err().to_string().contains("listen_prot"));
}

#[test]
fn each_bad_field_is_named() {
    let cases: &[(&str, &str, &str)] = &[
        ("interface = \"\"", "interface", "not an interface name"),
        ("interface = \"a-very-long-interface\"", "interface", "1 to 15"),
        ("interface = \"-x\"", "interface", "starting with a letter"),
        ("interface = \"wg/0\"", "interface", "not an interface name"),
        ("listen_port = 0", "listen_port", "not a port"),
        ("address = \"10.88.0.1\"", "address", "with a prefix"),
        ("address = \"10.88.0.0/24\"", "address", "first address"),
        ("address = \"10.88.0.255/24\"", "address", "broadcast"),
        ("address = \"10.88.0.1/31\"", "address", "between 8 and 30"),
        ("address = \"fd00::1/64\"", "address", "IPv4"),
        ("private_key_file = \"wg.key\"", "private_key_file", "absolute"),
        ("wireguard_go = \"wireguard-go\"", "wireguard_go", "absolute"),
        ("ip_command = \"ip\"", "ip_command", "absolute"),
    ];
    for (extra, field, words) in cases {
        let e = error_of(&format!("{extra}\n"));
        assert_eq!(e.field, *field, "{extra}: {e}");
        assert!(e.to_string().contains(words), "{extra}: {e}");
        assert!(e.to_string().starts_with(&format!("wireguard.{field}: ")), "{e}");
    }
}

#[test]
fn endpoint_is_required_and_checked() {
    let e = parse("enable = true").unwrap_err();
    assert_eq!(e.field, "endpoint");
    assert!(e.message.contains("missing"), "{e}");
    for good in ["host.example:51820", "10.0.0.1:1", "[2001:db8::1]:51820", "vpn:65535"] {
        assert_eq!(validate_endpoint(good), Ok(()), "{good}");
    }
    for (bad, words) in [
        ("host.example", "no port"),
        ("host.example:0", "not a port"),
        ("host.example:70000", "not a port"),
        ("2001:db8::1:51820", "brackets"),
        ("[nonsense]:51820", "not an IPv6"),
        ("bad_host:51820", "not a host name"),
        (":51820", "not a host name"),
        ("-a.example:51820", "not a host name"),
    ] {
        let e = validate_endpoint(bad).unwrap_err();
        assert!(e.contains(words), "{bad}: {e}");
    }
}

#[test]
fn routed_subnets_are_normalised_and_kept_apart() {
    let spec = parse("enable = true\nendpoint = \"h:1\"\nrouted_subnets = [\"10.87.3.4/16\"]").unwrap().unwrap();
    assert_eq!(spec.routed_subnets[0].to_string(), "10.87.0.0/16");
    let e = parse("enable = true\nendpoint = \"h:1\"\nrouted_subnets = [\"10.0.0.0/8\"]").unwrap_err();
    assert_eq!(e.field, "routed_subnets[0]");
    assert!(e.message.contains("overlaps the tunnel"), "{e}");
    let e =
        parse("enable = true\nendpoint = \"h:1\"\nrouted_subnets = [\"10.87.0.0/16\", \"10.87.4.0/24\"]").unwrap_err();
    assert_eq!(e.field, "routed_subnets[1]");
    let e = parse("enable = true\nendpoint = \"h:1\"\nrouted_subnets = [\"10.87.0.0\"]").unwrap_err();
    assert!(e.message.contains("not an IPv4 network"), "{e}");
}

fn peer(name: &str, key: &str, address: &str) -> String {
    format!("[[peers]]\nname = \"{name}\"\npublic_key = \"{key}\"\naddress = \"{address}\"\n")
}

#[test]
fn peers_are_checked_one_by_one_and_against_each_other() {
    let cases: Vec<(String, &str, &str)> = vec![
        (peer("", KEY_A, "10.88.0.2"), "peers[0].name", "not a peer name"),
        (peer("a b", KEY_A, "10.88.0.2"), "peers[0].name", "not a peer name"),
        (peer("alice", "shortkey", "10.88.0.2"), "peers[0].public_key", "44 characters"),
        (peer("alice", KEY_A, "10.89.0.2"), "peers[0].address", "outside the tunnel network"),
        (peer("alice", KEY_A, "10.88.0.1"), "peers[0].address", "host's own"),
        (peer("alice", KEY_A, "10.88.0.255"), "peers[0].address", "broadcast"),
        (peer("alice", KEY_A, "10.88.0.0"), "peers[0].address", "network or broadcast"),
        (peer("alice", KEY_A, "10.88.0.2/24"), "peers[0].address", "not an IPv4 address"),
        (peer("alice", KEY_A, "10.88.0.2") + &peer("alice", KEY_B, "10.88.0.3"), "peers[1]", "named \"alice\""),
        (peer("alice", KEY_A, "10.88.0.2") + &peer("bob", KEY_A, "10.88.0.3"), "peers[1]", "same public key"),
        (peer("alice", KEY_A, "10.88.0.2") + &peer("bob", KEY_B, "10.88.0.2"), "peers[1]", "same address"),
    ];
    for (extra, field, words) in cases {
        let e = error_of(&extra);
        assert_eq!(e.field, field, "{extra}: {e}");
        assert!(e.message.contains(words), "{extra}: {e}");
    }
}

#[test]
fn allocation_takes_the_lowest_free_host_address() {
    let host: Ipv4Net = "10.88.0.1/24".parse().unwrap();
    let mut taken = BTreeSet::from([host.addr()]);
    assert_eq!(next_free_address(host, &taken), Ok(Ipv4Addr::new(10, 88, 0, 2)));
    taken.extend([Ipv4Addr::new(10, 88, 0, 2), Ipv4Addr::new(10, 88, 0, 4)]);
    assert_eq!(next_free_address(host, &taken), Ok(Ipv4Addr::new(10, 88, 0, 3)));
    // The host in the middle of the range is skipped even when the caller forgot it.
    let mid: Ipv4Net = "10.88.0.2/30".parse().unwrap();
    assert_eq!(next_free_address(mid, &BTreeSet::new()), Ok(Ipv4Addr::new(10, 88, 0, 1)));
    assert_eq!(
        next_free_address(mid, &BTreeSet::from([Ipv4Addr::new(10, 88, 0, 1)])),
        Err(AllocError::Exhausted { network: "10.88.0.0/30".parse().unwrap(), peers: 1 })
    );
}

#[test]
fn exhaustion_is_a_clear_error() {
    let host: Ipv4Net = "10.88.0.1/29".parse().unwrap();
    let mut taken = BTreeSet::from([host.addr()]);
    // A /29 has six host addresses: the host's and five peers'.
    for _ in 0..5 {
        let a = next_free_address(host, &taken).unwrap();
        assert!(host.trunc().contains(&a) && a != host.addr() && a != host.trunc().broadcast());
        assert!(taken.insert(a));
    }
    let e = next_free_address(host, &taken).unwrap_err();
    assert_eq!(e, AllocError::Exhausted { network: "10.88.0.0/29".parse().unwrap(), peers: 5 });
    let text = e.to_string();
    assert!(text.contains("10.88.0.0/29") && text.contains("5 peers") && text.contains("shorter prefix"), "{text}");
}
