//! Journey rules, segments and offers: the memory put to work.
//!
//! Segments are decided on what the profile itself holds (traits, fresh
//! answers, the journey stage, open episodes, and counters of recent
//! interactions kept on every write), so membership is worked out at each
//! write and a read never scans the timeline. A windowed predicate keeps, per
//! distinct interaction filter, the newest `at_least` matching interactions
//! (a [`Hit`](super::Hit) each): enough to tell whether `at_least` of them
//! fall in the window, now or at any later instant.
//!
//! `journey` holds the journey rules, `predicate` the segment tests and
//! their counters, `personalization` the segments and offers put together.

mod journey;
mod personalization;
mod predicate;

use std::collections::BTreeMap;

use serde_json::Value;

pub use journey::JourneyRules;
pub use personalization::{Offer, Personalization};
pub use predicate::Counter;

/// Most segment predicates may look this far back.
pub const MAX_WINDOW_DAYS: i64 = 366;
/// Most interactions one predicate may ask for.
pub const MAX_AT_LEAST: u32 = 100;

/// A configuration entry that cannot work, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub key: String,
    pub reason: String,
}

fn refuse(key: impl Into<String>, reason: impl Into<String>) -> RuleError {
    RuleError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Whether every `(name, value)` of `wanted` is in `properties`, equal.
fn properties_match(
    wanted: &BTreeMap<String, Value>,
    properties: &serde_json::Map<String, Value>,
) -> bool {
    wanted
        .iter()
        .all(|(name, value)| properties.get(name).is_some_and(|v| same_value(v, value)))
}

/// JSON equality where numbers compare by value (`2` equals `2.0`: a
/// configuration file and a signal may write them differently).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}
