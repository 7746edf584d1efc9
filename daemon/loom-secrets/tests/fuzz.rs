//! Property tests of the decryption front-end on real sops files (shared/testdata): any
//! bytes in any format, and the real files with bytes flipped, inserted, deleted or cut
//! off, give an `Err` or, when the change did not touch what is authenticated, exactly the
//! original values, never a panic and never a changed value.

use std::path::PathBuf;
use std::sync::OnceLock;

use loom_secrets::{KeyRing, SecretTree, SopsFormat, decrypt_bytes};
use proptest::prelude::*;
use proptest::sample::Index;
use support::cases;

/// The helpers every crate's property tests share, defined once in loom-core's.
#[path = "../../loom-core/tests/fuzz/support.rs"]
mod support;

fn testdata() -> PathBuf {
    let dir = std::env::var_os("LOOM_TESTDATA")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"), PathBuf::from);
    assert!(dir.join("sops/README.md").is_file(), "sops test vectors not found at {}", dir.display());
    dir
}

/// Both real keys, so that a mangled file gets past the data key to the values and the MAC.
fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(|| {
        let mut ring = KeyRing::new();
        ring.add_pgp_secret_key_file(testdata().join("sops/sops_functional_tests_key.asc")).unwrap();
        ring.add_age_identities_file(testdata().join("sops-nix/age-keys.txt")).unwrap();
        ring
    })
}

const FORMATS: [SopsFormat; 5] =
    [SopsFormat::Yaml, SopsFormat::Json, SopsFormat::Dotenv, SopsFormat::Ini, SopsFormat::Binary];

type Values = Vec<(String, Vec<u8>)>;

/// A real file: its name, bytes, format and what it decrypts to.
type RealFile = (String, Vec<u8>, SopsFormat, Values);

fn real_files() -> &'static [RealFile] {
    static FILES: OnceLock<Vec<RealFile>> = OnceLock::new();
    FILES.get_or_init(|| {
        [
            ("sops/format.enc.yaml", SopsFormat::Yaml),
            ("sops/format.enc.json", SopsFormat::Json),
            ("sops/format.enc.env", SopsFormat::Dotenv),
            ("sops/comments.enc.yaml", SopsFormat::Yaml),
            ("sops/multiple_keys.yaml", SopsFormat::Yaml),
            ("sops-nix/secrets.yaml", SopsFormat::Yaml),
        ]
        .into_iter()
        .map(|(name, format)| {
            let bytes = std::fs::read(testdata().join(name)).unwrap();
            let tree = decrypt_bytes(&bytes, format, ring()).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name.to_string(), bytes, format, values(&tree))
        })
        .collect()
    })
}

