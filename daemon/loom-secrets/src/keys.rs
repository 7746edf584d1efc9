//! The keys that can unwrap a sops data key: age X25519 identities, ed25519 SSH host keys
//! (converted to X25519 exactly as ssh-to-age / sops-nix do, and also usable for sops'
//! native `ssh-ed25519` age recipients), and OpenPGP secret keys.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use pgp::composed::{Deserializable, Message, SignedSecretKey};
use pgp::types::{KeyDetails, Password};
use sha2::{Digest, Sha512};
use zeroize::{Zeroize, Zeroizing};

use crate::cipher::DataKey;
use crate::metadata::{AgeStanza, PgpStanza};

/// Largest key file read; real ones are a few kilobytes.
const MAX_KEY_FILE: u64 = 1 << 20;

/// A key that could not be loaded. Messages name the file and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read key file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file is larger than any real key file.
    #[error("key file {path} is larger than 1 MiB: not a key file")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// An age identity line did not parse.
    #[error(
        "{source_name}, line {line}: not an age identity (expected AGE-SECRET-KEY-1…; plugin identities are not supported)"
    )]
    BadAgeIdentity {
        /// Where the identities came from.
        source_name: String,
        /// 1-based line.
        line: usize,
    },
    /// The age identity input held no identity at all.
    #[error("{source_name}: no age identity (AGE-SECRET-KEY-1…) found")]
    NoAgeIdentity {
        /// Where the identities came from.
        source_name: String,
    },
    /// The SSH key file is not an OpenSSH private key.
    #[error("{path}: not an OpenSSH private key ({detail})")]
    BadSshKey {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// The SSH key is not ed25519.
    #[error(
        "{path}: not an ed25519 key; sops-nix derives age keys from ed25519 host keys only (use /etc/ssh/ssh_host_ed25519_key)"
    )]
    SshNotEd25519 {
        /// The file.
        path: PathBuf,
    },
    /// The SSH key is protected by a passphrase.
    #[error("{path}: the SSH key is passphrase-protected; host keys are not, use the unencrypted host key")]
    SshEncrypted {
        /// The file.
        path: PathBuf,
    },
    /// The PGP key file did not parse.
    #[error("{path}: not an OpenPGP secret key")]
    BadPgpKey {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: pgp::errors::Error,
    },
    /// The PGP key file held no secret key.
    #[error("{path}: no OpenPGP secret key in the file (is it a public key?)")]
    NoPgpKey {
        /// The file.
        path: PathBuf,
    },
}

enum AgeIdentity {
    X25519(age::x25519::Identity),
    Ssh(age::ssh::Identity),
}

struct AgeKey {
    identity: AgeIdentity,
    /// What this key decrypts for: an `age1…` recipient or `ssh-ed25519 (native)`.
    recipient: String,
    /// Where it came from, for messages.
    origin: String,
}

struct PgpKey {
    key: SignedSecretKey,
    fingerprint: String,
    origin: String,
}

/// The keys loomd holds to open sops files. Build it once at start; it never prints key
/// material (`Debug` lists origins and public recipients only).
#[derive(Default)]
pub struct KeyRing {
    age: Vec<AgeKey>,
    pgp: Vec<PgpKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing").field("keys", &self.describe()).finish()
    }
}

fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let io = |source| KeyError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut buf = Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > MAX_KEY_FILE {
        return Err(KeyError::TooLarge { path: path.to_path_buf() });
    }
    Ok(buf)
}

/// The X25519 secret ssh-to-age derives from an ed25519 seed: the first half of
/// SHA-512(seed), clamped — the scalar ed25519 itself signs with, so the X25519 public key
/// is the Montgomery form of the ed25519 public key.
pub(crate) fn ed25519_seed_to_x25519(seed: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut digest = Sha512::digest(seed);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&digest[..32]);
    digest.as_mut_slice().zeroize();
    out[0] &= 248;
    out[31] &= 127;
    out[31] |= 64;
    out
}

/// Encodes an X25519 secret as an age identity string (`AGE-SECRET-KEY-1…`), the form
/// `ssh-to-age -private-key` prints, and parses it with the age crate.
pub(crate) fn x25519_identity(secret: &[u8; 32]) -> age::x25519::Identity {
    let hrp = bech32::Hrp::parse("age-secret-key-").expect("constant HRP is valid");
    let encoded = Zeroizing::new(
        bech32::encode::<bech32::Bech32>(hrp, secret).expect("32 bytes fit in a bech32 string").to_uppercase(),
    );
    age::x25519::Identity::from_str(&encoded).expect("a freshly encoded identity parses")
}

