//! Property tests: every parser loomd runs on a client's bytes (request bodies, exec frames,
//! units) or on its config file, and the SSE parser the agent and the proxy run on a
//! provider's, either answers `Ok` or a clear `Err`, never panics, and what it accepts stays
//! within the bounds the rest of loom relies on; streams parse the same in any chunks.

use std::collections::BTreeMap;

use loom_core::api::{CreateWeaver, ExecRequest, exec_frame};
use loom_core::config::{Config, MAX_START_TIMEOUT, WeaverDefaults};
use loom_core::sse::{MAX_SSE_BYTES, SseEvent, SseParser};
use loom_core::units::{ByteSize, Cpus, Span};
use loom_core::weaver::{
    AgentSpec, Image, MAX_MEMORY, MAX_TASKS, MAX_TTL, MIN_MEMORY, MIN_TASKS, WeaverSpec, resolve_spec,
    validate_env_key, validate_name,
};
use proptest::prelude::*;
use proptest::sample::select;

/// Modest by default so debug builds stay fast; `PROPTEST_CASES=100000` digs deeper.
fn cases(n: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---- exec frames ----

/// Decodes a stream the way loomd and the CLI do: append what arrives, split off every
/// complete frame, stop at the first error.
#[derive(Debug, Default, PartialEq)]
struct FrameStream {
    buf: Vec<u8>,
    frames: Vec<(u8, Vec<u8>)>,
    error: Option<String>,
}

impl FrameStream {
    fn push(&mut self, chunk: &[u8]) {
        // Past an error nothing is decoded, but what arrived is kept to compare with.
        self.buf.extend_from_slice(chunk);
        if self.error.is_some() {
            return;
        }
        loop {
            match exec_frame::decode(&self.buf) {
                Ok(Some((kind, data, used))) => {
                    assert!(used <= self.buf.len(), "claimed {used} of {} bytes", self.buf.len());
                    assert_eq!(used, 5 + data.len(), "a frame is its 5-byte header and its data");
                    assert!(data.len() as u32 <= exec_frame::MAX_LEN);
                    self.frames.push((kind, data.to_vec()));
                    self.buf.drain(..used);
                }
                Ok(None) => {
                    assert!(
                        self.buf.len() < 5
                            || self.buf.len()
                                < 5 + u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize,
                        "asked for more bytes although a whole frame is there"
                    );
                    return;
                }
                Err(e) => {
                    assert!(e.contains("limit"), "{e}");
                    self.error = Some(e);
                    return;
                }
            }
        }
    }
}

fn split_at_points(bytes: &[u8], mut points: Vec<usize>) -> Vec<&[u8]> {
    points.iter_mut().for_each(|p| *p %= bytes.len() + 1);
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for p in points {
        chunks.push(&bytes[start..p]);
        start = p;
    }
    chunks.push(&bytes[start..]);
    chunks
}

fn frames_strategy() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..300)), 0..12)
}

/// Valid frames, then damaged: bytes flipped, a length made huge, the end cut off.
fn mangled_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        frames_strategy(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(frames, flips, cut, at)| {
            let mut bytes: Vec<u8> = frames.iter().flat_map(|(k, d)| exec_frame::encode(*k, d)).collect();
            if !bytes.is_empty() {
                for (i, b) in flips {
                    let i = i.index(bytes.len());
                    bytes[i] = b;
                }
                if cut {
                    bytes.truncate(at.index(bytes.len()));
                }
            }
            bytes
        })
}

fn check_chunking(bytes: &[u8], points: Vec<usize>) -> Result<(), TestCaseError> {
    let mut whole = FrameStream::default();
    whole.push(bytes);
    let mut pieces = FrameStream::default();
    for chunk in split_at_points(bytes, points) {
        pieces.push(chunk);
    }
    prop_assert_eq!(whole, pieces);
    Ok(())
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn exec_frames_round_trip(frames in frames_strategy(), points in prop::collection::vec(any::<usize>(), 0..8)) {
        let bytes: Vec<u8> = frames.iter().flat_map(|(k, d)| exec_frame::encode(*k, d)).collect();
        let mut s = FrameStream::default();
        for chunk in split_at_points(&bytes, points) {
            s.push(chunk);
        }
        prop_assert_eq!(s, FrameStream { buf: Vec::new(), frames, error: None });
    }

    #[test]
    fn exec_frames_decode_the_same_whatever_the_split(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        points in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        check_chunking(&bytes, points)?;
    }

    #[test]
    fn damaged_exec_streams_decode_the_same_whatever_the_split(
        bytes in mangled_stream(),
        points in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        check_chunking(&bytes, points)?;
    }
}

// ---- units ----

