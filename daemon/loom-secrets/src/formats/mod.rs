//! The file formats sops writes, each parsed into [`crate::tree::Document`].

pub(crate) mod json;
pub(crate) mod yaml;

use std::path::Path;

use crate::tree::{Document, Item, KeySet, Value, extract_nested_metadata, unflatten};

/// A sops file's format: the store sops used to write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SopsFormat {
    /// YAML (`.yaml`, `.yml`), possibly several documents.
    Yaml,
    /// JSON (`.json`).
    Json,
    /// dotenv (`.env`): `KEY=VALUE` lines, metadata in `sops_*` keys.
    Dotenv,
    /// INI (`.ini`): sections, metadata in a `[sops]` section.
    Ini,
    /// Any other file: sops keeps it as one `data` value in a JSON envelope.
    Binary,
}

impl SopsFormat {
    /// The format sops itself picks for a file name: by extension, binary otherwise.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("yaml" | "yml") => Self::Yaml,
            Some("json") => Self::Json,
            Some("env") => Self::Dotenv,
            Some("ini") => Self::Ini,
            _ => Self::Binary,
        }
    }

    /// The name sops uses for this store (`--input-type`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Yaml => "yaml",
            Self::Json => "json",
            Self::Dotenv => "dotenv",
            Self::Ini => "ini",
            Self::Binary => "binary",
        }
    }
}

impl std::str::FromStr for SopsFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Ok(Self::Yaml),
            "json" => Ok(Self::Json),
            "dotenv" | "env" => Ok(Self::Dotenv),
            "ini" => Ok(Self::Ini),
            "binary" => Ok(Self::Binary),
            other => Err(format!("unknown sops format {other:?}: expected yaml, json, dotenv, ini or binary")),
        }
    }
}

/// Parses a whole file; the error says where it is malformed.
pub(crate) fn parse(text: &str, format: SopsFormat) -> Result<Document, String> {
    match format {
        SopsFormat::Yaml => {
            let branches = yaml::parse(text)?;
            extract_nested_metadata(branches).map_err(str::to_string)
        }
        SopsFormat::Json | SopsFormat::Binary => {
            let items = json::parse(text)?;
            let doc = extract_nested_metadata(vec![items]).map_err(str::to_string)?;
            if format == SopsFormat::Binary {
                let has_data =
                    doc.branches[0].iter().any(|i| matches!(i, Item::Entry(k, Value::Str(_)) if k == "data"));
                if !has_data {
                    return Err("a binary sops file needs a string `data` entry".into());
                }
            }
            Ok(doc)
        }
        SopsFormat::Dotenv => parse_dotenv(text),
        SopsFormat::Ini => parse_ini(text),
    }
}

/// sops' dotenv store: lines split on `\n`, `#` starts a comment line, the key is
/// everything before the first `=` and the value everything after it (spaces kept), with
/// `\n` escapes turned into newlines.
fn parse_dotenv(text: &str) -> Result<Document, String> {
    let mut items = Vec::new();
    let mut seen = KeySet::default();
    let mut meta = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            items.push(Item::Comment(c.to_string()));
            continue;
        }
        let Some(eq) = line.find('=') else {
            return Err(format!("line {}: not a KEY=VALUE line", n + 1));
        };
        let key = &line[..eq];
        let value = line[eq + 1..].replace("\\n", "\n");
        if let Some(mk) = key.strip_prefix("sops_") {
            meta.push((mk.to_string(), value));
        } else {
            if !seen.insert(key) {
                return Err(format!("line {}: duplicate key {key:?}", n + 1));
            }
            items.push(Item::Entry(key.to_string(), Value::Str(value)));
        }
    }
    if meta.is_empty() {
        return Err("no `sops_*` metadata lines: this is not a sops-encrypted file".into());
    }
    let metadata = unflatten(meta)?;
    Ok(Document { branches: vec![items], metadata })
}

