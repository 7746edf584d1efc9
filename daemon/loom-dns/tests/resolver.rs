//! The resolver on loopback against a fake upstream (real DNS wire format, built with
//! simple_dns); questions from clients bound to 127.0.0.2 (weaver-a), 127.0.0.3 (weaver-b)
//! and 127.0.0.9 (no weaver). No root needed.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use common::*;
use loom_dns::Limits;
use simple_dns::{Packet, PacketFlag, RCODE, TYPE};

const WAIT: Duration = Duration::from_secs(3);

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
}

#[tokio::test]
async fn allowed_name_is_answered_and_admitted_with_a_clamped_ttl() {
    let up = FakeUpstream::start(vec![
        ("zero.test", answer(vec![("zero.test", 0, Rr::A("192.0.2.1".parse().unwrap()))])),
        (
            "long.test",
            answer(vec![
                ("long.test", 86400, Rr::A("192.0.2.2".parse().unwrap())),
                ("long.test", 90000, Rr::A("192.0.2.3".parse().unwrap())),
            ]),
        ),
        ("mid.test", answer(vec![("mid.test", 120, Rr::A("192.0.2.4".parse().unwrap()))])),
    ])
    .await;
    let policy = policy(&["zero.test", "long.test", "mid.test"]);
    let dns = start_resolver(policy.clone(), vec![up.addr], Limits::default()).await;

    let reply = ask_udp(WEAVER_A, dns.addr, &query(7, "zero.test", TYPE::A, None), WAIT).await.unwrap();
    let p = Packet::parse(&reply).unwrap();
    assert_eq!((p.id(), p.rcode()), (7, RCODE::NoError));
    assert!(p.has_flags(PacketFlag::RESPONSE | PacketFlag::RECURSION_AVAILABLE));
    // The weaver keeps the upstream's 0: it must not cache; the admission still lasts 5 s.
    assert_eq!(addrs_of(&reply), vec![(v4("192.0.2.1"), 0)]);

    // Mixed case as a 0x20 stub sends it: the policy sees lower case, the reply echoes the case.
    let reply = ask_udp(WEAVER_B, dns.addr, &query(8, "LoNg.TeSt", TYPE::A, Some(1232)), WAIT).await.unwrap();
    assert_eq!(Packet::parse(&reply).unwrap().questions[0].qname.to_string(), "LoNg.TeSt");
    // Capped at ttl_max, so the weaver never trusts an address longer than it is admitted.
    assert_eq!(addrs_of(&reply), vec![(v4("192.0.2.2"), 3600), (v4("192.0.2.3"), 3600)]);

    let reply = ask_udp(WEAVER_A, dns.addr, &query(9, "mid.test", TYPE::A, None), WAIT).await.unwrap();
    assert_eq!(addrs_of(&reply), vec![(v4("192.0.2.4"), 120)]);

    let admitted = policy.admitted.lock().unwrap().clone();
    assert_eq!(
        admitted,
        vec![
            Admitted {
                client: "weaver-a".into(),
                name: "zero.test".into(),
                addrs: vec![v4("192.0.2.1")],
                ttl: Duration::from_secs(5)
            },
            Admitted {
                client: "weaver-b".into(),
                name: "long.test".into(),
                addrs: vec![v4("192.0.2.2"), v4("192.0.2.3")],
                ttl: Duration::from_secs(3600)
            },
            Admitted {
                client: "weaver-a".into(),
                name: "mid.test".into(),
                addrs: vec![v4("192.0.2.4")],
                ttl: Duration::from_secs(120)
            },
        ]
    );
    assert_eq!(up.seen_names(), ["zero.test", "long.test", "mid.test"]);
    assert_eq!(dns.resolver.clients_holding(), 0);
}

