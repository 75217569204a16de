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
use super::names::{ChannelName, IdentifierType, JourneyStage, TRAIT_NAME_PATTERN};
use super::profile::EpisodeStatus;
use super::segment::{JourneyRules, Personalization};
use super::{is_valid_name, is_valid_trait_name};

pub const MAX_IDENTIFIERS: usize = 50;
pub const MAX_TRAITS: usize = 100;
pub const MAX_ANSWERS: usize = 50;
/// What one signal may carry, which a profile's caps must at least allow.
pub const MAX_TRAITS_PER_SIGNAL: usize = MAX_TRAITS;
pub const MAX_ANSWERS_PER_SIGNAL: usize = MAX_ANSWERS;
/// Serialized size limit of one trait or answer value.
pub const MAX_VALUE_BYTES: usize = 4096;
pub const MAX_SIGNAL_ID_CHARS: usize = 128;
pub const MAX_TEXT_CHARS: usize = 2000;
/// Deepest nesting of arrays and objects in a trait, answer or property value.
/// Stored records wrap values a few levels deeper, and the store's decoder has
/// a fixed depth limit: this keeps every accepted value readable forever.
pub const MAX_VALUE_DEPTH: usize = 32;
/// How far in the future `occurred_at` may lie (clock skew between channels).
pub const MAX_FUTURE_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// One observation from one channel, as posted to `POST /v1/signals`.
///
/// This schema states every rule a client can check from the document alone.
/// What it cannot state (a phone number that is no phone number, only
/// placeholder values, two `account_id`s, a time in the future, a value over
/// its byte or depth limit) is answered with a `422` whose code names the rule.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalInput {
    /// Makes the call idempotent: the same id again returns the first result.
    #[schema(
        example = "ivr-7f3a-0001",
        pattern = "^[!-~]{1,128}$",
        min_length = 1,
        max_length = 128
    )]
    pub signal_id: Option<String>,
    #[schema(value_type = ChannelName)]
    pub channel: String,
    /// Defaults to the time the signal was received; not before 1970 and at
    /// most 5 minutes in the future. A time later than the receipt is
    /// ordered as the receipt time: nobody wins by claiming the future.
    pub occurred_at: Option<DateTime<Utc>>,
    /// All identifiers in one signal belong to the same person.
    #[schema(min_items = 1, max_items = 50)]
    pub identifiers: Vec<IdentifierInput>,
    /// Trait name -> value (at most 4 KiB as JSON); `null` deletes the trait.
    #[serde(default)]
    #[schema(schema_with = trait_map_schema)]
    pub traits: BTreeMap<String, Value>,
    #[serde(default)]
    #[schema(max_items = 50)]
    pub answers: Vec<AnswerInput>,
    pub event: Option<EventInput>,
}

/// `traits` of a signal or a trait patch: names in the trait-name shape, at
/// most `MAX_TRAITS`, any JSON value (`null` deletes).
pub fn trait_map_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(TRAIT_NAME_PATTERN)),
        ))
        .max_properties(Some(MAX_TRAITS))
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .build()
}

/// Any JSON value but `null` (answers; trait values as served).
pub fn non_null_value_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::Array(vec![
            Type::Object,
            Type::Array,
            Type::String,
            Type::Number,
            Type::Boolean,
        ]))
        .build()
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentifierInput {
    #[serde(rename = "type")]
    #[schema(value_type = IdentifierType)]
    pub kind: String,
    /// Written any way the type's normaliser accepts (phones to E.164 with
    /// the default region, e-mails trimmed and lower-cased).
    #[schema(example = "06 1234 5678", max_length = 256)]
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
    #[schema(example = "reason_for_contact", pattern = "^[a-z][a-z0-9_]{0,63}$")]
    pub key: String,
    /// Any JSON value but `null` (at most 4 KiB as JSON).
    #[schema(schema_with = non_null_value_schema)]
    pub value: Value,
    /// The question as the channel asked it.
    #[schema(max_length = 2000)]
    pub question: Option<String>,
    /// Overrides the configured time-to-live of the key.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    #[serde(rename = "type")]
    #[schema(example = "call_started", pattern = "^[a-z][a-z0-9_]{0,63}$")]
    pub kind: String,
    #[schema(max_length = 2000)]
    pub summary: Option<String>,
    pub episode: Option<EpisodeInput>,
    /// Defaults to the stage `journey.event_stages` gives the event type.
    #[schema(value_type = Option<JourneyStage>)]
    pub journey_stage: Option<String>,
    /// Free-form (at most 16 KiB as JSON).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EpisodeInput {
    #[schema(
        example = "order-A-1001",
        pattern = "^[!-~]{1,128}$",
        min_length = 1,
        max_length = 128
    )]
    pub id: String,
    #[schema(max_length = 2000)]
    pub title: Option<String>,
    pub status: Option<EpisodeStatus>,
    /// A status line meant for the customer ("Your parcel left our depot").
    #[schema(max_length = 2000)]
    pub public_status: Option<String>,
    /// What the customer said about how it was handled; also kept as the
    /// traits `nps` and `ces`. Settles a follow-up owed since its resolution.
    pub feedback: Option<FeedbackInput>,
}

