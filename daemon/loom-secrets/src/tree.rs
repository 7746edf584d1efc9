//! The document model every format parses into: the same shape as sops' own `TreeBranch`
//! (ordered items, comments as items), because the MAC covers values in file order.

/// How deep a document may nest. Every walk over a tree (building, decrypting, dropping) is
/// recursive, so deeper input would overflow the stack instead of being refused.
pub(crate) const MAX_DEPTH: usize = 128;

/// A parsed value, before decryption.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Map(Vec<Item>),
    List(Vec<ListItem>),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

/// One entry of a mapping: a key with its value, or a comment line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Item {
    Entry(String, Value),
    Comment(String),
}

/// One element of a sequence: a value or a comment line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ListItem {
    Value(Value),
    Comment(String),
}

/// A parsed file: one branch per document (YAML may hold several) plus the `sops` metadata
/// value taken out of the first one.
#[derive(Debug)]
pub(crate) struct Document {
    pub branches: Vec<Vec<Item>>,
    pub metadata: Value,
}

impl Value {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Looks up a key in a mapping (first match; parsers reject duplicate keys).
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(items) => items.iter().find_map(|i| match i {
                Item::Entry(k, v) if k == key => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }
}

/// The keys seen in one mapping. A second occurrence of a key is refused: sops' YAML store
/// does the same, and a duplicate would make a dotted lookup ambiguous.
#[derive(Debug, Default)]
pub(crate) struct KeySet(std::collections::HashSet<String>);

impl KeySet {
    /// Records `key`; false if it was already there.
    pub(crate) fn insert(&mut self, key: &str) -> bool {
        self.0.insert(key.to_string())
    }
}

/// Splits the `sops` entry out of the first branch (YAML, JSON, binary). Other branches
/// lose any `sops` key too, as sops does.
pub(crate) fn extract_nested_metadata(mut branches: Vec<Vec<Item>>) -> Result<Document, &'static str> {
    let mut metadata = None;
    for (bi, branch) in branches.iter_mut().enumerate() {
        let mut i = 0;
        while i < branch.len() {
            if matches!(&branch[i], Item::Entry(k, _) if k == "sops") {
                let Item::Entry(_, v) = branch.remove(i) else { unreachable!("matched an entry just above") };
                if bi == 0 {
                    if metadata.is_some() {
                        return Err("the file has two `sops` entries");
                    }
                    if !matches!(v, Value::Map(_)) {
                        return Err("the `sops` entry is not a mapping");
                    }
                    metadata = Some(v);
                }
            } else {
                i += 1;
            }
        }
    }
    match metadata {
        Some(metadata) => Ok(Document { branches, metadata }),
        None => Err("no `sops` metadata entry: this is not a sops-encrypted file"),
    }
}

