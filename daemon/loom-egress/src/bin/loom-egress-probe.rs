//! Test and benchmark helper: run inside a weaver-like cgroup, read one command a line on
//! stdin, answer one line on stdout. Not used by loomd.
//!
//! `tcp ADDR` / `tcp-fastopen ADDR` / `udp-connect ADDR` / `udp-send ADDR`: `ok MICROS` or `err ERRNO MICROS`;
//! `loop N ADDR`: N TCP connects, `ok MEDIAN_NS` of connect+close;
//! `udp-loop N ADDR`: N sends on one unconnected UDP socket, `ok MEDIAN_NS` per send;
//! `bulk ADDR BYTES`: send BYTES over one TCP connection, `ok NANOS`.

use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

fn bind_any(addr: &SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
}

/// A TCP Fast Open send: the connect happens inside sendto(MSG_FASTOPEN), not connect().
fn fastopen(addr: SocketAddr) -> std::io::Result<()> {
    let SocketAddr::V4(a) = addr else { return Err(std::io::Error::other("IPv4 only")) };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: plain socket calls on a descriptor this function owns; sin outlives the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let r = libc::sendto(
            fd,
            b"x".as_ptr().cast(),
            1,
            libc::MSG_FASTOPEN,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if r < 0 { Err(err) } else { Ok(()) }
    }
}

fn once(cmd: &str, addr: SocketAddr) -> std::io::Result<()> {
    match cmd {
        "tcp" => TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(drop),
        "udp-connect" => bind_any(&addr)?.connect(addr),
        "udp-send" => bind_any(&addr)?.send_to(b"x", addr).map(drop),
        "tcp-fastopen" => fastopen(addr),
        _ => Err(std::io::Error::other("unknown command")),
    }
}

fn answer(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let parse = |s: &str| s.parse::<SocketAddr>().map_err(|e| format!("bad address {s}: {e}"));
    let result = (|| -> Result<String, String> {
        match words.as_slice() {
            [cmd @ ("tcp" | "udp-connect" | "udp-send" | "tcp-fastopen"), a] => {
                let addr = parse(a)?;
                let t = Instant::now();
                let r = once(cmd, addr);
                let us = t.elapsed().as_micros();
                Ok(match r {
                    Ok(()) => format!("ok {us}"),
                    Err(e) => format!("err {} {us}", e.raw_os_error().unwrap_or(-1)),
                })
            }
            ["loop", n, a] => {
                let addr = parse(a)?;
                let n: usize = n.parse().map_err(|e| format!("bad count: {e}"))?;
                let mut times = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
                    times.push(t.elapsed().as_nanos());
                }
                times.sort_unstable();
                Ok(format!("ok {}", times.get(n / 2).copied().unwrap_or(0)))
            }
            ["udp-loop", n, a] => {
                let addr = parse(a)?;
                let n: usize = n.parse().map_err(|e| format!("bad count: {e}"))?;
                let sock = bind_any(&addr).map_err(|e| format!("bind: {e}"))?;
                let mut times = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    sock.send_to(b"x", addr).map_err(|e| format!("send: {e}"))?;
                    times.push(t.elapsed().as_nanos());
                }
                times.sort_unstable();
                Ok(format!("ok {}", times.get(n / 2).copied().unwrap_or(0)))
            }
            ["bulk", a, bytes] => {
                let addr = parse(a)?;
                let mut left: u64 = bytes.parse().map_err(|e| format!("bad byte count: {e}"))?;
                let buf = vec![0x5au8; 1 << 20];
                let t = Instant::now();
                let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    s.write_all(&buf[..n]).map_err(|e| format!("write: {e}"))?;
                    left -= n as u64;
                }
                s.shutdown(std::net::Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
                // the reader closes once it has everything, so the time covers delivery
                let _ = std::io::Read::read(&mut s, &mut [0u8; 1]);
                Ok(format!("ok {}", t.elapsed().as_nanos()))
            }
            _ => Err(format!("unknown command {line:?}")),
        }
    })();
    result.unwrap_or_else(|e| format!("fail {e}"))
}

fn main() {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        let _ = writeln!(out, "{}", answer(&line));
        let _ = out.flush();
    }
}
