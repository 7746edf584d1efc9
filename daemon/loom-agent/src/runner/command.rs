//! Running a command for the loop (`--until`, `--check`, a bring-your-own agent, git): in
//! its own process group, output captured and capped, bounded in time.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::tools::{GroupGuard, read_capped, truncate_middle};

/// Result of one command (`--until`, `--check`, a bring-your-own agent).
#[derive(Debug)]
pub(super) struct CmdResult {
    pub(super) code: Option<i32>,
    pub(super) output: String,
    pub(super) timed_out: bool,
}

impl CmdResult {
    pub(super) fn passed(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

/// Runs `argv` in `dir` in its own process group, with `stdin` fed, output captured (capped).
pub(super) async fn run_command(
    argv: &[String],
    dir: &Path,
    stdin: Option<&str>,
    timeout: Duration,
    cap: usize,
    echo: bool,
) -> std::io::Result<CmdResult> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(dir)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove(crate::spool::TOKEN_ENV)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|p| p as i32);
    // If this future is dropped (shutdown, wall clock), the whole group goes with it.
    let mut guard = GroupGuard(pgid);
    if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
        let input = input.to_owned();
        tokio::spawn(async move {
            let _ = w.write_all(input.as_bytes()).await;
        });
    }
    let (o, e) = if echo {
        // Shown as it comes, for `loom weaver logs -f`; kept capped for the thread.
        (
            tokio::spawn(read_capped(child.stdout.take().map(|r| Tee(r, false)), cap.max(1024) * 2)),
            tokio::spawn(read_capped(child.stderr.take().map(|r| Tee(r, true)), cap.max(1024) * 2)),
        )
    } else {
        (
            tokio::spawn(read_capped(child.stdout.take(), cap.max(1024) * 2)),
            tokio::spawn(read_capped(child.stderr.take(), cap.max(1024) * 2)),
        )
    };
    let crate::tools::Finished { status, timed_out, stdout: mut output, stderr: e } =
        crate::tools::finish(&mut child, &mut guard, timeout, o, e).await;
    if !e.is_empty() {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&e);
    }
    Ok(CmdResult { code: status.and_then(|s| s.code()), output: truncate_middle(&output, cap), timed_out })
}

/// A reader that copies what it reads to our stdout (or stderr, when `.1`). The write is a
/// plain blocking write of a small chunk to a pipe, which keeps every byte in order.
pub(super) struct Tee<R>(R, bool);

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tee<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::io::Write;
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &r {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                let _ = if self.1 { std::io::stderr().write_all(new) } else { std::io::stdout().write_all(new) };
            }
        }
        r
    }
}

/// Resolves when a shutdown is requested; never, if nobody can request one any more.
pub(super) async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

pub(super) fn sh(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.into()]
}
