//! A signal as channels send it, and its validation into a [`Signal`] the
//! resolver can trust.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::identifier::{
    Identifier, IdentifierError, IdentifierRules, IgnoredIdentifier, NormaliseOutcome,
};
use super::profile::EpisodeStatus;
use super::{is_valid_name, is_valid_trait_name};

pub const MAX_IDENTIFIERS: usize = 50;
pub const MAX_TRAITS: usize = 100;
pub const MAX_ANSWERS: usize = 50;
/// Serialized size limit of one trait or answer value.
pub const MAX_VALUE_BYTES: usize = 4096;
pub const MAX_PROPERTIES_BYTES: usize = 16 * 1024;
pub const MAX_SIGNAL_ID_CHARS: usize = 128;
pub const MAX_TEXT_CHARS: usize = 2000;
/// Deepest nesting of arrays and objects in a trait, answer or property value.
/// Stored records wrap values a few levels deeper, and the store's decoder has
/// a fixed depth limit: this keeps every accepted value readable forever.
pub const MAX_VALUE_DEPTH: usize = 32;
/// How far in the future `occurred_at` may lie (clock skew between channels).
pub const MAX_FUTURE_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// One observation from one channel, as posted to `POST /v1/signals`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalInput {
    /// Makes the call idempotent: the same id again returns the first result.
    #[schema(example = "ivr-7f3a-0001")]
    pub signal_id: Option<String>,
    #[schema(example = "ivr")]
    pub channel: String,
    /// Defaults to the time the signal was received.
    pub occurred_at: Option<DateTime<Utc>>,
    /// All identifiers in one signal belong to the same person.
    pub identifiers: Vec<IdentifierInput>,
    /// Trait name -> value; `null` deletes the trait.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub traits: BTreeMap<String, Value>,
    #[serde(default)]
    pub answers: Vec<AnswerInput>,
    pub event: Option<EventInput>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentifierInput {
    #[serde(rename = "type")]
    #[schema(example = "phone")]
    pub kind: String,
    #[schema(example = "06 1234 5678")]
    pub value: String,
    /// The caller checked that this identifier belongs to the customer (a
    /// login, a confirmed e-mail): it may merge profiles whatever its type's
    /// policy. Needs a token with `profiles:write`.
    #[serde(default)]
    pub verified: bool,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerInput {
    #[schema(example = "reason_for_contact")]
    pub key: String,
    #[schema(value_type = Object)]
    pub value: Value,
    /// The question as the channel asked it.
    pub question: Option<String>,
    /// Overrides the configured time-to-live of the key.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    #[serde(rename = "type")]
    #[schema(example = "call_started")]
    pub kind: String,
    pub summary: Option<String>,
    pub episode: Option<EpisodeInput>,
    pub journey_stage: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EpisodeInput {
    #[schema(example = "order-A-1001")]
    pub id: String,
    pub title: Option<String>,
    pub status: Option<EpisodeStatus>,
}

/// Channel names and their priority.
#[derive(Debug, Clone)]
pub struct ChannelRules {
    priority: Vec<String>,
    allow_unknown: bool,
}

impl ChannelRules {
    pub fn new(priority: Vec<String>, allow_unknown: bool) -> ChannelRules {
        ChannelRules {
            priority,
            allow_unknown,
        }
    }

    /// Position in the priority list; unknown channels rank after all known ones.
    pub fn rank(&self, channel: &str) -> usize {
        self.priority
            .iter()
            .position(|c| c == channel)
            .unwrap_or(self.priority.len())
    }

    pub fn check(&self, channel: &str) -> Result<(), SignalError> {
        if !is_valid_name(channel, 32) {
            return Err(SignalError::InvalidChannel(clip(channel)));
        }
        if !self.allow_unknown && !self.priority.iter().any(|c| c == channel) {
            return Err(SignalError::UnknownChannel(channel.to_owned()));
        }
        Ok(())
    }
}

/// Everything validation needs besides the signal.
#[derive(Debug, Clone)]
pub struct SignalRules {
    pub identifiers: IdentifierRules,
    pub channels: ChannelRules,
    pub stages: Vec<String>,
    pub event_stages: BTreeMap<String, String>,
    pub answer_ttl: BTreeMap<String, Duration>,
    pub caps: Caps,
}

/// Per-profile caps: the most absorbed profiles and identifiers one holds.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_merged: usize,
    pub max_identifiers: usize,
}

impl SignalRules {
    pub fn from_settings(settings: &crate::config::Settings) -> SignalRules {
        SignalRules {
            identifiers: IdentifierRules::new(
                &settings.identifiers,
                &settings.phone.default_region,
            ),
            channels: ChannelRules::new(
                settings.channels.priority.clone(),
                settings.channels.allow_unknown,
            ),
            stages: settings.journey.stages.clone(),
            event_stages: settings.journey.event_stages.clone(),
            answer_ttl: settings.answers.ttl.clone(),
            caps: Caps {
                max_merged: settings.profiles.max_merged,
                max_identifiers: settings.profiles.max_identifiers,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignalError {
    #[error("channel `{0}` is not a channel name ([a-z][a-z0-9_]{{0,31}})")]
    InvalidChannel(String),
    #[error("channel `{0}` is not configured")]
    UnknownChannel(String),
    #[error("signal_id must be 1 to {MAX_SIGNAL_ID_CHARS} printable characters without spaces")]
    InvalidSignalId,
    #[error("a signal needs at least one identifier")]
    NoIdentifiers,
    #[error("a signal may carry at most {MAX_IDENTIFIERS} identifiers, this one has {0}")]
    TooManyIdentifiers(usize),
    #[error("identifiers[{index}]: {source}")]
    Identifier {
        index: usize,
        source: IdentifierError,
    },
    #[error("every identifier in the signal is a placeholder; nothing identifies the customer")]
    NoUsableIdentifier,
    #[error(
        "the signal carries {count} `{kind}` identifiers, but a profile may hold at most {limit}"
    )]
    IdentifierLimit {
        kind: String,
        count: usize,
        limit: usize,
    },
    #[error("a signal may carry at most {MAX_TRAITS} traits, this one has {0}")]
    TooManyTraits(usize),
    #[error("trait name `{0}` does not match [a-z][a-z0-9_.]{{0,63}}")]
    InvalidTraitName(String),
    #[error("trait `{0}` has a value larger than {MAX_VALUE_BYTES} bytes")]
    TraitValueTooLarge(String),
    #[error("a signal may carry at most {MAX_ANSWERS} answers, this one has {0}")]
    TooManyAnswers(usize),
    #[error("answers[{0}]: key does not match [a-z][a-z0-9_]{{0,63}}")]
    InvalidAnswerKey(usize),
    #[error("answers[{0}]: value must not be null")]
    NullAnswer(usize),
    #[error("answers[{0}]: value is larger than {MAX_VALUE_BYTES} bytes")]
    AnswerValueTooLarge(usize),
    #[error("{0} is longer than {MAX_TEXT_CHARS} characters")]
    TextTooLong(&'static str),
    #[error("event.type `{0}` does not match [a-z][a-z0-9_]{{0,63}}")]
    InvalidEventType(String),
    #[error("event.episode.id must be 1 to 128 printable characters")]
    InvalidEpisodeId,
    #[error("event.properties are larger than {MAX_PROPERTIES_BYTES} bytes")]
    PropertiesTooLarge,
    #[error("{0} nests arrays and objects deeper than {MAX_VALUE_DEPTH} levels")]
    ValueTooDeep(String),
    #[error("journey stage `{0}` is not configured")]
    UnknownJourneyStage(String),
    #[error("occurred_at lies more than 5 minutes in the future")]
    OccurredInFuture,
    #[error("{0} lies before 1970")]
    TooOld(&'static str),
}

/// A validated signal: identifiers normalised and de-duplicated, every limit checked.
#[derive(Debug, Clone)]
pub struct Signal {
    pub signal_id: Option<String>,
    pub channel: String,
    pub occurred_at: DateTime<Utc>,
    /// Whether the channel gave `occurred_at` (otherwise it is the receiving time).
    pub occurred_at_given: bool,
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
    pub properties: serde_json::Map<String, Value>,
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn check_text(field: &'static str, text: &Option<String>) -> Result<(), SignalError> {
    match text {
        Some(t) if t.chars().count() > MAX_TEXT_CHARS => Err(SignalError::TextTooLong(field)),
        _ => Ok(()),
    }
}

/// Nesting depth of a JSON value (a scalar is 0), stopping early past the limit.
pub fn json_depth(value: &Value) -> usize {
    fn walk(value: &Value, depth: usize) -> usize {
        if depth > MAX_VALUE_DEPTH {
            return depth;
        }
        match value {
            Value::Array(items) => items
                .iter()
                .map(|v| walk(v, depth + 1))
                .max()
                .unwrap_or(depth + 1),
            Value::Object(map) => map
                .values()
                .map(|v| walk(v, depth + 1))
                .max()
                .unwrap_or(depth + 1),
            _ => depth,
        }
    }
    walk(value, 0)
}

/// Serialized JSON size, counted without allocating the text.
pub fn json_size(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a Value to an infallible sink cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

pub fn check_signal_id(id: &str) -> Result<(), SignalError> {
    let ok = !id.is_empty()
        && id.chars().count() <= MAX_SIGNAL_ID_CHARS
        && id.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(SignalError::InvalidSignalId)
    }
}

/// Validates trait names and values (shared by signals and `PATCH .../traits`).
pub fn check_traits(traits: &BTreeMap<String, Value>) -> Result<(), SignalError> {
    if traits.len() > MAX_TRAITS {
        return Err(SignalError::TooManyTraits(traits.len()));
    }
    for (name, value) in traits {
        if !is_valid_trait_name(name) {
            return Err(SignalError::InvalidTraitName(clip(name)));
        }
        if json_size(value) > MAX_VALUE_BYTES {
            return Err(SignalError::TraitValueTooLarge(name.clone()));
        }
        if json_depth(value) > MAX_VALUE_DEPTH {
            return Err(SignalError::ValueTooDeep(format!("trait `{name}`")));
        }
    }
    Ok(())
}

/// Validates answers and stamps their expiry (shared by signals and
/// `POST .../answers`).
pub fn check_answers(
    answers: Vec<AnswerInput>,
    captured_at: DateTime<Utc>,
    ttl: &BTreeMap<String, Duration>,
) -> Result<Vec<ValidAnswer>, SignalError> {
    if answers.len() > MAX_ANSWERS {
        return Err(SignalError::TooManyAnswers(answers.len()));
    }
    answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            if !is_valid_name(&a.key, 64) {
                return Err(SignalError::InvalidAnswerKey(i));
            }
            if a.value.is_null() {
                return Err(SignalError::NullAnswer(i));
            }
            if json_size(&a.value) > MAX_VALUE_BYTES {
                return Err(SignalError::AnswerValueTooLarge(i));
            }
            if json_depth(&a.value) > MAX_VALUE_DEPTH {
                return Err(SignalError::ValueTooDeep(format!("answers[{i}].value")));
            }
            check_text("answers[].question", &a.question)?;
            let expires_at = a.expires_at.or_else(|| {
                ttl.get(&a.key)
                    .and_then(|d| chrono::TimeDelta::from_std(*d).ok())
                    .and_then(|d| captured_at.checked_add_signed(d))
            });
            Ok(ValidAnswer {
                key: a.key,
                value: a.value,
                question: a.question,
                expires_at,
            })
        })
        .collect()
}

impl Signal {
    /// Checks every limit and normalises every identifier. `now` is the time
    /// the signal was received.
    pub fn parse(
        input: SignalInput,
        rules: &SignalRules,
        now: DateTime<Utc>,
    ) -> Result<Signal, SignalError> {
        rules.channels.check(&input.channel)?;
        if let Some(id) = &input.signal_id {
            check_signal_id(id)?;
        }
        let occurred_at = input.occurred_at.unwrap_or(now);
        if occurred_at > now + MAX_FUTURE_SKEW {
            return Err(SignalError::OccurredInFuture);
        }
        if occurred_at.timestamp_millis() < 0 {
            return Err(SignalError::TooOld("occurred_at"));
        }
        if input.identifiers.is_empty() {
            return Err(SignalError::NoIdentifiers);
        }
        if input.identifiers.len() > MAX_IDENTIFIERS {
            return Err(SignalError::TooManyIdentifiers(input.identifiers.len()));
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
        check_traits(&input.traits)?;
        let answers = check_answers(input.answers, occurred_at, &rules.answer_ttl)?;
        let event = input.event.map(|e| validate_event(e, rules)).transpose()?;
        Ok(Signal {
            signal_id: input.signal_id,
            channel: input.channel,
            occurred_at,
            occurred_at_given: input.occurred_at.is_some(),
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

fn validate_event(e: EventInput, rules: &SignalRules) -> Result<ValidEvent, SignalError> {
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
    }
    if json_size(&Value::Object(e.properties.clone())) > MAX_PROPERTIES_BYTES {
        return Err(SignalError::PropertiesTooLarge);
    }
    if e.properties
        .values()
        .any(|v| json_depth(v) + 1 > MAX_VALUE_DEPTH)
    {
        return Err(SignalError::ValueTooDeep("event.properties".into()));
    }
    let journey_stage = match e.journey_stage {
        Some(stage) => {
            if !rules.stages.contains(&stage) {
                return Err(SignalError::UnknownJourneyStage(clip(&stage)));
            }
            Some(stage)
        }
        None => rules.event_stages.get(&e.kind).cloned(),
    };
    Ok(ValidEvent {
        kind: e.kind,
        summary: e.summary,
        episode: e.episode,
        journey_stage,
        properties: e.properties,
    })
}
