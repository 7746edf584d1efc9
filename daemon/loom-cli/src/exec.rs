//! The client side of `loom weaver exec`: frames between the terminal and loomd.

use std::io::Write;

use hyper::Method;
use hyper_util::rt::TokioIo;
use loom_core::api::{ExecRequest, exec_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{CliError, Client};

/// Puts the terminal in raw mode for a `-t` session and restores it on drop.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter(tty: bool) -> RawMode {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        if !tty {
            return RawMode(None);
        }
        let stdin = std::io::stdin();
        let Ok(orig) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = orig.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        RawMode(Some(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(orig) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, orig);
        }
    }
}

fn term_size() -> Option<(u16, u16)> {
    let mut ws = nix::libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct on our stack.
    let r = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// What `loom weaver ssh` runs without a command: the weaver's bash as a login shell where it
/// has one, else its sh.
pub fn login_shell() -> Vec<String> {
    ["/bin/sh", "-c", "if [ -x /bin/bash ]; then exec /bin/bash -l; fi; exec /bin/sh -l"].map(String::from).to_vec()
}

pub async fn run(client: &Client, key: &str, command: Vec<String>, tty: bool) -> Result<i32, CliError> {
    let req = ExecRequest { command, tty, term_size: if tty { term_size() } else { None } };
    let body = serde_json::to_vec(&req).unwrap_or_default();
    let resp = client.send(Method::POST, &format!("/v1/weavers/{key}/exec"), Some(body), Some("loom-exec")).await?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        return Err(CliError::new("internal", format!("loomd did not start the exec stream ({})", resp.status())));
    }
    let io = hyper::upgrade::on(resp).await.map_err(|e| CliError::new("unavailable", format!("exec stream: {e}")))?;
    let (mut rd, mut wr) = tokio::io::split(TokioIo::new(io));
    let _raw = RawMode::enter(tty);
    // One writer, fed by stdin and (with a terminal) by window-size changes.
    let (frames, mut outgoing) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        // Keep the write half open: closing it would read as a client that left.
        std::future::pending::<()>().await;
    });
    if tty {
        let frames = frames.clone();
        tokio::spawn(async move {
            let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some((rows, cols)) = term_size() {
                    let mut size = rows.to_be_bytes().to_vec();
                    size.extend_from_slice(&cols.to_be_bytes());
                    if frames.send(exec_frame::encode(exec_frame::RESIZE, &size)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = frames.send(exec_frame::encode(exec_frame::STDIN_EOF, &[])).await;
                    return;
                }
                Ok(n) => {
                    if frames.send(exec_frame::encode(exec_frame::STDIN, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut inbuf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = rd.read(&mut chunk).await.map_err(|e| CliError::new("unavailable", format!("exec stream: {e}")))?;
        if n == 0 {
            return Err(CliError::new(
                "unavailable",
                "loomd closed the exec stream before the command's exit code arrived",
            ));
        }
        inbuf.extend_from_slice(&chunk[..n]);
        while let Some((kind, data, used)) = exec_frame::decode(&inbuf).map_err(|e| CliError::new("internal", e))? {
            match kind {
                exec_frame::STDOUT => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(data);
                    let _ = out.flush();
                }
                exec_frame::STDERR => {
                    let _ = std::io::stderr().lock().write_all(data);
                }
                exec_frame::EXIT if data.len() == 4 => {
                    return Ok(i32::from_be_bytes([data[0], data[1], data[2], data[3]]));
                }
                _ => {}
            }
            inbuf.drain(..used);
        }
    }
}
