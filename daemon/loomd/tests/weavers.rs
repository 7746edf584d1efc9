//! Real weavers on the nspawn backend, driven through a real loomd and the real CLI.

mod common;

use std::time::Duration;

use common::{Loomd, privileged};

fn create(d: &Loomd, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["weaver", "create"];
    full.extend_from_slice(args);
    d.cli_json(&full)
}

#[test]
fn isolation_holds_inside_a_weaver() {
    if !privileged("isolation_holds_inside_a_weaver") {
        return;
    }
    let d = Loomd::start();
    let state = d.state_dir();
    let probe = format!(
        "echo UIDMAP=$(cat /proc/self/uid_map | tr -s ' '); echo PID=$$; echo HOST=$(hostname); \
         test -e /run/loomd && echo RUNLOOMD=present || echo RUNLOOMD=absent; \
         test -e {state} && echo STATE=present || echo STATE=absent; \
         test -S {sock} && echo SOCK=present || echo SOCK=absent; \
         echo PROCS=$(ls /proc | grep -c '^[0-9]'); touch /workspace/ok && echo WS=writable; \
         touch /usr/x 2>/dev/null && echo USR=writable || echo USR=readonly",
        state = state.display(),
        sock = d.socket.display()
    );
    let w = create(&d, &["--name", "iso", "--", "/bin/sh", "-c", &probe]);
    assert_eq!(w["state"], "running", "{w}");
    d.wait_for("iso", "exited", Duration::from_secs(20), |v| v["state"] == "exited");
    let log = d.logs("iso");
    let field = |k: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing in {log}"))
            .to_string()
    };
    let uidmap: Vec<u64> = field("UIDMAP").split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(uidmap[0], 0);
    assert_ne!(uidmap[1], 0, "root inside must not be root outside: {log}");
    assert!(field("PID").parse::<u32>().unwrap() <= 3, "the pid namespace must be private: {log}");
    assert_eq!(field("HOST"), "iso");
    assert_eq!(field("RUNLOOMD"), "absent");
    assert_eq!(field("STATE"), "absent");
    assert_eq!(field("SOCK"), "absent");
    assert!(field("PROCS").parse::<u32>().unwrap() < 10, "host processes visible: {log}");
    assert_eq!(field("WS"), "writable");
    assert_eq!(field("USR"), "readonly");
}

#[test]
fn the_memory_limit_kills_a_probe_that_allocates_past_it() {
    if !privileged("the_memory_limit_kills_a_probe") {
        return;
    }
    let d = Loomd::start();
    // `tail` keeps the whole last "line" of 200M of zeros in memory.
    create(
        &d,
        &["--name", "mem", "--memory", "64M", "--", "/bin/sh", "-c", "head -c 200M /dev/zero | tail > /dev/null"],
    );
    let v = d.wait_for("mem", "exited", Duration::from_secs(30), |v| v["state"] == "exited");
    assert_eq!(v["exit_code"], 137, "the probe must be OOM-killed (SIGKILL): {v}");
    // Under the limit the same probe survives.
    create(
        &d,
        &["--name", "mem-ok", "--memory", "512M", "--", "/bin/sh", "-c", "head -c 200M /dev/zero | tail > /dev/null"],
    );
    let v = d.wait_for("mem-ok", "exited", Duration::from_secs(30), |v| v["state"] == "exited");
    assert_eq!(v["exit_code"], 0, "{v}");
}