fn size_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ \t]?[-+]?[0-9]{0,24}[kKmMgGtTpPxX.]?[bB]?[ \n]?",
        (any::<u64>(), select(vec!["", "K", "M", "G", "T", "B", "KB", "gb"])).prop_map(|(n, s)| format!("{n}{s}")),
    ]
}

fn span_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ \t]?[-+]?[0-9]{0,24}[smhdwéS]?[ \n]?",
        (any::<u64>(), select(vec!["", "s", "m", "h", "d"])).prop_map(|(n, s)| format!("{n}{s}")),
    ]
}

fn cpu_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[-+]?[0-9]{0,6}(\\.[0-9]{0,8})?(e[-+]?[0-9]{1,3})?",
        any::<f64>().prop_map(|f| f.to_string()),
        select(vec!["NaN", "inf", "-inf", "infinity", "1e308", "1e-308", "1024.0004", "1024.0005", "0.0005", "0.0004"])
            .prop_map(str::to_string),
    ]
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn sizes_parse_or_refuse(s in size_text()) {
        if let Ok(b) = s.parse::<ByteSize>() {
            prop_assert!(b.0 > 0);
            prop_assert_eq!(b.to_string().parse::<ByteSize>(), Ok(b));
        }
    }

    #[test]
    fn spans_parse_or_refuse(s in span_text()) {
        if let Ok(t) = s.parse::<Span>() {
            prop_assert!(t.0 > 0);
            prop_assert_eq!(t.to_string().parse::<Span>(), Ok(t));
        }
    }

    #[test]
    fn cpus_parse_or_refuse(s in cpu_text(), f in any::<f64>()) {
        for c in [s.parse::<Cpus>(), Cpus::from_f64(f)].into_iter().flatten() {
            prop_assert!((1..=1_024_000).contains(&c.0), "{c:?}");
            prop_assert!(c.quota_us(1_000_000) <= 1_024_000_000);
            prop_assert_eq!(Cpus::from_f64(c.as_f64()), Ok(c));
            prop_assert_eq!(c.to_string().parse::<Cpus>(), Ok(c));
        }
    }
}

// ---- request bodies and resolve_spec ----