/// Rebuilds nested metadata from sops' flattened keys (`pgp__list_0__map_enc`), as used by
/// the dotenv (`sops_` prefix) and INI (`[sops]` section) stores.
pub(crate) fn unflatten(entries: Vec<(String, String)>) -> Result<Value, String> {
    #[derive(Default)]
    struct Node {
        value: Option<String>,
        keys: Vec<(String, Node)>,
        indices: Vec<(usize, Node)>,
    }
    enum Tok {
        Key(String),
        Index(usize),
    }
    fn tokenize(path: &str) -> Result<Vec<Tok>, String> {
        const MAP: &str = "__map_";
        const LIST: &str = "__list_";
        let mut toks = Vec::new();
        let mut rest = path;
        let mut current_is_list = false;
        loop {
            let next_map = rest.find(MAP);
            let next_list = rest.find(LIST);
            let (cut, sep_len, next_is_list) = match (next_map, next_list) {
                (Some(m), Some(l)) if l < m => (l, LIST.len(), true),
                (Some(m), _) => (m, MAP.len(), false),
                (None, Some(l)) => (l, LIST.len(), true),
                (None, None) => (rest.len(), 0, false),
            };
            let part = &rest[..cut];
            if toks.len() == MAX_DEPTH {
                let start: String = path.chars().take(40).collect();
                return Err(format!("metadata key {start:?}… is nested deeper than {MAX_DEPTH} levels"));
            }
            if current_is_list {
                let idx =
                    part.parse::<usize>().map_err(|_| format!("bad list index {part:?} in metadata key {path:?}"))?;
                toks.push(Tok::Index(idx));
            } else {
                toks.push(Tok::Key(part.to_string()));
            }
            if sep_len == 0 {
                return Ok(toks);
            }
            rest = &rest[cut + sep_len..];
            current_is_list = next_is_list;
        }
    }
    fn place(root: &mut Node, toks: &[Tok], value: String, path: &str) -> Result<(), String> {
        let mut node = root;
        for t in toks {
            node = match t {
                Tok::Key(k) => {
                    let pos = match node.keys.iter().position(|(kk, _)| kk == k) {
                        Some(p) => p,
                        None => {
                            node.keys.push((k.clone(), Node::default()));
                            node.keys.len() - 1
                        }
                    };
                    &mut node.keys[pos].1
                }
                Tok::Index(i) => {
                    let pos = match node.indices.iter().position(|(ii, _)| ii == i) {
                        Some(p) => p,
                        None => {
                            node.indices.push((*i, Node::default()));
                            node.indices.len() - 1
                        }
                    };
                    &mut node.indices[pos].1
                }
            };
        }
        if node.value.is_some() {
            return Err(format!("duplicate metadata key {path:?}"));
        }
        node.value = Some(value);
        Ok(())
    }
    fn convert(node: Node) -> Result<Value, String> {
        let kinds = usize::from(node.value.is_some())
            + usize::from(!node.keys.is_empty())
            + usize::from(!node.indices.is_empty());
        if kinds > 1 {
            return Err("metadata key is both a value and a container".into());
        }
        if let Some(v) = node.value {
            return Ok(Value::Str(v));
        }
        if !node.indices.is_empty() {
            let mut idx = node.indices;
            idx.sort_by_key(|(i, _)| *i);
            if idx.iter().enumerate().any(|(n, (i, _))| n != *i) {
                return Err("metadata list has gaps in its indices".into());
            }
            return idx
                .into_iter()
                .map(|(_, n)| convert(n).map(ListItem::Value))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::List);
        }
        node.keys
            .into_iter()
            .map(|(k, n)| convert(n).map(|v| Item::Entry(k, v)))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Map)
    }
    let mut root = Node::default();
    for (k, v) in entries {
        let toks = tokenize(&k)?;
        place(&mut root, &toks, v, &k)?;
    }
    convert(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unflatten_rebuilds_sops_metadata() {
        let v = unflatten(vec![
            ("pgp__list_0__map_fp".into(), "FP0".into()),
            ("pgp__list_0__map_enc".into(), "E0".into()),
            ("pgp__list_1__map_fp".into(), "FP1".into()),
            ("mac".into(), "M".into()),
        ])
        .unwrap();
        assert_eq!(v.get("mac").and_then(Value::as_str), Some("M"));
        let Some(Value::List(pgp)) = v.get("pgp") else { panic!("pgp is not a list: {v:?}") };
        assert_eq!(pgp.len(), 2);
        let ListItem::Value(first) = &pgp[0] else { panic!() };
        assert_eq!(first.get("enc").and_then(Value::as_str), Some("E0"));
    }

    #[test]
    fn unflatten_refuses_gaps_and_conflicts() {
        assert!(unflatten(vec![("pgp__list_1__map_fp".into(), "x".into())]).is_err());
        assert!(unflatten(vec![("a".into(), "x".into()), ("a__map_b".into(), "y".into())]).is_err());
        assert!(unflatten(vec![("a__list_x".into(), "x".into())]).is_err());
    }

    #[test]
    fn unflatten_refuses_keys_nested_past_the_depth_limit() {
        let ok = format!("{}x", "a__map_".repeat(MAX_DEPTH - 1));
        assert!(unflatten(vec![(ok, "v".into())]).is_ok());
        let deep = format!("{}x", "a__map_".repeat(MAX_DEPTH));
        assert!(unflatten(vec![(deep, "v".into())]).unwrap_err().contains("nested deeper than 128"));
    }
}
