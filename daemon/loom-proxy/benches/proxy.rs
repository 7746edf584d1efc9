//! Proxy overhead against the fake provider on 127.0.0.1, direct versus through the proxy, in
//! one run: added latency p50/p99 at a fixed 1,000 requests/s, the highest sustained
//! requests/s (closed loop), and the added time to the first byte of a stream.
//!
//! `CARGO_TARGET_DIR=/work/target-loom-proxy cargo bench -p loom-proxy --bench proxy`
//! Knobs: LOOM_BENCH_RATE (default 1000), LOOM_BENCH_SECS (latency phase per side, default 4),
//! LOOM_BENCH_CONCURRENCY (closed loop, default 32).

#[path = "../tests/fake_provider/mod.rs"]
mod fake_provider;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fake_provider::{FakeProvider, Reply, Usage4};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use loom_proxy::{KeySource, Proxy, ProxyConfig, UsageRecord, WeaverLimits};
use tokio::net::TcpListener;
use zeroize::Zeroizing;

struct Keys;
impl KeySource for Keys {
    fn key(&self, _: &str) -> Option<Zeroizing<String>> {
        Some(Zeroizing::new("sk-ant-bench-key-0123456789".into()))
    }
}

type C = Client<HttpConnector, Full<Bytes>>;

const BODY: &str = r#"{"model":"claude-sonnet-4-20250514","max_tokens":256,"messages":[{"role":"user","content":"Say hello in five words."}]}"#;
const STREAM_BODY: &str = r#"{"model":"claude-sonnet-4-20250514","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"Say hello in five words."}]}"#;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn request(addr: SocketAddr, token: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}/v1/messages"))
        .header("x-api-key", token)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// One full request; returns its latency, or None on any failure.
async fn one(client: &C, addr: SocketAddr, token: &str) -> Option<Duration> {
    let t = Instant::now();
    let resp = client.request(request(addr, token, BODY)).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.into_body().collect().await.ok()?;
    Some(t.elapsed())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Open loop at `rate`/s for `n` requests: each request starts on its tick whatever the
/// others do.
async fn open_loop(client: &C, addr: SocketAddr, token: &str, rate: u64, n: u64) -> (Vec<Duration>, u64) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(n as usize);
    for _ in 0..n {
        tick.tick().await;
        let client = client.clone();
        let token = token.to_string();
        tasks.push(tokio::spawn(async move { one(&client, addr, &token).await }));
    }
    let mut lat = Vec::with_capacity(n as usize);
    let mut failed = 0;
    for t in tasks {
        match t.await.ok().flatten() {
            Some(d) => lat.push(d),
            None => failed += 1,
        }
    }
    (lat, failed)
}

/// Closed loop: `conc` workers back to back for `secs`; returns requests/s and failures.
async fn closed_loop(client: &C, addr: SocketAddr, token: &str, conc: u64, secs: f64) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (client, token) = (client.clone(), token.to_string());
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match one(&client, addr, &token).await {
                    Some(_) => done.fetch_add(1, Ordering::Relaxed),
                    None => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    (done.load(Ordering::Relaxed) as f64 / elapsed, failed.load(Ordering::Relaxed))
}

/// Time to the first body byte of a streamed Anthropic response, `n` requests one by one.
async fn ttfb(client: &C, addr: SocketAddr, token: &str, n: u64) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        let Ok(resp) = client.request(request(addr, token, STREAM_BODY)).await else {
            continue;
        };
        let mut body = resp.into_body();
        if let Some(Ok(_)) = body.frame().await {
            out.push(t.elapsed());
        }
        while let Some(Ok(_)) = body.frame().await {}
    }
    out.sort();
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run());
}

