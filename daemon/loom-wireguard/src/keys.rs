//! WireGuard keys. A private key lives in a [`PrivateKey`] (zeroed on drop, never printed by
//! `Debug`); the host's is read from the operator's file or generated once into the state dir.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use wireguard_control::Key;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::WgError;

/// A Curve25519 public key, base64 in configs and files.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn to_key(self) -> Key {
        Key(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Key(self.0).to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match Key::from_base64(s) {
            Ok(k) => Ok(PublicKey(k.0)),
            Err(_) => Err(format!(
                "{s:?} is not a WireGuard public key: 44 characters of base64 for 32 bytes, as `wg pubkey` prints"
            )),
        }
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A Curve25519 private key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh clamped key from the OS's random source.
    pub fn generate() -> PrivateKey {
        let mut k = Key::generate_private();
        let key = PrivateKey(k.0);
        k.0.zeroize();
        key
    }

    pub fn from_base64(s: &str) -> Option<PrivateKey> {
        let mut k = Key::from_base64(s.trim()).ok()?;
        let key = PrivateKey(k.0);
        k.0.zeroize();
        Some(key)
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(Key(self.0).to_base64())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(Key(self.0).get_public().0)
    }

    /// The key in wireguard-control's form, for one `DeviceUpdate` (which does not zero it).
    pub(crate) fn to_key(&self) -> Key {
        Key(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public_key())
    }
}

/// Reads the operator's key file; it must be readable by its owner only.
pub fn read_private_key(path: &Path) -> Result<PrivateKey, WgError> {
    let key_error = |message: String| WgError::KeyFile { path: path.to_path_buf(), message };
    let meta = std::fs::metadata(path).map_err(|e| key_error(format!("cannot read it: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(key_error(format!(
            "it is readable by group or others (mode {mode:04o}): chmod 600 {}",
            path.display()
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| key_error(format!("cannot read it: {e}")))?);
    PrivateKey::from_base64(&text)
        .ok_or_else(|| key_error("it does not hold a base64 private key: create one with `wg genkey`".into()))
}

/// The key at `path`, generating it (0600, atomically) the first time.
pub fn load_or_create_private_key(path: &Path) -> Result<PrivateKey, WgError> {
    if path.exists() {
        return read_private_key(path);
    }
    let key = PrivateKey::generate();
    let mut text = key.to_base64();
    text.push('\n');
    crate::state::write_private_file(path, text.as_bytes())?;
    tracing::info!(path = %path.display(), public_key = %key.public_key(), "generated the WireGuard host key");
    Ok(key)
}

/// Writes `bytes` to an already created, owner-only temporary file.
pub(crate) fn write_all_synced(file: &mut std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes)?;
    file.sync_all()
}
