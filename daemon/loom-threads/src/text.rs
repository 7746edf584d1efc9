//! How text is prepared for the FTS5 index and how a user's query becomes an FTS5 expression.
//!
//! The index has two columns tokenized by `unicode61` with `tokenchars '_-./:'`:
//! - `text` keeps identifiers and paths as one token (`parse_config`, `src/lib.rs`, `E0308`,
//!   `std::io`), with sentence punctuation peeled off their ends (`done.` → `done`);
//! - `parts` is the same text with `_-./:` turned into spaces, so `lib.rs` or `config` still find
//!   `src/lib.rs` and `parse_config` (as phrases), ranked below exact matches.
//!
//! A user's query is never passed to FTS5 as is: it is cut into the same tokens and each one is
//! quoted, so no input can cause an FTS5 syntax error.

/// Characters that belong inside a token besides letters and digits.
pub const TOKEN_CHARS: &str = "_-./:";
/// Characters peeled off a token's ends (`_` is kept: `__init__`).
const EDGE_CHARS: &[char] = &['-', '.', '/', ':'];
/// Most tokens a query may have; more are ignored.
pub const MAX_QUERY_TOKENS: usize = 16;

fn is_token_char(c: char) -> bool {
    c.is_alphanumeric() || TOKEN_CHARS.contains(c)
}

/// Tokens of `text`, trimmed of edge punctuation, in order.
fn tokens(text: &str) -> impl Iterator<Item = (&str, usize)> {
    // (token, byte offset just past the untrimmed run)
    let mut rest = text;
    let mut base = 0usize;
    std::iter::from_fn(move || {
        loop {
            let start = rest.find(is_token_char)?;
            let after = rest[start..].find(|c: char| !is_token_char(c)).map(|i| start + i).unwrap_or(rest.len());
            let run = &rest[start..after];
            let end_abs = base + after;
            rest = &rest[after..];
            base = end_abs;
            let t = run.trim_matches(EDGE_CHARS);
            if !t.is_empty() {
                return Some((t, end_abs));
            }
        }
    })
}

/// The `text` column's indexed form: edge punctuation of each token replaced by spaces, so the
/// tokenizer sees `done` in `done.` but still `src/lib.rs` whole. Same length and same token
/// count as `text`, so FTS5 snippets computed over the original text highlight the right words.
/// A run made only of punctuation (`...`) stays as it is, to keep the token count.
pub fn whole_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    while let Some(off) = text[last..].find(is_token_char) {
        let start = last + off;
        let end = text[start..].find(|c: char| !is_token_char(c)).map(|i| start + i).unwrap_or(text.len());
        out.push_str(&text[last..start]);
        let run = &text[start..end];
        let trimmed = run.trim_matches(EDGE_CHARS);
        if trimmed.is_empty() {
            out.push_str(run);
        } else {
            let lead = run.len() - run.trim_start_matches(EDGE_CHARS).len();
            let tail = run.len() - lead - trimmed.len();
            out.extend(std::iter::repeat_n(' ', lead));
            out.push_str(trimmed);
            out.extend(std::iter::repeat_n(' ', tail));
        }
        last = end;
    }
    out.push_str(&text[last..]);
    out
}

/// The `parts` column's text: every token character that is not a letter or digit becomes a space.
pub fn parts_text(text: &str) -> String {
    text.chars().map(|c| if TOKEN_CHARS.contains(c) { ' ' } else { c }).collect()
}

/// A user's query turned into FTS5 expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtsQuery {
    /// Every token matched whole in the `text` column.
    pub exact: String,
    /// Every token matched as a phrase of its parts in the `parts` column, which also finds
    /// a word inside an identifier or path (`config` in `parse_config`).
    pub parts: Option<String>,
}

fn quote(s: &str) -> String {
    // Tokens hold no quotes, but quoting is the one place that must never be wrong.
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Builds the FTS5 expressions for `query`, or `None` when it holds nothing searchable.
/// A token directly followed by `*` is matched as a prefix.
pub fn fts_query(query: &str) -> Option<FtsQuery> {
    let mut exact = Vec::new();
    let mut parts = Vec::new();
    for (tok, end) in tokens(query).take(MAX_QUERY_TOKENS) {
        let prefix = query[end..].starts_with('*');
        let star = if prefix { " *" } else { "" };
        exact.push(format!("text : {}{star}", quote(&tok.to_lowercase())));
        let p: Vec<&str> = tok.split(|c: char| TOKEN_CHARS.contains(c)).filter(|s| !s.is_empty()).collect();
        if p.is_empty() {
            continue;
        }
        parts.push(format!("parts : {}{star}", quote(&p.join(" ").to_lowercase())));
    }
    if exact.is_empty() {
        return None;
    }
    Some(FtsQuery { exact: exact.join(" AND "), parts: (!parts.is_empty()).then(|| parts.join(" AND ")) })
}

/// Cuts `s` to at most `max` bytes on a char boundary.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_whole(input: &str, expected: &str) {
        assert_eq!(whole_text(input), expected, "whole_text({input:?})");
    }

    #[test]
    fn whole_text_peels_punctuation_off_token_ends_only() {
        check_whole("fixed parse_config.", "fixed parse_config ");
        check_whole("see src/lib.rs: line", "see src/lib.rs  line");
        check_whole("error[E0308]: mismatched", "error[E0308]: mismatched");
        check_whole("/workspace/a.sh", " workspace/a.sh");
        check_whole("... --x", "...   x");
        check_whole("std::io::Read", "std::io::Read");
        check_whole("héllo wörld.", "héllo wörld ");
        check_whole("", "");
    }

    #[test]
    fn parts_text_splits_identifiers() {
        assert_eq!(parts_text("src/lib.rs parse_config"), "src lib rs parse config");
    }

    #[test]
    fn queries_are_quoted_and_never_raw() {
        let q = fts_query("parse_config").unwrap();
        assert_eq!(q.exact, "text : \"parse_config\"");
        assert_eq!(q.parts.as_deref(), Some("parts : \"parse config\""));
        let q = fts_query("E0308").unwrap();
        assert_eq!(q.exact, "text : \"e0308\"");
        assert_eq!(q.parts.as_deref(), Some("parts : \"e0308\""));
        assert_eq!(fts_query("..."), None);
        let q = fts_query("\"NEAR(a b) OR c* -d").unwrap();
        assert_eq!(
            q.exact,
            "text : \"near\" AND text : \"a\" AND text : \"b\" AND text : \"or\" AND text : \"c\" * AND text : \"d\""
        );
        assert_eq!(fts_query("  ()*\"'  "), None);
        let q = fts_query("src/lib.rs.").unwrap();
        assert_eq!(q.exact, "text : \"src/lib.rs\"");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate_str("héllo", 2), "h");
        assert_eq!(truncate_str("abc", 10), "abc");
    }
}
