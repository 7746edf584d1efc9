//! The loader: load `ebpf/egress.bpf.o`, attach it to weaver cgroups, keep each weaver's
//! rules in the kernel map, and drain the deny events.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};
use loom_core::egress::{IpNet, NetRule, Protocol};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::layout::{self, DenyEvent, KEY_DATA_LEN, RawKey, RawValue};

/// The compiled programs (built by `ebpf/build.sh`, checked by `ebpf/check.sh`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../ebpf/egress.bpf.o");

/// The programs in the object, one per hook.
pub const PROGRAMS: [&str; 4] = ["loom_connect4", "loom_connect6", "loom_sendmsg4", "loom_sendmsg6"];

/// A weaver's scope: the cgroup id (inode number) of the directory its programs are attached to.
pub type Scope = u64;

/// Set in a scope that is a network namespace's cookie (the C side's `LOOM_EGRESS_NETNS_SCOPE`).
pub const NETNS_SCOPE: u64 = 1 << 63;

#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// Entries of the rule map, all weavers together (static rules × protocols + admissions).
    pub max_rules: u32,
    /// Weaver cgroups attached at once.
    pub max_scopes: u32,
    /// Admitted (DNS-derived) addresses one weaver may hold at once.
    pub max_admitted_per_scope: usize,
    /// Bytes of the deny ring buffer (a power of two, a multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Decoded events waiting for the reader; more are dropped and counted.
    pub queue_capacity: usize,
    /// A socket with no scope is let through: for programs attached once at the root of the
    /// hierarchy ([`Egress::attach_everywhere`]), where weavers are scoped by network
    /// namespace ([`Egress::register_netns`]) and every other socket is the host's.
    pub unscoped_allow: bool,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            max_rules: 65536,
            max_scopes: 4096,
            max_admitted_per_scope: 4096,
            ring_buffer_bytes: 1 << 20,
            queue_capacity: 4096,
            unscoped_allow: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("loading the egress programs failed (needs root, kernel >= 5.8 with BPF ring buffers)")]
    Load(#[source] aya::EbpfError),
    #[error("the egress object has no {0}; rebuild it with ebpf/build.sh")]
    Missing(&'static str),
    #[error("egress program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("egress map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot use {} as a weaver cgroup; pass a directory on the cgroup v2 mount ({})", path.display(), cgroup2_hint())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the egress rule map is full ({max} entries for all weavers); raise EgressConfig::max_rules")]
    RulesFull { max: u32 },
    #[error("weaver scope {scope} already holds {max} admitted addresses; wait for some to expire")]
    TooManyAdmitted { scope: Scope, max: usize },
    #[error("the egress deny reader needs a tokio runtime")]
    Runtime(#[source] std::io::Error),
    #[error("attaching at the cgroup root without `unscoped_allow` would refuse every socket of the host")]
    RootNeedsUnscopedAllow,
}

fn cgroup2_hint() -> String {
    cgroup2_mount().map_or_else(|| "none is mounted".to_string(), |p| format!("mounted at {}", p.display()))
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on hybrid hosts), from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    loom_core::mounts::parse_mountinfo(&text).into_iter().find(|m| m.fstype == "cgroup2").map(|m| m.target)
}

/// When an admitted address stops being admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Never,
    /// After this long from now (a DNS answer's TTL).
    After(Duration),
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec. CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Debug, Default)]
struct Installed {
    rules: Vec<NetRule>,
    statics: HashSet<RawKey>,
    /// key → expiry (monotonic ns, 0 = never)
    admitted: HashMap<RawKey, u64>,
}

struct Maps {
    rules: LpmTrie<MapData, [u8; KEY_DATA_LEN], RawValue>,
    scopes: aya::maps::HashMap<MapData, u64, u64>,
    /// What user space put into `rules`, per scope: the kernel map is never iterated.
    installed: HashMap<Scope, Installed>,
}

impl Maps {
    fn insert(&mut self, k: &RawKey, v: &RawValue, max: u32) -> Result<(), EgressError> {
        match self.rules.insert(&Key::new(k.prefix_len, k.data), v, 0) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOSPC) => {
                Err(EgressError::RulesFull { max })
            }
            Err(source) => Err(EgressError::Map { name: "rules", source }),
        }
    }

    fn remove(&mut self, k: &RawKey) -> Result<(), EgressError> {
        match self.rules.remove(&Key::new(k.prefix_len, k.data)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(EgressError::Map { name: "rules", source }),
        }
    }
}

