//! The `[audit]` section of loomd's configuration.

use std::path::PathBuf;

/// Where events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkChoice {
    /// journald when its socket exists, else NDJSON.
    Auto,
    Journald,
    Ndjson,
}

/// `[audit]` settings; every key is optional.
///
/// ```toml
/// [audit]
/// enabled = true                 # load the eBPF programs at all
/// required = false               # fail loomd's start if they cannot load
/// sink = "auto"                  # auto | journald | ndjson
/// journal_socket = "/run/systemd/journal/socket"
/// ndjson_file = "/var/lib/loom/audit.ndjson"   # default: <state_dir>/audit.ndjson
/// index = true                   # also index events in the store for `loom audit`
/// ring_buffer_bytes = 4194304    # kernel ring buffer, a power of two >= 4096 (the kernel maps it twice: it counts double in RSS)
/// queue_capacity = 65536         # events between the ring buffer and the sinks
/// max_weavers = 4096             # size of the watched-cgroup map
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub enabled: bool,
    pub required: bool,
    pub sink: SinkChoice,
    pub journal_socket: PathBuf,
    pub ndjson_file: Option<PathBuf>,
    pub index: bool,
    pub ring_buffer_bytes: u32,
    pub queue_capacity: usize,
    pub max_weavers: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            required: false,
            sink: SinkChoice::Auto,
            journal_socket: PathBuf::from("/run/systemd/journal/socket"),
            ndjson_file: None,
            index: true,
            ring_buffer_bytes: 4 << 20,
            queue_capacity: 65536,
            max_weavers: 4096,
        }
    }
}

/// A bad `[audit]` section.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "[audit] has unknown key {0:?}; known keys: enabled, required, sink, journal_socket, ndjson_file, index, ring_buffer_bytes, queue_capacity, max_weavers"
    )]
    UnknownKey(String),
    #[error("[audit] {key} must be {expected}, got {got}")]
    Type { key: &'static str, expected: &'static str, got: String },
    #[error("[audit] {key} = {value} is out of range: {why}")]
    Range { key: &'static str, value: i64, why: &'static str },
    #[error("[audit] sink = {0:?} is not one of auto, journald, ndjson")]
    Sink(String),
}

fn type_err(key: &'static str, expected: &'static str, v: &toml::Value) -> ConfigError {
    ConfigError::Type { key, expected, got: format!("{} {v}", v.type_str()) }
}

impl AuditConfig {
    /// Parse the `[audit]` table; missing keys take their defaults, unknown keys are errors.
    pub fn from_toml(table: &toml::Table) -> Result<Self, ConfigError> {
        let mut c = AuditConfig::default();
        for (key, v) in table {
            let boolean = |k: &'static str| v.as_bool().ok_or_else(|| type_err(k, "a boolean", v));
            let string = |k: &'static str| v.as_str().ok_or_else(|| type_err(k, "a string", v));
            let int = |k: &'static str, min: i64, max: i64, why: &'static str| {
                let n = v.as_integer().ok_or_else(|| type_err(k, "an integer", v))?;
                if n < min || n > max {
                    return Err(ConfigError::Range { key: k, value: n, why });
                }
                Ok(n)
            };
            match key.as_str() {
                "enabled" => c.enabled = boolean("enabled")?,
                "required" => c.required = boolean("required")?,
                "index" => c.index = boolean("index")?,
                "sink" => {
                    c.sink = match string("sink")? {
                        "auto" => SinkChoice::Auto,
                        "journald" => SinkChoice::Journald,
                        "ndjson" => SinkChoice::Ndjson,
                        other => return Err(ConfigError::Sink(other.to_string())),
                    }
                }
                "journal_socket" => c.journal_socket = PathBuf::from(string("journal_socket")?),
                "ndjson_file" => c.ndjson_file = Some(PathBuf::from(string("ndjson_file")?)),
                "ring_buffer_bytes" => {
                    let n = int("ring_buffer_bytes", 4096, 1 << 30, "use a power of two between 4096 and 1 GiB")?;
                    if (n as u64).count_ones() != 1 {
                        return Err(ConfigError::Range {
                            key: "ring_buffer_bytes",
                            value: n,
                            why: "use a power of two between 4096 and 1 GiB",
                        });
                    }
                    c.ring_buffer_bytes = n as u32;
                }
                "queue_capacity" => {
                    c.queue_capacity = int("queue_capacity", 1, 1 << 24, "use 1 to 16777216 events")? as usize
                }
                "max_weavers" => c.max_weavers = int("max_weavers", 1, 1 << 20, "use 1 to 1048576")? as u32,
                other => return Err(ConfigError::UnknownKey(other.to_string())),
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<AuditConfig, ConfigError> {
        AuditConfig::from_toml(&s.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn empty_section_gives_defaults() {
        assert_eq!(parse("").unwrap(), AuditConfig::default());
    }

    #[test]
    fn every_key_parses() {
        let c = parse(
            r#"
            enabled = false
            required = true
            sink = "ndjson"
            journal_socket = "/tmp/j"
            ndjson_file = "/tmp/a.ndjson"
            index = false
            ring_buffer_bytes = 65536
            queue_capacity = 10
            max_weavers = 8
            "#,
        )
        .unwrap();
        assert!(!c.enabled && c.required && !c.index);
        assert_eq!(c.sink, SinkChoice::Ndjson);
        assert_eq!(c.ndjson_file, Some(PathBuf::from("/tmp/a.ndjson")));
        assert_eq!((c.ring_buffer_bytes, c.queue_capacity, c.max_weavers), (65536, 10, 8));
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let cases: &[(&str, &str)] = &[
            ("bogus = 1", "unknown key \"bogus\""),
            ("enabled = \"yes\"", "enabled must be a boolean"),
            ("sink = \"syslog\"", "not one of auto, journald, ndjson"),
            ("ring_buffer_bytes = 5000", "power of two"),
            ("ring_buffer_bytes = 1024", "power of two"),
            ("queue_capacity = 0", "out of range"),
            ("max_weavers = -1", "out of range"),
        ];
        for (input, want) in cases {
            let err = parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }
}
