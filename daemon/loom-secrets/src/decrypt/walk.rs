//! sops' walk over a decrypted document (`walkBranch`/`walkSlice`/`shouldBeEncrypted`): which
//! values and comments are encrypted, their additional data, and the MAC's input.

use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use super::{Leaf, LeafValue, SopsError};
use crate::cipher::{self, CipherError, DataKey, ValueKind, go_bool, go_format_float};
use crate::metadata::{CryptRule, Metadata};
use crate::secret::{SecretBytes, SecretString};
use crate::tree::{Item, ListItem, Value};

/// One pass over a document's branches: every value decrypted (or taken as it is) in sops'
/// order, hashed for the MAC, and kept as a leaf.
pub(super) struct Walker<'a> {
    key: &'a DataKey,
    meta: &'a Metadata,
    pub(super) hash: Sha512,
    pub(super) leaves: Vec<Leaf>,
    pub(super) comments: Vec<SecretString>,
    /// Where the walk is: the keys of the value's additional data, its path in the tree
    /// (keys and list indices), and the comments seen in each enclosing container since its
    /// last value.
    ad_path: Vec<String>,
    tree_path: Vec<String>,
    stack: Vec<Vec<String>>,
}

impl<'a> Walker<'a> {
    pub(super) fn new(key: &'a DataKey, meta: &'a Metadata) -> Self {
        Walker {
            key,
            meta,
            hash: Sha512::new(),
            leaves: Vec::new(),
            comments: Vec::new(),
            ad_path: Vec::new(),
            tree_path: Vec::new(),
            stack: Vec::new(),
        }
    }
}

