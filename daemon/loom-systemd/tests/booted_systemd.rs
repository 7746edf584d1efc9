//! Real systemd: each test boots the host's systemd in a container with the harness and
//! drives it through the D-Bus seam, either from the host (over the container's bus socket at
//! /proc/PID/root/run/dbus/system_bus_socket) or from a probe binary run inside it.
//!
//! Needs root and systemd-nspawn; skips loudly without them unless LOOM_REQUIRE_PRIVILEGED=1.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use loom_systemd::harness::{self, BootedSystemd};
use loom_systemd::journal::{RunEnd, last_run_end};
use loom_systemd::{
    DbusSystemd, ExitStatus, JobKind, Phase, ServiceType, SystemdError, SystemdManager, TransientServiceSpec,
};

fn skip_or_fail(reason: &str) {
    if std::env::var("LOOM_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("LOOM_REQUIRE_PRIVILEGED=1 but {reason}");
    }
    eprintln!("!!! SKIPPING a booted-systemd test: {reason} (set LOOM_REQUIRE_PRIVILEGED=1 to fail instead)");
}

fn boot(prefix: &str, f: impl FnOnce(harness::BootBuilder) -> harness::BootBuilder) -> Option<BootedSystemd> {
    if let Some(reason) = harness::unavailable_reason() {
        skip_or_fail(&reason);
        return None;
    }
    let builder = f(BootedSystemd::builder(harness::unique_name(prefix)));
    match builder.boot() {
        Ok(c) => Some(c),
        Err(e) => panic!("booting systemd in a container failed: {e}"),
    }
}

async fn connect(c: &BootedSystemd) -> DbusSystemd {
    DbusSystemd::connect(&c.system_bus_address())
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e:?}", c.system_bus_address()))
        .with_job_timeout(Duration::from_secs(30))
        .with_journal_root(c.root())
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// Polls `check` until it returns Some, for up to 15 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn journal(c: &BootedSystemd, filter: &str) -> String {
    c.exec_ok(&["journalctl", "--no-pager", "-o", "cat", filter]).unwrap_or_default()
}

