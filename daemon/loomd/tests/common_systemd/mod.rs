//! Test support for the `systemd` backend: a systemd booted in a container (the harness of
//! loom-systemd) with loomd running inside it as a unit of that systemd, its socket bound to a
//! host directory so the host test drives it with raw HTTP and the real `loom` CLI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use loom_systemd::harness::{self, BootedSystemd};

// Every test crate that has this module has `common` beside it.
use super::common::poll;

/// Where the test binaries' directory is bound inside the container.
pub const BIN_DIR: &str = "/opt/loom";
pub const SOCKET_INSIDE: &str = "/run/loomd/loomd.sock";

/// True when systemd can be booted in a container here; else skips loudly (or fails under
/// LOOM_REQUIRE_PRIVILEGED=1).
pub fn bootable(what: &str) -> bool {
    let Some(reason) = harness::unavailable_reason() else {
        return true;
    };
    if std::env::var("LOOM_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("LOOM_REQUIRE_PRIVILEGED=1 but {what} cannot boot systemd in a container: {reason}");
    }
    eprintln!(
        "!!! SKIPPED {what}: cannot boot systemd in a container: {reason} (LOOM_REQUIRE_PRIVILEGED=1 fails instead)"
    );
    false
}

pub use crate::common::{loom_bin, loomd_bin};

/// A booted systemd with loomd (`--backend systemd`) running in it as the unit `loomd.service`.
pub struct LoomdInSystemd {
    pub c: BootedSystemd,
    /// The host directory bound at /run/loomd inside.
    pub sockdir: tempfile::TempDir,
    pub socket: PathBuf,
    /// How many times loomd was started: each start is a new unit (`loomd`, `loomd-1`, ...),
    /// since a killed one may stay loaded for a while.
    starts: std::sync::atomic::AtomicU32,
}

/// What loomd needs when it itself runs in a container: eBPF (the audit and the egress
/// programs: the capabilities, the syscalls nspawn's filter holds back, the host's tracefs and
/// bpffs) and the weaver networks (bridge, veths and NAT on the host's network, which the
/// container shares).
pub const LOOMD_NEEDS: [&str; 4] = [
    "--capability=CAP_BPF,CAP_PERFMON,CAP_SYS_RESOURCE,CAP_NET_ADMIN",
    "--system-call-filter=bpf perf_event_open",
    "--bind=/sys/kernel/tracing:/sys/kernel/tracing",
    "--bind=/sys/fs/bpf:/sys/fs/bpf",
];

impl LoomdInSystemd {
    pub fn boot(prefix: &str) -> LoomdInSystemd {
        Self::boot_with(prefix, &[])
    }

    /// Boots with extra systemd-nspawn arguments for the outer container, after
    /// [`LOOMD_NEEDS`].
    pub fn boot_with(prefix: &str, nspawn_args: &[&str]) -> LoomdInSystemd {
        let bindir = loomd_bin().parent().expect("loomd's directory").to_path_buf();
        let _ = loom_bin();
        let sockdir = tempfile::Builder::new().prefix("loomd-sd-sock").tempdir_in("/var/tmp").unwrap();
        let mut builder = BootedSystemd::builder(harness::unique_name(prefix))
            .bind_ro(&bindir, BIN_DIR)
            .bind(sockdir.path(), "/run/loomd")
            .timeout(Duration::from_secs(120));
        for a in LOOMD_NEEDS.iter().chain(nspawn_args) {
            builder = builder.nspawn_arg(*a);
        }
        let c = builder.boot().unwrap_or_else(|e| panic!("booting systemd in a container: {e}"));
        let socket = sockdir.path().join("loomd.sock");
        let d = LoomdInSystemd { c, sockdir, socket, starts: Default::default() };
        d.start_loomd();
        d
    }

