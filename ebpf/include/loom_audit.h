/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0 */
/*
 * Event layout shared by the eBPF audit programs (audit.bpf.c) and their Rust
 * mirrors (daemon/loom-audit/src/layout.rs). The layout test compiles this
 * header on the host and compares every size and offset with the Rust side, so
 * any change here must be made there too.
 *
 * Rules that keep the layout identical on every compiler and architecture:
 * fixed-width types only, every field naturally aligned, explicit padding,
 * every struct a multiple of 8 bytes. The includer provides __u8 .. __s64
 * (loom_vmlinux.h in BPF, <linux/types.h> on the host).
 */
#ifndef LOOM_AUDIT_H
#define LOOM_AUDIT_H

#define LOOM_COMM_LEN 16
#define LOOM_PATH_LEN 512
#define LOOM_AUX_LEN 32
#define LOOM_EXEC_FILENAME_LEN 512
#define LOOM_EXEC_ARGV_LEN 2048
#define LOOM_UNIX_PATH_LEN 108
#define LOOM_MAX_CGROUP_LEVEL 8

/* Event kinds; also the index into the per-kind loss counters. */
enum loom_kind {
	LOOM_KIND_EXEC = 1,
	LOOM_KIND_EXIT = 2,
	LOOM_KIND_OPEN = 3,
	LOOM_KIND_UNLINK = 4,
	LOOM_KIND_RENAME = 5,
	LOOM_KIND_CONNECT = 6,
	LOOM_KIND_BIND = 7,
	LOOM_KIND_LISTEN = 8,
	LOOM_KIND_SETID = 9,
	LOOM_KIND_PTRACE = 10,
	LOOM_KIND_MOUNT = 11,
	LOOM_KIND_UMOUNT = 12,
	LOOM_KIND_UNSHARE = 13,
	LOOM_KIND_SETNS = 14,
	LOOM_KIND_BPF = 15,
	LOOM_KIND_MODULE = 16,
	LOOM_KIND_DENIED = 17,
	LOOM_KIND_MAX = 18,
};

/* Which syscall (or kernel event) produced the record. */
enum loom_op {
	LOOM_OP_EXEC = 1,
	LOOM_OP_EXIT = 2,
	LOOM_OP_OPEN = 3,
	LOOM_OP_OPENAT = 4,
	LOOM_OP_OPENAT2 = 5,
	LOOM_OP_CREAT = 6,
	LOOM_OP_UNLINK = 7,
	LOOM_OP_UNLINKAT = 8,
	LOOM_OP_RMDIR = 9,
	LOOM_OP_RENAME = 10,
	LOOM_OP_RENAMEAT = 11,
	LOOM_OP_RENAMEAT2 = 12,
	LOOM_OP_CONNECT = 13,
	LOOM_OP_BIND = 14,
	LOOM_OP_LISTEN = 15,
	LOOM_OP_SETUID = 16,
	LOOM_OP_SETGID = 17,
	LOOM_OP_SETREUID = 18,
	LOOM_OP_SETREGID = 19,
	LOOM_OP_SETRESUID = 20,
	LOOM_OP_SETRESGID = 21,
	LOOM_OP_SETFSUID = 22,
	LOOM_OP_SETFSGID = 23,
	LOOM_OP_PTRACE = 24,
	LOOM_OP_MOUNT = 25,
	LOOM_OP_UMOUNT2 = 26,
	LOOM_OP_UNSHARE = 27,
	LOOM_OP_SETNS = 28,
	LOOM_OP_BPF = 29,
	LOOM_OP_INIT_MODULE = 30,
	LOOM_OP_FINIT_MODULE = 31,
	LOOM_OP_DELETE_MODULE = 32,
	LOOM_OP_MOVE_MOUNT = 33,
	LOOM_OP_SETGROUPS = 34,
	LOOM_OP_PERF_EVENT_OPEN = 35,
	LOOM_OP_KEYCTL = 36,
	LOOM_OP_ADD_KEY = 37,
	LOOM_OP_IO_URING_SETUP = 38,
	LOOM_OP_OPEN_BY_HANDLE_AT = 39,
	LOOM_OP_KEXEC_LOAD = 40,
	LOOM_OP_CLONE = 41,
};