/// The loaded egress programs and their maps. Every method takes `&self`: one `Egress`
/// serves all weavers, from any task.
pub struct Egress {
    programs: Mutex<Ebpf>,
    maps: Mutex<Maps>,
    config: EgressConfig,
    lost: PerCpuArray<MapData, u64>,
    dropped: Arc<AtomicU64>,
    events: Mutex<Option<mpsc::Receiver<DenyEvent>>>,
    drain: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

/// A weaver cgroup with the programs attached; dropping it detaches them. Its rules stay
/// until [`Egress::forget`].
pub struct Attachment {
    scope: Scope,
    links: Vec<CgroupSockAddrLink>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment").field("scope", &self.scope).finish_non_exhaustive()
    }
}

impl Attachment {
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Detach now, reporting a failure (dropping detaches too, silently).
    pub fn detach(mut self) -> Result<(), EgressError> {
        use aya::programs::links::Link;
        for (i, link) in self.links.drain(..).enumerate() {
            let name = PROGRAMS[i.min(PROGRAMS.len() - 1)];
            link.detach().map_err(|source| EgressError::Program { name, source })?;
        }
        Ok(())
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let lim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot raise RLIMIT_MEMLOCK");
    }
}

/// The cookie (`SO_NETNS_COOKIE`) of the calling thread's network namespace: what
/// [`Egress::register_netns`] takes.
pub fn current_netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let sock = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a live socket and a buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cgroup id of a v2 cgroup directory: its inode number.
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir)?.ino())
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn check_cgroup2(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero statfs/stat is a valid out-parameter; fd is a live descriptor.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sfs) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if sfs.f_type as i64 != CGROUP2_SUPER_MAGIC {
        return Err(std::io::Error::other("not on a cgroup v2 file system"));
    }
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.st_ino)
}

impl Egress {
    /// Load the programs (not attached anywhere yet) and start draining deny events into a
    /// bounded queue ([`Egress::take_events`]). Must be called inside a tokio runtime.
    pub fn load() -> Result<Egress, EgressError> {
        Egress::load_with(EgressConfig::default())
    }

