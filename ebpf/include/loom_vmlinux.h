/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0 */
/*
 * The few kernel types and BPF helpers the audit programs use, written by hand
 * instead of a vmlinux.h dumped from the build host, so the committed object
 * does not depend on which kernel built it. Kernel structs carry
 * preserve_access_index: the loader relocates their field offsets against the
 * running kernel's BTF (CO-RE), so only the names below must exist there.
 * Tracepoint contexts are the tracefs formats, which are ABI and not relocated.
 */
#ifndef LOOM_VMLINUX_H
#define LOOM_VMLINUX_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;

#define SEC(name) __attribute__((section(name), used))
#define __always_inline inline __attribute__((always_inline))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name
#define NULL ((void *)0)

enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_RINGBUF = 27,
};

/* ---- kernel structs, relocated by CO-RE ---- */

typedef struct {
	__u32 val;
} kuid_t;

typedef struct {
	__u32 val;
} kgid_t;

struct cred {
	kuid_t uid;
	kgid_t gid;
	kuid_t euid;
} __attribute__((preserve_access_index));

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
} __attribute__((preserve_access_index));

struct qstr {
	union {
		struct {
			__u32 hash;
			__u32 len;
		};
		__u64 hash_len;
	};
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
} __attribute__((preserve_access_index));

struct vfsmount {
	struct dentry *mnt_root;
} __attribute__((preserve_access_index));

/* fs/mount.h: a vfsmount is embedded in its struct mount */
struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
} __attribute__((preserve_access_index));

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct fs_struct {
	struct path root;
	struct path pwd;
} __attribute__((preserve_access_index));

struct file {
	struct path f_path;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	struct task_struct *real_parent;
	struct mm_struct *mm;
	const struct cred *cred;
	struct fs_struct *fs;
	struct files_struct *files;
} __attribute__((preserve_access_index));

/* byte offset of a field in the running kernel (CO-RE), e.g. for container_of */
#define LOOM_CORE_OFFSET(type, field) __builtin_preserve_field_info(((type *)0)->field, 0)

/* ---- tracepoint contexts (tracefs format files) ---- */

/* syscalls:sys_enter_* : common fields (8), __syscall_nr (padded to 8), args */
struct loom_sys_enter_ctx {
	__u64 common;
	__s64 nr;
	unsigned long args[6];
};

/* syscalls:sys_exit_* */
struct loom_sys_exit_ctx {
	__u64 common;
	__s64 nr;
	__s64 ret;
};

/* sched:sched_process_exec */
struct loom_sched_exec_ctx {
	__u64 common;
	__u32 data_loc_filename; /* offset in low 16 bits, length in high 16 */
	__s32 pid;
	__s32 old_pid;
};

/* ---- helpers (numbers are UAPI and never change) ---- */

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_probe_read)(void *dst, __u32 size, const void *src) = (void *)4;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static __u64 (*bpf_get_current_uid_gid)(void) = (void *)15;
static long (*bpf_get_current_comm)(void *buf, __u32 size_of_buf) = (void *)16;
static __u64 (*bpf_get_current_task)(void) = (void *)35;
static __u64 (*bpf_get_current_cgroup_id)(void) = (void *)80;
static long (*bpf_probe_read_user)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)112;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)113;
static long (*bpf_probe_read_user_str)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)114;
static long (*bpf_probe_read_kernel_str)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)115;
static __u64 (*bpf_get_netns_cookie)(void *ctx) = (void *)122;
static __u64 (*bpf_get_current_ancestor_cgroup_id)(int ancestor_level) = (void *)123;
static __u64 (*bpf_ktime_get_boot_ns)(void) = (void *)125;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;
static __u64 (*bpf_ringbuf_query)(void *ringbuf, __u64 flags) = (void *)134;

#define BPF_RB_NO_WAKEUP 1
#define BPF_RB_FORCE_WAKEUP 2
#define BPF_RB_AVAIL_DATA 0
#define BPF_RB_RING_SIZE 1

/* Read a kernel pointer field with its offset relocated for the running kernel. */
#define LOOM_CORE_READ(dst, src) \
	bpf_probe_read_kernel(&(dst), sizeof(dst), __builtin_preserve_access_index(&(src)))

#endif /* LOOM_VMLINUX_H */