impl Walker<'_> {
    /// sops' `walkBranch`: the comments seen since the last value are on the stack while
    /// the value is decided; a value's additional data is its keys joined by `:`.
    pub(super) fn walk_map(&mut self, items: &[Item]) -> Result<(), SopsError> {
        self.stack.push(Vec::new());
        for item in items {
            match item {
                Item::Comment(c) => self.note_comment(c),
                Item::Entry(k, v) => {
                    self.ad_path.push(k.clone());
                    self.tree_path.push(k.clone());
                    let r = self.walk_child(v);
                    self.ad_path.pop();
                    r?;
                }
            }
        }
        self.stack.pop();
        Ok(())
    }

    /// sops' `walkSlice`: elements share the list's additional data (no index in it).
    fn walk_list(&mut self, items: &[ListItem]) -> Result<(), SopsError> {
        self.stack.push(Vec::new());
        let mut index = 0usize;
        for item in items {
            match item {
                ListItem::Comment(c) => self.note_comment(c),
                ListItem::Value(v) => {
                    self.tree_path.push(index.to_string());
                    index += 1;
                    self.walk_child(v)?;
                }
            }
        }
        self.stack.pop();
        Ok(())
    }

    /// A comment is on the stack until the next value, and kept (decrypted if it can be).
    fn note_comment(&mut self, c: &str) {
        if let Some(top) = self.stack.last_mut() {
            top.push(c.to_string());
        }
        self.comment(c);
    }

    /// Walks an element whose key or index is on top of `tree_path` (and pops it); a value
    /// ends the run of comments before it.
    fn walk_child(&mut self, v: &Value) -> Result<(), SopsError> {
        let r = self.walk_value(v);
        self.tree_path.pop();
        r?;
        if let Some(top) = self.stack.last_mut() {
            top.clear();
        }
        Ok(())
    }

    fn walk_value(&mut self, v: &Value) -> Result<(), SopsError> {
        match v {
            Value::Map(items) => self.walk_map(items),
            Value::List(items) => self.walk_list(items),
            Value::Null => Ok(()),
            scalar => self.leaf(scalar),
        }
    }

    fn comment(&mut self, c: &str) {
        let (ad_path, stack) = (&self.ad_path, &self.stack);
        // Comments are outside the MAC; sops keeps one that fails to decrypt as written
        // (older sops versions left comments in clear). Which mapping a comment sits in is
        // a YAML-layout guess, so every enclosing path is tried.
        let plain = if should_be_encrypted(&self.meta.rule, ad_path, stack, true) {
            (0..=ad_path.len()).rev().find_map(|n| {
                let ad = additional_data(&ad_path[..n]);
                cipher::decrypt(c, self.key, &ad).ok()
            })
        } else {
            None
        };
        let text = match plain {
            Some(p) => String::from_utf8_lossy(&p.value).into_owned(),
            None => c.to_string(),
        };
        self.comments.push(SecretString::new(text));
    }

    fn leaf(&mut self, v: &Value) -> Result<(), SopsError> {
        let (ad_path, tree_path, stack) = (&self.ad_path, &self.tree_path, &self.stack);
        let dotted = tree_path.join(".");
        let encrypted = should_be_encrypted(&self.meta.rule, ad_path, stack, false);
        let (kind, value, mac_bytes): (ValueKind, Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>) = if encrypted {
            let Value::Str(enc) = v else {
                return Err(SopsError::BadValue {
                    path: dotted,
                    detail: "not encrypted although the file's rules say it must be".into(),
                });
            };
            let p = cipher::decrypt(enc, self.key, &additional_data(ad_path)).map_err(|e| match e {
                CipherError::Authentication => SopsError::TamperedValue { path: dotted.clone() },
                CipherError::Format(d) => SopsError::BadValue {
                    path: dotted.clone(),
                    detail: format!("not a valid sops encrypted value: {d}"),
                },
                CipherError::BadTyped(d) => SopsError::BadValue { path: dotted.clone(), detail: d },
            })?;
            if p.kind == ValueKind::Comment {
                return Err(SopsError::BadValue {
                    path: dotted,
                    detail: "typed `comment` but stored as a value".into(),
                });
            }
            (p.kind, p.value, p.mac_bytes)
        } else {
            let (kind, value, mac): (ValueKind, String, String) = match v {
                Value::Str(s) => (ValueKind::Str, s.clone(), s.clone()),
                Value::Int(i) => (ValueKind::Int, i.to_string(), i.to_string()),
                Value::Float(f) => (ValueKind::Float, go_format_float(*f), go_format_float(*f)),
                Value::Bool(b) => (ValueKind::Bool, b.to_string(), go_bool(*b).to_string()),
                Value::Map(_) | Value::List(_) | Value::Null => {
                    unreachable!("walk_value routes containers and null elsewhere")
                }
            };
            (kind, Zeroizing::new(value.into_bytes()), Zeroizing::new(mac.into_bytes()))
        };
        if !self.meta.mac_only_encrypted || encrypted {
            self.hash.update(&mac_bytes[..]);
        }
        let value = match String::from_utf8(value.to_vec()) {
            Ok(s) => LeafValue::Text(SecretString::new(s)),
            Err(e) => LeafValue::Bytes(SecretBytes::new(e.into_bytes())),
        };
        self.leaves.push(Leaf { path: tree_path.to_vec(), dotted, kind, encrypted, value });
        Ok(())
    }
}

pub(super) fn additional_data(path: &[String]) -> String {
    let mut s = path.join(":");
    s.push(':');
    s
}

/// sops' `shouldBeEncrypted`, rule by rule.
pub(super) fn should_be_encrypted(rule: &CryptRule, path: &[String], stack: &[Vec<String>], is_comment: bool) -> bool {
    match rule {
        CryptRule::UnencryptedSuffix(s) => !path.iter().any(|p| p.ends_with(s.as_str())),
        CryptRule::EncryptedSuffix(s) => path.iter().any(|p| p.ends_with(s.as_str())),
        CryptRule::UnencryptedRegex(re) => !path.iter().any(|p| re.is_match(p)),
        CryptRule::EncryptedRegex(re) => path.iter().any(|p| re.is_match(p)),
        CryptRule::UnencryptedCommentRegex(re) => !stack.iter().flatten().any(|c| re.is_match(c)),
        CryptRule::EncryptedCommentRegex(re) => {
            let last = stack.len().saturating_sub(1);
            let last_len = stack.last().map_or(0, Vec::len);
            stack.iter().enumerate().any(|(i, cs)| {
                cs.iter().enumerate().any(|(j, c)| {
                    // The comment line that matches is itself left in clear.
                    if is_comment && i == last && j + 1 == last_len {
                        return false;
                    }
                    re.is_match(c)
                })
            })
        }
    }
}
