//! The escape suite: every isolation claim in the README's security section, attacked from
//! inside a real weaver (or by an operator who is not admin). Each attack must fail, and each
//! test asserts why it failed, so a test that "passes" because the attack never ran is caught.
//!
//! One module per surface; `support` has the shared moves (a probe weaver, exec, an operator).

mod common;

mod common_systemd;
mod fake_upstream;
#[path = "escape/support.rs"]
mod support;

#[path = "escape/exec.rs"]
mod exec;
#[path = "escape/files.rs"]
mod files;
#[path = "escape/kernel.rs"]
mod kernel;
#[path = "escape/network.rs"]
mod network;
#[path = "escape/proxy.rs"]
mod proxy;
#[path = "escape/repo.rs"]
mod repo;
#[path = "escape/systemd.rs"]
mod systemd;
