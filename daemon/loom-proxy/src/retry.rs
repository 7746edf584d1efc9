//! The retry policy, pure: which upstream answers are tried again, how long to wait between
//! attempts (`retry-after` first, else backoff with jitter), when to move on to the next
//! target, and what the client is told when every target failed. The send stage reports each
//! attempt's [`Outcome`] and does what the [`Schedule`] says; the time and the randomness
//! come in as values, so the policy is tested without hyper, a clock or a random source.
//!
//! Nothing is retried once the first byte went to the client: the proxy passes a response on
//! only on [`Step::PassOn`], which hands it over and takes the schedule with it, and a stream that breaks after
//! that is ended with an error event (`body`), never sent again.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::StatusCode;

use crate::config::RetryConfig;

/// What one attempt came back with, before any of it went to the client. `R`: the response
/// itself, handed back by [`Step::PassOn`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome<R> {
    /// Response headers with this status, and the wait its `retry-after` asks for.
    Answered { status: StatusCode, retry_after: Option<Duration>, response: R },
    /// No connection, or it broke before the response headers.
    Unreachable { detail: String },
    /// No response headers within the first-byte timeout.
    TimedOut { after: Duration },
}

/// Why a target failed: what the client is told if it was the last one.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Failure {
    /// It kept answering with a status worth retrying.
    Answered(StatusCode),
    Unreachable {
        provider: String,
        detail: String,
    },
    TimedOut {
        provider: String,
        after: Duration,
    },
    /// It could not be tried at all (its key is missing, its URL cannot be built).
    Unusable(String),
}

impl Failure {
    /// The client's status when every target failed: the last failure decides.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Answered(status) => write!(f, "upstream answered {status}"),
            Self::Unreachable { provider, detail } => write!(f, "could not reach {provider}: {detail}"),
            Self::TimedOut { provider, after } => {
                write!(f, "{provider} sent no response headers within {after:?} ([proxy] first_byte_timeout_ms)")
            }
            Self::Unusable(message) => f.write_str(message),
        }
    }
}

/// Worth another attempt: the provider is overloaded or broke, not refusing the request.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

/// Where a request stands among its targets (the provider, then its fallbacks) and attempts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Schedule {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    max_retry_after: Duration,
    targets: usize,
    target: usize,
    attempt: u32,
}

/// What the send stage does after an attempt.
#[derive(Debug, PartialEq)]
pub(crate) enum Step<R> {
    /// Pass this response on to the client. Nothing is tried after it.
    PassOn(R),
    /// Wait, then try `next.target()` (the same one, or the next after the last attempt).
    Retry { wait: Duration, failure: Failure, next: Schedule },
    /// Every target failed: the client gets this.
    GiveUp(Failure),
}

impl Schedule {
    /// The first attempt at the first of `targets` targets.
    pub(crate) fn new(policy: &RetryConfig, targets: usize) -> Self {
        Self {
            max_attempts: policy.max_attempts.max(1),
            base_delay: policy.base_delay,
            max_delay: policy.max_delay,
            max_retry_after: policy.max_retry_after,
            targets,
            target: 0,
            attempt: 0,
        }
    }

    /// The index of the target to try.
    pub(crate) fn target(&self) -> usize {
        self.target
    }

