//! A signal as channels send it, and its validation into a [`Signal`] the
//! resolver can trust.
//!
//! `input` is the wire shape (the published schema), `rules` what a
//! signal is judged by, `check` the field checks profile writes share,
//! `valid` the validated signal and how one is made, and `edits` the
//! profile changes a validated signal makes.

mod check;
mod edits;
mod input;
mod rules;
mod valid;

use super::identifier::IdentifierError;

pub use check::{check_answers, check_signal_id, check_traits, json_size};
pub use edits::{edits_of, interaction_of, SignalEdits};
pub use input::{
    non_null_value_schema, trait_map_schema, AnswerInput, EpisodeInput, EventInput, FeedbackInput,
    IdentifierInput, SignalInput,
};
pub use rules::{Caps, ChannelRules, SignalRules};
pub use valid::{Signal, ValidAnswer, ValidEvent, ValidFeedback};

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

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}
