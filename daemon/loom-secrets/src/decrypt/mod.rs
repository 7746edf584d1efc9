//! Decrypting a whole sops file: unwrap the data key, walk the tree in sops' order
//! decrypting values with their key path as additional data, recompute the MAC and compare
//! it with the stored one. Nothing is returned unless the MAC matches.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest;
use zeroize::Zeroizing;

use crate::cipher::{self, CipherError, ValueKind};
use crate::formats::{self, SopsFormat};
use crate::keys::KeyRing;
use crate::metadata;
use crate::secret::{SecretBytes, SecretString};
use walk::Walker;

mod walk;

/// Largest sops file read (secrets files are kilobytes).
pub const MAX_FILE_SIZE: u64 = 16 << 20;

/// sops' `MACOnlyEncryptedInitialization`: hashed first when `mac_only_encrypted` is set.
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b, 0x0b, 0x97, 0x5b,
    0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// Why a sops file was refused. No variant carries plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SopsError {
    /// The file could not be read.
    #[error("cannot read sops file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is bigger than [`MAX_FILE_SIZE`].
    #[error("sops file {path} is larger than 16 MiB: refusing to read it")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file does not parse as a sops file of its format.
    #[error("malformed {format} sops file: {detail}")]
    Malformed {
        /// The format it was read as.
        format: &'static str,
        /// What is wrong and where.
        detail: String,
    },
    /// The file uses a sops feature loom does not implement.
    #[error("unsupported sops file: {0}")]
    Unsupported(String),
    /// The file has no MAC, so nothing proves it was not changed.
    #[error(
        "the sops file has no MAC (sops.mac is missing or empty): it could have been tampered with, so it is refused; re-encrypt it with `sops` to add one"
    )]
    MacMissing,
    /// The stored MAC does not match the file's content.
    #[error("MAC mismatch: {reason}; the file was changed after sops wrote it, so it is refused")]
    MacMismatch {
        /// Whether the stored MAC failed to decrypt or differed from the computed one.
        reason: String,
    },
    /// One encrypted value failed authentication.
    #[error(
        "the encrypted value at `{path}` fails authentication: its ciphertext was altered, or it was moved from another key"
    )]
    TamperedValue {
        /// Dotted key path of the value.
        path: String,
    },
    /// A value is not in sops' encrypted form where the file's rules say it must be.
    #[error("the value at `{path}` is {detail}")]
    BadValue {
        /// Dotted key path of the value.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// None of the ring's keys opened the data key.
    #[error("{}", no_key_message(recipients, tried, failures))]
    NoKeyCouldUnwrap {
        /// The file's recipients (`age age1…`, `pgp FINGERPRINT`, `kms …`).
        recipients: Vec<String>,
        /// The keys that were tried (`age age1… (from …)`, `pgp FP (from …)`).
        tried: Vec<String>,
        /// Attempts where a key matched a recipient but unwrapping failed.
        failures: Vec<String>,
    },
}

fn no_key_message(recipients: &[String], tried: &[String], failures: &[String]) -> String {
    let mut m = format!(
        "no configured key could unwrap the data key; the file is encrypted to: {}; keys tried: {}",
        if recipients.is_empty() { "(none)".to_string() } else { recipients.join(", ") },
        if tried.is_empty() { "(none configured)".to_string() } else { tried.join(", ") },
    );
    if !failures.is_empty() {
        m.push_str("; failures: ");
        m.push_str(&failures.join("; "));
    }
    m.push_str(". Add a key for one of the file's recipients (age_key_file, ssh_host_keys, pgp_key_file) or re-encrypt the file to one of yours");
    m
}

/// A lookup in a [`SecretTree`] that found no usable value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No value at that path.
    #[error("no secret at `{path}` in the sops file")]
    NotFound {
        /// The dotted path asked for.
        path: String,
    },
    /// The path names a mapping or list, not a value.
    #[error("`{path}` is a mapping or list, not a value; its values are at: {children}")]
    NotALeaf {
        /// The dotted path asked for.
        path: String,
        /// Dotted paths below it (at most 10).
        children: String,
    },
    /// Several values have this dotted path (keys that contain dots).
    #[error(
        "`{path}` is ambiguous: several keys spell it once joined with dots; use SecretTree::get_path with the key components"
    )]
    Ambiguous {
        /// The dotted path asked for.
        path: String,
    },
    /// The value is binary, not UTF-8 text.
    #[error("the secret at `{path}` is binary, not UTF-8 text; use SecretTree::expose_bytes")]
    NotText {
        /// The dotted path asked for.
        path: String,
    },
}

