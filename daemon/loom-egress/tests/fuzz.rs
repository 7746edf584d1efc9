//! Property tests of what user space reads from or writes for the kernel: any record decodes
//! to `Ok` or an `Err`, never a panic, and rule keys keep the scope and the prefix bounds the
//! program relies on.

use loom_core::egress::{IpNet, NetRule, Protocol};
use loom_egress::layout::{self, EVENT_LEN, FIXED_BITS, KEY_DATA_LEN};
use proptest::prelude::*;

fn cases(n: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn any_record_decodes_or_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2 * EVENT_LEN)) {
        if let Ok(ev) = layout::decode(&bytes) {
            prop_assert_eq!(bytes.len(), EVENT_LEN);
            prop_assert!(ev.comm.len() <= 16 * 3, "lossy comm stays short");
        }
    }

    #[test]
    fn well_formed_records_keep_their_fields(
        scope in any::<u64>(), pid in any::<u32>(), port in any::<u16>(), v4 in any::<bool>(),
        addr in any::<[u8; 16]>(), hook in 1u8..=2, reason in 1u8..=4,
    ) {
        let mut b = [0u8; EVENT_LEN];
        b[8..16].copy_from_slice(&scope.to_ne_bytes());
        b[24..28].copy_from_slice(&pid.to_ne_bytes());
        b[32..48].copy_from_slice(&addr);
        b[48..50].copy_from_slice(&port.to_ne_bytes());
        (b[50], b[51], b[52], b[53]) = (if v4 { 2 } else { 10 }, 6, hook, reason);
        let ev = layout::decode(&b).unwrap();
        prop_assert_eq!((ev.scope, ev.pid, ev.destination.port()), (scope, pid, port));
        prop_assert_eq!(ev.destination.is_ipv4(), v4);
    }

    #[test]
    fn rule_keys_carry_the_scope_and_stay_within_the_key(
        scope in any::<u64>(), a in any::<u128>(), prefix in 0u8..=128, port in proptest::option::of(1u16..),
        tcp in proptest::option::of(any::<bool>()),
    ) {
        let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
        let Some(net) = IpNet::new(std::net::Ipv6Addr::from(a & m).into(), prefix) else {
            return Err(TestCaseError::fail("masked prefix refused"));
        };
        let protocol = tcp.map(|t| if t { Protocol::Tcp } else { Protocol::Udp });
        let rule = NetRule { net, port, protocol };
        let entries: Vec<_> = layout::static_entries(scope, &rule).collect();
        prop_assert_eq!(entries.len(), if protocol.is_some() { 1 } else { 2 });
        for (k, v) in entries {
            prop_assert_eq!(k.scope(), scope);
            prop_assert!(k.prefix_len >= FIXED_BITS && k.prefix_len <= (KEY_DATA_LEN as u32) * 8);
            prop_assert_eq!(v.expires_ns, 0);
            prop_assert_eq!(k.data[10..12].try_into().map(u16::from_be_bytes).unwrap(), port.unwrap_or(0));
        }
    }
}
