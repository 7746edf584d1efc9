//! The sockets: UDP and TCP on the gateway address, the per-client budgets, and the order of
//! the steps for one question (policy before upstream, `admitted` before the reply).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use simple_dns::RCODE;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use crate::message::{Inspected, Query, inspect};
use crate::upstream::{read_frame, resolve, write_frame};
use crate::{Client, ConfigError, Limits, Policy};

/// Room for any datagram; a query longer than a DNS message can be is cut and then FORMERR.
const UDP_RECV: usize = 65535;

/// How a question arrived: over UDP an answer may have to be cut (TC) to the client's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The resolver: its policy, upstreams, limits, and the counts of what each client holds.
pub struct Resolver {
    policy: Arc<dyn Policy>,
    upstreams: Arc<[SocketAddr]>,
    limits: Limits,
    slots: Arc<Slots>,
    counters: Counters,
}

/// What the resolver has done since it started, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages received over UDP.
    pub udp: u64,
    /// Messages received over TCP.
    pub tcp: u64,
    /// Answers from an upstream passed on (any rcode the upstream gave).
    pub answered: u64,
    /// Questions REFUSED: unknown client, name not allowed, or over budget.
    pub refused: u64,
    /// Questions no upstream answered in time.
    pub servfail: u64,
    /// UDP answers cut to TC for the client to ask again over TCP.
    pub truncated: u64,
    /// Messages dropped or answered FORMERR/NOTIMP without a question we resolve.
    pub rejected: u64,
}

#[derive(Default)]
struct Counters {
    udp: AtomicU64,
    tcp: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
    servfail: AtomicU64,
    truncated: AtomicU64,
    rejected: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("upstreams", &self.upstreams).field("limits", &self.limits).finish()
    }
}

#[derive(Default)]
struct Slots {
    /// (questions in flight, TCP connections) per client; entries at (0, 0) are removed, so
    /// the map holds only clients that hold something.
    per_client: Mutex<HashMap<Client, (usize, usize)>>,
    totals: Mutex<(usize, usize)>,
}

#[derive(Clone, Copy)]
enum Kind {
    Query,
    Tcp,
}

/// One question in flight or one TCP connection, given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    client: Client,
    kind: Kind,
}

impl Slots {
    fn take(self: &Arc<Self>, client: &Client, kind: Kind, limits: &Limits) -> Option<Slot> {
        let (per, all) = match kind {
            Kind::Query => (limits.max_in_flight_per_client, limits.max_in_flight),
            Kind::Tcp => (limits.max_tcp_per_client, limits.max_tcp),
        };
        let mut totals = lock(&self.totals);
        let mut map = lock(&self.per_client);
        let entry = map.entry(client.clone()).or_default();
        let (mine, total) = match kind {
            Kind::Query => (&mut entry.0, &mut totals.0),
            Kind::Tcp => (&mut entry.1, &mut totals.1),
        };
        if *mine >= per || *total >= all {
            if *entry == (0, 0) {
                map.remove(client);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Slot { slots: Arc::clone(self), client: client.clone(), kind })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut totals = lock(&self.slots.totals);
        let mut map = lock(&self.slots.per_client);
        let Some(entry) = map.get_mut(&self.client) else { return };
        match self.kind {
            Kind::Query => {
                entry.0 = entry.0.saturating_sub(1);
                totals.0 = totals.0.saturating_sub(1);
            }
            Kind::Tcp => {
                entry.1 = entry.1.saturating_sub(1);
                totals.1 = totals.1.saturating_sub(1);
            }
        }
        if *entry == (0, 0) {
            map.remove(&self.client);
        }
    }
}

/// The counts stay consistent even if a holder panicked, so a poisoned lock is still used.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A question that passed every check and holds its slot: the upstream is asked next.
struct Forward {
    query: Query,
    client: Client,
    _slot: Slot,
}

enum Step {
    Done(Option<Vec<u8>>),
    Forward(Box<Forward>),
}

/// Builds a resolver and returns the future that serves `udp` and `tcp` until it is dropped
/// (dropping it ends every question and connection it started).
pub fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    policy: Arc<dyn Policy>,
    upstreams: Vec<SocketAddr>,
    limits: Limits,
) -> Result<impl Future<Output = ()> + Send, ConfigError> {
    let resolver = Arc::new(Resolver::new(policy, upstreams, limits)?);
    Ok(resolver.serve(udp, tcp))
}

impl Resolver {
    pub fn new(policy: Arc<dyn Policy>, upstreams: Vec<SocketAddr>, limits: Limits) -> Result<Self, ConfigError> {
        if upstreams.is_empty() {
            return Err(ConfigError::NoUpstream);
        }
        limits.validate()?;
        Ok(Self { policy, upstreams: upstreams.into(), limits, slots: Arc::default(), counters: Counters::default() })
    }

