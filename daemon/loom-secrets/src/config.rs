//! The `[secrets]` table of loomd's config and the one call that turns it into secrets.

use std::path::PathBuf;

use serde::Deserialize;

use crate::decrypt::{SecretTree, SopsError, decrypt_file, decrypt_file_as};
use crate::formats::SopsFormat;
use crate::keys::{KeyError, KeyRing};

/// `[secrets]` in loomd's TOML config.
///
/// ```toml
/// [secrets]
/// file = "/run/secrets/loom.yaml"
/// format = "yaml"                        # optional: yaml|json|dotenv|ini|binary
/// age_key_file = "/var/lib/loom/age.key" # optional
/// ssh_host_keys = ["/etc/ssh/ssh_host_ed25519_key"]
/// pgp_key_file = "/var/lib/loom/pgp.asc" # optional
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// The sops file.
    pub file: PathBuf,
    /// Its format; by default from the file's extension, as sops decides.
    #[serde(default)]
    pub format: Option<String>,
    /// An age key file (`SOPS_AGE_KEY_FILE` format).
    #[serde(default)]
    pub age_key_file: Option<PathBuf>,
    /// ed25519 SSH host keys, converted as sops-nix does.
    #[serde(default)]
    pub ssh_host_keys: Vec<PathBuf>,
    /// An unprotected OpenPGP secret key file.
    #[serde(default)]
    pub pgp_key_file: Option<PathBuf>,
}

/// Loading the configured secrets failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// A configured key could not be loaded.
    #[error("cannot load a key configured in [secrets]")]
    Key(#[from] KeyError),
    /// `format` is not a sops format.
    #[error("[secrets] format: {0}")]
    Format(String),
    /// The sops file was refused.
    #[error("cannot decrypt {path}")]
    Sops {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: SopsError,
    },
}

impl SecretsConfig {
    /// Loads every configured key. A configured key that is missing or malformed is an
    /// error: a typo must not silently leave loomd without keys.
    pub fn key_ring(&self) -> Result<KeyRing, KeyError> {
        let mut ring = KeyRing::new();
        if let Some(p) = &self.age_key_file {
            ring.add_age_identities_file(p)?;
        }
        for p in &self.ssh_host_keys {
            ring.add_ssh_ed25519_key_file(p)?;
        }
        if let Some(p) = &self.pgp_key_file {
            ring.add_pgp_secret_key_file(p)?;
        }
        Ok(ring)
    }

    /// The explicit format, if any.
    pub fn sops_format(&self) -> Result<Option<SopsFormat>, SecretsError> {
        self.format.as_deref().map(|f| f.parse().map_err(SecretsError::Format)).transpose()
    }

    /// Loads the keys and decrypts the file.
    pub fn load(&self) -> Result<SecretTree, SecretsError> {
        let ring = self.key_ring()?;
        let sops = |source| SecretsError::Sops { path: self.file.clone(), source };
        match self.sops_format()? {
            Some(f) => decrypt_file_as(&self.file, f, &ring).map_err(sops),
            None => decrypt_file(&self.file, &ring).map_err(sops),
        }
    }
}
