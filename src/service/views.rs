//! What callers see: the response shapes of the contract, built from stored
//! profiles with the caller's field access applied.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::config::Settings;
use crate::domain::{
    non_null_value_schema, Answer, ConflictReason, Consent, Contribution, CustomerId, Episode,
    EpisodeStatus, IdentifierRecord, IdentifierRules, IdentityEvent, IdentityEventKind,
    IgnoredIdentifier, Interaction, Profile, SignalRules, Suggestion,
};

pub use crate::domain::Access;

/// Which fields hold personal data, from configuration: the PII traits,
/// and the free text that is *not* personal (free text is, by default).
#[derive(Debug, Clone, Default)]
pub struct FieldRules {
    pub pii_traits: Vec<String>,
    pub public_answers: HashSet<String>,
    pub public_properties: HashSet<String>,
    pub public_title: bool,
    pub public_status: bool,
    pub public_summary: bool,
    pub public_comment: bool,
}

impl FieldRules {
    pub fn new(settings: &Settings) -> FieldRules {
        let privacy = &settings.privacy;
        let field = |name: &str| privacy.public_fields.iter().any(|f| f == name);
        FieldRules {
            pii_traits: settings.traits.pii.clone(),
            public_answers: privacy.public_answers.iter().cloned().collect(),
            public_properties: privacy.public_properties.iter().cloned().collect(),
            public_title: field("episode.title"),
            public_status: field("episode.public_status"),
            public_summary: field("interaction.summary"),
            public_comment: field("feedback.comment"),
        }
    }
}

/// Field rules that decide what is personal, and the one setting views
/// derive a field from.
pub struct Masking<'a> {
    pub access: Access,
    pub identifiers: &'a IdentifierRules,
    pub fields: &'a FieldRules,
    /// A resolved episode's follow-up falls due this long after resolution.
    pub follow_up_delay: chrono::Duration,
}

/// What masked free text shows: nothing of it.
pub const MASKED_TEXT: &str = "****";

/// Masks a PII identifier so that what it shows cannot be completed by
/// trying the rest (each miss spends the lookup budget, see
/// `limits.lookup_misses_per_hour`): at least six characters stay hidden.
///
/// - phones (E.164) keep `+`, the next two digits (the country code, or
///   its start) and, when at least six digits stay hidden, the last two:
///   `+31****78`, so an agent can ask "the number ending in 78?";
/// - e-mails keep the domain, and the first letter of a local part of at
///   least seven characters: `a***@example.com`, `***@example.com`;
/// - other values keep their first two characters when at least six more
///   stay hidden: `LC****`, else nothing: `****`.
pub fn mask(kind: &str, value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    match kind {
        "email" => match value.split_once('@') {
            Some((local, domain)) => {
                let local: Vec<char> = local.chars().collect();
                let first: String = match local.len() >= 7 {
                    true => local[..1].iter().collect(),
                    false => String::new(),
                };
                format!("{first}***@{domain}")
            }
            None => MASKED_TEXT.to_owned(),
        },
        "phone" if chars.len() >= 3 => {
            let head: String = chars[..3].iter().collect();
            // Digits after the head that would stay hidden with a tail of two.
            let hidden = chars.len().saturating_sub(3 + 2);
            let tail: String = match hidden >= 6 {
                true => chars[chars.len() - 2..].iter().collect(),
                false => String::new(),
            };
            format!("{head}****{tail}")
        }
        _ if chars.len() >= 8 => {
            let head: String = chars[..2].iter().collect();
            format!("{head}****")
        }
        _ => MASKED_TEXT.to_owned(),
    }
}

/// Masks a PII trait: its first two characters when it has at least four,
/// so the desk sees a name is there (`An****`). Traits are not lookup keys,
/// so no answer can complete them.
fn mask_trait(value: &str) -> String {
    let head: String = value
        .chars()
        .take(2.min(value.chars().count() / 2))
        .collect();
    format!("{head}****")
}