#[tokio::test]
async fn disallowed_and_unknown_are_refused_and_never_sent_upstream() {
    let up = FakeUpstream::start(vec![("ok.test", answer(vec![("ok.test", 60, Rr::A("192.0.2.9".parse().unwrap()))]))])
        .await;
    let policy = policy(&["ok.test"]);
    let dns = start_resolver(policy.clone(), vec![up.addr], Limits::default()).await;

    for (from, name) in [
        (WEAVER_A, "secret-data-aGVsbG8.evil.test"),
        (WEAVER_A, "ok.test.evil.test"),
        (WEAVER_B, "sub.ok.test"),
        (STRANGER, "ok.test"),
    ] {
        let reply = ask_udp(from, dns.addr, &query(1, name, TYPE::A, None), WAIT).await.unwrap();
        assert_eq!(rcode_of(&reply), RCODE::Refused, "{name} from {from}");
        assert!(addrs_of(&reply).is_empty());
        if from != STRANGER {
            let reply = ask_tcp(from, dns.addr, &query(2, name, TYPE::AAAA, None)).await;
            assert_eq!(rcode_of(&reply), RCODE::Refused, "{name} from {from} over TCP");
        }
    }
    // An address no weaver has gets its TCP connection closed: there is no client to count it on.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((STRANGER, 0).into()).unwrap();
    let mut s = sock.connect(dns.addr).await.unwrap();
    let _ = write_frame(&mut s, &query(2, "ok.test", TYPE::A, None)).await;
    assert!(tokio::time::timeout(WAIT, read_frame(&mut s)).await.unwrap().is_err());
    // Bytes no host name has are refused before the policy sees them (no escapes to get wrong).
    let mut odd = query(3, "okXtest", TYPE::A, None);
    let dot = odd.windows(7).position(|w| w == b"okXtest").unwrap() + 2;
    odd[dot] = b'.';
    let reply = ask_udp(WEAVER_A, dns.addr, &odd, WAIT).await.unwrap();
    assert_eq!(rcode_of(&reply), RCODE::Refused);

    assert!(up.seen_names().is_empty(), "the upstream saw {:?}", up.seen_names());
    assert!(policy.admitted.lock().unwrap().is_empty());
    let asked: Vec<String> = policy.asked.lock().unwrap().iter().map(|(_, n)| n.clone()).collect();
    assert!(!asked.contains(&"ok\\.test".to_string()) && !asked.iter().any(|n| n.contains("okXtest")));

    // The allowed name still resolves for a known weaver.
    let reply = ask_udp(WEAVER_B, dns.addr, &query(4, "ok.test", TYPE::A, None), WAIT).await.unwrap();
    assert_eq!(addrs_of(&reply), vec![(v4("192.0.2.9"), 60)]);
}

#[tokio::test]
async fn cname_chain_admits_the_addresses_at_its_end_only() {
    let up = FakeUpstream::start(vec![(
        "www.example.test",
        answer(vec![
            ("www.example.test", 300, Rr::Cname("edge.cdn.test".into())),
            ("edge.cdn.test", 30, Rr::Cname("pop7.cdn.test".into())),
            ("pop7.cdn.test", 600, Rr::A("198.51.100.7".parse().unwrap())),
            ("pop7.cdn.test", 600, Rr::A("198.51.100.8".parse().unwrap())),
            // Not on the chain: a poisoning attempt must not be admitted.
            ("other.test", 600, Rr::A("203.0.113.66".parse().unwrap())),
        ]),
    )])
    .await;
    let policy = policy(&["www.example.test"]);
    let dns = start_resolver(policy.clone(), vec![up.addr], Limits::default()).await;
    let reply = ask_udp(WEAVER_A, dns.addr, &query(5, "www.example.test", TYPE::A, None), WAIT).await.unwrap();
    let p = Packet::parse(&reply).unwrap();
    assert_eq!(p.answers.len(), 4, "two CNAMEs and two A records: {:?}", p.answers);
    assert_eq!(addrs_of(&reply), vec![(v4("198.51.100.7"), 30), (v4("198.51.100.8"), 30)]);
    let admitted = policy.admitted.lock().unwrap().clone();
    assert_eq!(admitted.len(), 1);
    assert_eq!(admitted[0].addrs, vec![v4("198.51.100.7"), v4("198.51.100.8")]);
    // The shortest TTL on the chain bounds the admission: after it the chain may point elsewhere.
    assert_eq!(admitted[0].ttl, Duration::from_secs(30));
}

