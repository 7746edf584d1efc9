//! The optional sshd of a weaver (`--ssh`): which public keys it accepts and the config it
//! runs with. Keys are checked here because they arrive from clients and config files and
//! end up in a file a root process reads.

use serde::{Deserialize, Serialize};

/// A weaver's sshd, as its spec keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshSpec {
    /// `TYPE BASE64 [COMMENT]` lines, each checked by [`authorized_key`].
    pub authorized_keys: Vec<String>,
    /// The public half of the host key loomd made for it, for the operator's `known_hosts`.
    #[serde(default)]
    pub host_key: String,
}

/// What `create --ssh` sends: the keys the caller's CLI read from its own files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshRequest {
    #[serde(default)]
    pub authorized_keys: Vec<String>,
}

/// How many keys one weaver's sshd takes, and how long one line may be (a 16384-bit RSA key
/// is about 2.8 KiB).
pub const MAX_KEYS: usize = 64;
pub const MAX_KEY_LINE: usize = 8192;
/// Where loomd puts the sshd's files in the weaver's root (loom's own directory).
pub const SSH_DIR: &str = ".loom/ssh";
pub const SSHD_CONFIG: &str = ".loom/ssh/sshd_config";
pub const AUTHORIZED_KEYS: &str = ".loom/ssh/authorized_keys";
pub const HOST_KEY: &str = ".loom/ssh/ssh_host_ed25519_key";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SshKeyError {
    #[error("ssh key {index}: {reason}")]
    Bad { index: usize, reason: String },
    #[error("{0} ssh keys is more than the {MAX_KEYS} one weaver takes")]
    TooMany(usize),
    #[error(
        "--ssh needs at least one public key: put yours in ~/.ssh/authorized_keys (or pass --ssh-keys FILE), or add [weaver.ssh] authorized_keys to loomd's config"
    )]
    None,
}

/// Checks one `authorized_keys` line and gives it back normalised (`TYPE BASE64 COMMENT`).
/// Lines with options (`command=`, `from=`, …) are refused rather than passed on: the
/// weaver's sshd gets keys, not instructions.
pub fn authorized_key(index: usize, line: &str) -> Result<String, SshKeyError> {
    let bad = |reason: String| SshKeyError::Bad { index, reason };
    let line = line.trim();
    if line.len() > MAX_KEY_LINE {
        return Err(bad(format!("the line is {} bytes, more than {MAX_KEY_LINE}", line.len())));
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(bad("the line has control characters".into()));
    }
    let key = ssh_key::PublicKey::from_openssh(line).map_err(|e| {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('=') || first.contains(',') {
            bad(format!("it starts with options ({first:.40}); loom takes plain keys: TYPE BASE64 [COMMENT]"))
        } else {
            bad(format!("not an OpenSSH public key ({e}); use a line as ssh-keygen writes it in a .pub file"))
        }
    })?;
    key.to_openssh().map_err(|e| bad(format!("cannot be written back ({e})")))
}

/// The keys a weaver's sshd accepts: the config's, then the caller's, each checked, without
/// repeats. Comment lines and blank lines of the caller's file are skipped.
pub fn authorized_keys(configured: &[String], requested: &[String]) -> Result<Vec<String>, SshKeyError> {
    let mut keys: Vec<String> = Vec::new();
    let lines = configured.iter().chain(requested).map(|l| l.trim()).filter(|l| !l.is_empty() && !l.starts_with('#'));
    for (index, line) in lines.enumerate() {
        let key = authorized_key(index + 1, line)?;
        let body = |k: &str| k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        if !keys.iter().any(|k| body(k) == body(&key)) {
            keys.push(key);
        }
        if keys.len() > MAX_KEYS {
            return Err(SshKeyError::TooMany(keys.len()));
        }
    }
    if keys.is_empty() {
        return Err(SshKeyError::None);
    }
    Ok(keys)
}

/// The weaver's `sshd_config`: keys only, root by key, nothing of the operator's forwarded
/// into the weaver (no agent, no X11, no environment), local port forwards allowed, since
/// they leave from inside the weaver and its egress policy applies to them.
pub fn sshd_config() -> String {
    format!(
        "# Written by loomd before every start; changes here are lost.\n\
         Port 22\n\
         ListenAddress 0.0.0.0\n\
         HostKey /{HOST_KEY}\n\
         AuthorizedKeysFile /{AUTHORIZED_KEYS}\n\
         AuthenticationMethods publickey\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         UsePAM no\n\
         StrictModes yes\n\
         PermitUserEnvironment no\n\
         AllowAgentForwarding no\n\
         X11Forwarding no\n\
         PermitTunnel no\n\
         GatewayPorts no\n\
         AllowTcpForwarding local\n\
         PrintMotd no\n\
         PidFile none\n\
         Subsystem sftp internal-sftp\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN+/Rym8JYVv1rp2Qc08Nml49wCcW/Buy9Xgsb8BNq9X op@laptop";

    #[test]
    fn a_plain_key_passes_and_keeps_its_comment() {
        assert_eq!(authorized_key(1, &format!("  {ED}  ")).unwrap(), ED);
    }

    #[test]
    fn options_garbage_and_control_characters_are_refused_with_the_reason() {
        let e = authorized_key(2, &format!("command=\"/bin/sh\" {ED}")).unwrap_err().to_string();
        assert!(e.contains("ssh key 2") && e.contains("options"), "{e}");
        let e = authorized_key(1, "ssh-ed25519 notbase64!!").unwrap_err().to_string();
        assert!(e.contains("not an OpenSSH public key"), "{e}");
        let e = authorized_key(1, &format!("{ED}\nssh-ed25519 AAAA")).unwrap_err().to_string();
        assert!(e.contains("control characters"), "{e}");
        let e = authorized_key(1, &"a".repeat(MAX_KEY_LINE + 1)).unwrap_err().to_string();
        assert!(e.contains("bytes"), "{e}");
    }

    #[test]
    fn keys_merge_without_repeats_and_need_at_least_one() {
        let other = ED.replace("op@laptop", "other");
        let got = authorized_keys(&[ED.into()], &["# mine".into(), String::new(), other]).unwrap();
        assert_eq!(got, vec![ED.to_string()]);
        assert_eq!(authorized_keys(&[], &["# nothing".into()]), Err(SshKeyError::None));
    }

    #[test]
    fn the_config_forwards_nothing_of_the_operator_into_the_weaver() {
        let c = sshd_config();
        for line in ["AllowAgentForwarding no", "X11Forwarding no", "PasswordAuthentication no", "UsePAM no"] {
            assert!(c.lines().any(|l| l == line), "{line}");
        }
    }
}
