//! Benchmark of the `systemd` backend: time from `POST /v1/weavers` (`loom weaver create --
//! CMD`) to its answer, which comes once the weaver's first process runs, p50 and p99, with
//! loomd running as a unit of a systemd booted in a container (the loom-systemd harness).
//! Baseline, measured in the same run against the same systemd: a bare `StartTransientUnit`
//! of systemd-nspawn with the same isolation flags (from the host over the container's bus),
//! timed until its payload runs.
//!
//! Run as root: `cargo bench -p loomd --bench systemd_weavers`. `LOOM_BENCH_CREATES` sets the
//! number of creates (default 60).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use loom_systemd::harness::{self, BootedSystemd};
use loom_systemd::{DbusSystemd, SystemdManager, TransientServiceSpec};
use support::{request, summary};

mod support;

/// The floor: systemd-nspawn started as a transient unit with loom's isolation flags, timed
/// until its payload has run its first command (it drops a marker).
async fn bare_unit_start(sd: &DbusSystemd, c: &BootedSystemd, i: usize) -> f64 {
    let root = format!("/var/lib/loom-bench/r{i}");
    let host_root = c.host_path(&root);
    let _ = std::fs::remove_dir_all(&host_root);
    loomd::rootfs::create_skeleton(&host_root).expect("skeleton root");
    std::fs::create_dir_all(host_root.join("workspace")).unwrap();
    let marker = host_root.join(".loom/started");
    let name = format!("bare-{i}");
    let flags = ["--as-pid2", "--console=pipe", "--private-network", "--chdir=/workspace"];
    let payload = ["/bin/sh", "-c", "mkdir -p /.loom; : > /.loom/started; exec sleep 300"];
    let argv = harness::nested_nspawn_argv(&name, &root, &flags, &payload);
    let mut spec = TransientServiceSpec::new(format!("bare{i}"), name, argv);
    spec.memory_max = Some(4 << 30);
    spec.tasks_max = Some(4096);
    spec.cpu_quota_per_sec_usec = Some(2_000_000);
    let t = Instant::now();
    sd.start_transient_service(&spec).await.expect("bare start");
    while !marker.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "bare nspawn unit never ran its payload");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let unit = spec.unit_name().unwrap();
    if let Ok(Some(_)) = sd.stop_unit(&unit).await {
        let _ = sd.reset_failed(&unit).await;
    }
    let _ = std::fs::remove_dir_all(&host_root);
    ms
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Some(reason) = harness::unavailable_reason() {
        eprintln!("!!! SKIPPED systemd_weavers bench: {reason}");
        return;
    }
    let n: usize = std::env::var("LOOM_BENCH_CREATES").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let loomd_bin = PathBuf::from(env!("CARGO_BIN_EXE_loomd"));
    let sockdir = std::env::temp_dir().join(harness::unique_name("loom-sd-bench"));
    std::fs::create_dir_all(&sockdir).unwrap();
    let c = BootedSystemd::builder(harness::unique_name("lsb-bench"))
        .bind_ro(loomd_bin.parent().unwrap(), "/opt/loom")
        .bind(&sockdir, "/run/loomd")
        .timeout(Duration::from_secs(120))
        .boot()
        .expect("boot systemd in a container");
    c.exec_ok(&[
        "systemd-run",
        "--unit=loomd",
        "-p",
        "Type=notify",
        "--setenv=LOOMD_LOG=warn",
        "/opt/loom/loomd",
        "--backend",
        "systemd",
        "--socket",
        "/run/loomd/loomd.sock",
        "--state-dir",
        "/var/lib/loom",
    ])
    .expect("start loomd in the container");
    let socket = sockdir.join("loomd.sock");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sd = rt.block_on(DbusSystemd::connect(&c.system_bus_address())).expect("the container's bus");

    // Interleave loom creates and bare unit starts so that both see the same machine load.
    let (mut loom_ms, mut bare_ms) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let body = format!(r#"{{"name":"b{i}","command":["/bin/sleep","300"]}}"#);
        let t = Instant::now();
        let (status, resp) = request(&socket, "POST", "/v1/weavers", &body);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert!(status == 200 || status == 201, "create failed ({status}): {resp}");
        assert!(resp.contains("\"running\""), "{resp}");
        loom_ms.push(ms);
        let (status, resp) = request(&socket, "DELETE", &format!("/v1/weavers/b{i}?force=true"), "");
        assert_eq!(status, 200, "{resp}");
        bare_ms.push(rt.block_on(bare_unit_start(&sd, &c, i)));
    }
    println!("systemd backend, inside a booted systemd (create -> first process running):");
    let (l50, l99) = summary("loom weaver create -- /bin/sleep 300", loom_ms);
    let (b50, b99) = summary("bare StartTransientUnit of systemd-nspawn", bare_ms);
    println!("ratio loom/bare: p50 {:.2}x  p99 {:.2}x", l50 / b50, l99 / b99);
    drop(sd);
    c.shutdown();
    let _ = std::fs::remove_dir_all(&sockdir);
}
