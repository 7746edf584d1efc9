//! loom's pure logic. Nothing in this crate touches the file system, the network, the clock
//! or a random source: callers pass in what they read, and tests run without root.

pub mod access;
pub mod api;
pub mod config;
pub mod restart;
pub mod sse;
pub mod units;
pub mod weaver;
