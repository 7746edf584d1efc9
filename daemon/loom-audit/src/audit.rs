//! Loading the programs, the watched-cgroup map, and draining the ring buffer.
//! This is the crate's only contact with the kernel's BPF interface.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Btf, Ebpf, EbpfLoader};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::config::AuditConfig;
use crate::event::{AuditEvent, EventKind, decode};
use crate::layout::KIND_MAX;

/// The compiled programs, built from `ebpf/src/audit.bpf.c` by `ebpf/build.sh`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../ebpf/audit.bpf.o");

/// Every program in the object; each attaches to the tracepoint of its name,
/// in `sched` when the name starts with `sched_`, else in `syscalls`.
pub const PROGRAMS: &[&str] = &[
    "sched_process_exec",
    "sched_process_exit",
    "sys_enter_open",
    "sys_enter_openat",
    "sys_enter_openat2",
    "sys_enter_creat",
    "sys_enter_unlink",
    "sys_enter_unlinkat",
    "sys_enter_rmdir",
    "sys_enter_rename",
    "sys_enter_renameat",
    "sys_enter_renameat2",
    "sys_enter_connect",
    "sys_enter_bind",
    "sys_enter_listen",
    "sys_enter_setuid",
    "sys_enter_setgid",
    "sys_enter_setreuid",
    "sys_enter_setregid",
    "sys_enter_setresuid",
    "sys_enter_setresgid",
    "sys_enter_setfsuid",
    "sys_enter_setfsgid",
    "sys_enter_setgroups",
    "sys_enter_ptrace",
    "sys_enter_mount",
    "sys_enter_move_mount",
    "sys_enter_umount",
    "sys_enter_unshare",
    "sys_enter_setns",
    "sys_enter_bpf",
    "sys_enter_init_module",
    "sys_enter_finit_module",
    "sys_enter_delete_module",
    "sys_exit_mount",
    "sys_exit_move_mount",
    "sys_exit_umount",
    "sys_exit_unshare",
    "sys_exit_setns",
    "sys_exit_bpf",
    "sys_exit_init_module",
    "sys_exit_finit_module",
    "sys_exit_delete_module",
    "sys_exit_perf_event_open",
    "sys_exit_keyctl",
    "sys_exit_add_key",
    "sys_exit_io_uring_setup",
    "sys_exit_open_by_handle_at",
    "sys_exit_kexec_load",
    "sys_exit_clone",
];

fn tracepoint_of(program: &str) -> (&'static str, &str) {
    if program.starts_with("sched_") { ("sched", program) } else { ("syscalls", program) }
}

