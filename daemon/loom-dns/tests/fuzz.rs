//! Any bytes a weaver sends, through the whole handler (`Resolver::answer`) with a policy that
//! allows the name the mutated queries are made from and a fake upstream that answers it:
//! never a panic, and a reply, when there is one, is a DNS response with the query's id.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use loom_dns::{Limits, Resolver, Transport};
use proptest::prelude::*;
use simple_dns::{Packet, PacketFlag, TYPE};

struct World {
    rt: tokio::runtime::Runtime,
    resolver: Arc<Resolver>,
    upstream: FakeUpstream,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let upstream = rt.block_on(FakeUpstream::start(vec![(
            "www.example.test",
            answer(vec![("www.example.test", 60, Rr::A("192.0.2.1".parse().unwrap()))]),
        )]));
        let limits = Limits { upstream_timeout: Duration::from_millis(300), ..Limits::default() };
        let resolver = Arc::new(Resolver::new(policy(&["www.example.test"]), vec![upstream.addr], limits).unwrap());
        World { rt, resolver, upstream }
    })
}

fn check(bytes: &[u8], transport: Transport) {
    let w = world();
    let reply = w.rt.block_on(w.resolver.answer(WEAVER_A, bytes, transport));
    if let Some(reply) = reply {
        let p = Packet::parse(&reply).expect("every reply parses");
        assert_eq!(p.id().to_be_bytes(), bytes[..2]);
        assert!(p.has_flags(PacketFlag::RESPONSE));
        if transport == Transport::Udp {
            assert!(reply.len() <= 1232);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_never_panic_the_handler(bytes in proptest::collection::vec(any::<u8>(), 0..700), tcp in any::<bool>()) {
        check(&bytes, if tcp { Transport::Tcp } else { Transport::Udp });
    }

    #[test]
    fn an_allowed_query_with_bytes_flipped(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                                           qtype in prop_oneof![Just(TYPE::A), Just(TYPE::AAAA)]) {
        let mut bytes = query(0x7777, "www.example.test", qtype, Some(1232));
        for (at, b) in flips {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        check(&bytes, Transport::Udp);
    }
}

/// The handler the properties drive does reach the upstream for the unmutated query.
#[test]
fn the_unmutated_query_is_answered() {
    let w = world();
    let reply =
        w.rt.block_on(w.resolver.answer(WEAVER_A, &query(1, "www.example.test", TYPE::A, None), Transport::Udp));
    assert_eq!(addrs_of(&reply.unwrap()), vec![("192.0.2.1".parse().unwrap(), 60)]);
    assert!(w.upstream.seen_names().iter().all(|n| n == "www.example.test"), "only the allowed name leaves");
}
