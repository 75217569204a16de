//! One segment test (`when` entry) as compiled from configuration, and the
//! interaction counters the windowed ones read.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{properties_match, refuse, same_value, RuleError, MAX_AT_LEAST, MAX_WINDOW_DAYS};
use crate::domain::definitions::{InteractionPredicate, PredicateSettings};
use crate::domain::profile::{Hit, Profile};
use crate::domain::{is_valid_name, is_valid_trait_name};

/// Counts interactions of one type (and channel and properties).
#[derive(Debug, Clone)]
pub struct Counter {
    /// Names it on the profile; the same filter in two segments is one counter.
    pub key: String,
    kind: String,
    channel: Option<String>,
    properties: BTreeMap<String, Value>,
    /// The largest `at_least` any predicate asks of it.
    pub keep: usize,
}

impl Counter {
    fn key_of(p: &InteractionPredicate) -> String {
        let properties = serde_json::to_string(&p.properties).unwrap_or_default();
        format!(
            "{}|{}|{}",
            p.kind,
            p.channel.as_deref().unwrap_or("*"),
            properties
        )
    }

    pub fn matches(
        &self,
        kind: &str,
        channel: &str,
        properties: &serde_json::Map<String, Value>,
    ) -> bool {
        self.kind == kind
            && self.channel.as_deref().is_none_or(|c| c == channel)
            && properties_match(&self.properties, properties)
    }
}

/// What a value must be.
#[derive(Debug, Clone, Default)]
struct Comparison {
    equals: Option<Value>,
    one_of: Option<Vec<Value>>,
    min: Option<f64>,
    max: Option<f64>,
}

impl Comparison {
    fn holds(&self, value: &Value) -> bool {
        if let Some(e) = &self.equals {
            if !same_value(value, e) {
                return false;
            }
        }
        if let Some(set) = &self.one_of {
            if !set.iter().any(|e| same_value(value, e)) {
                return false;
            }
        }
        if self.min.is_some() || self.max.is_some() {
            let Some(n) = value.as_f64() else {
                return false;
            };
            if self.min.is_some_and(|m| n < m) || self.max.is_some_and(|m| n > m) {
                return false;
            }
        }
        true
    }
}

