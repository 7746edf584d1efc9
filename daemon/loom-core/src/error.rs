//! Errors for log lines and messages: the one place an error's sources are joined.

/// An error with all its sources, for a log line or a message: `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);
    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn every_source_is_joined_in_order() {
        let e = Outer(Middle(std::io::Error::other("inner")));
        assert_eq!(super::error_chain(&e), "outer: middle: inner");
        assert_eq!(super::error_chain(&std::io::Error::other("alone")), "alone");
    }
}
