//! Per-weaver limits and the ledger that enforces them: budgets reserved before a call and
//! reconciled after it, requests per minute, concurrent requests. Pure: time comes in as an
//! argument.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Limits of one weaver; `None` is unlimited.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WeaverLimits {
    /// Total tokens (input + output + cache read + cache write) over the weaver's life.
    pub max_tokens: Option<u64>,
    pub max_usd: Option<f64>,
    pub requests_per_minute: Option<u32>,
    pub max_concurrent: Option<u32>,
}

impl WeaverLimits {
    pub fn unlimited() -> Self {
        Self { max_tokens: None, max_usd: None, requests_per_minute: None, max_concurrent: None }
    }
}

/// Running totals of one weaver.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WeaverTotals {
    pub requests: u64,
    pub failed: u64,
    /// Refused by a limit before reaching a provider.
    pub refused: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub tokens: u64,
    pub cost_usd: f64,
}

/// A snapshot for `loom usage`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WeaverUsage {
    pub limits: WeaverLimits,
    pub totals: WeaverTotals,
    pub reserved_tokens: u64,
    pub reserved_usd: f64,
    pub in_flight: u32,
}

/// Which limit refused a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    TokenBudget { used: u64, reserved: u64, limit: u64, needed: u64 },
    UsdBudget { used: f64, reserved: f64, limit: f64, needed: f64 },
    RequestsPerMinute { limit: u32, retry_after: Duration },
    Concurrency { limit: u32 },
}

impl Refusal {
    pub fn is_budget(&self) -> bool {
        matches!(self, Self::TokenBudget { .. } | Self::UsdBudget { .. })
    }

    /// The message a weaver's agent sees: which limit, where it stands, how to raise it.
    pub fn message(&self, weaver: &str) -> String {
        match self {
            Self::TokenBudget { used, reserved, limit, needed } => format!(
                "loom: weaver {weaver} token budget exhausted: {used} of {limit} tokens used, {reserved} reserved by requests in flight, this request may need up to {needed}. Raise it with `loom weaver limits {weaver} --max-tokens N` or [proxy.limits] max_tokens in loomd's config (0 = unlimited)."
            ),
            Self::UsdBudget { used, reserved, limit, needed } => format!(
                "loom: weaver {weaver} USD budget exhausted: ${used:.4} of ${limit:.2} spent, ${reserved:.4} reserved by requests in flight, this request may cost up to ${needed:.4}. Raise it with `loom weaver limits {weaver} --max-usd N` or [proxy.limits] max_usd in loomd's config (0 = unlimited)."
            ),
            Self::RequestsPerMinute { limit, retry_after } => format!(
                "loom: weaver {weaver} is over its limit of {limit} requests per minute; retry in {}s. Raise it with `loom weaver limits {weaver} --requests-per-minute N` or [proxy.limits] requests_per_minute.",
                retry_after.as_secs().max(1)
            ),
            Self::Concurrency { limit } => format!(
                "loom: weaver {weaver} already has {limit} requests in flight (its concurrency limit). Raise it with `loom weaver limits {weaver} --max-concurrent N` or [proxy.limits] max_concurrent."
            ),
        }
    }
}

/// What a request reserved; given back to [`Ledger::settle`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reservation {
    pub tokens: u64,
    pub usd: f64,
}

const MINUTE: Duration = Duration::from_secs(60);

/// Requests in flight and in the last minute, against `max_concurrent` and
/// `requests_per_minute`.
#[derive(Debug, Default)]
struct Gate {
    in_flight: u32,
    recent: VecDeque<Instant>,
}