#[tokio::test]
async fn aaaa_and_negative_answers() {
    let v6: Ipv6Addr = "2001:db8::42".parse().unwrap();
    let up = FakeUpstream::start(vec![
        ("six.test", answer(vec![("six.test", 100, Rr::Aaaa(v6))])),
        // An A record in an AAAA answer is not what was asked: neither shown nor admitted.
        ("mixed.test", answer(vec![("mixed.test", 100, Rr::A("192.0.2.5".parse().unwrap()))])),
    ])
    .await;
    let policy = policy(&["six.test", "mixed.test", "nowhere.test"]);
    let dns = start_resolver(policy.clone(), vec![up.addr], Limits::default()).await;
    let reply = ask_udp(WEAVER_A, dns.addr, &query(1, "six.test", TYPE::AAAA, None), WAIT).await.unwrap();
    assert_eq!(addrs_of(&reply), vec![(IpAddr::V6(v6), 100)]);
    let reply = ask_udp(WEAVER_A, dns.addr, &query(2, "mixed.test", TYPE::AAAA, None), WAIT).await.unwrap();
    assert_eq!((rcode_of(&reply), addrs_of(&reply)), (RCODE::NoError, vec![]));
    // The fake answers unknown names NXDOMAIN with an SOA: both reach the weaver.
    let reply = ask_udp(WEAVER_A, dns.addr, &query(3, "nowhere.test", TYPE::A, None), WAIT).await.unwrap();
    let p = Packet::parse(&reply).unwrap();
    assert_eq!(p.rcode(), RCODE::NameError);
    assert_eq!(p.name_servers.len(), 1);
    let admitted = policy.admitted.lock().unwrap().clone();
    assert_eq!(admitted.len(), 1, "{admitted:?}");
    assert_eq!((admitted[0].name.as_str(), admitted[0].addrs.clone()), ("six.test", vec![IpAddr::V6(v6)]));
}

#[tokio::test]
async fn other_query_types_are_not_implemented_and_not_sent_upstream() {
    let up = FakeUpstream::start(vec![]).await;
    let policy = policy(&["ok.test"]);
    let dns = start_resolver(policy.clone(), vec![up.addr], Limits::default()).await;
    for qtype in [TYPE::MX, TYPE::TXT, TYPE::PTR, TYPE::NS, TYPE::SRV, TYPE::HTTPS, TYPE::Unknown(65280)] {
        let reply = ask_udp(WEAVER_A, dns.addr, &query(1, "ok.test", qtype, None), WAIT).await.unwrap();
        assert_eq!(rcode_of(&reply), RCODE::NotImplemented, "{qtype:?}");
    }
    assert!(up.seen_names().is_empty());
}

fn many_addresses(n: u8) -> Vec<(&'static str, u32, Rr)> {
    (1..=n).map(|i| ("big.test", 60, Rr::A(Ipv4Addr::new(192, 0, 2, i)))).collect()
}

#[tokio::test]
async fn oversized_answer_sets_tc_and_the_tcp_retry_gets_it() {
    let up = FakeUpstream::start(vec![
        ("big.test", answer(many_addresses(60))),
        // The upstream itself truncates over UDP: the resolver must ask it again over TCP.
        (
            "cut.test",
            Script::TruncateUdp(Box::new(answer(vec![("cut.test", 60, Rr::A("192.0.2.77".parse().unwrap()))]))),
        ),
    ])
    .await;
    let policy = policy(&["big.test", "cut.test"]);
    let dns = start_resolver(policy.clone(), vec![up.addr], Limits::default()).await;

    // 60 A records are ~980 bytes: over the 512 of a client without EDNS.
    let reply = ask_udp(WEAVER_A, dns.addr, &query(1, "big.test", TYPE::A, None), WAIT).await.unwrap();
    let p = Packet::parse(&reply).unwrap();
    assert!(p.has_flags(PacketFlag::TRUNCATION) && p.answers.is_empty(), "{p:?}");
    assert!(reply.len() <= 512);
    assert!(policy.admitted.lock().unwrap().is_empty(), "a truncated reply carries no address to admit");
    // A client that advertises 1232 takes it over UDP.
    let reply = ask_udp(WEAVER_A, dns.addr, &query(2, "big.test", TYPE::A, Some(1232)), WAIT).await.unwrap();
    assert_eq!(addrs_of(&reply).len(), 60);
    // And TCP takes it whatever the size.
    let reply = ask_tcp(WEAVER_A, dns.addr, &query(3, "big.test", TYPE::A, None)).await;
    assert!(!Packet::parse(&reply).unwrap().has_flags(PacketFlag::TRUNCATION));
    assert_eq!(addrs_of(&reply).len(), 60);
    assert_eq!(policy.admitted.lock().unwrap().len(), 2);

    let reply = ask_udp(WEAVER_B, dns.addr, &query(4, "cut.test", TYPE::A, None), WAIT).await.unwrap();
    assert_eq!(addrs_of(&reply), vec![(v4("192.0.2.77"), 60)]);
    assert_eq!(up.seen.lock().unwrap().iter().filter(|(n, _, t)| n == "cut.test" && *t == "tcp").count(), 1);
}

