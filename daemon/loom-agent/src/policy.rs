//! When the loop stops: a pure policy over what each iteration reported. No I/O, no clock:
//! elapsed time is passed in.

use std::time::Duration;

use loom_threads::StopReason;

/// The stop rules of one loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_iterations: Option<u32>,
    /// Whether an `--until` command is set (then the completion marker alone does not stop).
    pub until_set: bool,
    /// Circuit breaker: this many iterations in a row without a change in the tree.
    pub no_change_limit: u32,
    /// Circuit breaker: the same error this many times in a row.
    pub same_error_limit: u32,
    pub wall_clock: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_iterations: None, until_set: false, no_change_limit: 3, same_error_limit: 3, wall_clock: None }
    }
}

/// What one iteration did, as far as the stop rules care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IterationReport {
    /// The tree (or HEAD) changed during the iteration.
    pub tree_changed: bool,
    /// The iteration ended with this error (model, agent or command failure).
    pub error: Option<String>,
    pub marker_seen: bool,
    /// `Some(passed)` when `--until` ran after the iteration.
    pub until_passed: Option<bool>,
    pub budget_exhausted: Option<String>,
    pub shutdown: bool,
}

/// Go on or stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Stop(StopReason),
}

/// The state the stop rules keep across iterations.
#[derive(Debug, Clone)]
pub struct Policy {
    limits: Limits,
    iterations: u32,
    no_change: u32,
    last_error: Option<String>,
    same_error: u32,
}

/// An error's identity for the breaker: digits are masked so that "took 1.2s" and "took 1.3s"
/// count as the same error.
pub fn error_key(e: &str) -> String {
    // At most 500 bytes, cut at a character boundary (tool output is any text).
    let mut k = String::new();
    for c in e.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }) {
        if k.len() + c.len_utf8() > 500 {
            break;
        }
        k.push(c);
    }
    k
}

