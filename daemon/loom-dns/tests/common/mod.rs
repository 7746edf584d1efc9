//! Test support: a fake upstream DNS server (real wire format, built with simple_dns), a
//! recording policy, the resolver on loopback, and a client that speaks UDP and TCP.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loom_dns::{Client, Limits, Policy, Resolver};
use simple_dns::rdata::{A, AAAA, CNAME, RData, SOA};
use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, ResourceRecord, TYPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// What the fake upstream does with one question.
#[derive(Clone, Debug)]
pub enum Script {
    /// Answer with these records (owner, ttl, data) and this code.
    Answer { rcode: RCODE, records: Vec<(String, u32, Rr)>, soa: bool },
    /// Never answer.
    Silent,
    /// Answer after a pause.
    Slow(Duration, Box<Script>),
    /// Over UDP, an empty reply with TC set; over TCP, this.
    TruncateUdp(Box<Script>),
}

#[derive(Clone, Debug)]
pub enum Rr {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
}

pub fn answer(records: Vec<(&str, u32, Rr)>) -> Script {
    Script::Answer {
        rcode: RCODE::NoError,
        records: records.into_iter().map(|(n, t, r)| (n.to_string(), t, r)).collect(),
        soa: false,
    }
}

/// A fake of the host's upstream resolver, on 127.0.0.1 (UDP and TCP on one port), that
/// answers from a script per name and records every question it saw.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Every question the fake saw: (name, type, "udp" | "tcp").
pub type Seen = Mutex<Vec<(String, QTYPE, &'static str)>>;

type Scripts = Arc<HashMap<String, Script>>;

impl FakeUpstream {
    pub async fn start(scripts: Vec<(&str, Script)>) -> Self {
        let scripts: Scripts = Arc::new(scripts.into_iter().map(|(n, s)| (n.to_string(), s)).collect());
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let udp = Arc::new(udp);
        let (s1, seen1, udp1) = (scripts.clone(), seen.clone(), udp.clone());
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, from)) = udp1.recv_from(&mut buf).await else { return };
                let msg = buf[..n].to_vec();
                let (s, seen, udp) = (s1.clone(), seen1.clone(), udp1.clone());
                tokio::spawn(async move {
                    if let Some(reply) = respond(&msg, &s, &seen, "udp").await {
                        let _ = udp.send_to(&reply, from).await;
                    }
                });
            }
        });
        let (s2, seen2) = (scripts, seen.clone());
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = tcp.accept().await else { return };
                let (s, seen) = (s2.clone(), seen2.clone());
                tokio::spawn(async move {
                    while let Ok(msg) = read_frame(&mut stream).await {
                        let Some(reply) = respond(&msg, &s, &seen, "tcp").await else { return };
                        if write_frame(&mut stream, &reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, seen, tasks: vec![udp_task, tcp_task] }
    }

    pub fn seen_names(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|(n, _, _)| n.clone()).collect()
    }

    pub fn seen_over(&self, transport: &str) -> usize {
        self.seen.lock().unwrap().iter().filter(|(_, _, t)| *t == transport).count()
    }
}

/// UDP and TCP sockets on the same 127.0.0.1 port, as a DNS server has them.
pub async fn bind_pair() -> (UdpSocket, TcpListener) {
    bind_pair_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).await
}

pub async fn bind_pair_on(ip: IpAddr) -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind((ip, 0)).await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind((ip, port)).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

async fn respond(msg: &[u8], scripts: &Scripts, seen: &Seen, transport: &'static str) -> Option<Vec<u8>> {
    let query = Packet::parse(msg).expect("the resolver sent the fake upstream a malformed query");
    let q = query.questions.first().expect("a question").clone();
    let name = q.qname.to_string().to_ascii_lowercase();
    seen.lock().unwrap().push((name.clone(), q.qtype, transport));
    let mut script =
        scripts.get(&name).cloned().unwrap_or(Script::Answer { rcode: RCODE::NameError, records: vec![], soa: true });
    loop {
        script = match script {
            Script::Silent => return None,
            Script::Slow(d, s) => {
                tokio::time::sleep(d).await;
                *s
            }
            Script::TruncateUdp(_) if transport == "udp" => {
                let mut p = Packet::new_reply(query.id());
                p.set_flags(PacketFlag::TRUNCATION | PacketFlag::RECURSION_AVAILABLE);
                p.questions.push(q.clone());
                return Some(p.build_bytes_vec().unwrap());
            }
            Script::TruncateUdp(s) => *s,
            Script::Answer { rcode, records, soa } => {
                let mut p = Packet::new_reply(query.id());
                p.set_flags(PacketFlag::RECURSION_AVAILABLE | PacketFlag::RECURSION_DESIRED);
                *p.rcode_mut() = rcode;
                p.questions.push(q.clone());
                for (owner, ttl, rr) in &records {
                    let data = match rr {
                        Rr::A(a) => RData::A(A::from(*a)),
                        Rr::Aaaa(a) => RData::AAAA(AAAA::from(*a)),
                        Rr::Cname(c) => RData::CNAME(CNAME(Name::new_unchecked(c))),
                    };
                    p.answers.push(ResourceRecord::new(Name::new_unchecked(owner), CLASS::IN, *ttl, data));
                }
                if soa {
                    p.name_servers.push(ResourceRecord::new(
                        Name::new_unchecked("test"),
                        CLASS::IN,
                        300,
                        RData::SOA(SOA {
                            mname: Name::new_unchecked("ns.test"),
                            rname: Name::new_unchecked("hostmaster.test"),
                            serial: 1,
                            refresh: 3600,
                            retry: 600,
                            expire: 86400,
                            minimum: 60,
                        }),
                    ));
                }
                let bytes = p.build_bytes_vec_compressed().unwrap();
                return Some(bytes.into_iter().collect());
            }
        };
    }
}

