//! The same attacks on the `systemd` backend: loomd runs under a systemd booted in a container,
//! each weaver is a transient unit running systemd-nspawn, with `DevicePolicy=closed`.

use std::time::Duration;

use crate::common_systemd::{LoomdInSystemd, SOCKET_INSIDE, bootable};
use crate::kernel::{HostProcess, assert_attacks_failed, attack_command};
use crate::support::field;

#[test]
fn kernel_and_exec_attacks_fail_on_the_systemd_backend() {
    if !bootable("kernel_and_exec_attacks_fail_on_the_systemd_backend") {
        return;
    }
    let d = LoomdInSystemd::boot("esc-sd");
    let host = HostProcess::start();
    let cmd = attack_command(&host.pid(), SOCKET_INSIDE);

    let mut args = vec!["--name", "kern"];
    args.push("--");
    args.extend(cmd.iter().map(String::as_str));
    let w = d.create(&args);
    assert_eq!(w["state"], "running", "{w}");
    assert_eq!(w["backend"], "systemd", "{w}");
    d.wait_for("kern", "exited", Duration::from_secs(60), |v| v["state"] == "exited");
    let logs = d.cli(&["weaver", "logs", "kern"]);
    assert_attacks_failed(&String::from_utf8_lossy(&logs.stdout), "systemd backend, the weaver's own process");

    let w = d.create(&["--name", "kern-exec", "--env", "LD_PRELOAD=/nonexistent/x.so", "--", "sleep", "600"]);
    let id = w["id"].as_str().unwrap().to_string();
    let mut args = vec!["weaver", "exec", "kern-exec", "--"];
    args.extend(cmd.iter().map(String::as_str));
    let out = d.cli(&args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_attacks_failed(&text, "systemd backend, loom weaver exec");

    // The unit's device policy, as systemd reports it.
    let unit = format!("loom-weaver-{id}.service");
    let policy = d.c.exec_ok(&["systemctl", "show", "-p", "DevicePolicy", "-p", "DeviceAllow", &unit]).unwrap();
    assert!(policy.contains("DevicePolicy=closed"), "{policy}");
    // The weaver's LD_PRELOAD reached only the weaver: inside, the command sees it.
    let out = d.cli(&["weaver", "exec", "kern-exec", "--", "/bin/sh", "-c", "echo PRELOAD=$LD_PRELOAD"]);
    assert_eq!(field(&String::from_utf8_lossy(&out.stdout), "PRELOAD"), "/nonexistent/x.so");
}