enum LeafValue {
    Text(SecretString),
    Bytes(SecretBytes),
}

struct Leaf {
    path: Vec<String>,
    dotted: String,
    kind: ValueKind,
    encrypted: bool,
    value: LeafValue,
}

/// The decrypted, MAC-verified content of a sops file: its leaf values by key path.
///
/// List elements are addressed by index (`a_list.0`). `Debug` shows paths, never values.
pub struct SecretTree {
    format: SopsFormat,
    leaves: Vec<Leaf>,
    comments: Vec<SecretString>,
    unwrapped_by: String,
}

impl fmt::Debug for SecretTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretTree")
            .field("format", &self.format)
            .field("paths", &self.paths())
            .field("comments", &self.comments.len())
            .field("unwrapped_by", &self.unwrapped_by)
            .finish()
    }
}

impl SecretTree {
    /// The format the file was read as.
    pub fn format(&self) -> SopsFormat {
        self.format
    }

    /// Which ring key opened the data key, e.g. `age age1… (from SSH host key
    /// /etc/ssh/ssh_host_ed25519_key, converted like ssh-to-age)` (for `loom secrets check`).
    pub fn unwrapped_by(&self) -> &str {
        &self.unwrapped_by
    }

    /// Dotted paths of every value, in file order (for `loom secrets check`).
    pub fn paths(&self) -> Vec<String> {
        self.leaves.iter().map(|l| l.dotted.clone()).collect()
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Whether the file holds no value.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    fn find(&self, dotted: &str) -> Result<&Leaf, LookupError> {
        let mut hits = self.leaves.iter().filter(|l| l.dotted == dotted);
        match (hits.next(), hits.next()) {
            (Some(l), None) => Ok(l),
            (Some(_), Some(_)) => Err(LookupError::Ambiguous { path: dotted.to_string() }),
            (None, _) => {
                let prefix = format!("{dotted}.");
                let children: Vec<&str> = self
                    .leaves
                    .iter()
                    .filter(|l| l.dotted.starts_with(&prefix))
                    .map(|l| l.dotted.as_str())
                    .take(10)
                    .collect();
                if children.is_empty() {
                    Err(LookupError::NotFound { path: dotted.to_string() })
                } else {
                    Err(LookupError::NotALeaf { path: dotted.to_string(), children: children.join(", ") })
                }
            }
        }
    }

    /// The text value at a dotted path (`nested.test.file`, `a_list.0`, INI `section.key`).
    pub fn get(&self, dotted: &str) -> Result<&SecretString, LookupError> {
        match &self.find(dotted)?.value {
            LeafValue::Text(s) => Ok(s),
            LeafValue::Bytes(_) => Err(LookupError::NotText { path: dotted.to_string() }),
        }
    }

    /// The text value at an exact key path, for keys that themselves contain dots.
    pub fn get_path(&self, path: &[&str]) -> Result<&SecretString, LookupError> {
        let dotted = path.join(".");
        let leaf = self
            .leaves
            .iter()
            .find(|l| l.path.iter().map(String::as_str).eq(path.iter().copied()))
            .ok_or(LookupError::NotFound { path: dotted.clone() })?;
        match &leaf.value {
            LeafValue::Text(s) => Ok(s),
            LeafValue::Bytes(_) => Err(LookupError::NotText { path: dotted }),
        }
    }

    /// The plaintext bytes at a dotted path, text or binary (a binary-format file's content
    /// is at `data`). Keep the borrow short and never log it.
    pub fn expose_bytes(&self, dotted: &str) -> Result<&[u8], LookupError> {
        Ok(match &self.find(dotted)?.value {
            LeafValue::Text(s) => s.expose().as_bytes(),
            LeafValue::Bytes(b) => b.expose(),
        })
    }

    /// The sops type of the value at a dotted path (`str` for unencrypted strings).
    pub fn kind(&self, dotted: &str) -> Result<ValueKind, LookupError> {
        Ok(self.find(dotted)?.kind)
    }

    /// Whether the value at a dotted path was encrypted in the file (false for keys sops
    /// left in clear, e.g. with the `_unencrypted` suffix).
    pub fn was_encrypted(&self, dotted: &str) -> Result<bool, LookupError> {
        Ok(self.find(dotted)?.encrypted)
    }

    /// The file's comments, decrypted where sops encrypted them (`type:comment`).
    pub fn comments(&self) -> &[SecretString] {
        &self.comments
    }
}

/// Reads, decrypts and verifies a sops file; the format comes from its extension
/// ([`SopsFormat::from_path`]).
pub fn decrypt_file(path: impl AsRef<Path>, keys: &KeyRing) -> Result<SecretTree, SopsError> {
    let path = path.as_ref();
    decrypt_file_as(path, SopsFormat::from_path(path), keys)
}

/// Like [`decrypt_file`] with an explicit format.
pub fn decrypt_file_as(path: impl AsRef<Path>, format: SopsFormat, keys: &KeyRing) -> Result<SecretTree, SopsError> {
    let path = path.as_ref();
    let io = |source| SopsError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    file.take(MAX_FILE_SIZE + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > MAX_FILE_SIZE {
        return Err(SopsError::TooLarge { path: path.to_path_buf() });
    }
    decrypt_bytes(&buf, format, keys)
}

/// Decrypts and verifies sops file content held in memory.
pub fn decrypt_bytes(bytes: &[u8], format: SopsFormat, keys: &KeyRing) -> Result<SecretTree, SopsError> {
    let malformed = |detail: String| SopsError::Malformed { format: format.name(), detail };
    let text = std::str::from_utf8(bytes)
        .map_err(|e| malformed(format!("not UTF-8 text (first bad byte at offset {})", e.valid_up_to())))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let doc = formats::parse(text, format).map_err(|d| {
        if format == SopsFormat::Binary {
            // Unknown extensions are read as sops' binary store, like sops does.
            malformed(format!(
                "{d} (files without a .yaml/.yml/.json/.env/.ini extension are read as sops binary files; set the format explicitly if this one is not)"
            ))
        } else {
            malformed(d)
        }
    })?;
    let meta = metadata::parse(&doc.metadata)
        .map_err(|d| if d.contains("not support") { SopsError::Unsupported(d) } else { malformed(d) })?;
    let Some(stored_mac) = meta.mac.as_deref() else {
        return Err(SopsError::MacMissing);
    };

    let (data_key, unwrapped_by) =
        keys.unwrap_data_key(&meta.age, &meta.pgp).map_err(|failures| SopsError::NoKeyCouldUnwrap {
            recipients: meta
                .age
                .iter()
                .map(|a| format!("age {}", a.recipient))
                .chain(meta.pgp.iter().map(|p| format!("pgp {}", p.fingerprint)))
                .chain(meta.other_recipients.iter().cloned())
                .collect(),
            tried: keys.describe(),
            failures,
        })?;

    let mut walker = Walker::new(&data_key, &meta);
    if meta.mac_only_encrypted {
        walker.hash.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    for branch in &doc.branches {
        walker.walk_map(branch)?;
    }
    let computed = Zeroizing::new(hex_upper(&walker.hash.finalize()));

    let stored =
        cipher::decrypt(stored_mac, &data_key, &meta.mac_additional_data).map_err(|e| SopsError::MacMismatch {
            reason: match e {
                CipherError::Authentication => {
                    "the stored MAC does not decrypt (the MAC or sops.lastmodified was altered)".into()
                }
                CipherError::Format(d) | CipherError::BadTyped(d) => {
                    format!("the stored MAC is malformed ({d})")
                }
            },
        })?;
    if !constant_time_eq(&stored.value, computed.as_bytes()) {
        return Err(SopsError::MacMismatch {
            reason: "the MAC computed over the decrypted values differs from the stored one".into(),
        });
    }
    tracing::debug!(
        format = format.name(),
        values = walker.leaves.len(),
        key = %unwrapped_by,
        "sops file decrypted and its MAC verified"
    );
    Ok(SecretTree { format, leaves: walker.leaves, comments: walker.comments, unwrapped_by })
}

fn hex_upper(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::walk::should_be_encrypted;
    use super::*;
    use crate::cipher::tests::encrypt;
    use crate::metadata::CryptRule;
    use regex::Regex;
    use sha2::Sha512;

    const KEY: [u8; 32] = [42; 32];
    const LASTMOD: &str = "2025-05-05T05:05:05Z";

    /// A fresh age identity: its ring, its recipient, and `key` encrypted to it as the armored
    /// stanza a sops file carries.
    pub(crate) fn ring_and_stanza(key: &[u8; 32]) -> (KeyRing, String, String) {
        let id = age::x25519::Identity::generate();
        let recipient = id.to_public();
        let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as _)).unwrap();
        let mut out = Vec::new();
        let armored = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor).unwrap();
        let mut w = enc.wrap_output(armored).unwrap();
        w.write_all(key).unwrap();
        w.finish().unwrap().finish().unwrap();
        let mut ring = KeyRing::new();
        use age::secrecy::ExposeSecret;
        ring.add_age_identities_str(id.to_string().expose_secret(), "test").unwrap();
        (ring, recipient.to_string(), String::from_utf8(out).unwrap())
    }

