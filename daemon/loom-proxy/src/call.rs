//! One request's accounting: its reservation and usage record, closed exactly once (completion,
//! failure, client disconnect), charged by the rule in [`crate::charge`].

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::allow::Meter;
use crate::charge::{self, Outcome};
use crate::limits::Reservation;
use crate::proxy::{Inner, Weaver, lock};
use crate::usage::{Usage, UsageRecord, UsageStatus};

#[derive(Debug)]
pub struct Call {
    pub(crate) state: Option<CallState>,
}

pub(crate) struct CallState {
    pub(crate) inner: Arc<Inner>,
    pub(crate) weaver: Arc<Weaver>,
    pub(crate) reservation: Reservation,
    pub(crate) meter: Meter,
    pub(crate) request_bytes: usize,
    pub(crate) record: UsageRecord,
    pub(crate) started: Instant,
    /// The status of the upstream response passed on, if one was.
    pub(crate) upstream_status: Option<u16>,
    /// An attempt got past connecting: the upstream may have worked on the request.
    pub(crate) reached: bool,
    /// An attempt is out right now (a client that hangs up then leaves its outcome unknown).
    pub(crate) attempt_out: bool,
}

impl fmt::Debug for CallState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallState").field("record", &self.record).finish_non_exhaustive()
    }
}

impl Call {
    pub(crate) fn with(&mut self, f: impl FnOnce(&mut CallState)) {
        if let Some(s) = &mut self.state {
            f(s);
        }
    }

    /// Reconciles the budget with what was used and hands the record to the sink.
    pub(crate) fn finish(&mut self, status: UsageStatus, usage: Option<Usage>) {
        if let Some(s) = self.state.take() {
            s.finish(status, usage);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(s) = self.state.take() {
            s.finish(UsageStatus::ClientClosed, None);
        }
    }
}

impl CallState {
    fn finish(mut self, status: UsageStatus, reported: Option<Usage>) {
        let outcome = Outcome { upstream_status: self.upstream_status, reached: self.reached || self.attempt_out };
        let (usage, cost) = charge::charge(
            &self.inner.config.prices,
            &self.record.model,
            self.meter,
            reported,
            self.reservation,
            self.request_bytes,
            outcome,
        );
        let failed = !matches!(status, UsageStatus::Ok);
        lock(&self.weaver.ledger).settle(self.reservation, &usage, cost, failed);
        self.record.usage = usage;
        self.record.usage_reported = reported.is_some();
        self.record.cost_usd = cost;
        self.record.status = status;
        self.record.latency = self.started.elapsed();
        tracing::debug!(
            weaver = %self.record.weaver,
            provider = %self.record.provider,
            model = %self.record.model,
            status = self.record.status.as_str(),
            http_status = self.record.http_status,
            input = usage.input_tokens,
            output = usage.output_tokens,
            "proxied request finished"
        );
        self.inner.sink.record(self.record);
    }
}
