//! What a signal's ingestion answers: the profile it resolved to, and the
//! identifiers and parts of it that were not applied, and why.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{ConflictReason, CustomerId, IgnoredIdentifier};
use crate::service::masking::Masking;

/// An identifier of the signal that was not applied, and why. It never names
/// another customer: the desk sees suggestions through the read API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ConflictView {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    pub reason: ConflictReason,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct IgnoredView {
    /// Position in the signal's `identifiers`.
    pub index: usize,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    #[schema(example = "placeholder")]
    pub reason: String,
}

/// The result of one signal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct IngestResult {
    pub customer_id: CustomerId,
    /// Whether this signal created the profile (the response is then `201`).
    pub created: bool,
    /// Profiles this signal merged into `customer_id`.
    pub merged_ids: Vec<CustomerId>,
    pub conflicts: Vec<ConflictView>,
    pub version: u64,
    /// Placeholder identifiers that were left out.
    pub ignored_identifiers: Vec<IgnoredView>,
    /// Traits, answers and episodes of the signal that were not stored
    /// because the profile is at one of its caps; everything else of the
    /// signal was.
    #[serde(default)]
    pub not_stored: Vec<NotStoredView>,
}

/// A part of a signal left out because the profile is full.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct NotStoredView {
    /// `traits.<name>`, `answers.<key>` or `episodes.<id>`.
    #[schema(example = "traits.favourite_colour")]
    pub item: String,
    /// The cap it met: `max_traits`, `max_answers`, `max_episodes` or
    /// `max_profile_bytes` (see `profiles.*` in the configuration).
    #[schema(example = "max_traits")]
    pub reason: String,
}

impl IngestResult {
    /// The result as this caller may see it.
    pub fn masked(mut self, masking: &Masking<'_>) -> IngestResult {
        for c in &mut self.conflicts {
            c.value = masking.identifier_value(&c.kind, &c.value);
        }
        for i in &mut self.ignored_identifiers {
            i.value = masking.identifier_value(&i.kind, &i.value);
        }
        self
    }
}

pub fn ignored_view(i: &IgnoredIdentifier) -> IgnoredView {
    IgnoredView {
        index: i.index,
        kind: i.kind.clone(),
        value: i.value.clone(),
        reason: i.reason.to_owned(),
    }
}
