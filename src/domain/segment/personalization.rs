//! Segments and offers, compiled and checked together at start-up: which
//! segments a profile is in, until when, and the offers that earns it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::predicate::{compile_predicate, Counter, Predicate};
use super::{refuse, RuleError};
use crate::domain::definitions::{OfferSettings, SegmentSettings};
use crate::domain::profile::{Membership, Profile};
use crate::domain::{fnv1a, is_valid_name};

/// A fingerprint of the segment definitions as JSON: stable across builds.
fn fingerprint(segments: &BTreeMap<String, SegmentSettings>) -> String {
    fnv1a(&serde_json::to_vec(segments).unwrap_or_default())
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
    use crate::domain::{ChannelRules, CustomerId, Hit, ProfileEdit, TraitValue};
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