    /// A JSON sops file: `body` is the data object's members (values already in their
    /// final, possibly encrypted, form); the MAC is computed over `mac_input`.
    fn file(body: &str, extra_meta: &str, mac_input: &[u8]) -> (KeyRing, String) {
        let (ring, recipient, armored) = ring_and_stanza(&KEY);
        let mac = hex_upper(&Sha512::digest(mac_input));
        let mac = encrypt(mac.as_bytes(), "str", &KEY, LASTMOD, [3; 32]);
        let text = format!(
            r#"{{{body}, "sops": {{"age": [{{"recipient": "{recipient}", "enc": {}}}], "lastmodified": "{LASTMOD}", "mac": "{mac}"{extra_meta}}}}}"#,
            serde_json::to_string(&armored).unwrap()
        );
        (ring, text)
    }

    fn e(plain: &str, kind: &str, ad: &str) -> String {
        encrypt(plain.as_bytes(), kind, &KEY, ad, [9; 32])
    }

    #[test]
    fn encrypted_regex_and_mac_only_encrypted() {
        let body = format!(r#""secret_a": "{}", "plain": "visible", "n": 5"#, e("va", "str", "secret_a:"));
        // With mac_only_encrypted, only encrypted values (after the init bytes) count.
        let mut mac = MAC_ONLY_ENCRYPTED_INIT.to_vec();
        mac.extend_from_slice(b"va");
        let (ring, text) = file(&body, r#", "encrypted_regex": "^secret", "mac_only_encrypted": true"#, &mac);
        let tree = decrypt_bytes(text.as_bytes(), SopsFormat::Json, &ring).unwrap();
        assert_eq!(tree.get("secret_a").unwrap().expose(), "va");
        assert_eq!(tree.get("plain").unwrap().expose(), "visible");
        assert!(!tree.was_encrypted("n").unwrap());
        assert_eq!(tree.kind("n").unwrap(), ValueKind::Int);

        // Without it, every value counts, numbers as Go formats them.
        let (ring, text) = file(&body, r#", "encrypted_regex": "^secret""#, b"vavisible5");
        assert!(decrypt_bytes(text.as_bytes(), SopsFormat::Json, &ring).is_ok());
        let (ring, text) = file(&body, r#", "encrypted_regex": "^secret""#, b"va");
        assert!(matches!(decrypt_bytes(text.as_bytes(), SopsFormat::Json, &ring), Err(SopsError::MacMismatch { .. })));
    }

    #[test]
    fn typed_values_and_unencrypted_suffix() {
        let body = format!(
            r#""port": "{}", "ratio": "{}", "on": "{}", "id_unencrypted": {{"x": "clear", "y": true}}, "list": ["{}", "{}"]"#,
            e("8080", "int", "port:"),
            e("0.50", "float", "ratio:"),
            e("true", "bool", "on:"),
            e("a", "str", "list:"),
            e("b", "str", "list:"),
        );
        let (ring, text) = file(&body, "", b"80800.5Trueclear" as &[u8]);
        // `y: true` is unencrypted and hashes as "True".
        let mut mac = b"80800.5TrueclearTrue".to_vec();
        mac.extend_from_slice(b"ab");
        let (ring2, text2) = file(&body, "", &mac);
        assert!(matches!(decrypt_bytes(text.as_bytes(), SopsFormat::Json, &ring), Err(SopsError::MacMismatch { .. })));
        let tree = decrypt_bytes(text2.as_bytes(), SopsFormat::Json, &ring2).unwrap();
        assert_eq!(tree.get("port").unwrap().expose(), "8080");
        assert_eq!(tree.get("ratio").unwrap().expose(), "0.5");
        assert_eq!(tree.get("on").unwrap().expose(), "true");
        assert_eq!(tree.kind("on").unwrap(), ValueKind::Bool);
        assert_eq!(tree.get("id_unencrypted.y").unwrap().expose(), "true");
        assert_eq!(tree.get("list.1").unwrap().expose(), "b");
    }

    #[test]
    fn comment_regexes_follow_sops_rules() {
        let rule = Regex::new("sops:enc").unwrap();
        let enc_rule = CryptRule::EncryptedCommentRegex(rule);
        // A value right after a matching comment is encrypted; the comment itself is not.
        let stack = vec![vec!["sops:enc".to_string()]];
        assert!(should_be_encrypted(&enc_rule, &["a".into()], &stack, false));
        assert!(!should_be_encrypted(&enc_rule, &[], &stack, true));
        assert!(!should_be_encrypted(&enc_rule, &["a".into()], &[vec![]], false));
        let unenc = CryptRule::UnencryptedCommentRegex(Regex::new("keep").unwrap());
        assert!(!should_be_encrypted(&unenc, &["a".into()], &[vec!["keep it".into()]], false));
        assert!(should_be_encrypted(&unenc, &["a".into()], &[vec![]], false));
        let suffix = CryptRule::EncryptedSuffix("_secret".into());
        assert!(should_be_encrypted(&suffix, &["db_secret".into(), "pw".into()], &[], false));
        assert!(!should_be_encrypted(&suffix, &["db".into()], &[], false));
    }

    #[test]
    fn unsupported_and_conflicting_metadata_are_refused() {
        let (ring, text) = file(r#""a": "x""#, r#", "key_groups": [{}, {}]"#, b"");
        let err = decrypt_bytes(text.as_bytes(), SopsFormat::Json, &ring).unwrap_err();
        assert!(matches!(err, SopsError::Unsupported(_)), "{err:?}");
        let (ring, text) = file(r#""a": "x""#, r#", "unencrypted_suffix": "_u", "encrypted_regex": "x""#, b"");
        let err = decrypt_bytes(text.as_bytes(), SopsFormat::Json, &ring).unwrap_err();
        assert!(matches!(err, SopsError::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn yaml_comments_in_nested_mappings_decrypt_with_their_path() {
        let (ring, recipient, armored) = ring_and_stanza(&KEY);
        let mac = hex_upper(&Sha512::digest(b"v"));
        let indented: String = armored.lines().map(|l| format!("        {l}\n")).collect();
        let text = format!(
            "#{}\na:\n    #{}\n    b: {}\nsops:\n  age:\n    - recipient: {recipient}\n      enc: |\n{indented}  lastmodified: \"{LASTMOD}\"\n  mac: {}\n",
            encrypt(b"top", "comment", &KEY, ":", [1; 32]),
            encrypt(b"about b", "comment", &KEY, "a:", [2; 32]),
            e("v", "str", "a:b:"),
            encrypt(mac.as_bytes(), "str", &KEY, LASTMOD, [3; 32]),
        );
        let tree = decrypt_bytes(text.as_bytes(), SopsFormat::Yaml, &ring).unwrap();
        let comments: Vec<&str> = tree.comments().iter().map(|c| c.expose()).collect();
        assert_eq!(comments, vec!["top", "about b"]);
        assert_eq!(tree.get("a.b").unwrap().expose(), "v");
    }
}
