use super::*;
use loom_core::api::CreateWeaver;
use loom_core::config::WeaverDefaults;
use loom_core::weaver::resolve_spec;
use loom_systemd::unit::StartedUnit;
use loom_systemd::{Call, ExitStatus, JournalEntry, LoomUnit, RecordingSystemd};

/// The recording fake, plus what systemd-nspawn's payload does on a start: the start
/// wrapper drops the marker in the weaver's root.
struct Fake {
    rec: RecordingSystemd,
    marker: Option<PathBuf>,
}

#[async_trait::async_trait]
impl SystemdManager for Fake {
    async fn start_transient_service(&self, spec: &TransientServiceSpec) -> Result<StartedUnit, SystemdError> {
        let started = self.rec.start_transient_service(spec).await?;
        if let Some(m) = &self.marker {
            fs::create_dir_all(m.parent().unwrap()).unwrap();
            fs::write(m, "").unwrap();
        }
        Ok(started)
    }
    async fn unit_status(&self, unit: &str) -> Result<Option<UnitStatus>, SystemdError> {
        self.rec.unit_status(unit).await
    }
    async fn stop_unit(&self, unit: &str) -> Result<Option<UnitStatus>, SystemdError> {
        self.rec.stop_unit(unit).await
    }
    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        self.rec.reset_failed(unit).await
    }
    async fn list_loom_units(&self) -> Result<Vec<LoomUnit>, SystemdError> {
        self.rec.list_loom_units().await
    }
    async fn machine_leader(&self, _machine: &str) -> Result<Option<u32>, SystemdError> {
        // No real container behind the fake.
        Ok(None)
    }
    async fn run_journal(&self, unit: &str, invocation: &str, max: usize) -> Result<Vec<JournalEntry>, SystemdError> {
        self.rec.run_journal(unit, invocation, max).await
    }
}

fn launch(dir: &Path, f: impl FnOnce(&mut CreateWeaver)) -> Launch {
    let mut req = CreateWeaver { command: vec!["/bin/sleep".into(), "300".into()], ..Default::default() };
    f(&mut req);
    fs::create_dir_all(dir.join("root")).unwrap();
    Launch {
        id: WeaverId::from_random([0xab, 2, 3, 4, 5, 6]),
        run: loom_core::weaver::RunId::from_random(7),
        spec: resolve_spec(req, &WeaverDefaults::default(), "w1".into()).unwrap(),
        dir: dir.to_path_buf(),
        binds_ro: vec![],
        netns: None,
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

#[test]
fn cgroup_layouts() {
    let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                  cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                  cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0\n\
                  cgroup /sys/fs/cgroup/memory cgroup ro,relatime,memory 0 0\n\
                  cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0\n\
                  cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
    let l = CgroupLayout::parse(hybrid);
    assert_eq!(l.unified, Some("/sys/fs/cgroup/unified".into()));
    assert_eq!(
        l.v1,
        [PathBuf::from("/sys/fs/cgroup/cpu"), "/sys/fs/cgroup/memory".into(), "/sys/fs/cgroup/systemd".into()]
    );
    assert_eq!(
        l.unified_dir("/loom.slice/loom-weaver-x.service"),
        Some("/sys/fs/cgroup/unified/loom.slice/loom-weaver-x.service".into())
    );
    let v2 = CgroupLayout::parse("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n");
    assert_eq!(v2, CgroupLayout { unified: Some("/sys/fs/cgroup".into()), v1: vec![] });
    assert_eq!(CgroupLayout::parse("garbage\n\n"), CgroupLayout::default());
}

#[test]
fn exec_joins_the_payload_cgroup_where_nspawn_made_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (v2, mem, pids) = (tmp.path().join("unified"), tmp.path().join("memory"), tmp.path().join("pids"));
    let id = WeaverId::from_random([1, 2, 3, 4, 5, 6]);
    let cg = format!("loom.slice/loom-weaver-{id}.service");
    fs::create_dir_all(v2.join(&cg).join("payload")).unwrap();
    fs::create_dir_all(mem.join(&cg)).unwrap();
    let b = SystemdBackend::new(Arc::new(RecordingSystemd::new()), Duration::from_secs(5))
        .with_cgroups(CgroupLayout { unified: Some(v2.clone()), v1: vec![mem.clone(), pids] });
    let plan = b.exec_plan(&id, &["/bin/echo".into(), "hi".into()]);
    assert_eq!(plan.argv[0], "/bin/sh", "the weaver's own shell, after exec entered it: {:?}", plan.argv);
    assert_eq!(plan.argv[4..], ["/bin/echo", "hi"]);
    assert_eq!(plan.cgroup_marker, format!("loom-weaver-{id}.service"));
    assert_eq!(
        plan.join_cgroups,
        [v2.join(&cg).join("payload/cgroup.procs"), mem.join(&cg).join("cgroup.procs")],
        "the payload leaf in v2, the unit in v1, nothing where the unit has no cgroup"
    );
    assert_eq!(b.cgroup_id(&id), Some(fs::metadata(v2.join(&cg)).unwrap().ino()));
    let logs = b.log_command(&id, true).unwrap();
    assert!(logs[0].ends_with("journalctl"));
    assert_eq!(logs[1..], ["-o", "cat", "--no-pager", "-f", &format!("LOOM_WEAVER={id}")]);
}

#[test]
fn the_unit_carries_nspawn_registered_and_the_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let l = launch(tmp.path(), |r| {
        r.memory = Some("256M".into());
        r.cpus = Some(1.5);
        r.tasks = Some(99);
    });
    let b = SystemdBackend::new(Arc::new(RecordingSystemd::new()), Duration::from_secs(5));
    let u = b.unit_spec(&l);
    assert!(u.argv[0].starts_with('/') && u.argv[0].ends_with("systemd-nspawn"), "{:?}", u.argv);
    assert!(u.argv.iter().any(|a| a == "--register=yes"));
    assert!(u.argv.iter().any(|a| a == "--keep-unit"));
    assert!(u.argv.iter().any(|a| a == "--private-users=pick"));
    assert_eq!(u.argv[u.argv.len() - 2..], ["/bin/sleep", "300"]);
    assert_eq!(u.weaver_id, l.id.as_str());
    assert_eq!(u.weaver_name, "w1");
    assert_eq!(u.memory_max, Some(256 << 20));
    assert_eq!(u.cpu_quota_per_sec_usec, Some(1_500_000));
    assert_eq!(u.tasks_max, Some(99));
    assert_eq!(u.environment, [format!("LOOM_WEAVER={}", l.id)]);
    let l = launch(tmp.path(), |r| {
        r.command = vec!["/bin/sh".into(), "-c".into(), "echo $$ ${HOME} $X".into()];
        r.env.insert("A".into(), "$B".into());
    });
    let u = b.unit_spec(&l);
    assert_eq!(u.argv.last().unwrap(), "echo $$$$ $${HOME} $$X", "systemd must not expand the command");
    // The weaver's own variables travel in its env file, not the unit's command line.
    assert!(!u.argv.iter().any(|a| a.contains("A=")), "{:?}", u.argv);
}

