//! Journey rules, segments and offers: the memory put to work.
//!
//! Segments are decided on what the profile itself holds (traits, fresh
//! answers, the journey stage, open episodes, and counters of recent
//! interactions kept on every write), so membership is worked out at each
//! write and a read never scans the timeline. A windowed predicate keeps, per
//! distinct interaction filter, the newest `at_least` matching interactions
//! (a [`Hit`] each): enough to tell whether `at_least` of them fall in the
//! window, now or at any later instant.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::definitions::{
    InteractionPredicate, JourneyRule, OfferSettings, PredicateSettings, SegmentSettings,
};
use super::profile::{Hit, Membership, Profile};
use super::{fnv1a, is_valid_name, is_valid_trait_name};

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

/// A fingerprint of the segment definitions as JSON: stable across builds.
fn fingerprint(segments: &BTreeMap<String, SegmentSettings>) -> String {
    fnv1a(&serde_json::to_vec(segments).unwrap_or_default())
}

/// `[[journey.rules]]`, checked in order.
#[derive(Debug, Clone, Default)]
pub struct JourneyRules {
    rules: Vec<JourneyRule>,
}

impl JourneyRules {
    pub fn compile(rules: &[JourneyRule], stages: &[String]) -> Result<JourneyRules, RuleError> {
        for (i, rule) in rules.iter().enumerate() {
            let key = format!("journey.rules[{i}]");
            if !is_valid_name(&rule.event, 64) {
                return Err(refuse(
                    format!("{key}.event"),
                    format!(
                        "`{}` is not an event type ([a-z][a-z0-9_]{{0,63}})",
                        rule.event
                    ),
                ));
            }
            if !stages.contains(&rule.stage) {
                return Err(refuse(
                    format!("{key}.stage"),
                    format!("names `{}`, which is not in journey.stages", rule.stage),
                ));
            }
        }
        Ok(JourneyRules {
            rules: rules.to_vec(),
        })
    }

    /// The stage the first matching rule gives an event.
    pub fn stage_for(
        &self,
        kind: &str,
        properties: &serde_json::Map<String, Value>,
    ) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.event == kind && properties_match(&r.properties, properties))
            .map(|r| r.stage.as_str())
    }
}

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
struct Predicate {
    test: Test,
    negate: bool,
}

impl Predicate {
    /// Whether it holds at `now`, and the next instant it may stop or start
    /// holding without a write.
    fn decide(&self, p: &Profile, now: DateTime<Utc>) -> (bool, Option<DateTime<Utc>>) {
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

#[derive(Debug, Clone)]
struct Segment {
    name: String,
    when: Vec<Predicate>,
}

/// One offer, as configured.
#[derive(Debug, Clone)]
pub struct Offer {
    pub id: String,
    pub title: String,
    pub description: Option<String>,
    pub segments: Vec<String>,
    pub priority: i64,
    pub data: serde_json::Map<String, Value>,
}

/// Segments, their counters, and offers, checked at start-up.
#[derive(Debug, Clone, Default)]
pub struct Personalization {
    /// A fingerprint of the segment definitions, kept with each stored
    /// membership (see [`Membership::rules`]).
    fingerprint: String,
    segments: Vec<Segment>,
    counters: Vec<Counter>,
    /// Highest priority first, then by id.
    offers: Vec<Offer>,
}

fn compile_predicate(
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

impl Personalization {
    /// Checks segments and offers against each other and the journey stages.
    pub fn compile(
        segments: &BTreeMap<String, SegmentSettings>,
        offers: &BTreeMap<String, OfferSettings>,
        stages: &[String],
    ) -> Result<Personalization, RuleError> {
        let mut counters = BTreeMap::new();
        let mut compiled = Vec::with_capacity(segments.len());
        for (name, segment) in segments {
            let key = format!("segments.{name}");
            if !is_valid_name(name, 64) {
                return Err(refuse(
                    key,
                    "a segment name must match [a-z][a-z0-9_]{0,63}",
                ));
            }
            if segment.when.is_empty() {
                return Err(refuse(
                    format!("{key}.when"),
                    "must list at least one predicate",
                ));
            }
            let when = segment
                .when
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    compile_predicate(&format!("{key}.when[{i}]"), p, stages, &mut counters)
                })
                .collect::<Result<Vec<_>, _>>()?;
            compiled.push(Segment {
                name: name.clone(),
                when,
            });
        }
        let mut ranked = Vec::with_capacity(offers.len());
        for (id, offer) in offers {
            let key = format!("offers.{id}");
            let shape_ok = !id.is_empty()
                && id.len() <= 64
                && id.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !shape_ok {
                return Err(refuse(key, "an offer id must match [a-z0-9_-]{1,64}"));
            }
            if offer.title.trim().is_empty() {
                return Err(refuse(format!("{key}.title"), "must not be empty"));
            }
            if offer.segments.is_empty() {
                return Err(refuse(
                    format!("{key}.segments"),
                    "must name at least one segment",
                ));
            }
            if let Some(unknown) = offer.segments.iter().find(|s| !segments.contains_key(*s)) {
                return Err(refuse(
                    format!("{key}.segments"),
                    format!("names `{unknown}`, which is not a configured segment"),
                ));
            }
            ranked.push(Offer {
                id: id.clone(),
                title: offer.title.clone(),
                description: offer.description.clone(),
                segments: offer.segments.clone(),
                priority: offer.priority,
                data: offer.data.clone(),
            });
        }
        ranked.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
        Ok(Personalization {
            fingerprint: fingerprint(segments),
            segments: compiled,
            counters: counters.into_values().collect(),
            offers: ranked,
        })
    }

    pub fn has_segments(&self) -> bool {
        !self.segments.is_empty()
    }

    /// The counters an interaction feeds.
    pub fn counters_for<'a>(
        &'a self,
        kind: &'a str,
        channel: &'a str,
        properties: &'a serde_json::Map<String, Value>,
    ) -> impl Iterator<Item = &'a Counter> + 'a {
        self.counters
            .iter()
            .filter(move |c| c.matches(kind, channel, properties))
    }

