//! Property tests of the egress rule parser: any string gives `Ok` or a clear `Err` (never a
//! panic), what is accepted prints back to the same rule, and names match as documented.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use loom_core::egress::{DomainRule, EgressRule, IpNet, NetRule, Protocol, domain_matches};
use proptest::prelude::*;
use proptest::sample::select;

use super::cases;

fn check(s: &str) {
    match s.parse::<EgressRule>() {
        Ok(r) => {
            let shown = r.to_string();
            assert_eq!(shown.parse::<EgressRule>().as_ref(), Ok(&r), "{s:?} → {shown:?}");
        }
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("write CIDR[:PORT] or DOMAIN[:PORT]"), "{s:?}: {m}");
            assert!(m.chars().count() < 1000, "{s:?}: message too long");
        }
    }
}

fn protocol() -> impl Strategy<Value = Option<Protocol>> {
    select(vec![None, Some(Protocol::Tcp), Some(Protocol::Udp)])
}

fn net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| {
            let m = if p == 0 { 0 } else { u32::MAX << (32 - u32::from(p)) };
            IpNet::new(IpAddr::V4(Ipv4Addr::from(a & m)), p).unwrap()
        }),
        (any::<u128>(), 0u8..=128).prop_map(|(a, p)| {
            let m = if p == 0 { 0 } else { u128::MAX << (128 - u32::from(p)) };
            let addr = IpAddr::V6(Ipv6Addr::from(a & m));
            // a mapped prefix becomes its IPv4 form, which is still a valid net
            IpNet::new(addr, p).unwrap_or_else(|| panic!("{addr}/{p}"))
        }),
    ]
}

fn rule() -> impl Strategy<Value = EgressRule> {
    prop_oneof![
        (net(), proptest::option::of(1u16..), protocol()).prop_map(|(net, port, protocol)| EgressRule::Net(NetRule {
            net,
            port,
            protocol
        })),
        (
            "[a-z0-9_]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?){0,3}\\.[a-z]{2,6}",
            proptest::option::of(1u16..),
            protocol()
        )
            .prop_map(|(domain, port, protocol)| EgressRule::Domain(DomainRule { domain, port, protocol })),
    ]
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn any_string_parses_or_says_why(s in ".{0,80}") {
        check(&s);
    }

    #[test]
    fn rule_shaped_strings_parse_or_say_why(s in "\\[?[0-9a-fA-F:.]{0,40}(/[0-9]{0,4})?\\]?(:[0-9]{0,6})?(/tcp|/udp)?") {
        check(&s);
    }

    #[test]
    fn every_rule_prints_as_text_that_parses_back_to_it(r in rule()) {
        let shown = r.to_string();
        prop_assert_eq!(shown.parse::<EgressRule>(), Ok(r), "{}", shown);
    }

    #[test]
    fn a_domain_rule_matches_names_under_it_in_any_case(label in "[a-z0-9]{1,10}", upper in any::<bool>(), dot in any::<bool>()) {
        let r: EgressRule = "example.com".parse().unwrap();
        let mut name = format!("{label}.example.com");
        if upper { name = name.to_uppercase(); }
        if dot { name.push('.'); }
        prop_assert!(domain_matches(&r, &name));
        let other = format!("{label}example.com");
        prop_assert!(!domain_matches(&r, &other));
    }
}

#[test]
fn overlong_input_is_refused_and_its_echo_is_cut() {
    let long = "a".repeat(100_000);
    let e = long.parse::<EgressRule>().unwrap_err();
    assert!(e.input.len() <= loom_core::egress::MAX_RULE_LEN);
    assert!(e.reason.contains("longer than"));
}
