//! A small client of the systemd seam, for debugging a host and for the tests that run it
//! inside a container booted by the harness (where it uses the container's own system bus, as
//! loomd will). Prints `key=value` lines.
//!
//! ```text
//! loom-systemd-probe [--address ADDR] start ID NAME [--simple] [--keep|--no-keep]
//!                    [--memory BYTES] [--tasks N] [--cpu-usec N] [--env K=V]... -- ARGV...
//! loom-systemd-probe [--address ADDR] status UNIT | stop UNIT | reset-failed UNIT | list
//! loom-systemd-probe serve-once SOCKET   # answer one connection on a Unix socket with "ok"
//! ```

use std::process::ExitCode;

use loom_systemd::{DbusSystemd, ServiceType, SystemdManager, TransientServiceSpec};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve-once") {
        return serve_once(args.get(1));
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loom-systemd-probe: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loom-systemd-probe: {}", loom_core::error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

async fn run(mut args: Vec<String>) -> Result<(), BoxError> {
    let mut address = None;
    if args.first().map(String::as_str) == Some("--address") {
        args.remove(0);
        address = Some(take(&mut args, "--address")?);
    }
    let sd = match address {
        Some(a) => DbusSystemd::connect(&a).await?,
        None => DbusSystemd::connect_system().await?,
    };
    let cmd = take(&mut args, "a command")?;
    match cmd.as_str() {
        "start" => {
            let id = take(&mut args, "ID")?;
            let name = take(&mut args, "NAME")?;
            let mut spec = TransientServiceSpec::new(id, name, Vec::new());
            while !args.is_empty() {
                let a = args.remove(0);
                match a.as_str() {
                    "--simple" => spec.service_type = ServiceType::Simple,
                    "--no-keep" => spec.remain_after_exit = false,
                    "--keep" => spec.remain_after_exit = true,
                    "--memory" => spec.memory_max = Some(take(&mut args, "--memory")?.parse()?),
                    "--tasks" => spec.tasks_max = Some(take(&mut args, "--tasks")?.parse()?),
                    "--cpu-usec" => spec.cpu_quota_per_sec_usec = Some(take(&mut args, "--cpu-usec")?.parse()?),
                    "--env" => spec.environment.push(take(&mut args, "--env")?),
                    "--" => {
                        spec.argv = std::mem::take(&mut args);
                    }
                    other => return Err(format!("unknown option {other:?}").into()),
                }
            }
            let started = sd.start_transient_service(&spec).await?;
            println!("unit={}", started.name);
            println!("job={}", started.job);
            println!("main_pid={}", started.main_pid);
            println!("control_group={}", started.control_group);
        }
        "status" => {
            let unit = take(&mut args, "UNIT")?;
            match sd.unit_status(&unit).await? {
                None => println!("loaded=no"),
                Some(s) => {
                    println!("loaded=yes");
                    println!("active_state={}", s.active_state);
                    println!("sub_state={}", s.sub_state);
                    println!("result={}", s.result);
                    println!("main_pid={}", s.main_pid);
                    println!("control_group={}", s.control_group);
                    println!("phase={:?}", s.phase());
                    if let Some(exit) = s.exit {
                        println!("exit_code={}", exit.shell_code());
                    }
                    if let Some(id) = s.weaver_id {
                        println!("weaver_id={id}");
                    }
                }
            }
        }
        "stop" => match sd.stop_unit(&take(&mut args, "UNIT")?).await? {
            None => println!("loaded=no"),
            Some(s) => println!("loaded=yes\nactive_state={}\nresult={}", s.active_state, s.result),
        },
        "reset-failed" => sd.reset_failed(&take(&mut args, "UNIT")?).await?,
        "list" => {
            for u in sd.list_loom_units().await? {
                println!("{} {} {} {}", u.name, u.weaver_id, u.active_state, u.sub_state);
            }
        }
        other => return Err(format!("unknown command {other:?}").into()),
    }
    Ok(())
}

fn take(args: &mut Vec<String>, what: &str) -> Result<String, BoxError> {
    if args.is_empty() {
        return Err(format!("missing {what}").into());
    }
    Ok(args.remove(0))
}

fn serve_once(path: Option<&String>) -> ExitCode {
    use std::io::Write;
    let Some(path) = path else {
        eprintln!("loom-systemd-probe: serve-once needs a socket path");
        return ExitCode::FAILURE;
    };
    let _ = std::fs::remove_file(path);
    let listener = match std::os::unix::net::UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("loom-systemd-probe: cannot listen on {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening");
    match listener.accept() {
        Ok((mut s, _)) => {
            let _ = s.write_all(b"ok\n");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loom-systemd-probe: accept on {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
