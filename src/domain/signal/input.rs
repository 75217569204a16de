//! The wire shapes of a signal, as posted to `POST /v1/signals`: what the
//! published schema states about each field.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::MAX_TRAITS;
use crate::domain::names::{ChannelName, IdentifierType, JourneyStage, TRAIT_NAME_PATTERN};
use crate::domain::profile::EpisodeStatus;

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
