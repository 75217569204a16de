//! Which of two observations wins: later time, then higher channel priority,
//! then signal id, then value: a total order, so replicas agree.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::*;

/// Orders two observations: `Greater` means `a` wins.
pub(super) fn observation_order(
    channels: &ChannelRules,
    (a_at, a_channel, a_signal): (DateTime<Utc>, &str, Option<&str>),
    (b_at, b_channel, b_signal): (DateTime<Utc>, &str, Option<&str>),
) -> Ordering {
    a_at.cmp(&b_at)
        // A lower rank is a higher priority, so the comparison is reversed.
        .then_with(|| channels.rank(b_channel).cmp(&channels.rank(a_channel)))
        .then_with(|| a_signal.cmp(&b_signal))
}

pub(super) fn value_order(a: &Option<Value>, b: &Option<Value>) -> Ordering {
    let text = |v: &Option<Value>| v.as_ref().map(Value::to_string);
    text(a).cmp(&text(b))
}

impl TraitValue {
    /// Whether `self` should replace `current`.
    pub fn beats(&self, current: &TraitValue, channels: &ChannelRules) -> bool {
        observation_order(
            channels,
            (self.observed_at, &self.channel, self.signal_id.as_deref()),
            (
                current.observed_at,
                &current.channel,
                current.signal_id.as_deref(),
            ),
        )
        .then_with(|| value_order(&self.value, &current.value))
            == Ordering::Greater
    }
}

impl Answer {
    pub fn beats(&self, current: &Answer, channels: &ChannelRules) -> bool {
        observation_order(
            channels,
            (self.captured_at, &self.channel, self.signal_id.as_deref()),
            (
                current.captured_at,
                &current.channel,
                current.signal_id.as_deref(),
            ),
        )
        .then_with(|| self.value.to_string().cmp(&current.value.to_string()))
        .then_with(|| self.question.cmp(&current.question))
        .then_with(|| self.expires_at.cmp(&current.expires_at))
            == Ordering::Greater
    }
}
