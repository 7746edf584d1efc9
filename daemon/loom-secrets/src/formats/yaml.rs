//! YAML store: builds the ordered tree from yaml-rust2's event stream, resolves plain
//! scalars the way go-yaml v3 does for sops (the type decides the MAC bytes of unencrypted
//! values), and recovers comment lines, which the event stream does not carry.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::tree::{Item, KeySet, ListItem, MAX_DEPTH, Value};

/// Bounds that keep a hostile file from exhausting memory through nesting or aliases.
const MAX_ALIAS_NODES: usize = 100_000;

pub(crate) fn parse(text: &str) -> Result<Vec<Vec<Item>>, String> {
    let comments = CommentScanner::new(text).scan()?;
    let mut b = Builder {
        comments,
        next_comment: 0,
        stack: Vec::new(),
        anchors: HashMap::new(),
        alias_nodes: 0,
        branches: Vec::new(),
        doc_root: None,
    };
    let mut parser = Parser::new_from_str(text);
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| format!("YAML syntax error: {e}"))?;
        if matches!(ev, Event::StreamEnd) {
            break;
        }
        b.event(ev, mark)?;
    }
    Ok(b.branches)
}

/// A comment found in the source: its line (1-based), column of `#`, text after `#`, and
/// whether code precedes it on the same line.
#[derive(Debug, Clone)]
struct Comment {
    line: usize,
    col: usize,
    text: String,
}

enum Frame {
    Map { items: Vec<Item>, seen: KeySet, key: Option<String>, anchor: usize, col: usize },
    Seq { items: Vec<ListItem>, anchor: usize, col: usize },
}

struct Builder {
    comments: Vec<Comment>,
    next_comment: usize,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    alias_nodes: usize,
    branches: Vec<Vec<Item>>,
    doc_root: Option<Value>,
}

impl Builder {
    fn event(&mut self, ev: Event, mark: Marker) -> Result<(), String> {
        let is_end = matches!(ev, Event::MappingEnd | Event::SequenceEnd);
        let is_start = matches!(ev, Event::MappingStart(..) | Event::SequenceStart(..));
        if !is_start {
            self.flush_comments(mark.line(), is_end);
        }
        match ev {
            Event::StreamStart | Event::Nothing => {}
            Event::StreamEnd => {}
            Event::DocumentStart => self.doc_root = None,
            Event::DocumentEnd => {
                // Comments after the last node of a document belong to its top mapping.
                let branch = match self.doc_root.take() {
                    Some(Value::Map(items)) => items,
                    Some(Value::Null) | None => Vec::new(),
                    Some(_) => {
                        return Err(format!(
                            "line {}: a YAML document must be a mapping (sops refuses top-level lists and scalars)",
                            mark.line()
                        ));
                    }
                };
                self.branches.push(branch);
            }
            Event::Alias(id) => {
                let v = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| format!("line {}: alias to an unknown anchor", mark.line()))?;
                self.alias_nodes += count_nodes(&v);
                if self.alias_nodes > MAX_ALIAS_NODES {
                    return Err(format!("line {}: aliases expand to more than {MAX_ALIAS_NODES} nodes", mark.line()));
                }
                // An alias pastes a whole subtree here: anchors nested in anchors would
                // otherwise build a tree far deeper than any one level of the text.
                if self.stack.len() + depth(&v) > MAX_DEPTH {
                    return Err(format!("line {}: nesting deeper than {MAX_DEPTH} levels", mark.line()));
                }
                self.push_value(v, mark)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let is_key = matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
                if is_key {
                    let Some(Frame::Map { seen, key, .. }) = self.stack.last_mut() else {
                        unreachable!("checked above")
                    };
                    if !seen.insert(&text) {
                        return Err(format!("line {}: duplicate key {text:?}", mark.line()));
                    }
                    *key = Some(text);
                    return Ok(());
                }
                let v = resolve_scalar(text, style, tag.as_ref());
                if anchor > 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                self.push_value(v, mark)?;
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                if matches!(self.stack.last(), Some(Frame::Map { key: None, .. })) {
                    return Err(format!("line {}: complex (non-scalar) mapping keys are not supported", mark.line()));
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Err(format!("line {}: nesting deeper than {MAX_DEPTH} levels", mark.line()));
                }
                let col = mark.col();
                self.stack.push(match ev {
                    Event::MappingStart(..) => {
                        Frame::Map { items: Vec::new(), seen: KeySet::default(), key: None, anchor, col }
                    }
                    _ => Frame::Seq { items: Vec::new(), anchor, col },
                });
                // Comments between a key and its nested container's first entry are head
                // comments of that entry, inside the container (as go-yaml attaches them).
                self.flush_comments(mark.line(), false);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let (v, anchor) = match self.stack.pop() {
                    Some(Frame::Map { items, anchor, .. }) => (Value::Map(items), anchor),
                    Some(Frame::Seq { items, anchor, .. }) => (Value::List(items), anchor),
                    None => return Err(format!("line {}: unbalanced YAML", mark.line())),
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                self.push_value(v, mark)?;
            }
        }
        Ok(())
    }