#[tokio::test]
async fn plain_commands_run_as_transient_units_with_status_exit_codes_and_journal() {
    let Some(c) = boot("lsd-plain", |b| b) else {
        return;
    };
    let sd = connect(&c).await;

    // A command that fails: the unit stays loaded as failed, with its exit code.
    let mut spec =
        TransientServiceSpec::new("plain01", "plain-weaver", sh("echo plain-out-$((40+2)) $LOOM_T; sleep 0.3; exit 3"));
    spec.service_type = ServiceType::Simple;
    spec.environment = vec!["LOOM_T=env-seen".into()];
    spec.tasks_max = Some(32);
    let started = sd.start_transient_service(&spec).await.expect("start plain01");
    assert_eq!(started.name, "loom-weaver-plain01.service");
    assert_eq!(started.control_group, "/loom.slice/loom-weaver-plain01.service");
    assert!(started.main_pid > 0, "{started:?}");
    assert!(started.job.starts_with("/org/freedesktop/systemd1/job/"));
    match sd.start_transient_service(&spec).await {
        Err(SystemdError::UnitExists(u)) => assert_eq!(u, started.name),
        other => panic!("a second start of a loaded unit must say it exists: {other:?}"),
    }
    let st = eventually("plain01 to exit", || async {
        let st = sd.unit_status(&started.name).await.unwrap().unwrap();
        (st.phase() != Phase::Running).then_some(st)
    })
    .await;
    assert_eq!(st.phase(), Phase::Failed(Some(ExitStatus::Code(3))), "{st:?}");
    assert_eq!(st.result, "exit-code");
    assert_eq!(st.main_pid, 0);
    assert_eq!(st.weaver_id.as_deref(), Some("plain01"));
    eventually("plain01's output in the journal under its SyslogIdentifier", || async {
        journal(&c, "--identifier=plain-weaver").contains("plain-out-42 env-seen").then_some(())
    })
    .await;
    assert!(
        journal(&c, "LOOM_WEAVER=plain01").contains("plain-out-42"),
        "LogExtraFields tags the unit's output with LOOM_WEAVER"
    );
    // The seam reads this run's journal by its invocation id: its output and systemd's word.
    let first_run = st.invocation_id.clone();
    eventually("plain01's run in its own journal", || async {
        let entries = sd.run_journal(&started.name, &first_run, 50).await.unwrap();
        let output = entries.iter().any(|e| e.message.contains("plain-out-42") && e.pid != Some(1));
        (output && last_run_end(&entries) == RunEnd::Failed).then_some(())
    })
    .await;
    let listed = sd.list_loom_units().await.unwrap();
    assert!(listed.iter().any(|u| u.weaver_id == "plain01" && u.active_state == "failed"), "{listed:?}");
    sd.reset_failed(&started.name).await.expect("reset plain01");
    assert_eq!(sd.unit_status(&started.name).await.unwrap(), None);

    // A command that succeeds stays loaded (RemainAfterExit) with code 0 until stopped.
    let mut ok = TransientServiceSpec::new("plain02", "plain-two", sh("exit 0"));
    ok.service_type = ServiceType::Simple;
    let started = sd.start_transient_service(&ok).await.expect("start plain02");
    let st = eventually("plain02 to exit", || async {
        let st = sd.unit_status(&started.name).await.unwrap().unwrap();
        (st.phase() != Phase::Running).then_some(st)
    })
    .await;
    assert_eq!(st.phase(), Phase::Exited(Some(ExitStatus::Code(0))), "{st:?}");
    assert_eq!((st.active_state.as_str(), st.sub_state.as_str()), ("active", "exited"));
    assert!(sd.list_loom_units().await.unwrap().iter().any(|u| u.weaver_id == "plain02"));
    assert_eq!(sd.stop_unit(&started.name).await.expect("stop plain02"), None);
    let second_run = st.invocation_id.clone();
    eventually("plain02's stop in its journal", || async {
        let entries = sd.run_journal(&started.name, &second_run, 50).await.unwrap();
        (last_run_end(&entries) == RunEnd::Stopped).then_some(())
    })
    .await;
    let entries = sd.run_journal(&started.name, &second_run, 50).await.unwrap();
    assert!(!entries.iter().any(|e| e.message.contains("plain-out-42")), "another run's lines: {entries:?}");

    // A long runner killed by a signal reports it.
    let mut long = TransientServiceSpec::new("plain03", "plain-three", vec!["/bin/sleep".into(), "300".into()]);
    long.service_type = ServiceType::Simple;
    let started = sd.start_transient_service(&long).await.expect("start plain03");
    c.exec_ok(&["kill", "-KILL", &started.main_pid.to_string()]).expect("kill plain03's main process");
    let st = eventually("plain03 to die", || async {
        let st = sd.unit_status(&started.name).await.unwrap().unwrap();
        (st.phase() != Phase::Running).then_some(st)
    })
    .await;
    assert_eq!(st.phase(), Phase::Failed(Some(ExitStatus::Signal { signal: 9, core_dumped: false })), "{st:?}");
    assert_eq!(st.exit.unwrap().shell_code(), 137);
    sd.reset_failed(&started.name).await.unwrap();

    // A start job slower than the wait's poll interval still ends `done`.
    let slow = TransientServiceSpec::new("plain05", "plain-five", sh("sleep 1.5; exec systemd-notify --ready"));
    let t0 = Instant::now();
    let started = sd.start_transient_service(&slow).await.expect("slow notify start");
    assert!(t0.elapsed() >= Duration::from_millis(1400), "{:?}", t0.elapsed());
    sd.stop_unit(&started.name).await.unwrap();

    // Units that are not there.
    let ghost = "loom-weaver-nope.service";
    assert_eq!(sd.unit_status(ghost).await.unwrap(), None);
    assert!(matches!(sd.stop_unit(ghost).await, Err(SystemdError::NoSuchUnit(_))));
    assert!(matches!(sd.reset_failed(ghost).await, Err(SystemdError::NoSuchUnit(_))));

    // Type=notify: a start whose process dies before it is ready fails the start job.
    let doomed = TransientServiceSpec::new("plain04", "plain-four", sh("exit 7"));
    match sd.start_transient_service(&doomed).await {
        Err(SystemdError::JobFailed { kind: JobKind::Start, result, unit }) => {
            assert_eq!(unit, "loom-weaver-plain04.service");
            assert_eq!(result, "failed");
        }
        other => panic!("expected a failed start job: {other:?}"),
    }
    let st = sd.unit_status("loom-weaver-plain04.service").await.unwrap().unwrap();
    assert_eq!(st.phase(), Phase::Failed(Some(ExitStatus::Code(7))), "{st:?}");

    // Bad specs never reach systemd.
    let bad = TransientServiceSpec::new("bad/id", "x", sh("true"));
    assert!(matches!(sd.start_transient_service(&bad).await, Err(SystemdError::Spec(_))));
    drop(sd);
    c.shutdown();
}

