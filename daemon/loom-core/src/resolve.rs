//! A client's create request resolved against the config's defaults into a weaver's spec:
//! the one place every limit and default of a new weaver is decided.

use crate::units::{ByteSize, Cpus, Span};
use crate::weaver::{
    Image, MAX_MEMORY, MAX_TASKS, MAX_TTL, MIN_MEMORY, MIN_TASKS, SpecError, WeaverSpec, validate_env_key,
    validate_name,
};

/// Turns a client's create request into a complete spec, filling in the config's defaults.
/// `fallback_name` is used when the request names none.
pub fn resolve_spec(
    req: crate::api::CreateWeaver,
    defaults: &crate::config::WeaverDefaults,
    fallback_name: String,
) -> Result<WeaverSpec, SpecError> {
    let name = req.name.unwrap_or(fallback_name);
    validate_name(&name)?;
    let image = match req.image {
        Some(s) => Image::try_from(s)?,
        None => defaults.image.clone(),
    };
    if req.branch.is_some() && req.repo.is_none() && req.upload.is_none() {
        return Err(SpecError::BranchWithoutRepo);
    }
    if let Some(repo) = &req.repo {
        crate::repo::check_remote_repo(repo)?;
    }
    if let Some(up) = &req.upload {
        if req.repo.is_some() {
            return Err(SpecError::Repo(
                up.clone(),
                "give either repo (a git URL) or upload (an upload's id), not both",
            ));
        }
        if up.is_empty() || up.len() > 64 || !up.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(SpecError::Repo(up.clone(), "an upload id is what POST /v1/uploads answered with"));
        }
    }
    if let Some(b) = &req.branch
        && (b.is_empty() || b.starts_with('-') || b.contains(['\0', ' ', '~', '^', ':']) || b.contains(".."))
    {
        return Err(SpecError::Command(format!("invalid --branch {b:?}: not a valid git branch name")));
    }
    let memory = match req.memory {
        Some(s) => s.parse()?,
        None => defaults.memory,
    };
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&memory) {
        return Err(SpecError::Memory(memory));
    }
    let cpus = match req.cpus {
        Some(v) => Cpus::from_f64(v)?,
        None => defaults.cpus,
    };
    let size_at_least = |v: Option<String>, default: ByteSize, min: u64, flag: &'static str| {
        let size = match v {
            Some(s) => s.parse::<ByteSize>()?,
            None => default,
        };
        if size.0 < min {
            return Err(SpecError::TooSmall { flag, size, min: ByteSize(min) });
        }
        Ok(size)
    };
    let disk = size_at_least(req.disk, defaults.disk, crate::config::MIN_DISK, "--disk")?;
    let log_size = size_at_least(req.log_size, defaults.log_size, crate::config::MIN_LOG_SIZE, "--log-size")?;
    let tasks = req.tasks.unwrap_or(defaults.tasks);
    if !(MIN_TASKS..=MAX_TASKS).contains(&tasks) {
        return Err(SpecError::Tasks(tasks));
    }
    let ttl = match req.ttl.as_deref() {
        Some("none") | Some("0") => None,
        Some(s) => Some(s.parse()?),
        None => defaults.ttl,
    };
    if let Some(span) = ttl.filter(|t| *t > MAX_TTL) {
        return Err(SpecError::SpanTooLong { what: "ttl", span });
    }
    for (k, v) in &req.env {
        validate_env_key(k)?;
        if v.contains('\0') || v.len() > 32 << 10 {
            return Err(SpecError::Env(format!("{k}=<{} bytes>", v.len())));
        }
    }
    if req.env.len() > 256 {
        return Err(SpecError::Env(format!("{} variables (at most 256)", req.env.len())));
    }
    let network = match req.network {
        Some(s) => s.parse()?,
        None => defaults.network,
    };
    let restart = match req.restart {
        Some(s) => s.parse()?,
        None => defaults.restart,
    };
    let egress = crate::egress::policy_of(defaults.egress.allow.iter().chain(&req.allow))?;
    if req.command.iter().any(|a| a.contains('\0')) {
        return Err(SpecError::Command("an argument contains a NUL byte".into()));
    }
    if req.command.first().is_some_and(|c| c.is_empty()) {
        return Err(SpecError::Command("the command name is empty".into()));
    }
    if let Some(a) = &req.agent {
        if a.model.split_once('/').is_none_or(|(p, m)| p.is_empty() || m.is_empty()) {
            return Err(SpecError::Agent(format!(
                "invalid --model {:?}: use PROVIDER/MODEL, e.g. anthropic/claude-sonnet-4-5",
                a.model
            )));
        }
        if let Some(w) = &a.wall_clock {
            let span = w.parse::<Span>()?;
            if span > MAX_TTL {
                return Err(SpecError::SpanTooLong { what: "the agent's wall clock", span });
            }
        }
        if a.context_threads.len() > 16 {
            return Err(SpecError::Agent("at most 16 --context-thread".into()));
        }
        if a.prompt.trim().is_empty() {
            return Err(SpecError::Agent("the prompt is empty: --prompt needs a file with the task in it".into()));
        }
    }
    let ssh = match req.ssh {
        None => None,
        Some(_) if network != crate::weaver::NetworkMode::Private => {
            return Err(SpecError::SshNetwork(
                "its sshd listens on the weaver's own address, which only a private weaver has",
            ));
        }
        Some(r) => Some(crate::ssh::SshSpec {
            authorized_keys: crate::ssh::authorized_keys(&defaults.ssh.authorized_keys, &r.authorized_keys)?,
            host_key: String::new(),
        }),
    };
    let tailscale = req.tailscale.unwrap_or(false);
    if tailscale && network != crate::weaver::NetworkMode::Private {
        return Err(SpecError::TailscaleNetwork);
    }
    Ok(WeaverSpec {
        name,
        image,
        repo: req.repo,
        branch: req.branch,
        memory,
        cpus,
        tasks,
        disk,
        log_size,
        ttl,
        env: req.env,
        network,
        egress,
        restart,
        nested: req.nested.unwrap_or(defaults.nested),
        ssh,
        tailscale,
        command: req.command,
        agent: req.agent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CreateWeaver;
    use crate::config::WeaverDefaults;
    use crate::weaver::{AgentSpec, NetworkMode};

    fn check(req: CreateWeaver, expected: Result<(), &str>) {
        let got = resolve_spec(req.clone(), &WeaverDefaults::default(), "w-abc".into());
        match (got, expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{req:?}: {e}"),
            (got, expected) => panic!("{req:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn defaults_fill_in() {
        let spec = resolve_spec(CreateWeaver::default(), &WeaverDefaults::default(), "w-abc".into()).unwrap();
        assert_eq!(spec.name, "w-abc");
        assert_eq!(spec.memory, ByteSize(4 << 30));
        assert_eq!(spec.network, NetworkMode::Private);
        assert_eq!((spec.disk, spec.log_size), (ByteSize(10 << 30), ByteSize(64 << 20)));
    }

    #[test]
    fn a_spec_stored_before_caps_gets_the_default_caps() {
        let mut v = serde_json::to_value(
            resolve_spec(CreateWeaver::default(), &WeaverDefaults::default(), "w-abc".into()).unwrap(),
        )
        .unwrap();
        v.as_object_mut().unwrap().remove("disk");
        v.as_object_mut().unwrap().remove("log_size");
        let spec: WeaverSpec = serde_json::from_value(v).unwrap();
        assert_eq!(spec.disk, ByteSize(10 << 30));
    }

    #[test]
    fn bad_requests() {
        let req = |f: fn(&mut CreateWeaver)| {
            let mut r = CreateWeaver::default();
            f(&mut r);
            r
        };
        check(req(|r| r.memory = Some("2G".into())), Ok(()));
        check(req(|r| r.memory = Some("2 gigs".into())), Err("invalid size \"2 gigs\""));
        check(req(|r| r.memory = Some("1M".into())), Err("from 16M to 64T"));
        check(req(|r| r.name = Some("Bad Name".into())), Err("invalid weaver name"));
        check(req(|r| r.cpus = Some(0.0)), Err("invalid CPU count"));
        check(req(|r| r.tasks = Some(1)), Err("invalid task limit"));
        check(req(|r| r.disk = Some("2M".into())), Ok(()));
        check(req(|r| r.disk = Some("512K".into())), Err("--disk 512K is below its minimum of 1M"));
        check(req(|r| r.disk = Some("huge".into())), Err("invalid size \"huge\""));
        check(req(|r| r.log_size = Some("1K".into())), Err("--log-size 1K is below its minimum of 64K"));
        check(req(|r| r.ttl = Some("forever".into())), Err("invalid duration"));
        check(req(|r| r.network = Some("bridge".into())), Err("invalid network mode"));
        check(req(|r| r.restart = Some("sometimes".into())), Err("invalid restart policy"));
        check(req(|r| r.branch = Some("main".into())), Err("--branch needs --repo"));
        check(req(|r| r.repo = Some("--upload-pack=evil".into())), Err("invalid --repo"));
        check(req(|r| r.upload = Some("abc123".into())), Ok(()));
        check(req(|r| r.upload = Some("../x".into())), Err("upload id"));
        check(
            req(|r| {
                r.upload = Some("abc123".into());
                r.repo = Some("https://example.com/x.git".into());
            }),
            Err("not both"),
        );
        check(
            req(|r| {
                r.upload = Some("abc123".into());
                r.branch = Some("main".into());
            }),
            Ok(()),
        );
        check(
            req(|r| {
                r.env.insert("OPENAI_API_KEY".into(), "x".into());
            }),
            Err("cannot be overridden"),
        );
        check(req(|r| r.command = vec!["".into()]), Err("command name is empty"));
        check(req(|r| r.agent = Some(AgentSpec::new("fix it", "claude"))), Err("PROVIDER/MODEL"));
    }
}