/// What the customer said about how an episode was handled: a net promoter
/// score, a customer effort score, or both.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackInput {
    /// Net promoter score: how likely to recommend us, 0 to 10.
    #[schema(minimum = 0, maximum = 10)]
    pub nps: Option<i64>,
    /// Customer effort score: how easy it was, 1 to 7.
    #[schema(minimum = 1, maximum = 7)]
    pub ces: Option<i64>,
    #[schema(max_length = 2000)]
    pub comment: Option<String>,
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
    /// `journey.rules`: checked before `event_stages`.
    pub journey_rules: JourneyRules,
    pub answer_ttl: BTreeMap<String, Duration>,
    pub caps: Caps,
    /// Who is believed about which identifier type.
    pub trust: super::trust::TrustRules,
    pub personalization: Personalization,
    /// How long after an episode is resolved its follow-up falls due.
    pub follow_up_delay: chrono::Duration,
}

/// Per-profile caps: the most absorbed profiles, identifiers, traits,
/// answers and episodes one holds, and the most bytes it takes as stored;
/// and the most bytes of properties one interaction carries.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_merged: usize,
    pub max_identifiers: usize,
    /// Of the identifiers, the most held on a claim alone.
    pub max_claimed_identifiers: usize,
    pub max_traits: usize,
    pub max_answers: usize,
    pub max_episodes: usize,
    pub max_profile_bytes: usize,
    pub max_properties_bytes: usize,
}

impl Caps {
    /// The built-in defaults (`config/default.toml`).
    pub const DEFAULT: Caps = Caps {
        max_merged: 100,
        max_identifiers: 1000,
        max_claimed_identifiers: 10,
        max_traits: 500,
        max_answers: 200,
        max_episodes: 500,
        max_profile_bytes: 256 * 1024,
        max_properties_bytes: 16 * 1024,
    };
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
    #[error("event.properties are larger than {0} bytes (profiles.max_properties_bytes)")]
    PropertiesTooLarge(usize),
    #[error("{0} nests arrays and objects deeper than {MAX_VALUE_DEPTH} levels")]
    ValueTooDeep(String),
    #[error("journey stage `{0}` is not configured")]
    UnknownJourneyStage(String),
    #[error("event.episode.feedback: {0}")]
    InvalidFeedback(&'static str),
    #[error("occurred_at lies more than 5 minutes in the future")]
    OccurredInFuture,
    #[error("{0} lies before 1970")]
    TooOld(&'static str),
}

impl SignalRules {
    /// Works out what a profile derives from the rest before it is stored:
    /// its segment membership as of `now` (nothing when no segment is
    /// configured: 60 bytes less on every profile).
    pub fn refresh(&self, p: &mut crate::domain::Profile, now: DateTime<Utc>) {
        p.membership = self
            .personalization
            .has_segments()
            .then(|| self.personalization.membership(p, now));
    }
}

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
    check_trait_names(traits)?;
    check_trait_values(traits)
}

/// What the schema states about `traits`: how many, and the names.
fn check_trait_names(traits: &BTreeMap<String, Value>) -> Result<(), SignalError> {
    if traits.len() > MAX_TRAITS {
        return Err(SignalError::TooManyTraits(traits.len()));
    }
    match traits.keys().find(|name| !is_valid_trait_name(name)) {
        Some(name) => Err(SignalError::InvalidTraitName(clip(name))),
        None => Ok(()),
    }
}

/// What no schema states: each value's size as JSON and its depth.
fn check_trait_values(traits: &BTreeMap<String, Value>) -> Result<(), SignalError> {
    for (name, value) in traits {
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
    check_answer_shapes(&answers)?;
    answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            if json_size(&a.value) > MAX_VALUE_BYTES {
                return Err(SignalError::AnswerValueTooLarge(i));
            }
            if json_depth(&a.value) > MAX_VALUE_DEPTH {
                return Err(SignalError::ValueTooDeep(format!("answers[{i}].value")));
            }
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

/// What the schema states about `answers`: how many, the keys, no `null`
/// value, the length of the question.
fn check_answer_shapes(answers: &[AnswerInput]) -> Result<(), SignalError> {
    if answers.len() > MAX_ANSWERS {
        return Err(SignalError::TooManyAnswers(answers.len()));
    }
    for (i, a) in answers.iter().enumerate() {
        if !is_valid_name(&a.key, 64) {
            return Err(SignalError::InvalidAnswerKey(i));
        }
        if a.value.is_null() {
            return Err(SignalError::NullAnswer(i));
        }
        check_text("answers[].question", &a.question)?;
    }
    Ok(())
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
