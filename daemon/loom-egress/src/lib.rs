//! Kernel-enforced egress policy of weavers: the cgroup `connect4/6` and `sendmsg4/6`
//! programs of `ebpf/egress.bpf.c`, loaded with aya, a rule map per weaver scope updated
//! live, and the decoded deny events. See README.md for why cgroup programs and what
//! they do not cover.

mod egress;
pub mod layout;

pub use egress::{
    Attachment, Egress, EgressConfig, EgressError, Expiry, NETNS_SCOPE, OBJECT, PROGRAMS, Scope, cgroup_id,
    cgroup2_mount, current_netns_cookie,
};
pub use layout::{DenyEvent, DenyReason, Hook};