fn values(tree: &SecretTree) -> Values {
    tree.paths().into_iter().map(|p| (p.clone(), tree.expose_bytes(&p).unwrap().to_vec())).collect()
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index, usize),
    Truncate(Index),
    /// A byte inside one of the file's `ENC[…]` values (a value, a comment or the MAC).
    InValue(Index, Index, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes that matter to the formats more often than chance would pick them.
    let byte = prop_oneof![any::<u8>(), prop::sample::select(b"\n\r\t :=#;[]{},\"'`|>-&*!%@\\0aZ".to_vec()),];
    prop_oneof![
        1 => (any::<Index>(), 1..=255u8).prop_map(|(i, m)| Edit::Flip(i, m)),
        1 => (any::<Index>(), byte.clone()).prop_map(|(i, b)| Edit::Set(i, b)),
        1 => (any::<Index>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => (any::<Index>(), 1..64usize).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        3 => (any::<Index>(), any::<Index>(), prop::sample::select(b"A/+=,:]x0\n".to_vec()))
            .prop_map(|(v, i, b)| Edit::InValue(v, i, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, e: &Edit) {
    if bytes.is_empty() {
        return;
    }
    match e {
        Edit::Flip(i, m) => {
            let at = i.index(bytes.len());
            bytes[at] ^= m;
        }
        Edit::Set(i, b) => {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        Edit::Insert(i, b) => {
            let at = i.index(bytes.len() + 1);
            bytes.insert(at, *b);
        }
        Edit::Delete(i, n) => {
            let at = i.index(bytes.len());
            bytes.drain(at..(at + n).min(bytes.len()));
        }
        Edit::InValue(v, i, b) => {
            let starts: Vec<usize> =
                bytes.windows(4).enumerate().filter(|(_, w)| w == b"ENC[").map(|(n, _)| n).collect();
            if starts.is_empty() {
                return;
            }
            let start = starts[v.index(starts.len())];
            let end = bytes[start..].iter().position(|&c| c == b']').map_or(bytes.len(), |n| start + n + 1);
            let at = start + i.index(end - start);
            bytes[at] = *b;
        }
        Edit::Truncate(i) => {
            let at = i.index(bytes.len());
            bytes.truncate(at);
        }
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn any_bytes_in_any_format_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..2048), f in 0..5usize) {
        let e = decrypt_bytes(&bytes, FORMATS[f], ring()).err();
        prop_assert!(e.is_some_and(|e| !e.to_string().is_empty()));
    }

    #[test]
    fn any_text_in_any_format_is_refused(text in any::<String>(), f in 0..5usize) {
        let e = decrypt_bytes(text.as_bytes(), FORMATS[f], ring()).err();
        prop_assert!(e.is_some_and(|e| !e.to_string().is_empty()));
    }

    /// Edited real files are refused, or (the edit was in what nothing authenticates, like
    /// a space or a recipient's `created_at`) decrypt to exactly the original values.
    #[test]
    fn edited_real_files_never_yield_changed_values(
        file in any::<Index>(),
        edits in prop::collection::vec(edit(), 1..4),
        as_other_format in prop::option::weighted(0.1, 0..5usize),
    ) {
        let (name, original, format, want) = &real_files()[file.index(real_files().len())];
        let mut bytes = original.clone();
        for e in &edits {
            apply(&mut bytes, e);
        }
        let format = as_other_format.map_or(*format, |f| FORMATS[f]);
        match decrypt_bytes(&bytes, format, ring()) {
            Ok(tree) => prop_assert_eq!(&values(&tree), want, "{} after {:?}", name, edits),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

// Inputs that crashed the parsers, kept as plain regressions.

#[test]
fn dotenv_metadata_key_nested_200000_deep_is_refused() {
    let text = format!("foo=bar\nsops_{}x=1\n", "a__map_".repeat(200_000));
    let e = decrypt_bytes(text.as_bytes(), SopsFormat::Dotenv, ring()).unwrap_err().to_string();
    assert!(e.contains("nested"), "{e}");
}

#[test]
fn ini_metadata_key_nested_200000_levels_deep_is_refused() {
    let text = format!("[s]\nfoo = bar\n[sops]\n{}x = 1\n", "a__list_0__map_".repeat(100_000));
    let e = decrypt_bytes(text.as_bytes(), SopsFormat::Ini, ring()).unwrap_err().to_string();
    assert!(e.contains("nested"), "{e}");
}

#[test]
fn yaml_aliases_nesting_39_anchors_of_126_levels_are_refused() {
    // Each anchor wraps the previous one's alias in 126 more levels: no single level is
    // deep, but the aliases expand to a tree thousands of levels deep.
    let mut text = String::new();
    for k in 0..39 {
        let inner = if k == 0 { "x".to_string() } else { format!("*a{}", k - 1) };
        text.push_str(&format!("k{k}: &a{k} {}{inner}{}\n", "[".repeat(126), "]".repeat(126)));
    }
    let e = decrypt_bytes(text.as_bytes(), SopsFormat::Yaml, ring()).unwrap_err().to_string();
    assert!(e.contains("nesting deeper than 128"), "{e}");
}

#[test]
fn text_nested_100000_deep_is_refused_in_every_format() {
    for (format, text) in [
        (SopsFormat::Yaml, format!("a: {}", "[".repeat(100_000))),
        (SopsFormat::Yaml, format!("a:\n  {}x\n", "- ".repeat(100_000))),
        (SopsFormat::Json, format!("{{\"a\": {}", "[".repeat(100_000))),
        (SopsFormat::Binary, format!("{{\"data\": {}", "{\"a\":".repeat(100_000))),
    ] {
        let e = decrypt_bytes(text.as_bytes(), format, ring()).unwrap_err().to_string();
        assert!(!e.is_empty());
    }
}
