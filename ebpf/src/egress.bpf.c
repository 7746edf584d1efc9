// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * loom egress programs: a weaver's TCP connects and UDP sends are allowed only
 * to destinations its rules name (default deny).
 *
 * A socket's scope is its network namespace's, when loomd registered that
 * namespace (its cookie with LOOM_EGRESS_NETNS_SCOPE set, so it never equals a
 * cgroup id); else the cgroup id of the nearest ancestor of the task (or
 * itself) found in `scopes`. loomd attaches the programs once, to the root of
 * the cgroup v2 hierarchy, and registers each weaver's namespace before its
 * first process: the scope holds from the first instant on both backends,
 * whichever cgroup systemd or loomd puts the weaver in. Loaded with
 * `loom_unscoped_allow` set (that mode), a socket with no scope is not a
 * weaver's and is let through; attached to one weaver cgroup instead, a
 * socket with no scope is refused. Rules
 * live in one LPM trie keyed by (scope, kind, protocol, port, address prefix):
 * a connect is at most four lookups (static rules with the real port, then
 * any port; then the addresses admitted from DNS answers, the same two ways).
 * The two kinds never shadow each other, so an expired admission cannot hide
 * a static rule covering the same address. An IPv4-mapped IPv6 destination
 * is looked up as the IPv4 address it is, so an IPv4 rule covers both socket
 * families and no IPv6 rule (not even ::/0) covers IPv4.
 *
 * Link-local metadata addresses (169.254.0.0/16, fd00:ec2::254) are allowed
 * only by a rule that carries LOOM_EGRESS_NAMES_METADATA (loomd sets it for a
 * rule whose prefix lies inside those ranges), never by 0.0.0.0/0 or ::/0.
 *
 * Returning 0 makes the syscall fail with EPERM at once; every denial is
 * written to `events` (or counted in `lost` if the ring is full).
 */
#include "loom_vmlinux.h"
#include "loom_egress.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_MPTCP 262

/* the BPF target is little-endian (bpfel) */
#define bpf_htonl(x) __builtin_bswap32(x)

struct {
	__uint(type, LOOM_BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, LOOM_BPF_F_NO_PREALLOC);
	__type(key, struct loom_egress_key);
	__type(value, struct loom_egress_value);
} rules SEC(".maps");

/* cgroup id of an attached weaver cgroup -> its scope (the same id) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} scopes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* denials that did not fit into `events` */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* set by the loader: a socket with no scope is not a weaver's (attached at the root) */
volatile const __u8 loom_unscoped_allow = 0;

static __always_inline __u64 find_scope(struct loom_sock_addr_ctx *ctx)
{
	__u64 netns = bpf_get_netns_cookie(ctx) | LOOM_EGRESS_NETNS_SCOPE;
	__u64 *by_netns = bpf_map_lookup_elem(&scopes, &netns);
	if (by_netns)
		return *by_netns;
	/* level 0 is the root cgroup, which is never a weaver's */
	for (int level = 1; level <= LOOM_EGRESS_MAX_LEVEL; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			return 0;
		__u64 *scope = bpf_map_lookup_elem(&scopes, &id);
		if (scope)
			return *scope;
	}
	return 0;
}

static __always_inline int is_metadata(const __u8 *a, int v4)
{
	/* 169.254.0.0/16 */
	if (v4)
		return a[0] == 169 && a[1] == 254;
	/* fd00:ec2::254 */
	int zero = 1;
	for (int i = 4; i < 14; i++)
		zero &= a[i] == 0;
	return zero && a[0] == 0xfd && a[1] == 0x00 && a[2] == 0x0e && a[3] == 0xc2 && a[14] == 0x02 && a[15] == 0x54;
}

static __always_inline int admits(struct loom_egress_key *k, __u8 kind, __u16 port, int metadata, __u64 now)
{
	k->kind = kind | (k->kind & LOOM_EGRESS_KIND_V4);
	k->port = port;
	struct loom_egress_value *v = bpf_map_lookup_elem(&rules, k);
	if (!v)
		return 0;
	if (v->expires_ns && now >= v->expires_ns)
		return 0;
	if (metadata && !(v->flags & LOOM_EGRESS_NAMES_METADATA))
		return 0;
	return 1;
}

