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
    /// The tokens of `exact`, for ranking.
    pub exact_terms: Vec<Term>,
    /// The phrases of `parts`, for ranking.
    pub parts_terms: Vec<Term>,
}

/// One query term as the index sees it: a phrase of lowercase tokens, maybe a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub tokens: Vec<String>,
    pub prefix: bool,
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
    let mut exact_terms = Vec::new();
    let mut parts_terms = Vec::new();
    for (tok, end) in tokens(query).take(MAX_QUERY_TOKENS) {
        let prefix = query[end..].starts_with('*');
        let star = if prefix { " *" } else { "" };
        let lower = tok.to_lowercase();
        exact.push(format!("text : {}{star}", quote(&lower)));
        exact_terms.push(Term { tokens: vec![lower.clone()], prefix });
        let p: Vec<String> =
            lower.split(|c: char| TOKEN_CHARS.contains(c)).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        if p.is_empty() {
            continue;
        }
        parts.push(format!("parts : {}{star}", quote(&p.join(" "))));
        parts_terms.push(Term { tokens: p, prefix });
    }
    if exact.is_empty() {
        return None;
    }
    Some(FtsQuery {
        exact: exact.join(" AND "),
        parts: (!parts.is_empty()).then(|| parts.join(" AND ")),
        exact_terms,
        parts_terms,
    })
}

/// Term frequencies and length of one document, as the index sees its `text` column
/// (`parts == false`) or its `parts` column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocStats {
    pub len: usize,
    pub tf: Vec<u32>,
}

fn eq_lower(doc: &str, q: &str) -> bool {
    if doc.is_ascii() { doc.eq_ignore_ascii_case(q) } else { doc.to_lowercase() == q }
}

fn term_matches(window: &[&str], t: &Term) -> bool {
    let n = t.tokens.len();
    window.len() >= n
        && window[window.len() - n..].iter().zip(&t.tokens).enumerate().all(|(i, (d, q))| {
            if t.prefix && i == n - 1 { d.get(..q.len()).is_some_and(|p| eq_lower(p, q)) } else { eq_lower(d, q) }
        })
}

/// Counts, without allocating per token, how often each term occurs in `text` tokenized the
/// way the index tokenizes `whole_text(text)` or `parts_text(text)`.
pub fn doc_stats(text: &str, parts: bool, terms: &[Term]) -> DocStats {
    let longest = terms.iter().map(|t| t.tokens.len()).max().unwrap_or(1).max(1);
    let mut window: Vec<&str> = Vec::with_capacity(longest + 1);
    let mut tf = vec![0u32; terms.len()];
    let mut len = 0;
    let split: fn(char) -> bool = if parts { |c| !c.is_alphanumeric() } else { |c| !is_token_char(c) };
    for raw in text.split(split) {
        let tok = if parts { raw } else { raw.trim_matches(EDGE_CHARS) };
        if tok.is_empty() {
            continue;
        }
        len += 1;
        if window.len() == longest {
            window.remove(0);
        }
        window.push(tok);
        for (i, t) in terms.iter().enumerate() {
            if term_matches(&window, t) {
                tf[i] += 1;
            }
        }
    }
    DocStats { len, tf }
}

/// BM25's term-frequency part (k1 = 1.2, b = 0.75) summed over the terms, every term weighted
/// alike: the candidates all contain every term, so a corpus IDF would only reweigh terms
/// against each other, and computing it means reading each term's whole posting list.
pub fn score(doc: &DocStats, avgdl: f64) -> f64 {
    const K1: f64 = 1.2;
    const B: f64 = 0.75;
    let norm = K1 * (1.0 - B + B * doc.len.max(1) as f64 / avgdl.max(1.0));
    doc.tf.iter().map(|&tf| f64::from(tf) * (K1 + 1.0) / (f64::from(tf) + norm)).sum()
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
        assert_eq!(q.parts_terms, vec![Term { tokens: vec!["parse".into(), "config".into()], prefix: false }]);
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
    fn scoring_counts_phrases_and_prefixes() {
        let t = |toks: &[&str], prefix| Term { tokens: toks.iter().map(|s| s.to_string()).collect(), prefix };
        let text = "see src/lib.rs and Lib.rs, not librs";
        let d = doc_stats(text, true, &[t(&["lib", "rs"], false), t(&["rs", "lib"], false), t(&["lib"], true)]);
        assert_eq!(d, DocStats { len: 9, tf: vec![2, 0, 3] });
        let d = doc_stats(text, false, &[t(&["src/lib.rs"], false), t(&["lib.rs"], false), t(&["librs"], false)]);
        assert_eq!(d, DocStats { len: 6, tf: vec![1, 1, 1] });
        let short = doc_stats("lib.rs", false, &[t(&["lib.rs"], false)]);
        assert!(score(&short, 7.0) > score(&d, 7.0) / 3.0);
        assert_eq!(score(&doc_stats("nothing", false, &[t(&["x"], false)]), 1.0), 0.0);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate_str("héllo", 2), "h");
        assert_eq!(truncate_str("abc", 10), "abc");
    }
}
