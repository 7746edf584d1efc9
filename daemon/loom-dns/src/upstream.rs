//! Asking the host's resolvers: UDP first, TCP when the answer is truncated, every attempt
//! inside the query's one deadline.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};

use crate::message::{Answer, Query, UpstreamError};

/// Room for any UDP answer an upstream sends to our EDNS size, and then some.
const UDP_RECV: usize = 4096;

/// Asks the upstreams in order until one answers; None when none did before `deadline`.
/// Each attempt gets an equal share of the time left, so a dead first resolver still leaves
/// the others time to answer.
pub async fn resolve(
    query: &Query,
    upstreams: &[SocketAddr],
    deadline: Instant,
    ttl: (Duration, Duration),
) -> Option<Answer> {
    for (i, upstream) in upstreams.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let share = left / u32::try_from(upstreams.len() - i).unwrap_or(u32::MAX);
        let attempt_deadline = Instant::now() + share;
        match timeout_at(attempt_deadline, exchange(query, *upstream, ttl)).await {
            Ok(Ok(answer)) => return Some(answer),
            Ok(Err(e)) => tracing::debug!(upstream = %upstream, error = %e, "upstream failed"),
            Err(_) => tracing::debug!(upstream = %upstream, "upstream timed out"),
        }
    }
    None
}

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
}

async fn exchange(query: &Query, upstream: SocketAddr, ttl: (Duration, Duration)) -> Result<Answer, ExchangeError> {
    match exchange_udp(query, upstream, ttl).await {
        Err(ExchangeError::Upstream(UpstreamError::Truncated)) => exchange_tcp(query, upstream, ttl).await,
        other => other,
    }
}

/// One socket per query: the kernel picks a fresh random source port, which with the random
/// id is what keeps an off-path spoofer from guessing the answer we wait for. A connected
/// socket also drops datagrams from any other address.
async fn exchange_udp(query: &Query, upstream: SocketAddr, ttl: (Duration, Duration)) -> Result<Answer, ExchangeError> {
    let bind: SocketAddr = if upstream.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(upstream).await?;
    let id: u16 = rand::random();
    sock.send(&query.upstream_query(id)).await?;
    let mut buf = vec![0u8; UDP_RECV];
    loop {
        let n = sock.recv(&mut buf).await?;
        match query.read_upstream(&buf[..n], id, ttl.0, ttl.1) {
            // A stray or forged datagram: keep waiting for the real one until the deadline.
            Err(UpstreamError::Mismatch | UpstreamError::Malformed(_)) => continue,
            other => return Ok(other?),
        }
    }
}

async fn exchange_tcp(query: &Query, upstream: SocketAddr, ttl: (Duration, Duration)) -> Result<Answer, ExchangeError> {
    let mut stream = TcpStream::connect(upstream).await?;
    let id: u16 = rand::random();
    let bytes = query.upstream_query(id);
    write_frame(&mut stream, &bytes).await?;
    let reply = read_frame(&mut stream).await?;
    Ok(query.read_upstream(&reply, id, ttl.0, ttl.1)?)
}

/// DNS over TCP frames each message with its length (RFC 1035 §4.2.2).
pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "DNS message over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    w.write_all(&framed).await
}

pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let len = r.read_u16().await?;
    let mut msg = vec![0u8; usize::from(len)];
    r.read_exact(&mut msg).await?;
    Ok(msg)
}
