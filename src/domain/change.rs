//! What a write changed, as events: the change log's entries, the content a
//! live event carries, and what a group of durable writes changed (events to
//! send, cache entries made stale). The journal in the service layer makes
//! them; the store keeps the log, the event bus and the cache carry them.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Answer, CustomerId, Episode, Identifier, Interaction};

/// What happened to a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ChangeKind {
    /// A new profile (first signal about someone).
    #[serde(rename = "profile.created")]
    Created,
    /// Anything on the profile changed; `version` is the new version.
    #[serde(rename = "profile.updated")]
    Updated,
    /// An answer was captured (`key` names it).
    #[serde(rename = "answer.captured")]
    AnswerCaptured,
    /// An interaction was added to the timeline (`interaction_id`).
    #[serde(rename = "interaction.added")]
    InteractionAdded,
    /// An episode was opened or changed (`episode_id`).
    #[serde(rename = "episode.updated")]
    EpisodeUpdated,
    /// `merged_id` was merged into `survivor_id`; sent on both.
    #[serde(rename = "profile.merged")]
    Merged,
    /// `merged_id` was split off `survivor_id` again; sent on both.
    #[serde(rename = "profile.unmerged")]
    Unmerged,
    /// The profile and everything it held were erased.
    #[serde(rename = "profile.erased")]
    Erased,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "profile.created",
            ChangeKind::Updated => "profile.updated",
            ChangeKind::AnswerCaptured => "answer.captured",
            ChangeKind::InteractionAdded => "interaction.added",
            ChangeKind::EpisodeUpdated => "episode.updated",
            ChangeKind::Merged => "profile.merged",
            ChangeKind::Unmerged => "profile.unmerged",
            ChangeKind::Erased => "profile.erased",
        }
    }
}

/// One entry of the change log: what happened to which profile, at which
/// position. Positions only grow; they are the change feed's cursor and the
/// event stream's event id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    /// Position in the change log.
    #[schema(example = 1042)]
    pub seq: u64,
    pub at: DateTime<Utc>,
    #[serde(rename = "type")]
    pub kind: ChangeKind,
    /// The profile this entry is about (whose stream carries it).
    #[schema(value_type = String, example = "cus_01HZX3M4Q7R8S9T0V1W2X3Y4Z5")]
    pub customer_id: CustomerId,
    /// The profile's version after the change, where it still exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Merges and unmerges: the profile that absorbed (or gave back) `merged_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub survivor_id: Option<CustomerId>,
    /// Merges and unmerges: the profile absorbed (or restored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub merged_id: Option<CustomerId>,
    /// `answer.captured`: the answer's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `interaction.added`: the interaction's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interaction_id: Option<String>,
    /// `episode.updated`: the episode's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode_id: Option<String>,
}

impl Change {
    pub fn new(kind: ChangeKind, customer_id: CustomerId, at: DateTime<Utc>) -> Change {
        Change {
            seq: 0,
            at,
            kind,
            customer_id,
            version: None,
            survivor_id: None,
            merged_id: None,
            key: None,
            interaction_id: None,
            episode_id: None,
        }
    }
}

/// The content a live event is about, unmasked (masked where it is sent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    Answer(Answer),
    Interaction(Interaction),
    Episode(Episode),
}

/// A change as it is sent live: the log entry and what it is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveEvent {
    pub change: Change,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
}

/// What a group of durable writes changed: the events to send and the cache
/// entries they make stale.
#[derive(Debug, Default)]
pub struct Committed {
    pub events: Vec<LiveEvent>,
    pub customers: BTreeSet<CustomerId>,
    pub identifiers: BTreeSet<Identifier>,
    /// The highest change-log position among these writes (0: none).
    pub last_seq: u64,
}

impl Committed {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.customers.is_empty() && self.identifiers.is_empty()
    }

    pub fn absorb(&mut self, other: Committed) {
        self.events.extend(other.events);
        self.customers.extend(other.customers);
        self.identifiers.extend(other.identifiers);
        self.last_seq = self.last_seq.max(other.last_seq);
    }
}
