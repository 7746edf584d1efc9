//! Thread search latency over 1,000,000 stored events.
//!
//! `CARGO_TARGET_DIR=/work/target-loom-threads cargo bench -p loom-threads --bench search`
//! Env: `LOOM_BENCH_EVENTS` (default 1000000), `LOOM_BENCH_DB` (default under the target dir;
//! reused when it already holds that many events), `LOOM_BENCH_ROUNDS` (default 30).
//!
//! Prints p50/p99 of `loom_threads::search` (ranked, two-stage, snippets, join) per query class
//! and overall, against a baseline measured in the same run: a bare, unranked FTS5 MATCH of
//! the same first token with the same LIMIT.

use std::time::{Duration, Instant};

use loom_threads::{EventKind, SearchQuery, ThreadEvent, append_events, migrate, search};
use rusqlite::Connection;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic data, no dependency.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Skewed towards small indexes, like real vocabularies.
    fn zipf(&mut self, n: usize) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((n as f64).powf(u) as usize).saturating_sub(1).min(n - 1)
    }
}

const WORDS: &[&str] = &[
    "the", "test", "fails", "because", "config", "value", "is", "missing", "when", "we", "parse", "file", "error",
    "returns", "none", "instead", "of", "default", "fix", "update", "handler", "request", "response", "struct",
    "field", "function", "module", "crate", "build", "passes", "now", "let", "me", "read", "look", "at", "change",
    "add", "remove", "check", "that", "this", "should", "work", "after", "compile", "warning", "unused", "variable",
    "type", "mismatch", "expected", "found", "borrow", "lifetime", "trait", "impl", "method", "call", "loop", "retry",
    "timeout", "socket", "stream", "buffer", "parser", "token", "cache", "index", "query",
];
const SYLL: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "za", "pe", "qu", "do", "fi", "gu", "hy", "ji", "ke", "ly", "mo",
    "nu",
];

fn ident(r: &mut Rng) -> String {
    let a = WORDS[r.zipf(WORDS.len())];
    let n = r.below(3) + 2;
    let b: String = (0..n).map(|_| SYLL[r.below(SYLL.len())]).collect();
    format!("{a}_{b}")
}

fn path(r: &mut Rng) -> String {
    let dirs = ["src", "tests", "crates/core/src", "crates/net/src", "lib", "app/models"];
    let d = dirs[r.zipf(dirs.len())];
    let f: String = (0..r.below(2) + 1).map(|_| SYLL[r.below(SYLL.len())]).collect();
    let ext = ["rs", "py", "ts", "go", "toml"][r.zipf(5)];
    format!("{d}/{f}.{ext}")
}

fn prose(r: &mut Rng, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        match r.below(10) {
            0 => s.push_str(&ident(r)),
            1 => s.push_str(&path(r)),
            _ => s.push_str(WORDS[r.zipf(WORDS.len())]),
        }
    }
    s.push('.');
    s
}

fn event_text(r: &mut Rng, kind: EventKind) -> String {
    match kind {
        EventKind::ToolCall => match r.below(4) {
            0 => format!("read_file {{\"path\":\"{}\"}}", path(r)),
            1 => format!("bash {{\"command\":\"cargo test -p {} -- {}\"}}", ident(r), ident(r)),
            2 => format!("grep {{\"pattern\":\"{}\",\"path\":\"src\"}}", ident(r)),
            _ => format!(
                "edit_file {{\"path\":\"{}\",\"old_str\":\"{}\",\"new_str\":\"{}\"}}",
                path(r),
                ident(r),
                ident(r)
            ),
        },
        EventKind::ToolResult => match r.below(3) {
            0 => format!(
                "error[E{:04}]: {} --> {}:{}:{}\n  | let {} = {}(&cfg);",
                r.below(800),
                prose(r, 4),
                path(r),
                r.below(400),
                r.below(80),
                ident(r),
                ident(r)
            ),
            1 => format!(
                "fn {}(cfg: &Config) -> Result<{}, Error> {{\n    let {} = cfg.{}.clone();\n    {}\n}}",
                ident(r),
                ident(r),
                ident(r),
                ident(r),
                prose(r, 8)
            ),
            _ => format!(
                "running 12 tests\ntest {}::tests::{} ... FAILED\ntest {}::tests::{} ... ok\n{}",
                ident(r),
                ident(r),
                ident(r),
                ident(r),
                prose(r, 10)
            ),
        },
        _ => {
            let n = 20 + r.below(40);
            prose(r, n)
        }
    }
}

fn build(conn: &mut Connection, total: usize) {
    let mut r = Rng(0x5eed_1234_abcd_0001);
    let per_thread = 500;
    let kinds = [
        EventKind::ModelRequest,
        EventKind::ModelReply,
        EventKind::ToolCall,
        EventKind::ToolResult,
        EventKind::ToolCall,
        EventKind::ToolResult,
    ];
    let started = Instant::now();
    let threads = total.div_ceil(per_thread);
    for t in 0..threads {
        let weaver = format!("w{}", t % 200);
        let thread = format!("th-{t}");
        let n = per_thread.min(total - t * per_thread);
        let events: Vec<ThreadEvent> = (0..n)
            .map(|i| {
                let kind = kinds[i % kinds.len()];
                ThreadEvent {
                    thread_id: thread.clone(),
                    weaver_id: weaver.clone(),
                    seq: i as u64 + 1,
                    ts_ms: 1_700_000_000_000 + (t * per_thread + i) as i64 * 1_000,
                    kind,
                    iteration: (i / 50) as u32 + 1,
                    text: event_text(&mut r, kind),
                    payload: serde_json::Value::Null,
                }
            })
            .collect();
        append_events(conn, &weaver, &events).expect("append");
        if t % 200 == 0 {
            eprintln!("  {} / {total} events, {:?}", t * per_thread, started.elapsed());
        }
    }
    eprintln!("built {total} events in {:?}", started.elapsed());
    conn.execute_batch("INSERT INTO events_fts(events_fts) VALUES('optimize');").expect("optimize");
    eprintln!("optimized after {:?}", started.elapsed());
}

