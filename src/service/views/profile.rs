//! The whole profile as `GET /v1/profiles/{customer_id}` serves it, its
//! parts (identifiers, traits, answers, episodes, interactions, consents)
//! and the timeline page, with the builders that mask them for a caller.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::{
    non_null_value_schema, Answer, Consent, CustomerId, Episode, EpisodeStatus, IdentifierRecord,
    Interaction, Profile,
};
use crate::service::masking::Masking;

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
    /// Present and `true` when the identifier was only ever claimed (typed
    /// or told on a channel that cannot verify it): unconfirmed. Claimed
    /// identifiers are listed only for callers with `pii:read`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claimed: bool,
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
    /// Every stage ever reached, in the order first reached: when first and
    /// last, and on which channels. Kept per stage (not per transition), so
    /// it is the same whatever order signals arrive in, and bounded.
    pub history: Vec<StageView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StageView {
    #[schema(example = "consideration")]
    pub stage: String,
    pub first_at: DateTime<Utc>,
    pub first_channel: String,
    pub last_at: DateTime<Utc>,
    pub last_channel: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct EpisodeView {
    pub id: String,
    pub title: Option<String>,
    pub status: EpisodeStatus,
    /// A status line meant for the customer.
    pub public_status: Option<String>,
    pub opened_at: DateTime<Utc>,
    /// The last touch: when anyone last reported on it.
    pub updated_at: DateTime<Utc>,
    /// Every channel that reported on it.
    pub channels: Vec<String>,
    pub last_channel: String,
    /// When it was resolved (absent unless it is).
    pub resolved_at: Option<DateTime<Utc>>,
    /// The customer's latest feedback on it.
    pub feedback: Option<FeedbackView>,
    /// When someone should call the customer back about it: set while it is
    /// resolved and no feedback arrived since.
    pub follow_up_due_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct FeedbackView {
    /// Net promoter score, 0 to 10.
    pub nps: Option<u8>,
    /// Customer effort score, 1 to 7.
    pub ces: Option<u8>,
    pub comment: Option<String>,
    pub channel: String,
    pub at: DateTime<Utc>,
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
    /// The decisions for this purpose, newest first (at most 20), the
    /// current one included.
    pub history: Vec<ConsentDecision>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ConsentDecision {
    pub granted: bool,
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TimelinePage {
    pub customer_id: CustomerId,
    pub interactions: Vec<InteractionView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn identifier_view(r: &IdentifierRecord, m: &Masking<'_>) -> IdentifierView {
    IdentifierView {
        kind: r.identifier.kind().to_owned(),
        value: m.identifier_value(r.identifier.kind(), r.identifier.value()),
        channel: r.channel.clone(),
        first_seen: r.first_seen,
        last_seen: r.last_seen,
        claimed: r.claimed,
    }
}

pub fn answer_view(key: &str, a: &Answer, m: &Masking<'_>) -> AnswerView {
    AnswerView {
        value: m.answer_value(key, &a.value),
        question: a.question.clone(),
        channel: a.channel.clone(),
        captured_at: a.captured_at,
        expires_at: a.expires_at,
    }
}

pub fn episode_view(e: &Episode, m: &Masking<'_>) -> EpisodeView {
    EpisodeView {
        id: e.id.clone(),
        title: m.title(&e.title),
        status: e.status,
        public_status: m.text(m.fields.public_status, &e.public_status),
        opened_at: e.opened_at,
        updated_at: e.updated_at,
        channels: e.channels.iter().cloned().collect(),
        last_channel: e.last_channel.clone(),
        resolved_at: e.resolved_at(),
        feedback: e.feedback.as_ref().map(|f| FeedbackView {
            nps: f.nps,
            ces: f.ces,
            comment: m.text(m.fields.public_comment, &f.comment),
            channel: f.channel.clone(),
            at: f.at,
        }),
        follow_up_due_at: e.awaiting_feedback().map(|at| at + m.follow_up_delay),
    }
}

/// Episodes in the order a desk reads them: not resolved first (last
/// touched first), then resolved (last resolved first).
pub fn ordered_episodes(p: &Profile) -> Vec<&Episode> {
    let mut all: Vec<&Episode> = p.episodes.values().collect();
    all.sort_by(|a, b| {
        let key = |e: &Episode| {
            let when = if e.status.is_open() {
                e.updated_at
            } else {
                e.status_at
            };
            (!e.status.is_open(), std::cmp::Reverse(when))
        };
        key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id))
    });
    all
}

pub fn interaction_view(i: Interaction, m: &Masking<'_>) -> InteractionView {
    InteractionView {
        id: i.id,
        channel: i.channel,
        kind: i.kind,
        occurred_at: i.occurred_at,
        summary: m.text(m.fields.public_summary, &i.summary),
        episode_id: i.episode_id,
        journey_stage: i.journey_stage,
        properties: m.properties(i.properties),
        signal_id: i.signal_id,
    }
}

/// Identifiers in a stable order: by type priority, then type, then value.
/// Claimed ones only for a caller who may read personal data: whether a
/// typed value stayed on the claimant's profile would tell a claimant
/// whether someone else holds it.
pub(super) fn sorted_identifiers<'p>(p: &'p Profile, m: &Masking<'_>) -> Vec<&'p IdentifierRecord> {
    let mut ids: Vec<&IdentifierRecord> = p
        .identifiers
        .iter()
        .filter(|r| m.access.pii || !r.claimed)
        .collect();
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
            .map(|(k, a)| (k.clone(), answer_view(k, a, m)))
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
            history: stage_history(p),
        },
        episodes: p.episodes.values().map(|e| episode_view(e, m)).collect(),
        consents: p
            .consents
            .iter()
            .map(|(purpose, c)| {
                let decision = |c: &Consent| ConsentDecision {
                    granted: c.granted,
                    channel: c.channel.clone(),
                    at: c.at,
                };
                (
                    purpose.clone(),
                    ConsentView {
                        granted: c.granted,
                        channel: c.channel.clone(),
                        at: c.at,
                        history: p
                            .consent_log
                            .get(purpose)
                            .map(|log| log.iter().map(decision).collect())
                            .unwrap_or_else(|| vec![decision(c)]),
                    },
                )
            })
            .collect(),
    }
}

/// Stages in the order first reached.
fn stage_history(p: &Profile) -> Vec<StageView> {
    let mut history: Vec<StageView> = p
        .stages
        .iter()
        .map(|(stage, v)| StageView {
            stage: stage.clone(),
            first_at: v.first_at,
            first_channel: v.first_channel.clone(),
            last_at: v.last_at,
            last_channel: v.last_channel.clone(),
        })
        .collect();
    history.sort_by(|a, b| (a.first_at, &a.stage).cmp(&(b.first_at, &b.stage)));
    history
}
