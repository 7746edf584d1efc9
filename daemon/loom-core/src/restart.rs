//! The restart policy: whether and when a weaver whose process ended starts again.
//! The clock and the jitter come in as arguments, so every decision is reproducible.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::weaver::RestartPolicy;

pub const BASE_DELAY_MS: u64 = 1_000;
pub const MAX_DELAY_MS: u64 = 60_000;
/// This many failures within [`FAILURE_WINDOW_SECS`] mark a weaver failed for good.
pub const MAX_FAILURES: usize = 10;
pub const FAILURE_WINDOW_SECS: u64 = 3_600;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartTracker {
    /// Unix seconds of the failures inside the window, oldest first.
    failures: VecDeque<u64>,
    /// Restarts since the last run that lasted long enough to count as healthy.
    consecutive: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave the weaver exited (or stopped).
    Stay,
    Restart {
        after_ms: u64,
    },
    GiveUp {
        reason: String,
    },
}

/// A run that lasted at least this long resets the backoff.
pub const HEALTHY_RUN_SECS: u64 = 60;

impl RestartTracker {
    pub fn failures_in_window(&self) -> usize {
        self.failures.len()
    }

    /// Decides what follows a process exit. `jitter` is a draw from [0, 1).
    pub fn on_exit(
        &mut self,
        policy: RestartPolicy,
        exit_code: i32,
        ran_secs: u64,
        now_secs: u64,
        jitter: f64,
    ) -> Decision {
        let failed = exit_code != 0;
        while self.failures.front().is_some_and(|t| now_secs.saturating_sub(*t) >= FAILURE_WINDOW_SECS) {
            self.failures.pop_front();
        }
        if failed {
            self.failures.push_back(now_secs);
        }
        if ran_secs >= HEALTHY_RUN_SECS {
            self.consecutive = 0;
        }
        let wants_restart = match policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Always => true,
        };
        if !wants_restart {
            return Decision::Stay;
        }
        if self.failures.len() >= MAX_FAILURES {
            return Decision::GiveUp {
                reason: format!(
                    "{} failures within {} minutes (last exit code {exit_code}); fix the command and `loom weaver start` it",
                    self.failures.len(),
                    FAILURE_WINDOW_SECS / 60
                ),
            };
        }
        let exp = BASE_DELAY_MS.saturating_mul(1u64 << self.consecutive.min(16));
        let capped = exp.min(MAX_DELAY_MS);
        // Full jitter on the upper half: spreads restarts of weavers that failed together
        // without ever restarting sooner than half the backoff.
        let jitter = jitter.clamp(0.0, 1.0);
        let after_ms = capped / 2 + ((capped / 2) as f64 * jitter) as u64;
        self.consecutive = self.consecutive.saturating_add(1);
        Decision::Restart { after_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_stays() {
        let mut t = RestartTracker::default();
        assert_eq!(t.on_exit(RestartPolicy::Never, 1, 0, 0, 0.5), Decision::Stay);
    }

    #[test]
    fn on_failure_restarts_only_failures() {
        let mut t = RestartTracker::default();
        assert_eq!(t.on_exit(RestartPolicy::OnFailure, 0, 0, 0, 0.5), Decision::Stay);
        assert!(matches!(t.on_exit(RestartPolicy::OnFailure, 2, 0, 0, 0.5), Decision::Restart { .. }));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut t = RestartTracker::default();
        let mut delays = vec![];
        for i in 0..9 {
            match t.on_exit(RestartPolicy::Always, 0, 0, i, 1.0) {
                Decision::Restart { after_ms } => delays.push(after_ms),
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(delays[..4], [1_000, 2_000, 4_000, 8_000]);
        assert_eq!(*delays.last().unwrap(), MAX_DELAY_MS);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let mut t = RestartTracker::default();
        assert_eq!(t.on_exit(RestartPolicy::Always, 0, 0, 0, 0.0), Decision::Restart { after_ms: 500 });
    }

    #[test]
    fn ten_failures_in_an_hour_give_up() {
        let mut t = RestartTracker::default();
        for i in 0..9 {
            assert!(matches!(t.on_exit(RestartPolicy::OnFailure, 1, 0, i * 60, 0.3), Decision::Restart { .. }));
        }
        assert!(matches!(t.on_exit(RestartPolicy::OnFailure, 1, 0, 600, 0.3), Decision::GiveUp { .. }));
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut t = RestartTracker::default();
        for i in 0..9 {
            t.on_exit(RestartPolicy::OnFailure, 1, 0, i, 0.3);
        }
        let d = t.on_exit(RestartPolicy::OnFailure, 1, 0, FAILURE_WINDOW_SECS + 100, 0.3);
        assert!(matches!(d, Decision::Restart { .. }), "{d:?}");
        assert_eq!(t.failures_in_window(), 1);
    }

    #[test]
    fn a_healthy_run_resets_backoff() {
        let mut t = RestartTracker::default();
        for i in 0..5 {
            t.on_exit(RestartPolicy::Always, 1, 0, i, 1.0);
        }
        assert_eq!(t.on_exit(RestartPolicy::Always, 1, 120, 10, 1.0), Decision::Restart { after_ms: 1_000 });
    }
}
