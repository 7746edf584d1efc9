//! `loom weaver exec`: a command run inside a weaver, its streams carried over an upgraded
//! HTTP connection in frames (see [`loom_core::api::exec_frame`]).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Response as HttpResponse, StatusCode};
use hyper_util::rt::TokioIo;
use loom_core::access::Caller;
use loom_core::api::{ErrorCode, ExecRequest, exec_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::daemon::{ApiError, Daemon};
use crate::http::Body;
use crate::shim::join_cgroups;

pub const UPGRADE_PROTOCOL: &str = "loom-exec";

pub async fn start(
    daemon: Arc<Daemon>,
    caller: &Caller,
    key: &str,
    req: ExecRequest,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<HttpResponse<Body>, ApiError> {
    let Some(on_upgrade) = on_upgrade else {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("exec needs `Connection: upgrade` and `Upgrade: {UPGRADE_PROTOCOL}`"),
        ));
    };
    let (plan, env) = daemon.exec_plan(caller, key, &req)?;
    let mut cmd = std::process::Command::new(&plan.argv[0]);
    cmd.args(&plan.argv[1..]).env_clear().envs(env);
    let joins = plan.join_cgroups.clone();
    let pty = if req.tty {
        let size = req.term_size.map(|(rows, cols)| nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let pty = nix::pty::openpty(size.as_ref(), None)
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("allocating a terminal: {e}")))?;
        let slave = pty.slave;
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|e| ApiError::new(ErrorCode::Internal, format!("duplicating the terminal: {e}")))
        };
        cmd.stdin(Stdio::from(dup(&slave)?)).stdout(Stdio::from(dup(&slave)?)).stderr(Stdio::from(slave));
        // SAFETY: between fork and exec the child only joins cgroups, starts a session and takes
        // the terminal on fd 0: plain syscalls, no allocation.
        unsafe {
            cmd.pre_exec(move || {
                join_cgroups(&joins)?;
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Some(pty.master)
    } else {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // SAFETY: the child only joins cgroups and starts a process group between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                join_cgroups(&joins)?;
                nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
                    .map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        None
    };
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("starting {}: {e}", plan.argv[0])))?;
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(io) => TokioIo::new(io),
            Err(e) => {
                tracing::debug!(error = %e, "exec client went away before the upgrade");
                return;
            }
        };
        if let Err(e) = pump(io, &mut child, pty).await {
            tracing::debug!(error = %e, "exec stream ended early");
        }
        // A client gone mid-stream must not leave the command running.
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = child.kill().await;
    });
    Ok(HttpResponse::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, UPGRADE_PROTOCOL)
        .body(Empty::<Bytes>::new().map_err(|never| match never {}).boxed())
        .unwrap_or_default())
}

async fn forward(mut from: impl AsyncRead + Unpin, kind: u8, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(exec_frame::encode(kind, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn pump<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    child: &mut tokio::process::Child,
    pty: Option<OwnedFd>,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let mut readers = vec![];
    let master = pty.map(|fd| tokio::fs::File::from_std(std::fs::File::from(fd)));
    let master_raw = master.as_ref().map(|m| m.as_raw_fd());
    let mut stdin_sink: Option<Box<dyn AsyncWrite + Unpin + Send>> = None;
    if let Some(master) = master {
        let reader = master.try_clone().await?;
        readers.push(tokio::spawn(forward(reader, exec_frame::STDOUT, tx.clone())));
        stdin_sink = Some(Box::new(master));
    } else {
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(forward(out, exec_frame::STDOUT, tx.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(forward(err, exec_frame::STDERR, tx.clone())));
        }
        if let Some(stdin) = child.stdin.take() {
            stdin_sink = Some(Box::new(stdin));
        }
    }
    drop(tx);
    let mut inbuf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    let status = loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(f) => wr.write_all(&f).await?,
                None => break child.wait().await?,
            },
            n = rd.read(&mut chunk) => {
                let n = n?;
                if n == 0 {
                    // The client hung up: nobody is left to read the output.
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "client closed the exec stream"));
                }
                inbuf.extend_from_slice(&chunk[..n]);
                while let Some((kind, data, used)) = exec_frame::decode(&inbuf).map_err(std::io::Error::other)? {
                    apply_client_frame(kind, data, &mut stdin_sink, master_raw).await?;
                    inbuf.drain(..used);
                }
            }
        }
    };
    // With a terminal, the reader ends only when the last holder of the terminal exits; the
    // command's own exit is what counts.
    for r in readers {
        if master_raw.is_some() {
            r.abort();
        } else {
            let _ = r.await;
        }
    }
    while let Ok(f) = rx.try_recv() {
        wr.write_all(&f).await?;
    }
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    wr.write_all(&exec_frame::encode(exec_frame::EXIT, &code.to_be_bytes())).await?;
    wr.flush().await?;
    wr.shutdown().await?;
    Ok(())
}

/// Acts on one frame from the client: input for the command, its end, or a terminal resize.
async fn apply_client_frame(
    kind: u8,
    data: &[u8],
    stdin_sink: &mut Option<Box<dyn AsyncWrite + Unpin + Send>>,
    master_raw: Option<std::os::fd::RawFd>,
) -> std::io::Result<()> {
    match (kind, master_raw) {
        (exec_frame::STDIN, _) => {
            if let Some(s) = stdin_sink.as_mut() {
                s.write_all(data).await?;
                s.flush().await?;
            }
        }
        // A terminal has no end of input of its own; the command reads ^D from it.
        (exec_frame::STDIN_EOF, None) => *stdin_sink = None,
        (exec_frame::RESIZE, Some(fd)) if data.len() == 4 => {
            let ws = nix::libc::winsize {
                ws_row: u16::from_be_bytes([data[0], data[1]]),
                ws_col: u16::from_be_bytes([data[2], data[3]]),
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives on our stack.
            unsafe {
                nix::libc::ioctl(fd, nix::libc::TIOCSWINSZ, &ws);
            }
        }
        _ => {}
    }
    Ok(())
}
