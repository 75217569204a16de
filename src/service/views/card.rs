//! The context card: everything a desk or a bot needs in one round trip,
//! built from the profile's own views.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::profile::{
    answer_view, episode_view, interaction_view, ordered_episodes, sorted_identifiers, AnswerView,
    EpisodeView, InteractionView,
};
use crate::domain::{CustomerId, Interaction, Profile};
use crate::service::masking::Masking;

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
    /// Episodes not resolved, last touched first.
    pub open_episodes: Vec<EpisodeView>,
    /// Up to 10 episodes: the open ones first (last touched first), then
    /// the resolved ones (last resolved first).
    pub episodes: Vec<EpisodeView>,
    /// Resolved episodes awaiting the customer's feedback, soonest due first
    /// (at most 10).
    pub follow_ups: Vec<CardFollowUp>,
    pub last_channel: Option<String>,
    /// Newest first, across all channels.
    pub recent_interactions: Vec<InteractionView>,
}

/// A follow-up on the context card: tell the agent to ask how it went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct CardFollowUp {
    pub episode_id: String,
    pub title: Option<String>,
    pub due_at: DateTime<Utc>,
}

/// Episodes on the card at most.
pub const CARD_EPISODES: usize = 10;

pub fn context_card(
    p: &Profile,
    recent: Vec<Interaction>,
    m: &Masking<'_>,
    now: DateTime<Utc>,
) -> ContextCard {
    let delay = m.follow_up_delay;
    let ordered = ordered_episodes(p);
    let open: Vec<EpisodeView> = ordered
        .iter()
        .filter(|e| e.status.is_open())
        .map(|e| episode_view(e, m))
        .collect();
    let mut follow_ups: Vec<CardFollowUp> = p
        .episodes
        .values()
        .filter_map(|e| {
            Some(CardFollowUp {
                episode_id: e.id.clone(),
                title: m.title(&e.title),
                due_at: e.awaiting_feedback()? + delay,
            })
        })
        .collect();
    follow_ups.sort_by(|a, b| (a.due_at, &a.episode_id).cmp(&(b.due_at, &b.episode_id)));
    follow_ups.truncate(CARD_EPISODES);
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
            .map(|(k, a)| (k.clone(), answer_view(k, a, m)))
            .collect(),
        journey_stage: p.journey.as_ref().map(|j| j.stage.clone()),
        episodes: ordered
            .iter()
            .take(CARD_EPISODES)
            .map(|e| episode_view(e, m))
            .collect(),
        open_episodes: open,
        follow_ups,
        last_channel: p.last_channel().map(str::to_owned),
        recent_interactions: recent.into_iter().map(|i| interaction_view(i, m)).collect(),
    }
}
