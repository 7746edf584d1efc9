//! Real weavers on the `systemd` backend: the host's systemd is booted in a container (the
//! loom-systemd harness), loomd runs in it as a unit (`--backend systemd`), and each weaver is
//! a transient unit running systemd-nspawn, registered with machined and logging to journald.
//! The host drives loomd through its socket, bound to a host directory, with the real CLI.
//!
//! Needs root and systemd-nspawn; skips loudly without them unless LOOM_REQUIRE_PRIVILEGED=1.

mod common;
mod common_systemd;

use std::time::Duration;

use common_systemd::{LoomdInSystemd, bootable};

/// Booted containers share the host's unified cgroup tree (and so one `loom.slice`): two of
/// them at once would see each other's weaver cgroups come and go.
static ONE_BOOTED_SYSTEM_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn field(log: &str, k: &str) -> String {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("{k}=")))
        .unwrap_or_else(|| panic!("{k} missing in {log}"))
        .to_string()
}

fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn weavers_run_as_units_registered_limited_logged_and_managed() {
    let _one = ONE_BOOTED_SYSTEM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !bootable("weavers_run_as_units_registered_limited_logged_and_managed") {
        return;
    }
    let d = LoomdInSystemd::boot("lsb-life");
    let status = d.cli_json(&["status"]);
    assert_eq!(status["backend"], "systemd", "{status}");

    // Isolation, seen from inside the weaver; it stays up so machined lists it.
    let probe = "echo UIDMAP=$(cat /proc/self/uid_map | tr -s ' '); echo PID=$$; echo HOST=$(hostname); \
                 test -e /run/loomd && echo RUNLOOMD=present || echo RUNLOOMD=absent; \
                 test -e /var/lib/loom && echo STATE=present || echo STATE=absent; \
                 echo PROCS=$(ls /proc | grep -c '^[0-9]'); echo \"LITERAL=%n %% \\$HOME ${NOPE:-dflt}\"; \
                 echo PROBE-DONE; exec sleep 300";
    let w = d.create(&["--name", "iso", "--", "/bin/sh", "-c", probe]);
    assert_eq!(w["state"], "running", "{w}");
    assert_eq!(w["backend"], "systemd", "{w}");
    let id = w["id"].as_str().unwrap().to_string();
    let unit = format!("loom-weaver-{id}.service");
    let machines = d.c.exec_ok(&["machinectl", "list", "--no-legend"]).unwrap();
    assert!(
        machines.lines().any(|l| l.split_whitespace().next() == Some("iso")),
        "machinectl list shows the weaver: {machines}"
    );
    let show = d.c.exec_ok(&["systemctl", "show", &unit, "-p", "Slice,Delegate,KillMode,SyslogIdentifier"]).unwrap();
    for want in ["Slice=loom.slice", "Delegate=yes", "KillMode=mixed", "SyslogIdentifier=iso"] {
        assert!(show.lines().any(|l| l == want), "{want} missing in {show}");
    }
    // Its output reaches the journal under its name and its id, and `loom weaver logs`.
    let log = eventually("the probe's output in the journal", Duration::from_secs(20), || {
        let log = d.journal(&["-t", "iso"]);
        log.contains("PROBE-DONE").then_some(log)
    });
    assert!(d.journal(&[&format!("LOOM_WEAVER={id}")]).contains("PROBE-DONE"));
    let uidmap: Vec<u64> = field(&log, "UIDMAP").split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(uidmap[0], 0);
    assert_ne!(uidmap[1], 0, "root inside must not be root outside: {log}");
    assert!(
        field(&log, "PID").parse::<u32>().unwrap_or_else(|_| panic!("{log}")) <= 3,
        "the pid namespace must be private: {log}"
    );
    assert_eq!(field(&log, "HOST"), "iso");
    assert_eq!(field(&log, "LITERAL"), "%n %% $HOME dflt", "systemd must pass the command through unexpanded: {log}");
    assert_eq!(field(&log, "RUNLOOMD"), "absent");
    assert_eq!(field(&log, "STATE"), "absent");
    assert!(field(&log, "PROCS").parse::<u32>().unwrap() < 10, "other processes visible: {log}");
    let cli_log = String::from_utf8_lossy(&d.cli(&["weaver", "logs", "iso"]).stdout).into_owned();
    assert!(cli_log.contains("UIDMAP=") && cli_log.contains("PROBE-DONE"), "loom weaver logs: {cli_log}");

    // create returns once the command itself runs; exec joins it.
    let w = d.create(&["--name", "sleeper", "--env", "GREETING=hello there", "--", "/bin/sleep", "300"]);
    assert_eq!(w["state"], "running", "{w}");
    let pid = w["pid"].as_i64().unwrap();
    assert_eq!(
        d.read_inside(&format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        b"/bin/sleep\x00300\x00",
        "create must return once the command itself runs"
    );
    let out = d.cli(&["weaver", "exec", "sleeper", "--", "/bin/sh", "-c", common::EXEC_SCRIPT]);
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello there from sleeper\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    // The exec'd process is in the weaver's unit (its limits and audit apply to it).
    let sleeper_id = w["id"].as_str().unwrap().to_string();
    let mut child = std::process::Command::new(common_systemd::loom_bin())
        .args(["--socket", d.socket.to_str().unwrap(), "weaver", "exec", "sleeper", "--", "/bin/sleep", "7"])
        .spawn()
        .unwrap();
    let in_unit = eventually("the exec'd sleep in the weaver's unit", Duration::from_secs(10), || {
        let ps =
            d.c.exec_ok(&["systemd-cgls", "--no-pager", "-u", &format!("loom-weaver-{sleeper_id}.service")]).ok()?;
        ps.contains("sleep 7").then_some(ps)
    });
    assert!(in_unit.contains("sleep 300"), "{in_unit}");
    let _ = child.kill();
    let _ = child.wait();

    // The memory limit applies: a probe allocating past it is killed; under it, it lives.
    d.create(&["--name", "mem", "--memory", "64M", "--", "/bin/sh", "-c", "head -c 200M /dev/zero | tail > /dev/null"]);
    let v = d.wait_for("mem", "exited", Duration::from_secs(60), |v| v["state"] == "exited");
    assert_eq!(v["exit_code"], 137, "the probe must be OOM-killed (SIGKILL): {v}");
    d.create(&[
        "--name",
        "mem-ok",
        "--memory",
        "512M",
        "--",
        "/bin/sh",
        "-c",
        "head -c 200M /dev/zero | tail > /dev/null",
    ]);
    let v = d.wait_for("mem-ok", "exited", Duration::from_secs(60), |v| v["state"] == "exited");
    assert_eq!(v["exit_code"], 0, "{v}");

    // Exit codes are recorded; a command that is not there fails the create with the reason.
    d.create(&["--name", "three", "--", "/bin/sh", "-c", "exit 3"]);
    let v = d.wait_for("three", "exited", Duration::from_secs(20), |v| v["state"] == "exited");
    assert_eq!(v["exit_code"], 3, "{v}");
    let out = d.cli(&["--json", "weaver", "create", "--name", "ghost", "--", "/no/such/program"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found"), "the reason reaches the client: {err}");
    assert_eq!(d.inspect("ghost")["state"], "failed");

    // stop, start, rm.
    let stopped = d.cli_json(&["weaver", "stop", "sleeper"]);
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert!(!d.exists_inside(&format!("/proc/{pid}/cmdline")), "the weaver's process must be gone after stop");
    let st = d.c.exec(&["systemctl", "is-active", &format!("loom-weaver-{sleeper_id}.service")]).unwrap();
    assert_ne!(String::from_utf8_lossy(&st.stdout).trim(), "active");
    let started = d.cli_json(&["weaver", "start", "sleeper"]);
    assert_eq!(started["state"], "running", "{started}");
    assert_ne!(started["pid"], w["pid"]);
    let out = d.cli(&["--json", "weaver", "rm", "sleeper"]);
    assert!(
        !out.status.success(),
        "rm of a running weaver needs --force: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        d.loomd_journal(),
        d.journal(&["-n", "40", "-u", &format!("loom-weaver-{sleeper_id}.service")])
    );
    d.cli_json(&["weaver", "rm", "--force", "sleeper"]);
    let units = d.c.exec_ok(&["systemctl", "list-units", "--all", "--no-legend", "--plain", "loom-weaver-*"]).unwrap();
    assert!(!units.contains(&sleeper_id), "rm leaves no unit behind: {units}");
    let mut ours: Vec<String> = vec![sleeper_id.clone()];
    for name in ["iso", "mem", "mem-ok", "three", "ghost"] {
        ours.push(d.inspect(name)["id"].as_str().unwrap().to_string());
    }
    for name in ["iso", "mem", "mem-ok", "three", "ghost"] {
        d.cli_json(&["weaver", "rm", "--force", name]);
    }
    assert_eq!(d.cli_json(&["weaver", "ps"]), serde_json::json!([]));
    let journal = d.loomd_journal();
    assert!(!journal.contains("cgroup id changed"), "systemd must take the cgroup prepared for audit: {journal}");
    // (Containers booted side by side share the unified hierarchy: look only at ours.)
    let left = d.c.exec_ok(&["ls", "/sys/fs/cgroup/unified/loom.slice"]).unwrap_or_default();
    let left: Vec<&str> = left.lines().filter(|l| ours.iter().any(|id| l.contains(id.as_str()))).collect();
    assert!(left.is_empty(), "no weaver cgroup left behind: {left:?}");
    let machines = d.c.exec_ok(&["machinectl", "list", "--no-legend"]).unwrap();
    assert!(machines.trim().is_empty(), "no machine left: {machines}");
}

#[test]
fn weavers_survive_a_sigkill_of_loomd_and_are_adopted() {
    let _one = ONE_BOOTED_SYSTEM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !bootable("weavers_survive_a_sigkill_of_loomd_and_are_adopted") {
        return;
    }
    let d = LoomdInSystemd::boot("lsb-adopt");
    let mut pids = vec![];
    for name in ["keep-a", "keep-b", "keep-c"] {
        let w = d.create(&["--name", name, "--", "/bin/sleep", "300"]);
        assert_eq!(w["state"], "running", "{w}");
        pids.push(w["pid"].clone());
    }
    d.create(&["--name", "ends-while-away", "--", "/bin/sh", "-c", "sleep 2; exit 4"]);
    d.create(&["--name", "ok-while-away", "--", "/bin/sh", "-c", "sleep 2; exit 0"]);
    let old = d.loomd_pid();
    d.kill9_loomd();
    std::thread::sleep(Duration::from_secs(3));
    // The units outlived loomd's.
    let machines = d.c.exec_ok(&["machinectl", "list", "--no-legend"]).unwrap();
    for name in ["keep-a", "keep-b", "keep-c"] {
        assert!(machines.contains(name), "{name} must outlive loomd: {machines}");
    }
    d.start_loomd();
    assert_ne!(d.loomd_pid(), old, "a new loomd");
    common::assert_readopted(&d.cli_json(&["weaver", "ps"]), 5, &pids, |k| d.inspect(k));
    // A clean exit unloads the unit at once; the journal still says how it ended.
    let ok = d.inspect("ok-while-away");
    assert_eq!((&ok["state"], &ok["exit_code"]), (&"exited".into(), &0.into()), "{ok}");
    // Adopted weavers are supervised again: stop works and their end is noticed.
    let v = d.cli_json(&["weaver", "stop", "keep-a"]);
    assert_eq!(v["state"], "stopped");
    let pid = pids[1].as_i64().unwrap();
    d.c.exec_ok(&["kill", "-KILL", &pid.to_string()]).unwrap();
    let v = d
        .wait_for("keep-b", "exited after its process was killed", Duration::from_secs(20), |v| v["state"] == "exited");
    assert_ne!(v["exit_code"], 0, "{v}");
    let out = d.cli(&["weaver", "exec", "keep-c", "--", "/bin/hostname"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "keep-c\n", "exec into an adopted weaver");
    assert_eq!(d.cli_json(&["weaver", "ps"]).as_array().unwrap().len(), 5);
}

#[test]
fn audit_events_reach_the_booted_systems_journal() {
    let _one = ONE_BOOTED_SYSTEM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !bootable("audit_events_reach_the_booted_systems_journal") {
        return;
    }
    let d = LoomdInSystemd::boot("sdaudit");
    let status = d.cli_json(&["status"]);
    assert!(
        status["sections"]["audit"]["attached"].as_array().is_some_and(|a| !a.is_empty()),
        "audit did not start: {status}"
    );
    let w =
        d.create(&["--name", "heard", "--", "/bin/sh", "-c", "/bin/echo journald-audit-probe; echo x > /workspace/f"]);
    let id = w["id"].as_str().unwrap().to_string();
    let entries = eventually("the exec in the journal", Duration::from_secs(20), || {
        let out = d.journal(&["-t", "loom-audit", &format!("LOOM_WEAVER={id}"), "-o", "json"]);
        out.contains("journald-audit-probe").then_some(out)
    });
    let exec = entries
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| {
            e["LOOM_EVENT"] == "exec" && e["LOOM_ARGV"].as_str().is_some_and(|a| a.contains("journald-audit-probe"))
        })
        .unwrap_or_else(|| panic!("no exec entry: {entries}"));
    assert_eq!(exec["SYSLOG_IDENTIFIER"], "loom-audit");
    assert_eq!(exec["LOOM_WEAVER"], id.as_str());
    assert!(exec["MESSAGE_ID"].as_str().is_some_and(|m| m.len() == 32), "{exec}");
    for field in ["LOOM_PID", "LOOM_PPID", "LOOM_UID", "LOOM_COMM"] {
        assert!(exec[field].is_string(), "{field} missing: {exec}");
    }
    assert!(entries.contains("/workspace/f"), "the write is in the journal too");
    // And in `loom audit`, from the store's index.
    let indexed = d.cli_json(&["audit", "--weaver", "heard", "--kind", "exec"]);
    assert!(indexed.to_string().contains("journald-audit-probe"), "{indexed}");
}
