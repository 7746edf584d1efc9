//! Audit overhead: a syscall-heavy workload (100,000 open/close, then 10,000
//! fork+exec of /bin/true) run by the probe in a v2 cgroup, in three modes
//! interleaved per round in the same run:
//!   untraced  no audit programs loaded (baseline)
//!   attached  programs attached, cgroup not watched (cost to non-weaver processes)
//!   traced    cgroup watched; events drained, decoded and written as NDJSON to /dev/null
//! Prints median/min/max wall time per phase and mode, the overhead against
//! the baseline, events/s, losses, and the CPU time of this (draining) process.
//!
//! Run as root: `cargo bench -p loom-audit --bench audit_overhead`
//! Knobs: LOOM_AUDIT_BENCH_ROUNDS (5), LOOM_AUDIT_BENCH_OPENS (100000),
//! LOOM_AUDIT_BENCH_EXECS (10000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{TestCgroup, run_probe};
use loom_audit::{Audit, AuditConfig, NdjsonSink};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Summed `run_time_ns` and `run_cnt` of the loaded `sys_enter_openat`
/// programs, from `bpftool prog show` (None without bpftool).
fn openat_prog_stats() -> Option<(u64, u64)> {
    let out = std::process::Command::new("bpftool").args(["prog", "show"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = (0, 0);
    for line in text.lines().filter(|l| l.contains("name sys_enter_openat ")) {
        let field = |key: &str| -> Option<u64> {
            let mut it = line.split_whitespace();
            it.find(|w| *w == key)?;
            it.next()?.parse().ok()
        };
        total.0 += field("run_time_ns")?;
        total.1 += field("run_cnt")?;
    }
    Some(total)
}

#[derive(Default)]
struct Samples {
    /// ns per sys_enter_openat invocation during the open phase
    prog_ns: Vec<f64>,
    open: Vec<Duration>,
    exec: Vec<Duration>,
    cpu: Vec<Duration>,
    events: Vec<u64>,
    lost: Vec<u64>,
}

fn stats(v: &[Duration]) -> (Duration, Duration, Duration) {
    let mut s = v.to_vec();
    s.sort();
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn run_phases(cg: &TestCgroup, target: &str, opens: u64, execs: u64) -> (Duration, Duration, Option<f64>) {
    let before = openat_prog_stats();
    let t = Instant::now();
    run_probe(Some(cg), &[format!("burst-open:{target},{opens}")]);
    let open = t.elapsed();
    let prog_ns = match (before, openat_prog_stats()) {
        (Some((ns0, n0)), Some((ns1, n1))) if n1 > n0 => Some((ns1 - ns0) as f64 / (n1 - n0) as f64),
        _ => None,
    };
    let t = Instant::now();
    run_probe(Some(cg), &[format!("burst-exec:{execs},/bin/true")]);
    (open, t.elapsed(), prog_ns)
}

fn main() {
    if !common::privileged("audit_overhead bench") {
        return;
    }
    // cargo bench passes --bench; nothing else is accepted
    let rounds = env_num("LOOM_AUDIT_BENCH_ROUNDS", 5).max(1) as usize;
    let opens = env_num("LOOM_AUDIT_BENCH_OPENS", 100_000);
    let execs = env_num("LOOM_AUDIT_BENCH_EXECS", 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // BPF run-time statistics while the returned fd lives (for ns per invocation)
    let _stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    let cg = TestCgroup::new("bench");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("f").display().to_string();
    let mut modes: [(&str, Samples); 3] =
        [("untraced", Samples::default()), ("attached", Samples::default()), ("traced", Samples::default())];
    println!("audit_overhead: {rounds} rounds of {opens} open/close + {execs} exec, modes interleaved");
    for round in 0..rounds {
        for (mode, samples) in modes.iter_mut() {
            let _guard = rt.enter();
            let audit = (*mode != "untraced").then(|| {
                let mut a = Audit::start(&AuditConfig::default()).expect("start audit");
                let rx = a.take_events().unwrap();
                let consumer = rt.spawn(async move {
                    let mut sink = NdjsonSink::open(std::path::Path::new("/dev/null")).unwrap();
                    loom_audit::pump(rx, &mut sink, |_| {}).await;
                });
                if *mode == "traced" {
                    a.watch(cg.id, "bench").unwrap();
                }
                (a, consumer)
            });
            let before = audit.as_ref().map(|(a, _)| a.stats());
            let cpu0 = cpu_time();
            let (open, exec, prog_ns) = run_phases(&cg, &target, opens, execs);
            if audit.is_some() {
                samples.prog_ns.extend(prog_ns);
            }
            if let Some((a, consumer)) = audit {
                let s = rt.block_on(common::settle(&a));
                let b = before.unwrap();
                samples.cpu.push(cpu_time() - cpu0);
                samples.events.push(s.seq_issued - b.seq_issued);
                samples.lost.push(s.kernel_lost + s.user_dropped - b.kernel_lost - b.user_dropped);
                drop(a);
                rt.block_on(consumer).unwrap();
            }
            samples.open.push(open);
            samples.exec.push(exec);
            eprintln!("round {round} {mode}: open {open:?} exec {exec:?}");
        }
    }
    let (base_open, _, _) = stats(&modes[0].1.open);
    let (base_exec, _, _) = stats(&modes[0].1.exec);
    println!(
        "{:<9} {:>28} {:>9} {:>28} {:>9} {:>12} {:>10} {:>6} {:>12}",
        "mode",
        "open phase median [min,max]",
        "overhead",
        "exec phase median [min,max]",
        "overhead",
        "events/run",
        "events/s",
        "lost",
        "drain CPU"
    );
    for (mode, s) in &modes {
        let (om, omin, omax) = stats(&s.open);
        let (em, emin, emax) = stats(&s.exec);
        let pct = |m: Duration, b: Duration| (m.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0;
        let (events, rate, lost, cpu) = if s.events.is_empty() {
            ("-".to_string(), "-".to_string(), "-".to_string(), "-".to_string())
        } else {
            let ev = *s.events.iter().max().unwrap();
            let cpu = stats(&s.cpu).0;
            (
                ev.to_string(),
                format!("{:.0}", ev as f64 / (om + em).as_secs_f64()),
                s.lost.iter().sum::<u64>().to_string(),
                format!("{:.2}s ({:.0}%)", cpu.as_secs_f64(), cpu.as_secs_f64() / (om + em).as_secs_f64() * 100.0),
            )
        };
        println!(
            "{mode:<9} {:>28} {:>8.1}% {:>28} {:>8.1}% {events:>12} {rate:>10} {lost:>6} {cpu:>12}",
            format!("{:.3}s [{:.3},{:.3}]", om.as_secs_f64(), omin.as_secs_f64(), omax.as_secs_f64()),
            pct(om, base_open),
            format!("{:.3}s [{:.3},{:.3}]", em.as_secs_f64(), emin.as_secs_f64(), emax.as_secs_f64()),
            pct(em, base_exec),
        );
    }
    for (mode, s) in &modes[1..] {
        let mut v = s.prog_ns.clone();
        v.sort_by(f64::total_cmp);
        if let Some(m) = v.get(v.len() / 2) {
            println!("{mode}: sys_enter_openat program run time, median {m:.0} ns per invocation");
        }
    }
    let (tm_o, _, _) = stats(&modes[2].1.open);
    let (tm_e, _, _) = stats(&modes[2].1.exec);
    println!(
        "total wall-time overhead traced vs untraced: {:.1}% (open phase: {} open events at {:.0}/s)",
        ((tm_o + tm_e).as_secs_f64() / (base_open + base_exec).as_secs_f64() - 1.0) * 100.0,
        opens,
        opens as f64 / tm_o.as_secs_f64()
    );
}
