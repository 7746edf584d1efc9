//! The `sops` metadata entry: recipients with their wrapped data keys, the MAC, and the
//! rule that says which values are encrypted.

use regex::Regex;

use crate::tree::{ListItem, Value};

#[derive(Debug)]
pub(crate) struct AgeStanza {
    pub recipient: String,
    pub enc: String,
}

#[derive(Debug)]
pub(crate) struct PgpStanza {
    pub fingerprint: String,
    pub enc: String,
}

/// Which values sops encrypted (exactly one rule per file; `_unencrypted` suffix by default).
#[derive(Debug)]
pub(crate) enum CryptRule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(Regex),
    EncryptedRegex(Regex),
    UnencryptedCommentRegex(Regex),
    EncryptedCommentRegex(Regex),
}

#[derive(Debug)]
pub(crate) struct Metadata {
    /// `lastmodified` re-formatted as Go's `time.RFC3339`: the MAC's additional data.
    pub mac_additional_data: String,
    pub mac: Option<String>,
    pub age: Vec<AgeStanza>,
    pub pgp: Vec<PgpStanza>,
    /// Recipients of key types this crate cannot use (KMS, Vault, …), for error messages.
    pub other_recipients: Vec<String>,
    pub rule: CryptRule,
    pub mac_only_encrypted: bool,
}

pub(crate) fn parse(meta: &Value) -> Result<Metadata, String> {
    let lastmodified = meta.get("lastmodified").and_then(Value::as_str).ok_or("sops metadata has no `lastmodified`")?;
    let mac_additional_data = rfc3339_normalize(lastmodified, false)
        .ok_or_else(|| format!("sops.lastmodified {lastmodified:?} is not an RFC 3339 time"))?;
    let mac = meta.get("mac").and_then(Value::as_str).filter(|m| !m.is_empty()).map(str::to_string);

    let mut age = Vec::new();
    let mut pgp = Vec::new();
    let mut other_recipients = Vec::new();
    let groups = list(meta.get("key_groups"), "key_groups")?;
    if groups.len() > 1 {
        return Err(format!(
            "the file splits its data key over {} key groups (Shamir secret sharing), which loom does not support; re-encrypt it with a single key group",
            groups.len()
        ));
    }
    let sources: Vec<&Value> = if groups.is_empty() { vec![meta] } else { groups };
    for src in sources {
        collect_keys(src, &mut age, &mut pgp, &mut other_recipients)?;
    }

    let mut rules = Vec::new();
    for (name, regex) in [
        ("unencrypted_suffix", false),
        ("encrypted_suffix", false),
        ("unencrypted_regex", true),
        ("encrypted_regex", true),
        ("unencrypted_comment_regex", true),
        ("encrypted_comment_regex", true),
    ] {
        let Some(v) = meta.get(name).and_then(Value::as_str).filter(|v| !v.is_empty()) else {
            continue;
        };
        let rule = if regex {
            let re = Regex::new(v).map_err(|e| format!("sops.{name} {v:?} is not a regex: {e}"))?;
            match name {
                "unencrypted_regex" => CryptRule::UnencryptedRegex(re),
                "encrypted_regex" => CryptRule::EncryptedRegex(re),
                "unencrypted_comment_regex" => CryptRule::UnencryptedCommentRegex(re),
                _ => CryptRule::EncryptedCommentRegex(re),
            }
        } else if name == "unencrypted_suffix" {
            CryptRule::UnencryptedSuffix(v.to_string())
        } else {
            CryptRule::EncryptedSuffix(v.to_string())
        };
        rules.push(rule);
    }
    if rules.len() > 1 {
        return Err("sops metadata sets more than one of the (un)encrypted suffix/regex rules".into());
    }
    let rule = rules.pop().unwrap_or_else(|| CryptRule::UnencryptedSuffix("_unencrypted".into()));

    let mac_only_encrypted = match meta.get("mac_only_encrypted") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Str(s)) => {
            go_parse_bool(s).ok_or_else(|| format!("sops.mac_only_encrypted {s:?} is not a boolean"))?
        }
        Some(Value::Int(i)) => *i != 0,
        Some(_) => return Err("sops.mac_only_encrypted is not a boolean".into()),
    };

    Ok(Metadata { mac_additional_data, mac, age, pgp, other_recipients, rule, mac_only_encrypted })
}

