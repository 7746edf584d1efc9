//! Property tests on synthetic sops files in every store (YAML, JSON, dotenv, INI, binary),
//! encrypted here with a known data key so that mangled copies reach the value cipher, the
//! metadata and the MAC of each format: refused, or exactly the original values.

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use sha2::{Digest, Sha512};

use crate::cipher::tests::encrypt;
use crate::metadata::rfc3339_normalize;
use crate::{KeyRing, SopsFormat, decrypt_bytes};

const KEY: [u8; 32] = [7; 32];
const LASTMOD: &str = "2025-05-05T05:05:05Z";
const FORMATS: [SopsFormat; 5] =
    [SopsFormat::Yaml, SopsFormat::Json, SopsFormat::Dotenv, SopsFormat::Ini, SopsFormat::Binary];

fn cases(n: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// One age identity for every case: its ring, recipient and the armored stanza of KEY.
fn age() -> &'static (KeyRing, String, String) {
    static AGE: OnceLock<(KeyRing, String, String)> = OnceLock::new();
    AGE.get_or_init(|| crate::decrypt::tests::ring_and_stanza(&KEY))
}

/// The text of a sops file holding `values` (keys in order) in `format`, as sops writes it,
/// and the dotted paths a reader finds them at.
fn sops_file(format: SopsFormat, values: &[(String, String)]) -> (String, Vec<(String, String)>) {
    let (_, recipient, armored) = age();
    // INI keeps values in sections, the binary store has its one `data` value.
    let values: Vec<(String, String)> = match format {
        SopsFormat::Binary => vec![("data".into(), values.iter().map(|(_, v)| v.as_str()).collect())],
        _ => values.to_vec(),
    };
    let ad = |k: &str| if format == SopsFormat::Ini { format!("s:{k}:") } else { format!("{k}:") };
    let enc: Vec<(String, String)> =
        values.iter().map(|(k, v)| (k.clone(), encrypt(v.as_bytes(), "str", &KEY, &ad(k), [5; 32]))).collect();
    let plain: String = values.iter().map(|(_, v)| v.as_str()).collect();
    let mac_hex: String = Sha512::digest(plain.as_bytes()).iter().map(|b| format!("{b:02X}")).collect();
    let mac = encrypt(mac_hex.as_bytes(), "str", &KEY, LASTMOD, [3; 32]);
    let escaped = armored.replace('\n', "\\n");
    let text = match format {
        SopsFormat::Json | SopsFormat::Binary => {
            let mut m = serde_json::Map::new();
            for (k, v) in &enc {
                m.insert(k.clone(), v.clone().into());
            }
            m.insert(
                "sops".into(),
                serde_json::json!({"age": [{"recipient": recipient, "enc": armored}], "lastmodified": LASTMOD, "mac": mac}),
            );
            serde_json::to_string_pretty(&serde_json::Value::Object(m)).unwrap()
        }
        SopsFormat::Yaml => {
            let body: String = enc.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
            let indented: String = armored.lines().map(|l| format!("        {l}\n")).collect();
            format!(
                "{body}sops:\n  age:\n    - recipient: {recipient}\n      enc: |\n{indented}  lastmodified: \"{LASTMOD}\"\n  mac: {mac}\n"
            )
        }
        SopsFormat::Dotenv => {
            let body: String = enc.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            format!(
                "{body}sops_age__list_0__map_recipient={recipient}\nsops_age__list_0__map_enc={escaped}\nsops_lastmodified={LASTMOD}\nsops_mac={mac}\n"
            )
        }
        SopsFormat::Ini => {
            let body: String = enc.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            format!(
                "[s]\n{body}\n[sops]\nage__list_0__map_recipient = {recipient}\nage__list_0__map_enc = {escaped}\nlastmodified = {LASTMOD}\nmac = {mac}\n"
            )
        }
    };
    let paths = values.into_iter().map(|(k, v)| if format == SopsFormat::Ini { (format!("s.{k}"), v) } else { (k, v) });
    (text, paths.collect())
}

fn values_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map(
        "[a-z][a-z0-9]{0,6}".prop_filter("sops is the metadata", |k| k != "sops"),
        any::<String>(),
        1..5,
    )
    .prop_map(|m| m.into_iter().collect())
}

fn decrypted(text: &[u8], format: SopsFormat) -> Result<Vec<(String, String)>, String> {
    let tree = decrypt_bytes(text, format, &age().0).map_err(|e| e.to_string())?;
    Ok(tree.paths().into_iter().map(|p| (p.clone(), tree.get(&p).unwrap().expose().to_string())).collect())
}

#[derive(Debug, Clone)]
enum Edit {
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index, usize),
    Truncate(Index),
    /// A byte inside one of the `ENC[…]` values or the MAC.
    InValue(Index, Index, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![any::<u8>(), prop::sample::select(b"\n\r\t :=#;[]{},\"'|-_\\\0aZ".to_vec())];
    prop_oneof![
        (any::<Index>(), byte.clone()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<Index>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), 1..32usize).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), any::<Index>(), prop::sample::select(b"A/+=,:]x0".to_vec()))
            .prop_map(|(v, i, b)| Edit::InValue(v, i, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, e: &Edit) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    match e {
        Edit::Set(i, b) => bytes[i.index(n)] = *b,
        Edit::Insert(i, b) => bytes.insert(i.index(n + 1), *b),
        Edit::Delete(i, len) => {
            let at = i.index(n);
            bytes.drain(at..(at + len).min(n));
        }
        Edit::Truncate(i) => bytes.truncate(i.index(n)),
        Edit::InValue(v, i, b) => {
            let starts: Vec<usize> =
                bytes.windows(4).enumerate().filter(|(_, w)| w == b"ENC[").map(|(p, _)| p).collect();
            if let Some(&start) = starts.get(v.index(starts.len().max(1))) {
                let end = bytes[start..].iter().position(|&c| c == b']').map_or(n, |p| start + p + 1);
                bytes[start + i.index(end - start)] = *b;
            }
        }
    }
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn synthetic_files_decrypt_in_every_format(values in values_strategy(), f in 0..5usize) {
        let (text, want) = sops_file(FORMATS[f], &values);
        prop_assert_eq!(decrypted(text.as_bytes(), FORMATS[f]), Ok(want), "{}", text);
    }

    #[test]
    fn edited_synthetic_files_never_yield_changed_values(
        values in values_strategy(),
        f in 0..5usize,
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let (text, want) = sops_file(FORMATS[f], &values);
        let mut bytes = text.into_bytes();
        for e in &edits {
            apply(&mut bytes, e);
        }
        if let Ok(got) = decrypted(&bytes, FORMATS[f]) {
            prop_assert_eq!(got, want, "{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn times_normalize_or_refuse(
        s in prop_oneof![
            any::<String>(),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?(Z|[-+][0-9]{2}:[0-9]{2}|.{0,4})",
        ],
        keep in any::<bool>(),
    ) {
        if let Some(t) = rfc3339_normalize(&s, keep) {
            prop_assert_eq!(rfc3339_normalize(&t, keep), Some(t.clone()));
        }
    }
}