#[test]
fn create_returns_once_the_first_process_runs_and_exec_works() {
    if !privileged("create_returns_once_the_first_process_runs") {
        return;
    }
    let d = Loomd::start();
    let w = create(&d, &["--name", "sleeper", "--env", "GREETING=hello there", "--", "/bin/sleep", "300"]);
    assert_eq!(w["state"], "running");
    let pid = w["pid"].as_i64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, b"/bin/sleep\x00300\x00", "create must return once the command itself runs");
    let out = d.cli(&["weaver", "exec", "sleeper", "--", "/bin/sh", "-c", common::EXEC_SCRIPT]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello there from sleeper\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    // stdin reaches the command.
    let mut child = std::process::Command::new(common::loom_bin())
        .args(["--socket", d.socket.to_str().unwrap(), "weaver", "exec", "sleeper", "--", "/bin/cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"through stdin\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    let stopped = d.cli_json(&["weaver", "stop", "sleeper"]);
    assert_eq!(stopped["state"], "stopped");
    assert!(std::fs::metadata(format!("/proc/{pid}")).is_err(), "the weaver's process must be gone after stop");
    let started = d.cli_json(&["weaver", "start", "sleeper"]);
    assert_eq!(started["state"], "running");
    assert_ne!(started["pid"], w["pid"]);
    let out = d.cli(&["--json", "weaver", "rm", "sleeper"]);
    assert!(!out.status.success(), "rm of a running weaver needs --force");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    d.cli_json(&["weaver", "rm", "--force", "sleeper"]);
    assert_eq!(d.cli_json(&["weaver", "ps"]), serde_json::json!([]));
    // No cgroup of the weaver is left in any hierarchy (v2, v1 controllers, name=systemd).
    let id = w["id"].as_str().unwrap();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let left = hierarchy.path().join("loom").join(id);
        assert!(!left.exists(), "{} was left behind", left.display());
    }
}

#[test]
fn exit_codes_restart_policy_and_ttl() {
    if !privileged("exit_codes_restart_policy_and_ttl") {
        return;
    }
    let d = Loomd::start();
    create(&d, &["--name", "three", "--", "/bin/sh", "-c", "exit 3"]);
    let v = d.wait_for("three", "exited", Duration::from_secs(20), |v| v["state"] == "exited");
    assert_eq!(v["exit_code"], 3);
    create(&d, &["--name", "flaky", "--restart", "on-failure", "--", "/bin/sh", "-c", "exit 1"]);
    // Between runs it says why it ended; a run that has just started again says nothing yet.
    let v = d.wait_for("flaky", "restarted twice, between runs", Duration::from_secs(30), |v| {
        v["restarts"].as_u64() >= Some(2) && v["reason"].is_string()
    });
    assert!(v["reason"].as_str().unwrap_or("").contains("exited with code 1"), "{v}");
    d.cli_json(&["weaver", "stop", "flaky"]);
    let stopped = d.inspect("flaky")["restarts"].clone();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.inspect("flaky")["restarts"], stopped, "a stopped weaver must not restart");
    assert_eq!(d.inspect("flaky")["state"], "stopped");
    create(&d, &["--name", "short", "--ttl", "2s", "--", "/bin/sleep", "300"]);
    let v = d.wait_for("short", "stopped by its ttl", Duration::from_secs(20), |v| v["state"] == "stopped");
    assert!(v["reason"].as_str().unwrap().contains("ttl"), "{v}");
}

#[test]
fn weavers_survive_a_sigkill_of_loomd_and_are_adopted() {
    if !privileged("weavers_survive_a_sigkill_of_loomd") {
        return;
    }
    let mut d = Loomd::start();
    let mut pids = vec![];
    for name in ["keep-a", "keep-b", "keep-c"] {
        pids.push(create(&d, &["--name", name, "--", "/bin/sleep", "300"])["pid"].clone());
    }
    create(&d, &["--name", "ends-while-away", "--", "/bin/sh", "-c", "sleep 2; exit 4"]);
    d.kill9();
    std::thread::sleep(Duration::from_secs(3));
    d.spawn();
    common::assert_readopted(&d.cli_json(&["weaver", "ps"]), 4, &pids, |k| d.inspect(k));
    // Adopted weavers are supervised again: their end is noticed, and stop works.
    let v = d.cli_json(&["weaver", "stop", "keep-a"]);
    assert_eq!(v["state"], "stopped");
    let pid = pids[1].as_i64().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let v = d
        .wait_for("keep-b", "exited after its process was killed", Duration::from_secs(20), |v| v["state"] == "exited");
    // nspawn's stub init reports a payload killed by a signal as a plain failure (255).
    assert_ne!(v["exit_code"], 0, "{v}");
}

#[test]
fn sigterm_leaves_weavers_running_and_sighup_reloads_the_config() {
    if !privileged("sigterm_leaves_weavers_running") {
        return;
    }
    let mut d = Loomd::start_with_config(Some("[weaver]\nmemory = \"512M\"\n"));
    let w = create(&d, &["--name", "stays", "--", "/bin/sleep", "300"]);
    assert_eq!(w["spec"]["memory"], "512M");
    std::fs::write(d.config.as_ref().unwrap(), "[weaver]\nmemory = \"768M\"\n").unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let probe = create(&d, &["--", "/bin/true"]);
        let memory = probe["spec"]["memory"].clone();
        d.cli_json(&["weaver", "rm", "-f", probe["id"].as_str().unwrap()]);
        if memory == "768M" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload the config");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A broken config on SIGHUP keeps the old one and loomd running.
    std::fs::write(d.config.as_ref().unwrap(), "[weaver]\nmemory = \"lots\"\n").unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.cli_json(&["status"])["backend"], "nspawn");
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let pid = w["pid"].as_i64().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "SIGTERM to loomd must leave weavers running");
    std::fs::write(d.config.as_ref().unwrap(), "").unwrap();
    d.spawn();
    let v = d.inspect("stays");
    assert_eq!(v["state"], "running");
    assert_eq!(v["pid"], w["pid"]);
}