fn list<'a>(v: Option<&'a Value>, name: &str) -> Result<Vec<&'a Value>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::List(items)) => Ok(items
            .iter()
            .filter_map(|i| match i {
                ListItem::Value(v) => Some(v),
                ListItem::Comment(_) => None,
            })
            .collect()),
        Some(_) => Err(format!("sops.{name} is not a list")),
    }
}

fn field<'a>(entry: &'a Value, name: &str, list_name: &str, n: usize) -> Result<&'a str, String> {
    entry.get(name).and_then(Value::as_str).ok_or_else(|| format!("sops.{list_name}[{n}] has no `{name}`"))
}

fn collect_keys(
    src: &Value,
    age: &mut Vec<AgeStanza>,
    pgp: &mut Vec<PgpStanza>,
    other: &mut Vec<String>,
) -> Result<(), String> {
    for (n, e) in list(src.get("age"), "age")?.into_iter().enumerate() {
        age.push(AgeStanza {
            recipient: field(e, "recipient", "age", n)?.to_string(),
            enc: field(e, "enc", "age", n)?.to_string(),
        });
    }
    for (n, e) in list(src.get("pgp"), "pgp")?.into_iter().enumerate() {
        pgp.push(PgpStanza {
            fingerprint: field(e, "fp", "pgp", n)?.to_string(),
            enc: field(e, "enc", "pgp", n)?.to_string(),
        });
    }
    for (kind, id_field) in [
        ("kms", "arn"),
        ("gcp_kms", "resource_id"),
        ("azure_kv", "vault_url"),
        ("hc_vault", "vault_address"),
        ("hckms", "key_id"),
    ] {
        for e in list(src.get(kind), kind)? {
            let id = e.get(id_field).and_then(Value::as_str).unwrap_or("?");
            other.push(format!("{kind} {id} (not supported by loom)"));
        }
    }
    Ok(())
}

/// Go's `strconv.ParseBool`.
pub(crate) fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Parses an RFC 3339 time as Go's `time.Parse(time.RFC3339, …)` accepts it and formats it
/// back the way Go does: `Z` for a zero offset, fractional seconds dropped (`RFC3339`) or
/// kept without trailing zeros (`RFC3339Nano`, for `type:time` values).
pub(crate) fn rfc3339_normalize(s: &str, keep_fraction: bool) -> Option<String> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) { part.parse().ok() } else { None }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, min, sec) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || day == 0 || day > days[month as usize - 1] || hour > 23 || min > 59 || sec > 59 {
        return None;
    }
    let mut i = 19;
    let mut fraction = "";
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        fraction = &s[start..i];
    }
    let offset = &s[i..];
    let offset = match offset {
        "Z" => "Z".to_string(),
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && o.as_bytes()[3] == b':' => {
            let oh = digits(i + 1..i + 3)?;
            let om = digits(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            if oh == 0 && om == 0 { "Z".to_string() } else { o.to_string() }
        }
        _ => return None,
    };
    let mut out = s[..19].to_string();
    if keep_fraction {
        let f = fraction.get(..9).unwrap_or(fraction).trim_end_matches('0');
        if !f.is_empty() {
            out.push('.');
            out.push_str(f);
        }
    }
    out.push_str(&offset);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_like_go() {
        let n = |s| rfc3339_normalize(s, false);
        assert_eq!(n("2020-10-07T15:49:13Z").as_deref(), Some("2020-10-07T15:49:13Z"));
        assert_eq!(n("2020-10-07T15:49:13.123Z").as_deref(), Some("2020-10-07T15:49:13Z"));
        assert_eq!(n("2020-10-07T15:49:13+00:00").as_deref(), Some("2020-10-07T15:49:13Z"));
        assert_eq!(n("2020-10-07T15:49:13-07:00").as_deref(), Some("2020-10-07T15:49:13-07:00"));
        assert_eq!(rfc3339_normalize("2020-10-07T15:49:13.1200Z", true).as_deref(), Some("2020-10-07T15:49:13.12Z"));
        for bad in ["2020-13-07T15:49:13Z", "2021-02-29T00:00:00Z", "2020-10-07 15:49:13Z", "2020-10-07T15:49:13", "x"]
        {
            assert_eq!(n(bad), None, "{bad}");
        }
    }

    #[test]
    fn go_bools() {
        assert_eq!(go_parse_bool("T"), Some(true));
        assert_eq!(go_parse_bool("False"), Some(false));
        assert_eq!(go_parse_bool("yes"), None);
    }
}
