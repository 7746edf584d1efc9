// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * loom audit programs: record what processes inside a weaver's cgroup do.
 *
 * Every handler first decides cheaply whether the event is of interest (e.g.
 * write intent for opens), then whether the current task is inside a watched
 * cgroup (the `watched` map, filled by loomd), and only then takes a sequence
 * number and reserves ring-buffer space. A failed reservation is counted in
 * `lost` for its kind; the sequence number it took stays unused, so the gap
 * is visible to user space too.
 *
 * Hooks are syscall and sched tracepoints: stable ABI since long before 5.15,
 * and user space attaches each one separately, so a missing hook (e.g. the
 * legacy open/unlink/rename syscalls on arm64) costs only that hook.
 * Paths and socket addresses are read from user memory at syscall entry, as
 * the caller passed them (relative paths stay relative; dirfd is recorded).
 */
#include "loom_vmlinux.h"
#include "loom_audit.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} events SEC(".maps");

/* watched weaver cgroup id -> 1; filled and emptied by loomd */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} watched SEC(".maps");

/* events dropped because the ring buffer was full, per kind */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LOOM_KIND_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* next sequence number */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seqno SEC(".maps");

/* scratch space to assemble resolved paths: [0, HALF) the directory, built
 * backwards from HALF; [HALF, HALF + PATH_LEN] "/" and the relative path */
#define SCRATCH_HALF 1024
#define MAX_COMPONENTS 32
#define NAME_MASK 255

struct loom_scratch {
	char buf[SCRATCH_HALF * 2 + LOOM_PATH_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct loom_scratch);
} scratch SEC(".maps");

#define O_ACCMODE 00000003
#define O_CREAT 00000100
#define O_TRUNC 00001000
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10

/* The watched cgroup containing the current task (itself or an ancestor), or 0. */
static __always_inline __u64 watched_cgroup(void)
{
	__u64 id = bpf_get_current_cgroup_id();
	if (bpf_map_lookup_elem(&watched, &id))
		return id;
#pragma unroll
	for (int level = 1; level <= LOOM_MAX_CGROUP_LEVEL; level++) {
		__u64 anc = bpf_get_current_ancestor_cgroup_id(level);
		/* 0: deeper than the task's own cgroup; id: the task's own cgroup */
		if (anc == 0 || anc == id)
			break;
		if (bpf_map_lookup_elem(&watched, &anc))
			return anc;
	}
	return 0;
}

static __always_inline void *reserve(__u64 size, __u32 kind, __u32 op, __u64 cgroup_id)
{
	__u32 zero = 0;
	__u64 *next = bpf_map_lookup_elem(&seqno, &zero);
	if (!next)
		return NULL;
	__u64 seq = __sync_fetch_and_add(next, 1);

	struct loom_hdr *h = bpf_ringbuf_reserve(&events, size, 0);
	if (!h) {
		__u64 *count = bpf_map_lookup_elem(&lost, &kind);
		if (count)
			*count += 1;
		return NULL;
	}

	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *parent = NULL;
	const struct cred *cred = NULL;
	int ppid = 0;
	__u32 euid = 0;
	LOOM_CORE_READ(parent, task->real_parent);
	if (parent)
		LOOM_CORE_READ(ppid, parent->tgid);
	LOOM_CORE_READ(cred, task->cred);
	if (cred)
		LOOM_CORE_READ(euid, cred->euid.val);

	h->seq = seq;
	h->ts_ns = bpf_ktime_get_boot_ns();
	h->cgroup_id = cgroup_id;
	h->kind = kind;
	h->op = op;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->ppid = ppid;
	h->uid = (__u32)uid_gid;
	h->gid = uid_gid >> 32;
	h->euid = euid;
	bpf_get_current_comm(h->comm, sizeof(h->comm));
	return h;
}

/*
 * Wake the reader only once the ring is an eighth full: a wakeup per event
 * costs the traced process a context switch. User space also polls every few
 * milliseconds, so a quiet ring is still drained promptly.
 */
