//! loomd's TOML config. Sections owned by other crates (`providers`, `proxy`, `audit`) are
//! kept as raw TOML here and validated by the crate that owns them, so that this crate stays
//! at the bottom of the dependency graph.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Cpus, Span};
use crate::weaver::{Image, MAX_MEMORY, MAX_TASKS, MAX_TTL, MIN_MEMORY, MIN_TASKS, NetworkMode, RestartPolicy};

pub const DEFAULT_SOCKET: &str = "/run/loomd/loomd.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/loom";
pub const MAX_START_TIMEOUT: Span = Span(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    Systemd,
    Nspawn,
    Kubernetes,
}

impl std::str::FromStr for BackendKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "systemd" => Ok(BackendKind::Systemd),
            "nspawn" => Ok(BackendKind::Nspawn),
            "kubernetes" => Ok(BackendKind::Kubernetes),
            _ => Err(ConfigError::Backend(s.to_string())),
        }
    }
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Systemd => "systemd",
            BackendKind::Nspawn => "nspawn",
            BackendKind::Kubernetes => "kubernetes",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid config: {0}")]
    Toml(String),
    #[error("invalid backend {0:?}: use systemd, nspawn or kubernetes")]
    Backend(String),
    #[error("invalid config value for {field}: {message}")]
    Value { field: &'static str, message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// None: `systemd` where systemd is PID 1, `nspawn` otherwise (decided by loomd).
    pub backend: Option<BackendKind>,
    pub access: AccessConfig,
    pub weaver: WeaverDefaults,
    pub secrets: SecretsConfig,
    /// `[providers.NAME]` tables, validated by the proxy.
    pub providers: BTreeMap<String, toml::Table>,
    /// `[proxy]`, validated by the proxy.
    pub proxy: toml::Table,
    /// `[audit]`, validated by the audit crate.
    pub audit: toml::Table,
    pub network: NetworkConfig,
    /// `[wireguard]`, the operator tunnel, validated by loom-wireguard.
    pub wireguard: toml::Table,
    /// `[tailscale]`: joining `--tailscale` weavers to a tailnet.
    pub tailscale: crate::tailscale::TailscaleConfig,
    /// `[weavers.NAME]`: weavers loomd keeps as declared (`loom_core::declare`).
    pub weavers: BTreeMap<String, crate::declare::WeaverDecl>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: DEFAULT_SOCKET.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            backend: None,
            access: AccessConfig::default(),
            weaver: WeaverDefaults::default(),
            secrets: SecretsConfig::default(),
            providers: BTreeMap::new(),
            proxy: toml::Table::new(),
            audit: toml::Table::new(),
            network: NetworkConfig::default(),
            wireguard: toml::Table::new(),
            tailscale: Default::default(),
            weavers: BTreeMap::new(),
        }
    }
}