    /// The attempt at that target, from 0.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    fn last_attempt(&self) -> bool {
        self.attempt + 1 >= self.max_attempts
    }

    fn last_target(&self) -> bool {
        self.target + 1 >= self.targets
    }

    /// The current target could not be tried: on to the next one at once, or `Err` with the
    /// failure if it was the last.
    pub(crate) fn skip(self, failure: Failure) -> Result<Schedule, Failure> {
        if self.last_target() {
            return Err(failure);
        }
        Ok(Schedule { target: self.target + 1, attempt: 0, ..self })
    }

    /// What to do after the current attempt at `provider` came back with `outcome`. `jitter`
    /// is a random number in `[0, 1]`, used when the wait is backoff.
    pub(crate) fn after<R>(self, provider: &str, outcome: Outcome<R>, jitter: f64) -> Step<R> {
        let (failure, asked) = match outcome {
            Outcome::Answered { status, response, .. } if !retryable(status) => return Step::PassOn(response),
            Outcome::Answered { status, retry_after, response } => {
                // A wait longer than loom will hold a weaver's request for is the provider's
                // answer to pass on; so is the last answer there is.
                if retry_after.is_some_and(|a| a > self.max_retry_after) || (self.last_attempt() && self.last_target())
                {
                    return Step::PassOn(response);
                }
                (Failure::Answered(status), retry_after)
            }
            Outcome::Unreachable { detail } => (Failure::Unreachable { provider: provider.to_string(), detail }, None),
            Outcome::TimedOut { after } => (Failure::TimedOut { provider: provider.to_string(), after }, None),
        };
        if self.last_attempt() {
            return match self.skip(failure.clone()) {
                Ok(next) => Step::Retry { wait: Duration::ZERO, failure, next },
                Err(failure) => Step::GiveUp(failure),
            };
        }
        let wait = asked.unwrap_or_else(|| self.backoff(jitter));
        Step::Retry { wait, failure, next: Schedule { attempt: self.attempt + 1, ..self } }
    }

    /// Exponential backoff from the current attempt, with jitter between half and all of it.
    fn backoff(&self, jitter: f64) -> Duration {
        let step = self.base_delay.saturating_mul(1u32 << self.attempt.min(16)).min(self.max_delay);
        let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 1.0 };
        step.mul_f64(0.5 + 0.5 * jitter)
    }
}

