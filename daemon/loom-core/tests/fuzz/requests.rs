//! Request bodies and `resolve_spec`: any bytes, mangled fields, and every accepted spec within bounds; with the inputs the properties found, kept as plain regressions.

use super::*;

/// Arbitrary JSON, biased towards the values and shapes the request types use.
pub(crate) fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite()).prop_map(|f| json!(f)),
        select(vec![0i64, 1, -1, 15, 16, 4_194_304, 4_194_305, u32::MAX as i64, i64::MAX]).prop_map(|n| json!(n)),
        any::<String>().prop_map(Value::String),
        size_text().prop_map(Value::String),
        span_text().prop_map(Value::String),
        select(vec![
            "host",
            "/",
            "/srv/img",
            "/srv/../etc",
            "/a\0b",
            "private",
            "none",
            "always",
            "on-failure",
            "x/y",
            "-x",
            ""
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const CREATE_FIELDS: &[&str] = &[
    "name", "image", "repo", "branch", "memory", "cpus", "tasks", "ttl", "env", "network", "restart", "command",
    "agent",
];
const AGENT_FIELDS: &[&str] =
    &["prompt", "model", "max_iterations", "until", "check", "wall_clock", "completion_marker", "context_threads"];

/// A JSON object with some of `fields` (and now and then an unknown one) set to anything.
fn object_with(fields: &'static [&'static str]) -> impl Strategy<Value = serde_json::Value> {
    prop::collection::vec((prop_oneof![9 => select(fields.to_vec()), 1 => Just("extra")], json_value()), 0..8)
        .prop_map(|kv| serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

/// Requests that are mostly well-typed, so that `resolve_spec` gets past serde and the bounds
/// are tested, with values at and past every limit.
fn create_request() -> impl Strategy<Value = CreateWeaver> {
    // Each field is mostly left to the defaults or given a plausible value, so that many
    // requests get all the way through and the bounds of what is accepted are what is tested.
    let some = |p: f64, s: BoxedStrategy<String>| prop::option::weighted(p, s);
    let name = prop_oneof![3 => "[a-z][a-z0-9-]{0,70}", 1 => any::<String>()].boxed();
    let image = prop_oneof![Just("host".to_string()), "/[a-z./\0]{0,12}", any::<String>()].boxed();
    let repo = prop_oneof!["(https://|/|-|)[a-z/.\0 ]{0,12}", any::<String>()].boxed();
    let network = select(vec!["private", "none", "host", "bridge", ""]).prop_map(str::to_string).boxed();
    let restart = select(vec!["never", "no", "on-failure", "always", "sometimes"]).prop_map(str::to_string).boxed();
    let env_key = prop_oneof![
        8 => "[A-Za-z_][A-Za-z0-9_]{0,10}",
        1 => any::<String>(),
        1 => Just("OPENAI_API_KEY".to_string()),
    ];
    let env_val = prop_oneof![8 => any::<String>(), 1 => Just("a\0b".to_string()), 1 => Just("x".repeat(32 << 10 | 1))];
    let agent = (
        prop_oneof![any::<String>(), Just("fix it".to_string()), Just("  ".to_string())],
        prop_oneof!["[a-z]{0,3}/?[a-z]{0,3}", any::<String>()],
        prop::option::of(any::<u32>()),
        prop::option::of(span_text()),
        prop::collection::vec(any::<String>(), 0..20),
    )
        .prop_map(|(prompt, model, max_iterations, wall_clock, context_threads)| AgentSpec {
            prompt,
            model,
            max_iterations,
            until: None,
            check: None,
            wall_clock,
            completion_marker: None,
            context_threads,
        });
    (
        (some(0.5, name), some(0.3, image), some(0.2, repo.clone()), some(0.1, repo), some(0.5, size_text().boxed())),
        (
            prop::option::weighted(
                0.5,
                prop_oneof![any::<f64>(), select(vec![0.0, 0.0004, 0.0005, 0.5, 1024.0, 1024.0005, 1e300])],
            ),
            prop::option::weighted(0.5, prop_oneof![any::<u64>(), MIN_TASKS - 1..MAX_TASKS + 2]),
            some(0.7, prop_oneof![span_text(), Just("none".to_string()), Just("0".to_string())].boxed()),
            prop::collection::btree_map(env_key, env_val, 0..3),
        ),
        (
            some(0.3, network),
            some(0.3, restart),
            prop::collection::vec(any::<String>(), 0..3),
            prop::option::weighted(0.3, agent),
        ),
        (
            some(0.3, size_text().boxed()),
            some(0.3, size_text().boxed()),
            prop::option::of(any::<bool>()),
            prop::collection::vec(
                prop_oneof![
                    any::<String>(),
                    select(vec![
                        "10.0.0.0/8".to_string(),
                        "crates.io:443".into(),
                        "[::1]:53/udp".into(),
                        "x/99".into()
                    ])
                ],
                0..3,
            ),
            prop::option::weighted(
                0.2,
                prop::collection::vec(
                    prop_oneof![
                        any::<String>(),
                        Just(
                            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN+/Rym8JYVv1rp2Qc08Nml49wCcW/Buy9Xgsb8BNq9X k"
                                .to_string()
                        ),
                    ],
                    0..3,
                )
                .prop_map(|authorized_keys| loom_core::ssh::SshRequest { authorized_keys }),
            ),
        ),
    )
        .prop_map(
            |(
                (name, image, repo, branch, memory),
                (cpus, tasks, ttl, env),
                (network, restart, command, agent),
                (disk, log_size, nested, allow, ssh),
            )| {
                CreateWeaver {
                    name,
                    image,
                    repo,
                    branch,
                    memory,
                    cpus,
                    tasks,
                    ttl,
                    env,
                    network,
                    allow,
                    restart,
                    nested,
                    disk,
                    log_size,
                    upload: None,
                    ssh,
                    tailscale: None,
                    command,
                    agent,
                }
            },
        )
}

fn no_nul(s: &str) -> bool {
    !s.contains('\0')
}

/// What every accepted spec must satisfy: the limits handed to the kernel are real limits,
/// nothing handed to a host process has a NUL or looks like an option, and the spec survives
/// the store's JSON round trip (or loomd would lose the weaver on its next start).
pub(crate) fn check_spec(spec: &WeaverSpec) -> Result<(), TestCaseError> {
    prop_assert!(validate_name(&spec.name).is_ok(), "name {:?}", spec.name);
    match &spec.image {
        Image::Host => {}
        Image::Dir(p) => {
            let s = p.to_str().expect("images come from UTF-8 strings");
            prop_assert!(s.starts_with('/') && no_nul(s) && !s.split('/').any(|c| c == ".."), "image {s:?}");
        }
    }
    for v in [&spec.repo, &spec.branch].into_iter().flatten() {
        prop_assert!(!v.is_empty() && no_nul(v) && !v.starts_with('-'), "{v:?}");
    }
    prop_assert!((MIN_MEMORY..=MAX_MEMORY).contains(&spec.memory), "memory {}", spec.memory);
    prop_assert!((1..=1_024_000).contains(&spec.cpus.0), "cpus {:?}", spec.cpus);
    prop_assert!((MIN_TASKS..=MAX_TASKS).contains(&spec.tasks), "tasks {}", spec.tasks);
    if let Some(ttl) = spec.ttl {
        prop_assert!(ttl.0 > 0 && ttl <= MAX_TTL, "ttl {ttl}");
        // loomd adds the ttl to the current time: no overflow for any time this century.
        prop_assert!(4_102_444_800u64.checked_add(ttl.0).is_some());
    }
    prop_assert!(spec.env.len() <= 256);
    for (k, v) in &spec.env {
        prop_assert!(validate_env_key(k).is_ok(), "env key {k:?}");
        prop_assert!(no_nul(v) && v.len() <= 32 << 10);
    }
    prop_assert!(spec.command.iter().all(|a| no_nul(a)));
    prop_assert!(spec.command.first().is_none_or(|c| !c.is_empty()));
    if let Some(a) = &spec.agent {
        prop_assert!(a.model.split_once('/').is_some_and(|(p, m)| !p.is_empty() && !m.is_empty()));
        prop_assert!(!a.prompt.trim().is_empty() && a.context_threads.len() <= 16);
        if let Some(w) = &a.wall_clock {
            prop_assert!(w.parse::<Span>().is_ok_and(|s| s <= MAX_TTL));
        }
    }
    let stored = serde_json::to_string(spec).expect("a spec serializes");
    let back: WeaverSpec = serde_json::from_str(&stored).map_err(|e| TestCaseError::fail(format!("{stored}: {e}")))?;
    prop_assert_eq!(&back, spec);
    Ok(())
}

fn resolve(req: CreateWeaver) -> Result<(), TestCaseError> {
    match resolve_spec(req, &WeaverDefaults::default(), "w-fallback".into()) {
        Ok(spec) => check_spec(&spec),
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn request_bodies_from_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(req) = serde_json::from_slice::<CreateWeaver>(&bytes) {
            resolve(req)?;
        }
        let _ = serde_json::from_slice::<ExecRequest>(&bytes);
    }

    #[test]
    fn create_bodies_with_mangled_fields(body in object_with(CREATE_FIELDS), agent in object_with(AGENT_FIELDS)) {
        let mut body = body;
        if body.get("agent").is_some_and(|a| a.is_object()) {
            body["agent"] = agent;
        }
        let text = serde_json::to_vec(&body).expect("a JSON value serializes");
        if let Ok(req) = serde_json::from_slice::<CreateWeaver>(&text) {
            resolve(req)?;
        }
    }

    #[test]
    fn exec_bodies_with_mangled_fields(body in object_with(&["command", "tty", "term_size"])) {
        let text = serde_json::to_vec(&body).expect("a JSON value serializes");
        let _ = serde_json::from_slice::<ExecRequest>(&text);
    }

    #[test]
    fn resolved_specs_stay_within_bounds(req in create_request()) {
        resolve(req)?;
    }
}

// Inputs the properties found, kept as plain regressions.

#[test]
fn ttl_99999999999999d_is_refused_not_overflowed() {
    let req = CreateWeaver { ttl: Some("99999999999999d".into()), ..CreateWeaver::default() };
    let e = resolve_spec(req, &WeaverDefaults::default(), "w".into()).unwrap_err().to_string();
    assert!(e.contains("365d maximum"), "{e}");
}

#[test]
fn memory_18446744073709551615_is_refused_not_unlimited() {
    let req = CreateWeaver { memory: Some("18446744073709551615".into()), ..CreateWeaver::default() };
    let e = resolve_spec(req, &WeaverDefaults::default(), "w".into()).unwrap_err().to_string();
    assert!(e.contains("from 16M to 64T"), "{e}");
}

#[test]
fn image_with_a_nul_byte_is_refused() {
    let req = CreateWeaver { image: Some("/srv/img\0x".into()), ..CreateWeaver::default() };
    let e = resolve_spec(req, &WeaverDefaults::default(), "w".into()).unwrap_err().to_string();
    assert!(e.contains("invalid image"), "{e}");
}

#[test]
fn agent_wall_clock_99999999999d_is_refused() {
    let agent = AgentSpec { wall_clock: Some("99999999999d".into()), ..AgentSpec::new("fix it", "anthropic/claude") };
    let req = CreateWeaver { agent: Some(agent), command: vec![], ..CreateWeaver::default() };
    let e = resolve_spec(req, &WeaverDefaults::default(), "w".into()).unwrap_err().to_string();
    assert!(e.contains("wall clock"), "{e}");
}