/// `[network]`: the bridge private weavers share and how their traffic leaves the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// The host bridge every private weaver's veth joins; loomd creates it if missing.
    pub bridge: String,
    /// Weaver addresses come from here; the first host address is the bridge's (the
    /// weavers' gateway and DNS server).
    pub subnet: crate::net::Ipv4Net,
    /// Masquerade the subnet out of the host's other interfaces (nftables).
    pub nat: bool,
    /// Where loomd's weaver DNS resolver forwards the names a weaver may resolve; empty: the
    /// `nameserver` lines of the host's `/etc/resolv.conf`.
    pub dns_upstream: Vec<std::net::SocketAddr>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bridge: "loom0".into(),
            subnet: crate::net::Ipv4Net::new(std::net::Ipv4Addr::new(10, 87, 0, 0), 16)
                .unwrap_or_else(|_| unreachable!("a valid constant")),
            nat: true,
            dns_upstream: vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    pub admin_group: String,
    pub operator_group: String,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig { admin_group: "loom-admin".into(), operator_group: "loom".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeaverDefaults {
    pub image: Image,
    pub memory: ByteSize,
    pub cpus: Cpus,
    pub tasks: u64,
    pub ttl: Option<Span>,
    pub network: NetworkMode,
    pub restart: RestartPolicy,
    /// How long `create` waits for the first process before it reports a failure.
    pub start_timeout: Span,
    /// Whether new weavers may nest containers (user namespaces and mounts inside).
    pub nested: bool,
    /// Directories whose subdirectories operators may name with `--image`; admins may name
    /// any root-owned directory.
    pub image_roots: Vec<PathBuf>,
    /// How much disk a weaver's root may hold before loomd stops it (`failed`).
    pub disk: ByteSize,
    /// How much of a weaver's output loomd keeps (nspawn backend): `log` and `log.1`
    /// together; under the systemd backend the journal's own limits apply.
    pub log_size: ByteSize,
    /// `[weaver.egress]`: what every private weaver may reach.
    pub egress: EgressDefaults,
    /// `[weaver.ssh]`: the operators' keys every `--ssh` weaver's sshd accepts.
    pub ssh: SshDefaults,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SshDefaults {
    /// `TYPE BASE64 [COMMENT]` lines, as in an `authorized_keys` file.
    pub authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EgressDefaults {
    /// Rules every weaver starts with (`CIDR[:PORT]`, `DOMAIN[:PORT]`), before its `--allow`.
    pub allow: Vec<String>,
}

/// The smallest disk cap: the skeleton root itself takes a few blocks.
pub const MIN_DISK: u64 = 1 << 20;
/// The smallest log cap.
pub const MIN_LOG_SIZE: u64 = 64 << 10;

impl Default for WeaverDefaults {
    fn default() -> Self {
        WeaverDefaults {
            image: Image::Host,
            memory: ByteSize(4 << 30),
            cpus: Cpus(2000),
            tasks: 4096,
            ttl: Some(Span(4 * 3600)),
            network: NetworkMode::Private,
            restart: RestartPolicy::Never,
            start_timeout: Span(30),
            nested: false,
            image_roots: vec![],
            disk: ByteSize(10 << 30),
            log_size: ByteSize(64 << 20),
            egress: EgressDefaults::default(),
            ssh: SshDefaults::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    pub file: Option<PathBuf>,
    /// yaml, json, dotenv, ini or binary; by default from the file's extension.
    pub format: Option<String>,
    pub age_key_file: Option<PathBuf>,
    pub ssh_host_keys: Vec<PathBuf>,
    pub pgp_key_file: Option<PathBuf>,
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some((field, message)) = self.tailscale.problem() {
            return Err(ConfigError::Value { field, message });
        }
        if !self.socket.is_absolute() {
            return Err(ConfigError::Value {
                field: "socket",
                message: format!("{:?} is not an absolute path", self.socket),
            });
        }
        if !self.state_dir.is_absolute() {
            return Err(ConfigError::Value {
                field: "state_dir",
                message: format!("{:?} is not an absolute path", self.state_dir),
            });
        }
        if !crate::net::valid_ifname(&self.network.bridge) {
            return Err(ConfigError::Value {
                field: "network.bridge",
                message: format!(
                    "{:?} is not an interface name: up to 15 letters, digits, '-' or '_'",
                    self.network.bridge
                ),
            });
        }
        for (i, line) in self.weaver.ssh.authorized_keys.iter().enumerate() {
            if let Err(e) = crate::ssh::authorized_key(i + 1, line) {
                return Err(ConfigError::Value { field: "weaver.ssh.authorized_keys", message: e.to_string() });
            }
        }
        if let Err(e) = crate::egress::policy_of(&self.weaver.egress.allow) {
            return Err(ConfigError::Value { field: "weaver.egress.allow", message: e.to_string() });
        }
        if !(MIN_TASKS..=MAX_TASKS).contains(&self.weaver.tasks) {
            return Err(ConfigError::Value {
                field: "weaver.tasks",
                message: format!("{} is outside {MIN_TASKS}..={MAX_TASKS}", self.weaver.tasks),
            });
        }
        if self.weaver.memory < MIN_MEMORY {
            return Err(ConfigError::Value {
                field: "weaver.memory",
                message: format!("{} is below the {MIN_MEMORY} a weaver needs to start", self.weaver.memory),
            });
        }
        if self.weaver.memory > MAX_MEMORY {
            return Err(ConfigError::Value {
                field: "weaver.memory",
                message: format!("{} is above the {MAX_MEMORY} maximum", self.weaver.memory),
            });
        }
        if let Some(ttl) = self.weaver.ttl.filter(|t| *t > MAX_TTL) {
            return Err(ConfigError::Value {
                field: "weaver.ttl",
                message: format!("{ttl} is longer than the {MAX_TTL} maximum; leave ttl out for no ttl"),
            });
        }
        // Added to the current instant when a start begins: past this it would overflow.
        if self.weaver.start_timeout > MAX_START_TIMEOUT {
            return Err(ConfigError::Value {
                field: "weaver.start_timeout",
                message: format!("{} is longer than the {MAX_START_TIMEOUT} maximum", self.weaver.start_timeout),
            });
        }
        if let Some(bad) =
            self.weaver.image_roots.iter().find(|r| !r.is_absolute() || r.components().any(|c| c.as_os_str() == ".."))
        {
            return Err(ConfigError::Value {
                field: "weaver.image_roots",
                message: format!("{bad:?} is not an absolute path without `..`"),
            });
        }
        if self.weaver.disk.0 < MIN_DISK {
            return Err(ConfigError::Value {
                field: "weaver.disk",
                message: format!("{} is below the 1M minimum", self.weaver.disk),
            });
        }
        if self.weaver.log_size.0 < MIN_LOG_SIZE {
            return Err(ConfigError::Value {
                field: "weaver.log_size",
                message: format!("{} is below the 64K minimum", self.weaver.log_size),
            });
        }
        // Everything but the prompt files, which loomd reads (and `--check-config` with it).
        crate::declare::declared_weavers(&self.weavers, &self.weaver, |_| Ok("(read by loomd)".into()))
            .map_err(|e| ConfigError::Value { field: "weavers", message: e.to_string() })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn design_example_parses() {
        let c = Config::from_toml(
            r#"
socket = "/run/loomd/loomd.sock"
state_dir = "/var/lib/loom"
backend = "systemd"
[access]
admin_group = "loom-admin"
operator_group = "loom"
[weaver]
image = "host"
memory = "4G"
cpus = 2.0
tasks = 4096
ttl = "4h"
network = "private"
disk = "20G"
log_size = "16M"
[secrets]
file = "/run/secrets/loom.yaml"
age_key_file = "/var/lib/loom/age.key"
ssh_host_keys = ["/etc/ssh/ssh_host_ed25519_key"]
[providers.anthropic]
base_url = "https://api.anthropic.com"
secret = "anthropic_api_key"
"#,
        )
        .unwrap();
        assert_eq!(c.backend, Some(BackendKind::Systemd));
        assert_eq!(c.weaver.memory, ByteSize(4 << 30));
        assert_eq!((c.weaver.disk, c.weaver.log_size), (ByteSize(20 << 30), ByteSize(16 << 20)));
        assert!(c.providers.contains_key("anthropic"));
    }

    fn check_err(text: &str, needle: &str) {
        let e = Config::from_toml(text).unwrap_err().to_string();
        assert!(e.contains(needle), "{text:?}: {e}");
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        check_err("sockett = \"/x\"", "unknown field `sockett`");
        check_err("backend = \"docker\"", "docker");
        check_err("[weaver]\nmemory = \"lots\"", "invalid size \"lots\"");
        check_err("[weaver]\ncpus = -1.0", "invalid CPU count");
        check_err("state_dir = \"relative\"", "state_dir");
        check_err("[weaver]\ntasks = 1", "weaver.tasks");
        check_err("[weaver]\nmemory = \"1M\"", "weaver.memory");
        check_err("[weaver]\ndisk = \"100K\"", "weaver.disk: 100K is below the 1M minimum");
        check_err("[weaver]\nlog_size = \"1K\"", "weaver.log_size");
        check_err("[weaver]\ndisk = \"a lot\"", "invalid size \"a lot\"");
        check_err("[weaver]\nmemory = \"100T\"", "above the 64T maximum");
        check_err("[weaver]\nttl = \"99999999999999d\"", "weaver.ttl");
        check_err("[weaver]\nstart_timeout = \"213503982334601d\"", "weaver.start_timeout");
        check_err("[weavers.a]\ncomand = [\"x\"]", "unknown field `comand`");
        check_err("[weavers.a]\nmemory = \"1G\"", "weavers: [weavers.a]: nothing to run");
    }
}
