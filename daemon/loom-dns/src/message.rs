//! The resolver's decisions on DNS messages, without I/O: what a weaver asked, what we send
//! upstream, which part of the upstream's answer the weaver gets and which addresses it admits.
//! Every byte is parsed and built by `simple_dns`; nothing here reads the wire by hand.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use simple_dns::rdata::{OPT, RData};
use simple_dns::{
    CLASS, Name, OPCODE, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, ResourceRecord, SimpleDnsError, TYPE,
};

/// A plain DNS message over UDP without EDNS may carry this much (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_SIZE: usize = 512;
/// The EDNS payload size we advertise upstream and cap replies at by default: the DNS flag day
/// 2020 value, which never fragments on a 1280-byte IPv6 path.
pub const EDNS_UDP_SIZE: u16 = 1232;
/// A CNAME chain longer than this in one answer is not followed (real chains are 1–3 long).
const MAX_CHAIN: usize = 16;

/// Which address family a weaver asked for: the only two query types loomd resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn qtype(self) -> QTYPE {
        QTYPE::TYPE(self.rtype())
    }
    fn rtype(self) -> TYPE {
        match self {
            Family::V4 => TYPE::A,
            Family::V6 => TYPE::AAAA,
        }
    }
}

/// A weaver's question that passed the format checks; the policy decides on `name` next.
#[derive(Debug, Clone)]
pub struct Query {
    id: u16,
    rd: bool,
    /// The question as the weaver wrote it: replies echo its case (some stubs check 0x20 case).
    question: Question<'static>,
    /// The client's EDNS payload size, if it sent an OPT record.
    edns: Option<u16>,
    /// Lower-cased, no trailing dot: what `Policy::may_resolve` sees.
    pub name: String,
    pub family: Family,
}

/// What to do with the bytes of one incoming message.
#[derive(Debug)]
pub enum Inspected {
    /// Not worth an answer: too short to carry an id, or a response (answering those could
    /// loop between two resolvers).
    Drop,
    /// Answer at once with this message (FORMERR, NOTIMP, REFUSED for a name no policy may see).
    Reply(Vec<u8>),
    /// A well-formed A/AAAA question: ask the policy.
    Ask(Query),
}

/// Classifies one message from a weaver. Never panics, whatever the bytes.
pub fn inspect(bytes: &[u8]) -> Inspected {
    let Ok(id) = simple_dns::header_buffer::id(bytes) else {
        return Inspected::Drop;
    };
    let packet = match Packet::parse(bytes) {
        Ok(p) => p,
        // A question type simple_dns does not know is still a question: we do not implement it.
        Err(SimpleDnsError::InvalidQType(_)) => {
            return Inspected::Reply(bare_reply(id, RCODE::NotImplemented));
        }
        Err(_) => return Inspected::Reply(bare_reply(id, RCODE::FormatError)),
    };
    if packet.has_flags(PacketFlag::RESPONSE) {
        return Inspected::Drop;
    }
    if packet.opcode() != OPCODE::StandardQuery {
        return Inspected::Reply(bare_reply(id, RCODE::NotImplemented));
    }
    let [question] = packet.questions.as_slice() else {
        return Inspected::Reply(bare_reply(id, RCODE::FormatError));
    };
    let rd = packet.has_flags(PacketFlag::RECURSION_DESIRED);
    let edns = packet.opt().map(|o| o.udp_packet_size);
    let question = question.clone().into_owned();
    let family = match (question.qtype, question.qclass) {
        (QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN)) => Family::V4,
        (QTYPE::TYPE(TYPE::AAAA), QCLASS::CLASS(CLASS::IN)) => Family::V6,
        _ => {
            let q = Query { id, rd, question, edns, name: String::new(), family: Family::V4 };
            return Inspected::Reply(q.reply_rcode(RCODE::NotImplemented));
        }
    };
    let mut query = Query { id, rd, question, edns, name: String::new(), family };
    match policy_name(&query.question.qname) {
        Some(name) => {
            query.name = name;
            Inspected::Ask(query)
        }
        // A name with bytes no host name has cannot be on an allow-list: refused unseen, so
        // the policy never has to think about escapes.
        None => Inspected::Reply(query.reply_rcode(RCODE::Refused)),
    }
}

