//! The request bodies and query strings of the profile routes, as the HTTP
//! contract shapes them (the OpenAPI document is generated from them). The
//! handlers turn them into the service's own arguments.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::domain::names::ChannelName;
use crate::domain::{parse_decimal, trait_map_schema, AnswerInput, CustomerId};
use crate::service::{HistoryQuery, TimelineQuery};

/// Body of `PATCH /v1/profiles/{customer_id}/traits`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TraitsPatch {
    #[schema(value_type = ChannelName)]
    pub channel: String,
    /// Trait name -> new value (at most 4 KiB as JSON); `null` deletes the trait.
    #[schema(schema_with = trait_map_schema)]
    pub traits: BTreeMap<String, Value>,
}

/// Body of `POST /v1/profiles/{customer_id}/answers`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswersInput {
    #[schema(value_type = ChannelName)]
    pub channel: String,
    #[schema(max_items = 50)]
    pub answers: Vec<AnswerInput>,
}

/// Body of `PUT /v1/profiles/{customer_id}/consents/{purpose}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentInput {
    pub granted: bool,
    /// Where the customer gave the decision.
    #[schema(value_type = ChannelName)]
    pub channel: String,
}

/// Body of `POST /v1/profiles/{customer_id}/unmerge`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnmergeInput {
    /// The absorbed profile to restore.
    #[schema(value_type = CustomerId)]
    pub merged_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Page size, 1 to 200 (default 50).
    #[serde(default, deserialize_with = "deserialize_limit")]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,19}$")]
    pub cursor: Option<String>,
}

/// Body of `POST /v1/profiles/{target_id}/merge`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeInput {
    /// The profile to fold into the target; its id becomes an alias.
    #[schema(value_type = CustomerId)]
    pub source_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TimelineParams {
    /// Page size, 1 to 200 (default 50).
    #[serde(default, deserialize_with = "deserialize_limit")]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,19}-[0-9]{1,19}$")]
    pub cursor: Option<String>,
    /// Only interactions on this channel (any channel name, also one no
    /// longer configured).
    #[param(pattern = "^[a-z][a-z0-9_]{0,31}$")]
    pub channel: Option<String>,
}

/// A `limit` query parameter. The query deserializer's own error for a value
/// that is not a number does not name the parameter; this one does. Only
/// plain decimal digits count (`+5` is not a page size).
pub fn deserialize_limit<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    let Some(raw) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    parse_decimal(&raw)
        .and_then(|n| usize::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| {
            let shown: String = raw.chars().take(32).collect();
            serde::de::Error::custom(format!("limit must be a whole number, not `{shown}`"))
        })
}

impl From<HistoryParams> for HistoryQuery {
    fn from(p: HistoryParams) -> HistoryQuery {
        HistoryQuery {
            limit: p.limit,
            cursor: p.cursor,
        }
    }
}

impl From<TimelineParams> for TimelineQuery {
    fn from(p: TimelineParams) -> TimelineQuery {
        TimelineQuery {
            limit: p.limit,
            cursor: p.cursor,
            channel: p.channel,
        }
    }
}
