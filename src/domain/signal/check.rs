//! Field checks shared by signals and the profile writes (`PATCH .../traits`,
//! `POST .../answers`): sizes and depths of JSON values, trait names, answer
//! keys, signal ids and free text.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    clip, AnswerInput, SignalError, ValidAnswer, MAX_ANSWERS, MAX_SIGNAL_ID_CHARS, MAX_TEXT_CHARS,
    MAX_TRAITS, MAX_VALUE_BYTES, MAX_VALUE_DEPTH,
};
use crate::domain::{is_valid_name, is_valid_trait_name};

pub(super) fn check_text(field: &'static str, text: &Option<String>) -> Result<(), SignalError> {
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
pub(super) fn check_trait_names(traits: &BTreeMap<String, Value>) -> Result<(), SignalError> {
    if traits.len() > MAX_TRAITS {
        return Err(SignalError::TooManyTraits(traits.len()));
    }
    match traits.keys().find(|name| !is_valid_trait_name(name)) {
        Some(name) => Err(SignalError::InvalidTraitName(clip(name))),
        None => Ok(()),
    }
}

/// What no schema states: each value's size as JSON and its depth.
pub(super) fn check_trait_values(traits: &BTreeMap<String, Value>) -> Result<(), SignalError> {
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
pub(super) fn check_answer_shapes(answers: &[AnswerInput]) -> Result<(), SignalError> {
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
