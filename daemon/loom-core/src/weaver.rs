//! What a weaver is: its identity, its spec (validated), and its lifecycle states.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Cpus, Span};

// Where it always was, for the crates that import it from here.
pub use crate::resolve::resolve_spec;

/// A weaver's id: 12 lowercase hex digits, chosen by loomd. Ids and names share one
/// namespace on the command line, so an id is never a valid name (names start with a letter
/// and ids are always given in full when they start with a digit).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WeaverId(String);

pub const WEAVER_ID_LEN: usize = 12;

impl WeaverId {
    /// Makes an id from 6 random bytes the caller drew.
    pub fn from_random(bytes: [u8; 6]) -> Self {
        WeaverId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WeaverId {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        if s.len() == WEAVER_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(WeaverId(s))
        } else {
            Err(SpecError::Id(s))
        }
    }
}

impl From<WeaverId> for String {
    fn from(id: WeaverId) -> String {
        id.0
    }
}

impl fmt::Display for WeaverId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One run of a weaver: minted by loomd for every start, 64 random bits shown as 16 hex
/// digits. Everything a run holds (its audit watch, its proxy token and listener) is keyed by
/// it, so that the end of one run can never release what a newer run of the same weaver holds.
/// `RunId::UNKNOWN` (all zeros) stands for a run recorded before loom had run ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(u64);

impl RunId {
    pub const UNKNOWN: RunId = RunId(0);

    /// A run id from random bits the caller drew; never [`RunId::UNKNOWN`].
    pub fn from_random(bits: u64) -> RunId {
        RunId(bits.max(1))
    }
}

impl TryFrom<String> for RunId {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        s.parse()
    }
}

impl FromStr for RunId {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        if s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            u64::from_str_radix(s, 16).map(RunId).map_err(|_| SpecError::RunId(s.to_string()))
        } else {
            Err(SpecError::RunId(s.to_string()))
        }
    }
}

impl From<RunId> for String {
    fn from(id: RunId) -> String {
        id.to_string()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The limits a spec may ask for. Past the maximums a value stops being a limit at all
/// (a memory limit the kernel reads as "max") or overflows the clock arithmetic done with it
/// (a ttl added to the current time).
pub const MIN_MEMORY: ByteSize = ByteSize(16 << 20);
pub const MAX_MEMORY: ByteSize = ByteSize(64 << 40);
pub const MIN_TASKS: u64 = 16;
pub const MAX_TASKS: u64 = 4_194_304;
/// The longest ttl or agent wall clock; `none` is the way to ask for no ttl.
pub const MAX_TTL: Span = Span(365 * 86400);

impl From<crate::egress::EgressRuleError> for SpecError {
    fn from(e: crate::egress::EgressRuleError) -> Self {
        SpecError::Egress(e.to_string())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("invalid weaver id {0:?}: an id is 12 lowercase hex digits, as `loom weaver ps` shows it")]
    Id(String),
    #[error("invalid run id {0:?}: a run id is 16 lowercase hex digits")]
    RunId(String),
    #[error(
        "invalid weaver name {0:?}: use 1 to 63 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-'"
    )]
    Name(String),
    #[error("invalid network mode {0:?}: use private, none or host")]
    Network(String),
    #[error("invalid egress rule {0}")]
    Egress(String),
    #[error(transparent)]
    SshKey(#[from] crate::ssh::SshKeyError),
    #[error("--ssh needs --network private: {0}")]
    SshNetwork(&'static str),
    #[error("--tailscale needs --network private: tailscaled reaches the tailnet through the weaver's own egress")]
    TailscaleNetwork,
    #[error("invalid restart policy {0:?}: use never, on-failure or always")]
    Restart(String),
    #[error("invalid image {0:?}: use \"host\" or an absolute path to a directory tree")]
    Image(String),
    #[error(
        "invalid environment variable {0:?}: use KEY=VALUE with KEY of A-Z, a-z, 0-9 and '_', not starting with a digit"
    )]
    Env(String),
    #[error("environment variable {0} is set by loom inside every weaver and cannot be overridden")]
    ReservedEnv(String),
    #[error("invalid task limit {0}: use a number from 16 to 4194304")]
    Tasks(u64),
    #[error("{flag} {size} is below its minimum of {min}")]
    TooSmall { flag: &'static str, size: ByteSize, min: ByteSize },
    #[error("invalid memory limit {0}: use a size from 16M to 64T")]
    Memory(ByteSize),
    #[error("{what} {span} is longer than the 365d maximum: use a shorter one (or ttl \"none\" for no ttl)")]
    SpanTooLong { what: &'static str, span: Span },
    #[error("invalid command: {0}")]
    Command(String),
    #[error("--branch needs --repo: there is nothing to check out")]
    BranchWithoutRepo,
    #[error(
        "--repo {0:?} is a local path, and loomd never reads host paths for a client: the loom CLI uploads a local directory with your own rights (`loom weaver create --repo DIR`); through the API, upload it (POST /v1/uploads) and pass its id as \"upload\"; or give a git URL (https, http, git or ssh)"
    )]
    LocalRepo(String),
    #[error("invalid --repo {0:?}: {1}")]
    Repo(String, &'static str),
    #[error("a weaver runs either a command (-- CMD) or the agent loop (--prompt with --model), not neither: {0}")]
    NothingToRun(String),
    #[error("{0}")]
    Agent(String),
    #[error(transparent)]
    Unit(#[from] crate::units::UnitError),
}

pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok { Ok(()) } else { Err(SpecError::Name(name.to_string())) }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// Its own network namespace: loopback and the LLM proxy.
    #[default]
    Private,
    /// Its own network namespace with loopback only: no proxy, no way out.
    None,
    /// The host's network namespace.
    Host,
}

impl FromStr for NetworkMode {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "private" => Ok(NetworkMode::Private),
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            _ => Err(SpecError::Network(s.to_string())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Never,
    OnFailure,
    Always,
}

impl FromStr for RestartPolicy {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "never" | "no" => Ok(RestartPolicy::Never),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "always" => Ok(RestartPolicy::Always),
            _ => Err(SpecError::Restart(s.to_string())),
        }
    }
}