async fn run() {
    // `cargo bench` passes --bench; run any other way (`cargo test --all-targets`) it is a
    // short smoke run of the same code.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rate = env("LOOM_BENCH_RATE", 1000);
    let latency_ms = if smoke { 400 } else { env("LOOM_BENCH_SECS", 4) * 1000 };
    let conc = env("LOOM_BENCH_CONCURRENCY", 32);
    let (warmup, run_secs, ttfb_n) = if smoke { (0.1, 0.3, 50) } else { (0.5, 3.0, 1000) };
    if smoke {
        println!("smoke run (no --bench argument): numbers are not meaningful");
    }

    let up = FakeProvider::start().await;
    up.stop_recording();
    up.set_default(Reply::anthropic_json("claude-sonnet-4-20250514", "Hello there, how are you?", 14, 9));
    up.set_default_stream(Reply::anthropic_stream(
        "claude-sonnet-4-20250514",
        &["Hello", " there,", " how", " are", " you?"],
        Usage4 { input: 14, output: 9, cache_read: 0, cache_write: 0 },
    ));

    let mut providers = BTreeMap::new();
    let t: toml::Table = format!("base_url = \"{}\"\nsecret = \"anthropic_api_key\"", up.base_url()).parse().unwrap();
    providers.insert("anthropic".to_string(), t);
    let config = ProxyConfig::from_toml(&providers, &toml::Table::new()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<UsageRecord>();
    let recorded = Arc::new(AtomicU64::new(0));
    let r2 = recorded.clone();
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            r2.fetch_add(1, Ordering::Relaxed);
        }
    });
    let proxy = Proxy::builder(config, Arc::new(Keys)).usage_sink(Arc::new(tx)).build().unwrap();
    let token = proxy.register_weaver("bench", WeaverLimits::unlimited()).unwrap();
    let token = token.expose().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let paddr = listener.local_addr().unwrap();
    let p = proxy.clone();
    tokio::spawn(async move { p.serve(listener, Some("bench".into())).await });

    let client: C = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build_http();

    // Warm up both paths (connections, pools, allocator).
    closed_loop(&client, up.addr, &token, 8, warmup).await;
    closed_loop(&client, paddr, &token, 8, warmup).await;

    println!("loom-proxy benchmark: fake Anthropic upstream on 127.0.0.1, 2 tokio workers, one process");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {} cores, load average at start {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!();
    println!(
        "latency at {rate} req/s, {} s per side (non-streamed /v1/messages, ~500 B response)",
        latency_ms as f64 / 1000.0
    );
    let n = rate * latency_ms / 1000;
    let blocks = 8;
    let per_block = n / blocks;
    let mut direct = Vec::new();
    let mut proxied = Vec::new();
    let mut failures = 0;
    // Alternate blocks so drift in the machine's load hits both sides alike.
    for _ in 0..blocks {
        let (d, f) = open_loop(&client, up.addr, &token, rate, per_block).await;
        direct.extend(d);
        failures += f;
        let (p, f) = open_loop(&client, paddr, &token, rate, per_block).await;
        proxied.extend(p);
        failures += f;
    }
    direct.sort();
    proxied.sort();
    let row = |name: &str, v: &[Duration]| {
        println!(
            "  {name:<8} n={:<6} p50 {:>8.1} us  p90 {:>8.1} us  p99 {:>8.1} us  max {:>8.1} us",
            v.len(),
            us(pct(v, 0.5)),
            us(pct(v, 0.9)),
            us(pct(v, 0.99)),
            us(pct(v, 1.0))
        )
    };
    row("direct", &direct);
    row("proxied", &proxied);
    let add50 = us(pct(&proxied, 0.5)) - us(pct(&direct, 0.5));
    let add99 = us(pct(&proxied, 0.99)) - us(pct(&direct, 0.99));
    println!(
        "  added    p50 {add50:>8.1} us (target <= 200)   p99 {add99:>8.1} us (target <= 2000)   ratio p50 {:.2}x   failures {failures}",
        pct(&proxied, 0.5).as_secs_f64() / pct(&direct, 0.5).as_secs_f64()
    );

    println!();
    println!("highest sustained throughput: closed loop, {conc} concurrent clients, best of 2 x {run_secs} s per side");
    // Best of two alternating runs per side: the machine is shared.
    let (mut d_rps, mut d_fail, mut p_rps, mut p_fail) = (0.0f64, 0, 0.0f64, 0);
    for _ in 0..2 {
        let (r, f) = closed_loop(&client, up.addr, &token, conc, run_secs).await;
        d_rps = d_rps.max(r);
        d_fail += f;
        let (r, f) = closed_loop(&client, paddr, &token, conc, run_secs).await;
        p_rps = p_rps.max(r);
        p_fail += f;
    }
    println!("  direct   {d_rps:>9.0} req/s  failures {d_fail}");
    println!("  proxied  {p_rps:>9.0} req/s  failures {p_fail}  (target >= 5000; {:.2}x of direct)", p_rps / d_rps);

    println!();
    let n = ttfb_n;
    println!("time to first byte of a stream (Anthropic SSE, {n} sequential requests per side)");
    let d = ttfb(&client, up.addr, &token, n).await;
    let p = ttfb(&client, paddr, &token, n).await;
    row("direct", &d);
    row("proxied", &p);
    println!(
        "  added    p50 {:>8.1} us   p99 {:>8.1} us (target <= 1000 at p50)",
        us(pct(&p, 0.5)) - us(pct(&d, 0.5)),
        us(pct(&p, 0.99)) - us(pct(&d, 0.99))
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!();
    println!("usage records delivered: {} (every proxied request)", recorded.load(Ordering::Relaxed));
}