/// Starting or driving the audit failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "cannot load the audit eBPF object; the kernel needs BTF (/sys/kernel/btf/vmlinux) and CAP_BPF/CAP_PERFMON or root"
    )]
    Load(#[source] aya::EbpfError),
    #[error("the audit eBPF object has no map {0:?}; rebuild ebpf/ and this crate from one commit")]
    MissingMap(&'static str),
    #[error("cannot use the audit map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("no audit hook could be attached, so nothing would be recorded: {}", .0.join("; "))]
    NothingAttached(Vec<String>),
    #[error("Audit::start must run inside a tokio runtime with I/O enabled")]
    Runtime(#[source] std::io::Error),
    #[error("cannot watch cgroup {cgroup_id} for weaver {weaver:?}; the watched map may be full (max_weavers)")]
    Watch {
        cgroup_id: u64,
        weaver: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot stop watching cgroup {cgroup_id}")]
    Unwatch {
        cgroup_id: u64,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Counters for one event kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindStats {
    /// Read from the ring buffer and decoded.
    pub received: u64,
    /// Dropped in the kernel: the ring buffer was full.
    pub kernel_lost: u64,
    /// Dropped in user space: the queue to the sinks was full.
    pub user_dropped: u64,
}

/// Audit counters for `loom status`. Once the ring buffer is drained,
/// `seq_issued == received + kernel_lost + decode_errors` exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStats {
    pub kinds: BTreeMap<EventKind, KindStats>,
    /// Sequence numbers the kernel handed out (events it tried to record).
    pub seq_issued: u64,
    pub received: u64,
    pub kernel_lost: u64,
    pub user_dropped: u64,
    pub decode_errors: u64,
    /// Weaver cgroups currently watched.
    pub watched: usize,
    /// Hooks attached, by program name.
    pub attached: Vec<String>,
    /// Hooks that could not be loaded or attached, and why.
    pub warnings: Vec<String>,
}

impl AuditStats {
    /// Events issued but neither received nor counted lost: still in the
    /// ring buffer (or, if it stays non-zero once idle, unaccounted).
    pub fn in_flight(&self) -> u64 {
        self.seq_issued.saturating_sub(self.received + self.kernel_lost + self.decode_errors)
    }
}

const KINDS: usize = KIND_MAX as usize;
const RETIRED_NAMES: usize = 1024;

#[derive(Debug, Default)]
struct Names {
    live: HashMap<u64, String>,
    /// Unwatched recently: events still in the ring buffer keep their name.
    retired: VecDeque<(u64, String)>,
}

struct Shared {
    names: RwLock<Names>,
    received: [AtomicU64; KINDS],
    dropped: [AtomicU64; KINDS],
    decode_errors: AtomicU64,
    lost: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    fn kernel_lost(&self, kind: u32) -> u64 {
        self.lost.get(&kind, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)
    }

    fn total_lost(&self) -> u64 {
        EventKind::ALL
            .into_iter()
            .filter(|k| k.raw() < KIND_MAX)
            .map(|k| self.kernel_lost(k.raw()) + self.dropped[k.raw() as usize].load(Ordering::Relaxed))
            .sum()
    }

    fn weaver_of(&self, cgroup_id: u64) -> String {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = names.live.get(&cgroup_id) {
            return n.clone();
        }
        names
            .retired
            .iter()
            .rev()
            .find(|(id, _)| *id == cgroup_id)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| format!("cgroup:{cgroup_id}"))
    }
}

/// The running audit: programs attached, ring buffer being drained.
pub struct Audit {
    _ebpf: Ebpf,
    watched: Mutex<aya::maps::HashMap<MapData, u64, u32>>,
    seqno: Array<MapData, u64>,
    shared: Arc<Shared>,
    drain: tokio::task::JoinHandle<()>,
    events: Option<mpsc::Receiver<AuditEvent>>,
    /// The queue's other end, for events loomd records itself (egress refusals).
    own: mpsc::Sender<AuditEvent>,
    attached: Vec<String>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("attached", &self.attached.len())
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

/// CLOCK_REALTIME - CLOCK_BOOTTIME, in ns.
fn boot_to_unix_offset_ns() -> i64 {
    let read = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: ts is a valid, writable timespec; the clock ids are constants.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_BOOTTIME)
}

/// Mount tracefs where the kernel expects it if no tracefs is visible; the
/// tracepoint attach needs its `events/*/id` files.
fn ensure_tracefs() -> Result<(), String> {
    for p in ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"] {
        if Path::new(p).exists() {
            return Ok(());
        }
    }
    // SAFETY: all arguments are valid NUL-terminated strings; data is null.
    let r = unsafe {
        libc::mount(c"tracefs".as_ptr(), c"/sys/kernel/tracing".as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    };
    if r != 0 {
        return Err(format!(
            "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let lim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot raise RLIMIT_MEMLOCK");
    }
}

impl Audit {
    /// Load and attach the programs and start draining the ring buffer into a
    /// bounded queue (take it with [`Audit::take_events`]). Hooks that fail
    /// are listed in [`AuditStats::warnings`]; it fails only if none attach.
    /// Must be called inside a tokio runtime.
    pub fn start(config: &AuditConfig) -> Result<Audit, AuditError> {
        let mut warnings = Vec::new();
        if let Err(w) = ensure_tracefs() {
            warnings.push(w);
        }
        raise_memlock();
        let btf = Btf::from_sys_fs().ok();
        if btf.is_none() {
            warnings.push("no kernel BTF at /sys/kernel/btf/vmlinux: CO-RE relocations cannot be applied".into());
        }
        let mut ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .map_max_entries("events", config.ring_buffer_bytes)
            .map_max_entries("watched", config.max_weavers)
            .load(OBJECT)
            .map_err(AuditError::Load)?;

        let mut attached = Vec::new();
        for &name in PROGRAMS {
            let (category, tp) = tracepoint_of(name);
            let result = (|| -> Result<(), String> {
                let prog = ebpf.program_mut(name).ok_or_else(|| "not in the object".to_string())?;
                let prog: &mut TracePoint = prog.try_into().map_err(|e| format!("{e}"))?;
                prog.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
                prog.attach(category, tp).map_err(|e| format!("attach to {category}:{tp}: {}", error_chain(&e)))?;
                Ok(())
            })();
            match result {
                Ok(()) => attached.push(name.to_string()),
                Err(why) => {
                    tracing::warn!(hook = name, %why, "audit hook not attached; running without it");
                    warnings.push(format!("{name}: {why}"));
                }
            }
        }
        if attached.is_empty() {
            return Err(AuditError::NothingAttached(warnings));
        }

        let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(AuditError::MissingMap(name));
        let map_err = |name| move |source| AuditError::Map { name, source };
        let ring = RingBuf::try_from(take(&mut ebpf, "events")?).map_err(map_err("events"))?;
        let watched = aya::maps::HashMap::try_from(take(&mut ebpf, "watched")?).map_err(map_err("watched"))?;
        let lost = PerCpuArray::try_from(take(&mut ebpf, "lost")?).map_err(map_err("lost"))?;
        let seqno = Array::try_from(take(&mut ebpf, "seqno")?).map_err(map_err("seqno"))?;

        let shared = Arc::new(Shared {
            names: RwLock::new(Names::default()),
            received: std::array::from_fn(|_| AtomicU64::new(0)),
            dropped: std::array::from_fn(|_| AtomicU64::new(0)),
            decode_errors: AtomicU64::new(0),
            lost,
        });
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(AuditError::Runtime(std::io::Error::other("no tokio runtime")));
        }
        // SAFETY: the ring buffer's map fd is owned by `ring`, which the
        // AsyncFd owns for its whole life, so the fd stays open and the same.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| AuditError::Runtime(e.into_parts().1))?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let own = tx.clone();
        let drain = tokio::spawn(drain(ring, tx, shared.clone(), boot_to_unix_offset_ns()));
        tracing::info!(attached = attached.len(), missing = warnings.len(), "audit started");
        Ok(Audit {
            _ebpf: ebpf,
            watched: Mutex::new(watched),
            seqno,
            shared,
            drain,
            events: Some(rx),
            own,
            attached,
            warnings,
        })
    }

    /// The queue of decoded events; `None` after the first call.
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<AuditEvent>> {
        self.events.take()
    }

    /// Puts an event that did not come from the kernel (loomd's own, e.g. `net_deny`) into the
    /// same queue, sinks and index as the kernel's; `false` when the queue is full.
    pub fn record(&self, ev: AuditEvent) -> bool {
        self.own.try_send(ev).is_ok()
    }

    /// Record everything done inside the cgroup `cgroup_id` (the inode number
    /// of its directory in the v2 hierarchy) and below, as weaver `weaver`.
    pub fn watch(&self, cgroup_id: u64, weaver: &str) -> Result<(), AuditError> {
        {
            let mut names = self.shared.names.write().unwrap_or_else(|e| e.into_inner());
            names.live.insert(cgroup_id, weaver.to_string());
        }
        let mut map = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(cgroup_id, 1, 0).map_err(|source| AuditError::Watch {
            cgroup_id,
            weaver: weaver.to_string(),
            source,
        })
    }

    /// How many cgroups the kernel's `watched` map holds (at most `max_weavers`).
    pub fn watched_in_kernel(&self) -> usize {
        self.watched.lock().unwrap_or_else(|e| e.into_inner()).keys().filter(|k| k.is_ok()).count()
    }

    /// Stop recording the cgroup; events already in flight keep their weaver.
    pub fn unwatch(&self, cgroup_id: u64) -> Result<(), AuditError> {
        let mut map = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        match map.remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(AuditError::Unwatch { cgroup_id, source }),
        }
        drop(map);
        let mut names = self.shared.names.write().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = names.live.remove(&cgroup_id) {
            names.retired.push_back((cgroup_id, name));
            if names.retired.len() > RETIRED_NAMES {
                names.retired.pop_front();
            }
        }
        Ok(())
    }

    /// Counters per kind, hooks attached and missing.
    pub fn stats(&self) -> AuditStats {
        let mut s =
            AuditStats { attached: self.attached.clone(), warnings: self.warnings.clone(), ..AuditStats::default() };
        s.seq_issued = self.seqno.get(&0, 0).unwrap_or(0);
        s.watched = self.shared.names.read().unwrap_or_else(|e| e.into_inner()).live.len();
        s.decode_errors = self.shared.decode_errors.load(Ordering::Relaxed);
        // loomd's own kinds (net_deny) are not the kernel's: it counts nothing for them.
        for k in EventKind::ALL.into_iter().filter(|k| k.raw() < KIND_MAX) {
            let i = k.raw() as usize;
            let kernel_lost = self.shared.kernel_lost(k.raw());
            let ks = KindStats {
                received: self.shared.received[i].load(Ordering::Relaxed),
                kernel_lost,
                user_dropped: self.shared.dropped[i].load(Ordering::Relaxed),
            };
            s.received += ks.received;
            s.kernel_lost += ks.kernel_lost;
            s.user_dropped += ks.user_dropped;
            s.kinds.insert(k, ks);
        }
        s
    }
}

use loom_core::error_chain;

/// How often the ring buffer is drained when the kernel did not wake us (it
/// wakes us only once the ring is an eighth full, see `submit` in the C code).
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

async fn drain(
    mut ring: AsyncFd<RingBuf<MapData>>,
    tx: mpsc::Sender<AuditEvent>,
    shared: Arc<Shared>,
    boot_offset: i64,
) {
    let mut reported_lost = 0u64;
    let mut last_check = std::time::Instant::now();
    loop {
        // losses are never silent: they are logged as they happen (and counted in stats)
        if last_check.elapsed() >= std::time::Duration::from_secs(1) {
            last_check = std::time::Instant::now();
            let lost = shared.total_lost();
            if lost > reported_lost {
                tracing::warn!(
                    lost_since_last = lost - reported_lost,
                    lost_total = lost,
                    "audit events lost (ring buffer or queue full); see loom status for counts per kind"
                );
                reported_lost = lost;
            }
        }
        match tokio::time::timeout(POLL_INTERVAL, ring.readable_mut()).await {
            Ok(Ok(mut guard)) => {
                drain_once(guard.get_inner_mut(), &tx, &shared, boot_offset);
                guard.clear_ready();
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit ring buffer poll failed; audit draining stopped");
                return;
            }
            Err(_elapsed) => drain_once(ring.get_mut(), &tx, &shared, boot_offset),
        }
    }
}

fn drain_once(rb: &mut RingBuf<MapData>, tx: &mpsc::Sender<AuditEvent>, shared: &Shared, boot_offset: i64) {
    while let Some(item) = rb.next() {
        match decode(&item, |id| shared.weaver_of(id), boot_offset) {
            Ok(ev) => {
                let i = (ev.kind().raw() as usize).min(KINDS - 1);
                shared.received[i].fetch_add(1, Ordering::Relaxed);
                if tx.try_send(ev).is_err() {
                    shared.dropped[i].fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                if shared.decode_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::error!(error = %e, "undecodable audit record");
                }
            }
        }
    }
}

/// The cgroup id of a v2 cgroup directory: its inode number.
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir)?.ino())
}

