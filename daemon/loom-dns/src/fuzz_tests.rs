//! Property tests of the two parsers of untrusted bytes: a weaver's question (`inspect`) and
//! an upstream's answer (`read_upstream`). Any input gives an answer or a clear refusal, never
//! a panic, and what is accepted stays within what the rest of the resolver relies on.

use std::time::Duration;

use proptest::prelude::*;
use simple_dns::rdata::{A, CNAME, RData};
use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, ResourceRecord, TYPE};

use crate::message::{CLASSIC_UDP_SIZE, Inspected, Query, inspect};

const MIN: Duration = Duration::from_secs(5);
const MAX: Duration = Duration::from_secs(3600);

fn a_query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut p = Packet::new_query(0x4242);
    p.set_flags(PacketFlag::RECURSION_DESIRED);
    let qtype = QTYPE::try_from(qtype).unwrap_or(QTYPE::TYPE(TYPE::A));
    p.questions.push(Question::new(Name::new_unchecked(name), qtype, QCLASS::CLASS(CLASS::IN), false));
    if let Some(size) = edns {
        *p.opt_mut() = Some(simple_dns::rdata::OPT { opt_codes: vec![], udp_packet_size: size, version: 0 });
    }
    p.build_bytes_vec().unwrap_or_default()
}

fn asked(name: &str) -> Query {
    match inspect(&a_query(name, 1, None)) {
        Inspected::Ask(q) => q,
        other => panic!("{name} should be asked, got {other:?}"),
    }
}

/// A real answer for `name`, to be mutated.
fn an_answer(name: &str, id: u16) -> Vec<u8> {
    let mut p = Packet::new_reply(id);
    p.questions.push(Question::new(Name::new_unchecked(name), QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN), false));
    p.answers.push(ResourceRecord::new(
        Name::new_unchecked(name),
        CLASS::IN,
        0,
        RData::CNAME(CNAME(Name::new_unchecked("edge.cdn.test"))),
    ));
    for i in 1..=4u8 {
        p.answers.push(ResourceRecord::new(
            Name::new_unchecked("edge.cdn.test"),
            CLASS::IN,
            u32::from(i) * 1000,
            RData::A(A::from(std::net::Ipv4Addr::new(192, 0, 2, i))),
        ));
    }
    p.build_bytes_vec_compressed().unwrap()
}

fn check_inspected(bytes: &[u8]) {
    match inspect(bytes) {
        Inspected::Drop => {}
        Inspected::Reply(r) => {
            let p = Packet::parse(&r).expect("our replies parse");
            assert_eq!(p.id().to_be_bytes(), bytes[..2], "a reply carries the query's id");
            assert!(p.has_flags(PacketFlag::RESPONSE));
            assert!(r.len() <= CLASSIC_UDP_SIZE, "an error reply fits any client");
        }
        Inspected::Ask(q) => {
            assert!(!q.name.is_empty() && q.name.len() <= 253, "{:?}", q.name);
            assert!(
                q.name.split('.').all(|l| !l.is_empty()
                    && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')),
                "the policy sees plain lower-case labels: {:?}",
                q.name
            );
            let sent = q.upstream_query(1);
            let up = Packet::parse(&sent).expect("our upstream query parses");
            assert_eq!(up.questions.len(), 1);
            assert!(up.answers.is_empty() && up.name_servers.is_empty() && up.additional_records.is_empty());
        }
    }
}

proptest! {
    #[test]
    fn any_bytes_as_a_question(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check_inspected(&bytes);
    }

    #[test]
    fn any_name_and_type(labels in proptest::collection::vec("[a-zA-Z0-9._\\-\\\\ ]{0,70}", 0..6),
                         qtype in any::<u16>(), edns in proptest::option::of(any::<u16>())) {
        let name = labels.join(".");
        let bytes = a_query(&name, qtype, edns);
        check_inspected(&bytes);
    }

    #[test]
    fn a_question_with_bytes_flipped(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = a_query("www.example.test", 28, Some(1232));
        for (at, b) in flips {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        check_inspected(&bytes);
    }

    #[test]
    fn any_bytes_from_the_upstream(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let q = asked("www.example.test");
        if let Ok(answer) = q.read_upstream(&bytes, 0x1234, MIN, MAX) {
            let (reply, _) = q.reply_answer(&answer, Some(1232));
            Packet::parse(&reply).expect("our reply parses");
        }
    }

    #[test]
    fn an_upstream_answer_with_bytes_flipped(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                                             limit in 0usize..4096) {
        let q = asked("www.example.test");
        let mut bytes = an_answer("www.example.test", 0x1234);
        for (at, b) in flips {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        if let Ok(answer) = q.read_upstream(&bytes, 0x1234, MIN, MAX) {
            if let Some(ttl) = answer.ttl {
                prop_assert!((MIN..=MAX).contains(&ttl), "{ttl:?}");
                prop_assert!(!answer.addrs.is_empty());
            } else {
                prop_assert!(answer.addrs.is_empty());
            }
            let (reply, truncated) = q.reply_answer(&answer, Some(limit));
            let p = Packet::parse(&reply).expect("our reply parses");
            // It fits, or it was cut to the question and fits then.
            prop_assert!(reply.len() <= q.udp_size(limit), "{} > {} (cut: {truncated})", reply.len(), q.udp_size(limit));
            if let Some(ttl) = answer.ttl {
                prop_assert!(p.answers.iter().all(|rr| u64::from(rr.ttl) <= ttl.as_secs()));
            }
        }
    }
}

#[test]
fn the_unmutated_answer_admits_the_chain_end() {
    let q = asked("www.example.test");
    let answer = q.read_upstream(&an_answer("www.example.test", 9), 9, MIN, MAX).unwrap();
    assert_eq!(answer.addrs.len(), 4);
    // CNAME TTL 0 is the least on the chain: clamped up to the minimum.
    assert_eq!(answer.ttl, Some(MIN));
    assert_eq!(
        q.read_upstream(&an_answer("www.example.test", 9), 10, MIN, MAX).unwrap_err(),
        crate::message::UpstreamError::Mismatch
    );
    assert_eq!(
        q.read_upstream(&an_answer("other.test", 9), 9, MIN, MAX).unwrap_err(),
        crate::message::UpstreamError::Mismatch
    );
}