impl Gate {
    fn enter(&mut self, limits: &WeaverLimits, now: Instant) -> Result<(), Refusal> {
        if let Some(limit) = limits.max_concurrent
            && self.in_flight >= limit
        {
            return Err(Refusal::Concurrency { limit });
        }
        if let Some(limit) = limits.requests_per_minute {
            while self.recent.front().is_some_and(|t| now.duration_since(*t) >= MINUTE) {
                self.recent.pop_front();
            }
            if self.recent.len() >= limit as usize {
                let oldest = self.recent.front().copied().unwrap_or(now);
                return Err(Refusal::RequestsPerMinute {
                    limit,
                    retry_after: MINUTE.saturating_sub(now.duration_since(oldest)),
                });
            }
            self.recent.push_back(now);
        }
        self.in_flight += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

#[derive(Debug)]
pub struct Ledger {
    pub limits: WeaverLimits,
    pub totals: WeaverTotals,
    reserved_tokens: u64,
    reserved_usd: f64,
    /// Model calls.
    calls: Gate,
    /// loomd's own routes (thread events): the same limits, counted apart, so neither kind of
    /// request can starve the other.
    local: Gate,
}

impl Ledger {
    pub fn new(limits: WeaverLimits) -> Self {
        Self {
            limits,
            totals: WeaverTotals::default(),
            reserved_tokens: 0,
            reserved_usd: 0.0,
            calls: Gate::default(),
            local: Gate::default(),
        }
    }

    /// Admits a request and reserves its worst case, or says which limit refuses it:
    /// [`Ledger::enter`] then [`Ledger::reserve`].
    pub fn admit(&mut self, now: Instant, want: Reservation) -> Result<Reservation, Refusal> {
        self.enter(now)?;
        self.reserve(want).inspect_err(|_| self.leave())
    }

    /// Takes a concurrency slot and a requests-per-minute slot, before the request's body is
    /// even read (so a weaver cannot hold more bodies in loomd's memory than its limit).
    pub fn enter(&mut self, now: Instant) -> Result<(), Refusal> {
        let r = self.calls.enter(&self.limits, now);
        if r.is_err() {
            self.totals.refused += 1;
        }
        r
    }

    /// Gives back the slot of a request that [`Ledger::enter`]ed but never went upstream.
    pub fn leave(&mut self) {
        self.calls.leave();
    }

    /// [`Ledger::enter`] for a request to loomd's own routes.
    pub fn enter_local(&mut self, now: Instant) -> Result<(), Refusal> {
        let r = self.local.enter(&self.limits, now);
        if r.is_err() {
            self.totals.refused += 1;
        }
        r
    }

    /// Gives back a slot [`Ledger::enter_local`] took.
    pub fn leave_local(&mut self) {
        self.local.leave();
    }

    /// Reserves a request's worst case against the budgets (after [`Ledger::enter`]).
    pub fn reserve(&mut self, want: Reservation) -> Result<Reservation, Refusal> {
        if let Some(limit) = self.limits.max_tokens
            && self.totals.tokens.saturating_add(self.reserved_tokens).saturating_add(want.tokens) > limit
        {
            self.totals.refused += 1;
            return Err(Refusal::TokenBudget {
                used: self.totals.tokens,
                reserved: self.reserved_tokens,
                limit,
                needed: want.tokens,
            });
        }
        if let Some(limit) = self.limits.max_usd
            && self.totals.cost_usd + self.reserved_usd + want.usd > limit + 1e-12
        {
            self.totals.refused += 1;
            return Err(Refusal::UsdBudget {
                used: self.totals.cost_usd,
                reserved: self.reserved_usd,
                limit,
                needed: want.usd,
            });
        }
        self.reserved_tokens = self.reserved_tokens.saturating_add(want.tokens);
        self.reserved_usd += want.usd;
        Ok(want)
    }

    /// Releases a reservation and charges what the request really used.
    pub fn settle(&mut self, reserved: Reservation, usage: &crate::usage::Usage, cost_usd: f64, failed: bool) {
        self.reserved_tokens = self.reserved_tokens.saturating_sub(reserved.tokens);
        self.reserved_usd = (self.reserved_usd - reserved.usd).max(0.0);
        self.calls.leave();
        let t = &mut self.totals;
        t.requests += 1;
        if failed {
            t.failed += 1;
        }
        t.input_tokens = t.input_tokens.saturating_add(usage.input_tokens);
        t.output_tokens = t.output_tokens.saturating_add(usage.output_tokens);
        t.cache_read_tokens = t.cache_read_tokens.saturating_add(usage.cache_read_tokens);
        t.cache_write_tokens = t.cache_write_tokens.saturating_add(usage.cache_write_tokens);
        t.tokens = t.tokens.saturating_add(usage.total());
        if cost_usd.is_finite() && cost_usd > 0.0 {
            t.cost_usd += cost_usd;
        }
    }

    pub fn snapshot(&self) -> WeaverUsage {
        WeaverUsage {
            limits: self.limits.clone(),
            totals: self.totals.clone(),
            reserved_tokens: self.reserved_tokens,
            reserved_usd: self.reserved_usd,
            in_flight: self.calls.in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Usage;

    fn res(tokens: u64, usd: f64) -> Reservation {
        Reservation { tokens, usd }
    }

    #[test]
    fn token_budget_reserves_then_reconciles() {
        let mut l = Ledger::new(WeaverLimits { max_tokens: Some(1000), ..WeaverLimits::unlimited() });
        let now = Instant::now();
        let a = l.admit(now, res(600, 0.0)).unwrap();
        // The reservation blocks a second large request while the first is in flight.
        assert!(matches!(l.admit(now, res(600, 0.0)), Err(Refusal::TokenBudget { reserved: 600, .. })));
        l.settle(a, &Usage { input_tokens: 100, output_tokens: 50, ..Default::default() }, 0.0, false);
        assert_eq!(l.totals.tokens, 150);
        let b = l.admit(now, res(850, 0.0)).unwrap();
        l.settle(b, &Usage { output_tokens: 850, ..Default::default() }, 0.0, false);
        let e = l.admit(now, res(1, 0.0)).unwrap_err();
        assert!(e.is_budget());
        let m = e.message("w1");
        assert!(m.contains("token budget exhausted") && m.contains("1000 of 1000"));
        assert!(m.contains("--max-tokens") && m.contains("max_tokens"));
        assert_eq!(l.totals.refused, 2);
    }

    #[test]
    fn usd_budget() {
        let mut l = Ledger::new(WeaverLimits { max_usd: Some(1.0), ..WeaverLimits::unlimited() });
        let now = Instant::now();
        let a = l.admit(now, res(0, 0.4)).unwrap();
        l.settle(a, &Usage::default(), 0.9, false);
        let e = l.admit(now, res(0, 0.2)).unwrap_err();
        assert!(e.message("w").contains("USD budget exhausted"));
        assert!(l.admit(now, res(0, 0.1)).is_ok());
    }

    #[test]
    fn requests_per_minute_slides() {
        let mut l = Ledger::new(WeaverLimits { requests_per_minute: Some(2), ..WeaverLimits::unlimited() });
        let t0 = Instant::now();
        for _ in 0..2 {
            let r = l.admit(t0, res(0, 0.0)).unwrap();
            l.settle(r, &Usage::default(), 0.0, false);
        }
        let e = l.admit(t0 + Duration::from_secs(20), res(0, 0.0)).unwrap_err();
        assert_eq!(e, Refusal::RequestsPerMinute { limit: 2, retry_after: Duration::from_secs(40) });
        assert!(l.admit(t0 + Duration::from_secs(60), res(0, 0.0)).is_ok());
    }

    #[test]
    fn concurrency() {
        let mut l = Ledger::new(WeaverLimits { max_concurrent: Some(1), ..WeaverLimits::unlimited() });
        let now = Instant::now();
        let a = l.admit(now, res(0, 0.0)).unwrap();
        assert_eq!(l.admit(now, res(0, 0.0)), Err(Refusal::Concurrency { limit: 1 }));
        l.settle(a, &Usage::default(), 0.0, true);
        assert!(l.admit(now, res(0, 0.0)).is_ok());
        assert_eq!(l.totals.failed, 1);
        assert_eq!(l.snapshot().in_flight, 1);
    }

    #[test]
    fn local_routes_have_the_same_limits_counted_apart() {
        let mut l = Ledger::new(WeaverLimits {
            max_concurrent: Some(1),
            requests_per_minute: Some(2),
            ..WeaverLimits::unlimited()
        });
        let t0 = Instant::now();
        let call = l.admit(t0, res(0, 0.0)).unwrap();
        l.enter_local(t0).unwrap();
        assert_eq!(l.enter_local(t0), Err(Refusal::Concurrency { limit: 1 }));
        l.leave_local();
        l.enter_local(t0).unwrap();
        l.leave_local();
        let e = l.enter_local(t0 + Duration::from_secs(30)).unwrap_err();
        assert_eq!(e, Refusal::RequestsPerMinute { limit: 2, retry_after: Duration::from_secs(30) });
        // Model calls kept their own slot and count.
        l.settle(call, &Usage::default(), 0.0, false);
        assert!(l.admit(t0, res(0, 0.0)).is_ok());
        assert_eq!(l.totals.refused, 2);
        assert!(l.enter_local(t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn absurd_usage_from_a_provider_saturates() {
        let mut l = Ledger::new(WeaverLimits { max_tokens: Some(10), ..WeaverLimits::unlimited() });
        let now = Instant::now();
        let r = l.admit(now, res(1, 0.0)).unwrap();
        let u = crate::usage::usage_from_json(
            br#"{"usage":{"input_tokens":18446744073709551615,"output_tokens":18446744073709551615}}"#,
        )
        .unwrap()
        .unwrap();
        l.settle(r, &u, f64::INFINITY, false);
        assert_eq!(l.totals.tokens, u64::MAX);
        assert_eq!(l.totals.cost_usd, 0.0, "a non-finite cost is not added");
        assert!(l.admit(now, res(u64::MAX, 0.0)).unwrap_err().is_budget());
    }
}
