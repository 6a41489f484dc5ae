//! Turning usage into money: a price table per model family, overridable.

use crate::types::Usage;

/// Prices of one model, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPrice {
    /// Input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Input tokens written to the prompt cache (5-minute entries: 1.25 × input).
    pub cache_write: f64,
    /// Input tokens read from the prompt cache (0.1 × input).
    pub cache_read: f64,
}

impl ModelPrice {
    /// A price from input and output rates, with the usual cache multipliers.
    pub fn new(input: f64, output: f64) -> Self {
        Self {
            input,
            output,
            cache_write: input * 1.25,
            cache_read: input * 0.1,
        }
    }

    /// The cost of `usage`, in US dollars.
    pub fn cost(&self, usage: &Usage) -> f64 {
        (usage.input_tokens as f64 * self.input
            + usage.output_tokens as f64 * self.output
            + usage.cache_creation_input_tokens as f64 * self.cache_write
            + usage.cache_read_input_tokens as f64 * self.cache_read)
            / 1_000_000.0
    }
}

/// Prices by model-name prefix; the longest matching prefix wins.
///
/// The defaults are the list prices at the time of writing; prices change, so set
/// your own with [`PriceTable::set`] where it matters.
///
/// # Examples
///
/// ```
/// use coditect_claude::{ModelPrice, PriceTable, types::Usage};
///
/// let mut prices = PriceTable::default();
/// let usage = Usage { input_tokens: 1_000_000, output_tokens: 100_000, ..Usage::default() };
/// assert_eq!(prices.cost("claude-sonnet-4-5-20250929", &usage), Some(3.0 + 1.5));
/// // Batches cost half.
/// assert_eq!(prices.batch_cost("claude-sonnet-4-5", &usage), Some(2.25));
/// prices.set("my-finetune", ModelPrice::new(1.0, 2.0));
/// assert_eq!(prices.cost("my-finetune-v2", &usage), Some(1.2));
/// assert_eq!(prices.cost("unknown-model", &usage), None);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    entries: Vec<(String, ModelPrice)>,
}

impl Default for PriceTable {
    fn default() -> Self {
        let mut t = Self::empty();
        for (prefix, input, output) in [
            ("claude-opus-4-5", 5.0, 25.0),
            ("claude-opus-4", 15.0, 75.0),
            ("claude-3-opus", 15.0, 75.0),
            ("claude-sonnet-4", 3.0, 15.0),
            ("claude-3-7-sonnet", 3.0, 15.0),
            ("claude-3-5-sonnet", 3.0, 15.0),
            ("claude-haiku-4-5", 1.0, 5.0),
            ("claude-3-5-haiku", 0.8, 4.0),
            ("claude-3-haiku", 0.25, 1.25),
        ] {
            t.set(prefix, ModelPrice::new(input, output));
        }
        t
    }
}

impl PriceTable {
    /// A table with no prices.
    pub fn empty() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Sets (or replaces) the price for models whose name starts with `prefix`.
    pub fn set(&mut self, prefix: impl Into<String>, price: ModelPrice) {
        let prefix = prefix.into();
        self.entries.retain(|(p, _)| *p != prefix);
        self.entries.push((prefix, price));
    }

    /// The price for `model`, if any prefix matches.
    pub fn price(&self, model: &str) -> Option<ModelPrice> {
        self.entries
            .iter()
            .filter(|(p, _)| model.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, price)| *price)
    }

    /// The cost of `usage` on `model`, in US dollars.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        self.price(model).map(|p| p.cost(usage))
    }

    /// The cost through the Batches API: half price.
    pub fn batch_cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        self.cost(model, usage).map(|c| c / 2.0)
    }
}
