/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0 */
/*
 * Layouts shared by the egress programs (src/egress.bpf.c) and their loader
 * (daemon/loom-egress/src/layout.rs, checked by its tests): the rule key and
 * value, the deny event, and the sock_addr context, which is UAPI
 * (linux/bpf.h) and rewritten by the verifier, so it is not relocated.
 */
#ifndef LOOM_EGRESS_H
#define LOOM_EGRESS_H

#include "loom_vmlinux.h"

#define LOOM_BPF_MAP_TYPE_LPM_TRIE 11
#define LOOM_BPF_F_NO_PREALLOC 1

/*
 * key.kind: static rules and admitted (DNS) addresses never shadow each
 * other; IPv4 (also IPv4-mapped IPv6 destinations) and IPv6 are separate, so
 * ::/0 does not cover IPv4. An IPv4 address is in addr[0..4].
 */
#define LOOM_EGRESS_KIND_STATIC 0
#define LOOM_EGRESS_KIND_ADMITTED 1
#define LOOM_EGRESS_KIND_V4 2

/* value flags */
#define LOOM_EGRESS_NAMES_METADATA 1

/* event.hook */
#define LOOM_EGRESS_HOOK_CONNECT 1
#define LOOM_EGRESS_HOOK_SENDMSG 2

/* event.reason */
#define LOOM_EGRESS_NO_RULE 1
#define LOOM_EGRESS_METADATA 2
#define LOOM_EGRESS_NO_SCOPE 3
#define LOOM_EGRESS_PROTOCOL 4

/* set in a scope that is a network namespace's cookie, so it never equals a cgroup id */
#define LOOM_EGRESS_NETNS_SCOPE (1ULL << 63)

/* how many cgroup levels are searched for the scope a socket's task is in */
#define LOOM_EGRESS_MAX_LEVEL 16

/*
 * LPM trie key: 96 fixed bits (scope, kind, protocol, port) then the address,
 * so prefixlen = 96 + the address prefix length.
 */
struct loom_egress_key {
	__u32 prefixlen;
	__u64 scope;
	__u8 kind;
	__u8 protocol;
	__u16 port; /* network order; 0 = any port */
	__u8 addr[16];
} __attribute__((packed));

struct loom_egress_value {
	__u64 expires_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC); 0 = never */
	__u32 flags;
	__u32 reserved;
};

struct loom_egress_event {
	__u64 ktime_ns;
	__u64 scope;     /* 0 if the task is in no known scope */
	__u64 cgroup_id; /* the task's own cgroup */
	__u32 tgid;
	__u32 pid;
	__u8 addr[16];   /* IPv6, or IPv4 in the first 4 bytes (family says) */
	__u16 port;      /* host order */
	__u8 family;     /* of the destination: AF_INET (also for IPv4-mapped) or AF_INET6 */
	__u8 protocol;   /* IPPROTO_TCP, IPPROTO_UDP, or what the socket had */
	__u8 hook;
	__u8 reason;
	__u8 reserved[2];
	char comm[16];
};

/* linux/bpf.h: struct bpf_sock_addr */
struct loom_sock_addr_ctx {
	__u32 user_family;
	__u32 user_ip4;
	__u32 user_ip6[4];
	__u32 user_port;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 msg_src_ip4;
	__u32 msg_src_ip6[4];
	__u64 sk;
};

/* the Rust side (layout.rs) decodes these sizes */
_Static_assert(sizeof(struct loom_egress_key) == 4 + 28, "rule key size");
_Static_assert(sizeof(struct loom_egress_value) == 16, "rule value size");
_Static_assert(sizeof(struct loom_egress_event) == 72, "deny event size");

static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;

#endif /* LOOM_EGRESS_H */
