//! sops' value cipher: `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`, AES-256-GCM with a
//! 32-byte IV and the key path (`a:b:`) as additional data, plus the typed conversions that
//! decide the bytes fed to the MAC (Go's `strconv` formatting, `True`/`False`).

use aes_gcm::aead::consts::{U16, U32};
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::Aes256;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::metadata::{go_parse_bool, rfc3339_normalize};

type Aes256Gcm32 = aes_gcm::AesGcm<Aes256, U32>;

/// The 32-byte data key every value is encrypted with.
pub(crate) type DataKey = Zeroizing<[u8; 32]>;

/// The type tag of an encrypted value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// `str`
    Str,
    /// `int`
    Int,
    /// `float`
    Float,
    /// `bool`
    Bool,
    /// `bytes`
    Bytes,
    /// `time` (RFC 3339)
    Time,
    /// `comment`
    Comment,
}

impl ValueKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "str" => Self::Str,
            "int" => Self::Int,
            "float" => Self::Float,
            "bool" => Self::Bool,
            "bytes" => Self::Bytes,
            "time" => Self::Time,
            "comment" => Self::Comment,
            _ => return None,
        })
    }
}

/// Why one value could not be decrypted.
#[derive(Debug)]
pub(crate) enum CipherError {
    /// Not in the `ENC[AES256_GCM,…]` form, or a field is not valid base64.
    Format(String),
    /// GCM authentication failed: tampered data, IV or tag, or a value moved to another path.
    Authentication,
    /// Authenticated, but the plaintext does not parse as its declared type.
    BadTyped(String),
}

/// A decrypted value: its plaintext as the caller sees it and the bytes sops hashes.
pub(crate) struct Plain {
    pub kind: ValueKind,
    /// What a reader gets: the string, the canonical number, `true`/`false`, or raw bytes.
    pub value: Zeroizing<Vec<u8>>,
    /// What goes into the MAC (`sops.ToBytes`).
    pub mac_bytes: Zeroizing<Vec<u8>>,
}

struct Parsed {
    data: Vec<u8>,
    iv: Vec<u8>,
    tag: Vec<u8>,
    kind: ValueKind,
}

fn parse(value: &str) -> Result<Parsed, CipherError> {
    let bad = || CipherError::Format("not a sops ENC[AES256_GCM,…] value".into());
    let inner = value.strip_prefix("ENC[AES256_GCM,").and_then(|r| r.strip_suffix(']')).ok_or_else(bad)?;
    let mut fields = inner.split(',');
    let mut take = |name: &str| -> Result<&str, CipherError> {
        fields
            .next()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|f| f.strip_prefix(':'))
            .ok_or_else(|| CipherError::Format(format!("missing `{name}:` field")))
    };
    let b64 = |name: &str, s: &str| {
        STANDARD.decode(s).map_err(|e| CipherError::Format(format!("`{name}` is not base64: {e}")))
    };
    let data = b64("data", take("data")?)?;
    let iv = b64("iv", take("iv")?)?;
    let tag = b64("tag", take("tag")?)?;
    let type_name = take("type")?;
    if fields.next().is_some() {
        return Err(bad());
    }
    let kind =
        ValueKind::parse(type_name).ok_or_else(|| CipherError::Format(format!("unknown value type {type_name:?}")))?;
    if iv.len() != 32 {
        return Err(CipherError::Format(format!("IV is {} bytes, sops writes 32", iv.len())));
    }
    if tag.len() != 16 {
        return Err(CipherError::Format(format!("GCM tag is {} bytes, expected 16", tag.len())));
    }
    Ok(Parsed { data, iv, tag, kind })
}

/// Decrypts one value. An empty string stays empty: sops does not encrypt empty values.
pub(crate) fn decrypt(value: &str, key: &DataKey, additional_data: &str) -> Result<Plain, CipherError> {
    if value.is_empty() {
        return Ok(Plain {
            kind: ValueKind::Str,
            value: Zeroizing::new(Vec::new()),
            mac_bytes: Zeroizing::new(Vec::new()),
        });
    }
    let p = parse(value)?;
    let cipher = Aes256Gcm32::new(GenericArray::from_slice(&key[..]));
    let mut buf = Zeroizing::new(p.data);
    cipher
        .decrypt_in_place_detached(
            GenericArray::<u8, U32>::from_slice(&p.iv),
            additional_data.as_bytes(),
            &mut buf,
            GenericArray::<u8, U16>::from_slice(&p.tag),
        )
        .map_err(|_| CipherError::Authentication)?;
    typed(p.kind, buf)
}