    pub fn load_with(config: EgressConfig) -> Result<Egress, EgressError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(EgressError::Runtime(std::io::Error::other("no tokio runtime")));
        }
        raise_memlock();
        let unscoped_allow = u8::from(config.unscoped_allow);
        let mut ebpf = EbpfLoader::new()
            .override_global("loom_unscoped_allow", &unscoped_allow, true)
            .map_max_entries("rules", config.max_rules)
            .map_max_entries("scopes", config.max_scopes)
            .map_max_entries("events", config.ring_buffer_bytes)
            .load(OBJECT)
            .map_err(EgressError::Load)?;
        for name in PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(EgressError::Missing(name))?
                .try_into()
                .map_err(|source| EgressError::Program { name, source })?;
            prog.load().map_err(|source| EgressError::Program { name, source })?;
        }
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(EgressError::Missing(name));
        let map_err = |name| move |source| EgressError::Map { name, source };
        let rules = LpmTrie::try_from(take("rules")?).map_err(map_err("rules"))?;
        let scopes = aya::maps::HashMap::try_from(take("scopes")?).map_err(map_err("scopes"))?;
        let ring = RingBuf::try_from(take("events")?).map_err(map_err("events"))?;
        let lost = PerCpuArray::try_from(take("lost")?).map_err(map_err("lost"))?;
        // SAFETY: the ring buffer's map fd is owned by `ring`, which the AsyncFd owns for its
        // whole life, so the fd stays open and the same.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| EgressError::Runtime(e.into_parts().1))?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let drain = tokio::spawn(drain(ring, tx, dropped.clone()));
        tracing::info!(max_rules = config.max_rules, "egress programs loaded");
        Ok(Egress {
            programs: Mutex::new(ebpf),
            maps: Mutex::new(Maps { rules, scopes, installed: HashMap::new() }),
            config,
            lost,
            dropped,
            events: Mutex::new(Some(rx)),
            drain,
        })
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        // A panic while holding the lock left the mirror possibly stale, never unsafe.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The deny events, once (later calls return `None`).
    pub fn take_events(&self) -> Option<mpsc::Receiver<DenyEvent>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Denials the kernel could not queue (ring full) plus those the reader dropped (queue full).
    pub fn lost(&self) -> u64 {
        let kernel = self.lost.get(&0, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        kernel + self.dropped.load(Ordering::Relaxed)
    }

    /// Attach the programs to the weaver cgroup at `dir`; its scope is the directory's cgroup
    /// id. Sockets of every process in it and below it are then default-deny.
    pub fn attach(&self, dir: &Path) -> Result<Attachment, EgressError> {
        let cgerr = |source| EgressError::Cgroup { path: dir.to_path_buf(), source };
        let file = std::fs::File::open(dir).map_err(cgerr)?;
        self.attach_fd(file.as_fd()).map_err(|e| match e {
            EgressError::Cgroup { source, .. } => cgerr(source),
            e => e,
        })
    }

    /// [`Egress::attach`] for an already opened cgroup directory.
    pub fn attach_fd(&self, dir: BorrowedFd<'_>) -> Result<Attachment, EgressError> {
        let scope = check_cgroup2(dir).map_err(|source| EgressError::Cgroup { path: PathBuf::from("<fd>"), source })?;
        // The scope is known before the first program runs, so nothing is refused as "no scope".
        let fresh = {
            let mut maps = self.maps();
            let fresh = maps.scopes.get(&scope, 0).is_err();
            maps.scopes.insert(scope, scope, 0).map_err(|source| EgressError::Map { name: "scopes", source })?;
            fresh
        };
        let links = self.link_all(dir);
        if links.is_err() && fresh {
            let _ = self.maps().scopes.remove(&scope);
        }
        let links = links?;
        tracing::debug!(scope, "egress attached");
        Ok(Attachment { scope, links })
    }

    /// Attach the programs to the root of the cgroup v2 hierarchy (`cgroup2_root`) without
    /// making it a scope: with [`EgressConfig::unscoped_allow`], only sockets in a namespace
    /// given to [`Egress::register_netns`] are then governed, whichever cgroup their task is in.
    pub fn attach_everywhere(&self, cgroup2_root: &Path) -> Result<Attachment, EgressError> {
        if !self.config.unscoped_allow {
            return Err(EgressError::RootNeedsUnscopedAllow);
        }
        let cgerr = |source| EgressError::Cgroup { path: cgroup2_root.to_path_buf(), source };
        let file = std::fs::File::open(cgroup2_root).map_err(cgerr)?;
        check_cgroup2(file.as_fd()).map_err(cgerr)?;
        let links = self.link_all(file.as_fd())?;
        tracing::debug!("egress attached at the cgroup root");
        Ok(Attachment { scope: 0, links })
    }

    /// Makes the network namespace with this cookie (`SO_NETNS_COOKIE`) a scope: its sockets
    /// are default-deny from now on, whatever their task's cgroup. Release it with `forget`.
    pub fn register_netns(&self, cookie: u64) -> Result<Scope, EgressError> {
        let scope = cookie | NETNS_SCOPE;
        self.maps().scopes.insert(scope, scope, 0).map_err(|source| EgressError::Map { name: "scopes", source })?;
        Ok(scope)
    }

    fn link_all(&self, dir: BorrowedFd<'_>) -> Result<Vec<CgroupSockAddrLink>, EgressError> {
        let mut programs = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        let mut links = Vec::with_capacity(PROGRAMS.len());
        for name in PROGRAMS {
            let prog: &mut CgroupSockAddr = programs
                .program_mut(name)
                .ok_or(EgressError::Missing(name))?
                .try_into()
                .map_err(|source| EgressError::Program { name, source })?;
            let perr = |source| EgressError::Program { name, source };
            // A bpf_link (kernel >= 5.7, which the ring buffer needs anyway) is always attached
            // as BPF_F_ALLOW_MULTI, so systemd's own programs keep running beside ours; the
            // kernel refuses any attach flag on a link, hence "Single" here.
            let id = prog.attach(dir, CgroupAttachMode::Single).map_err(perr)?;
            links.push(prog.take_link(id).map_err(perr)?);
        }
        Ok(links)
    }

    /// The static rules of `scope`, as last set.
    pub fn rules(&self, scope: Scope) -> Vec<NetRule> {
        self.maps().installed.get(&scope).map(|i| i.rules.clone()).unwrap_or_default()
    }

    /// Replace the static rules of `scope`. New entries go in before stale ones go out, so
    /// a connect during the update sees the old or the new rule set, never an empty one.
    /// On error the old rules stay in force.
    pub fn set_rules(&self, scope: Scope, rules: &[NetRule]) -> Result<(), EgressError> {
        let mut maps = self.maps();
        let new: HashMap<RawKey, RawValue> = rules.iter().flat_map(|r| layout::static_entries(scope, r)).collect();
        let old = maps.installed.get(&scope).map(|i| i.statics.clone()).unwrap_or_default();
        let mut added = Vec::new();
        // An entry's value follows from its key (the metadata flag from the prefix), so one
        // already in the map stays untouched: an update costs what changes, not the whole set.
        for (k, v) in new.iter().filter(|(k, _)| !old.contains(*k)) {
            if let Err(e) = maps.insert(k, v, self.config.max_rules) {
                for k in &added {
                    let _ = maps.remove(k);
                }
                return Err(e);
            }
            added.push(*k);
        }
        for k in old.iter().filter(|k| !new.contains_key(*k)) {
            maps.remove(k)?;
        }
        let inst = maps.installed.entry(scope).or_default();
        inst.statics = new.into_keys().collect();
        inst.rules = rules.to_vec();
        Ok(())
    }

    /// Admit `addr` (a DNS answer for a name a rule allows) for `scope` until `expiry`, on
    /// `port` (`None`: any) and `protocol` (`None`: TCP and UDP). Re-admitting extends, never
    /// shortens. Admissions of `scope` that have expired are removed here.
    pub fn admit(
        &self,
        scope: Scope,
        addr: IpAddr,
        port: Option<u16>,
        protocol: Option<Protocol>,
        expiry: Expiry,
    ) -> Result<(), EgressError> {
        let now = monotonic_ns();
        let expires = match expiry {
            Expiry::Never => 0,
            Expiry::After(d) => now.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).max(1),
        };
        let net = IpNet::host(loom_core::egress::canonical(addr));
        let mut maps = self.maps();
        self.sweep_scope(&mut maps, scope, now)?;
        let held = maps.installed.get(&scope).map_or(0, |i| i.admitted.len());
        for p in layout::protocols(protocol) {
            let k = RawKey::new(scope, true, p.number(), port.unwrap_or(0), &net);
            let prev = maps.installed.get(&scope).and_then(|i| i.admitted.get(&k).copied());
            if prev.is_none() && held >= self.config.max_admitted_per_scope {
                return Err(EgressError::TooManyAdmitted { scope, max: self.config.max_admitted_per_scope });
            }
            let expires = match prev {
                Some(0) => 0,
                Some(p) if expires != 0 => p.max(expires),
                _ => expires,
            };
            // Never the metadata flag: a DNS answer cannot open a metadata address.
            maps.insert(&k, &RawValue { expires_ns: expires, flags: 0, reserved: 0 }, self.config.max_rules)?;
            maps.installed.entry(scope).or_default().admitted.insert(k, expires);
        }
        Ok(())
    }

    fn sweep_scope(&self, maps: &mut Maps, scope: Scope, now: u64) -> Result<(), EgressError> {
        let Some(inst) = maps.installed.get_mut(&scope) else { return Ok(()) };
        let expired: Vec<RawKey> =
            inst.admitted.iter().filter(|(_, e)| **e != 0 && **e <= now).map(|(k, _)| *k).collect();
        for k in &expired {
            inst.admitted.remove(k);
        }
        for k in &expired {
            maps.remove(k)?;
        }
        Ok(())
    }

    /// Remove every address admitted from DNS answers for `scope` (its rules changed: what
    /// an old domain rule admitted must not outlive it).
    pub fn clear_admitted(&self, scope: Scope) -> Result<(), EgressError> {
        let mut maps = self.maps();
        self.sweep_scope(&mut maps, scope, u64::MAX)
    }

    /// Remove expired admissions of every scope (they are already refused; this frees their
    /// entries). Call it now and then; [`Egress::admit`] does it for its own scope.
    pub fn sweep(&self) -> Result<(), EgressError> {
        let now = monotonic_ns();
        let mut maps = self.maps();
        let scopes: Vec<Scope> = maps.installed.keys().copied().collect();
        for s in scopes {
            self.sweep_scope(&mut maps, s, now)?;
        }
        Ok(())
    }

    /// Remove everything of `scope`: its rules, its admissions and its scope entry. A process
    /// still in the cgroup is then refused everything (`DenyReason::NoScope`).
    pub fn forget(&self, scope: Scope) -> Result<(), EgressError> {
        let mut maps = self.maps();
        if let Some(inst) = maps.installed.remove(&scope) {
            for k in inst.statics.iter().chain(inst.admitted.keys()) {
                maps.remove(k)?;
            }
        }
        match maps.scopes.remove(&scope) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(EgressError::Map { name: "scopes", source }),
        }
    }

    /// Entries in the kernel maps (rules, scopes), read from the kernel: for tests and stats.
    pub fn kernel_entries(&self) -> (usize, usize) {
        let maps = self.maps();
        (maps.rules.keys().count(), maps.scopes.keys().count())
    }
}

async fn drain(mut ring: AsyncFd<RingBuf<MapData>>, tx: mpsc::Sender<DenyEvent>, dropped: Arc<AtomicU64>) {
    let mut errors = 0u64;
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "egress ring buffer poll failed; deny events stop");
                return;
            }
        };
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            match layout::decode(&item) {
                Ok(ev) => {
                    if tx.try_send(ev).is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    errors += 1;
                    if errors.is_power_of_two() {
                        tracing::error!(error = %e, errors, "undecodable egress deny record");
                    }
                }
            }
        }
        guard.clear_ready();
    }
}