    fn push_value(&mut self, v: Value, mark: Marker) -> Result<(), String> {
        match self.stack.last_mut() {
            None => {
                if self.doc_root.is_some() {
                    return Err(format!("line {}: two roots in one document", mark.line()));
                }
                self.doc_root = Some(v);
            }
            Some(Frame::Map { items, key, .. }) => {
                let k = key.take().ok_or_else(|| format!("line {}: a mapping value without a key", mark.line()))?;
                items.push(Item::Entry(k, v));
            }
            Some(Frame::Seq { items, .. }) => items.push(ListItem::Value(v)),
        }
        Ok(())
    }

    /// Inserts the comments that precede `line` into the innermost open container. Before
    /// the end of a container, comments left of its column belong to a parent instead.
    fn flush_comments(&mut self, line: usize, is_end: bool) {
        while let Some(c) = self.comments.get(self.next_comment) {
            if c.line >= line {
                break;
            }
            let Some(frame) = self.stack.last_mut() else {
                // Outside any container (after a document's end): nowhere to keep it.
                return;
            };
            if is_end {
                let col = match frame {
                    Frame::Map { col, .. } | Frame::Seq { col, .. } => *col,
                };
                if c.col < col {
                    return;
                }
            }
            let text = c.text.clone();
            match frame {
                Frame::Map { items, .. } => items.push(Item::Comment(text)),
                Frame::Seq { items, .. } => items.push(ListItem::Comment(text)),
            }
            self.next_comment += 1;
        }
    }
}

fn count_nodes(v: &Value) -> usize {
    match v {
        Value::Map(items) => {
            1 + items
                .iter()
                .map(|i| match i {
                    Item::Entry(_, v) => count_nodes(v),
                    Item::Comment(_) => 1,
                })
                .sum::<usize>()
        }
        Value::List(items) => {
            1 + items
                .iter()
                .map(|i| match i {
                    ListItem::Value(v) => count_nodes(v),
                    ListItem::Comment(_) => 1,
                })
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// Levels of containers in `v` (0 for a scalar). Every stored value is within
/// [`MAX_DEPTH`], so the recursion is bounded.
fn depth(v: &Value) -> usize {
    let inner = match v {
        Value::Map(items) => items
            .iter()
            .map(|i| match i {
                Item::Entry(_, v) => depth(v),
                Item::Comment(_) => 0,
            })
            .max(),
        Value::List(items) => items
            .iter()
            .map(|i| match i {
                ListItem::Value(v) => depth(v),
                ListItem::Comment(_) => 0,
            })
            .max(),
        _ => return 0,
    };
    1 + inner.unwrap_or(0)
}

fn is_core_tag(tag: &Tag, name: &str) -> bool {
    tag.suffix == name && (tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:")
}

/// Resolves a scalar as go-yaml v3 decodes it into `interface{}`: quoted and block scalars
/// are strings; plain ones may be null, bool, int or float. Timestamps stay strings (go-yaml
/// v3 keeps them as strings when decoding into `interface{}`).
pub(crate) fn resolve_scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(tag) = tag
        && (is_core_tag(tag, "str") || is_core_tag(tag, "binary") || tag.handle == "!")
    {
        return Value::Str(text);
    }
    if style != TScalarStyle::Plain {
        return Value::Str(text);
    }
    resolve_plain(text)
}

fn resolve_plain(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let first = text.as_bytes()[0];
    if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.')) {
        return Value::Str(text);
    }
    let plain: String = text.chars().filter(|c| *c != '_').collect();
    if let Some(i) = parse_go_int(&plain) {
        return Value::Int(i);
    }
    if is_yaml_float(&plain)
        && let Ok(f) = plain.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str(text)
}

/// `strconv.ParseInt(s, 0, 64)`: optional sign, then 0x/0o/0b prefixes or a leading 0 for
/// octal, or decimal.
fn parse_go_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() {
        return None;
    }
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string())
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string())
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string())
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string())
    } else {
        (10, lower)
    };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = u64::from_str_radix(&digits, radix).ok()?;
    if neg {
        if magnitude <= i64::MAX as u64 + 1 { Some((magnitude as i128).wrapping_neg() as i64) } else { None }
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// go-yaml's `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Finds comments in the source text: every `#` that starts a line's content or follows
/// whitespace, outside quoted and block scalars (whose extents come from the parser's own
/// events, so a `#` inside a PGP block or a quoted value is never taken for a comment).
struct CommentScanner<'a> {
    text: &'a str,
}