/// A query text and an optional weaver filter.
type Query = (String, Option<String>);

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let total: usize = std::env::var("LOOM_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rounds: usize = std::env::var("LOOM_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let db = std::env::var("LOOM_BENCH_DB").unwrap_or_else(|_| format!("{target}/loom-threads-bench-{total}.db"));
    let mut conn = Connection::open(&db).expect("open db");
    loom_threads::configure_connection(&conn).unwrap();
    migrate(&mut conn).expect("migrate");
    let have: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
    if have as usize != total {
        eprintln!("building {db} with {total} events (found {have})");
        drop(conn);
        let _ = std::fs::remove_file(&db);
        let _ = std::fs::remove_file(format!("{db}-wal"));
        let _ = std::fs::remove_file(format!("{db}-shm"));
        conn = Connection::open(&db).unwrap();
        loom_threads::configure_connection(&conn).unwrap();
        migrate(&mut conn).unwrap();
        build(&mut conn, total);
    }
    let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    println!("events: {total}, db: {db} ({} MB)", size / 1_000_000);

    // Query classes: what people search threads for.
    let mut r = Rng(0xfeed_beef);
    let mut classes: Vec<(&str, Vec<Query>)> = vec![
        ("identifier", (0..20).map(|_| (ident(&mut r), None)).collect()),
        ("path", (0..20).map(|_| (path(&mut r), None)).collect()),
        ("error code", (0..20).map(|_| (format!("E{:04}", r.below(800)), None)).collect()),
        (
            "partial path (lib.rs)",
            (0..20)
                .map(|_| {
                    let p = path(&mut r);
                    (p.rsplit('/').next().unwrap().to_owned(), None)
                })
                .collect(),
        ),
        (
            "two words",
            (0..20)
                .map(|_| (format!("{} {}", WORDS[r.below(WORDS.len())], WORDS[r.below(WORDS.len())]), None))
                .collect(),
        ),
        ("common word", (0..20).map(|_| (WORDS[r.below(12)].to_owned(), None)).collect()),
        ("identifier + weaver", (0..20).map(|_| (ident(&mut r), Some(format!("w{}", r.below(200))))).collect()),
    ];
    // Warm the page cache the way a running loomd has it.
    for (_, qs) in &classes {
        for (q, w) in qs {
            let _ = search(&conn, &SearchQuery { text: q.clone(), weaver: w.clone(), limit: 20, ..Default::default() });
        }
    }
    let mut all = Vec::new();
    let mut all_base = Vec::new();
    println!(
        "{:<24} {:>9} {:>9} {:>12} {:>12} {:>8}",
        "class", "p50 ms", "p99 ms", "base p50 ms", "base p99 ms", "hits"
    );
    for (name, qs) in classes.iter_mut() {
        let mut times = Vec::new();
        let mut base = Vec::new();
        let mut hits = 0usize;
        for _ in 0..rounds {
            for (q, w) in qs.iter() {
                let t = Instant::now();
                let h =
                    search(&conn, &SearchQuery { text: q.clone(), weaver: w.clone(), limit: 20, ..Default::default() })
                        .expect("search");
                times.push(t.elapsed());
                hits += h.len();
                let tok = loom_threads::text::fts_query(q).unwrap().exact;
                let first = tok.split(" AND ").next().unwrap().to_owned();
                let t = Instant::now();
                let mut st =
                    conn.prepare_cached("SELECT rowid FROM events_fts WHERE events_fts MATCH ?1 LIMIT 20").unwrap();
                let n = st.query_map([&first], |r| r.get::<_, i64>(0)).unwrap().count();
                base.push(t.elapsed());
                std::hint::black_box(n);
            }
        }
        all.extend_from_slice(&times);
        all_base.extend_from_slice(&base);
        println!(
            "{:<24} {:>9.3} {:>9.3} {:>12.3} {:>12.3} {:>8.1}",
            name,
            ms(pct(&mut times, 0.5)),
            ms(pct(&mut times, 0.99)),
            ms(pct(&mut base, 0.5)),
            ms(pct(&mut base, 0.99)),
            hits as f64 / (rounds * qs.len()) as f64
        );
    }
    let (p50, p99) = (pct(&mut all, 0.5), pct(&mut all, 0.99));
    let (b50, b99) = (pct(&mut all_base, 0.5), pct(&mut all_base, 0.99));
    println!(
        "ALL ({} searches)          p50 {:.3} ms  p99 {:.3} ms   baseline p50 {:.3} ms p99 {:.3} ms   ratio p50 {:.1}x",
        all.len(),
        ms(p50),
        ms(p99),
        ms(b50),
        ms(b99),
        p50.as_secs_f64() / b50.as_secs_f64().max(1e-9)
    );
    println!("target: p99 <= 20 ms: {}", if p99 <= Duration::from_millis(20) { "MET" } else { "MISSED" });
}
