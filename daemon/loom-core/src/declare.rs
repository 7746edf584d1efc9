//! Declared weavers: the `[weavers.NAME]` tables of loomd's config (or of a `loom apply`
//! file) validated into specs, and the reconcile planner that turns "what should exist" and
//! "what exists" into a plan. Pure: reading a `prompt_file` is the caller's (a closure).
//!
//! Only weavers whose origin is the plan's own source are ever created, updated or removed;
//! a weaver made by hand (or by another source) with a declared name is a conflict that the
//! plan reports and leaves alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::CreateWeaver;
use crate::config::WeaverDefaults;
use crate::weaver::{AgentSpec, WeaverSpec, resolve_spec};

/// More declared weavers than this in one source is refused: a plan is applied one weaver at
/// a time under each weaver's lock, and a config this large is a mistake.
pub const MAX_DECLARED: usize = 512;
/// The longest `loom apply` source name (what the CLI passes, by default the file's path).
pub const MAX_SOURCE_LEN: usize = 512;
/// A prompt file larger than this is refused (the agent's prompt is sent with every call).
pub const MAX_PROMPT_BYTES: usize = 256 << 10;

/// One `[weavers.NAME]` table as written. Every limit left out takes `[weaver]`'s default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeaverDecl {
    /// `false` keeps the table but the weaver is not wanted (removed if it exists).
    pub enable: bool,
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub image: Option<String>,
    /// The agent loop's prompt, inline; or `prompt_file`, read by loomd (absolute path).
    pub prompt: Option<String>,
    pub prompt_file: Option<PathBuf>,
    /// `provider/model`: with a prompt, the weaver runs the agent loop.
    pub model: Option<String>,
    /// What to run instead of the agent loop.
    pub command: Vec<String>,
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub tasks: Option<u64>,
    pub ttl: Option<String>,
    pub disk: Option<String>,
    pub log_size: Option<String>,
    pub network: Option<String>,
    pub restart: Option<String>,
    pub env: BTreeMap<String, String>,
    pub egress: DeclEgress,
    pub agent: DeclAgent,
}

impl Default for WeaverDecl {
    fn default() -> Self {
        WeaverDecl {
            enable: true,
            repo: None,
            branch: None,
            image: None,
            prompt: None,
            prompt_file: None,
            model: None,
            command: vec![],
            memory: None,
            cpus: None,
            tasks: None,
            ttl: None,
            disk: None,
            log_size: None,
            network: None,
            restart: None,
            env: BTreeMap::new(),
            egress: DeclEgress::default(),
            agent: DeclAgent::default(),
        }
    }
}

/// `[weavers.NAME.egress]`: rules on top of `[weaver.egress] allow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DeclEgress {
    pub allow: Vec<String>,
}

/// `[weavers.NAME.agent]`: the loop's limits (see `loom weaver create --help`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DeclAgent {
    pub max_iterations: Option<u32>,
    pub until: Option<String>,
    pub check: Option<String>,
    pub wall_clock: Option<String>,
    pub completion_marker: Option<String>,
}

/// A `loom apply` file: the same `[weavers.NAME]` tables as loomd's config, nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ApplyFile {
    pub weavers: BTreeMap<String, WeaverDecl>,
}

/// A declared weaver after validation: the request loomd creates it with, its resolved spec
/// and that spec's hash (what "changed" means).
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredWeaver {
    pub name: String,
    pub request: CreateWeaver,
    pub spec: WeaverSpec,
    pub hash: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeclareError {
    #[error("[weavers.{name}]: {message}")]
    Invalid { name: String, message: String },
    #[error("{0} declared weavers: at most {MAX_DECLARED} per source")]
    TooMany(usize),
    #[error("invalid apply source {0:?}: 1 to {MAX_SOURCE_LEN} printable characters")]
    Source(String),
}

fn invalid(name: &str, message: impl Into<String>) -> DeclareError {
    DeclareError::Invalid { name: name.to_string(), message: message.into() }
}

/// Where a weaver came from: made by hand (`loom weaver create`), declared in loomd's config,
/// or declared in a file given to `loom apply` (named by the source the CLI passed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    Hand,
    Config,
    Apply(String),
}

