//! The validated [`Signal`]: the checks the schema states first
//! ([`SignalInput::check_shape`]), then the ones only the service can judge
//! ([`Signal::parse`]), identifiers normalised on the way.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::check::{
    check_answer_shapes, check_answers, check_signal_id, check_text, check_trait_names,
    check_trait_values, json_depth, json_size,
};
use super::{
    clip, EpisodeInput, EventInput, FeedbackInput, SignalError, SignalInput, SignalRules,
    MAX_FUTURE_SKEW, MAX_IDENTIFIERS, MAX_VALUE_DEPTH,
};
use crate::domain::identifier::{Identifier, IgnoredIdentifier, NormaliseOutcome};
use crate::domain::is_valid_name;

/// A validated signal: identifiers normalised and de-duplicated, every limit checked.
#[derive(Debug, Clone)]
pub struct Signal {
    pub signal_id: Option<String>,
    pub channel: String,
    pub occurred_at: DateTime<Utc>,
    /// Whether the channel gave `occurred_at` (otherwise it is the receiving time).
    pub occurred_at_given: bool,
    /// When this service received it (the clock of the instance that did).
    pub received_at: DateTime<Utc>,
    pub identifiers: Vec<Identifier>,
    /// `verified[i]` is the caller's claim about `identifiers[i]`.
    pub verified: Vec<bool>,
    pub ignored: Vec<IgnoredIdentifier>,
    /// `None` deletes the trait.
    pub traits: BTreeMap<String, Option<Value>>,
    pub answers: Vec<ValidAnswer>,
    pub event: Option<ValidEvent>,
}

#[derive(Debug, Clone)]
pub struct ValidAnswer {
    pub key: String,
    pub value: Value,
    pub question: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct ValidEvent {
    pub kind: String,
    pub summary: Option<String>,
    pub episode: Option<EpisodeInput>,
    /// Explicit or from the configured event-type mapping.
    pub journey_stage: Option<String>,
    /// Whether the signal named `journey_stage` itself (else configuration
    /// derived it, and a retry after a configuration change may derive
    /// another: it is not part of what the signal asserts).
    pub journey_stage_given: bool,
    pub properties: serde_json::Map<String, Value>,
    /// `episode.feedback`, checked.
    pub feedback: Option<ValidFeedback>,
}

/// Feedback whose scores are in range.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidFeedback {
    pub nps: Option<u8>,
    pub ces: Option<u8>,
    pub comment: Option<String>,
}

impl SignalInput {
    /// Checks exactly the rules the published schema states (names, lengths,
    /// counts, configured channels, identifier types and journey stages), so
    /// a signal that passes is one the OpenAPI document calls valid.
    ///
    /// A batch refuses as a whole any item that fails these (`422`, naming the
    /// item): it is malformed the way a body that is not JSON is. What only
    /// the service can judge is left to [`Signal::parse`], and a batch answers
    /// it per item.
    pub fn check_shape(&self, rules: &SignalRules) -> Result<(), SignalError> {
        rules.channels.check(&self.channel)?;
        if let Some(id) = &self.signal_id {
            check_signal_id(id)?;
        }
        if self.identifiers.is_empty() {
            return Err(SignalError::NoIdentifiers);
        }
        if self.identifiers.len() > MAX_IDENTIFIERS {
            return Err(SignalError::TooManyIdentifiers(self.identifiers.len()));
        }
        for (index, raw) in self.identifiers.iter().enumerate() {
            rules
                .identifiers
                .check_shape(&raw.kind, &raw.value)
                .map_err(|source| SignalError::Identifier { index, source })?;
        }
        check_trait_names(&self.traits)?;
        check_answer_shapes(&self.answers)?;
        if let Some(e) = &self.event {
            check_event_shape(e, rules)?;
        }
        Ok(())
    }
}

impl Signal {
    /// The time the signal's observations are ordered by: when it occurred,
    /// but never later than when it was received. A channel may send a time
    /// a little ahead (clock skew), yet nobody wins over a later write by
    /// claiming the future.
    pub fn ordered_at(&self) -> DateTime<Utc> {
        self.occurred_at.min(self.received_at)
    }