#[test]
fn a_run_is_started_observed_waited_for_stopped_and_cleaned_up() {
    block(async {
        let tmp = tempfile::tempdir().unwrap();
        let l = launch(tmp.path(), |_| {});
        let v2 = tmp.path().join("cg");
        let unit = format!("loom-weaver-{}.service", l.id);
        let fake = Arc::new(Fake { rec: RecordingSystemd::new(), marker: Some(l.root().join(START_MARKER)) });
        let b = SystemdBackend::new(fake.clone(), Duration::from_secs(5))
            .with_cgroups(CgroupLayout { unified: Some(v2.clone()), v1: vec![] });
        let prepared = b.prepare(&l).await.unwrap();
        assert!(prepared.is_some());
        let started = b.start(&l).await.unwrap();
        assert_eq!(started.cgroup_id, prepared, "audit knows the id before the first process");
        let RunHandle::Unit { name, invocation, run } = &started.handle else { panic!("{:?}", started.handle) };
        assert_eq!((name, *run), (&unit, l.run));
        assert!(invocation.is_some(), "the run is the unit's InvocationID");
        assert_eq!(started.cgroup_id, Some(fs::metadata(v2.join("loom.slice").join(&unit)).unwrap().ino()));
        let Some(Call::StartTransientService(spec)) =
            fake.rec.calls().into_iter().find(|c| matches!(c, Call::StartTransientService(_)))
        else {
            panic!("no start: {:?}", fake.rec.calls());
        };
        assert_eq!(spec, b.unit_spec(&l));
        assert!(matches!(b.observe(&l.id, &started.handle).await, Observed::Running { .. }));

        // The run ends: wait (polling, the fake's main pid is not a real nspawn) sees it.
        let waiter = b.wait(&l.id, &started.handle);
        let ender = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            fake.rec.exit_unit(&unit, ExitStatus::Code(3)).unwrap();
        };
        let (observed, ()) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(waiter, ender) })
            .await
            .expect("wait must notice the end");
        assert_eq!(observed, Observed::Exited { code: 3 });
        assert_eq!(b.observe(&l.id, &started.handle).await, Observed::Exited { code: 3 });

        // A second start clears the failed unit of the first run before starting again,
        // and is a different run under the same unit name.
        let again = b.start(&l).await.unwrap();
        assert_ne!(again.handle, started.handle);
        let calls = fake.rec.calls();
        assert!(calls.contains(&Call::ResetFailed(unit.clone())), "{calls:?}");
        // What the first run's handle says now is not the second run's state.
        assert!(matches!(b.observe(&l.id, &started.handle).await, Observed::Lost { .. }));
        let stale = tokio::time::timeout(Duration::from_secs(5), b.wait(&l.id, &started.handle)).await;
        assert!(matches!(stale, Ok(Observed::Lost { .. })), "{stale:?}");
        fake.rec.exit_unit(&unit, ExitStatus::Signal { signal: 9, core_dumped: false }).unwrap();
        assert_eq!(b.observe(&l.id, &again.handle).await, Observed::Exited { code: 137 });

        b.stop(&l.id, &again.handle, Duration::from_secs(1)).await.unwrap();
        assert!(fake.rec.unit_status(&unit).await.unwrap().is_none(), "stop resets the failed unit");
        assert!(matches!(b.observe(&l.id, &again.handle).await, Observed::Lost { .. }));
        // Stopping or cleaning up what is not there is fine.
        b.stop(&l.id, &again.handle, Duration::from_secs(1)).await.unwrap();
        b.cleanup(&l.id).await.unwrap();
    });
}