/// The name as the policy sees it: lower-case labels joined by dots. None for the root and for
/// labels with anything but letters, digits, `-` and `_`.
pub fn policy_name(name: &Name<'_>) -> Option<String> {
    let labels = name.get_labels();
    if labels.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(64);
    for (i, label) in labels.iter().enumerate() {
        let bytes: &[u8] = label.as_ref();
        if bytes.is_empty() || !bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
            return None;
        }
        if i > 0 {
            out.push('.');
        }
        out.extend(bytes.iter().map(|b| b.to_ascii_lowercase() as char));
    }
    Some(out)
}

/// A reply without a question section, for messages whose question we could not read.
fn bare_reply(id: u16, rcode: RCODE) -> Vec<u8> {
    let mut p = Packet::new_reply(id);
    *p.rcode_mut() = rcode;
    p.set_flags(PacketFlag::RECURSION_AVAILABLE);
    build(&p)
}

fn build(p: &Packet<'_>) -> Vec<u8> {
    // Only a name over 255 octets or a label over 63 could fail to build, and every name here
    // came out of a parsed packet; a header alone is the fallback that cannot fail.
    p.build_bytes_vec_compressed().unwrap_or_else(|_| {
        let mut fallback = Packet::new_reply(p.id());
        *fallback.rcode_mut() = RCODE::ServerFailure;
        fallback.build_bytes_vec().unwrap_or_default()
    })
}

/// The part of an upstream answer a weaver gets.
#[derive(Debug, Clone)]
pub struct Answer {
    pub rcode: RCODE,
    /// The CNAME chain from the question name and the A/AAAA records at its end, TTLs capped at
    /// `ttl`'s clamped value so no weaver caches an address longer than it is admitted.
    records: Vec<ResourceRecord<'static>>,
    /// The SOA of a negative answer, so stubs can cache NXDOMAIN/NODATA as the zone says.
    soa: Option<ResourceRecord<'static>>,
    /// The addresses admitted for the question name.
    pub addrs: Vec<IpAddr>,
    /// How long they are admitted (clamped); None when there are none.
    pub ttl: Option<Duration>,
}

/// Why an upstream message is not the answer to our query (the exchange keeps waiting or moves on).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    /// the upstream's message does not parse as DNS
    #[error("the upstream's message is not a DNS message: {0}")]
    Malformed(String),
    /// not the response to our query (another id or question): ignored, as a spoof would be
    #[error("the upstream's message answers another query")]
    Mismatch,
    /// the upstream cut the answer (TC): ask it again over TCP
    #[error("the upstream truncated its answer")]
    Truncated,
    /// the upstream could not answer (SERVFAIL, REFUSED, …): the next upstream may
    #[error("the upstream answered {0:?}")]
    Failed(RCODE),
}

impl Query {
    /// The message loomd sends upstream for this question: a fresh id, recursion desired, our
    /// EDNS size, and nothing from the weaver's message but the (allowed) name and type.
    pub fn upstream_query(&self, id: u16) -> Vec<u8> {
        let mut p = Packet::new_query(id);
        p.set_flags(PacketFlag::RECURSION_DESIRED);
        let name = Name::new_unchecked(&self.name);
        p.questions.push(Question::new(name, self.family.qtype(), QCLASS::CLASS(CLASS::IN), false));
        *p.opt_mut() = Some(OPT { opt_codes: vec![], udp_packet_size: EDNS_UDP_SIZE, version: 0 });
        build(&p)
    }