fn typed(kind: ValueKind, raw: Zeroizing<Vec<u8>>) -> Result<Plain, CipherError> {
    let text =
        || std::str::from_utf8(&raw).map_err(|_| CipherError::BadTyped(format!("a {kind:?} value is not UTF-8")));
    let (value, mac): (Vec<u8>, Vec<u8>) = match kind {
        ValueKind::Str | ValueKind::Bytes | ValueKind::Comment => {
            return Ok(Plain { kind, mac_bytes: raw.clone(), value: raw });
        }
        ValueKind::Int => {
            let i: i64 = text()?.parse().map_err(|_| CipherError::BadTyped("an int value is not an integer".into()))?;
            let s = i.to_string().into_bytes();
            (s.clone(), s)
        }
        ValueKind::Float => {
            let f: f64 = text()?.parse().map_err(|_| CipherError::BadTyped("a float value is not a number".into()))?;
            let s = go_format_float(f).into_bytes();
            (s.clone(), s)
        }
        ValueKind::Bool => {
            let b =
                go_parse_bool(text()?).ok_or_else(|| CipherError::BadTyped("a bool value is not a boolean".into()))?;
            (b.to_string().into_bytes(), go_bool(b).as_bytes().to_vec())
        }
        ValueKind::Time => {
            let t = rfc3339_normalize(text()?, true)
                .ok_or_else(|| CipherError::BadTyped("a time value is not RFC 3339".into()))?
                .into_bytes();
            (t.clone(), t)
        }
    };
    Ok(Plain { kind, value: Zeroizing::new(value), mac_bytes: Zeroizing::new(mac) })
}

/// `sops.ToBytes` for a bool.
pub(crate) fn go_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: the shortest decimal that round-trips, never
/// in exponent form. Rust's `Display` for `f64` has the same contract for finite values.
pub(crate) fn go_format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aes_gcm::aead::Aead;

    /// Test-only encryptor in sops' format, to build values whose plaintext we choose.
    pub(crate) fn encrypt(plain: &[u8], kind: &str, key: &[u8; 32], ad: &str, iv: [u8; 32]) -> String {
        let cipher = Aes256Gcm32::new(GenericArray::from_slice(key));
        let out = cipher
            .encrypt(GenericArray::from_slice(&iv), aes_gcm::aead::Payload { msg: plain, aad: ad.as_bytes() })
            .unwrap();
        let (data, tag) = out.split_at(out.len() - 16);
        format!(
            "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
            STANDARD.encode(data),
            STANDARD.encode(iv),
            STANDARD.encode(tag)
        )
    }

    #[test]
    fn typed_values_feed_the_mac_like_sops() {
        let key = Zeroizing::new([7u8; 32]);
        let check = |plain: &str, kind: &str, value: &str, mac: &str| {
            let enc = encrypt(plain.as_bytes(), kind, &key, "a:", [1; 32]);
            let p = decrypt(&enc, &key, "a:").unwrap();
            assert_eq!(std::str::from_utf8(&p.value).unwrap(), value, "{plain} {kind}");
            assert_eq!(std::str::from_utf8(&p.mac_bytes).unwrap(), mac, "{plain} {kind}");
        };
        check("hello", "str", "hello", "hello");
        check("007", "int", "7", "7");
        check("1.50", "float", "1.5", "1.5");
        check("1e21", "float", "1000000000000000000000", "1000000000000000000000");
        check("true", "bool", "true", "True");
        check("F", "bool", "false", "False");
        check("2020-01-02T03:04:05.500+00:00", "time", "2020-01-02T03:04:05.5Z", "2020-01-02T03:04:05.5Z");
    }

    #[test]
    fn refuses_wrong_path_tamper_and_garbage() {
        let key = Zeroizing::new([7u8; 32]);
        let enc = encrypt(b"v", "str", &key, "a:", [1; 32]);
        assert!(matches!(decrypt(&enc, &key, "b:"), Err(CipherError::Authentication)));
        let other = Zeroizing::new([8u8; 32]);
        assert!(matches!(decrypt(&enc, &other, "a:"), Err(CipherError::Authentication)));
        for bad in [
            "plain",
            "ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]",
            "ENC[AES256_GCM,data:!!,iv:AA==,tag:AA==,type:str]",
            "ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:weird]",
        ] {
            assert!(matches!(decrypt(bad, &key, "a:"), Err(CipherError::Format(_))), "{bad}");
        }
        let not_int = encrypt(b"x", "int", &key, "a:", [1; 32]);
        assert!(matches!(decrypt(&not_int, &key, "a:"), Err(CipherError::BadTyped(_))));
        assert!(decrypt("", &key, "a:").unwrap().value.is_empty());
    }

    #[test]
    fn floats_format_like_go() {
        assert_eq!(go_format_float(0.1), "0.1");
        assert_eq!(go_format_float(1.0), "1");
        assert_eq!(go_format_float(-0.0), "-0");
        assert_eq!(go_format_float(1.5e-10), "0.00000000015");
        assert_eq!(go_format_float(f64::INFINITY), "+Inf");
        assert_eq!(go_format_float(f64::NAN), "NaN");
    }
}