/// The root a weaver runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Image {
    /// The host's own `/usr` (or `/nix/store`) read-only under a throwaway root.
    Host,
    /// A directory tree used as the weaver's root, read-only.
    Dir(PathBuf),
}

impl TryFrom<String> for Image {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        if s == "host" {
            Ok(Image::Host)
        } else if s.starts_with('/') && !s.contains('\0') && !s.split('/').any(|c| c == "..") {
            Ok(Image::Dir(PathBuf::from(s)))
        } else {
            Err(SpecError::Image(s))
        }
    }
}

impl From<Image> for String {
    fn from(i: Image) -> String {
        match i {
            Image::Host => "host".into(),
            Image::Dir(p) => p.to_string_lossy().into_owned(),
        }
    }
}

/// The built-in agent loop's settings (the loop itself comes with the agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// The prompt's text, read by the CLI from `--prompt FILE`.
    pub prompt: String,
    /// `provider/model`.
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iterations: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Runs after each iteration; its failing output goes into the next prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// The loop's wall-clock limit, e.g. `4h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_clock: Option<String>,
    /// The text by which the agent says it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_marker: Option<String>,
    /// Earlier threads whose rendering the agent gets as context.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context_threads: Vec<String>,
}

impl AgentSpec {
    /// A loop of `prompt` on `model` with every limit and option left to its default.
    pub fn new(prompt: impl Into<String>, model: impl Into<String>) -> Self {
        AgentSpec {
            prompt: prompt.into(),
            model: model.into(),
            max_iterations: None,
            until: None,
            check: None,
            wall_clock: None,
            completion_marker: None,
            context_threads: vec![],
        }
    }
}

/// Environment variables loom sets in every weaver; a client may not override them.
pub const RESERVED_ENV: &[&str] = &[
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "LOOM_WEAVER",
    "LOOM_PROXY_TOKEN",
];

pub fn validate_env_key(key: &str) -> Result<(), SpecError> {
    let b = key.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 256
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    if !ok {
        return Err(SpecError::Env(key.to_string()));
    }
    if RESERVED_ENV.contains(&key) {
        return Err(SpecError::ReservedEnv(key.to_string()));
    }
    Ok(())
}

