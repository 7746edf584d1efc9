//! Interoperability: files written by the real `sops` tool (shared/testdata, see their
//! READMEs) decrypt to the documented content with their real keys, and tampered copies
//! are refused with the right error.

use std::path::PathBuf;

use loom_secrets::{KeyError, KeyRing, LookupError, SopsError, SopsFormat, ValueKind, decrypt_bytes, decrypt_file};

fn testdata() -> PathBuf {
    let dir = std::env::var_os("LOOM_TESTDATA")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"), PathBuf::from);
    assert!(
        dir.join("sops/README.md").is_file(),
        "sops test vectors not found at {} (set LOOM_TESTDATA to shared/testdata)",
        dir.display()
    );
    dir
}

fn pgp_ring() -> KeyRing {
    let mut ring = KeyRing::new();
    let fps = ring
        .add_pgp_secret_key_file(testdata().join("sops/sops_functional_tests_key.asc"))
        .expect("the functional tests key loads");
    assert!(fps.iter().any(|f| f == "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"), "fingerprints: {fps:?}");
    ring
}

fn age_ring() -> KeyRing {
    let mut ring = KeyRing::new();
    let n = ring.add_age_identities_file(testdata().join("sops-nix/age-keys.txt")).expect("age-keys.txt loads");
    assert_eq!(n, 1);
    ring
}

