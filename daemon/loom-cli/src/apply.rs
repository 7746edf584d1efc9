//! `loom apply -f FILE` and `loom down -f FILE`: a file of `[weavers.NAME]` tables (TOML, or
//! the same in YAML), read as the user, prompt files inlined, sent to loomd, which plans and
//! applies it under the origin `apply:SOURCE`.

use std::path::{Path, PathBuf};

use loom_core::api::{ApplyRequest, ApplyResult};
use loom_core::declare::ApplyFile;

/// Reads an apply file; `prompt_file`s (relative to the file's directory) are read here, as
/// the user, and sent as `prompt`: loomd never reads a path for a client.
pub fn read_request(path: &Path, source: Option<String>, dry_run: bool, down: bool) -> Result<ApplyRequest, String> {
    let abs = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let source = source.unwrap_or_else(|| abs.display().to_string());
    if down {
        return Ok(ApplyRequest { source, weavers: Default::default(), dry_run, down });
    }
    let text = std::fs::read_to_string(&abs).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut file = parse(&abs, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    for (name, decl) in file.weavers.iter_mut() {
        if let Some(p) = decl.prompt_file.take() {
            if decl.prompt.is_some() {
                return Err(format!("[weavers.{name}]: give either `prompt` or `prompt_file`, not both"));
            }
            let p = dir.join(p);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format!("[weavers.{name}]: prompt_file {}: {e}", p.display()))?;
            decl.prompt = Some(text);
        }
    }
    Ok(ApplyRequest { source, weavers: file.weavers, dry_run, down })
}

/// TOML by default; `.yml`/`.yaml` as YAML with the same shape.
pub fn parse(path: &Path, text: &str) -> Result<ApplyFile, String> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yml" | "yaml") => {
            let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
            let value = match docs.as_slice() {
                [] => serde_json::Value::Object(Default::default()),
                [one] => yaml_to_json(one)?,
                _ => return Err("one YAML document only".into()),
            };
            serde_json::from_value(value).map_err(|e| format!("invalid apply file: {e}"))
        }
        _ => toml::from_str(text).map_err(|e| format!("invalid apply file: {e}")),
    }
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("invalid number {r:?}"))?,
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(h) => {
            let mut m = serde_json::Map::new();
            for (k, v) in h {
                let k = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    other => return Err(format!("a mapping key must be a string, not {other:?}")),
                };
                m.insert(k, yaml_to_json(v)?);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::BadValue => return Err("YAML aliases and bad values are not supported".into()),
    })
}

/// The plan, a line per weaver: `create NAME`, `update NAME`, `remove NAME`, `unchanged NAME`,
/// `conflict NAME (held by ...)`; then what failed.
pub fn render(r: &ApplyResult) -> String {
    let p = &r.plan;
    let mut out = String::new();
    let verb = |planned: &str, done: &str| if r.dry_run { planned.to_string() } else { done.to_string() };
    for (list, planned, done) in [
        (&p.create, "create", "created"),
        (&p.update, "update", "updated"),
        (&p.remove, "remove", "removed"),
        (&p.unchanged, "unchanged", "unchanged"),
    ] {
        for name in list {
            out.push_str(&format!("{}\t{name}\n", verb(planned, done)));
        }
    }
    for c in &p.conflicts {
        out.push_str(&format!("conflict\t{}\t(the name is held by {}: left alone)\n", c.name, c.held_by));
    }
    for e in &r.errors {
        out.push_str(&format!("error\t{e}\n"));
    }
    if r.dry_run {
        out.push_str(&format!("(dry run of {}: nothing changed)\n", r.source));
    }
    loom_core::terminal::sanitize(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_toml_say_the_same() {
        let t = parse(
            Path::new("loom.toml"),
            "[weavers.a]\ncommand = [\"sleep\", \"9\"]\ncpus = 1.5\negress.allow = [\"github.com:443\"]\n",
        )
        .unwrap();
        let y = parse(
            Path::new("loom.yaml"),
            "weavers:\n  a:\n    command: [sleep, \"9\"]\n    cpus: 1.5\n    egress:\n      allow: [\"github.com:443\"]\n",
        )
        .unwrap();
        assert_eq!(t, y);
        let e = parse(Path::new("x.yml"), "weavers:\n  a:\n    comand: [x]\n").unwrap_err();
        assert!(e.contains("unknown field `comand`"), "{e}");
        assert!(parse(Path::new("x.yml"), "a: [").unwrap_err().contains("invalid YAML"));
    }

    #[test]
    fn prompt_files_are_read_here_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fix.md"), "fix it").unwrap();
        let f = dir.path().join("loom.toml");
        std::fs::write(&f, "[weavers.a]\nprompt_file = \"fix.md\"\nmodel = \"anthropic/x\"\n").unwrap();
        let r = read_request(&f, None, true, false).unwrap();
        assert_eq!(r.weavers["a"].prompt.as_deref(), Some("fix it"));
        assert_eq!(r.weavers["a"].prompt_file, None);
        assert_eq!(r.source, std::fs::canonicalize(&f).unwrap().display().to_string());
        let down = read_request(&f, Some("team".into()), false, true).unwrap();
        assert!(down.weavers.is_empty() && down.down && down.source == "team");
    }
}
