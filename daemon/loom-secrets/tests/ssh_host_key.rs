//! The NixOS path: a host's ed25519 SSH key opens a sops file encrypted to the age
//! recipient sops-nix derives from it (ssh-to-age), and sops' native `ssh-ed25519` age
//! recipients too. Keys come from the real `ssh-keygen`; the sops file is written here
//! (no `sops` binary on this machine) with the `age` crate and sops' value format.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use curve25519_dalek::edwards::CompressedEdwardsY;
use loom_secrets::{KeyError, KeyRing, SopsError, SopsFormat, decrypt_bytes};
use sha2::{Digest, Sha512};

/// Runs the real ssh-keygen; the test fails (not skips) without it: install openssh-client.
fn ssh_keygen(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(args)
        .args(["-q", "-C", "test@loom", "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen must be installed for this test (apt-get install openssh-client)");
    assert!(status.success(), "ssh-keygen {args:?} failed");
    path
}

/// ssh-to-age's public-key path: the ed25519 point from the `.pub` file in Montgomery
/// form, bech32 `age1…`. Independent of the crate's private-key conversion.
fn recipient_from_pub_file(pub_path: &Path) -> String {
    let line = std::fs::read_to_string(pub_path).unwrap();
    let mut parts = line.split_whitespace();
    assert_eq!(parts.next(), Some("ssh-ed25519"));
    let blob = STANDARD.decode(parts.next().unwrap()).unwrap();
    // string "ssh-ed25519" (4 + 11 bytes), then string pk (4 + 32 bytes).
    assert_eq!(blob.len(), 4 + 11 + 4 + 32);
    let pk: [u8; 32] = blob[19..].try_into().unwrap();
    let montgomery = CompressedEdwardsY(pk).decompress().expect("valid ed25519 point").to_montgomery();
    let hrp = bech32::Hrp::parse("age").unwrap();
    bech32::encode::<bech32::Bech32>(hrp, montgomery.as_bytes()).unwrap()
}

/// Encrypts one value in sops' format under `key` with additional data `ad`.
fn enc(plain: &str, kind: &str, key: &[u8; 32], ad: &str, n: u8) -> String {
    let cipher = aes_gcm::AesGcm::<aes_gcm::aes::Aes256, U32>::new(GenericArray::from_slice(key));
    let iv: [u8; 32] = Sha512::digest([n, 0x5a]).as_slice()[..32].try_into().unwrap();
    let out =
        cipher.encrypt(GenericArray::from_slice(&iv), Payload { msg: plain.as_bytes(), aad: ad.as_bytes() }).unwrap();
    let (data, tag) = out.split_at(out.len() - 16);
    format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
        STANDARD.encode(data),
        STANDARD.encode(iv),
        STANDARD.encode(tag)
    )
}

fn age_armor(data_key: &[u8; 32], recipient: &dyn age::Recipient) -> String {
    let encryptor = age::Encryptor::with_recipients(std::iter::once(recipient)).unwrap();
    let mut out = Vec::new();
    let armored = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor).unwrap();
    let mut w = encryptor.wrap_output(armored).unwrap();
    w.write_all(data_key).unwrap();
    w.finish().unwrap().finish().unwrap();
    String::from_utf8(out).unwrap()
}

/// A sops YAML file with `api_key`, `nested.token` and an unencrypted value, its data key
/// wrapped for one age recipient, and a MAC over the plaintexts in file order.
fn sops_yaml(data_key: &[u8; 32], recipient_name: &str, armored: &str) -> String {
    let lastmodified = "2026-01-02T03:04:05Z";
    let mut mac = Sha512::new();
    for v in ["sk-ant-123", "tok-456", "42", "public"] {
        mac.update(v.as_bytes());
    }
    let mac_hex: String = mac.finalize().iter().map(|b| format!("{b:02X}")).collect();
    let indented: String = armored.lines().map(|l| format!("            {l}\n")).collect();
    format!(
        "api_key: {}\nnested:\n    token: {}\n    port: {}\nnote_unencrypted: public\nsops:\n    age:\n        - recipient: {recipient_name}\n          enc: |\n{indented}    lastmodified: \"{lastmodified}\"\n    mac: {}\n    unencrypted_suffix: _unencrypted\n    version: 3.9.0\n",
        enc("sk-ant-123", "str", data_key, "api_key:", 1),
        enc("tok-456", "str", data_key, "nested:token:", 2),
        enc("42", "int", data_key, "nested:port:", 3),
        enc(&mac_hex, "str", data_key, lastmodified, 4),
    )
}

const DATA_KEY: [u8; 32] = *b"0123456789abcdef0123456789abcdef";

#[test]
fn host_key_conversion_matches_ssh_to_age_public_path() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..3 {
        let key = ssh_keygen(dir.path(), &format!("k{n}"), &["-t", "ed25519", "-N", ""]);
        let mut ring = KeyRing::new();
        let derived = ring.add_ssh_ed25519_key_file(&key).unwrap();
        let from_pub = recipient_from_pub_file(&key.with_extension("pub"));
        assert_eq!(derived, from_pub, "key {n}");
        assert!(derived.starts_with("age1"));
    }
}

#[test]
fn seed_conversion_is_sha512_clamp() {
    // Known answer computed independently: X25519 public key of clamp(SHA-512(seed)[..32]).
    let seed = [9u8; 32];
    let mut s: [u8; 32] = Sha512::digest(seed)[..32].try_into().unwrap();
    s[0] &= 248;
    s[31] &= 127;
    s[31] |= 64;
    let public = curve25519_dalek::MontgomeryPoint::mul_base_clamped(s);
    let hrp = bech32::Hrp::parse("age").unwrap();
    let expected = bech32::encode::<bech32::Bech32>(hrp, public.as_bytes()).unwrap();
    assert_eq!(loom_secrets::ssh_ed25519_seed_to_age_recipient(&seed), expected);
}