#[tokio::test]
async fn garbage_is_dropped_or_formerr_and_the_resolver_keeps_serving() {
    let up = FakeUpstream::start(vec![("ok.test", answer(vec![("ok.test", 60, Rr::A("192.0.2.9".parse().unwrap()))]))])
        .await;
    let policy = policy(&["ok.test"]);
    let dns = start_resolver(policy.clone(), vec![up.addr], Limits::default()).await;

    // Too short for an id: no reply.
    for msg in [&b""[..], b"\x01", b"\x12\x34\x01"] {
        assert_eq!(ask_udp(WEAVER_A, dns.addr, msg, Duration::from_millis(200)).await, None, "{msg:?}");
    }
    // A header that promises a question that is not there: FORMERR with the id.
    let mut cut = query(0xbeef, "ok.test", TYPE::A, None);
    cut.truncate(15);
    let reply = ask_udp(WEAVER_A, dns.addr, &cut, WAIT).await.unwrap();
    let p = Packet::parse(&reply).unwrap();
    assert_eq!((p.id(), p.rcode()), (0xbeef, RCODE::FormatError));
    // Two questions in one message: FORMERR.
    let mut two = Packet::parse(&query(5, "ok.test", TYPE::A, None)).unwrap().into_owned_questions();
    two.questions.push(two.questions[0].clone());
    let reply = ask_udp(WEAVER_A, dns.addr, &two.build_bytes_vec().unwrap(), WAIT).await.unwrap();
    assert_eq!(rcode_of(&reply), RCODE::FormatError);
    // A response sent to the resolver is not answered (no loops between resolvers).
    let mut response = Packet::parse(&query(6, "ok.test", TYPE::A, None)).unwrap().into_owned_questions();
    response.set_flags(PacketFlag::RESPONSE);
    assert_eq!(
        ask_udp(WEAVER_A, dns.addr, &response.build_bytes_vec().unwrap(), Duration::from_millis(200)).await,
        None
    );
    // A compression pointer loop and random bytes: never a crash.
    let mut looped = query(7, "ok.test", TYPE::A, None);
    looped.truncate(12);
    looped.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    let reply = ask_udp(WEAVER_A, dns.addr, &looped, WAIT).await.unwrap();
    assert_eq!(rcode_of(&reply), RCODE::FormatError);
    let _ = ask_udp(WEAVER_A, dns.addr, &[0xff; 4000], Duration::from_millis(200)).await;
    // Garbage over TCP: a length prefix larger than what follows, then the connection ends.
    {
        let mut s = tokio::net::TcpStream::connect(dns.addr).await.unwrap();
        use tokio::io::AsyncWriteExt;
        s.write_all(&[0x01, 0x00, 0xde, 0xad]).await.unwrap();
    }

    assert!(up.seen_names().is_empty());
    let reply = ask_udp(WEAVER_A, dns.addr, &query(8, "ok.test", TYPE::A, None), WAIT).await.unwrap();
    assert_eq!(addrs_of(&reply), vec![(v4("192.0.2.9"), 60)]);
}

trait IntoOwnedQuestions {
    fn into_owned_questions(self) -> Packet<'static>;
}
impl IntoOwnedQuestions for Packet<'_> {
    fn into_owned_questions(self) -> Packet<'static> {
        let mut p = Packet::new_query(self.id());
        p.set_flags(PacketFlag::RECURSION_DESIRED);
        p.questions = self.questions.into_iter().map(|q| q.into_owned()).collect();
        p
    }
}

#[tokio::test]
async fn upstream_timeout_gives_servfail_within_the_timeout() {
    let up = FakeUpstream::start(vec![("slow.test", Script::Silent)]).await;
    let policy = policy(&["slow.test"]);
    let limits = Limits { upstream_timeout: Duration::from_millis(400), ..Limits::default() };
    let dns = start_resolver(policy.clone(), vec![up.addr], limits).await;
    let t = Instant::now();
    let reply = ask_udp(WEAVER_A, dns.addr, &query(1, "slow.test", TYPE::A, None), WAIT).await.unwrap();
    let took = t.elapsed();
    assert_eq!(rcode_of(&reply), RCODE::ServerFailure);
    assert!(took >= Duration::from_millis(380) && took < Duration::from_millis(900), "SERVFAIL after {took:?}");
    assert!(policy.admitted.lock().unwrap().is_empty());
    assert_eq!(dns.resolver.clients_holding(), 0);
}