impl KeyRing {
    /// An empty ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no key was added.
    pub fn is_empty(&self) -> bool {
        self.age.is_empty() && self.pgp.is_empty()
    }

    /// One line per key: its type, public recipient or fingerprint, and where it came from.
    pub fn describe(&self) -> Vec<String> {
        self.age
            .iter()
            .map(AgeKey::describe)
            .chain(self.pgp.iter().map(|k| format!("pgp {} (from {})", k.fingerprint, k.origin)))
            .collect()
    }

    /// Adds the age identities of a key file in `SOPS_AGE_KEY_FILE` format (`#` comments,
    /// one `AGE-SECRET-KEY-1…` per line). Returns how many were added.
    pub fn add_age_identities_file(&mut self, path: impl AsRef<Path>) -> Result<usize, KeyError> {
        let path = path.as_ref();
        let buf = read_key_file(path)?;
        let text = std::str::from_utf8(&buf)
            .map_err(|_| KeyError::BadAgeIdentity { source_name: path.display().to_string(), line: 1 })?;
        self.add_age_identities(text, &path.display().to_string())
    }

    /// Adds age identities from a string in the `SOPS_AGE_KEY` form (same syntax as the
    /// key file). `origin` names it in messages (e.g. `"SOPS_AGE_KEY"`).
    pub fn add_age_identities_str(&mut self, identities: &str, origin: &str) -> Result<usize, KeyError> {
        self.add_age_identities(identities, origin)
    }

    fn add_age_identities(&mut self, text: &str, origin: &str) -> Result<usize, KeyError> {
        let mut added = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let identity = age::x25519::Identity::from_str(line)
                .map_err(|_| KeyError::BadAgeIdentity { source_name: origin.to_string(), line: n + 1 })?;
            added.push(AgeKey {
                recipient: identity.to_public().to_string(),
                identity: AgeIdentity::X25519(identity),
                origin: origin.to_string(),
            });
        }
        if added.is_empty() {
            return Err(KeyError::NoAgeIdentity { source_name: origin.to_string() });
        }
        let count = added.len();
        self.age.extend(added);
        Ok(count)
    }

    /// Adds an unencrypted OpenSSH ed25519 private key (a host key such as
    /// `/etc/ssh/ssh_host_ed25519_key`). It opens both the X25519 recipient sops-nix derives
    /// from it (ssh-to-age) and sops' native `ssh-ed25519` age recipients. Returns the
    /// derived `age1…` recipient.
    pub fn add_ssh_ed25519_key_file(&mut self, path: impl AsRef<Path>) -> Result<String, KeyError> {
        let path = path.as_ref();
        let buf = read_key_file(path)?;
        let text = std::str::from_utf8(&buf)
            .map_err(|_| KeyError::BadSshKey { path: path.to_path_buf(), detail: "not text".into() })?;
        let key = ssh_key::PrivateKey::from_openssh(text)
            .map_err(|e| KeyError::BadSshKey { path: path.to_path_buf(), detail: e.to_string() })?;
        if key.is_encrypted() {
            return Err(KeyError::SshEncrypted { path: path.to_path_buf() });
        }
        let Some(pair) = key.key_data().ed25519() else {
            return Err(KeyError::SshNotEd25519 { path: path.to_path_buf() });
        };
        let seed = Zeroizing::new(pair.private.to_bytes());
        // The same key as an age SSH identity opens sops' native `ssh-ed25519` recipients.
        let identity = age::ssh::Identity::from_buffer(&buf[..], Some(path.display().to_string()))
            .map_err(|e| KeyError::BadSshKey { path: path.to_path_buf(), detail: e.to_string() })?;
        let x = x25519_identity(&ed25519_seed_to_x25519(&seed));
        let recipient = x.to_public().to_string();
        let origin = format!("SSH host key {}", path.display());
        self.age.push(AgeKey {
            identity: AgeIdentity::X25519(x),
            recipient: recipient.clone(),
            origin: format!("{origin}, converted like ssh-to-age"),
        });
        self.age.push(AgeKey {
            identity: AgeIdentity::Ssh(identity),
            recipient: "ssh-ed25519 (native age SSH recipient)".into(),
            origin,
        });
        Ok(recipient)
    }

    /// Adds the OpenPGP secret keys of a file (ASCII-armored or binary, without a
    /// passphrase). Returns their primary key fingerprints (upper-case hex).
    pub fn add_pgp_secret_key_file(&mut self, path: impl AsRef<Path>) -> Result<Vec<String>, KeyError> {
        let path = path.as_ref();
        let buf = read_key_file(path)?;
        let bad = |source| KeyError::BadPgpKey { path: path.to_path_buf(), source };
        let keys: Vec<SignedSecretKey> = if buf.starts_with(b"-----BEGIN") {
            let (iter, _headers) = SignedSecretKey::from_armor_many(&buf[..]).map_err(bad)?;
            iter.collect::<Result<_, _>>().map_err(bad)?
        } else {
            SignedSecretKey::from_bytes_many(&buf[..]).map_err(bad)?.collect::<Result<_, _>>().map_err(bad)?
        };
        if keys.is_empty() {
            return Err(KeyError::NoPgpKey { path: path.to_path_buf() });
        }
        let mut fingerprints = Vec::new();
        for key in keys {
            let fingerprint = format!("{:X}", key.fingerprint());
            fingerprints.push(fingerprint.clone());
            self.pgp.push(PgpKey { key, fingerprint, origin: path.display().to_string() });
        }
        Ok(fingerprints)
    }

    /// Unwraps the data key: age recipients first, then PGP (sops' own order). Returns the
    /// key with a description of the ring key that opened it; on failure, one line per
    /// attempt that came close (a stanza for one of our keys that still failed).
    pub(crate) fn unwrap_data_key(
        &self,
        age: &[AgeStanza],
        pgp: &[PgpStanza],
    ) -> Result<(DataKey, String), Vec<String>> {
        let mut failures = Vec::new();
        for stanza in age {
            for key in &self.age {
                match unwrap_age(stanza, key) {
                    Ok(Some(k)) => return Ok((k, key.describe())),
                    Ok(None) => {}
                    Err(e) => failures.push(format!("age {}: {e}", stanza.recipient)),
                }
            }
        }
        for stanza in pgp {
            for key in &self.pgp {
                match unwrap_pgp(stanza, key) {
                    Ok(k) => {
                        return Ok((k, format!("pgp {} (from {})", key.fingerprint, key.origin)));
                    }
                    Err(e) if stanza_names_key(stanza, key) => {
                        failures.push(format!("pgp {}: {e}", stanza.fingerprint))
                    }
                    Err(_) => {}
                }
            }
        }
        Err(failures)
    }
}

