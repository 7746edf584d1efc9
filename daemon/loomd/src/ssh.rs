//! A weaver's optional sshd (`--ssh`): its host key, made by loomd at create so that the
//! operator can pin it, and its files in the weaver's root, written before every start.

use loom_core::ssh::{AUTHORIZED_KEYS, HOST_KEY, SSH_DIR, SSHD_CONFIG, SshSpec};

use crate::weaverfs::{WeaverFsError, WeaverRoot};

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("making the weaver's ssh host key failed: {0}")]
    HostKey(String),
    #[error(transparent)]
    Files(#[from] WeaverFsError),
}

/// A new ed25519 host key: the private half in OpenSSH's format (wiped on drop) and the
/// public half's line.
pub struct HostKey {
    pub private: zeroize::Zeroizing<String>,
    pub public: String,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl HostKey {
    pub fn generate(comment: &str) -> Result<HostKey, SshError> {
        let err = |e: ssh_key::Error| SshError::HostKey(e.to_string());
        let mut key =
            ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519).map_err(err)?;
        key.set_comment(comment);
        let private = key.to_openssh(ssh_key::LineEnding::LF).map_err(err)?;
        let public = key.public_key().to_openssh().map_err(err)?;
        Ok(HostKey { private: zeroize::Zeroizing::new(private.to_string()), public })
    }

    /// Puts the private half in the weaver's root, once: a key already there is the weaver's.
    pub fn install(&self, r: &WeaverRoot) -> Result<(), SshError> {
        r.make_dirs(SSH_DIR, 0o755, true)?;
        r.create_file(HOST_KEY, self.private.as_bytes(), 0o600)?;
        Ok(())
    }
}

/// The sshd's config and keys as loomd has them, replacing whatever the weaver left there.
pub fn write_files(r: &WeaverRoot, spec: &SshSpec) -> Result<(), SshError> {
    r.make_dirs(SSH_DIR, 0o755, true)?;
    r.replace_file(SSHD_CONFIG, loom_core::ssh::sshd_config().as_bytes(), 0o644)?;
    let keys: String = spec.authorized_keys.iter().map(|k| format!("{k}\n")).collect();
    r.replace_file(AUTHORIZED_KEYS, keys.as_bytes(), 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_key_is_new_each_time_and_its_public_half_parses() {
        let (a, b) = (HostKey::generate("w-1").unwrap(), HostKey::generate("w-1").unwrap());
        assert_ne!(a.public, b.public);
        assert!(a.private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert_eq!(loom_core::ssh::authorized_key(1, &a.public).unwrap(), a.public);
        assert!(a.public.starts_with("ssh-ed25519 ") && a.public.ends_with(" w-1"));
    }
}