#[test]
fn ssh_host_key_opens_file_encrypted_to_its_converted_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let key = ssh_keygen(dir.path(), "ssh_host_ed25519_key", &["-t", "ed25519", "-N", ""]);
    let recipient_str = recipient_from_pub_file(&key.with_extension("pub"));
    let recipient = age::x25519::Recipient::from_str(&recipient_str).unwrap();
    let file = sops_yaml(&DATA_KEY, &recipient_str, &age_armor(&DATA_KEY, &recipient));

    let mut ring = KeyRing::new();
    ring.add_ssh_ed25519_key_file(&key).unwrap();
    let tree = decrypt_bytes(file.as_bytes(), SopsFormat::Yaml, &ring).unwrap();
    assert_eq!(tree.get("api_key").unwrap().expose(), "sk-ant-123");
    assert_eq!(tree.get("nested.token").unwrap().expose(), "tok-456");
    assert_eq!(tree.get("nested.port").unwrap().expose(), "42");
    assert_eq!(tree.get("note_unencrypted").unwrap().expose(), "public");
    assert!(!tree.was_encrypted("note_unencrypted").unwrap());

    // Another host's key cannot, and the error names both recipients.
    let other = ssh_keygen(dir.path(), "other", &["-t", "ed25519", "-N", ""]);
    let mut other_ring = KeyRing::new();
    let other_recipient = other_ring.add_ssh_ed25519_key_file(&other).unwrap();
    let err = decrypt_bytes(file.as_bytes(), SopsFormat::Yaml, &other_ring).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SopsError::NoKeyCouldUnwrap { .. }), "{err:?}");
    assert!(msg.contains(&recipient_str) && msg.contains(&other_recipient), "{msg}");
    assert!(msg.contains("SSH host key"), "{msg}");

    // Tampering with the unencrypted value breaks the MAC only.
    let tampered = file.replace("note_unencrypted: public", "note_unencrypted: publiC");
    let err = decrypt_bytes(tampered.as_bytes(), SopsFormat::Yaml, &ring).unwrap_err();
    assert!(matches!(err, SopsError::MacMismatch { .. }), "{err:?}");
}

#[test]
fn ssh_host_key_opens_native_ssh_ed25519_recipients() {
    // sops >= 3.10 can encrypt to an SSH public key directly (age's ssh-ed25519 stanza).
    let dir = tempfile::tempdir().unwrap();
    let key = ssh_keygen(dir.path(), "ssh_host_ed25519_key", &["-t", "ed25519", "-N", ""]);
    let pub_line = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let pub_line = pub_line.trim();
    let recipient = age::ssh::Recipient::from_str(pub_line).unwrap();
    let file = sops_yaml(&DATA_KEY, pub_line, &age_armor(&DATA_KEY, &recipient));
    let mut ring = KeyRing::new();
    ring.add_ssh_ed25519_key_file(&key).unwrap();
    let tree = decrypt_bytes(file.as_bytes(), SopsFormat::Yaml, &ring).unwrap();
    assert_eq!(tree.get("api_key").unwrap().expose(), "sk-ant-123");
}

#[test]
fn unusable_ssh_keys_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = ssh_keygen(dir.path(), "rsa", &["-t", "rsa", "-b", "2048", "-N", ""]);
    let err = KeyRing::new().add_ssh_ed25519_key_file(&rsa).unwrap_err();
    assert!(matches!(err, KeyError::SshNotEd25519 { .. }), "{err:?}");
    assert!(err.to_string().contains("ed25519"), "{err}");

    let locked = ssh_keygen(dir.path(), "locked", &["-t", "ed25519", "-N", "hunter22"]);
    let err = KeyRing::new().add_ssh_ed25519_key_file(&locked).unwrap_err();
    assert!(matches!(err, KeyError::SshEncrypted { .. }), "{err:?}");

    let public = KeyRing::new().add_ssh_ed25519_key_file(locked.with_extension("pub")).unwrap_err();
    assert!(matches!(public, KeyError::BadSshKey { .. }), "{public:?}");
}

#[test]
fn secrets_config_loads_keys_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = ssh_keygen(dir.path(), "ssh_host_ed25519_key", &["-t", "ed25519", "-N", ""]);
    let recipient_str = recipient_from_pub_file(&key.with_extension("pub"));
    let recipient = age::x25519::Recipient::from_str(&recipient_str).unwrap();
    let file = dir.path().join("loom.yaml");
    std::fs::write(&file, sops_yaml(&DATA_KEY, &recipient_str, &age_armor(&DATA_KEY, &recipient))).unwrap();
    let cfg: loom_secrets::SecretsConfig = toml::from_str(&format!(
        "file = {:?}\nssh_host_keys = [{:?}]\n",
        file.display().to_string(),
        key.display().to_string()
    ))
    .unwrap();
    let tree = cfg.load().unwrap();
    assert_eq!(tree.get("nested.token").unwrap().expose(), "tok-456");

    let missing: loom_secrets::SecretsConfig = toml::from_str(&format!(
        "file = {:?}\nssh_host_keys = [\"/nonexistent/ssh_host_ed25519_key\"]\n",
        file.display().to_string()
    ))
    .unwrap();
    let err = missing.load().unwrap_err();
    assert!(matches!(err, loom_secrets::SecretsError::Key(KeyError::Io { .. })), "{err:?}");
    assert!(toml::from_str::<loom_secrets::SecretsConfig>("file = \"x\"\nbogus = 1\n").is_err());
}