    /// The segments `p` is in at `now`, and until when that holds.
    pub fn membership(&self, p: &Profile, now: DateTime<Utc>) -> Membership {
        let mut segments = Vec::new();
        let mut until: Option<DateTime<Utc>> = None;
        for segment in &self.segments {
            let mut member = true;
            for predicate in &segment.when {
                let (holds, changes_at) = predicate.decide(p, now);
                if let Some(t) = changes_at {
                    until = Some(until.map_or(t, |u| u.min(t)));
                }
                member &= holds;
            }
            if member {
                segments.push(segment.name.clone());
            }
        }
        Membership {
            segments,
            rules: self.fingerprint.clone(),
            until,
        }
    }

    /// The membership stored at the last write while it still holds, else
    /// worked out again from the profile (no store access either way).
    pub fn current(&self, p: &Profile, now: DateTime<Utc>) -> Vec<String> {
        match &p.membership {
            Some(m) if m.rules == self.fingerprint && m.until.is_none_or(|u| now < u) => {
                m.segments.clone()
            }
            _ => self.membership(p, now).segments,
        }
    }

    /// Offers for a profile in `segments`, best first, each with the
    /// segments that earned it.
    pub fn offers(&self, segments: &[String]) -> Vec<(&Offer, Vec<String>)> {
        let mine: BTreeSet<&str> = segments.iter().map(String::as_str).collect();
        self.offers
            .iter()
            .filter_map(|o| {
                let matched: Vec<String> = o
                    .segments
                    .iter()
                    .filter(|s| mine.contains(s.as_str()))
                    .cloned()
                    .collect();
                (!matched.is_empty()).then_some((o, matched))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChannelRules, CustomerId, ProfileEdit, TraitValue};
    use chrono::TimeZone;
    use serde_json::json;

    fn t(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0).unwrap()
    }

    fn segment(when: Value) -> BTreeMap<String, SegmentSettings> {
        let s: SegmentSettings = serde_json::from_value(json!({ "when": when })).unwrap();
        BTreeMap::from([("shoppers".to_owned(), s)])
    }

    fn rules(when: Value) -> Personalization {
        Personalization::compile(&segment(when), &BTreeMap::new(), &["service".to_owned()]).unwrap()
    }

    fn views_on(p: &mut Profile, counter: &str, days: &[u32]) {
        let channels = ChannelRules::new(vec!["web".into()], false);
        for (i, day) in days.iter().enumerate() {
            let hit = Hit {
                at: t(*day),
                id: format!("{day}-{i}"),
            };
            p.apply(
                p.customer_id,
                &ProfileEdit::Count {
                    counter: counter.to_owned(),
                    hit,
                    keep: 2,
                },
                &channels,
            );
        }
    }

    /// Membership worked out at a write holds until the window lets the
    /// deciding interaction go; then a read works it out again, without a write.
    #[test]
    fn a_window_ends_membership_without_a_write() {
        let r = rules(json!([{ "interactions": {
            "type": "page_view", "properties": {"category": "sports_car"},
            "at_least": 2, "within": "10days" } }]));
        let counter = r.counters[0].key.clone();
        let mut p = Profile::new(CustomerId::generate(), t(1));
        views_on(&mut p, &counter, &[3, 1, 5]);
        // Only the newest two are kept, newest first.
        let kept: Vec<DateTime<Utc>> = p.counters[&counter].iter().map(|h| h.at).collect();
        assert_eq!(kept, [t(5), t(3)]);
        let m = r.membership(&p, t(6));
        assert_eq!(m.segments, ["shoppers"]);
        // The second newest (day 3) leaves a 10-day window on day 13.
        assert_eq!(m.until, Some(t(13)));
        p.membership = Some(m);
        assert_eq!(r.current(&p, t(12)), ["shoppers"]);
        assert!(r.current(&p, t(13)).is_empty());
    }

    /// A membership stored under other segment definitions is not trusted.
    #[test]
    fn a_change_of_definitions_is_noticed_at_read() {
        let before = rules(json!([{ "trait": "tier" }]));
        let after = rules(json!([{ "trait": "tier", "equals": "gold" }]));
        let mut p = Profile::new(CustomerId::generate(), t(1));
        p.traits.insert(
            "tier".into(),
            TraitValue {
                value: Some(json!("silver")),
                channel: "web".into(),
                observed_at: t(1),
                signal_id: None,
            },
        );
        p.membership = Some(before.membership(&p, t(2)));
        assert_eq!(before.current(&p, t(3)), ["shoppers"]);
        assert!(after.current(&p, t(3)).is_empty());
    }

    /// Counters are the same whatever order hits and merges come in.
    #[test]
    fn counters_do_not_depend_on_order() {
        let channels = ChannelRules::new(vec!["web".into()], false);
        let mut a = Profile::new(CustomerId::generate(), t(1));
        let mut b = Profile::new(CustomerId::generate(), t(1));
        views_on(&mut a, "c", &[1, 7]);
        views_on(&mut b, "c", &[4, 9]);
        let (mut ab, mut ba) = (a.clone(), b.clone());
        ab.absorb(&b, &channels);
        ba.absorb(&a, &channels);
        assert_eq!(ab.counters, ba.counters);
        views_on(&mut ab, "c", &[2]);
        views_on(&mut ba, "c", &[2]);
        assert_eq!(ab.counters, ba.counters);
        let kept: Vec<DateTime<Utc>> = ab.counters["c"].iter().map(|h| h.at).collect();
        assert_eq!(kept, [t(9), t(7)]);
    }

    /// Trait comparisons: equals, one_of, bounds, negate; an answer past its
    /// expiry does not count and sets when membership must be looked at again.
    #[test]
    fn predicates_compare_traits_and_fresh_answers() {
        let channels = ChannelRules::new(vec!["web".into()], false);
        let r = rules(json!([
            { "trait": "tier", "one_of": ["gold", "platinum"] },
            { "trait": "age", "min": 18, "max": 30 },
            { "trait": "blocked", "negate": true },
            { "answer": "reason_for_contact", "equals": "delivery" },
        ]));
        let mut p = Profile::new(CustomerId::generate(), t(1));
        let set = |p: &mut Profile, name: &str, value: Value| {
            let change = ProfileEdit::Trait {
                name: name.into(),
                value: TraitValue {
                    value: Some(value),
                    channel: "web".into(),
                    observed_at: t(2),
                    signal_id: None,
                },
            };
            p.apply(p.customer_id, &change, &channels);
        };
        set(&mut p, "tier", json!("gold"));
        set(&mut p, "age", json!(18.0));
        p.answers.insert(
            "reason_for_contact".into(),
            crate::domain::Answer {
                value: json!("delivery"),
                question: None,
                channel: "web".into(),
                captured_at: t(2),
                expires_at: Some(t(4)),
                signal_id: None,
            },
        );
        let m = r.membership(&p, t(3));
        assert_eq!(m.segments, ["shoppers"]);
        assert_eq!(m.until, Some(t(4)));
        assert!(
            r.membership(&p, t(4)).segments.is_empty(),
            "the answer expired"
        );
        set(&mut p, "blocked", json!(true));
        assert!(r.membership(&p, t(3)).segments.is_empty(), "negated");
    }

    /// Configuration mistakes name where they are.
    #[test]
    fn bad_predicates_are_refused_with_their_path() {
        let stages = ["service".to_owned()];
        let refused = |when: Value| {
            Personalization::compile(&segment(when), &BTreeMap::new(), &stages).unwrap_err()
        };
        let e = refused(json!([{ "trait": "a", "journey_stage": ["service"] }]));
        assert_eq!(e.key, "segments.shoppers.when[0]");
        let e = refused(json!([{ "journey_stage": ["nowhere"] }]));
        assert_eq!(e.key, "segments.shoppers.when[0].journey_stage");
        let e = refused(json!([{ "trait": "a" }, { "interactions": {
            "type": "page_view", "at_least": 1, "within": "400days" } }]));
        assert_eq!(e.key, "segments.shoppers.when[1].interactions.within");
        let e = refused(json!([{ "trait": "First Name" }]));
        assert_eq!(e.key, "segments.shoppers.when[0].trait");
        let e = refused(json!([{ "answer": "Reason" }]));
        assert_eq!(e.key, "segments.shoppers.when[0].answer");
        let e = refused(json!([{ "open_episodes": 1, "equals": 2 }]));
        assert!(
            e.reason.contains("apply to `trait` and `answer` only"),
            "{e:?}"
        );
    }
}