    /// Reads the upstream's response to `upstream_query(id)` and keeps what the weaver may see.
    pub fn read_upstream(
        &self,
        bytes: &[u8],
        id: u16,
        ttl_min: Duration,
        ttl_max: Duration,
    ) -> Result<Answer, UpstreamError> {
        let packet = Packet::parse(bytes).map_err(|e| UpstreamError::Malformed(e.to_string()))?;
        let asked = Name::new_unchecked(&self.name);
        let same_question = matches!(packet.questions.as_slice(),
            [q] if q.qname == asked && q.qtype == self.family.qtype());
        if packet.id() != id || !packet.has_flags(PacketFlag::RESPONSE) || !same_question {
            return Err(UpstreamError::Mismatch);
        }
        if packet.has_flags(PacketFlag::TRUNCATION) {
            return Err(UpstreamError::Truncated);
        }
        let rcode = packet.rcode();
        if !matches!(rcode, RCODE::NoError | RCODE::NameError) {
            return Err(UpstreamError::Failed(rcode));
        }
        let mut records = Vec::new();
        let mut target = asked;
        for _ in 0..MAX_CHAIN {
            let next = packet.answers.iter().find_map(|rr| match &rr.rdata {
                RData::CNAME(c) if rr.name == target && rr.class == CLASS::IN => Some((rr, c.0.clone())),
                _ => None,
            });
            let Some((rr, next)) = next else { break };
            records.push(rr.clone().into_owned());
            target = next;
        }
        let mut addrs = Vec::new();
        for rr in &packet.answers {
            if rr.name != target || rr.class != CLASS::IN {
                continue;
            }
            let addr = match (&rr.rdata, self.family) {
                (RData::A(a), Family::V4) => IpAddr::V4(Ipv4Addr::from(a.address)),
                (RData::AAAA(a), Family::V6) => IpAddr::V6(Ipv6Addr::from(a.address)),
                _ => continue,
            };
            if !addrs.contains(&addr) {
                addrs.push(addr);
                records.push(rr.clone().into_owned());
            }
        }
        let ttl = if addrs.is_empty() {
            None
        } else {
            let least = records.iter().map(|r| r.ttl).min().unwrap_or(0);
            Some(Duration::from_secs(u64::from(least)).clamp(ttl_min, ttl_max.max(ttl_min)))
        };
        if let Some(ttl) = ttl {
            let cap = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
            for r in &mut records {
                r.ttl = r.ttl.min(cap);
            }
        }
        let soa =
            packet.name_servers.iter().find(|rr| matches!(rr.rdata, RData::SOA(_))).map(|rr| rr.clone().into_owned());
        Ok(Answer { rcode, records, soa, addrs, ttl })
    }

    fn reply_packet(&self) -> Packet<'static> {
        let mut p = Packet::new_reply(self.id);
        let mut flags = PacketFlag::RECURSION_AVAILABLE;
        if self.rd {
            flags |= PacketFlag::RECURSION_DESIRED;
        }
        p.set_flags(flags);
        p.questions.push(self.question.clone());
        if self.edns.is_some() {
            *p.opt_mut() = Some(OPT { opt_codes: vec![], udp_packet_size: EDNS_UDP_SIZE, version: 0 });
        }
        p
    }

    /// A reply carrying only the question and this code (REFUSED, SERVFAIL, NOTIMP).
    pub fn reply_rcode(&self, rcode: RCODE) -> Vec<u8> {
        let mut p = self.reply_packet();
        *p.rcode_mut() = rcode;
        build(&p)
    }

    /// The weaver's reply for an upstream answer. Over UDP, an answer longer than the client
    /// can take (`udp_limit`) is replaced by an empty one with TC set, so it asks over TCP.
    /// Returns the reply and whether it was cut.
    pub fn reply_answer(&self, answer: &Answer, udp_limit: Option<usize>) -> (Vec<u8>, bool) {
        let mut p = self.reply_packet();
        *p.rcode_mut() = answer.rcode;
        p.answers = answer.records.clone();
        p.name_servers = answer.soa.iter().cloned().collect();
        let bytes = build(&p);
        match udp_limit {
            Some(limit) if bytes.len() > self.udp_size(limit) => {
                let mut cut = self.reply_packet();
                cut.set_flags(PacketFlag::TRUNCATION);
                (build(&cut), true)
            }
            _ => (bytes, false),
        }
    }

    /// The largest UDP reply this client takes: 512 without EDNS, else what it advertised,
    /// within [512, `limit`].
    pub fn udp_size(&self, limit: usize) -> usize {
        match self.edns {
            None => CLASSIC_UDP_SIZE,
            Some(s) => usize::from(s).clamp(CLASSIC_UDP_SIZE, limit.max(CLASSIC_UDP_SIZE)),
        }
    }
}