/// The wait an upstream asks for: `retry-after-ms` (OpenAI), else `retry-after` in seconds or
/// as an HTTP date (nothing, if that is past `now`). Values that are not a sane wait count as
/// none.
pub(crate) fn retry_after(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(ms) = retry_after_ms
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && (0.0..86_400_000.0).contains(v))
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let v = retry_after?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && (0.0..86_400.0).contains(&secs)).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a schedule of `targets` targets, 3 attempts each (backoff 100 ms doubling up to
    /// 300 ms, `retry-after` honoured up to 10 s), through `outcomes`, one per attempt:
    /// a status (`503`, with `@2s` for its `retry-after`), `down` (unreachable), `slow` (no
    /// headers in time) or `nokey` (the target cannot be tried). Compares the steps taken,
    /// `target.attempt outcome → step`, and any outcome left over, with `expected`.
    #[track_caller]
    fn check(targets: usize, outcomes: &str, expected: &str) {
        let policy = RetryConfig {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            max_retry_after: Duration::from_secs(10),
        };
        let mut schedule = Some(Schedule::new(&policy, targets));
        let mut steps = Vec::new();
        let mut tokens = outcomes.split_whitespace();
        for token in tokens.by_ref() {
            let Some(s) = schedule.take() else {
                steps.push(format!("(not tried: {token})"));
                continue;
            };
            let target = s.target();
            let at = format!("{target}.{} {token} →", s.attempt());
            let outcome = match token {
                "nokey" => {
                    match s.skip(Failure::Unusable("no key".into())) {
                        Ok(next) => {
                            steps.push(format!("{at} t{}", next.target()));
                            schedule = Some(next);
                        }
                        Err(f) => steps.push(format!("{at} give up {} ({f})", f.status().as_u16())),
                    }
                    continue;
                }
                "down" => Outcome::Unreachable { detail: "refused".into() },
                "slow" => Outcome::TimedOut { after: Duration::from_secs(5) },
                status => {
                    let (code, after) = status.split_once('@').unwrap_or((status, ""));
                    Outcome::Answered {
                        status: StatusCode::from_u16(code.parse().unwrap()).unwrap(),
                        retry_after: after.strip_suffix('s').map(|s| Duration::from_secs(s.parse().unwrap())),
                        response: token,
                    }
                }
            };
            match s.after("p", outcome, 1.0) {
                Step::PassOn(response) => {
                    assert_eq!(response, token, "the response passed on is the one that came back");
                    steps.push(format!("{at} pass"));
                }
                Step::Retry { wait, next, .. } if next.target() == target => {
                    steps.push(format!("{at} wait {wait:?}"));
                    schedule = Some(next);
                }
                Step::Retry { wait, next, .. } => {
                    assert_eq!(wait, Duration::ZERO, "a new target is tried at once");
                    steps.push(format!("{at} t{}", next.target()));
                    schedule = Some(next);
                }
                Step::GiveUp(f) => steps.push(format!("{at} give up {} ({f})", f.status().as_u16())),
            }
        }
        if let Some(s) = schedule {
            steps.push(format!("(then {}.{})", s.target(), s.attempt()));
        }
        assert_eq!(steps.join(", "), expected, "outcomes: {outcomes}");
    }

    #[test]
    fn policy() {
        // A success, or an answer not worth retrying, is passed on at once; nothing after it.
        check(1, "200", "0.0 200 → pass");
        check(2, "400 503", "0.0 400 → pass, (not tried: 503)");
        check(1, "501", "0.0 501 → pass");
        check(1, "401", "0.0 401 → pass");
        // Overload and server errors are retried with backoff, doubling up to the cap.
        check(1, "503 502 200", "0.0 503 → wait 100ms, 0.1 502 → wait 200ms, 0.2 200 → pass");
        // The last answer there is goes to the client as the provider gave it.
        check(1, "529 529 529", "0.0 529 → wait 100ms, 0.1 529 → wait 200ms, 0.2 529 → pass");
        // `retry-after` replaces the backoff; a wait past the limit is the provider's answer.
        check(1, "429@2s 200", "0.0 429@2s → wait 2s, 0.1 200 → pass");
        check(1, "429@0s 200", "0.0 429@0s → wait 0ns, 0.1 200 → pass");
        check(2, "429@60s", "0.0 429@60s → pass");
        // After the last attempt the next target is tried at once; its answer counts.
        check(2, "503 503 503 200", "0.0 503 → wait 100ms, 0.1 503 → wait 200ms, 0.2 503 → t1, 1.0 200 → pass");
        check(
            2,
            "down down down 503 503 503",
            "0.0 down → wait 100ms, 0.1 down → wait 200ms, 0.2 down → t1, 1.0 503 → wait 100ms, 1.1 503 → wait 200ms, 1.2 503 → pass",
        );
        // Failures that are not answers give up after the last target; the last one decides.
        check(
            1,
            "down slow down",
            "0.0 down → wait 100ms, 0.1 slow → wait 200ms, 0.2 down → give up 502 (could not reach p: refused)",
        );
        check(
            1,
            "down down slow",
            "0.0 down → wait 100ms, 0.1 down → wait 200ms, 0.2 slow → give up 504 (p sent no response headers within 5s ([proxy] first_byte_timeout_ms))",
        );
        // A target that cannot be tried is skipped without an attempt.
        check(2, "nokey 200", "0.0 nokey → t1, 1.0 200 → pass");
        check(
            2,
            "slow slow slow nokey",
            "0.0 slow → wait 100ms, 0.1 slow → wait 200ms, 0.2 slow → t1, 1.0 nokey → give up 502 (no key)",
        );
        check(1, "nokey", "0.0 nokey → give up 502 (no key)");
        // Where the schedule stands when the outcomes run out.
        check(2, "503", "0.0 503 → wait 100ms, (then 0.1)");
    }

    #[test]
    fn backoff_jitter_is_between_half_and_all() {
        let policy = RetryConfig {
            max_attempts: 40,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            max_retry_after: Duration::from_secs(1),
        };
        let at = |attempt: u32| Schedule { attempt, ..Schedule::new(&policy, 1) };
        assert_eq!(at(0).backoff(0.0), Duration::from_millis(50));
        assert_eq!(at(0).backoff(1.0), Duration::from_millis(100));
        assert_eq!(at(1).backoff(0.5), Duration::from_millis(150));
        assert_eq!(at(30).backoff(1.0), Duration::from_millis(300));
        // Out-of-range randomness cannot stretch the wait.
        assert_eq!(at(0).backoff(7.0), Duration::from_millis(100));
        assert_eq!(at(0).backoff(f64::NAN), Duration::from_millis(100));
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let check = |ms: Option<&str>, secs: Option<&str>, expected: Option<Duration>| {
            assert_eq!(retry_after(ms, secs, now), expected, "retry-after-ms {ms:?}, retry-after {secs:?}");
        };
        check(None, Some("2"), Some(Duration::from_secs(2)));
        check(None, Some(" 0.5 "), Some(Duration::from_millis(500)));
        check(Some("150"), Some("2"), Some(Duration::from_millis(150)));
        check(Some("1e300"), Some("2"), Some(Duration::from_secs(2)));
        check(Some("1e300"), None, None);
        let soon = httpdate::fmt_http_date(now + Duration::from_secs(30));
        check(None, Some(&soon), Some(Duration::from_secs(30)));
        check(None, Some("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        check(None, Some("soon"), None);
        check(None, Some("-3"), None);
        check(None, Some("1e300"), None);
        check(None, None, None);
    }
}