    /// Checks every limit and normalises every identifier. `now` is the time
    /// the signal was received. The rules the schema states come first
    /// ([`SignalInput::check_shape`]), then the ones only the service can judge.
    pub fn parse(
        input: SignalInput,
        rules: &SignalRules,
        now: DateTime<Utc>,
    ) -> Result<Signal, SignalError> {
        input.check_shape(rules)?;
        let occurred_at = input.occurred_at.unwrap_or(now);
        if occurred_at > now + MAX_FUTURE_SKEW {
            return Err(SignalError::OccurredInFuture);
        }
        if occurred_at.timestamp_millis() < 0 {
            return Err(SignalError::TooOld("occurred_at"));
        }
        let mut identifiers: Vec<Identifier> = Vec::with_capacity(input.identifiers.len());
        let mut verified: Vec<bool> = Vec::with_capacity(input.identifiers.len());
        let mut ignored = Vec::new();
        for (index, raw) in input.identifiers.iter().enumerate() {
            match rules.identifiers.normalise(&raw.kind, &raw.value) {
                Ok(NormaliseOutcome::Usable(id)) => match identifiers.iter().position(|i| i == &id)
                {
                    Some(seen) => verified[seen] |= raw.verified,
                    None => {
                        identifiers.push(id);
                        verified.push(raw.verified);
                    }
                },
                Ok(NormaliseOutcome::Ignored(reason)) => ignored.push(IgnoredIdentifier {
                    index,
                    kind: raw.kind.clone(),
                    value: raw.value.clone(),
                    reason,
                }),
                Err(source) => return Err(SignalError::Identifier { index, source }),
            }
        }
        if identifiers.is_empty() {
            return Err(SignalError::NoUsableIdentifier);
        }
        let mut per_type: BTreeMap<&str, usize> = BTreeMap::new();
        for id in &identifiers {
            *per_type.entry(id.kind()).or_default() += 1;
        }
        for (kind, count) in per_type {
            if let Some(limit) = rules.identifiers.rule(kind).and_then(|r| r.limit) {
                if count > limit {
                    return Err(SignalError::IdentifierLimit {
                        kind: kind.to_owned(),
                        count,
                        limit,
                    });
                }
            }
        }
        check_trait_values(&input.traits)?;
        let answers = check_answers(input.answers, occurred_at, &rules.answer_ttl)?;
        let event = input.event.map(|e| validate_event(e, rules)).transpose()?;
        Ok(Signal {
            signal_id: input.signal_id,
            channel: input.channel,
            occurred_at,
            occurred_at_given: input.occurred_at.is_some(),
            received_at: now,
            identifiers,
            verified,
            ignored,
            traits: input
                .traits
                .into_iter()
                .map(|(k, v)| (k, (!v.is_null()).then_some(v)))
                .collect(),
            answers,
            event,
        })
    }
}

/// What the schema states about an event: the type's shape, text lengths,
/// the episode id, a configured journey stage.
fn check_event_shape(e: &EventInput, rules: &SignalRules) -> Result<(), SignalError> {
    if !is_valid_name(&e.kind, 64) {
        return Err(SignalError::InvalidEventType(clip(&e.kind)));
    }
    check_text("event.summary", &e.summary)?;
    if let Some(ep) = &e.episode {
        let ok = !ep.id.is_empty()
            && ep.id.chars().count() <= 128
            && ep.id.chars().all(|c| c.is_ascii_graphic());
        if !ok {
            return Err(SignalError::InvalidEpisodeId);
        }
        check_text("event.episode.title", &ep.title)?;
        check_text("event.episode.public_status", &ep.public_status)?;
    }
    if let Some(f) = e.episode.as_ref().and_then(|ep| ep.feedback.as_ref()) {
        check_feedback(f)?;
    }
    if let Some(stage) = &e.journey_stage {
        if !rules.stages.contains(stage) {
            return Err(SignalError::UnknownJourneyStage(clip(stage)));
        }
    }
    Ok(())
}

fn check_feedback(f: &FeedbackInput) -> Result<ValidFeedback, SignalError> {
    if f.nps.is_none() && f.ces.is_none() {
        return Err(SignalError::InvalidFeedback(
            "give `nps` (0 to 10), `ces` (1 to 7) or both",
        ));
    }
    let nps = match f.nps {
        Some(n) if !(0..=10).contains(&n) => {
            return Err(SignalError::InvalidFeedback("nps must be 0 to 10"))
        }
        n => n.and_then(|n| u8::try_from(n).ok()),
    };
    let ces = match f.ces {
        Some(n) if !(1..=7).contains(&n) => {
            return Err(SignalError::InvalidFeedback("ces must be 1 to 7"))
        }
        n => n.and_then(|n| u8::try_from(n).ok()),
    };
    check_text("event.episode.feedback.comment", &f.comment)?;
    Ok(ValidFeedback {
        nps,
        ces,
        comment: f.comment.clone(),
    })
}

fn validate_event(e: EventInput, rules: &SignalRules) -> Result<ValidEvent, SignalError> {
    check_event_shape(&e, rules)?;
    let max = rules.caps.max_properties_bytes;
    if json_size(&Value::Object(e.properties.clone())) > max {
        return Err(SignalError::PropertiesTooLarge(max));
    }
    if e.properties
        .values()
        .any(|v| json_depth(v) + 1 > MAX_VALUE_DEPTH)
    {
        return Err(SignalError::ValueTooDeep("event.properties".into()));
    }
    let journey_stage_given = e.journey_stage.is_some();
    let journey_stage = e.journey_stage.or_else(|| {
        rules
            .journey_rules
            .stage_for(&e.kind, &e.properties)
            .map(str::to_owned)
            .or_else(|| rules.event_stages.get(&e.kind).cloned())
    });
    let feedback = e
        .episode
        .as_ref()
        .and_then(|ep| ep.feedback.as_ref())
        .map(check_feedback)
        .transpose()?;
    Ok(ValidEvent {
        kind: e.kind,
        summary: e.summary,
        episode: e.episode,
        journey_stage,
        journey_stage_given,
        properties: e.properties,
        feedback,
    })
}
