//! What the property tests of several crates share (loom-proxy's include this file by path):
//! how many cases to run, and cutting a byte stream into chunks at arbitrary points for the
//! properties that say a parser gives the same whatever the split.

// Each including test crate uses what it needs of this.
#![allow(dead_code)]

use proptest::prelude::ProptestConfig;

/// Modest by default so debug builds stay fast; `PROPTEST_CASES=100000` digs deeper.
pub fn cases(n: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// `bytes` cut at `points` (each taken modulo the length, then sorted): every chunk, empty
/// ones included, in order.
pub fn split_at_points(bytes: &[u8], mut points: Vec<usize>) -> Vec<&[u8]> {
    points.iter_mut().for_each(|p| *p %= bytes.len() + 1);
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for p in points {
        chunks.push(&bytes[start..p]);
        start = p;
    }
    chunks.push(&bytes[start..]);
    chunks
}