#[tokio::test]
async fn a_dead_first_upstream_leaves_time_for_the_second() {
    let up = FakeUpstream::start(vec![("ok.test", answer(vec![("ok.test", 60, Rr::A("192.0.2.9".parse().unwrap()))]))])
        .await;
    // A silent first upstream (the datagram is swallowed) and then the real one.
    let black_hole = FakeUpstream::start(vec![("ok.test", Script::Silent)]).await;
    let limits = Limits { upstream_timeout: Duration::from_secs(1), ..Limits::default() };
    let dns = start_resolver(policy(&["ok.test"]), vec![black_hole.addr, up.addr], limits).await;
    let t = Instant::now();
    let reply = ask_udp(WEAVER_A, dns.addr, &query(1, "ok.test", TYPE::A, None), WAIT).await.unwrap();
    assert_eq!(addrs_of(&reply), vec![(v4("192.0.2.9"), 60)]);
    // The black hole had its half of the deadline, and the second upstream the rest.
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(480) && took < Duration::from_secs(1), "took {took:?}");
    assert_eq!((black_hole.seen_names().len(), up.seen_names().len()), (1, 1));
}

#[tokio::test]
async fn one_client_cannot_hold_more_than_its_in_flight_budget() {
    let slow = Script::Slow(
        Duration::from_millis(800),
        Box::new(answer(vec![("slow.test", 60, Rr::A("192.0.2.1".parse().unwrap()))])),
    );
    let up = FakeUpstream::start(vec![("slow.test", slow)]).await;
    let policy = policy(&["slow.test"]);
    let limits = Limits { max_in_flight_per_client: 3, ..Limits::default() };
    let dns = start_resolver(policy.clone(), vec![up.addr], limits).await;

    let t = Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for id in 0..10u16 {
        let addr = dns.addr;
        flood.spawn(async move {
            let r = ask_udp(WEAVER_A, addr, &query(id, "slow.test", TYPE::A, None), WAIT).await.unwrap();
            (rcode_of(&r), Instant::now())
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Weaver B is not starved by A's flood.
    let b = ask_udp(WEAVER_B, dns.addr, &query(99, "slow.test", TYPE::A, None), WAIT).await.unwrap();
    assert_eq!(rcode_of(&b), RCODE::NoError);
    let (mut answered, mut refused) = (vec![], vec![]);
    while let Some(r) = flood.join_next().await {
        match r.unwrap() {
            (RCODE::NoError, at) => answered.push(at),
            (RCODE::Refused, at) => refused.push(at),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((answered.len(), refused.len()), (3, 7));
    // A refusal over budget does not wait for a slot: every one came before the first answer.
    assert!(refused.iter().max() < answered.iter().min());
    assert!(*answered.iter().min().unwrap() - t >= Duration::from_millis(800));
    assert_eq!(up.seen_names().len(), 4, "3 of A's and 1 of B's reached the upstream");
    assert_eq!(dns.resolver.clients_holding(), 0, "every slot was given back");
    // With the budget free again, A is answered.
    let r = ask_udp(WEAVER_A, dns.addr, &query(100, "slow.test", TYPE::A, None), WAIT).await.unwrap();
    assert_eq!(rcode_of(&r), RCODE::NoError);
}

#[tokio::test]
async fn tcp_connections_per_client_are_bounded() {
    let up = FakeUpstream::start(vec![("ok.test", answer(vec![("ok.test", 60, Rr::A("192.0.2.9".parse().unwrap()))]))])
        .await;
    let limits = Limits { max_tcp_per_client: 2, ..Limits::default() };
    let dns = start_resolver(policy(&["ok.test"]), vec![up.addr], limits).await;
    let mut held = vec![];
    for _ in 0..2 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind((WEAVER_A, 0).into()).unwrap();
        held.push(sock.connect(dns.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third connection of A is closed at once: its query gets no answer.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((WEAVER_A, 0).into()).unwrap();
    let mut third = sock.connect(dns.addr).await.unwrap();
    let _ = write_frame(&mut third, &query(1, "ok.test", TYPE::A, None)).await;
    assert!(tokio::time::timeout(WAIT, read_frame(&mut third)).await.unwrap().is_err());
    // B's connection and A's held ones still work.
    assert_eq!(rcode_of(&ask_tcp(WEAVER_B, dns.addr, &query(2, "ok.test", TYPE::A, None)).await), RCODE::NoError);
    write_frame(&mut held[0], &query(3, "ok.test", TYPE::A, None)).await.unwrap();
    assert_eq!(rcode_of(&read_frame(&mut held[0]).await.unwrap()), RCODE::NoError);
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(dns.resolver.clients_holding(), 0);
}

#[tokio::test]
async fn bad_configuration_is_refused_with_a_reason() {
    use loom_dns::{ConfigError, Resolver};
    let p = policy(&[]);
    assert_eq!(Resolver::new(p.clone(), vec![], Limits::default()).unwrap_err(), ConfigError::NoUpstream);
    let up = vec!["127.0.0.1:53".parse().unwrap()];
    let reversed = Limits { ttl_min: Duration::from_secs(10), ttl_max: Duration::from_secs(1), ..Limits::default() };
    assert!(matches!(Resolver::new(p.clone(), up.clone(), reversed), Err(ConfigError::TtlBounds { .. })));
    let zero = Limits { max_in_flight_per_client: 0, ..Limits::default() };
    let e = Resolver::new(p, up, zero).unwrap_err();
    assert!(e.to_string().contains("max_in_flight_per_client"), "{e}");
}

#[tokio::test]
async fn a_dual_stack_socket_still_knows_ipv4_weavers() {
    let up = FakeUpstream::start(vec![("ok.test", answer(vec![("ok.test", 60, Rr::A("192.0.2.9".parse().unwrap()))]))])
        .await;
    let policy = policy(&["ok.test"]);
    let (udp, tcp) = bind_pair_on(IpAddr::V6(Ipv6Addr::UNSPECIFIED)).await;
    let port = udp.local_addr().unwrap().port();
    let resolver =
        std::sync::Arc::new(loom_dns::Resolver::new(policy.clone(), vec![up.addr], Limits::default()).unwrap());
    let serving = tokio::spawn(resolver.serve(udp, tcp));
    // The socket reports the sender as ::ffff:127.0.0.2; the policy is asked about 127.0.0.2.
    let to = (Ipv4Addr::LOCALHOST, port).into();
    let reply = ask_udp(WEAVER_A, to, &query(1, "ok.test", TYPE::A, None), WAIT).await.unwrap();
    assert_eq!(addrs_of(&reply), vec![(v4("192.0.2.9"), 60)]);
    let reply = ask_tcp(WEAVER_B, to, &query(2, "ok.test", TYPE::A, None)).await;
    assert_eq!(addrs_of(&reply), vec![(v4("192.0.2.9"), 60)]);
    let clients: Vec<String> = policy.admitted.lock().unwrap().iter().map(|a| a.client.clone()).collect();
    assert_eq!(clients, ["weaver-a", "weaver-b"]);
    serving.abort();
}

#[tokio::test]
async fn an_upstream_that_fails_is_passed_over_and_its_failure_is_servfail() {
    let failing = |rcode| Script::Answer { rcode, records: vec![], soa: false };
    let broken =
        FakeUpstream::start(vec![("ok.test", failing(RCODE::ServerFailure)), ("only.test", failing(RCODE::Refused))])
            .await;
    let good =
        FakeUpstream::start(vec![("ok.test", answer(vec![("ok.test", 60, Rr::A("192.0.2.9".parse().unwrap()))]))])
            .await;
    let dns = start_resolver(policy(&["ok.test", "only.test"]), vec![broken.addr, good.addr], Limits::default()).await;
    let reply = ask_udp(WEAVER_A, dns.addr, &query(1, "ok.test", TYPE::A, None), WAIT).await.unwrap();
    assert_eq!(addrs_of(&reply), vec![(v4("192.0.2.9"), 60)]);

    // The upstream's REFUSED is not the policy's: the weaver gets SERVFAIL, at once.
    let alone = start_resolver(policy(&["only.test"]), vec![broken.addr], Limits::default()).await;
    let t = Instant::now();
    let reply = ask_udp(WEAVER_A, alone.addr, &query(2, "only.test", TYPE::A, None), WAIT).await.unwrap();
    assert_eq!(rcode_of(&reply), RCODE::ServerFailure);
    assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
}
