//! loomd's DNS resolver for weavers.
//!
//! A weaver on the `private` network has one DNS server: this resolver, on its gateway
//! address. It answers A and AAAA questions for names the [`Policy`] allows, asking the host's
//! upstream resolvers, and reports the answered addresses to the policy
//! ([`Policy::admitted`]) before the weaver sees them, so the weaver's next connect to them
//! is let through. Names the policy does not allow are answered REFUSED and never leave the
//! host: DNS is no channel for names outside the allow-list.
//!
//! It knows nothing of weavers: [`Policy::client`] maps a source address to an opaque
//! [`Client`], and the rest is asked of the policy by that key.
//!
//! Choices, and why:
//! - **REFUSED, not NXDOMAIN**, for a name the policy does not allow (and for an unknown
//!   client or a client over its budget). It is RFC 1035's code for "refused for policy
//!   reasons", it tells an operator reading `dig` the truth, and nothing caches it: an
//!   NXDOMAIN may be cached negatively by a stub cache in the weaver (RFC 2308), which would
//!   outlive a policy change that allows the name while the weaver runs. glibc reports it as
//!   a failed lookup (it treats REFUSED like SERVFAIL: EAI_AGAIN), and `getent` exits 2.
//! - **Only A and AAAA** (class IN) are resolved; every other type gets NOTIMP without the
//!   policy or the upstream seeing it. glibc's and musl's getaddrinfo ask only these two.
//! - **A fresh upstream query**: the upstream gets a new message with its own id, the allowed
//!   name in lower case, the type and our EDNS size, nothing else of the weaver's bytes.
//!   The weaver gets a rebuilt reply: the CNAME chain from its name and the A/AAAA records at
//!   the chain's end (the addresses admitted), and the SOA of a negative answer.
//! - **No cache**: the host's resolver (systemd-resolved, nscd, the upstream) caches; a
//!   cache here would have to expire admissions by itself.
//! - **`simple-dns`** parses and builds the messages: one dependency (bitflags), no I/O or
//!   runtime of its own, and it keeps unknown record types as opaque data. `hickory-proto`
//!   0.26 with default features off still brings url, idna, ipnet, data-encoding, tinyvec,
//!   once_cell and rand, for a resolver that needs two record types and a header.

#[cfg(test)]
mod fuzz_tests;
mod message;
mod resolv_conf;
mod server;
mod upstream;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub use message::{CLASSIC_UDP_SIZE, EDNS_UDP_SIZE};
pub use resolv_conf::upstreams_from_resolv_conf;
pub use server::{Resolver, Stats, Transport, serve};

/// Who is asking: an opaque key the policy chose (e.g. a weaver id and its run).
/// Queries in flight are counted per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Client {
    key: Arc<str>,
}

impl Client {
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        Self { key: key.into() }
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

/// What the resolver asks of loomd. Called on the resolver's tasks: keep each call short and
/// never block on I/O.
pub trait Policy: Send + Sync + 'static {
    /// Who is asking, by source address; None = not a weaver we know: REFUSED.
    fn client(&self, src: IpAddr) -> Option<Client>;
    /// May this client resolve this name (lower-cased, no trailing dot)? A `false` here is
    /// the place to record the refusal (the resolver only logs it at debug).
    fn may_resolve(&self, client: &Client, name: &str) -> bool;
    /// The upstream answered: these addresses of `name` may be connected to until `ttl`
    /// (already clamped to [`Limits::ttl_min`], [`Limits::ttl_max`]) passes. Called before the
    /// weaver gets the answer, and only with a non-empty `addrs`.
    fn admitted(&self, client: &Client, name: &str, addrs: &[IpAddr], ttl: Duration);
}

/// How much the resolver does for whom, and how long it waits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// How long one question may take, all upstreams together; then SERVFAIL.
    pub upstream_timeout: Duration,
    /// Admitted addresses live at least this long, so a 0-TTL answer still lets the connect
    /// that follows it through.
    pub ttl_min: Duration,
    /// And at most this long; the TTLs the weaver sees are cut to the same bound, so it never
    /// caches an address longer than it is admitted.
    pub ttl_max: Duration,
    /// Questions of one client waiting for an upstream at once; more are REFUSED.
    pub max_in_flight_per_client: usize,
    /// Questions of all clients waiting for an upstream at once.
    pub max_in_flight: usize,
    /// Open TCP connections of one client; more are closed at once.
    pub max_tcp_per_client: usize,
    /// Open TCP connections of all clients.
    pub max_tcp: usize,
    /// A TCP connection with no complete question for this long is closed.
    pub tcp_idle: Duration,
    /// The largest UDP reply sent, whatever EDNS size a client advertises (≥ 512).
    pub udp_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            upstream_timeout: Duration::from_secs(2),
            ttl_min: Duration::from_secs(5),
            ttl_max: Duration::from_secs(3600),
            max_in_flight_per_client: 32,
            max_in_flight: 1024,
            max_tcp_per_client: 8,
            max_tcp: 256,
            tcp_idle: Duration::from_secs(10),
            udp_max: usize::from(EDNS_UDP_SIZE),
        }
    }
}

/// Why a resolver cannot be built from its configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// no upstream resolver
    #[error(
        "the DNS resolver has no upstream: give it at least one (the host's /etc/resolv.conf has no usable `nameserver` line?)"
    )]
    NoUpstream,
    /// ttl_min above ttl_max
    #[error("the DNS TTL bounds are reversed: ttl_min {min:?} is above ttl_max {max:?}")]
    TtlBounds { min: Duration, max: Duration },
    /// a limit of zero would refuse everything
    #[error("the DNS limit `{0}` is 0, which refuses every question: give it at least 1")]
    ZeroLimit(&'static str),
    /// the upstream timeout is zero
    #[error("the DNS upstream timeout is 0: give it a duration such as 2s")]
    ZeroTimeout,
}

impl Limits {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl_min > self.ttl_max {
            return Err(ConfigError::TtlBounds { min: self.ttl_min, max: self.ttl_max });
        }
        if self.upstream_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        for (name, v) in [
            ("max_in_flight_per_client", self.max_in_flight_per_client),
            ("max_in_flight", self.max_in_flight),
            ("max_tcp_per_client", self.max_tcp_per_client),
            ("max_tcp", self.max_tcp),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        Ok(())
    }
}