/// Arbitrary JSON, biased towards the values and shapes the request types use.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
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
        ),
    )
        .prop_map(
            |(
                (name, image, repo, branch, memory),
                (cpus, tasks, ttl, env),
                (network, restart, command, agent),
                (disk, log_size, nested, allow),
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
fn check_spec(spec: &WeaverSpec) -> Result<(), TestCaseError> {
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

// ---- the config file ----

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A config with the `[weaver]` table's fields set to anything of any TOML type.
fn weaver_table() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        size_text().prop_map(|s| toml_string(&s)),
        span_text().prop_map(|s| toml_string(&s)),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
        select(vec![
            "\"host\"",
            "\"/img\"",
            "\"rel\"",
            "\"private\"",
            "\"none\"",
            "true",
            "[]",
            "{}",
            "-1",
            "0",
            "0.0"
        ])
        .prop_map(str::to_string),
    ];
    let field = select(vec!["image", "memory", "cpus", "tasks", "ttl", "network", "restart", "start_timeout", "extra"]);
    prop::collection::btree_map(field, value, 0..8).prop_map(|m: BTreeMap<&str, String>| {
        let mut text = String::from("[weaver]\n");
        for (k, v) in m {
            text.push_str(&format!("{k} = {v}\n"));
        }
        text
    })
}

const EXAMPLE: &str = r#"socket = "/run/loomd/loomd.sock"
state_dir = "/var/lib/loom"
backend = "systemd"
[access]
admin_group = "loom-admin"
[weaver]
memory = "4G"
cpus = 2.0
ttl = "4h"
[secrets]
ssh_host_keys = ["/etc/ssh/ssh_host_ed25519_key"]
[providers.anthropic]
secret = "anthropic_api_key"
"#;

fn check_config(text: &str) -> Result<(), TestCaseError> {
    match Config::from_toml(text) {
        Ok(c) => {
            prop_assert!(c.socket.is_absolute() && c.state_dir.is_absolute());
            let w = &c.weaver;
            prop_assert!((MIN_MEMORY..=MAX_MEMORY).contains(&w.memory), "memory {}", w.memory);
            prop_assert!((MIN_TASKS..=MAX_TASKS).contains(&w.tasks));
            prop_assert!((1..=1_024_000).contains(&w.cpus.0));
            prop_assert!(w.ttl.is_none_or(|t| t <= MAX_TTL));
            prop_assert!(w.start_timeout <= MAX_START_TIMEOUT);
            // Every default a config allows must also be a spec resolve_spec accepts.
            match resolve_spec(CreateWeaver::default(), w, "w-default".into()) {
                Ok(spec) => check_spec(&spec)?,
                Err(e) => prop_assert!(false, "the config's defaults are refused: {e}"),
            }
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn config_from_any_text(text in any::<String>()) {
        check_config(&text)?;
    }

    #[test]
    fn config_with_mangled_weaver_defaults(table in weaver_table()) {
        check_config(&table)?;
    }

    #[test]
    fn config_example_with_bytes_changed(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0..3u8), 1..4),
    ) {
        let mut text: Vec<char> = EXAMPLE.chars().collect();
        for (at, c, op) in edits {
            let i = at.index(text.len());
            match op {
                0 => text[i] = c,
                1 => text.insert(i, c),
                _ => {
                    text.remove(i);
                }
            }
        }
        check_config(&text.into_iter().collect::<String>())?;
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
    let agent = AgentSpec {
        prompt: "fix it".into(),
        model: "anthropic/claude".into(),
        max_iterations: None,
        until: None,
        check: None,
        wall_clock: Some("99999999999d".into()),
        completion_marker: None,
        context_threads: vec![],
    };
    let req = CreateWeaver { agent: Some(agent), command: vec![], ..CreateWeaver::default() };
    let e = resolve_spec(req, &WeaverDefaults::default(), "w".into()).unwrap_err().to_string();
    assert!(e.contains("wall clock"), "{e}");
}

// ---- server-sent events (the parser the agent and the proxy share) ----

/// The events of `chunks`, and those the end-of-stream flush adds.
fn parse_sse<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<(Vec<SseEvent>, Vec<SseEvent>), String> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for c in chunks {
        out.extend(p.feed(c).map_err(|e| e.to_string())?);
    }
    let mut tail = Vec::new();
    p.finish_with(|e| tail.push(e.into())).map_err(|e| e.to_string())?;
    Ok((out, tail))
}

/// An event as a provider writes it (comments, `id:`, one line end throughout), and what it
/// means.
fn sse_event() -> impl Strategy<Value = (Vec<u8>, SseEvent)> {
    let line = "\\PC{0,40}";
    (
        prop::option::of(line),
        prop::option::of(line),
        prop::collection::vec((line, any::<bool>()), 1..4),
        select(vec!["\n", "\r\n", "\r"]),
    )
        .prop_map(|(name, comment, data, nl)| {
            let mut wire = String::new();
            if let Some(c) = comment {
                wire.push_str(&format!(":{c}{nl}"));
            }
            if let Some(n) = &name {
                wire.push_str(&format!("event: {n}{nl}"));
            }
            wire.push_str(&format!("id: 1{nl}"));
            let mut lines = Vec::new();
            for (d, spaced) in &data {
                wire.push_str(&format!("data:{}{d}{nl}", if *spaced { " " } else { "" }));
                lines.push(if *spaced { d.as_str() } else { d.strip_prefix(' ').unwrap_or(d) });
            }
            wire.push_str(nl);
            let event = SseEvent { event: name.unwrap_or_default(), data: lines.join("\n") };
            (wire.into_bytes(), event)
        })
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn valid_streams_give_their_events_in_any_chunks(
        events in prop::collection::vec(sse_event(), 0..8),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let wire: Vec<u8> = events.iter().flat_map(|(w, _)| w.clone()).collect();
        let want: Vec<SseEvent> = events.into_iter().map(|(_, e)| e).collect();
        let want = Ok((want, vec![]));
        prop_assert_eq!(&parse_sse([&wire[..]]), &want);
        prop_assert_eq!(&parse_sse(split_at_points(&wire, points)), &want);
        prop_assert_eq!(&parse_sse(wire.chunks(1)), &want);
    }

    #[test]
    fn a_stream_cut_anywhere_flushes_the_same_in_any_chunks(
        events in prop::collection::vec(sse_event(), 1..6),
        cut in any::<usize>(),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let wire: Vec<u8> = events.iter().flat_map(|(w, _)| w.clone()).collect();
        let wire = &wire[..cut % (wire.len() + 1)];
        let whole = parse_sse([wire]);
        prop_assert_eq!(&whole, &parse_sse(split_at_points(wire, points)));
        prop_assert_eq!(&whole, &parse_sse(wire.chunks(1)));
    }

    #[test]
    fn any_bytes_parse_the_same_in_any_chunks(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = parse_sse([&bytes[..]]);
        prop_assert_eq!(&whole, &parse_sse(split_at_points(&bytes, points)));
        let (events, tail) = whole.unwrap();
        prop_assert!(events.iter().chain(&tail).all(|e| e.data.len() <= MAX_SSE_BYTES));
    }
}
