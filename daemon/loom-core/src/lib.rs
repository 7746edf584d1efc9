//! loom's pure logic. Nothing in this crate touches the file system, the network, the clock
//! or a random source: callers pass in what they read (e.g. `/proc/self/mounts` for
//! [`mounts`]), and tests run without root.

pub mod access;
pub mod api;
pub mod config;
pub mod declare;
pub mod devices;
pub mod egress;
pub mod error;
pub mod mounts;
pub mod net;
pub mod repo;
pub mod resolve;
pub mod restart;
pub mod sse;
pub mod ssh;
pub mod tailscale;
pub mod terminal;
pub mod units;
pub mod weaver;

pub use error::error_chain;
