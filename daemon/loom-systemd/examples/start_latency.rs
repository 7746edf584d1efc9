//! Start and stop latency of weaver units through the D-Bus seam, against systemd booted in a
//! container by the harness. Baseline: a plain `sleep` unit (`Type=simple`), which costs
//! systemd's job machinery and a fork. Weaver: a user-namespaced `systemd-nspawn` on a
//! skeleton root (`Type=notify`, so the start returns once the payload runs).
//!
//! Run as root: `cargo run -p loom-systemd --example start_latency` (LOOM_BENCH_N=50 by default).

use std::time::{Duration, Instant};

use loom_systemd::harness::{self, BootedSystemd};
use loom_systemd::{DbusSystemd, ServiceType, SystemdManager, TransientServiceSpec};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let p50 = pct(&v, 0.5);
    println!(
        "{what:<28} n={:<4} p50={:>8.2}ms p99={:>8.2}ms max={:>8.2}ms",
        v.len(),
        p50.as_secs_f64() * 1e3,
        pct(&v, 0.99).as_secs_f64() * 1e3,
        v.last().unwrap().as_secs_f64() * 1e3
    );
    p50
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(reason) = harness::unavailable_reason() {
        eprintln!("start_latency: {reason}");
        std::process::exit(2);
    }
    let n: usize = std::env::var("LOOM_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let c = BootedSystemd::boot(harness::unique_name("lsd-bench"))?;
    let root = "/var/lib/loom/weavers/bench/root";
    let host_root = c.host_path(root);
    std::fs::create_dir_all(host_root.join("usr"))?;
    std::fs::create_dir_all(host_root.join("etc"))?;
    for d in ["bin", "lib", "lib64", "sbin"] {
        std::os::unix::fs::symlink(format!("usr/{d}"), host_root.join(d))?;
    }
    std::fs::copy("/usr/lib/os-release", host_root.join("etc/os-release"))?;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let sd = DbusSystemd::connect(&c.system_bus_address()).await?;
        let (mut base_start, mut base_stop, mut w_start, mut w_stop) = (vec![], vec![], vec![], vec![]);
        for i in 0..n {
            let mut spec =
                TransientServiceSpec::new(format!("base{i}"), "bench-base", vec!["/bin/sleep".into(), "300".into()]);
            spec.service_type = ServiceType::Simple;
            let t = Instant::now();
            let u = sd.start_transient_service(&spec).await?;
            base_start.push(t.elapsed());
            let t = Instant::now();
            if sd.stop_unit(&u.name).await?.is_some() {
                sd.reset_failed(&u.name).await?;
            }
            base_stop.push(t.elapsed());

            let machine = format!("bench{i}");
            let argv = harness::nested_nspawn_argv(&machine, root, &[], &["/bin/sleep", "300"]);
            let mut spec = TransientServiceSpec::new(format!("weaver{i}"), machine.clone(), argv);
            spec.memory_max = Some(256 << 20);
            spec.tasks_max = Some(256);
            let t = Instant::now();
            let u = sd.start_transient_service(&spec).await?;
            w_start.push(t.elapsed());
            let t = Instant::now();
            if sd.stop_unit(&u.name).await?.is_some() {
                sd.reset_failed(&u.name).await?;
            }
            w_stop.push(t.elapsed());
        }
        let b = report("baseline start (sleep)", base_start);
        report("baseline stop", base_stop);
        let w = report("weaver start (nspawn,notify)", w_start);
        report("weaver stop", w_stop);
        println!("weaver start p50 / baseline start p50 = {:.1}x", w.as_secs_f64() / b.as_secs_f64());
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    c.shutdown();
    Ok(())
}