/// The flags that run a user-namespaced nspawn container inside the booted container.
fn nested_nspawn_argv(machine: &str, root: &str, script: &str) -> Vec<String> {
    harness::nested_nspawn_argv(machine, root, &[], &["/bin/sh", "-c", script])
}

/// A throwaway root with the host's /usr: `usr/` empty (bound read-only at start), the
/// top-level links into it, and an os-release for systemd-nspawn's check.
fn make_skeleton(c: &BootedSystemd, inside: &str) {
    let root = c.host_path(inside);
    std::fs::create_dir_all(root.join("usr")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    for d in ["bin", "lib", "lib64", "sbin"] {
        if Path::new("/").join(d).exists() {
            std::os::unix::fs::symlink(format!("usr/{d}"), root.join(d)).unwrap();
        }
    }
    std::fs::copy("/usr/lib/os-release", root.join("etc/os-release")).unwrap();
}

#[tokio::test]
async fn nested_nspawn_weaver_is_registered_limited_and_logged() {
    let Some(c) = boot("lsd-nest", |b| b) else {
        return;
    };
    let sd = connect(&c).await;
    let root = "/var/lib/loom/weavers/nest01/root";
    make_skeleton(&c, root);

    let mut spec = TransientServiceSpec::new(
        "nest01",
        "nestw",
        nested_nspawn_argv(
            "nestw",
            root,
            "echo nested-hello; echo uidmap $(cat /proc/self/uid_map); echo host $(cat /proc/sys/kernel/hostname); exec sleep 300",
        ),
    );
    spec.memory_max = Some(128 << 20);
    spec.tasks_max = Some(64);
    spec.cpu_quota_per_sec_usec = Some(500_000);
    let t0 = Instant::now();
    let started = sd.start_transient_service(&spec).await.expect("start nested weaver");
    eprintln!("nested nspawn weaver started (Type=notify job done) in {:?}", t0.elapsed());
    assert!(started.main_pid > 0);
    let st = sd.unit_status(&started.name).await.unwrap().unwrap();
    assert_eq!(st.phase(), Phase::Running, "{st:?}");

    let machines = c.exec_ok(&["machinectl", "list", "--no-legend"]).unwrap();
    assert!(
        machines.lines().any(|l| l.split_whitespace().next() == Some("nestw")),
        "machinectl list shows the weaver: {machines}"
    );
    let leader = sd.machine_leader("nestw").await.unwrap().expect("machined knows the weaver");
    let inside = c.exec_ok(&["nsenter", "-t", &leader.to_string(), "-a", "--", "cat", "/proc/sys/kernel/hostname"]);
    assert_eq!(inside.expect("nsenter into the weaver's leader").trim(), "nestw");
    assert_eq!(sd.machine_leader("no-such-machine").await.unwrap(), None);
    let log = eventually("the weaver's output under its SyslogIdentifier", || async {
        let log = journal(&c, "--identifier=nestw");
        // The three lines reach the journal one by one; wait for the last.
        log.lines().any(|l| l.starts_with("host ")).then_some(log)
    })
    .await;
    assert!(log.contains("nested-hello"), "{log}");
    let uidmap = log.lines().find(|l| l.starts_with("uidmap")).expect("the uid_map line");
    let fields: Vec<&str> = uidmap.split_whitespace().collect();
    assert_eq!(fields[1], "0", "{uidmap}");
    assert_ne!(fields[2], "0", "root inside is not root outside: {uidmap}");
    assert!(log.contains("host nestw"), "hostname is the machine name: {log}");

    // The limits land in the unit's cgroup, which the weaver's processes are under.
    let cg = format!("/sys/fs/cgroup/memory{}", started.control_group);
    let limit = c.exec_ok(&["cat", &format!("{cg}/memory.limit_in_bytes")]).expect("memory cgroup");
    assert_eq!(limit.trim(), (128u64 << 20).to_string());
    let pids_max =
        c.exec_ok(&["cat", &format!("/sys/fs/cgroup/pids{}/pids.max", started.control_group)]).expect("pids cgroup");
    assert_eq!(pids_max.trim(), "64");
    let quota = c
        .exec_ok(&["cat", &format!("/sys/fs/cgroup/cpu{}/cpu.cfs_quota_us", started.control_group)])
        .expect("cpu cgroup");
    let period =
        c.exec_ok(&["cat", &format!("/sys/fs/cgroup/cpu{}/cpu.cfs_period_us", started.control_group)]).unwrap();
    let (q, p): (u64, u64) = (quota.trim().parse().unwrap(), period.trim().parse().unwrap());
    assert_eq!(q * 1_000_000 / p, 500_000, "half a CPU: {q}/{p}");

    let listed = sd.list_loom_units().await.unwrap();
    assert!(
        listed.iter().any(|u| u.weaver_id == "nest01" && u.active_state == "active" && u.sub_state == "running"),
        "{listed:?}"
    );

    let t0 = Instant::now();
    let after = sd.stop_unit(&started.name).await.expect("stop nested weaver");
    eprintln!("nested weaver stopped in {:?}, after: {after:?}", t0.elapsed());
    if let Some(st) = after {
        assert_ne!(st.phase(), Phase::Running);
        sd.reset_failed(&started.name).await.unwrap();
    }
    assert_eq!(sd.unit_status(&started.name).await.unwrap(), None);
    let machines = c.exec_ok(&["machinectl", "list", "--no-legend"]).unwrap();
    assert!(!machines.contains("nestw"), "machine unregistered: {machines}");
    assert_eq!(sd.machine_leader("nestw").await.unwrap(), None);

    // The memory limit applies inside the weaver: a probe that allocates past it (tail
    // buffers a line without end) is killed, and the weaver goes on.
    let mut hog = TransientServiceSpec::new(
        "nest03",
        "nesthog",
        nested_nspawn_argv("nesthog", root, "head -c 400M /dev/zero | tail -n 1 > /dev/null; echo hog-exit $?"),
    );
    hog.memory_max = Some(64 << 20);
    hog.service_type = ServiceType::Simple;
    let started = sd.start_transient_service(&hog).await.expect("start the memory hog");
    let log = eventually("the memory hog to be killed", || async {
        let log = journal(&c, "--identifier=nesthog");
        log.contains("hog-exit").then_some(log)
    })
    .await;
    assert!(log.contains("hog-exit 137"), "killed by SIGKILL past MemoryMax: {log}");
    let st = eventually("the hog weaver to exit", || async {
        let st = sd.unit_status(&started.name).await.unwrap()?;
        (st.phase() != Phase::Running).then_some(st)
    })
    .await;
    assert_eq!(st.phase(), Phase::Exited(Some(ExitStatus::Code(0))), "{st:?}");
    assert_eq!(sd.stop_unit(&started.name).await.unwrap(), None);

    // A weaver whose container cannot start fails its start job (Type=notify).
    let bad = TransientServiceSpec::new(
        "nest02",
        "nestbad",
        nested_nspawn_argv("nestbad", "/var/lib/loom/weavers/missing", "true"),
    );
    assert!(matches!(
        sd.start_transient_service(&bad).await,
        Err(SystemdError::JobFailed { kind: JobKind::Start, .. })
    ));
    drop(sd);
    c.shutdown();
}

#[tokio::test]
async fn probe_inside_the_container_uses_its_own_system_bus_and_sockets_reach_the_host() {
    let probe = Path::new(env!("CARGO_BIN_EXE_loom-systemd-probe"));
    let sockdir = std::env::temp_dir().join(harness::unique_name("lsd-sock"));
    std::fs::create_dir_all(&sockdir).unwrap();
    let Some(c) =
        boot("lsd-probe", |b| b.bind_ro(probe.parent().unwrap(), "/opt/loom-test").bind(&sockdir, "/run/loomd"))
    else {
        return;
    };
    let inner = format!("/opt/loom-test/{}", probe.file_name().unwrap().to_str().unwrap());

    let out = c
        .exec_ok(&[&inner, "start", "probe01", "probew", "--simple", "--", "/bin/sleep", "300"])
        .expect("probe start inside the container");
    assert!(out.contains("unit=loom-weaver-probe01.service"), "{out}");
    assert!(out.contains("control_group=/loom.slice/loom-weaver-probe01.service"), "{out}");
    let status = c.exec_ok(&[&inner, "status", "loom-weaver-probe01.service"]).unwrap();
    assert!(status.contains("phase=Running"), "{status}");
    assert!(status.contains("weaver_id=probe01"), "{status}");
    let list = c.exec_ok(&[&inner, "list"]).unwrap();
    assert!(list.contains("loom-weaver-probe01.service probe01 active running"), "{list}");
    // The host-side client sees the same unit over the same bus.
    let sd = connect(&c).await;
    assert!(sd.unit_status("loom-weaver-probe01.service").await.unwrap().is_some());
    let stopped = c.exec_ok(&[&inner, "stop", "loom-weaver-probe01.service"]).unwrap();
    assert!(stopped.contains("loaded=no"), "sleep ends cleanly on SIGTERM: {stopped}");

    // The bound binary also runs as a unit of the container's systemd, as loomd will.
    let out = c
        .exec_ok(&[
            "systemd-run",
            "--wait",
            "--pipe",
            "--quiet",
            "--unit=probe-as-unit",
            &inner,
            "start",
            "probe02",
            "probew2",
            "--simple",
            "--",
            "/bin/sleep",
            "300",
        ])
        .expect("the probe as a transient unit");
    assert!(out.contains("unit=loom-weaver-probe02.service"), "{out}");
    assert!(sd.unit_status("loom-weaver-probe02.service").await.unwrap().is_some());
    assert_eq!(sd.stop_unit("loom-weaver-probe02.service").await.unwrap(), None);

    // A socket made inside under a bound host directory is reachable from the host, both at
    // the host directory and through /proc/PID/root.
    for (sock, host_side) in
        [("/run/loomd/a.sock", sockdir.join("a.sock")), ("/run/loomd/b.sock", c.host_path("/run/loomd/b.sock"))]
    {
        let mut server = c.command(&[inner.as_str(), "serve-once", sock]).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(server.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line, "listening\n");
        let mut s =
            UnixStream::connect(&host_side).unwrap_or_else(|e| panic!("connect to {}: {e}", host_side.display()));
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, "ok\n");
        assert!(server.wait().unwrap().success());
    }
    drop(sd);
    c.shutdown();
    let _ = std::fs::remove_dir_all(&sockdir);
}

