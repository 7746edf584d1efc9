//! The escape suite: every isolation claim in the README's security section, attacked from
//! inside a real weaver (or by an operator who is not admin). Each attack must fail, and each
//! test asserts why it failed, so a test that "passes" because the attack never ran is caught.
//!
//! One module per surface; `support` has the shared moves (a probe weaver, exec, an operator).

mod common;

#[path = "escape/support.rs"]
mod support;

#[path = "escape/repo.rs"]
mod repo;
