//! Real-kernel tests: load the committed programs, run the probe inside a
//! test v2 cgroup, and check what arrives. Need root; see common::privileged.

mod common;

use std::collections::BTreeMap;

use common::{TestCgroup, collect, privileged, run_probe, settle};
use loom_audit::{Audit, AuditConfig, AuditEvent, EventDetail, EventKind};

fn by_pid(events: &[AuditEvent], pid: u32) -> Vec<&AuditEvent> {
    events.iter().filter(|e| e.pid == pid).collect()
}

fn one<'a>(events: &[&'a AuditEvent], what: &str, f: impl Fn(&AuditEvent) -> bool) -> &'a AuditEvent {
    let found: Vec<_> = events.iter().filter(|e| f(e)).collect();
    assert_eq!(found.len(), 1, "expected exactly one {what}, got {found:#?}\nall: {events:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weaver_actions_arrive_with_their_fields_and_outside_actions_do_not() {
    if !privileged("weaver_actions") {
        return;
    }
    let mut audit = Audit::start(&AuditConfig::default()).expect("start audit");
    let stats = audit.stats();
    // every program passes the verifier; a hook may be missing only because
    // the kernel lacks its tracepoint (e.g. module syscalls without CONFIG_MODULES)
    for w in &stats.warnings {
        let hook = w.split(':').next().unwrap();
        let tp = format!("/sys/kernel/tracing/events/syscalls/{hook}");
        assert!(!std::path::Path::new(&tp).exists(), "hook with a tracepoint failed: {w}");
    }
    assert!(stats.attached.len() >= 30, "{stats:?}");
    let mut rx = audit.take_events().unwrap();
    let cg = TestCgroup::new("actions");
    let sub = cg.child("payload");
    audit.watch(cg.id, "weaver-actions").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let sub_dir = dir.path().join("sub");
    std::fs::create_dir(&sub_dir).unwrap();
    let probe = std::fs::canonicalize(common::PROBE).unwrap();
    let probe_dir = probe.parent().unwrap();
    let mnt2 = dir.path().join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let actions: Vec<String> = vec![
        "exec:/bin/true,hello,big world".into(),
        "exec:/bin/sh,-c,kill -9 $$".into(),
        format!("write:{d}/f"),
        format!("rename:{d}/f,{d}/g"),
        format!("unlink:{d}/g"),
        format!("connect:127.0.0.1:{port}"),
        "bind:127.0.0.1:0".into(),
        format!("mount:{}", mnt.display()),
        "ptrace:1".into(),
        "unshare-uts".into(),
        // relative paths come out absolute: cwd, a dirfd, and across a mount
        format!("chdir:{d}"),
        "write:rel".into(),
        format!("write-at:{},at", sub_dir.display()),
        format!("mount-write:{}", mnt2.display()),
        format!("chdir:{}", probe_dir.display()),
        "exec:./loom-audit-probe".into(),
        "chdir:/".into(),
        "setuid:65534".into(),
    ];

    // in a sub-cgroup of the watched one: "and below" counts
    let inside = run_probe(Some(&sub), &actions);
    // the same actions from outside any weaver
    let outside = run_probe(None, &actions);
    let stats = settle(&audit).await;
    let events = collect(&mut rx);

    assert!(by_pid(&events, outside).is_empty(), "outside actions recorded: {:#?}", by_pid(&events, outside));
    for e in &events {
        assert_eq!(e.cgroup_id, cg.id, "event from an unwatched cgroup: {e:#?}");
        assert_eq!(e.weaver, "weaver-actions");
    }
    assert_eq!(stats.kernel_lost + stats.user_dropped + stats.decode_errors, 0, "{stats:?}");

    let mine = by_pid(&events, inside);
    for e in &mine {
        assert_eq!(e.comm, "loom-audit-prob", "{e:?}");
        // the probe's last action is setuid(65534), so only its exit has that uid
        let uid = if e.kind() == EventKind::Exit { 65534 } else { 0 };
        assert_eq!((e.uid, e.euid, e.ppid), (uid, uid, std::process::id()), "{e:?}");
        assert!(e.time_unix_ns > 1_600_000_000_000_000_000, "{e:?}");
    }
    // the probe's own exec, then its children's
    one(
        &mine,
        "probe exec",
        |e| matches!(&e.detail, EventDetail::Exec { path, .. } if path.ends_with("loom-audit-probe")),
    );
    let true_exec = one(
        &events.iter().collect::<Vec<_>>(),
        "exec of /bin/true",
        |e| matches!(&e.detail, EventDetail::Exec { path, .. } if path == "/bin/true"),
    );
    assert_eq!(true_exec.ppid, inside);
    assert_eq!(true_exec.comm, "true");
    let EventDetail::Exec { argv, argv_truncated, path_truncated, .. } = &true_exec.detail else { unreachable!() };
    assert_eq!(argv, &["/bin/true", "hello", "big world"]);
    assert!(!argv_truncated && !path_truncated);
    let true_exit = one(&by_pid(&events, true_exec.pid), "exit of true", |e| e.kind() == EventKind::Exit);
    assert_eq!(true_exit.detail, EventDetail::Exit { exit_code: Some(0), signal: None, core_dumped: false });
    let sh = one(
        &events.iter().collect::<Vec<_>>(),
        "exec of sh",
        |e| matches!(&e.detail, EventDetail::Exec { path, .. } if path == "/bin/sh"),
    );
    let sh_exit = one(&by_pid(&events, sh.pid), "exit of sh", |e| e.kind() == EventKind::Exit);
    assert_eq!(sh_exit.detail, EventDetail::Exit { exit_code: None, signal: Some(9), core_dumped: false });

    let open = one(&mine, "open", |e| matches!(&e.detail, EventDetail::Open { path, .. } if *path == format!("{d}/f")));
    let EventDetail::Open { flags, path_truncated, .. } = open.detail else { unreachable!() };
    assert_eq!(flags & 3, 1, "O_WRONLY");
    assert_ne!(flags & 0o100, 0, "O_CREAT");
    assert!(!path_truncated);
    for abs in [format!("{d}/rel"), format!("{d}/sub/at"), format!("{d}/mnt2/inside")] {
        one(&mine, &abs, |e| matches!(&e.detail, EventDetail::Open { path, .. } if *path == abs));
    }
    // a relative exec comes out absolute too
    let probe_s = probe.display().to_string();
    let rel_exec = one(&events.iter().collect::<Vec<_>>(), "relative exec", |e| {
        e.ppid == inside && matches!(&e.detail, EventDetail::Exec { path, .. } if *path == probe_s)
    });
    assert!(matches!(&rel_exec.detail, EventDetail::Exec { argv, .. } if argv == &["./loom-audit-probe"]));
    let rename = one(&mine, "rename", |e| e.kind() == EventKind::Rename);
    assert!(
        matches!(&rename.detail, EventDetail::Rename { path, new_path, .. } if *path == format!("{d}/f") && *new_path == format!("{d}/g")),
        "{rename:?}"
    );
    one(&mine, "unlink", |e| matches!(&e.detail, EventDetail::Unlink { path, .. } if *path == format!("{d}/g")));
    one(
        &mine,
        "connect",
        |e| matches!(&e.detail, EventDetail::Connect(n) if n.addr.as_deref() == Some("127.0.0.1") && n.port == Some(port) && n.family == "inet"),
    );
    one(
        &mine,
        "bind",
        |e| matches!(&e.detail, EventDetail::Bind(n) if n.addr.as_deref() == Some("127.0.0.1") && n.port == Some(0)),
    );
    one(&mine, "listen", |e| e.kind() == EventKind::Listen);
    let mnt_s = mnt.display().to_string();
    one(
        &mine,
        "mount",
        |e| matches!(&e.detail, EventDetail::Mount { source, path, fstype, .. } if source == "loomprobe" && *path == mnt_s && fstype == "tmpfs"),
    );
    one(&mine, "umount", |e| matches!(&e.detail, EventDetail::Umount { path, .. } if *path == mnt_s));
    one(
        &mine,
        "ptrace",
        |e| matches!(&e.detail, EventDetail::Ptrace { request: 2, target_pid: 1, request_name: Some(n), .. } if n == "PTRACE_PEEKDATA"),
    );
    one(&mine, "unshare", |e| matches!(&e.detail, EventDetail::Unshare { namespaces, .. } if namespaces == &["uts"]));
    let setuid = one(&mine, "setuid", |e| e.kind() == EventKind::Setuid);
    assert_eq!((setuid.syscall.as_str(), &setuid.detail), ("setuid", &EventDetail::Setuid { ids: vec![65534] }));
    let exit = one(&mine, "probe exit", |e| e.kind() == EventKind::Exit);
    assert_eq!(exit.detail, EventDetail::Exit { exit_code: Some(0), signal: None, core_dumped: false });

    // sequence numbers are unique and, with no losses, gapless
    let mut seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), events.len());
    assert_eq!(stats.seq_issued, events.len() as u64);

    // the real events through the sinks and the index, as loomd wires them
    let out = tempfile::tempdir().unwrap();
    let mut sink = loom_audit::NdjsonSink::open(&out.path().join("audit.ndjson")).unwrap();
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    loom_audit::index::migrate(&mut conn).unwrap();
    let (tx, queue) = tokio::sync::mpsc::channel(events.len());
    for e in &events {
        tx.try_send(e.clone()).unwrap();
    }
    drop(tx);
    loom_audit::pump(queue, &mut sink, |batch| {
        loom_audit::AuditIndex::new(&conn).insert(batch).unwrap();
    })
    .await;
    let text = std::fs::read_to_string(out.path().join("audit.ndjson")).unwrap();
    let back: Vec<AuditEvent> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(back, events);
    let index = loom_audit::AuditIndex::new(&conn);
    let execs = index
        .query(&loom_audit::AuditQuery {
            weaver: Some("weaver-actions".into()),
            kind: Some(EventKind::Exec),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(execs.len(), events.iter().filter(|e| e.kind() == EventKind::Exec).count());
    assert!(execs.iter().any(|(_, e)| e == true_exec));
    for e in &events {
        let data = loom_audit::journal::encode_entry(&loom_audit::journal::event_fields(e)).unwrap();
        let fields = loom_audit::journal::decode_entry(&data).unwrap();
        assert!(fields.iter().any(|(k, v)| k == "LOOM_WEAVER" && v == b"weaver-actions"));
    }

    // after unwatch, nothing more is recorded
    audit.unwatch(cg.id).unwrap();
    let later = run_probe(Some(&sub), &actions[..1]);
    settle(&audit).await;
    assert!(by_pid(&collect(&mut rx), later).is_empty());
}

/// Every event of `kind` either arrived or is counted lost.
fn account(stats: &loom_audit::AuditStats, delivered: &BTreeMap<EventKind, u64>, kind: EventKind) -> (u64, u64) {
    let k = stats.kinds[&kind];
    let got = delivered.get(&kind).copied().unwrap_or(0);
    (got, k.kernel_lost + k.user_dropped)
}

async fn burst(config: AuditConfig, opens: u64, execs: u64, consume: bool) -> (u64, u64) {
    let queue_capacity = config.queue_capacity as u64;
    let mut audit = Audit::start(&config).expect("start audit");
    let mut rx = audit.take_events().unwrap();
    let cg = TestCgroup::new(&format!("burst-{}", config.ring_buffer_bytes));
    audit.watch(cg.id, "weaver-burst").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("x");

    // consume concurrently, as loomd does, unless the test wants user-space drops
    let collector = tokio::spawn(async move {
        let mut delivered: BTreeMap<EventKind, u64> = BTreeMap::new();
        let mut matching_opens = 0u64;
        if !consume {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
        while let Some(ev) = rx.recv().await {
            *delivered.entry(ev.kind()).or_default() += 1;
            if matches!(&ev.detail, EventDetail::Open { path, .. } if path.ends_with("/x")) {
                matching_opens += 1;
            }
        }
        (delivered, matching_opens)
    });
    let actions = vec![format!("burst-open:{},{opens}", target.display()), format!("burst-exec:{execs},/bin/true")];
    let pid = tokio::task::block_in_place(|| run_probe(Some(&cg), &actions));
    let stats = settle(&audit).await;
    audit.unwatch(cg.id).unwrap();
    drop(audit); // closes the queue
    let (delivered, matching_opens) = if consume {
        collector.await.unwrap()
    } else {
        collector.abort();
        (BTreeMap::new(), 0)
    };
    eprintln!("probe {pid}: {stats:#?}\ndelivered {delivered:?}");

    assert_eq!(stats.decode_errors, 0);
    // the kernel's own accounting: each sequence number was received or lost
    assert_eq!(stats.seq_issued, stats.received + stats.kernel_lost, "{stats:?}");
    if consume {
        let (got, lost) = account(&stats, &delivered, EventKind::Open);
        assert_eq!(got + lost, opens, "opens: {got} delivered + {lost} lost");
        assert_eq!(matching_opens, got, "only the burst opens in the cgroup");
        let (got, lost) = account(&stats, &delivered, EventKind::Exec);
        assert_eq!(got + lost, execs + 1, "execs (+1: the probe): {got} delivered + {lost} lost");
        let (got, lost) = account(&stats, &delivered, EventKind::Exit);
        assert_eq!(got + lost, execs + 1, "exits: {got} delivered + {lost} lost");
    } else {
        // nobody read the queue: exactly its capacity got in, the rest is counted
        assert_eq!(stats.received - stats.user_dropped, queue_capacity, "{stats:?}");
    }
    (stats.kernel_lost, stats.user_dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_opens_and_execs_arrives_or_is_counted_lost() {
    if !privileged("burst") {
        return;
    }
    let (kernel_lost, user_dropped) = burst(AuditConfig::default(), 100_000, 10_000, true).await;
    eprintln!("default config: kernel_lost {kernel_lost}, user_dropped {user_dropped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_in_kernel_and_user_space_are_counted_exactly() {
    if !privileged("losses") {
        return;
    }
    // a 16 KiB ring and a queue nobody reads: both kinds of loss must happen
    // and be accounted for
    let config = AuditConfig { ring_buffer_bytes: 16 << 10, queue_capacity: 100, ..AuditConfig::default() };
    let (kernel_lost, user_dropped) = burst(config, 20_000, 200, false).await;
    assert!(user_dropped > 0, "queue of 100 nobody reads must overflow");
    eprintln!("tiny ring: kernel_lost {kernel_lost}, user_dropped {user_dropped}");
}
