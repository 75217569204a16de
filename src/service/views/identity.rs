//! Who is who, as the desk reads it: the identity ledger, an undone merge,
//! and open merge suggestions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::card::CardIdentifier;
use super::profile::ProfileView;
use crate::domain::{Contribution, CustomerId, IdentityEvent, IdentityEventKind, Suggestion};
use crate::service::masking::Masking;

/// One entry of the identity ledger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct HistoryEntry {
    /// Position in the ledger; also usable as a cursor.
    pub id: String,
    pub kind: IdentityEventKind,
    pub at: DateTime<Utc>,
    /// `signal:<signal_id>`, `signal`, or `token:<subject>`.
    pub cause: String,
    /// The identifier added, removed, or linking a merge (masked without `pii:read`).
    pub identifier: Option<CardIdentifier>,
    /// The other profile of a merge or unmerge.
    pub other_id: Option<CustomerId>,
    /// For merges: what the absorbed profile brought.
    pub contributed: Option<Contribution>,
    /// For merges: what the surviving profile held at the merge.
    pub survivor_contributed: Option<Contribution>,
    /// For consent entries: the purpose.
    pub purpose: Option<String>,
    /// The subject of the token that made the change.
    pub by: Option<String>,
    /// The channel it came through: the signal's, or the token's channel claim.
    pub channel: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct HistoryPage {
    pub customer_id: CustomerId,
    /// Newest first.
    pub events: Vec<HistoryEntry>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Both sides of an undone merge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UnmergeResult {
    /// The profile that had absorbed the other, without it.
    pub survivor: ProfileView,
    /// The absorbed profile, restored under its own id.
    pub restored: ProfileView,
}

pub fn history_view(seq: u64, e: IdentityEvent, m: &Masking<'_>) -> HistoryEntry {
    HistoryEntry {
        id: seq.to_string(),
        kind: e.kind,
        at: e.at,
        cause: e.cause,
        identifier: e.identifier.map(|i| CardIdentifier {
            kind: i.kind().to_owned(),
            value: m.identifier_value(i.kind(), i.value()),
        }),
        other_id: e.other_id,
        contributed: e.contributed,
        survivor_contributed: e.survivor_contributed,
        purpose: e.purpose,
        by: e.by,
        channel: e.channel,
    }
}

/// An open suggestion that this profile and another are one person.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct SuggestionView {
    /// The other profile; also the id to dismiss (`DELETE .../suggestions/{id}`)
    /// or to accept (`POST .../merge` with it as `source_id`).
    pub customer_id: CustomerId,
    /// The identifiers the two share (masked without `pii:read`).
    pub evidence: Vec<CardIdentifier>,
    pub first_suggested_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// Signals that linked the two.
    pub signals: u64,
}

pub fn suggestion_view(other: CustomerId, s: Suggestion, m: &Masking<'_>) -> SuggestionView {
    SuggestionView {
        customer_id: other,
        evidence: s
            .evidence
            .iter()
            .map(|i| CardIdentifier {
                kind: i.kind().to_owned(),
                value: m.identifier_value(i.kind(), i.value()),
            })
            .collect(),
        first_suggested_at: s.first_at,
        last_seen_at: s.last_at,
        signals: s.count,
    }
}