impl<'a> Masking<'a> {
    /// What `access` may see under `rules` and the field rules.
    pub fn new(access: Access, rules: &'a SignalRules, fields: &'a FieldRules) -> Masking<'a> {
        Masking {
            access,
            identifiers: &rules.identifiers,
            fields,
            follow_up_delay: rules.follow_up_delay,
        }
    }

    pub fn identifier_value(&self, kind: &str, value: &str) -> String {
        if self.access.pii || !self.identifiers.is_secret(kind) {
            value.to_owned()
        } else {
            mask(kind, value)
        }
    }

    pub fn trait_value(&self, name: &str, value: &Value) -> Value {
        // `address` also covers namespaced `address.street`.
        let is_pii = self.fields.pii_traits.iter().any(|t| {
            name == t
                || (name.starts_with(t.as_str()) && name.as_bytes().get(t.len()) == Some(&b'.'))
        });
        if self.access.pii || !is_pii {
            return value.clone();
        }
        match value {
            Value::String(s) => Value::String(mask_trait(s)),
            _ => Value::String(MASKED_TEXT.to_owned()),
        }
    }

    /// Free text, shown when the caller may read personal data or the
    /// configuration calls it not personal (`public`).
    fn text(&self, public: bool, text: &Option<String>) -> Option<String> {
        match text {
            Some(_) if !(self.access.pii || public) => Some(MASKED_TEXT.to_owned()),
            other => other.clone(),
        }
    }

    pub fn answer_value(&self, key: &str, value: &Value) -> Value {
        if self.access.pii || self.fields.public_answers.contains(key) {
            value.clone()
        } else {
            Value::String(MASKED_TEXT.to_owned())
        }
    }

    pub fn title(&self, title: &Option<String>) -> Option<String> {
        self.text(self.fields.public_title, title)
    }

    pub fn properties(
        &self,
        properties: serde_json::Map<String, Value>,
    ) -> serde_json::Map<String, Value> {
        if self.access.pii {
            return properties;
        }
        properties
            .into_iter()
            .map(|(k, v)| match self.fields.public_properties.contains(&k) {
                true => (k, v),
                false => (k, Value::String(MASKED_TEXT.to_owned())),
            })
            .collect()
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TimelinePage {
    pub customer_id: CustomerId,
    pub interactions: Vec<InteractionView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

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
fn sorted_identifiers<'p>(p: &'p Profile, m: &Masking<'_>) -> Vec<&'p IdentifierRecord> {
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

/// What a channel may personalise with, as
/// `GET /v1/profiles/{customer_id}/personalization` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PersonalizationView {
    pub customer_id: CustomerId,
    /// Whether the customer granted the `personalization` purpose.
    pub consent: bool,
    /// Why there is nothing: `consent_not_given` or `consent_denied`.
    #[schema(example = json!(null))]
    pub reason: Option<String>,
    /// Segments the profile is in (none without consent).
    pub segments: Vec<String>,
    /// Offers for those segments, best first (none without consent).
    pub offers: Vec<OfferView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct OfferView {
    #[schema(example = "pink_roadster_test_drive")]
    pub id: String,
    pub title: String,
    pub description: Option<String>,
    /// Higher first.
    pub priority: i64,
    /// The profile's segments this offer targets.
    pub segments: Vec<String>,
    /// As configured, for the channel to render.
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, Value>,
}

pub fn offer_view(o: &crate::domain::Offer, matched: Vec<String>) -> OfferView {
    OfferView {
        id: o.id.clone(),
        title: o.title.clone(),
        description: o.description.clone(),
        priority: o.priority,
        segments: matched,
        data: o.data.clone(),
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

#[cfg(test)]
mod tests {
    use super::mask;

    /// Characters of `value` the mask leaves to guess: what a mask does not
    /// show of it, counted generously (any shown character counts as known).
    fn hidden(value: &str, masked: &str) -> usize {
        let shown = masked.chars().filter(|c| *c != '*').count();
        value.chars().count().saturating_sub(shown)
    }

    #[test]
    fn masks_leave_at_least_six_characters_to_guess() {
        // (kind, value, mask, characters hidden)
        for (kind, value, expected, hidden_at_least) in [
            ("phone", "+31612345678", "+31****78", 7),
            ("phone", "+12025550143", "+12****43", 7),
            ("phone", "+4930123456", "+49****56", 6),
            // Too short to show a tail and still hide six digits.
            ("phone", "+6834001", "+68****", 5),
            ("email", "annadevries@example.com", "a***@example.com", 10),
            // A short local part shows nothing of itself (nor its length).
            ("email", "anna@example.com", "***@example.com", 4),
            ("shoe_size", "LC-99887766", "LC****", 9),
            ("shoe_size", "C-1001", "****", 6),
        ] {
            let masked = mask(kind, value);
            assert_eq!(masked, expected, "{kind}:{value}");
            assert!(
                hidden(value, &masked) >= hidden_at_least,
                "{kind}:{value} shows too much: {masked}"
            );
        }
    }
}
