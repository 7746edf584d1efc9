//! loom-secrets: reads SOPS files in-process so provider keys exist only in loomd's memory.
//!
//! ```no_run
//! use loom_secrets::{KeyRing, decrypt_file};
//! let mut keys = KeyRing::new();
//! keys.add_ssh_ed25519_key_file("/etc/ssh/ssh_host_ed25519_key")?;
//! let tree = decrypt_file("/run/secrets/loom.yaml", &keys)?;
//! let api_key = tree.get("anthropic_api_key")?; // &SecretString, prints as [redacted]
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What it guarantees:
//! - the MAC is always verified; a file without one, or whose MAC differs, is refused
//!   ([`SopsError::MacMissing`], [`SopsError::MacMismatch`]) and nothing is returned;
//! - every value is authenticated with its key path (a value moved or altered is
//!   [`SopsError::TamperedValue`] naming the path);
//! - plaintext lives only in [`SecretString`]/[`SecretBytes`], zeroed on drop and printed
//!   as `[redacted]`; errors and `Debug` output carry paths and recipients, never values.
//!
//! Map of the crate: `formats` parses YAML/JSON/dotenv/INI/binary into one ordered tree
//! (`tree`), `metadata` reads the `sops` entry, `keys` unwraps the data key (age, SSH host
//! key via ssh-to-age's conversion, PGP), `cipher` is sops' value format, and `decrypt`
//! unwraps, has `decrypt::walk` walk the tree in sops' order, and checks the MAC. It never writes files or logs values.

mod cipher;
mod config;
mod decrypt;
mod formats;
#[cfg(test)]
mod fuzz_tests;
mod keys;
mod metadata;
mod secret;
mod tree;

pub use cipher::ValueKind;
pub use config::{SecretsConfig, SecretsError};
pub use decrypt::{LookupError, MAX_FILE_SIZE, SecretTree, SopsError, decrypt_bytes, decrypt_file, decrypt_file_as};
pub use formats::SopsFormat;
pub use keys::{KeyError, KeyRing};
pub use secret::{SecretBytes, SecretString};

/// The `age1…` recipient sops-nix (ssh-to-age) derives from an ed25519 seed, exposed for
/// tests and tooling that check a host key against a `.sops.yaml`.
pub fn ssh_ed25519_seed_to_age_recipient(seed: &[u8; 32]) -> String {
    keys::x25519_identity(&keys::ed25519_seed_to_x25519(seed)).to_public().to_string()
}