/// Every value of a tree as (path, plaintext), in file order.
fn contents(tree: &loom_secrets::SecretTree) -> Vec<(String, String)> {
    tree.paths()
        .into_iter()
        .map(|p| {
            let v = tree.get(&p).unwrap().expose().to_string();
            (p, v)
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn sops_yaml_json_dotenv_decrypt_with_pgp() {
    let ring = pgp_ring();
    for (file, expected) in [
        ("format.enc.yaml", pairs(&[("foo", "bar")])),
        ("format.enc.json", pairs(&[("foo", "bar")])),
        // The dotenv store keeps the spaces around `=`.
        ("format.enc.env", pairs(&[("foo ", " bar")])),
        ("multiple_keys.yaml", pairs(&[("message", "hello")])),
        ("comments.enc.yaml", pairs(&[("lorem", "ipsum"), ("dolor", "sit")])),
    ] {
        let tree = decrypt_file(testdata().join("sops").join(file), &ring).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(contents(&tree), expected, "{file}");
        assert_eq!(tree.kind(&expected[0].0).unwrap(), ValueKind::Str);
        assert!(tree.was_encrypted(&expected[0].0).unwrap());
    }
}

#[test]
fn comments_are_decrypted_and_kept_apart_from_values() {
    let tree = decrypt_file(testdata().join("sops/comments.enc.yaml"), &pgp_ring()).unwrap();
    let comments: Vec<&str> = tree.comments().iter().map(|c| c.expose()).collect();
    assert_eq!(comments.len(), 2, "{comments:?}");
    for c in &comments {
        assert!(!c.starts_with("ENC["), "comment left encrypted: {c}");
        assert!(!c.is_empty());
    }
    // Comments are not values.
    assert_eq!(tree.paths(), vec!["lorem", "dolor"]);
}

#[test]
fn no_mac_yaml_is_refused_as_missing_mac() {
    let err = decrypt_file(testdata().join("sops/no_mac.yaml"), &pgp_ring()).unwrap_err();
    assert!(matches!(err, SopsError::MacMissing), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("no MAC") && msg.contains("tampered"), "{msg}");
}

#[test]
fn sops_nix_yaml_decrypts_with_age_key_file() {
    let tree = decrypt_file(testdata().join("sops-nix/secrets.yaml"), &age_ring()).unwrap();
    assert_eq!(
        contents(&tree),
        pairs(&[
            ("test_key", "test_value"),
            ("a_list.0", "e1"),
            ("a_list.1", "e3"),
            ("nested.test.file", "another value"),
        ])
    );
    assert_eq!(tree.get("nested.test.file").unwrap().expose(), "another value");
    assert!(matches!(tree.get("nested.test"), Err(LookupError::NotALeaf { .. })));
    assert!(matches!(tree.get("missing"), Err(LookupError::NotFound { .. })));
    assert_eq!(tree.get_path(&["nested", "test", "file"]).unwrap().expose(), "another value");
}

#[test]
fn sops_age_key_string_form_works_too() {
    let text = std::fs::read_to_string(testdata().join("sops-nix/age-keys.txt")).unwrap();
    let mut ring = KeyRing::new();
    ring.add_age_identities_str(&text, "SOPS_AGE_KEY").unwrap();
    let tree = decrypt_file(testdata().join("sops-nix/secrets.yaml"), &ring).unwrap();
    assert_eq!(tree.get("test_key").unwrap().expose(), "test_value");
}

#[test]
fn sops_nix_json_names_its_recipients_when_no_key_fits() {
    // secrets.json is encrypted only to PGP key 7FB8…, whose secret key is not in
    // shared/testdata: the error must list the file's recipient and the keys tried.
    let err = decrypt_file(testdata().join("sops-nix/secrets.json"), &age_ring()).unwrap_err();
    let SopsError::NoKeyCouldUnwrap { recipients, tried, .. } = &err else { panic!("{err:?}") };
    assert_eq!(recipients, &["pgp 7FB89715AADA920D65D25E63F9BA9DEBD03F57C0"]);
    assert_eq!(tried.len(), 1);
    assert!(tried[0].contains("age1yt3tfqlfrwdwx0z0ynwplcr6qxcxfaqycuprpmy89nr83ltx74tqdpszlw"));
    let msg = err.to_string();
    assert!(msg.contains("7FB89715") && msg.contains("age1yt3tfq"), "{msg}");
}

#[test]
fn wrong_key_is_refused_listing_recipients_and_keys_tried() {
    // The age key cannot open a PGP-only file; the PGP key cannot open the age file's
    // stanzas meant for other PGP keys either.
    let err = decrypt_file(testdata().join("sops/format.enc.yaml"), &age_ring()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SopsError::NoKeyCouldUnwrap { .. }), "{err:?}");
    assert!(msg.contains("pgp FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"), "{msg}");
    assert!(msg.contains("age age1yt3tfq"), "{msg}");

    let mut other = KeyRing::new();
    other
        .add_age_identities_str(&age::x25519::Identity::generate().to_string().expose_secret_str(), "generated")
        .unwrap();
    let err = decrypt_file(testdata().join("sops-nix/secrets.yaml"), &other).unwrap_err();
    let SopsError::NoKeyCouldUnwrap { recipients, .. } = &err else { panic!("{err:?}") };
    assert!(recipients.iter().any(|r| r.contains("age1a8pk4akrdamj7nvqy3zywgtny8dxz7t5xzu7u8v9mhrayp9freqsqatyrs")));
    assert!(recipients.iter().any(|r| r.contains("pgp 2504791468B153B8A3963CC97BA53D1919C5DFD4")));

    let empty = decrypt_file(testdata().join("sops-nix/secrets.yaml"), &KeyRing::new()).unwrap_err();
    assert!(empty.to_string().contains("(none configured)"), "{empty}");
}

trait ExposeStr {
    fn expose_secret_str(&self) -> String;
}
impl ExposeStr for age::secrecy::SecretString {
    fn expose_secret_str(&self) -> String {
        use age::secrecy::ExposeSecret;
        self.expose_secret().to_string()
    }
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(testdata().join(rel)).unwrap()
}

/// Replaces one character inside the base64 `data:` of the first ENC value after `marker`.
fn flip_ciphertext(text: &str, marker: &str) -> String {
    let at = text.find(marker).expect("marker") + marker.len();
    let data = text[at..].find("data:").expect("data:") + at + "data:".len();
    let mut bytes = text.as_bytes().to_vec();
    bytes[data] = if bytes[data] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[test]
fn flipped_ciphertext_byte_names_the_value_path() {
    let text = flip_ciphertext(&read("sops-nix/secrets.yaml"), "file: ");
    let err = decrypt_bytes(text.as_bytes(), SopsFormat::Yaml, &age_ring()).unwrap_err();
    match &err {
        SopsError::TamperedValue { path } => assert_eq!(path, "nested.test.file"),
        other => panic!("{other:?}"),
    }

    let text = flip_ciphertext(&read("sops/format.enc.json"), "\"foo\": ");
    let err = decrypt_bytes(text.as_bytes(), SopsFormat::Json, &pgp_ring()).unwrap_err();
    assert!(matches!(&err, SopsError::TamperedValue { path } if path == "foo"), "{err:?}");
}

#[test]
fn value_moved_to_another_key_is_refused() {
    // Swapping two values keeps every ciphertext intact but breaks their additional data.
    let text = read("sops-nix/secrets.yaml");
    let line =
        |k: &str| text.lines().find(|l| l.trim_start().starts_with(k)).unwrap().split_once(": ").unwrap().1.to_string();
    let (a, b) = (line("test_key:"), line("file:"));
    let swapped = text.replace(&a, "@A@").replace(&b, &a).replace("@A@", &b);
    let err = decrypt_bytes(swapped.as_bytes(), SopsFormat::Yaml, &age_ring()).unwrap_err();
    assert!(matches!(&err, SopsError::TamperedValue { path } if path == "test_key"), "{err:?}");
}

#[test]
fn changed_mac_is_a_mismatch() {
    for (rel, format, ring) in [
        ("sops-nix/secrets.yaml", SopsFormat::Yaml, age_ring()),
        ("sops/format.enc.env", SopsFormat::Dotenv, pgp_ring()),
    ] {
        let text = read(rel);
        let tampered = flip_ciphertext(&text, "mac");
        assert_ne!(tampered, text);
        let err = decrypt_bytes(tampered.as_bytes(), format, &ring).unwrap_err();
        assert!(matches!(err, SopsError::MacMismatch { .. }), "{rel}: {err:?}");
        assert!(err.to_string().contains("MAC mismatch"), "{err}");
    }
}

#[test]
fn changed_lastmodified_is_a_mismatch() {
    let text = read("sops-nix/secrets.yaml").replace("2021-09-30T19:49:41Z", "2021-09-30T19:49:42Z");
    let err = decrypt_bytes(text.as_bytes(), SopsFormat::Yaml, &age_ring()).unwrap_err();
    assert!(matches!(err, SopsError::MacMismatch { .. }), "{err:?}");
}

#[test]
fn removed_or_reordered_values_are_a_mac_mismatch() {
    // Dropping a list element: every remaining value still authenticates, the MAC does not.
    let text = read("sops-nix/secrets.yaml");
    let second = text.lines().filter(|l| l.trim_start().starts_with("- ENC[")).nth(1).unwrap().to_string();
    let dropped = text.replace(&format!("{second}\n"), "");
    let err = decrypt_bytes(dropped.as_bytes(), SopsFormat::Yaml, &age_ring()).unwrap_err();
    assert!(matches!(err, SopsError::MacMismatch { .. }), "{err:?}");

    // Swapping list elements: same additional data (`a_list:`), different MAC order.
    let first = text.lines().find(|l| l.trim_start().starts_with("- ENC[")).unwrap().to_string();
    let swapped = text.replace(&first, "@1@").replace(&second, &first).replace("@1@", &second);
    let err = decrypt_bytes(swapped.as_bytes(), SopsFormat::Yaml, &age_ring()).unwrap_err();
    assert!(matches!(err, SopsError::MacMismatch { .. }), "{err:?}");
}

#[test]
fn removing_the_mac_line_is_missing_not_mismatch() {
    let text: String = read("sops-nix/secrets.yaml")
        .lines()
        .filter(|l| !l.trim_start().starts_with("mac:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let err = decrypt_bytes(text.as_bytes(), SopsFormat::Yaml, &age_ring()).unwrap_err();
    assert!(matches!(err, SopsError::MacMissing), "{err:?}");
}

#[test]
fn malformed_files_say_where() {
    let ring = age_ring();
    let check = |input: &str, format: SopsFormat, needle: &str| {
        let err = decrypt_bytes(input.as_bytes(), format, &ring).unwrap_err();
        assert!(matches!(err, SopsError::Malformed { .. }), "{input}: {err:?}");
        assert!(err.to_string().contains(needle), "{input}: {err}");
    };
    check("a: [1\n", SopsFormat::Yaml, "line");
    check("a: 1\n", SopsFormat::Yaml, "not a sops-encrypted file");
    check("{\"a\": 1,}", SopsFormat::Json, "line 1");
    check("A=1\n", SopsFormat::Dotenv, "sops_");
    check("a: x\nsops:\n  lastmodified: yesterday\n  mac: x\n", SopsFormat::Yaml, "lastmodified");
    let err = decrypt_bytes(b"\xff\xfe", SopsFormat::Yaml, &ring).unwrap_err();
    assert!(err.to_string().contains("UTF-8"), "{err}");
    // A value that is not in ENC[…] form where it must be encrypted.
    let text = read("sops-nix/secrets.yaml").replacen(
        &read("sops-nix/secrets.yaml").lines().next().unwrap().replace("test_key: ", ""),
        "plaintext",
        1,
    );
    let err = decrypt_bytes(text.as_bytes(), SopsFormat::Yaml, &ring).unwrap_err();
    assert!(matches!(&err, SopsError::BadValue { path, .. } if path == "test_key"), "{err:?}");
}

#[test]
fn bad_keys_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k");
    std::fs::write(&p, "# only a comment\n").unwrap();
    assert!(matches!(KeyRing::new().add_age_identities_file(&p), Err(KeyError::NoAgeIdentity { .. })));
    std::fs::write(&p, "AGE-SECRET-KEY-1NOTAKEY\n").unwrap();
    let err = KeyRing::new().add_age_identities_file(&p).unwrap_err();
    assert!(matches!(err, KeyError::BadAgeIdentity { line: 1, .. }), "{err:?}");
    assert!(KeyRing::new().add_pgp_secret_key_file(&p).is_err());
    assert!(matches!(KeyRing::new().add_ssh_ed25519_key_file(&p), Err(KeyError::BadSshKey { .. })));
    assert!(matches!(KeyRing::new().add_age_identities_file(dir.path().join("absent")), Err(KeyError::Io { .. })));
    // Key errors never echo key material.
    std::fs::write(&p, "AGE-SECRET-KEY-1QQQQSECRETMATERIAL\n").unwrap();
    let msg = KeyRing::new().add_age_identities_file(&p).unwrap_err().to_string();
    assert!(!msg.contains("SECRETMATERIAL"), "{msg}");
}

#[test]
fn secret_types_never_print_plaintext() {
    let tree = decrypt_file(testdata().join("sops-nix/secrets.yaml"), &age_ring()).unwrap();
    let dump = format!("{tree:?} {tree:#?}");
    // (Quoted: a bare "e1" also occurs inside age recipients.)
    for plain in ["test_value", "another value", "\"e1\"", "\"e3\""] {
        assert!(!dump.contains(plain), "{plain} leaked in {dump}");
    }
    let s = tree.get("test_key").unwrap();
    assert_eq!(format!("{s}"), "[redacted]");
    assert_eq!(format!("{s:?}"), "[redacted]");
    let comments = decrypt_file(testdata().join("sops/comments.enc.yaml"), &pgp_ring()).unwrap();
    for c in comments.comments() {
        assert_eq!(format!("{c} {c:?}"), "[redacted] [redacted]");
    }
    let bytes = loom_secrets::SecretBytes::new(b"test_value".to_vec());
    assert_eq!(format!("{bytes} {bytes:?}"), "[redacted] [redacted]");
    let ring = format!("{:?}", age_ring());
    assert!(!ring.contains("AGE-SECRET-KEY"), "{ring}");
    assert!(ring.contains("age1yt3tfq"), "{ring}");
}

#[test]
fn no_single_byte_change_alters_a_value_silently() {
    // (RSA unwrapping is slow in debug builds: one replacement per byte for the PGP file.)
    for (rel, format, ring, replacements) in [
        ("sops-nix/secrets.yaml", SopsFormat::Yaml, age_ring(), 2),
        ("sops/format.enc.json", SopsFormat::Json, pgp_ring(), 1),
    ] {
        let original = std::fs::read(testdata().join(rel)).unwrap();
        let expected = contents(&decrypt_bytes(&original, format, &ring).unwrap());
        let (mut accepted, mut tried) = (0, 0);
        for i in 0..original.len() {
            for replacement in [original[i] ^ 0x01, b'A'].into_iter().take(replacements) {
                if replacement == original[i] {
                    continue;
                }
                tried += 1;
                let mut mutated = original.clone();
                mutated[i] = replacement;
                if let Ok(tree) = decrypt_bytes(&mutated, format, &ring) {
                    accepted += 1;
                    assert_eq!(contents(&tree), expected, "{rel}: byte {i} changed a value");
                }
            }
        }
        // Sanity: the harness did refuse changes (those in unused PGP stanzas pass).
        assert!(accepted < tried, "{rel}: {accepted} of {tried} accepted");
    }
}

#[test]
fn tree_reports_which_key_opened_it() {
    let tree = decrypt_file(testdata().join("sops-nix/secrets.yaml"), &age_ring()).unwrap();
    assert!(
        tree.unwrapped_by().starts_with("age age1yt3tfqlfrwdwx0z0ynwplcr6qxcxfaqycuprpmy89nr83ltx74tqdpszlw (from "),
        "{}",
        tree.unwrapped_by()
    );
    let tree = decrypt_file(testdata().join("sops/multiple_keys.yaml"), &pgp_ring()).unwrap();
    assert!(tree.unwrapped_by().starts_with("pgp FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"), "{}", tree.unwrapped_by());
}

#[test]
fn format_comes_from_extension_with_a_hint_when_it_guesses_binary() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("secrets.sops");
    std::fs::copy(testdata().join("sops-nix/secrets.yaml"), &p).unwrap();
    let err = decrypt_file(&p, &age_ring()).unwrap_err();
    assert!(err.to_string().contains("set the format explicitly"), "{err}");
    let tree = loom_secrets::decrypt_file_as(&p, SopsFormat::Yaml, &age_ring()).unwrap();
    assert_eq!(tree.get("test_key").unwrap().expose(), "test_value");
}
