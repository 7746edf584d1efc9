//! What a call is charged, pure. Every call that passed the allow-list is metered; one whose
//! response reports no usage is charged conservatively, never $0, so neither a provider that
//! omits usage nor a weaver that hangs up early can spend loom's key outside its budget:
//!
//! - usage reported by the provider: its cost at the model's price;
//! - otherwise a generating call ([`Meter::Generate`]) that the upstream answered 2xx, or that
//!   went out and got no answer (timeout, broken connection, the client hung up): its
//!   reservation, the worst case of request bytes / 4 input tokens plus `max_tokens` output;
//! - anything else (models lists, token counts, embeddings without a usage block, error
//!   answers, calls that never left): the floor, max(request bytes / 4, 256) input tokens at
//!   the highest input price of the price table.

use crate::allow::Meter;
use crate::config::PriceTable;
use crate::limits::Reservation;
use crate::usage::Usage;

/// The least a call without reported usage is charged, in input tokens.
pub const FLOOR_TOKENS: u64 = 256;

/// At most this many input tokens are estimated from a request body (a context window).
const MAX_ESTIMATED_INPUT: u64 = 400_000;

/// Input tokens estimated from a request body: about 4 bytes per token.
pub fn estimated_input(request_bytes: usize) -> u64 {
    (request_bytes as u64).div_ceil(4).min(MAX_ESTIMATED_INPUT)
}

/// The floor: a call's input estimate (at least [`FLOOR_TOKENS`]) at the highest input price.
pub fn floor(prices: &PriceTable, request_bytes: usize) -> (Usage, f64) {
    let usage = Usage { input_tokens: estimated_input(request_bytes).max(FLOOR_TOKENS), ..Usage::default() };
    let cost = usage.input_tokens as f64 * prices.highest_input() / 1_000_000.0;
    (usage, cost)
}

/// How a call ended, as far as charging goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The status the upstream answered with, if it answered.
    pub upstream_status: Option<u16>,
    /// The request may have reached the upstream: an attempt got past connecting.
    pub reached: bool,
}

/// Which rule applies to a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Reported,
    Reservation,
    Floor,
}

pub fn rule(meter: Meter, usage_reported: bool, outcome: Outcome) -> Rule {
    if usage_reported {
        return Rule::Reported;
    }
    let maybe_generated = match outcome.upstream_status {
        Some(s) => (200..300).contains(&s),
        None => outcome.reached,
    };
    if meter == Meter::Generate && maybe_generated { Rule::Reservation } else { Rule::Floor }
}

/// The usage to record and the USD to charge.
pub fn charge(
    prices: &PriceTable,
    model: &str,
    meter: Meter,
    reported: Option<Usage>,
    reservation: Reservation,
    request_bytes: usize,
    outcome: Outcome,
) -> (Usage, f64) {
    match (rule(meter, reported.is_some(), outcome), reported) {
        (Rule::Reported, Some(u)) => (u, prices.price_for(model).cost(&u)),
        (Rule::Reservation, _) => (Usage { input_tokens: reservation.tokens, ..Usage::default() }, reservation.usd),
        _ => floor(prices, request_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Meter::{Flat, Generate};

    fn out(upstream_status: Option<u16>, reached: bool) -> Outcome {
        Outcome { upstream_status, reached }
    }

    #[test]
    fn rules() {
        let check = |meter, reported, o: Outcome, expected| {
            assert_eq!(rule(meter, reported, o), expected, "{meter:?} {reported} {o:?}")
        };
        check(Generate, true, out(Some(200), true), Rule::Reported);
        check(Flat, true, out(Some(200), true), Rule::Reported);
        check(Generate, false, out(Some(200), true), Rule::Reservation);
        check(Generate, false, out(None, true), Rule::Reservation);
        check(Generate, false, out(Some(400), true), Rule::Floor);
        check(Generate, false, out(Some(529), true), Rule::Floor);
        check(Generate, false, out(None, false), Rule::Floor);
        check(Flat, false, out(Some(200), true), Rule::Floor);
        check(Flat, false, out(None, true), Rule::Floor);
        check(Flat, false, out(Some(500), true), Rule::Floor);
    }

    #[test]
    fn the_floor_is_never_zero() {
        let prices = PriceTable::default();
        let (u, usd) = floor(&prices, 0);
        assert_eq!(u.input_tokens, FLOOR_TOKENS);
        assert!((usd - 256.0 * 15.0 / 1e6).abs() < 1e-12, "{usd}");
        let (u, _) = floor(&prices, 4001);
        assert_eq!(u.input_tokens, 1001);
        let (u, _) = floor(&prices, usize::MAX);
        assert_eq!(u.input_tokens, MAX_ESTIMATED_INPUT);
        // A model list on a cheap model is still charged at the highest price.
        let (u, usd) = charge(&prices, "gpt-4o-mini", Flat, None, Reservation::default(), 0, out(Some(200), true));
        assert_eq!((u.input_tokens, usd), (FLOOR_TOKENS, 256.0 * 15.0 / 1e6));
        let r = Reservation { tokens: 5000, usd: 0.5 };
        assert_eq!(
            charge(&prices, "x", Generate, None, r, 100, out(Some(200), true)),
            (Usage { input_tokens: 5000, ..Usage::default() }, 0.5)
        );
        let reported = Usage { input_tokens: 10, output_tokens: 5, ..Usage::default() };
        let (u, usd) = charge(&prices, "gpt-4o", Flat, Some(reported), r, 100, out(Some(200), true));
        assert_eq!(u, reported);
        assert!((usd - (10.0 * 2.5 + 5.0 * 10.0) / 1e6).abs() < 1e-12);
    }
}