/// sops' INI store (go-ini semantics for what sops writes): a `DEFAULT` section first,
/// `key = value` with trimmed keys and values, quotes stripped, `;`/`#` comments, and the
/// metadata flattened in a `[sops]` section with `\n` escaped.
fn parse_ini(text: &str) -> Result<Document, String> {
    let mut sections: Vec<(String, Vec<Item>, KeySet)> = vec![("DEFAULT".to_string(), Vec::new(), KeySet::default())];
    let mut pending_comment: Option<String> = None;
    for (n, raw) in text.split('\n').enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with(['#', ';']) {
            let c = line[1..].trim().to_string();
            pending_comment = Some(match pending_comment.take() {
                Some(p) => format!("{p}\n{c}"),
                None => c,
            });
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(format!("line {}: unclosed section header", n + 1));
            };
            let mut items = Vec::new();
            if let Some(c) = pending_comment.take() {
                items.push(Item::Comment(c));
            }
            sections.push((name.trim().to_string(), items, KeySet::default()));
            continue;
        }
        let Some(pos) = line.find(['=', ':']) else {
            return Err(format!("line {}: not a `key = value` line", n + 1));
        };
        let key = unquote(line[..pos].trim()).to_string();
        let mut value = line[pos + 1..].trim();
        let quoted = unquote(value);
        let value = if quoted.len() != value.len() {
            quoted.to_string()
        } else {
            if let Some(i) = value.find(['#', ';']) {
                value = value[..i].trim();
            }
            value.to_string()
        };
        let Some((_, items, seen)) = sections.last_mut() else { unreachable!("DEFAULT is always there") };
        if !seen.insert(&key) {
            return Err(format!("line {}: duplicate key {key:?}", n + 1));
        }
        items.push(Item::Entry(key, Value::Str(value)));
        if let Some(c) = pending_comment.take() {
            items.push(Item::Comment(c));
        }
    }
    let mut meta = None;
    let mut branch = Vec::new();
    for (name, items, _) in sections {
        if name == "sops" {
            if meta.is_some() {
                return Err("two [sops] sections".into());
            }
            let mut flat = Vec::new();
            for i in items {
                if let Item::Entry(k, Value::Str(v)) = i {
                    flat.push((k, v.replace("\\n", "\n")));
                }
            }
            meta = Some(unflatten(flat)?);
        } else {
            branch.push(Item::Entry(name, Value::Map(items)));
        }
    }
    let metadata = meta.ok_or("no [sops] section: this is not a sops-encrypted INI file".to_string())?;
    Ok(Document { branches: vec![branch], metadata })
}

fn unquote(s: &str) -> &str {
    for q in ["\"\"\"", "\"", "'", "`"] {
        if s.len() >= 2 * q.len() && s.starts_with(q) && s.ends_with(q) {
            return &s[q.len()..s.len() - q.len()];
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_extension() {
        assert_eq!(SopsFormat::from_path(Path::new("a.enc.yaml")), SopsFormat::Yaml);
        assert_eq!(SopsFormat::from_path(Path::new("a.YML")), SopsFormat::Yaml);
        assert_eq!(SopsFormat::from_path(Path::new("a.json")), SopsFormat::Json);
        assert_eq!(SopsFormat::from_path(Path::new("a.env")), SopsFormat::Dotenv);
        assert_eq!(SopsFormat::from_path(Path::new("a.ini")), SopsFormat::Ini);
        assert_eq!(SopsFormat::from_path(Path::new("key.bin")), SopsFormat::Binary);
        assert_eq!(SopsFormat::from_path(Path::new("noext")), SopsFormat::Binary);
        assert_eq!("dotenv".parse::<SopsFormat>(), Ok(SopsFormat::Dotenv));
        assert!("toml".parse::<SopsFormat>().is_err());
    }

    #[test]
    fn dotenv_keeps_spaces_and_reads_flat_metadata() {
        let doc = parse("#c\nfoo = bar\nsops_mac=M\nsops_pgp__list_0__map_enc=a\\nb\n", SopsFormat::Dotenv).unwrap();
        assert_eq!(
            doc.branches[0],
            vec![Item::Comment("c".into()), Item::Entry("foo ".into(), Value::Str(" bar".into()))]
        );
        let Some(Value::List(pgp)) = doc.metadata.get("pgp") else { panic!() };
        let crate::tree::ListItem::Value(p) = &pgp[0] else { panic!() };
        assert_eq!(p.get("enc").and_then(Value::as_str), Some("a\nb"));
        assert!(parse("novalue\n", SopsFormat::Dotenv).unwrap_err().contains("line 1"));
        assert!(parse("a=b\n", SopsFormat::Dotenv).unwrap_err().contains("sops_"));
    }

    #[test]
    fn ini_sections_and_metadata() {
        let doc = parse(
            "; about db\n[db]\npassword = \"p w\"\nuser = u ; note\n[sops]\nmac = M\npgp__list_0__map_enc = x\\ny\n",
            SopsFormat::Ini,
        )
        .unwrap();
        assert_eq!(
            doc.branches[0],
            vec![
                Item::Entry("DEFAULT".into(), Value::Map(vec![])),
                Item::Entry(
                    "db".into(),
                    Value::Map(vec![
                        Item::Comment("about db".into()),
                        Item::Entry("password".into(), Value::Str("p w".into())),
                        Item::Entry("user".into(), Value::Str("u".into())),
                    ])
                ),
            ]
        );
        assert_eq!(doc.metadata.get("mac").and_then(Value::as_str), Some("M"));
        assert!(parse("[db\n", SopsFormat::Ini).unwrap_err().contains("line 1"));
        assert!(parse("[db]\na=1\n", SopsFormat::Ini).unwrap_err().contains("[sops]"));
    }
}
