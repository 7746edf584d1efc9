//! The journald sink against a real systemd-journald: a private journal
//! namespace (`systemd-journald NS`, socket /run/systemd/journal.NS/socket)
//! receives real kernel events through Audit -> pump -> JournaldSink, and
//! `journalctl --namespace NS -t loom-audit LOOM_WEAVER=ID` finds them.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{TestCgroup, privileged, run_probe, settle};
use loom_audit::{Audit, AuditConfig, AuditEvent, EventDetail, SinkChoice, open_sink, pump};

const JOURNALD: &str = "/lib/systemd/systemd-journald";

struct Journald {
    child: Child,
    ns: String,
}

impl Journald {
    fn start(ns: &str) -> Journald {
        let child = Command::new(JOURNALD).arg(ns).spawn().expect("start journald");
        let j = Journald { child, ns: ns.to_string() };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !j.socket().exists() {
            assert!(Instant::now() < deadline, "journald did not create {}", j.socket().display());
            std::thread::sleep(Duration::from_millis(50));
        }
        j
    }

    fn socket(&self) -> std::path::PathBuf {
        Path::new(&format!("/run/systemd/journal.{}", self.ns)).join("socket")
    }

    /// Entries of `weaver` as JSON objects, full values (`--all`).
    fn entries(&self, weaver: &str) -> Vec<serde_json::Value> {
        let out = Command::new("journalctl")
            .args(["--namespace", &self.ns, "--all", "-o", "json", "--no-pager", "-t", "loom-audit"])
            .arg(format!("LOOM_WEAVER={weaver}"))
            .output()
            .expect("journalctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("journalctl json"))
            .collect()
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(format!("/run/systemd/journal.{}", self.ns));
        if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
            let _ = std::fs::remove_dir_all(format!("/var/log/journal/{}.{}", id.trim(), self.ns));
            let _ = std::fs::remove_dir_all(format!("/run/log/journal/{}.{}", id.trim(), self.ns));
        }
    }
}

fn field<'a>(e: &'a serde_json::Value, k: &str) -> &'a str {
    e[k].as_str().unwrap_or_else(|| panic!("no {k} in {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_events_reach_a_real_journald_with_their_fields() {
    if !privileged("journald") {
        return;
    }
    if !Path::new(JOURNALD).exists() {
        let why = format!("journald test: {JOURNALD} not found (apt-get install systemd)");
        assert!(std::env::var("LOOM_REQUIRE_PRIVILEGED").as_deref() != Ok("1"), "{why}");
        eprintln!("SKIPPED {why}");
        return;
    }
    let ns = format!("loomaudit{}", std::process::id());
    let journald = Journald::start(&ns);
    let weaver = format!("w-journald-{}", std::process::id());

    let mut audit = Audit::start(&AuditConfig::default()).expect("start audit");
    let rx = audit.take_events().unwrap();
    let cg = TestCgroup::new("journald");
    audit.watch(cg.id, &weaver).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    let probe =
        run_probe(Some(&cg), &["exec:/bin/true,line one\nline two".to_string(), format!("write:{}", file.display())]);
    settle(&audit).await;
    drop(audit); // closes the queue, so pump returns

    let config =
        AuditConfig { sink: SinkChoice::Journald, journal_socket: journald.socket(), ..AuditConfig::default() };
    let mut sink = open_sink(&config, dir.path()).unwrap();
    assert_eq!(sink.describe(), "journald");
    pump(rx, sink.as_mut(), |_| {}).await;
    // and one entry too big for a datagram: goes through a memfd
    let big = AuditEvent {
        cgroup_id: cg.id,
        comm: "big".into(),
        ..AuditEvent::new(
            weaver.clone(),
            "execve",
            EventDetail::Exec {
                path: "/bin/big".into(),
                argv: vec!["x".repeat(400_000)],
                path_truncated: false,
                argv_truncated: false,
                old_pid: 1,
            },
        )
    };
    sink.write(&big).unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let entries = loop {
        let e = journald.entries(&weaver);
        if e.iter().any(|e| e["LOOM_COMM"] == "big") || Instant::now() > deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let exec = entries
        .iter()
        .find(|e| e["LOOM_EVENT"] == "exec" && e["LOOM_PATH"] == "/bin/true")
        .unwrap_or_else(|| panic!("no exec of /bin/true in {entries:#?}"));
    assert_eq!(field(exec, "MESSAGE_ID"), "f5ff1ffaecae4072bab3924c1b95eded");
    assert_eq!(field(exec, "LOOM_PPID"), probe.to_string());
    assert_eq!(field(exec, "LOOM_COMM"), "true");
    // a value with a newline went in the binary-safe form and came back whole
    assert_eq!(field(exec, "LOOM_ARGV"), "/bin/true 'line one\nline two'");
    let open = entries.iter().find(|e| e["LOOM_EVENT"] == "open").unwrap_or_else(|| panic!("no open in {entries:#?}"));
    assert_eq!(field(open, "LOOM_PATH"), file.display().to_string());
    assert_eq!(field(open, "LOOM_PID"), probe.to_string());
    assert!(field(open, "LOOM_FLAGS").starts_with("O_WRONLY|O_CREAT"));
    let big =
        entries.iter().find(|e| e["LOOM_COMM"] == "big").unwrap_or_else(|| panic!("the memfd entry did not arrive"));
    assert_eq!(field(big, "LOOM_ARGV").len(), 400_000);
    for e in &entries {
        assert_eq!(field(e, "SYSLOG_IDENTIFIER"), "loom-audit");
    }
}