#[test]
fn a_run_whose_unit_was_collected_ended_as_its_journal_says() {
    block(async {
        let tmp = tempfile::tempdir().unwrap();
        let l = launch(tmp.path(), |_| {});
        let unit = format!("loom-weaver-{}.service", l.id);
        let fake = Arc::new(Fake { rec: RecordingSystemd::new(), marker: Some(l.root().join(START_MARKER)) });
        let b = SystemdBackend::new(fake.clone(), Duration::from_secs(5));
        let first = b.start(&l).await.unwrap();
        // The command exits 0: systemd unloads the unit at once.
        let (observed, ()) = tokio::join!(b.wait(&l.id, &first.handle), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            fake.rec.finish_unit(&unit).unwrap();
        });
        assert_eq!(observed, Observed::Exited { code: 0 });
        let RunHandle::Unit { invocation: Some(first_run), .. } = &first.handle else { panic!("{:?}", first.handle) };
        assert!(fake.rec.calls().contains(&Call::RunJournal { unit: unit.clone(), invocation: first_run.clone() }));

        // A run stopped outside loom is lost, and says so; the earlier run still reads as it ended.
        let second = b.start(&l).await.unwrap();
        fake.rec.stop_unit(&unit).await.unwrap();
        match b.observe(&l.id, &second.handle).await {
            Observed::Lost { reason } => assert!(reason.contains("stopped outside loom"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.observe(&l.id, &first.handle).await, Observed::Exited { code: 0 });
    });
}

#[test]
fn failed_starts_say_why() {
    block(async {
        let tmp = tempfile::tempdir().unwrap();
        let l = launch(tmp.path(), |_| {});
        // The container comes up but the command never runs (no marker), then it ends.
        let fake = Arc::new(Fake { rec: RecordingSystemd::new(), marker: None });
        let b = SystemdBackend::new(fake.clone(), Duration::from_secs(5));
        let unit = format!("loom-weaver-{}.service", l.id);
        let end_with = |line: &'static str, code: i32| {
            let (rec, unit) = (&fake.rec, unit.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                rec.write_output(&unit, line).unwrap();
                rec.exit_unit(&unit, ExitStatus::Code(code)).unwrap();
            }
        };
        // The weaver's previous run wrote something else: only this run's lines say why.
        let (previous, ()) = tokio::join!(b.start(&l), end_with("the previous run's line", 1));
        assert!(matches!(previous, Err(BackendError::StartFailed(_))), "{previous:?}");
        b.cleanup(&l.id).await.unwrap();
        let ending = end_with("sh: /bin/nothere: not found", 127);
        let (r, ()) = tokio::join!(b.start(&l), ending);
        match r {
            Err(BackendError::StartFailed(m)) => {
                assert!(m.contains("exited with code 127"), "{m}");
                assert!(m.contains("/bin/nothere: not found"), "the run's own output says why: {m}");
                assert!(m.contains("Failed with result"), "and systemd's word on it: {m}");
                assert!(!m.contains("previous run"), "another run's lines are not this one's: {m}");
            }
            other => panic!("expected a failed start: {other:?}"),
        }
        let journal_reads: Vec<_> =
            fake.rec.calls().into_iter().filter(|c| matches!(c, Call::RunJournal { .. })).collect();
        assert!(!journal_reads.is_empty(), "why comes from the run's journal");
        b.cleanup(&l.id).await.unwrap();
        assert!(fake.rec.unit_status(&unit).await.unwrap().is_none(), "cleanup clears the failed unit");

        // systemd-nspawn itself fails: the start job fails.
        fake.rec.fail_next_start("failed");
        match b.start(&l).await {
            Err(BackendError::StartFailed(m)) => assert!(m.contains("did not start (failed)"), "{m}"),
            other => panic!("expected a failed start: {other:?}"),
        }

        // Nothing ever happens: the start times out and the unit is stopped.
        b.cleanup(&l.id).await.unwrap();
        let slow = SystemdBackend::new(fake.clone(), Duration::from_millis(300));
        assert!(matches!(slow.start(&l).await, Err(BackendError::StartTimeout(_))));
        assert!(fake.rec.unit_status(&unit).await.unwrap().is_none());
    });
}