/// Forward queued events to a sink in batches, calling `on_batch` (e.g. the
/// index insert) after each; returns when the queue closes.
pub async fn pump(
    mut rx: mpsc::Receiver<AuditEvent>,
    sink: &mut dyn crate::sink::AuditSink,
    mut on_batch: impl FnMut(&[AuditEvent]),
) {
    let mut batch = Vec::with_capacity(512);
    let mut failures = 0u64;
    while rx.recv_many(&mut batch, 512).await > 0 {
        for ev in &batch {
            if let Err(e) = sink.write(ev) {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::error!(error = %error_chain(&e), failures, "audit sink write failed");
                }
            }
        }
        if let Err(e) = sink.flush() {
            tracing::error!(error = %error_chain(&e), "audit sink flush failed");
        }
        on_batch(&batch);
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_can_be_shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Audit>();
        send_sync::<AuditStats>();
    }

    #[test]
    fn program_table_matches_the_object() {
        // every program in the ELF is in PROGRAMS and vice versa, so none is
        // silently left unattached; read the ELF's section names (no privileges)
        let text = OBJECT;
        for name in PROGRAMS {
            let (category, tp) = tracepoint_of(name);
            let section = format!("tracepoint/{category}/{tp}");
            assert!(text.windows(section.len()).any(|w| w == section.as_bytes()), "{section} not in the object");
        }
        let count = text.windows(b"\0tracepoint/".len()).filter(|w| *w == b"\0tracepoint/").count();
        assert_eq!(count, PROGRAMS.len(), "the object has programs PROGRAMS does not list");
    }
}