    /// The number of clients holding a question in flight or a TCP connection (for tests and
    /// metrics: it must fall back to 0 when they are done).
    pub fn clients_holding(&self) -> usize {
        lock(&self.slots.per_client).len()
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            udp: get(&c.udp),
            tcp: get(&c.tcp),
            answered: get(&c.answered),
            refused: get(&c.refused),
            servfail: get(&c.servfail),
            truncated: get(&c.truncated),
            rejected: get(&c.rejected),
        }
    }

    /// The reply to one message from `src`, or None when it gets none. What `serve` does for
    /// each message, without the sockets.
    pub async fn answer(&self, src: IpAddr, msg: &[u8], transport: Transport) -> Option<Vec<u8>> {
        bump(match transport {
            Transport::Udp => &self.counters.udp,
            Transport::Tcp => &self.counters.tcp,
        });
        match self.begin(src, msg) {
            Step::Done(reply) => reply,
            Step::Forward(f) => Some(self.finish(*f, transport).await),
        }
    }

    /// Everything that needs no upstream, done before a task is spawned so a flood of
    /// refused questions costs no tasks.
    fn begin(&self, src: IpAddr, msg: &[u8]) -> Step {
        // A dual-stack socket reports an IPv4 weaver as ::ffff:a.b.c.d; the policy knows a.b.c.d.
        let src = src.to_canonical();
        let query = match inspect(msg) {
            Inspected::Drop => {
                bump(&self.counters.rejected);
                return Step::Done(None);
            }
            Inspected::Reply(r) => {
                bump(&self.counters.rejected);
                return Step::Done(Some(r));
            }
            Inspected::Ask(q) => q,
        };
        let Some(client) = self.policy.client(src) else {
            tracing::debug!(%src, "DNS question from an unknown address refused");
            bump(&self.counters.refused);
            return Step::Done(Some(query.reply_rcode(RCODE::Refused)));
        };
        if !self.policy.may_resolve(&client, &query.name) {
            tracing::debug!(client = client.key(), name = %query.name, "DNS name not allowed: refused");
            bump(&self.counters.refused);
            return Step::Done(Some(query.reply_rcode(RCODE::Refused)));
        }
        let Some(slot) = self.slots.take(&client, Kind::Query, &self.limits) else {
            tracing::debug!(client = client.key(), "too many DNS questions in flight: refused");
            bump(&self.counters.refused);
            return Step::Done(Some(query.reply_rcode(RCODE::Refused)));
        };
        Step::Forward(Box::new(Forward { query, client, _slot: slot }))
    }

    async fn finish(&self, f: Forward, transport: Transport) -> Vec<u8> {
        let deadline = Instant::now() + self.limits.upstream_timeout;
        let ttl = (self.limits.ttl_min, self.limits.ttl_max);
        let Some(answer) = resolve(&f.query, &self.upstreams, deadline, ttl).await else {
            tracing::debug!(client = f.client.key(), name = %f.query.name, "no upstream answered: SERVFAIL");
            bump(&self.counters.servfail);
            return f.query.reply_rcode(RCODE::ServerFailure);
        };
        let udp_limit = (transport == Transport::Udp).then_some(self.limits.udp_max);
        let (reply, truncated) = f.query.reply_answer(&answer, udp_limit);
        bump(if truncated { &self.counters.truncated } else { &self.counters.answered });
        // The weaver connects as soon as it reads the reply: admit first. A truncated reply
        // carries no address; the TCP retry admits them.
        if let (Some(ttl), false) = (answer.ttl, truncated) {
            self.policy.admitted(&f.client, &f.query.name, &answer.addrs, ttl);
        }
        reply
    }

    /// Serves until dropped. Socket errors are logged and the loop goes on: one bad datagram
    /// or a full fd table must not end DNS for every weaver.
    pub async fn serve(self: Arc<Self>, udp: UdpSocket, tcp: TcpListener) {
        let udp = Arc::new(udp);
        let mut tasks = JoinSet::new();
        let mut buf = vec![0u8; UDP_RECV];
        loop {
            tokio::select! {
                got = udp.recv_from(&mut buf) => match got {
                    Ok((n, src)) => self.on_datagram(&udp, &buf[..n], src, &mut tasks).await,
                    Err(e) => tracing::warn!(error = %e, "DNS UDP receive failed"),
                },
                got = tcp.accept() => match got {
                    Ok((stream, peer)) => self.on_connection(stream, peer, &mut tasks),
                    Err(e) => {
                        tracing::warn!(error = %e, "DNS TCP accept failed; pausing accepts for 100 ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }

    async fn on_datagram(self: &Arc<Self>, udp: &Arc<UdpSocket>, msg: &[u8], src: SocketAddr, tasks: &mut JoinSet<()>) {
        bump(&self.counters.udp);
        match self.begin(src.ip(), msg) {
            Step::Done(None) => {}
            Step::Done(Some(reply)) => send(udp, &reply, src).await,
            Step::Forward(f) => {
                let (me, udp) = (Arc::clone(self), Arc::clone(udp));
                tasks.spawn(async move {
                    let reply = me.finish(*f, Transport::Udp).await;
                    send(&udp, &reply, src).await;
                });
            }
        }
    }

    fn on_connection(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr, tasks: &mut JoinSet<()>) {
        let Some(client) = self.policy.client(peer.ip().to_canonical()) else {
            tracing::debug!(%peer, "DNS TCP connection from an unknown address closed");
            return;
        };
        let Some(slot) = self.slots.take(&client, Kind::Tcp, &self.limits) else {
            tracing::debug!(client = client.key(), "too many DNS TCP connections: closed");
            return;
        };
        let me = Arc::clone(self);
        tasks.spawn(async move {
            let _slot = slot;
            me.connection(stream, peer).await;
        });
    }

    /// Questions on one connection are answered in order (glibc sends A and AAAA back to back
    /// and reads both replies).
    async fn connection(&self, mut stream: TcpStream, peer: SocketAddr) {
        loop {
            let msg = match timeout(self.limits.tcp_idle, read_frame(&mut stream)).await {
                Ok(Ok(msg)) => msg,
                Ok(Err(_)) | Err(_) => return,
            };
            let Some(reply) = self.answer(peer.ip(), &msg, Transport::Tcp).await else { continue };
            // A client that stops reading must not hold its slot forever either.
            match timeout(self.limits.tcp_idle, write_frame(&mut stream, &reply)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "DNS TCP reply not sent");
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

async fn send(udp: &UdpSocket, reply: &[u8], to: SocketAddr) {
    if let Err(e) = udp.send_to(reply, to).await {
        tracing::debug!(%to, error = %e, "DNS UDP reply not sent");
    }
}
