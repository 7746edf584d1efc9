//! What both weaver benchmarks share: one HTTP request over loomd's socket, and the
//! percentiles they report.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// One request over the socket (a new connection each, as the CLI makes): status and body.
pub fn request(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).expect("connect to loomd");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    std::io::Read::read_to_string(&mut s, &mut raw).unwrap();
    let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Prints one line of percentiles and returns (p50, p99).
pub fn summary(name: &str, mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&ms, 0.5), percentile(&ms, 0.99));
    println!("{name:<38} n={:<4} p50 {p50:>7.1} ms  p99 {p99:>7.1} ms  max {:>7.1} ms", ms.len(), ms[ms.len() - 1]);
    (p50, p99)
}