static __always_inline void report(struct loom_sock_addr_ctx *ctx, const struct loom_egress_key *k, __u64 cgroup_id,
				   __u8 hook, __u8 reason, __u64 now)
{
	struct loom_egress_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&lost, &zero);
		if (n)
			__sync_fetch_and_add(n, 1);
		return;
	}
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	e->ktime_ns = now;
	e->scope = k->scope;
	e->cgroup_id = cgroup_id;
	e->tgid = pid_tgid >> 32;
	e->pid = (__u32)pid_tgid;
	for (int i = 0; i < 16; i++)
		e->addr[i] = k->addr[i];
	__u16 be = k->port;
	e->port = (__u16)((be >> 8) | (be << 8));
	e->family = (k->kind & LOOM_EGRESS_KIND_V4) ? AF_INET : AF_INET6;
	e->protocol = k->protocol;
	e->hook = hook;
	e->reason = reason;
	e->reserved[0] = 0;
	e->reserved[1] = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int decide(struct loom_sock_addr_ctx *ctx, int v6, __u8 hook)
{
	struct loom_egress_key k = {};
	if (v6) {
		/* user_ip6 is read as four aligned words, as the verifier requires */
		__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
		/* ::ffff:a.b.c.d (network order words: 0, 0, 0x0000ffff in memory order) */
		if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff)) {
			k.kind = LOOM_EGRESS_KIND_V4;
			__builtin_memcpy(&k.addr[0], &w3, 4);
		} else {
			__builtin_memcpy(&k.addr[0], &w0, 4);
			__builtin_memcpy(&k.addr[4], &w1, 4);
			__builtin_memcpy(&k.addr[8], &w2, 4);
			__builtin_memcpy(&k.addr[12], &w3, 4);
		}
	} else {
		__u32 w = ctx->user_ip4;
		k.kind = LOOM_EGRESS_KIND_V4;
		__builtin_memcpy(&k.addr[0], &w, 4);
	}
	int v4 = k.kind & LOOM_EGRESS_KIND_V4;
	k.prefixlen = 96 + (v4 ? 32 : 128);
	/* user_port is in network order in its low 16 bits */
	__u16 port = (__u16)ctx->user_port;
	k.port = port;

	__u32 proto = ctx->protocol;
	if (proto == 0)
		proto = ctx->type == SOCK_STREAM ? IPPROTO_TCP : ctx->type == SOCK_DGRAM ? IPPROTO_UDP : 0;
	if (proto == IPPROTO_MPTCP)
		proto = IPPROTO_TCP;

	__u64 now = bpf_ktime_get_ns();
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	k.scope = find_scope(ctx);
	if (!k.scope && loom_unscoped_allow)
		return 1;
	if (!k.scope) {
		report(ctx, &k, cgroup_id, hook, LOOM_EGRESS_NO_SCOPE, now);
		return 0;
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
		k.protocol = proto > 255 ? 255 : proto;
		report(ctx, &k, cgroup_id, hook, LOOM_EGRESS_PROTOCOL, now);
		return 0;
	}
	k.protocol = proto;

	int metadata = is_metadata(k.addr, v4);
	if (admits(&k, LOOM_EGRESS_KIND_STATIC, port, metadata, now) ||
	    admits(&k, LOOM_EGRESS_KIND_STATIC, 0, metadata, now) ||
	    admits(&k, LOOM_EGRESS_KIND_ADMITTED, port, metadata, now) ||
	    admits(&k, LOOM_EGRESS_KIND_ADMITTED, 0, metadata, now))
		return 1;
	k.port = port;
	report(ctx, &k, cgroup_id, hook, metadata ? LOOM_EGRESS_METADATA : LOOM_EGRESS_NO_RULE, now);
	return 0;
}

SEC("cgroup/connect4")
int loom_connect4(struct loom_sock_addr_ctx *ctx)
{
	return decide(ctx, 0, LOOM_EGRESS_HOOK_CONNECT);
}

SEC("cgroup/connect6")
int loom_connect6(struct loom_sock_addr_ctx *ctx)
{
	return decide(ctx, 1, LOOM_EGRESS_HOOK_CONNECT);
}

SEC("cgroup/sendmsg4")
int loom_sendmsg4(struct loom_sock_addr_ctx *ctx)
{
	return decide(ctx, 0, LOOM_EGRESS_HOOK_SENDMSG);
}

SEC("cgroup/sendmsg6")
int loom_sendmsg6(struct loom_sock_addr_ctx *ctx)
{
	return decide(ctx, 1, LOOM_EGRESS_HOOK_SENDMSG);
}