impl<'a> CommentScanner<'a> {
    fn new(text: &'a str) -> Self {
        Self { text }
    }

    fn scan(&self) -> Result<Vec<Comment>, String> {
        // Byte ranges occupied by scalars that may hold '#' or span lines.
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        let mut parser = Parser::new_from_str(self.text);
        let char_to_byte = CharIndex::new(self.text);
        loop {
            let (ev, mark) = parser.next_token().map_err(|e| format!("YAML syntax error: {e}"))?;
            match ev {
                Event::StreamEnd => break,
                Event::Scalar(_, style, _, _) => {
                    let start = char_to_byte.byte(mark.index());
                    if let Some(end) = self.scalar_end(start, style) {
                        ranges.push((start, end));
                    }
                }
                _ => {}
            }
        }
        // Events come in source order, so the ranges are sorted: one moving cursor keeps
        // the scan linear in the file size.
        ranges.sort_unstable();
        let mut cursor = 0;
        let mut out = Vec::new();
        let mut line_start = 0;
        for (n, line) in self.text.split('\n').enumerate() {
            let line_end = line_start + line.len();
            let mut i = 0;
            let bytes = line.as_bytes();
            while i < bytes.len() {
                let abs = line_start + i;
                while cursor < ranges.len() && ranges[cursor].1 <= abs {
                    cursor += 1;
                }
                if let Some(&(start, end)) = ranges.get(cursor)
                    && start <= abs
                {
                    if end >= line_end {
                        break;
                    }
                    i = end - line_start;
                    continue;
                }
                if bytes[i] == b'#' && (i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') {
                    let text = line[i + 1..].trim_end_matches(['\r', ' ', '\t']).to_string();
                    out.push(Comment { line: n + 1, col: line[..i].chars().count() + 1, text });
                    break;
                }
                i += 1;
            }
            line_start = line_end + 1;
        }
        Ok(out)
    }

