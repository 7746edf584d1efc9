//! Which `--repo` values loomd may act on: remote git URLs only. A local path is the CLI's to
//! read, with the caller's rights, and reaches loomd as an upload.

use crate::weaver::SpecError;

/// Accepts a git URL loomd may clone: https, http, git or ssh (also scp-like `user@host:path`).
/// Anything git would read as a local path, a `file:` URL or a transport helper (`ext::`) is
/// refused, so that loomd never reads the host's files for a client.
pub fn check_remote_repo(repo: &str) -> Result<(), SpecError> {
    let bad = |why| Err(SpecError::Repo(repo.to_string(), why));
    if repo.is_empty() || repo.len() > 4096 || repo.chars().any(|c| c.is_control() || c == ' ') {
        return bad("give a git URL without spaces or control characters");
    }
    if repo.starts_with('-') {
        return bad("it must not start with '-'");
    }
    let lower = repo.to_ascii_lowercase();
    if repo.starts_with(['/', '.', '~']) || lower.starts_with("file:") {
        return Err(SpecError::LocalRepo(repo.to_string()));
    }
    for scheme in ["https://", "http://", "git://", "ssh://", "git+ssh://", "ssh+git://"] {
        if let Some(rest) = lower.strip_prefix(scheme) {
            let host = rest.split(['/', ':']).next().unwrap_or("");
            let host = host.rsplit('@').next().unwrap_or("");
            if host.is_empty() || host.starts_with('-') {
                return bad("the URL has no host");
            }
            return Ok(());
        }
    }
    if repo.contains("::") {
        return bad("git transport helpers (like ext::) are not allowed: use https, http, git or ssh");
    }
    if repo.contains("://") {
        return bad("use an https, http, git or ssh URL");
    }
    // scp-like `[user@]host:path`: git reads it so only when no '/' comes before the ':'.
    if let Some((host, _)) = repo.split_once(':')
        && !host.contains('/')
    {
        let host = host.rsplit('@').next().unwrap_or("");
        if host.is_empty() || host.starts_with('-') {
            return bad("the URL has no host");
        }
        return Ok(());
    }
    // git would take anything else for a path relative to loomd's working directory.
    Err(SpecError::LocalRepo(repo.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(repo: &str, expected: Result<(), &str>) {
        match (check_remote_repo(repo), expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{repo}: {e}"),
            (got, expected) => panic!("{repo}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn remote_urls_pass_and_local_paths_are_refused() {
        for ok in [
            "https://github.com/team/app.git",
            "http://127.0.0.1:9418/app",
            "git://127.0.0.1:9418/app",
            "ssh://git@host/team/app.git",
            "git@github.com:team/app.git",
            "host:team/app",
        ] {
            check(ok, Ok(()));
        }
        for local in ["/etc", "./src", "../x", "~/src", ".", "file:///etc", "FILE:///etc", "relative/dir", "repo"] {
            check(local, Err("is a local path"));
        }
        check("ext::sh -c touch% /tmp/pwned", Err("invalid --repo"));
        check("ext::x", Err("transport helpers"));
        check("ftp://host/x", Err("https, http, git or ssh"));
        check("ssh://-oProxyCommand=x/y", Err("no host"));
        check("-oProxyCommand=x:y", Err("must not start with '-'"));
        check("user@-oProxyCommand=x:y", Err("no host"));
        check("https://", Err("no host"));
        check("https://host/a\nb", Err("control characters"));
        check("https://host/a b", Err("control characters"));
    }
}
