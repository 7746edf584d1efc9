//! Attacks through `loom weaver exec`, which loomd runs from the host as root: the weaver's
//! environment (LD_PRELOAD, PATH) must never reach a host process, and what exec starts must be
//! as confined as the weaver itself.

use std::path::Path;

use crate::support::{self, field, privileged};

/// A shared object whose constructor creates the directory named by `LOOM_PWNED` wherever it
/// is loaded: in a host process that is a host path, inside the weaver it is the weaver's.
const PRELOAD_C: &str = r#"
#include <stdlib.h>
#include <sys/stat.h>
__attribute__((constructor)) static void pwn(void) {
    const char *p = getenv("LOOM_PWNED");
    if (p) mkdir(p, 0755);
}
"#;

#[test]
fn the_weavers_environment_never_reaches_the_host_process_that_enters_it() {
    if !privileged("the_weavers_environment_never_reaches_the_host_process_that_enters_it") {
        return;
    }
    let d = support::loomd("");
    let marker_dir = tempfile::Builder::new().prefix("loom-pwned").tempdir_in("/var/tmp").unwrap();
    let preload_marker = marker_dir.path().join("preloaded");
    let path_marker = marker_dir.path().join("path-hijacked");
    let w = support::sleeper(&d, "envy", &[]);
    let id = w["id"].as_str().unwrap();
    // The weaver's workspace as a host path: what a host process would load from.
    let ws = d.state_dir().join("weavers").join(id).join("root/workspace");

    // The weaver plants a preload library and a fake `nsenter` in its workspace...
    let build = format!(
        "cat > /workspace/x.c <<'EOF'\n{PRELOAD_C}\nEOF\ngcc -shared -fPIC -o /workspace/x.so /workspace/x.c && echo BUILT=yes; \
         mkdir -p /workspace/bin && printf '#!/bin/sh\\nmkdir {path_marker}\\n' > /workspace/bin/nsenter && \
         chmod +x /workspace/bin/nsenter && cp /workspace/bin/nsenter /workspace/bin/sh && echo PLANTED=yes",
        path_marker = path_marker.display()
    );
    let out = support::exec_sh(&d, "envy", &build);
    let t = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(field(&t, "BUILT"), "yes", "{t}");
    assert_eq!(field(&t, "PLANTED"), "yes", "{t}");
    assert!(ws.join("x.so").is_file(), "the library is at {} on the host", ws.join("x.so").display());

    // ... and makes them its environment: the next weaver started with it, as `--env` does.
    let env_so = format!("LD_PRELOAD={}", ws.join("x.so").display());
    let env_path = format!("PATH={}:/usr/bin:/bin", ws.join("bin").display());
    let env_marker = format!("LOOM_PWNED={}", preload_marker.display());
    let w2 = support::sleeper(&d, "envy2", &["--env", &env_so, "--env", &env_path, "--env", &env_marker]);
    let id2 = w2["id"].as_str().unwrap();
    let ws2 = d.state_dir().join("weavers").join(id2).join("root/workspace");
    std::fs::copy(ws.join("x.so"), ws2.join("x.so")).unwrap();
    std::fs::create_dir_all(ws2.join("bin")).unwrap();
    for f in ["nsenter", "sh"] {
        std::fs::copy(ws.join("bin").join(f), ws2.join("bin").join(f)).unwrap();
    }

    let out = d.cli(&["weaver", "exec", "envy2", "--", "/bin/sh", "-c", "echo INSIDE=$LOOM_PWNED"]);
    let t = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exec failed: {t}");
    // Inside, the command has the weaver's environment, as a user expects...
    assert_eq!(field(&t, "INSIDE"), preload_marker.display().to_string(), "{t}");
    // ... but no host process loaded the library or ran the planted programs.
    assert!(!Path::new(&preload_marker).exists(), "a host process loaded the weaver's LD_PRELOAD library");
    assert!(!Path::new(&path_marker).exists(), "a host process ran a program found through the weaver's PATH");
}

#[test]
fn exec_reports_exit_codes_and_runs_as_root_in_the_workspace() {
    if !privileged("exec_reports_exit_codes_and_runs_as_root_in_the_workspace") {
        return;
    }
    let d = support::loomd("");
    support::sleeper(&d, "codes", &[]);
    let out = support::exec_sh(&d, "codes", "exit 7");
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    let out = support::exec_sh(&d, "codes", "kill -9 $$");
    assert_eq!(out.status.code(), Some(137), "{}", String::from_utf8_lossy(&out.stderr));
    let out = support::exec_sh(&d, "codes", "echo PWD=$(pwd); echo PID1=$(cat /proc/1/comm); id -u");
    let t = String::from_utf8_lossy(&out.stdout);
    assert_eq!(field(&t, "PWD"), "/workspace", "{t}");
    assert!(t.ends_with("0\n"), "root inside: {t}");
}
