//! Benchmark: time from `create -- CMD` to the first process running (p50, p99), against a
//! bare `systemd-nspawn` start of the same container measured in the same run; and loomd's
//! RSS with 100 weavers alive. Run as root: `cargo bench -p loomd --bench weavers`.
//! `LOOM_BENCH_CREATES` sets the number of creates (default 60).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{request, summary};

mod support;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Proportional set size: shared pages (the loomd binary the shims also map) are split
/// among the processes that share them, so summing it does not count them a hundred times.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn bare_nspawn_start(root: &Path, name: &str) -> f64 {
    // The same flags loom uses, minus loom: the floor for any nspawn-based backend.
    let t = Instant::now();
    let status = Command::new("systemd-nspawn")
        .args(["--quiet", "--keep-unit", "--register=no", "--private-users=pick", "--private-users-ownership=chown"])
        .args(["--as-pid2", "--console=pipe", "--private-network", "--bind-ro=/usr:/usr"])
        .arg(format!("--directory={}", root.display()))
        .arg(format!("--machine={name}"))
        .args(["--", "/bin/true"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    t.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: this benchmark runs real containers and needs root");
        return;
    }
    let creates: usize = std::env::var("LOOM_BENCH_CREATES").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let dir = tempfile::Builder::new().prefix("loom-bench").tempdir_in("/var/tmp").unwrap();
    let socket = dir.path().join("loomd.sock");
    let loomd_bin = PathBuf::from(env!("CARGO_BIN_EXE_loomd"));
    let mut loomd = Command::new(&loomd_bin)
        .args(["--backend", "nspawn", "--socket"])
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("LOOMD_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "loomd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let skeleton = dir.path().join("bare-root");
    for d in ["usr", "etc", "proc", "sys", "dev", "run", "tmp"] {
        std::fs::create_dir_all(skeleton.join(d)).unwrap();
    }
    for d in ["bin", "lib", "lib64", "sbin"] {
        std::os::unix::fs::symlink(format!("usr/{d}"), skeleton.join(d)).unwrap();
    }
    std::fs::copy("/etc/os-release", skeleton.join("etc/os-release")).unwrap();

    println!("weaver create → first process running, nspawn backend, {creates} creates (interleaved with bare nspawn)");
    let (mut loom_ms, mut bare_ms) = (vec![], vec![]);
    for i in 0..creates {
        bare_ms.push(bare_nspawn_start(&skeleton, &format!("bare{i}")));
        let body = format!(r#"{{"name":"b{i}","command":["/bin/sleep","600"]}}"#);
        let t = Instant::now();
        let (status, resp) = request(&socket, "POST", "/v1/weavers", &body);
        loom_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "{resp}");
        let (status, resp) = request(&socket, "DELETE", &format!("/v1/weavers/b{i}?force=true"), "");
        assert_eq!(status, 200, "{resp}");
    }
    let (lp50, lp99) = summary("loom weaver create (to first process)", loom_ms);
    let (bp50, bp99) = summary("bare systemd-nspawn /bin/true (whole run)", bare_ms);
    println!("ratio loom/bare: p50 {:.2}x  p99 {:.2}x", lp50 / bp50, lp99 / bp99);

    let idle = rss_kib(loomd.id());
    let t = Instant::now();
    for i in 0..100 {
        let body = format!(r#"{{"name":"alive{i}","memory":"64M","command":["/bin/sleep","600"]}}"#);
        let (status, resp) = request(&socket, "POST", "/v1/weavers", &body);
        assert_eq!(status, 200, "{resp}");
    }
    let spent = t.elapsed();
    let with_100 = rss_kib(loomd.id());
    let shims: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.starts_with(loomd_bin.as_os_str().as_encoded_bytes()) && c.windows(6).any(|w| w == b"__shim")
            })
        })
        .collect();
    let shim_kib: u64 = shims.iter().map(|p| rss_kib(*p)).sum();
    let shim_pss: u64 = shims.iter().map(|p| pss_kib(*p)).sum();
    println!("100 weavers alive (created in {:.1} s)", spent.as_secs_f64());
    println!(
        "  loomd RSS idle {:.1} MiB, with 100 weavers {:.1} MiB, per weaver {:.1} KiB",
        idle as f64 / 1024.0,
        with_100 as f64 / 1024.0,
        (with_100.saturating_sub(idle)) as f64 / 100.0
    );
    println!("  loomd PSS with 100 weavers {:.1} MiB", pss_kib(loomd.id()) as f64 / 1024.0);
    println!(
        "  shims: {} processes, RSS {:.0} KiB each (mostly loomd's shared text), PSS {:.0} KiB each, {:.1} MiB PSS in all",
        shims.len(),
        shim_kib as f64 / shims.len().max(1) as f64,
        shim_pss as f64 / shims.len().max(1) as f64,
        shim_pss as f64 / 1024.0
    );
    for i in 0..100 {
        request(&socket, "DELETE", &format!("/v1/weavers/alive{i}?force=true"), "");
    }
    let _ = loomd.kill();
    let _ = loomd.wait();
}