#[tokio::test]
async fn concurrent_starts_and_stops_on_one_connection_each_get_their_own_job() {
    let Some(c) = boot("lsd-many", |b| b) else { return };
    let sd = connect(&c).await;
    let specs: Vec<TransientServiceSpec> = (0..20)
        .map(|i| {
            let mut s = TransientServiceSpec::new(
                format!("many{i:02}"),
                format!("many-{i}"),
                vec!["/bin/sleep".into(), "300".into()],
            );
            s.service_type = ServiceType::Simple;
            s
        })
        .collect();
    let started = futures_util::future::join_all(specs.iter().map(|s| sd.start_transient_service(s))).await;
    let mut jobs = Vec::new();
    for (spec, r) in specs.iter().zip(started) {
        let u = r.unwrap_or_else(|e| panic!("start {}: {e:?}", spec.weaver_id));
        assert_eq!(u.name, spec.unit_name().unwrap());
        assert!(u.main_pid > 0);
        jobs.push(u.job);
    }
    jobs.sort();
    jobs.dedup();
    assert_eq!(jobs.len(), 20, "every start waited for its own job");
    let listed = sd.list_loom_units().await.unwrap();
    assert_eq!(listed.iter().filter(|u| u.weaver_id.starts_with("many") && u.sub_state == "running").count(), 20);

    // A fresh connection (loomd after a restart) finds them all and reads their status.
    let again = connect(&c).await;
    for s in &specs {
        let st = again.unit_status(&s.unit_name().unwrap()).await.unwrap().expect("still loaded");
        assert_eq!(st.phase(), Phase::Running);
        assert_eq!(st.weaver_id.as_deref(), Some(s.weaver_id.as_str()));
    }
    let stops = futures_util::future::join_all(specs.iter().map(|s| {
        let name = s.unit_name().unwrap();
        let sd = &sd;
        async move { sd.stop_unit(&name).await }
    }))
    .await;
    for r in stops {
        assert_eq!(r.expect("stop"), None, "sleep ends cleanly on SIGTERM and is unloaded");
    }
    assert!(sd.list_loom_units().await.unwrap().is_empty());
    drop((sd, again));
    c.shutdown();
}