impl Policy {
    pub fn new(limits: Limits) -> Policy {
        Policy { limits, iterations: 0, no_change: 0, last_error: None, same_error: 0 }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Iterations completed.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Before an iteration: may it start?
    pub fn before_iteration(&self, elapsed: Duration) -> Decision {
        if let Some(max) = self.limits.max_iterations
            && self.iterations >= max
        {
            return Decision::Stop(StopReason::MaxIterations { iterations: max });
        }
        if let Some(limit) = self.limits.wall_clock
            && elapsed >= limit
        {
            return Decision::Stop(StopReason::WallClock { limit_secs: limit.as_secs() });
        }
        Decision::Continue
    }

    /// After an iteration: record it and decide. The order matters: a loop that is done is
    /// reported as done even if it also hit a limit in the same iteration.
    pub fn after_iteration(&mut self, r: &IterationReport, elapsed: Duration) -> Decision {
        self.iterations += 1;
        if r.shutdown {
            return Decision::Stop(StopReason::Shutdown);
        }
        if let Some(m) = &r.budget_exhausted {
            return Decision::Stop(StopReason::BudgetExhausted { message: m.clone() });
        }
        if r.until_passed == Some(true) {
            return Decision::Stop(StopReason::UntilPassed);
        }
        if r.marker_seen && !self.limits.until_set {
            return Decision::Stop(StopReason::CompletionMarker);
        }
        match &r.error {
            Some(e) => {
                let key = error_key(e);
                if self.last_error.as_deref() == Some(key.as_str()) {
                    self.same_error += 1;
                } else {
                    self.last_error = Some(key);
                    self.same_error = 1;
                }
                if self.limits.same_error_limit > 0 && self.same_error >= self.limits.same_error_limit {
                    return Decision::Stop(StopReason::RepeatedError { count: self.same_error, error: e.clone() });
                }
            }
            None => {
                self.last_error = None;
                self.same_error = 0;
            }
        }
        if r.tree_changed {
            self.no_change = 0;
        } else {
            self.no_change += 1;
            if self.limits.no_change_limit > 0 && self.no_change >= self.limits.no_change_limit {
                return Decision::Stop(StopReason::NoProgress { iterations: self.no_change });
            }
        }
        self.before_iteration(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_key_of_499_ascii_bytes_then_a_multibyte_char_does_not_panic() {
        let k = error_key(&format!("{}é tail", "x".repeat(499)));
        assert_eq!(k, "x".repeat(499));
        assert_eq!(error_key("took 1.2s"), "took #.#s");
    }

    fn changed() -> IterationReport {
        IterationReport { tree_changed: true, ..Default::default() }
    }

    /// Runs `reports` through a policy with `limits`; returns after which iteration (1-based)
    /// it stopped and why.
    fn check(limits: Limits, reports: &[IterationReport], expected: Option<(u32, StopReason)>) {
        let mut p = Policy::new(limits);
        for (i, r) in reports.iter().enumerate() {
            assert_eq!(p.before_iteration(Duration::ZERO), Decision::Continue);
            if let Decision::Stop(why) = p.after_iteration(r, Duration::from_secs(i as u64 + 1)) {
                assert_eq!(Some((i as u32 + 1, why)), expected);
                return;
            }
        }
        assert_eq!(None, expected, "the policy never stopped");
    }

    #[test]
    fn until_passing_stops() {
        let r = IterationReport { until_passed: Some(true), ..changed() };
        check(
            Limits { until_set: true, ..Default::default() },
            &[IterationReport { until_passed: Some(false), ..changed() }, r],
            Some((2, StopReason::UntilPassed)),
        );
    }

    #[test]
    fn marker_stops_alone_only_without_until() {
        let m = IterationReport { marker_seen: true, ..changed() };
        check(Limits::default(), std::slice::from_ref(&m), Some((1, StopReason::CompletionMarker)));
        let failed = IterationReport { until_passed: Some(false), ..m.clone() };
        check(Limits { until_set: true, ..Default::default() }, &[failed.clone(), failed], None);
        let passed = IterationReport { until_passed: Some(true), ..m };
        check(Limits { until_set: true, ..Default::default() }, &[passed], Some((1, StopReason::UntilPassed)));
    }

    #[test]
    fn max_iterations() {
        check(
            Limits { max_iterations: Some(2), ..Default::default() },
            &[changed(), changed(), changed()],
            Some((2, StopReason::MaxIterations { iterations: 2 })),
        );
        let p = Policy::new(Limits { max_iterations: Some(0), ..Default::default() });
        assert_eq!(p.before_iteration(Duration::ZERO), Decision::Stop(StopReason::MaxIterations { iterations: 0 }));
    }

    #[test]
    fn budget_and_shutdown() {
        let b = IterationReport { budget_exhausted: Some("USD budget".into()), ..Default::default() };
        check(Limits::default(), &[b], Some((1, StopReason::BudgetExhausted { message: "USD budget".into() })));
        let s = IterationReport { shutdown: true, ..Default::default() };
        check(Limits::default(), &[s], Some((1, StopReason::Shutdown)));
    }

    #[test]
    fn circuit_breaker_no_change() {
        let same = IterationReport::default();
        check(
            Limits { no_change_limit: 3, ..Default::default() },
            &[same.clone(), changed(), same.clone(), same.clone(), same],
            Some((5, StopReason::NoProgress { iterations: 3 })),
        );
    }

    #[test]
    fn circuit_breaker_same_error() {
        let e = |s: &str| IterationReport { error: Some(s.into()), ..changed() };
        check(
            Limits { same_error_limit: 3, ..Default::default() },
            &[e("timeout after 1s"), e("other"), e("timeout after 2s"), e("timeout after 3s"), e("timeout after 4s")],
            Some((5, StopReason::RepeatedError { count: 3, error: "timeout after 4s".into() })),
        );
        // A success in between resets the count.
        check(Limits { same_error_limit: 2, ..Default::default() }, &[e("x"), changed(), e("x"), changed()], None);
    }

    #[test]
    fn wall_clock() {
        let mut p = Policy::new(Limits { wall_clock: Some(Duration::from_secs(10)), ..Default::default() });
        assert_eq!(p.after_iteration(&changed(), Duration::from_secs(9)), Decision::Continue);
        assert_eq!(
            p.after_iteration(&changed(), Duration::from_secs(10)),
            Decision::Stop(StopReason::WallClock { limit_secs: 10 })
        );
        assert_eq!(p.iterations(), 2);
    }
}