/// A policy that records what the resolver told it; addresses map to clients by a table.
#[derive(Default)]
pub struct RecordingPolicy {
    pub clients: HashMap<IpAddr, String>,
    pub allowed: Vec<String>,
    pub asked: Mutex<Vec<(String, String)>>,
    pub admitted: Mutex<Vec<Admitted>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub client: String,
    pub name: String,
    pub addrs: Vec<IpAddr>,
    pub ttl: Duration,
}

impl Policy for RecordingPolicy {
    fn client(&self, src: IpAddr) -> Option<Client> {
        self.clients.get(&src).map(|k| Client::new(k.as_str()))
    }
    fn may_resolve(&self, client: &Client, name: &str) -> bool {
        self.asked.lock().unwrap().push((client.key().to_string(), name.to_string()));
        self.allowed.iter().any(|a| a == name)
    }
    fn admitted(&self, client: &Client, name: &str, addrs: &[IpAddr], ttl: Duration) {
        self.admitted.lock().unwrap().push(Admitted {
            client: client.key().to_string(),
            name: name.to_string(),
            addrs: addrs.to_vec(),
            ttl,
        });
    }
}

pub const WEAVER_A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
pub const WEAVER_B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
pub const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));

pub fn policy(allowed: &[&str]) -> Arc<RecordingPolicy> {
    Arc::new(RecordingPolicy {
        clients: [(WEAVER_A, "weaver-a".to_string()), (WEAVER_B, "weaver-b".to_string())].into(),
        allowed: allowed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

/// The resolver serving on 127.0.0.1 (UDP and TCP on one port) until dropped.
pub struct Running {
    pub addr: SocketAddr,
    pub resolver: Arc<Resolver>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start_resolver(policy: Arc<RecordingPolicy>, upstreams: Vec<SocketAddr>, limits: Limits) -> Running {
    let (udp, tcp) = bind_pair().await;
    let addr = udp.local_addr().unwrap();
    let resolver = Arc::new(Resolver::new(policy, upstreams, limits).unwrap());
    let task = tokio::spawn(Arc::clone(&resolver).serve(udp, tcp));
    Running { addr, resolver, task }
}

/// A query as a stub resolver sends it: one question, recursion desired, EDNS if asked.
pub fn query(id: u16, name: &str, qtype: TYPE, edns: Option<u16>) -> Vec<u8> {
    let mut p = Packet::new_query(id);
    p.set_flags(PacketFlag::RECURSION_DESIRED);
    p.questions.push(Question::new(Name::new_unchecked(name), QTYPE::TYPE(qtype), QCLASS::CLASS(CLASS::IN), false));
    if let Some(size) = edns {
        *p.opt_mut() = Some(simple_dns::rdata::OPT { opt_codes: vec![], udp_packet_size: size, version: 0 });
    }
    p.build_bytes_vec().unwrap()
}

/// Sends `msg` from `from` over UDP and waits up to `wait` for the reply.
pub async fn ask_udp(from: IpAddr, to: SocketAddr, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind((from, 0)).await.unwrap();
    sock.send_to(msg, to).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

pub async fn ask_tcp(from: IpAddr, to: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((from, 0).into()).unwrap();
    let mut stream = sock.connect(to).await.unwrap();
    write_frame(&mut stream, msg).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), read_frame(&mut stream)).await.expect("TCP reply in time").unwrap()
}

pub async fn write_frame(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(&(msg.len() as u16).to_be_bytes()).await?;
    s.write_all(msg).await
}

pub async fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = s.read_u16().await?;
    let mut msg = vec![0u8; len as usize];
    s.read_exact(&mut msg).await?;
    Ok(msg)
}

/// The addresses and TTLs in a reply's answer section, in order.
pub fn addrs_of(reply: &[u8]) -> Vec<(IpAddr, u32)> {
    let p = Packet::parse(reply).unwrap();
    p.answers
        .iter()
        .filter_map(|rr| match &rr.rdata {
            RData::A(a) => Some((IpAddr::V4(Ipv4Addr::from(a.address)), rr.ttl)),
            RData::AAAA(a) => Some((IpAddr::V6(Ipv6Addr::from(a.address)), rr.ttl)),
            _ => None,
        })
        .collect()
}

pub fn rcode_of(reply: &[u8]) -> RCODE {
    Packet::parse(reply).unwrap().rcode()
}