    /// Starts loomd as `loomd.service` (Type=notify: systemd-run returns once loomd is ready).
    pub fn start_loomd(&self) {
        let n = self.starts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let unit = if n == 0 { "--unit=loomd".to_string() } else { format!("--unit=loomd-{n}") };
        let exe = format!("{BIN_DIR}/loomd");
        let out = self
            .c
            .exec(&[
                "systemd-run",
                &unit,
                "--collect",
                "-p",
                "Type=notify",
                "--setenv=LOOMD_LOG=info,loomd=debug",
                &exe,
                "--backend",
                "systemd",
                "--socket",
                SOCKET_INSIDE,
                "--state-dir",
                "/var/lib/loom",
            ])
            .unwrap();
        assert!(
            out.status.success(),
            "starting loomd in the container failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.loomd_journal()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.try_request("GET", "/v1/status", None).is_ok_and(|(s, _)| s == 200) {
            assert!(
                Instant::now() < deadline,
                "loomd does not answer on {}: {}",
                self.socket.display(),
                self.loomd_journal()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The unit loomd runs as now.
    pub fn loomd_unit(&self) -> String {
        match self.starts.load(std::sync::atomic::Ordering::SeqCst) {
            0 | 1 => "loomd.service".into(),
            n => format!("loomd-{}.service", n - 1),
        }
    }

    /// loomd's main pid inside the container.
    pub fn loomd_pid(&self) -> u32 {
        let unit = self.loomd_unit();
        let out = self.c.exec_ok(&["systemctl", "show", "-p", "MainPID", "--value", &unit]).unwrap();
        out.trim().parse().unwrap_or(0)
    }

    /// SIGKILLs loomd's main process and waits until systemd has noticed.
    pub fn kill9_loomd(&self) {
        let pid = self.loomd_pid();
        assert!(pid > 0, "loomd is not running");
        self.c.exec_ok(&["kill", "-KILL", &pid.to_string()]).unwrap();
        // Wait until systemd has noticed: the unit's main process is gone.
        let unit = self.loomd_unit();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.loomd_pid() != 0 {
            if Instant::now() >= deadline {
                let status = self.c.exec(&["systemctl", "status", "--no-pager", &unit]).unwrap();
                panic!("{unit} still has a main process after SIGKILL: {}", String::from_utf8_lossy(&status.stdout));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    pub fn loomd_journal(&self) -> String {
        let out = self.c.exec(&["journalctl", "--no-pager", "-o", "cat", "-n", "60", "-u", "loomd*"]);
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    /// `journalctl -o cat --no-pager ARGS` inside the container.
    pub fn journal(&self, args: &[&str]) -> String {
        let mut argv = vec!["journalctl", "-o", "cat", "--no-pager"];
        argv.extend_from_slice(args);
        self.c.exec(&argv).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    pub fn try_request(&self, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, Vec<u8>)> {
        crate::common::request(&self.socket, method, path, body)
    }

    pub fn inspect(&self, key: &str) -> serde_json::Value {
        let (status, body) = self
            .try_request("GET", &format!("/v1/weavers/{key}"), None)
            .unwrap_or_else(|e| panic!("inspect {key}: {e}"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        assert_eq!(status, 200, "inspect {key}: {v}");
        v
    }

    pub fn wait_for(
        &self,
        key: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let context = || format!("\n{}", self.loomd_journal());
        poll::wait_for_state(key, what, timeout, || self.inspect(key), pred, context)
    }

    /// Runs the real CLI against this loomd.
    pub fn cli(&self, args: &[&str]) -> Output {
        crate::common::cli(&self.socket, args)
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        crate::common::cli_json(&self.socket, args, || self.loomd_journal())
    }

    pub fn create(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["weaver", "create"];
        full.extend_from_slice(args);
        self.cli_json(&full)
    }

    /// A file inside the container, read from the host.
    pub fn read_inside(&self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.c.host_path(path)).ok()
    }

    pub fn exists_inside(&self, path: &str) -> bool {
        Path::new(&self.c.host_path(path)).exists()
    }
}

impl Drop for LoomdInSystemd {
    fn drop(&mut self) {
        // Powering the container off stops loomd and every weaver unit in it.
        let _ = std::fs::remove_file(&self.socket);
    }
}
