//! The config file: any text, mangled `[weaver]` defaults, the example with bytes changed.

use super::*;

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A config with the `[weaver]` table's fields set to anything of any TOML type.
fn weaver_table() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        size_text().prop_map(|s| toml_string(&s)),
        span_text().prop_map(|s| toml_string(&s)),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
        select(vec![
            "\"host\"",
            "\"/img\"",
            "\"rel\"",
            "\"private\"",
            "\"none\"",
            "true",
            "[]",
            "{}",
            "-1",
            "0",
            "0.0"
        ])
        .prop_map(str::to_string),
    ];
    let field = select(vec!["image", "memory", "cpus", "tasks", "ttl", "network", "restart", "start_timeout", "extra"]);
    prop::collection::btree_map(field, value, 0..8).prop_map(|m: BTreeMap<&str, String>| {
        let mut text = String::from("[weaver]\n");
        for (k, v) in m {
            text.push_str(&format!("{k} = {v}\n"));
        }
        text
    })
}

const EXAMPLE: &str = r#"socket = "/run/loomd/loomd.sock"
state_dir = "/var/lib/loom"
backend = "systemd"
[access]
admin_group = "loom-admin"
[weaver]
memory = "4G"
cpus = 2.0
ttl = "4h"
[secrets]
ssh_host_keys = ["/etc/ssh/ssh_host_ed25519_key"]
[providers.anthropic]
secret = "anthropic_api_key"
"#;

fn check_config(text: &str) -> Result<(), TestCaseError> {
    match Config::from_toml(text) {
        Ok(c) => {
            prop_assert!(c.socket.is_absolute() && c.state_dir.is_absolute());
            let w = &c.weaver;
            prop_assert!((MIN_MEMORY..=MAX_MEMORY).contains(&w.memory), "memory {}", w.memory);
            prop_assert!((MIN_TASKS..=MAX_TASKS).contains(&w.tasks));
            prop_assert!((1..=1_024_000).contains(&w.cpus.0));
            prop_assert!(w.ttl.is_none_or(|t| t <= MAX_TTL));
            prop_assert!(w.start_timeout <= MAX_START_TIMEOUT);
            // Every default a config allows must also be a spec resolve_spec accepts.
            match resolve_spec(CreateWeaver::default(), w, "w-default".into()) {
                Ok(spec) => check_spec(&spec)?,
                Err(e) => prop_assert!(false, "the config's defaults are refused: {e}"),
            }
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn config_from_any_text(text in any::<String>()) {
        check_config(&text)?;
    }

    #[test]
    fn config_with_mangled_weaver_defaults(table in weaver_table()) {
        check_config(&table)?;
    }

    #[test]
    fn config_example_with_bytes_changed(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0..3u8), 1..4),
    ) {
        let mut text: Vec<char> = EXAMPLE.chars().collect();
        for (at, c, op) in edits {
            let i = at.index(text.len());
            match op {
                0 => text[i] = c,
                1 => text.insert(i, c),
                _ => {
                    text.remove(i);
                }
            }
        }
        check_config(&text.into_iter().collect::<String>())?;
    }
}
