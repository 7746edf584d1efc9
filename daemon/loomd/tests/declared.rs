//! Declared weavers through a real loomd (nspawn backend) and the real CLI: the config's
//! `[weavers.NAME]` reconciled at start-up and on SIGHUP, and `loom apply` / `loom down`.

mod common;

use std::time::{Duration, Instant};

use common::{Loomd, privileged};

fn config(weavers: &str) -> String {
    format!("[weaver]\nnetwork = \"none\"\n{weavers}")
}

/// Polls until `pred` holds for the weaver list, or panics with the last list and the log.
fn wait_list(d: &Loomd, what: &str, pred: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, v) = d.request("GET", "/v1/weavers", None);
        assert_eq!(status, 200, "{v}");
        let list = v.as_array().cloned().unwrap_or_default();
        if pred(&list) {
            return list;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}: {list:#?}\n{}",
                std::fs::read_to_string(d.log_path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn find<'a>(list: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    list.iter().find(|w| w["name"] == name)
}

fn running_with(list: &[serde_json::Value], name: &str, cmd: &[&str]) -> bool {
    find(list, name).is_some_and(|w| w["state"] == "running" && w["spec"]["command"] == serde_json::json!(cmd))
}

#[test]
fn the_config_is_reconciled_at_start_and_on_sighup_and_hand_made_weavers_survive() {
    if !privileged("the_config_is_reconciled_at_start_and_on_sighup") {
        return;
    }
    let mut d = Loomd::start_with_config(Some(&config(
        "[weavers.keep]\ncommand = [\"sleep\", \"300\"]\n[weavers.gone]\ncommand = [\"sleep\", \"300\"]\n",
    )));
    let list = wait_list(&d, "both declared weavers running", |l| {
        running_with(l, "keep", &["sleep", "300"]) && running_with(l, "gone", &["sleep", "300"])
    });
    assert_eq!(find(&list, "keep").unwrap()["origin"], "config");
    let keep_id = find(&list, "keep").unwrap()["id"].clone();
    let ps = String::from_utf8_lossy(&d.cli(&["weaver", "ps"]).stdout).into_owned();
    assert!(ps.lines().next().unwrap().contains("DECLARED"), "{ps}");
    assert!(ps.lines().any(|l| l.contains("keep") && l.contains("config")), "{ps}");

    // Made by hand: one of its own name, and one whose name the config will declare.
    d.cli_json(&["weaver", "create", "--name", "hand", "--network", "none", "--", "sleep", "300"]);
    d.cli_json(&["weaver", "create", "--name", "taken", "--network", "none", "--", "sleep", "300"]);

    // A bad file changes nothing.
    std::fs::write(d.config.as_ref().unwrap(), config("[weavers.keep]\ncomand = [\"sleep\"]\n")).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(d.log_path()).unwrap().contains("config reload failed") {
        assert!(Instant::now() < deadline, "no reload error logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(d.log_path()).unwrap();
    assert!(log.contains("unknown field `comand`"), "{log}");
    let list = wait_list(&d, "nothing changed", |l| l.len() == 4);
    assert!(running_with(&list, "gone", &["sleep", "300"]), "{list:#?}");

    // keep changes, gone goes, taken is declared but held by hand.
    std::fs::write(
        d.config.as_ref().unwrap(),
        config("[weavers.keep]\ncommand = [\"sleep\", \"301\"]\n[weavers.taken]\ncommand = [\"sleep\", \"9\"]\n"),
    )
    .unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let list = wait_list(&d, "keep restarted with its new spec and gone removed", |l| {
        running_with(l, "keep", &["sleep", "301"]) && find(l, "gone").is_none()
    });
    assert_eq!(find(&list, "keep").unwrap()["id"], keep_id, "an update keeps the weaver");
    assert!(running_with(&list, "hand", &["sleep", "300"]), "a hand-made weaver survives: {list:#?}");
    let taken = find(&list, "taken").unwrap();
    assert!(taken["origin"].is_null() && taken["spec"]["command"] == serde_json::json!(["sleep", "300"]), "{taken}");
    let log = std::fs::read_to_string(d.log_path()).unwrap();
    assert!(log.contains("name is taken by a weaver the config did not declare"), "{log}");

    // An unchanged config is a no-op: the running weaver keeps its run.
    let before = find(&list, "keep").unwrap()["started_at"].clone();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(1500));
    let list = wait_list(&d, "keep still running", |l| running_with(l, "keep", &["sleep", "301"]));
    assert_eq!(find(&list, "keep").unwrap()["started_at"], before);
}

#[test]
fn apply_plans_applies_and_down_removes_only_its_own() {
    if !privileged("apply_plans_applies_and_down_removes_only_its_own") {
        return;
    }
    let d = Loomd::start_with_config(Some(&config("")));
    d.cli_json(&["weaver", "create", "--name", "by-hand", "--network", "none", "--", "sleep", "300"]);
    let file = d.dir.path().join("loom.yml");
    std::fs::write(
        &file,
        "weavers:\n  web:\n    command: [sleep, \"300\"]\n    network: none\n  by-hand:\n    command: [sleep, \"1\"]\n",
    )
    .unwrap();
    let file_s = file.to_str().unwrap();
    let out = d.cli(&["apply", "-f", file_s, "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.lines().any(|l| l == "create\tweb"), "{text}");
    assert!(text.contains("conflict\tby-hand\t(the name is held by hand: left alone)"), "{text}");
    assert!(text.contains("dry run"), "{text}");
    assert_eq!(d.request("GET", "/v1/weavers/web", None).0, 404, "a dry run creates nothing");

    let out = d.cli(&["apply", "-f", file_s]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l == "created\tweb"), "{text}");
    let list = wait_list(&d, "web running", |l| running_with(l, "web", &["sleep", "300"]));
    let origin = find(&list, "web").unwrap()["origin"].as_str().unwrap().to_string();
    assert_eq!(origin, format!("apply:{}", std::fs::canonicalize(&file).unwrap().display()));
    let again = d.cli_json(&["apply", "-f", file_s, "--dry-run"]);
    assert_eq!(again["plan"]["unchanged"], serde_json::json!(["web"]), "{again}");
    assert_eq!(again["plan"]["create"], serde_json::json!([]), "{again}");

    let plan = d.cli_json(&["down", "-f", file_s, "--dry-run"]);
    assert_eq!(plan["plan"]["remove"], serde_json::json!(["web"]), "{plan}");
    let out = d.cli(&["down", "-f", file_s]);
    assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "removed\tweb"));
    let list = wait_list(&d, "web removed", |l| find(l, "web").is_none());
    assert!(running_with(&list, "by-hand", &["sleep", "300"]), "{list:#?}");
}

/// Operators apply as they create and remove: their own weavers only, nothing admin-only, and a
/// name another user's weaver holds is a conflict, not a takeover.
#[test]
fn an_operators_apply_follows_the_access_policy() {
    use common::{as_user, ensure_group};
    use std::os::unix::fs::PermissionsExt;
    if !privileged("an_operators_apply_follows_the_access_policy") {
        return;
    }
    // The config names both groups; loomd resolves them at start.
    ensure_group("loomt-admin");
    let op = ensure_group("loomt-op");
    let d = Loomd::start_with_config(Some(&config(
        "[access]\nadmin_group = \"loomt-admin\"\noperator_group = \"loomt-op\"\n",
    )));
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d.cli_json(&["weaver", "create", "--name", "roots", "--network", "none", "--", "sleep", "300"]);
    let file = d.dir.path().join("op.toml");
    std::fs::write(
        &file,
        "[weavers.roots]\ncommand = [\"sleep\", \"1\"]\n[weavers.mine]\ncommand = [\"sleep\", \"300\"]\n\
         [weavers.wide]\ncommand = [\"sleep\", \"300\"]\nnetwork = \"host\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let f = file.to_str().unwrap();
    let out = as_user(&d, 5001, &[op], &["apply", "-f", f]);
    assert!(!out.status.success(), "a step that failed makes the exit status 1");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["plan"]["conflicts"][0]["name"], "roots", "{r}");
    assert_eq!(r["plan"]["conflicts"][0]["held_by"], "a weaver of another user", "{r}");
    let errors = r["errors"].to_string();
    assert!(errors.contains("wide: creating") && errors.contains("--network host"), "{r}");
    let list = wait_list(&d, "the operator's weaver running", |l| running_with(l, "mine", &["sleep", "300"]));
    assert_eq!(find(&list, "mine").unwrap()["owner_uid"], 5001);
    assert!(running_with(&list, "roots", &["sleep", "300"]), "root's weaver is untouched: {list:#?}");
    assert!(find(&list, "wide").is_none());

    // Another operator's down of the same file (same source) sees none of it.
    let other = as_user(&d, 5002, &[op], &["down", "-f", f]);
    let r: serde_json::Value = serde_json::from_slice(&other.stdout).unwrap();
    assert_eq!(r["plan"]["remove"], serde_json::json!([]), "{r}");
    let out = as_user(&d, 5001, &[op], &["down", "-f", f]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = wait_list(&d, "the operator's weaver removed", |l| find(l, "mine").is_none());
    assert!(running_with(&list, "roots", &["sleep", "300"]));
}
