//! Shared moves of the escape suite: run a probe script in a real weaver and read what it
//! printed, exec into a weaver, act as an operator who is not admin.
#![allow(dead_code)]

use std::process::Output;
use std::time::Duration;

pub use crate::common::{Loomd, as_user, ensure_group, privileged};

/// The access config every escape test runs with: a separate admin and operator group, so a
/// test can act as an operator who is not admin.
pub const ACCESS: &str = "[access]\nadmin_group = \"loomesc-admin\"\noperator_group = \"loomesc-op\"\n";

/// A loomd with [`ACCESS`] plus `extra` config.
pub fn loomd(extra: &str) -> Loomd {
    ensure_group("loomesc-admin");
    ensure_group("loomesc-op");
    Loomd::start_with_config(Some(&format!("{ACCESS}{extra}")))
}

/// The gid of the operator group, for [`as_operator`].
pub fn operator_gid() -> u32 {
    ensure_group("loomesc-op")
}

/// `loom --json ARGS` as uid `uid`, an operator who is not admin.
pub fn as_operator(d: &Loomd, uid: u32, args: &[&str]) -> Output {
    as_user(d, uid, &[operator_gid()], args)
}

/// Runs `script` with `/bin/sh -c` in a new weaver named `name` (extra create flags in
/// `flags`), waits for it to exit, and returns its log: what the attack printed.
pub fn probe(d: &Loomd, name: &str, flags: &[&str], script: &str) -> String {
    let mut args = vec!["weaver", "create", "--name", name];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
    let w = d.cli_json(&args);
    assert_eq!(w["state"], "running", "{w}");
    d.wait_for(name, "exited", Duration::from_secs(60), |v| v["state"] == "exited" || v["state"] == "failed");
    d.logs(name)
}

/// The value printed as `KEY=value` on a line of `log`.
pub fn field(log: &str, key: &str) -> String {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= missing in the probe's output:\n{log}"))
        .trim()
        .to_string()
}

/// A weaver that stays up (`sleep`) for attacks driven from outside.
pub fn sleeper(d: &Loomd, name: &str, flags: &[&str]) -> serde_json::Value {
    let mut args = vec!["weaver", "create", "--name", name];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sleep", "600"]);
    let w = d.cli_json(&args);
    assert_eq!(w["state"], "running", "{w}");
    w
}

/// `loom weaver exec NAME -- /bin/sh -c SCRIPT` as root; its output.
pub fn exec_sh(d: &Loomd, name: &str, script: &str) -> Output {
    d.cli(&["weaver", "exec", name, "--", "/bin/sh", "-c", script])
}