/// A weaver's spec after validation against the config's defaults: every field decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeaverSpec {
    pub name: String,
    pub image: Image,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    pub memory: ByteSize,
    pub cpus: Cpus,
    pub tasks: u64,
    /// The disk cap of its root; specs stored before caps existed get the built-in default.
    #[serde(default = "default_disk")]
    pub disk: ByteSize,
    #[serde(default = "default_log_size")]
    pub log_size: ByteSize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Span>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub network: NetworkMode,
    /// What a private weaver may reach besides the proxy and loomd's DNS (`loom_core::egress`
    /// rules, written the way `--allow` takes them); changed live by `loom weaver egress`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
    pub restart: RestartPolicy,
    /// User namespaces and mounts allowed inside, for nested containers (see loomd's sandbox).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nested: bool,
    /// Its own sshd on port 22 (`--ssh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<crate::ssh::SshSpec>,
    /// Runs tailscaled inside and joins `[tailscale]`'s tailnet under its name (`--tailscale`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tailscale: bool,
    /// The command to run; empty when the agent loop runs.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSpec>,
}

fn default_disk() -> ByteSize {
    crate::config::WeaverDefaults::default().disk
}

fn default_log_size() -> ByteSize {
    crate::config::WeaverDefaults::default().log_size
}

/// Where a weaver is in its life. Only loomd's supervisor moves it, through [`WeaverState::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeaverState {
    Creating,
    Running,
    Stopped,
    Exited,
    Failed,
}

impl WeaverState {
    pub fn as_str(self) -> &'static str {
        match self {
            WeaverState::Creating => "creating",
            WeaverState::Running => "running",
            WeaverState::Stopped => "stopped",
            WeaverState::Exited => "exited",
            WeaverState::Failed => "failed",
        }
    }
    pub fn is_active(self) -> bool {
        matches!(self, WeaverState::Creating | WeaverState::Running)
    }
}

impl FromStr for WeaverState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "creating" => WeaverState::Creating,
            "running" => WeaverState::Running,
            "stopped" => WeaverState::Stopped,
            "exited" => WeaverState::Exited,
            "failed" => WeaverState::Failed,
            _ => return Err(format!("unknown weaver state {s:?}")),
        })
    }
}

impl fmt::Display for WeaverState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web-1", "a0", &"x".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64), "a/b", "ünï"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn run_ids() {
        let r = RunId::from_random(0xdead_beef);
        assert_eq!(r.to_string(), "00000000deadbeef");
        assert_eq!("00000000deadbeef".parse::<RunId>().unwrap(), r);
        assert_eq!(RunId::from_random(0), RunId::from_random(1), "0 is kept for UNKNOWN");
        assert_ne!(RunId::from_random(0), RunId::UNKNOWN);
        for bad in ["deadbeef", "00000000DEADBEEF", "+0000000deadbeef", "00000000deadbeef0"] {
            assert!(bad.parse::<RunId>().is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"00000000deadbeef\"");
    }

    #[test]
    fn ids() {
        let id = WeaverId::from_random([0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]);
        assert_eq!(id.as_str(), "deadbeef0001");
        assert!(WeaverId::try_from("deadbeef0001".to_string()).is_ok());
        assert!(WeaverId::try_from("DEADBEEF0001".to_string()).is_err());
        assert!(WeaverId::try_from("deadbeef".to_string()).is_err());
        assert!(WeaverId::try_from("../../etc/pa".to_string()).is_err());
    }

    #[test]
    fn env_keys() {
        assert!(validate_env_key("FOO_1").is_ok());
        assert!(validate_env_key("1FOO").is_err());
        assert!(validate_env_key("A=B").is_err());
        assert!(matches!(validate_env_key("OPENAI_API_KEY"), Err(SpecError::ReservedEnv(_))));
    }

    #[test]
    fn images() {
        assert_eq!(Image::try_from("host".to_string()), Ok(Image::Host));
        assert!(Image::try_from("/srv/img".to_string()).is_ok());
        assert!(Image::try_from("relative".to_string()).is_err());
        assert!(Image::try_from("/srv/../etc".to_string()).is_err());
    }
}