impl Origin {
    /// An apply source, checked: printable, bounded, so it is safe to store and print.
    pub fn apply(source: &str) -> Result<Origin, DeclareError> {
        if source.is_empty() || source.len() > MAX_SOURCE_LEN || source.chars().any(char::is_control) {
            return Err(DeclareError::Source(source.chars().take(64).collect()));
        }
        Ok(Origin::Apply(source.to_string()))
    }

    /// How the store keeps it, and how `ps` shows it.
    pub fn as_stored(&self) -> String {
        self.to_string()
    }

    /// A stored origin back; anything unknown (or none, from before origins existed) is `Hand`,
    /// so a reconcile never touches it.
    pub fn from_stored(s: Option<&str>) -> Origin {
        match s {
            Some("config") => Origin::Config,
            Some(a) if a.starts_with("apply:") && a.len() > 6 => Origin::Apply(a[6..].to_string()),
            _ => Origin::Hand,
        }
    }

    pub fn is_declared(&self) -> bool {
        *self != Origin::Hand
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Hand => f.write_str("hand"),
            Origin::Config => f.write_str("config"),
            Origin::Apply(s) => write!(f, "apply:{s}"),
        }
    }
}

/// Validates every enabled declaration against the config's defaults. `read_prompt` reads a
/// `prompt_file` (loomd: as root, from the host; the path must be absolute). Errors name the
/// weaver and what to fix; the first one stops the whole set, so a bad file changes nothing.
pub fn declared_weavers(
    decls: &BTreeMap<String, WeaverDecl>,
    defaults: &WeaverDefaults,
    mut read_prompt: impl FnMut(&Path) -> Result<String, String>,
) -> Result<Vec<DeclaredWeaver>, DeclareError> {
    if decls.len() > MAX_DECLARED {
        return Err(DeclareError::TooMany(decls.len()));
    }
    let mut out = Vec::new();
    for (name, d) in decls {
        if !d.enable {
            continue;
        }
        let request = request_of(name, d, &mut read_prompt)?;
        let spec = resolve_spec(request.clone(), defaults, name.clone()).map_err(|e| invalid(name, e.to_string()))?;
        if spec.command.is_empty() && spec.agent.is_none() {
            return Err(invalid(name, "nothing to run: give `command`, or `prompt`/`prompt_file` with `model`"));
        }
        let hash = spec_hash(&spec);
        out.push(DeclaredWeaver { name: name.clone(), request, spec, hash });
    }
    Ok(out)
}

