use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let first = args.nth(1);
    if first.as_deref().is_some_and(|a| a == loomd::sandbox::SANDBOX_ARG) {
        let rest: Vec<_> = args.collect();
        return ExitCode::from(loomd::sandbox::run_entry(&rest) as u8);
    }
    if first.is_some_and(|a| a == "__shim") {
        let Some(run_dir) = args.next() else {
            eprintln!("loomd __shim needs a run directory");
            return ExitCode::from(2);
        };
        return ExitCode::from(loomd::shim::run(std::path::Path::new(&run_dir)) as u8);
    }
    loomd::run::main()
}
