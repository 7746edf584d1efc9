//! What calls cost: USD per million tokens per model, with public list prices as defaults
//! (`[proxy.prices.MODEL]` overrides or extends them). Pure.

use std::collections::BTreeMap;

/// USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
}

impl Price {
    pub const fn new(input: f64, output: f64, cache_read: f64, cache_write: f64) -> Self {
        Self { input, output, cache_read, cache_write }
    }

    pub fn cost(&self, u: &crate::usage::Usage) -> f64 {
        (u.input_tokens as f64 * self.input
            + u.output_tokens as f64 * self.output
            + u.cache_read_tokens as f64 * self.cache_read
            + u.cache_write_tokens as f64 * self.cache_write)
            / 1_000_000.0
    }
}

/// Prices per model; lookups fall back to the longest matching prefix, then to `default`.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceTable {
    pub models: BTreeMap<String, Price>,
    /// For models nowhere in the table: deliberately expensive so budgets stay safe.
    pub default: Price,
}

/// Public list prices (USD per million tokens) at the time of writing; `[proxy.prices.MODEL]`
/// overrides or extends them.
const DEFAULT_PRICES: &[(&str, Price)] = &[
    ("claude-opus-4", Price::new(15.0, 75.0, 1.5, 18.75)),
    ("claude-opus-4-5", Price::new(5.0, 25.0, 0.5, 6.25)),
    ("claude-sonnet-4", Price::new(3.0, 15.0, 0.3, 3.75)),
    ("claude-3-7-sonnet", Price::new(3.0, 15.0, 0.3, 3.75)),
    ("claude-3-5-sonnet", Price::new(3.0, 15.0, 0.3, 3.75)),
    ("claude-haiku-4-5", Price::new(1.0, 5.0, 0.1, 1.25)),
    ("claude-3-5-haiku", Price::new(0.8, 4.0, 0.08, 1.0)),
    ("gpt-4o", Price::new(2.5, 10.0, 1.25, 0.0)),
    ("gpt-4o-mini", Price::new(0.15, 0.6, 0.075, 0.0)),
    ("gpt-4.1", Price::new(2.0, 8.0, 0.5, 0.0)),
    ("gpt-4.1-mini", Price::new(0.4, 1.6, 0.1, 0.0)),
    ("gpt-5", Price::new(1.25, 10.0, 0.125, 0.0)),
    ("gpt-5-mini", Price::new(0.25, 2.0, 0.025, 0.0)),
    ("o3", Price::new(2.0, 8.0, 0.5, 0.0)),
    ("o4-mini", Price::new(1.1, 4.4, 0.275, 0.0)),
    ("glm-4.6", Price::new(0.6, 2.2, 0.11, 0.0)),
    ("gemini-2.5-pro", Price::new(1.25, 10.0, 0.31, 0.0)),
    ("gemini-2.5-flash", Price::new(0.3, 2.5, 0.075, 0.0)),
];

impl Default for PriceTable {
    fn default() -> Self {
        Self {
            models: DEFAULT_PRICES.iter().map(|(m, p)| (m.to_string(), *p)).collect(),
            default: Price::new(15.0, 75.0, 1.5, 18.75),
        }
    }
}

impl PriceTable {
    /// The highest input price in the table (the default included): what a call whose usage
    /// is unknown is charged at.
    pub fn highest_input(&self) -> f64 {
        self.models.values().map(|p| p.input).fold(self.default.input, f64::max)
    }

    pub fn price_for(&self, model: &str) -> Price {
        if let Some(p) = self.models.get(model) {
            return *p;
        }
        // OpenRouter-style `vendor/model`: price the model part.
        let bare = model.rsplit('/').next().unwrap_or(model);
        if let Some(p) = self.models.get(bare) {
            return *p;
        }
        self.models
            .iter()
            .filter(|(k, _)| bare.starts_with(k.as_str()))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, p)| *p)
            .unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_lookup_prefers_exact_then_longest_prefix() {
        let t = PriceTable::default();
        assert_eq!(t.price_for("gpt-4o-mini-2024-07-18").input, 0.15);
        assert_eq!(t.price_for("gpt-4o-2024-08-06").input, 2.5);
        assert_eq!(t.price_for("claude-sonnet-4-20250514").output, 15.0);
        assert_eq!(t.price_for("anthropic/claude-3-5-haiku-latest").input, 0.8);
        assert_eq!(t.price_for("llama3"), t.default);
        let u = crate::usage::Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            cache_read_tokens: 1_000_000,
            cache_write_tokens: 1_000_000,
        };
        assert!((t.price_for("claude-sonnet-4").cost(&u) - 22.05).abs() < 1e-9);
    }
}
