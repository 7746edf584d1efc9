//! The wire types of loomd's HTTP/JSON API (`/v1/...`), shared by loomd and the CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::weaver::{AgentSpec, WeaverId, WeaverSpec, WeaverState};

pub const API_VERSION: &str = "v1";
/// Requests larger than this are refused with 413 before they are read whole.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Every error loomd answers with: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    Timeout,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Timeout => 408,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// `POST /v1/weavers`. Every field is optional; loomd fills in the config's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreateWeaver {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A git URL loomd clones (https, http, git, ssh). A local path is never read by loomd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// An upload's id (`POST /v1/uploads`): the caller's own tar or git bundle of a local
    /// directory, unpacked into /workspace. Single-use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// The disk cap of the weaver's root, e.g. `10G`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// How much of its output is kept, e.g. `64M`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Egress rules on top of `[weaver.egress] allow`: `CIDR[:PORT]` or `DOMAIN[:PORT]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// May make user namespaces and mounts inside (nested containers); admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nested: Option<bool>,
    /// Runs an sshd inside (`--ssh`), taking these keys besides `[weaver.ssh]`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<crate::ssh::SshRequest>,
    /// Joins the tailnet of `[tailscale]` (`--tailscale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailscale: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSpec>,
}

/// The largest upload loomd takes, and how long the caller has to send it and then to use it.
pub const MAX_UPLOAD_BYTES: u64 = 2 << 30;
pub const UPLOAD_SEND_SECS: u64 = 600;
pub const UPLOAD_TTL_SECS: u64 = 600;
/// How many uploads one uid may have waiting (or arriving) at once.
pub const MAX_PENDING_UPLOADS: usize = 4;

/// What an upload holds: a tar stream of a plain directory, or a git bundle (`git bundle
/// create - --all`) of a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UploadKind {
    Tar,
    GitBundle,
}

impl UploadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadKind::Tar => "tar",
            UploadKind::GitBundle => "git-bundle",
        }
    }

    pub fn parse(s: &str) -> Option<UploadKind> {
        match s {
            "tar" => Some(UploadKind::Tar),
            "git-bundle" => Some(UploadKind::GitBundle),
            _ => None,
        }
    }
}

/// loomd's answer to `POST /v1/uploads?kind=tar|git-bundle`: the id to give `CreateWeaver`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadInfo {
    pub id: String,
    pub kind: UploadKind,
    pub bytes: u64,
    pub expires_in_secs: u64,
}

/// What `ps` and `inspect` show of a weaver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeaverInfo {
    pub id: WeaverId,
    pub name: String,
    pub state: WeaverState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed, exited or stopped, when loomd knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub owner_uid: u32,
    pub backend: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The container's leader pid on the host, while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub restarts: u32,
    pub spec: WeaverSpec,
    /// The agent loop's progress (iteration, tokens, stop reason), for weavers that run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_status: Option<serde_json::Value>,
    /// A private weaver's address on the loom bridge, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
    /// Who declared it (`config`, `apply:SOURCE`); none for a weaver made by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// `POST /v1/apply`: make the weavers of `source` what `weavers` says (`loom apply`), or, with
/// `down`, remove them all (`loom down`). The CLI reads any `prompt_file` as the user and sends
/// its text as `prompt`: loomd refuses a `prompt_file` here (it never reads a host path for a
/// client).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplyRequest {
    /// Names the set (by default the file's absolute path); the weavers' origin is `apply:SOURCE`.
    pub source: String,
    pub weavers: BTreeMap<String, crate::declare::WeaverDecl>,
    /// Plan only: nothing is created, changed or removed.
    pub dry_run: bool,
    /// Remove every weaver of `source` (`weavers` must be empty).
    pub down: bool,
}

/// loomd's answer to an [`ApplyRequest`]: the plan, and what applying it did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub source: String,
    pub plan: crate::declare::Plan,
    pub dry_run: bool,
    /// Steps that failed, each `NAME: why`; the others were applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// `POST /v1/weavers/{id}/exec`, answered with an upgrade to the exec stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Vec<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term_size: Option<(u16, u16)>,
}

/// Frames of the exec stream after the upgrade: a kind byte, a big-endian u32 length, data.
pub mod exec_frame {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    /// Data: the exit code as a big-endian i32.
    pub const EXIT: u8 = 3;
    /// Data: rows and columns as two big-endian u16.
    pub const RESIZE: u8 = 4;
    pub const STDIN_EOF: u8 = 5;
    pub const MAX_LEN: u32 = 1 << 20;

    pub fn encode(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + data.len());
        out.push(kind);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    /// One decoded frame: its kind, its data, and how many bytes of the buffer it took.
    pub type Frame<'a> = (u8, &'a [u8], usize);

    /// Splits one frame off the front of `buf`: `Ok(None)` when more bytes are needed.
    pub fn decode(buf: &[u8]) -> Result<Option<Frame<'_>>, String> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len > MAX_LEN {
            return Err(format!("exec frame of {len} bytes is over the {MAX_LEN}-byte limit"));
        }
        let end = 5 + len as usize;
        if buf.len() < end {
            return Ok(None);
        }
        Ok(Some((buf[0], &buf[5..end], end)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub backend: String,
    pub state_dir: String,
    pub weavers: BTreeMap<String, u64>,
    pub uptime_secs: u64,
    /// Subsystems that run degraded, each with why (a missing hook, an undecryptable secret).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Extra sections other subsystems report (audit loss counters, proxy totals).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sections: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shape() {
        let body = ErrorBody { error: ErrorDetail { code: ErrorCode::NotFound, message: "no weaver x".into() } };
        assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"error":{"code":"not_found","message":"no weaver x"}}"#);
    }

    #[test]
    fn create_rejects_unknown_fields() {
        let e = serde_json::from_str::<CreateWeaver>(r#"{"nmae":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `nmae`"), "{e}");
    }

    #[test]
    fn exec_frames_round_trip() {
        let mut buf = exec_frame::encode(exec_frame::STDOUT, b"hello");
        buf.extend(exec_frame::encode(exec_frame::EXIT, &3i32.to_be_bytes()));
        let (k, d, n) = exec_frame::decode(&buf).unwrap().unwrap();
        assert_eq!((k, d), (exec_frame::STDOUT, &b"hello"[..]));
        let (k, d, _) = exec_frame::decode(&buf[n..]).unwrap().unwrap();
        assert_eq!((k, i32::from_be_bytes(d.try_into().unwrap())), (exec_frame::EXIT, 3));
        assert_eq!(exec_frame::decode(&buf[..3]).unwrap(), None);
        assert!(exec_frame::decode(&[1, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
