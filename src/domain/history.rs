//! The identity ledger: what happened to a profile's identity, and why.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::customer_id::CustomerId;
use super::identifier::Identifier;
use super::profile::Profile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdentityEventKind {
    Created,
    IdentifierAdded,
    /// Another profile was absorbed into this one.
    MergedIn,
    /// This profile was absorbed into another.
    MergedOut,
    /// A merge involving this profile was undone.
    Unmerged,
    IdentifierRemoved,
    /// The profile was erased; the entry keeps no personal data.
    Erased,
    /// A merge met two different consent decisions and kept the most
    /// restrictive one (denied).
    ConsentRestricted,
}

/// What a profile brought into a merge (counts only: the ledger outlives data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Contribution {
    pub identifiers: usize,
    pub traits: usize,
    pub answers: usize,
    pub episodes: usize,
    pub interactions: u64,
}

impl Contribution {
    pub fn of(p: &Profile) -> Contribution {
        Contribution {
            identifiers: p.identifiers.len(),
            traits: p.traits.values().filter(|t| t.value.is_some()).count(),
            answers: p.answers.len(),
            episodes: p.episodes.len(),
            interactions: p.channels.values().map(|c| c.interactions).sum(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityEvent {
    pub kind: IdentityEventKind,
    pub at: DateTime<Utc>,
    /// `signal:<signal_id>`, `signal` (no id), or `token:<subject>`.
    pub cause: String,
    /// The identifier involved: added, removed, or the one linking a merge.
    pub identifier: Option<Identifier>,
    /// The other profile of a merge or unmerge.
    pub other_id: Option<CustomerId>,
    /// For merges: what the absorbed profile contributed.
    pub contributed: Option<Contribution>,
    /// For merges: what the surviving profile held when it absorbed the other.
    #[serde(default)]
    pub survivor_contributed: Option<Contribution>,
    /// For consent entries: the purpose.
    #[serde(default)]
    pub purpose: Option<String>,
    /// The subject of the token that made the change (absent on entries
    /// written before it was recorded, and on changes no token made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The channel it came through: the signal's, or the channel claim of
    /// the token that asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// A proposed merge of two profiles that a `suggest` identifier linked: the
/// evidence, and whether a person dismissed it (then it is never proposed again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    /// The identifiers that linked the two.
    pub evidence: Vec<Identifier>,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    /// Signals that linked the two.
    pub count: u64,
    pub last_cause: String,
    pub dismissed_at: Option<DateTime<Utc>>,
}