    /// End byte of a quoted or block scalar starting at `start`; plain scalars cannot hold
    /// a comment-like ` #`, so they need no range.
    fn scalar_end(&self, start: usize, style: TScalarStyle) -> Option<usize> {
        let b = self.text.as_bytes();
        match style {
            TScalarStyle::DoubleQuoted => {
                let mut i = start.checked_add(1)?;
                while i < b.len() {
                    match b[i] {
                        b'\\' => i += 2,
                        b'"' => return Some(i + 1),
                        _ => i += 1,
                    }
                }
                Some(b.len())
            }
            TScalarStyle::SingleQuoted => {
                let mut i = start.checked_add(1)?;
                while i < b.len() {
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        return Some(i + 1);
                    }
                    i += 1;
                }
                Some(b.len())
            }
            TScalarStyle::Literal | TScalarStyle::Folded => {
                // The block runs over the following lines that are blank or indented deeper
                // than the line holding the indicator.
                let line_begin = self.text[..start].rfind('\n').map_or(0, |p| p + 1);
                let indent = indentation(&self.text[line_begin..]);
                let mut pos = self.text[start..].find('\n').map_or(b.len(), |p| start + p);
                let mut end = pos;
                while pos < b.len() {
                    let next = pos + 1;
                    let line_end = self.text[next..].find('\n').map_or(b.len(), |p| next + p);
                    let line = &self.text[next..line_end];
                    if line.trim().is_empty() {
                        pos = line_end;
                        continue;
                    }
                    if indentation(line) > indent {
                        end = line_end;
                        pos = line_end;
                    } else {
                        break;
                    }
                }
                Some(end)
            }
            _ => None,
        }
    }
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Maps the parser's character offsets to byte offsets.
struct CharIndex {
    starts: Vec<usize>,
    len: usize,
}

impl CharIndex {
    fn new(text: &str) -> Self {
        Self { starts: text.char_indices().map(|(b, _)| b).collect(), len: text.len() }
    }
    fn byte(&self, char_index: usize) -> usize {
        self.starts.get(char_index).copied().unwrap_or(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> Value {
        resolve_plain(s.to_string())
    }

    #[test]
    fn plain_scalars_resolve_like_go_yaml_v3() {
        assert_eq!(plain("42"), Value::Int(42));
        assert_eq!(plain("-0x1F"), Value::Int(-31));
        assert_eq!(plain("0o17"), Value::Int(15));
        assert_eq!(plain("017"), Value::Int(15));
        assert_eq!(plain("1_000"), Value::Int(1000));
        assert_eq!(plain("1.5"), Value::Float(1.5));
        assert_eq!(plain("1e3"), Value::Float(1000.0));
        assert_eq!(plain(".5"), Value::Float(0.5));
        assert_eq!(plain("True"), Value::Bool(true));
        assert_eq!(plain("yes"), Value::Str("yes".into()));
        assert_eq!(plain("~"), Value::Null);
        assert_eq!(plain("2001-12-14"), Value::Str("2001-12-14".into()));
        assert_eq!(plain("1.2.3"), Value::Str("1.2.3".into()));
        assert_eq!(plain("+"), Value::Str("+".into()));
        assert_eq!(plain("99999999999999999999"), Value::Float(99999999999999999999.0));
    }

    #[test]
    fn comments_are_found_outside_scalars_only() {
        let src = "# head\na: \"x # not\" # inline\nb: |\n  #not a comment\n  more\n# foot\nc: 'y'\n";
        let c = CommentScanner::new(src).scan().unwrap();
        let texts: Vec<_> = c.iter().map(|c| (c.line, c.text.as_str())).collect();
        assert_eq!(texts, vec![(1, " head"), (2, " inline"), (6, " foot")]);
    }

    #[test]
    fn builds_ordered_tree_with_comments() {
        let src = "#top\na: 1\nl:\n  - x\n  #in list\n  - y\nn:\n  m: true\n";
        let b = parse(src).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(
            b[0],
            vec![
                Item::Comment("top".into()),
                Item::Entry("a".into(), Value::Int(1)),
                Item::Entry(
                    "l".into(),
                    Value::List(vec![
                        ListItem::Value(Value::Str("x".into())),
                        ListItem::Comment("in list".into()),
                        ListItem::Value(Value::Str("y".into())),
                    ])
                ),
                Item::Entry("n".into(), Value::Map(vec![Item::Entry("m".into(), Value::Bool(true))])),
            ]
        );
    }

    #[test]
    fn refuses_bad_structure() {
        assert!(parse("a: 1\na: 2\n").unwrap_err().contains("duplicate key"));
        assert!(parse("- 1\n- 2\n").unwrap_err().contains("must be a mapping"));
        assert!(parse("a: [1, 2\n").unwrap_err().contains("syntax"));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(&format!("a: {deep}\n")).unwrap_err().contains("nesting"));
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n";
        assert!(parse(bomb).unwrap_err().contains("aliases"));
    }
}
