//! What callers see: the response shapes of the contract, built from stored
//! profiles with the caller's field access applied.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::{
    non_null_value_schema, Answer, ConflictReason, Contribution, CustomerId, Episode,
    EpisodeStatus, IdentifierRecord, IdentifierRules, IdentityEvent, IdentityEventKind,
    IgnoredIdentifier, Interaction, Profile, Suggestion,
};

/// What the caller may see. Built from the token's scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Whether PII identifiers and traits are shown in clear.
    pub pii: bool,
}

/// Field rules that decide what is PII.
pub struct Masking<'a> {
    pub access: Access,
    pub identifiers: &'a IdentifierRules,
    pub pii_traits: &'a [String],
}

/// Masks a PII value: phones keep the country and first digit plus the last four
/// (`+316****5678`), e-mails the first letter and the domain (`a***@example.com`),
/// anything else its first two characters (`C-****`).
pub fn mask(kind: &str, value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    match kind {
        "email" => match value.split_once('@') {
            Some((local, domain)) => {
                let first: String = local.chars().take(1).collect();
                format!("{first}***@{domain}")
            }
            None => "***".to_owned(),
        },
        _ if kind == "phone" && chars.len() > 8 => {
            let head: String = chars[..4].iter().collect();
            let tail: String = chars[chars.len() - 4..].iter().collect();
            format!("{head}****{tail}")
        }
        _ => {
            let head: String = chars.iter().take(2.min(chars.len() / 2)).collect();
            format!("{head}****")
        }
    }
}

