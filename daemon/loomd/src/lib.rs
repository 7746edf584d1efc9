//! loomd: the host daemon. `main.rs` is a thin shell over [`run`]; the daemon's API is
//! [`daemon::Request`], served over HTTP by [`http`], and every kernel or systemd call goes
//! through [`backend`], [`cgroups`] or [`procfs`].

pub mod auditing;
pub mod backend;
pub mod cgroups;
pub mod daemon;
pub mod exec;
pub mod git;
pub mod http;
pub mod image;
pub mod llm;
pub mod logcap;
pub mod net;
pub mod notify;
pub mod procfs;
pub mod rootfs;
pub mod run;
pub mod sandbox;
pub mod secrets;
pub mod shim;
pub mod ssh;
pub mod store;
pub mod threads;
pub mod unpack;
pub mod uploads;
pub mod weaverfs;
mod weaverfs_walk;
pub mod wireguard;

pub use loom_core::error_chain;