impl AgeKey {
    fn describe(&self) -> String {
        format!("age {} (from {})", self.recipient, self.origin)
    }
}

/// Tries one identity on one sops age stanza: `Ok(None)` when the stanza is not for it.
fn unwrap_age(stanza: &AgeStanza, key: &AgeKey) -> Result<Option<DataKey>, String> {
    let reader = age::armor::ArmoredReader::new(stanza.enc.as_bytes());
    let decryptor = age::Decryptor::new(reader).map_err(|e| format!("not an age file: {e}"))?;
    let identity: &dyn age::Identity = match &key.identity {
        AgeIdentity::X25519(i) => i,
        AgeIdentity::Ssh(i) => i,
    };
    let mut reader = match decryptor.decrypt(std::iter::once(identity)) {
        Ok(r) => r,
        Err(age::DecryptError::NoMatchingKeys) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut plain = Zeroizing::new(Vec::new());
    reader.read_to_end(&mut plain).map_err(|e| format!("age payload does not decrypt: {e}"))?;
    to_data_key(&plain).map(Some)
}

fn stanza_names_key(stanza: &PgpStanza, key: &PgpKey) -> bool {
    let fp = stanza.fingerprint.replace(' ', "").to_ascii_uppercase();
    key.fingerprint == fp || key.key.secret_subkeys.iter().any(|s| format!("{:X}", s.key.fingerprint()) == fp)
}

fn unwrap_pgp(stanza: &PgpStanza, key: &PgpKey) -> Result<DataKey, String> {
    let (msg, _) = Message::from_string(&stanza.enc).map_err(|e| format!("not a PGP message: {e}"))?;
    let mut msg = msg
        .decrypt(&Password::empty(), &key.key)
        .map_err(|e| format!("cannot decrypt with key {}: {e}", key.fingerprint))?;
    if msg.is_compressed() {
        msg = msg.decompress().map_err(|e| format!("cannot decompress: {e}"))?;
    }
    let plain = Zeroizing::new(msg.as_data_vec().map_err(|e| format!("cannot read the decrypted message: {e}"))?);
    to_data_key(&plain)
}

fn to_data_key(plain: &[u8]) -> Result<DataKey, String> {
    if plain.len() != 32 {
        return Err(format!("unwrapped data key is {} bytes, sops data keys are 32", plain.len()));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(plain);
    Ok(key)
}
