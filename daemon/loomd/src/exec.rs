//! `loom weaver exec`: a command run inside a weaver, its streams carried over an upgraded
//! HTTP connection in frames (see [`loom_core::api::exec_frame`]).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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

/// The environment of the process that enters a weaver, before the weaver's own is sourced.
const EXEC_ENV: &[(&str, &str)] =
    &[("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), ("HOME", "/root"), ("LANG", "C.UTF-8")];

/// Every namespace of a weaver but time (nspawn makes none).
const WEAVER_NAMESPACES: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP;

/// A weaver's first process, held by a pidfd so that a pid reused after it ended can never be
/// entered in its place.
#[derive(Debug)]
struct Target {
    pidfd: OwnedFd,
}

impl Target {
    /// Opens `pid` and checks, through the pidfd, that it is still the process whose cgroup path
    /// has `cgroup_marker` as a component.
    fn open(pid: i32, cgroup_marker: &str) -> Result<Target, ApiError> {
        let gone = || {
            ApiError::new(
                ErrorCode::Conflict,
                "the weaver's first process has ended: `loom weaver inspect` shows its state",
            )
        };
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(gone());
        }
        // SAFETY: the kernel just handed us this fd, and nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|_| gone())?;
        let in_weaver =
            cgroups.lines().filter_map(|l| l.splitn(3, ':').nth(2)).any(|p| p.split('/').any(|c| c == cgroup_marker));
        // The pid could have been reused between pidfd_open and the read: only if the pidfd's
        // process still lives did the read describe it.
        // SAFETY: signal 0 through a pidfd we own only checks that its process exists.
        let alive = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), 0, 0, 0) } == 0;
        if !alive {
            return Err(gone());
        }
        if !in_weaver {
            tracing::error!(pid, cgroup_marker, "a weaver's recorded pid is outside its cgroup; refusing exec");
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the weaver's recorded first process is no longer in the weaver: stop and start it",
            ));
        }
        Ok(Target { pidfd })
    }

    /// In the child between fork and exec: becomes root of the weaver's user namespace inside
    /// all its namespaces, at `/workspace`. A pid namespace only takes children, so this forks
    /// once more: the parent stays behind to pass the exit status on, the child goes on to exec.
    fn enter(&self) -> std::io::Result<()> {
        let last = |rc: libc::c_long| if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
        // SAFETY: plain syscalls on integers and a pidfd we own; no allocation, as a forked
        // child of a threaded process requires.
        unsafe {
            last(libc::setns(self.pidfd.as_raw_fd(), WEAVER_NAMESPACES) as libc::c_long)?;
            last(libc::setgroups(0, std::ptr::null()) as libc::c_long)?;
            last(libc::setresgid(0, 0, 0) as libc::c_long)?;
            last(libc::setresuid(0, 0, 0) as libc::c_long)?;
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => {
                    // The process left behind is the one loomd holds; if it dies, so does this.
                    last(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) as libc::c_long)?;
                    if libc::chdir(c"/workspace".as_ptr()) != 0 {
                        last(libc::chdir(c"/".as_ptr()) as libc::c_long)?;
                    }
                    Ok(())
                }
                child => {
                    // Close every fd but the standard three, among them the pipe on which the
                    // spawning side waits for exec: its end is the grandchild's exec now.
                    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                    let mut status = 0;
                    while libc::waitpid(child, &mut status, 0) < 0 {
                        if *libc::__errno_location() != libc::EINTR {
                            libc::_exit(255);
                        }
                    }
                    let code =
                        if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
                    libc::_exit(code)
                }
            }
        }
    }
}

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
    let (plan, leader_pid, profile) = daemon.exec_plan(caller, key, &req)?;
    let target = Target::open(leader_pid, &plan.cgroup_marker)?;
    let filters = crate::sandbox::Filters::new(profile)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("preparing the exec sandbox: {e}")))?;
    // Nothing of the weaver reaches this host process: a fixed program, a fixed environment.
    // The weaver's own environment is sourced by the weaver's shell, once inside.
    let mut cmd = std::process::Command::new(&plan.argv[0]);
    cmd.args(&plan.argv[1..]).env_clear().envs(EXEC_ENV.iter().copied());
    if req.tty {
        cmd.env("TERM", "xterm-256color");
    }
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
        // SAFETY: between fork and exec the child only makes syscalls (cgroups, session, the
        // terminal, entering the weaver, confining itself); nothing allocates.
        unsafe {
            cmd.pre_exec(move || {
                join_cgroups(&joins)?;
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                target.enter()?;
                filters.confine()
            });
        }
        Some(pty.master)
    } else {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // SAFETY: as above, with a process group instead of a session.
        unsafe {
            cmd.pre_exec(move || {
                join_cgroups(&joins)?;
                nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
                    .map_err(std::io::Error::from)?;
                target.enter()?;
                filters.confine()
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