fn request_of(
    name: &str,
    d: &WeaverDecl,
    read_prompt: &mut impl FnMut(&Path) -> Result<String, String>,
) -> Result<CreateWeaver, DeclareError> {
    let prompt = match (&d.prompt, &d.prompt_file) {
        (Some(_), Some(_)) => return Err(invalid(name, "give either `prompt` or `prompt_file`, not both")),
        (Some(p), None) => Some(p.clone()),
        (None, Some(path)) => {
            if !path.is_absolute() {
                return Err(invalid(name, format!("prompt_file {path:?} must be an absolute path")));
            }
            let text = read_prompt(path).map_err(|e| invalid(name, format!("prompt_file {path:?}: {e}")))?;
            if text.len() > MAX_PROMPT_BYTES {
                return Err(invalid(
                    name,
                    format!("prompt_file {path:?} has {} bytes (at most {MAX_PROMPT_BYTES})", text.len()),
                ));
            }
            Some(text)
        }
        (None, None) => None,
    };
    let agent = match (prompt, &d.model) {
        (Some(prompt), Some(model)) => {
            if !d.command.is_empty() {
                return Err(invalid(name, "give `command` or the agent loop (`prompt` with `model`), not both"));
            }
            let a = &d.agent;
            Some(AgentSpec {
                max_iterations: a.max_iterations,
                until: a.until.clone(),
                check: a.check.clone(),
                wall_clock: a.wall_clock.clone(),
                completion_marker: a.completion_marker.clone(),
                ..AgentSpec::new(prompt, model.clone())
            })
        }
        (Some(_), None) => return Err(invalid(name, "a prompt needs `model = \"PROVIDER/MODEL\"`")),
        (None, Some(_)) => return Err(invalid(name, "`model` needs `prompt` or `prompt_file`")),
        (None, None) => {
            if d.agent != DeclAgent::default() {
                return Err(invalid(name, "[agent] settings need `prompt` (or `prompt_file`) and `model`"));
            }
            None
        }
    };
    Ok(CreateWeaver {
        name: Some(name.to_string()),
        image: d.image.clone(),
        repo: d.repo.clone(),
        upload: None,
        branch: d.branch.clone(),
        memory: d.memory.clone(),
        cpus: d.cpus,
        disk: d.disk.clone(),
        log_size: d.log_size.clone(),
        tasks: d.tasks,
        ttl: d.ttl.clone(),
        env: d.env.clone(),
        network: d.network.clone(),
        allow: d.egress.allow.clone(),
        restart: d.restart.clone(),
        nested: None,
        ssh: None,
        tailscale: None,
        command: d.command.clone(),
        agent,
    })
}

/// The hex SHA-256 of the spec's JSON. The JSON is canonical: struct fields serialize in
/// declaration order and every map in a spec is a `BTreeMap`.
pub fn spec_hash(spec: &WeaverSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    Sha256::digest(&json).iter().map(|b| format!("{b:02x}")).collect()
}

/// A weaver that exists, as the planner needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub name: String,
    pub origin: Origin,
    /// The hash of the declared spec it was last created or updated from.
    pub hash: Option<String>,
}

/// What a reconcile does, each list sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub create: Vec<String>,
    pub update: Vec<String>,
    pub remove: Vec<String>,
    pub unchanged: Vec<String>,
    /// Declared names taken by a weaver of another origin: left alone.
    pub conflicts: Vec<Conflict>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub name: String,
    /// The origin of the weaver that holds the name (`hand`, `config`, `apply:SOURCE`).
    pub held_by: String,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.remove.is_empty()
    }
}

/// The plan that makes `source`'s weavers what `declared` says (name → spec hash).
/// `existing` may hold every weaver; only those of `source` are ever planned for.
pub fn plan<'a>(
    source: &Origin,
    declared: impl IntoIterator<Item = (&'a str, &'a str)>,
    existing: &[Existing],
) -> Plan {
    let by_name: BTreeMap<&str, &Existing> = existing.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut p = Plan::default();
    let mut wanted = BTreeSet::new();
    for (name, hash) in declared {
        if !wanted.insert(name) {
            continue;
        }
        match by_name.get(name) {
            None => p.create.push(name.to_string()),
            Some(e) if e.origin != *source => {
                p.conflicts.push(Conflict { name: name.to_string(), held_by: e.origin.to_string() })
            }
            Some(e) if e.hash.as_deref() == Some(hash) => p.unchanged.push(name.to_string()),
            Some(_) => p.update.push(name.to_string()),
        }
    }
    p.remove = existing
        .iter()
        .filter(|e| e.origin == *source && !wanted.contains(e.name.as_str()))
        .map(|e| e.name.clone())
        .collect();
    for list in [&mut p.create, &mut p.update, &mut p.remove, &mut p.unchanged] {
        list.sort();
        list.dedup();
    }
    p.conflicts.sort_by(|a, b| a.name.cmp(&b.name));
    p
}

#[cfg(test)]
#[path = "declare_tests.rs"]
mod tests;