/* Common header, first in every record. */
struct loom_hdr {
	__u64 seq;       /* global per loaded program set; gaps = losses */
	__u64 ts_ns;     /* bpf_ktime_get_boot_ns(): CLOCK_BOOTTIME */
	__u64 cgroup_id; /* the watched (weaver) cgroup that matched */
	__u32 kind;      /* enum loom_kind */
	__u32 op;        /* enum loom_op */
	__u32 pid;       /* thread group id */
	__u32 tid;
	__u32 ppid;      /* real parent's thread group id */
	__u32 uid;       /* real uid, init user namespace */
	__u32 gid;
	__u32 euid;
	char comm[LOOM_COMM_LEN];
};

/* exec: sched_process_exec. argv is the new image's NUL-separated argument area. */
struct loom_ev_exec {
	struct loom_hdr hdr;
	__u32 old_pid;
	__u32 flags;        /* LOOM_EXEC_* */
	__u32 filename_len; /* bytes copied incl. NUL */
	__u32 argv_len;     /* bytes copied */
	char filename[LOOM_EXEC_FILENAME_LEN];
	char argv[LOOM_EXEC_ARGV_LEN];
};
#define LOOM_EXEC_FILENAME_TRUNCATED 1
#define LOOM_EXEC_ARGV_TRUNCATED 2

/*
 * Events whose data is a few integers: exit, listen, setid family, ptrace,
 * unshare, setns, bpf. Meaning of args[] per op:
 *   exit: [0] raw exit_code (status << 8 | signal)
 *   listen: fd, backlog;  setns: fd, nstype;  unshare: flags
 *   set*id: the ids as passed (-1 = unchanged);  setgroups: count
 *   ptrace: request, pid, addr;  bpf: cmd, size
 *   denied (a privileged syscall refused, by the seccomp filter or the
 *   kernel; op says which): [0] the errno
 */
struct loom_ev_args {
	struct loom_hdr hdr;
	__s64 args[4];
};

/*
 * Events with one path: open/creat (args: dirfd, flags, mode), unlink/rmdir
 * (dirfd, flags), umount2 (flags), init_module (-1, len; path = parameters),
 * finit_module (fd, flags; path = parameters), delete_module (-1, flags;
 * path = module name). Relative open/unlink paths are made absolute by the
 * kernel side when it can resolve the directory.
 */
struct loom_ev_path {
	struct loom_hdr hdr;
	__s64 args[4];
	__u32 path_len; /* bytes copied incl. NUL; == LOOM_PATH_LEN: maybe truncated */
	__u32 _pad;
	char path[LOOM_PATH_LEN];
};

/*
 * Events with two paths: rename* (args: olddirfd, newdirfd, flags; path =
 * old, path2 = new), mount (args: flags; path = source, path2 = target,
 * aux = fstype), move_mount (args: from_dirfd, to_dirfd, flags).
 */
struct loom_ev_path2 {
	struct loom_hdr hdr;
	__s64 args[4];
	__u32 path_len;
	__u32 path2_len;
	__u32 aux_len;
	__u32 _pad;
	char aux[LOOM_AUX_LEN];
	char path[LOOM_PATH_LEN];
	char path2[LOOM_PATH_LEN];
};

/* connect/bind: the sockaddr as passed by the caller. */
struct loom_ev_net {
	struct loom_hdr hdr;
	__s32 fd;
	__u32 addrlen;
	__u16 family; /* AF_INET 2, AF_INET6 10, AF_UNIX 1, else raw */
	__u16 port;   /* host byte order */
	__u32 scope_id;
	__u8 addr[16]; /* 4 bytes for AF_INET, 16 for AF_INET6 */
	char unix_path[LOOM_UNIX_PATH_LEN]; /* may start with NUL: abstract */
	__u32 _pad;
};

#endif /* LOOM_AUDIT_H */