impl Masking<'_> {
    pub fn identifier_value(&self, kind: &str, value: &str) -> String {
        if self.access.pii || !self.identifiers.is_pii(kind) {
            value.to_owned()
        } else {
            mask(kind, value)
        }
    }

    pub fn trait_value(&self, name: &str, value: &Value) -> Value {
        // `address` also covers namespaced `address.street`.
        let is_pii = self.pii_traits.iter().any(|t| {
            name == t
                || (name.starts_with(t.as_str()) && name.as_bytes().get(t.len()) == Some(&b'.'))
        });
        if self.access.pii || !is_pii {
            return value.clone();
        }
        match value {
            Value::String(s) => Value::String(mask("trait", s)),
            _ => Value::String("****".to_owned()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct IdentifierView {
    #[serde(rename = "type")]
    #[schema(example = "phone")]
    pub kind: String,
    #[schema(example = "+31612345678")]
    pub value: String,
    pub channel: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TraitView {
    /// Any JSON value (a deleted trait is not listed); masked ones are strings.
    #[schema(schema_with = non_null_value_schema)]
    pub value: Value,
    pub channel: String,
    pub observed_at: DateTime<Utc>,
    pub signal_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AnswerView {
    #[schema(schema_with = non_null_value_schema)]
    pub value: Value,
    pub question: Option<String>,
    pub channel: String,
    pub captured_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ChannelView {
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub interactions: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JourneyView {
    #[schema(example = "service")]
    pub stage: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct EpisodeView {
    pub id: String,
    pub title: Option<String>,
    pub status: EpisodeStatus,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub channels: Vec<String>,
    pub last_channel: String,
}

/// The whole profile, as `GET /v1/profiles/{customer_id}` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ProfileView {
    pub customer_id: CustomerId,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub identifiers: Vec<IdentifierView>,
    pub traits: BTreeMap<String, TraitView>,
    pub answers: BTreeMap<String, AnswerView>,
    pub channels: BTreeMap<String, ChannelView>,
    pub merged_ids: Vec<CustomerId>,
    pub journey: JourneyView,
    pub episodes: Vec<EpisodeView>,
    /// Purpose -> the customer's current decision.
    pub consents: BTreeMap<String, ConsentView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ConsentView {
    pub granted: bool,
    /// Where it was given; `merge` when a merge restricted it.
    pub channel: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct InteractionView {
    /// Position on the timeline; also usable as a cursor.
    pub id: String,
    pub channel: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub summary: Option<String>,
    pub episode_id: Option<String>,
    pub journey_stage: Option<String>,
    #[schema(value_type = Object)]
    pub properties: serde_json::Map<String, Value>,
    pub signal_id: Option<String>,
}

/// Identifier on the context card: just the type and the (maybe masked) value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct CardIdentifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// The context card: everything a desk or a bot needs, in one round trip.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ContextCard {
    pub customer_id: CustomerId,
    pub version: u64,
    pub identifiers: Vec<CardIdentifier>,
    /// Current trait values.
    #[schema(value_type = Object)]
    pub traits: BTreeMap<String, Value>,
    /// Fresh (unexpired) answers only.
    pub answers: BTreeMap<String, AnswerView>,
    pub journey_stage: Option<String>,
    pub open_episodes: Vec<EpisodeView>,
    pub last_channel: Option<String>,
    /// Newest first, across all channels.
    pub recent_interactions: Vec<InteractionView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TimelinePage {
    pub customer_id: CustomerId,
    pub interactions: Vec<InteractionView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ConflictView {
    /// The profile that stayed apart, or the one that could not take the identifier.
    pub customer_id: CustomerId,
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

fn identifier_view(r: &IdentifierRecord, m: &Masking<'_>) -> IdentifierView {
    IdentifierView {
        kind: r.identifier.kind().to_owned(),
        value: m.identifier_value(r.identifier.kind(), r.identifier.value()),
        channel: r.channel.clone(),
        first_seen: r.first_seen,
        last_seen: r.last_seen,
    }
}

pub fn answer_view(a: &Answer) -> AnswerView {
    AnswerView {
        value: a.value.clone(),
        question: a.question.clone(),
        channel: a.channel.clone(),
        captured_at: a.captured_at,
        expires_at: a.expires_at,
    }
}

pub fn episode_view(e: &Episode) -> EpisodeView {
    EpisodeView {
        id: e.id.clone(),
        title: e.title.clone(),
        status: e.status,
        opened_at: e.opened_at,
        updated_at: e.updated_at,
        channels: e.channels.iter().cloned().collect(),
        last_channel: e.last_channel.clone(),
    }
}

pub fn interaction_view(i: Interaction) -> InteractionView {
    InteractionView {
        id: i.id,
        channel: i.channel,
        kind: i.kind,
        occurred_at: i.occurred_at,
        summary: i.summary,
        episode_id: i.episode_id,
        journey_stage: i.journey_stage,
        properties: i.properties,
        signal_id: i.signal_id,
    }
}

/// Identifiers in a stable order: by type priority, then type, then value.
fn sorted_identifiers<'p>(p: &'p Profile, m: &Masking<'_>) -> Vec<&'p IdentifierRecord> {
    let mut ids: Vec<&IdentifierRecord> = p.identifiers.iter().collect();
    ids.sort_by(|a, b| {
        let key = |r: &'p IdentifierRecord| {
            (
                m.identifiers.priority(r.identifier.kind()),
                r.identifier.kind(),
                r.identifier.value(),
            )
        };
        key(a).cmp(&key(b))
    });
    ids
}

pub fn profile_view(p: &Profile, m: &Masking<'_>) -> ProfileView {
    ProfileView {
        customer_id: p.customer_id,
        version: p.version,
        created_at: p.created_at,
        updated_at: p.updated_at,
        identifiers: sorted_identifiers(p, m)
            .into_iter()
            .map(|r| identifier_view(r, m))
            .collect(),
        traits: p
            .traits
            .iter()
            .filter_map(|(name, t)| {
                let value = t.value.as_ref()?;
                Some((
                    name.clone(),
                    TraitView {
                        value: m.trait_value(name, value),
                        channel: t.channel.clone(),
                        observed_at: t.observed_at,
                        signal_id: t.signal_id.clone(),
                    },
                ))
            })
            .collect(),
        answers: p
            .answers
            .iter()
            .map(|(k, a)| (k.clone(), answer_view(a)))
            .collect(),
        channels: p
            .channels
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    ChannelView {
                        first_seen: s.first_seen,
                        last_seen: s.last_seen,
                        interactions: s.interactions,
                    },
                )
            })
            .collect(),
        merged_ids: p.merged_ids.clone(),
        journey: JourneyView {
            stage: p.journey.as_ref().map(|j| j.stage.clone()),
            updated_at: p.journey.as_ref().map(|j| j.updated_at),
        },
        episodes: p.episodes.values().map(episode_view).collect(),
        consents: p
            .consents
            .iter()
            .map(|(purpose, c)| {
                (
                    purpose.clone(),
                    ConsentView {
                        granted: c.granted,
                        channel: c.channel.clone(),
                        at: c.at,
                    },
                )
            })
            .collect(),
    }
}

pub fn context_card(
    p: &Profile,
    recent: Vec<Interaction>,
    m: &Masking<'_>,
    now: DateTime<Utc>,
) -> ContextCard {
    let mut open: Vec<&Episode> = p.episodes.values().filter(|e| e.status.is_open()).collect();
    open.sort_by(|a, b| {
        b.updated_at
            .cmp(&a.updated_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    ContextCard {
        customer_id: p.customer_id,
        version: p.version,
        identifiers: sorted_identifiers(p, m)
            .into_iter()
            .map(|r| CardIdentifier {
                kind: r.identifier.kind().to_owned(),
                value: m.identifier_value(r.identifier.kind(), r.identifier.value()),
            })
            .collect(),
        traits: p
            .traits
            .iter()
            .filter_map(|(name, t)| Some((name.clone(), m.trait_value(name, t.value.as_ref()?))))
            .collect(),
        answers: p
            .answers
            .iter()
            .filter(|(_, a)| a.is_fresh(now))
            .map(|(k, a)| (k.clone(), answer_view(a)))
            .collect(),
        journey_stage: p.journey.as_ref().map(|j| j.stage.clone()),
        open_episodes: open.into_iter().map(episode_view).collect(),
        last_channel: p.last_channel().map(str::to_owned),
        recent_interactions: recent.into_iter().map(interaction_view).collect(),
    }
}

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