#[derive(Debug, Clone)]
enum Test {
    Trait(String, Comparison),
    Answer(String, Comparison),
    Stage(Vec<String>),
    OpenEpisodes(u32),
    Interactions {
        counter: String,
        at_least: usize,
        within: chrono::Duration,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Predicate {
    test: Test,
    negate: bool,
}

impl Predicate {
    /// Whether it holds at `now`, and the next instant it may stop or start
    /// holding without a write.
    pub(super) fn decide(&self, p: &Profile, now: DateTime<Utc>) -> (bool, Option<DateTime<Utc>>) {
        let (holds, until) = match &self.test {
            Test::Trait(name, cmp) => (
                p.traits
                    .get(name)
                    .and_then(|t| t.value.as_ref())
                    .is_some_and(|v| cmp.holds(v)),
                None,
            ),
            Test::Answer(key, cmp) => match p.answers.get(key) {
                Some(a) if a.is_fresh(now) => (cmp.holds(&a.value), a.expires_at),
                _ => (false, None),
            },
            Test::Stage(stages) => (
                p.journey
                    .as_ref()
                    .is_some_and(|j| stages.contains(&j.stage)),
                None,
            ),
            Test::OpenEpisodes(n) => (
                p.episodes.values().filter(|e| e.status.is_open()).count() >= *n as usize,
                None,
            ),
            Test::Interactions {
                counter,
                at_least,
                within,
            } => {
                let since = now - *within;
                let hits: &[Hit] = p.counters.get(counter).map_or(&[], Vec::as_slice);
                // Newest first: the `at_least`-th newest decides.
                match hits.get(at_least - 1) {
                    Some(h) if h.at > since => (true, Some(h.at + *within)),
                    _ => (false, None),
                }
            }
        };
        (holds != self.negate, until)
    }
}

pub(super) fn compile_predicate(
    key: &str,
    p: &PredicateSettings,
    stages: &[String],
    counters: &mut BTreeMap<String, Counter>,
) -> Result<Predicate, RuleError> {
    let kinds = [
        p.trait_name.is_some(),
        p.answer.is_some(),
        p.journey_stage.is_some(),
        p.open_episodes.is_some(),
        p.interactions.is_some(),
    ];
    let what = "one of `trait`, `answer`, `journey_stage`, `open_episodes` or `interactions`";
    match kinds.iter().filter(|k| **k).count() {
        0 => return Err(refuse(key, format!("names nothing to test: give {what}"))),
        1 => {}
        _ => {
            return Err(refuse(
                key,
                format!("tests several things: give only {what}"),
            ))
        }
    }
    let compares = p.equals.is_some() || p.one_of.is_some();
    let bounds = p.min.is_some() || p.max.is_some();
    let comparison = Comparison {
        equals: p.equals.clone(),
        one_of: p.one_of.clone(),
        min: p.min,
        max: p.max,
    };
    if let (Some(min), Some(max)) = (p.min, p.max) {
        if min > max {
            return Err(refuse(key, "min is above max"));
        }
    }
    if p.one_of.as_ref().is_some_and(Vec::is_empty) {
        return Err(refuse(
            format!("{key}.one_of"),
            "must list at least one value",
        ));
    }
    let test = if let Some(name) = &p.trait_name {
        if !is_valid_trait_name(name) {
            return Err(refuse(
                format!("{key}.trait"),
                format!("`{name}` is not a trait name ([a-z][a-z0-9_.]{{0,63}})"),
            ));
        }
        Test::Trait(name.clone(), comparison)
    } else if let Some(answer) = &p.answer {
        if !is_valid_name(answer, 64) {
            return Err(refuse(
                format!("{key}.answer"),
                format!("`{answer}` is not a question key ([a-z][a-z0-9_]{{0,63}})"),
            ));
        }
        if bounds {
            return Err(refuse(key, "min and max apply to traits only"));
        }
        Test::Answer(answer.clone(), comparison)
    } else if compares || bounds {
        return Err(refuse(
            key,
            "equals, one_of, min and max apply to `trait` and `answer` only",
        ));
    } else if let Some(wanted) = &p.journey_stage {
        if wanted.is_empty() {
            return Err(refuse(
                format!("{key}.journey_stage"),
                "must list at least one stage",
            ));
        }
        if let Some(unknown) = wanted.iter().find(|s| !stages.contains(s)) {
            return Err(refuse(
                format!("{key}.journey_stage"),
                format!("names `{unknown}`, which is not in journey.stages"),
            ));
        }
        Test::Stage(wanted.clone())
    } else if let Some(n) = p.open_episodes {
        if n == 0 {
            return Err(refuse(
                format!("{key}.open_episodes"),
                "must be at least 1 (use negate for none)",
            ));
        }
        Test::OpenEpisodes(n)
    } else {
        let Some(i) = &p.interactions else {
            unreachable!("one kind is set")
        };
        let key = format!("{key}.interactions");
        if !is_valid_name(&i.kind, 64) {
            return Err(refuse(
                format!("{key}.type"),
                format!("`{}` is not an event type ([a-z][a-z0-9_]{{0,63}})", i.kind),
            ));
        }
        if let Some(c) = &i.channel {
            if !is_valid_name(c, 32) {
                return Err(refuse(
                    format!("{key}.channel"),
                    format!("`{c}` is not a channel name"),
                ));
            }
        }
        if !(1..=MAX_AT_LEAST).contains(&i.at_least) {
            return Err(refuse(
                format!("{key}.at_least"),
                format!("must be 1 to {MAX_AT_LEAST}"),
            ));
        }
        let max_window = std::time::Duration::from_secs(MAX_WINDOW_DAYS as u64 * 86_400);
        if i.within.as_secs() == 0 || i.within > max_window {
            return Err(refuse(
                format!("{key}.within"),
                format!(
                    "`{}` is not a window of 1 second to {MAX_WINDOW_DAYS} days",
                    humantime::format_duration(i.within)
                ),
            ));
        }
        let within = chrono::Duration::from_std(i.within)
            .map_err(|_| refuse(format!("{key}.within"), "is too long"))?;
        let counter_key = Counter::key_of(i);
        let at_least = i.at_least as usize;
        counters
            .entry(counter_key.clone())
            .and_modify(|c| c.keep = c.keep.max(at_least))
            .or_insert_with(|| Counter {
                key: counter_key.clone(),
                kind: i.kind.clone(),
                channel: i.channel.clone(),
                properties: i.properties.clone(),
                keep: at_least,
            });
        Test::Interactions {
            counter: counter_key,
            at_least,
            within,
        }
    };
    Ok(Predicate {
        test,
        negate: p.negate,
    })
}