static __always_inline void submit(void *e)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);
	bpf_ringbuf_submit(e, avail >= size / 8 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/*
 * An event of `size` bytes for the current task's watched cgroup, its header and
 * its four arguments filled; NULL when the task is not watched or the ring is
 * full. The argument-carrying events all start as loom_ev_args does.
 */
static __always_inline void *reserve_args(__u64 size, __u32 kind, __u32 op, __s64 a0, __s64 a1,
					  __s64 a2, __s64 a3)
{
	_Static_assert(__builtin_offsetof(struct loom_ev_path, args) == __builtin_offsetof(struct loom_ev_args, args),
		       "path events carry their arguments where loom_ev_args does");
	_Static_assert(__builtin_offsetof(struct loom_ev_path2, args) == __builtin_offsetof(struct loom_ev_args, args),
		       "path2 events carry their arguments where loom_ev_args does");
	__u64 cg = watched_cgroup();
	if (!cg)
		return NULL;
	struct loom_ev_args *e = reserve(size, kind, op, cg);
	if (!e)
		return NULL;
	e->args[0] = a0;
	e->args[1] = a1;
	e->args[2] = a2;
	e->args[3] = a3;
	return e;
}

static __always_inline int emit_args(__u32 kind, __u32 op, __s64 a0, __s64 a1, __s64 a2, __s64 a3)
{
	struct loom_ev_args *e = reserve_args(sizeof(*e), kind, op, a0, a1, a2, a3);
	if (e)
		submit(e);
	return 0;
}

static __always_inline __u32 read_user_str(char *dst, __u32 size, const char *src)
{
	long n = bpf_probe_read_user_str(dst, size, src);
	return n > 0 ? (__u32)n : 0;
}

/*
 * Make `path` (`len` bytes incl. NUL, just read from user memory) absolute in
 * the task's own root (a weaver sees its container's root) by prefixing the
 * directory `dirfd` names (AT_FDCWD: the working directory): walk the dentries
 * up, crossing mounts, to the task's root. Absolute paths, and any path whose
 * directory cannot be resolved within MAX_COMPONENTS steps, stay as they are.
 * Returns the new length incl. NUL (LOOM_PATH_LEN: maybe truncated).
 */
static __always_inline __u32 absolutize(char *path, __u32 len, __s32 dirfd)
{
	if (len == 0 || path[0] == '/')
		return len;
	__u32 zero = 0;
	struct loom_scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return len;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fs_struct *fs = NULL;
	struct path base = {}, root = {};
	LOOM_CORE_READ(fs, task->fs);
	if (!fs)
		return len;
	LOOM_CORE_READ(root, fs->root);
	if (dirfd == -100) {
		LOOM_CORE_READ(base, fs->pwd);
	} else {
		struct files_struct *files = NULL;
		struct fdtable *fdt = NULL;
		struct file **fds = NULL;
		struct file *f = NULL;
		unsigned int max_fds = 0;
		LOOM_CORE_READ(files, task->files);
		if (!files)
			return len;
		LOOM_CORE_READ(fdt, files->fdt);
		if (!fdt)
			return len;
		LOOM_CORE_READ(max_fds, fdt->max_fds);
		LOOM_CORE_READ(fds, fdt->fd);
		if (dirfd < 0 || (unsigned int)dirfd >= max_fds || !fds)
			return len;
		bpf_probe_read_kernel(&f, sizeof(f), &fds[dirfd]);
		if (!f)
			return len;
		LOOM_CORE_READ(base, f->f_path);
	}

	__u64 mnt_off = LOOM_CORE_OFFSET(struct mount, mnt);
	struct dentry *dentry = base.dentry;
	struct vfsmount *vfsmnt = base.mnt;
	struct mount *mnt = (void *)vfsmnt - mnt_off;
	__s64 off = SCRATCH_HALF;
	int complete = 0;
	for (int i = 0; i < MAX_COMPONENTS; i++) {
		if (dentry == root.dentry && vfsmnt == root.mnt) {
			complete = 1;
			break;
		}
		struct dentry *mnt_root = NULL, *parent = NULL;
		LOOM_CORE_READ(mnt_root, vfsmnt->mnt_root);
		LOOM_CORE_READ(parent, dentry->d_parent);
		if (dentry == mnt_root || dentry == parent) {
			struct mount *mnt_parent = NULL;
			LOOM_CORE_READ(mnt_parent, mnt->mnt_parent);
			if (!mnt_parent || mnt_parent == mnt) {
				/* the namespace's root mount: done */
				complete = 1;
				break;
			}
			LOOM_CORE_READ(dentry, mnt->mnt_mountpoint);
			mnt = mnt_parent;
			vfsmnt = (void *)mnt + mnt_off;
			continue;
		}
		__u32 nlen = 0;
		const unsigned char *name = NULL;
		LOOM_CORE_READ(nlen, dentry->d_name.len);
		LOOM_CORE_READ(name, dentry->d_name.name);
		nlen &= NAME_MASK;
		off -= nlen + 1;
		if (off < 0 || off >= SCRATCH_HALF)
			break;
		s->buf[off] = '/';
		/* re-bound the size in the register the helper gets: clang may
		 * otherwise pass a copy the verifier knows nothing about */
		asm volatile("%0 &= 255" : "+r"(nlen));
		bpf_probe_read_kernel(&s->buf[off + 1], nlen, name);
		dentry = parent;
	}
	if (!complete || off < 0 || off > SCRATCH_HALF)
		return len;

	/* directory at [off, HALF) ("" for the root), then "/" and the relative path */
	s->buf[SCRATCH_HALF] = '/';
	bpf_probe_read_kernel(&s->buf[SCRATCH_HALF + 1], LOOM_PATH_LEN - 1, path);
	__u64 total = (SCRATCH_HALF - off) + 1 + len;
	if (total > LOOM_PATH_LEN)
		total = LOOM_PATH_LEN;
	bpf_probe_read_kernel(path, total, &s->buf[off]);
	path[LOOM_PATH_LEN - 1] = 0;
	return total;
}

/* resolve: a0 is the dirfd the path is relative to; make the path absolute */
static __always_inline int emit_path(__u32 kind, __u32 op, int resolve, const char *path, __s64 a0,
				     __s64 a1, __s64 a2)
{
	struct loom_ev_path *e = reserve_args(sizeof(*e), kind, op, a0, a1, a2, 0);
	if (!e)
		return 0;
	e->_pad = 0;
	e->path_len = read_user_str(e->path, sizeof(e->path), path);
	if (resolve)
		e->path_len = absolutize(e->path, e->path_len, (__s32)a0);
	submit(e);
	return 0;
}

/* resolve: a0 and a1 are the dirfds of path and path2; make both absolute */
static __always_inline int emit_path2(__u32 kind, __u32 op, int resolve, const char *path,
				      const char *path2, const char *aux, __s64 a0, __s64 a1, __s64 a2)
{
	struct loom_ev_path2 *e = reserve_args(sizeof(*e), kind, op, a0, a1, a2, 0);
	if (!e)
		return 0;
	e->_pad = 0;
	e->path_len = path ? read_user_str(e->path, sizeof(e->path), path) : 0;
	e->path2_len = path2 ? read_user_str(e->path2, sizeof(e->path2), path2) : 0;
	e->aux_len = aux ? read_user_str(e->aux, sizeof(e->aux), aux) : 0;
	if (resolve) {
		e->path_len = absolutize(e->path, e->path_len, (__s32)a0);
		e->path2_len = absolutize(e->path2, e->path2_len, (__s32)a1);
	}
	submit(e);
	return 0;
}

static __always_inline int emit_net(__u32 kind, __u32 op, __s32 fd, const void *addr, __s32 addrlen)
{
	__u64 cg = watched_cgroup();
	if (!cg)
		return 0;
	struct loom_ev_net *e = reserve(sizeof(*e), kind, op, cg);
	if (!e)
		return 0;
	e->fd = fd;
	e->addrlen = addrlen;
	e->family = 0;
	e->port = 0;
	e->scope_id = 0;
	e->_pad = 0;
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	e->unix_path[0] = 0;

	__u16 family = 0;
	__u16 port = 0;
	bpf_probe_read_user(&family, sizeof(family), addr);
	e->family = family;
	if (family == AF_INET) {
		bpf_probe_read_user(&port, sizeof(port), addr + 2);
		bpf_probe_read_user(e->addr, 4, addr + 4);
	} else if (family == AF_INET6) {
		bpf_probe_read_user(&port, sizeof(port), addr + 2);
		bpf_probe_read_user(e->addr, 16, addr + 8);
		bpf_probe_read_user(&e->scope_id, 4, addr + 24);
	} else if (family == AF_UNIX) {
		/* sun_path is not necessarily NUL-terminated; user space bounds it by addrlen */
		__s64 n = (__s64)addrlen - 2;
		if (n > LOOM_UNIX_PATH_LEN)
			n = LOOM_UNIX_PATH_LEN;
		if (n > 0)
			bpf_probe_read_user(e->unix_path, n, addr + 2);
	}
	e->port = __builtin_bswap16(port);
	submit(e);
	return 0;
}

static __always_inline int write_intent(__u64 flags)
{
	return (flags & O_ACCMODE) != 0 || (flags & (O_CREAT | O_TRUNC)) != 0;
}

#define ARG(n) ((__s64)ctx->args[n])
#define UPTR(n) ((const char *)ctx->args[n])

/* ---- process lifecycle ---- */

SEC("tracepoint/sched/sched_process_exec")
int sched_process_exec(struct loom_sched_exec_ctx *ctx)
{
	__u64 cg = watched_cgroup();
	if (!cg)
		return 0;
	struct loom_ev_exec *e = reserve(sizeof(*e), LOOM_KIND_EXEC, LOOM_OP_EXEC, cg);
	if (!e)
		return 0;
	e->old_pid = ctx->old_pid;
	e->flags = 0;

	__u32 off = ctx->data_loc_filename & 0xFFFF;
	long n = bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (void *)ctx + off);
	e->filename_len = n > 0 ? (__u32)n : 0;
	/* "./configure" -> "/workspace/configure"; the cwd is still the caller's */
	_Static_assert(LOOM_EXEC_FILENAME_LEN == LOOM_PATH_LEN, "absolutize needs a path-sized buffer");
	e->filename_len = absolutize(e->filename, e->filename_len, -100);
	if (e->filename_len >= sizeof(e->filename))
		e->flags |= LOOM_EXEC_FILENAME_TRUNCATED;

	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct mm_struct *mm = NULL;
	unsigned long start = 0, end = 0;
	LOOM_CORE_READ(mm, task->mm);
	if (mm) {
		LOOM_CORE_READ(start, mm->arg_start);
		LOOM_CORE_READ(end, mm->arg_end);
	}
	__u64 len = end > start ? end - start : 0;
	if (len > LOOM_EXEC_ARGV_LEN) {
		len = LOOM_EXEC_ARGV_LEN;
		e->flags |= LOOM_EXEC_ARGV_TRUNCATED;
	}
	if (len > 0 && bpf_probe_read_user(e->argv, len, (const void *)start) < 0)
		len = 0;
	e->argv_len = len;
	submit(e);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int sched_process_exit(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	/* one record per process: when its thread group leader exits */
	if ((__u32)pid_tgid != (__u32)(pid_tgid >> 32))
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	int code = 0;
	LOOM_CORE_READ(code, task->exit_code);
	return emit_args(LOOM_KIND_EXIT, LOOM_OP_EXIT, code, 0, 0, 0);
}

/* ---- files ---- */

SEC("tracepoint/syscalls/sys_enter_open")
int sys_enter_open(struct loom_sys_enter_ctx *ctx)
{
	if (!write_intent(ctx->args[1]))
		return 0;
	return emit_path(LOOM_KIND_OPEN, LOOM_OP_OPEN, 1, UPTR(0), -100, ARG(1), ARG(2));
}

SEC("tracepoint/syscalls/sys_enter_openat")
int sys_enter_openat(struct loom_sys_enter_ctx *ctx)
{
	if (!write_intent(ctx->args[2]))
		return 0;
	return emit_path(LOOM_KIND_OPEN, LOOM_OP_OPENAT, 1, UPTR(1), (__s32)ARG(0), ARG(2), ARG(3));
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int sys_enter_openat2(struct loom_sys_enter_ctx *ctx)
{
	/* struct open_how { __u64 flags; __u64 mode; __u64 resolve; } */
	__u64 how[2] = {0, 0};
	bpf_probe_read_user(how, sizeof(how), (const void *)ctx->args[2]);
	if (!write_intent(how[0]))
		return 0;
	return emit_path(LOOM_KIND_OPEN, LOOM_OP_OPENAT2, 1, UPTR(1), (__s32)ARG(0), how[0], how[1]);
}

SEC("tracepoint/syscalls/sys_enter_creat")
int sys_enter_creat(struct loom_sys_enter_ctx *ctx)
{
	return emit_path(LOOM_KIND_OPEN, LOOM_OP_CREAT, 1, UPTR(0), -100, O_CREAT | O_TRUNC | 1, ARG(1));
}

SEC("tracepoint/syscalls/sys_enter_unlink")
int sys_enter_unlink(struct loom_sys_enter_ctx *ctx)
{
	return emit_path(LOOM_KIND_UNLINK, LOOM_OP_UNLINK, 1, UPTR(0), -100, 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_unlinkat")
int sys_enter_unlinkat(struct loom_sys_enter_ctx *ctx)
{
	return emit_path(LOOM_KIND_UNLINK, LOOM_OP_UNLINKAT, 1, UPTR(1), (__s32)ARG(0), ARG(2), 0);
}

SEC("tracepoint/syscalls/sys_enter_rmdir")
int sys_enter_rmdir(struct loom_sys_enter_ctx *ctx)
{
	return emit_path(LOOM_KIND_UNLINK, LOOM_OP_RMDIR, 1, UPTR(0), -100, 0x200, 0);
}

SEC("tracepoint/syscalls/sys_enter_rename")
int sys_enter_rename(struct loom_sys_enter_ctx *ctx)
{
	return emit_path2(LOOM_KIND_RENAME, LOOM_OP_RENAME, 1, UPTR(0), UPTR(1), NULL, -100, -100, 0);
}

SEC("tracepoint/syscalls/sys_enter_renameat")
int sys_enter_renameat(struct loom_sys_enter_ctx *ctx)
{
	return emit_path2(LOOM_KIND_RENAME, LOOM_OP_RENAMEAT, 1, UPTR(1), UPTR(3), NULL, (__s32)ARG(0),
			  (__s32)ARG(2), 0);
}

SEC("tracepoint/syscalls/sys_enter_renameat2")
int sys_enter_renameat2(struct loom_sys_enter_ctx *ctx)
{
	return emit_path2(LOOM_KIND_RENAME, LOOM_OP_RENAMEAT2, 1, UPTR(1), UPTR(3), NULL, (__s32)ARG(0),
			  (__s32)ARG(2), ARG(4));
}

/* ---- network ---- */

SEC("tracepoint/syscalls/sys_enter_connect")
int sys_enter_connect(struct loom_sys_enter_ctx *ctx)
{
	return emit_net(LOOM_KIND_CONNECT, LOOM_OP_CONNECT, (__s32)ARG(0), UPTR(1), (__s32)ARG(2));
}

SEC("tracepoint/syscalls/sys_enter_bind")
int sys_enter_bind(struct loom_sys_enter_ctx *ctx)
{
	return emit_net(LOOM_KIND_BIND, LOOM_OP_BIND, (__s32)ARG(0), UPTR(1), (__s32)ARG(2));
}

SEC("tracepoint/syscalls/sys_enter_listen")
int sys_enter_listen(struct loom_sys_enter_ctx *ctx)
{
	return emit_args(LOOM_KIND_LISTEN, LOOM_OP_LISTEN, (__s32)ARG(0), (__s32)ARG(1), 0, 0);
}

/* ---- credentials ---- */

#define SETID(name, op, n0, n1, n2)                                                       \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                        \
	int sys_enter_##name(struct loom_sys_enter_ctx *ctx)                               \
	{                                                                                  \
		return emit_args(LOOM_KIND_SETID, op, n0, n1, n2, 0);                      \
	}

SETID(setuid, LOOM_OP_SETUID, (__s32)ARG(0), -1, -1)
SETID(setgid, LOOM_OP_SETGID, (__s32)ARG(0), -1, -1)
SETID(setreuid, LOOM_OP_SETREUID, (__s32)ARG(0), (__s32)ARG(1), -1)
SETID(setregid, LOOM_OP_SETREGID, (__s32)ARG(0), (__s32)ARG(1), -1)
SETID(setresuid, LOOM_OP_SETRESUID, (__s32)ARG(0), (__s32)ARG(1), (__s32)ARG(2))
SETID(setresgid, LOOM_OP_SETRESGID, (__s32)ARG(0), (__s32)ARG(1), (__s32)ARG(2))
SETID(setfsuid, LOOM_OP_SETFSUID, (__s32)ARG(0), -1, -1)
SETID(setfsgid, LOOM_OP_SETFSGID, (__s32)ARG(0), -1, -1)
SETID(setgroups, LOOM_OP_SETGROUPS, (__s32)ARG(0), -1, -1)

/* ---- process control, namespaces, mounts, kernel ---- */

SEC("tracepoint/syscalls/sys_enter_ptrace")
int sys_enter_ptrace(struct loom_sys_enter_ctx *ctx)
{
	return emit_args(LOOM_KIND_PTRACE, LOOM_OP_PTRACE, ARG(0), (__s32)ARG(1), ARG(2), 0);
}

SEC("tracepoint/syscalls/sys_enter_mount")
int sys_enter_mount(struct loom_sys_enter_ctx *ctx)
{
	return emit_path2(LOOM_KIND_MOUNT, LOOM_OP_MOUNT, 0, UPTR(0), UPTR(1), UPTR(2), ARG(3), 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_move_mount")
int sys_enter_move_mount(struct loom_sys_enter_ctx *ctx)
{
	return emit_path2(LOOM_KIND_MOUNT, LOOM_OP_MOVE_MOUNT, 0, UPTR(1), UPTR(3), NULL, (__s32)ARG(0),
			  (__s32)ARG(2), ARG(4));
}

SEC("tracepoint/syscalls/sys_enter_umount")
int sys_enter_umount(struct loom_sys_enter_ctx *ctx)
{
	return emit_path(LOOM_KIND_UMOUNT, LOOM_OP_UMOUNT2, 0, UPTR(0), ARG(1), 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_unshare")
int sys_enter_unshare(struct loom_sys_enter_ctx *ctx)
{
	return emit_args(LOOM_KIND_UNSHARE, LOOM_OP_UNSHARE, ARG(0), 0, 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_setns")
int sys_enter_setns(struct loom_sys_enter_ctx *ctx)
{
	return emit_args(LOOM_KIND_SETNS, LOOM_OP_SETNS, (__s32)ARG(0), (__s32)ARG(1), 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_bpf")
int sys_enter_bpf(struct loom_sys_enter_ctx *ctx)
{
	return emit_args(LOOM_KIND_BPF, LOOM_OP_BPF, (__s32)ARG(0), (__u32)ARG(2), 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_init_module")
int sys_enter_init_module(struct loom_sys_enter_ctx *ctx)
{
	return emit_path(LOOM_KIND_MODULE, LOOM_OP_INIT_MODULE, 0, UPTR(2), -1, ARG(1), 0);
}

SEC("tracepoint/syscalls/sys_enter_finit_module")
int sys_enter_finit_module(struct loom_sys_enter_ctx *ctx)
{
	return emit_path(LOOM_KIND_MODULE, LOOM_OP_FINIT_MODULE, 0, UPTR(1), (__s32)ARG(0), ARG(2), 0);
}

SEC("tracepoint/syscalls/sys_enter_delete_module")
int sys_enter_delete_module(struct loom_sys_enter_ctx *ctx)
{
	return emit_path(LOOM_KIND_MODULE, LOOM_OP_DELETE_MODULE, 0, UPTR(0), -1, ARG(1), 0);
}

/* ---- refusals ----
 * A syscall the weaver's seccomp filter refuses never reaches its sys_enter
 * tracepoint, but its sys_exit one still fires: record every refusal of the
 * privileged calls (by the filter or by the kernel) as one `denied` event.
 */

#define LOOM_EPERM 1
#define LOOM_EACCES 13

#define DENIED(name, op)                                                                  \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                         \
	int sys_exit_##name(struct loom_sys_exit_ctx *ctx)                                 \
	{                                                                                  \
		if (ctx->ret != -LOOM_EPERM && ctx->ret != -LOOM_EACCES)                   \
			return 0;                                                          \
		return emit_args(LOOM_KIND_DENIED, op, -ctx->ret, 0, 0, 0);                \
	}

DENIED(mount, LOOM_OP_MOUNT)
DENIED(move_mount, LOOM_OP_MOVE_MOUNT)
DENIED(umount, LOOM_OP_UMOUNT2)
DENIED(unshare, LOOM_OP_UNSHARE)
DENIED(setns, LOOM_OP_SETNS)
DENIED(bpf, LOOM_OP_BPF)
DENIED(init_module, LOOM_OP_INIT_MODULE)
DENIED(finit_module, LOOM_OP_FINIT_MODULE)
DENIED(delete_module, LOOM_OP_DELETE_MODULE)
DENIED(perf_event_open, LOOM_OP_PERF_EVENT_OPEN)
DENIED(keyctl, LOOM_OP_KEYCTL)
DENIED(add_key, LOOM_OP_ADD_KEY)
DENIED(io_uring_setup, LOOM_OP_IO_URING_SETUP)
DENIED(open_by_handle_at, LOOM_OP_OPEN_BY_HANDLE_AT)
DENIED(kexec_load, LOOM_OP_KEXEC_LOAD)
DENIED(clone, LOOM_OP_CLONE)
