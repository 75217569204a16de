//! Reading profiles and context cards; writing traits and answers; manual merge
//! and erasure.

use std::collections::BTreeMap;

use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::ingest::{absorb, SignalRecord};
use super::views::{self, Access, ContextCard, ProfileView, TimelinePage};
use super::{atomically, ServiceError, Services};
use crate::domain::{
    check_answers, check_traits, is_valid_name, Answer, AnswerInput, ConflictReason, CustomerId,
    Interaction, NormaliseOutcome, Profile, TraitValue,
};
use crate::store::{Store, StoreTx, TimelinePosition};

pub const DEFAULT_CONTEXT_INTERACTIONS: usize = 10;
pub const MAX_PAGE: usize = 200;

/// Body of `PATCH /v1/profiles/{customer_id}/traits`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TraitsPatch {
    #[schema(example = "agent")]
    pub channel: String,
    /// Trait name -> new value; `null` deletes the trait.
    #[schema(value_type = Object)]
    pub traits: BTreeMap<String, Value>,
}

/// Body of `POST /v1/profiles/{customer_id}/answers`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswersInput {
    #[schema(example = "chat")]
    pub channel: String,
    pub answers: Vec<AnswerInput>,
}

/// Body of `POST /v1/profiles/{target_id}/merge`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeInput {
    /// The profile to fold into the target; its id becomes an alias.
    pub source_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TimelineQuery {
    /// Page size, 1 to 200 (default 50).
    #[serde(default, deserialize_with = "deserialize_limit")]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only interactions on this channel.
    pub channel: Option<String>,
}

/// A `limit` query parameter. The query deserializer's own error for a value
/// that is not a number does not name the parameter; this one does.
pub fn deserialize_limit<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    let Some(raw) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    raw.parse().map(Some).map_err(|_| {
        let shown: String = raw.chars().take(32).collect();
        serde::de::Error::custom(format!("limit must be a whole number, not `{shown}`"))
    })
}

impl Services {
    /// The live profile under `id`, or where it went.
    fn live(&self, id: CustomerId) -> Result<Profile, ServiceError> {
        if let Some(p) = self.store.profile(id)? {
            return Ok(p);
        }
        match self.store.alias(id)? {
            Some(to) => Err(ServiceError::Moved { from: id, to }),
            None => Err(ServiceError::ProfileNotFound("profile")),
        }
    }

    fn owner_of(&self, kind: &str, value: &str) -> Result<Profile, ServiceError> {
        let identifier = match self.rules.identifiers.normalise(kind, value) {
            Ok(NormaliseOutcome::Usable(id)) => id,
            Ok(NormaliseOutcome::Ignored(_)) => return Err(ServiceError::IdentifierNotOwned),
            Err(e) => return Err(ServiceError::Identifier(e)),
        };
        let owner = self
            .store
            .owner(&identifier)?
            .ok_or(ServiceError::IdentifierNotOwned)?;
        // The index always names a live profile; a miss is a race with erasure.
        self.store
            .profile(owner)?
            .ok_or(ServiceError::IdentifierNotOwned)
    }

    pub fn profile(&self, id: CustomerId, access: Access) -> Result<ProfileView, ServiceError> {
        let p = self.live(id)?;
        Ok(views::profile_view(&p, &self.masking(access)))
    }

    pub fn lookup(
        &self,
        kind: &str,
        value: &str,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        let p = self.owner_of(kind, value)?;
        Ok(views::profile_view(&p, &self.masking(access)))
    }

    pub fn context(
        &self,
        id: CustomerId,
        limit: usize,
        access: Access,
    ) -> Result<ContextCard, ServiceError> {
        let p = self.live(id)?;
        self.card(&p, limit, access)
    }

    pub fn context_by(
        &self,
        kind: &str,
        value: &str,
        limit: usize,
        access: Access,
    ) -> Result<ContextCard, ServiceError> {
        let p = self.owner_of(kind, value)?;
        self.card(&p, limit, access)
    }

    fn card(&self, p: &Profile, limit: usize, access: Access) -> Result<ContextCard, ServiceError> {
        let (recent, _) = self.interactions(p, None, limit.min(MAX_PAGE), None)?;
        Ok(views::context_card(
            p,
            recent,
            &self.masking(access),
            Services::now(),
        ))
    }

    pub fn timeline(
        &self,
        id: CustomerId,
        q: &TimelineQuery,
    ) -> Result<TimelinePage, ServiceError> {
        let p = self.live(id)?;
        let before = match &q.cursor {
            Some(c) => Some(TimelinePosition::from_id(c).ok_or(ServiceError::InvalidCursor)?),
            None => None,
        };
        let limit = q.limit.unwrap_or(50).clamp(1, MAX_PAGE);
        let (items, more) = self.interactions(&p, before, limit, q.channel.as_deref())?;
        let next_cursor = if more {
            items.last().map(|i| i.id.clone())
        } else {
            None
        };
        Ok(TimelinePage {
            customer_id: p.customer_id,
            interactions: items.into_iter().map(views::interaction_view).collect(),
            next_cursor,
        })
    }

    /// Newest-first interactions across every member of the profile, and whether
    /// older ones remain.
    fn interactions(
        &self,
        p: &Profile,
        before: Option<TimelinePosition>,
        limit: usize,
        channel: Option<&str>,
    ) -> Result<(Vec<Interaction>, bool), ServiceError> {
        let keep = |i: &Interaction| channel.is_none_or(|c| i.channel == c);
        let mut all: Vec<(TimelinePosition, Interaction)> = Vec::new();
        for member in p.members() {
            for i in self.store.timeline(member, before, limit + 1, &keep)? {
                let pos = TimelinePosition::from_id(&i.id)
                    .unwrap_or(TimelinePosition { millis: 0, seq: 0 });
                all.push((pos, i));
            }
        }
        all.sort_by_key(|(pos, _)| std::cmp::Reverse(*pos));
        let more = all.len() > limit;
        all.truncate(limit);
        Ok((all.into_iter().map(|(_, i)| i).collect(), more))
    }

    pub async fn patch_traits(
        &self,
        id: CustomerId,
        patch: TraitsPatch,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        self.rules.channels.check(&patch.channel)?;
        check_traits(&patch.traits)?;
        let now = Services::now();
        let rules = self.rules.clone();
        let p = self
            .committer
            .run(move |store| {
                update(store, id, |_, p| {
                    for (name, value) in &patch.traits {
                        p.set_trait(
                            name,
                            TraitValue {
                                value: (!value.is_null()).then(|| value.clone()),
                                channel: patch.channel.clone(),
                                observed_at: now,
                                signal_id: None,
                            },
                            &rules.channels,
                        );
                    }
                    p.touch_channel(&patch.channel, now, 0);
                    Ok(())
                })
            })
            .await?;
        Ok(views::profile_view(&p, &self.masking(access)))
    }

    pub async fn add_answers(
        &self,
        id: CustomerId,
        input: AnswersInput,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        self.rules.channels.check(&input.channel)?;
        let now = Services::now();
        let answers = check_answers(input.answers, now, &self.rules.answer_ttl)?;
        let rules = self.rules.clone();
        let channel = input.channel;
        let p = self
            .committer
            .run(move |store| {
                update(store, id, |_, p| {
                    for a in &answers {
                        p.set_answer(
                            &a.key,
                            Answer {
                                value: a.value.clone(),
                                question: a.question.clone(),
                                channel: channel.clone(),
                                captured_at: now,
                                expires_at: a.expires_at,
                                signal_id: None,
                            },
                            &rules.channels,
                        );
                    }
                    p.touch_channel(&channel, now, 0);
                    Ok(())
                })
            })
            .await?;
        Ok(views::profile_view(&p, &self.masking(access)))
    }

    /// A confirmed manual merge of `source` into `target`. Merging a source that
    /// already belongs to the target succeeds again (a retry is harmless).
    pub async fn merge(
        &self,
        target: CustomerId,
        source: CustomerId,
        subject: String,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        if target == source {
            return Err(ServiceError::SameProfile);
        }
        let now = Services::now();
        let rules = self.rules.clone();
        let p = self
            .committer
            .run(move |store| {
                update(store, target, |tx, t| {
                    let s = match tx.profile(source)? {
                        Some(s) => s,
                        None => match tx.alias(source)? {
                            Some(to) if to == target => return Ok(()),
                            Some(to) => tx
                                .profile(to)?
                                .ok_or(ServiceError::ProfileNotFound("source profile"))?,
                            None => return Err(ServiceError::ProfileNotFound("source profile")),
                        },
                    };
                    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                    for r in t.identifiers.iter().chain(&s.identifiers) {
                        *counts.entry(r.identifier.kind()).or_default() += 1;
                    }
                    for (kind, n) in counts {
                        let limit = rules.identifiers.rule(kind).and_then(|r| r.limit);
                        if limit.is_some_and(|l| n > l) {
                            return Err(ServiceError::merge_refused(
                                ConflictReason::IdentifierLimit,
                            ));
                        }
                    }
                    absorb(tx, t, s, &format!("manual:{subject}"), now, &rules.channels)?;
                    metrics::counter!("anamnesis_merges_total", "kind" => "manual").increment(1);
                    Ok(())
                })
            })
            .await?;
        Ok(views::profile_view(&p, &self.masking(access)))
    }

    /// Erases a profile and everything that leads to it: identifiers, aliases,
    /// timelines of every member, kept snapshots, and the results stored for
    /// its signals (replaced by a record that keeps no personal data).
    pub async fn erase(&self, id: CustomerId) -> Result<(), ServiceError> {
        self.committer
            .run(move |store| atomically(store, |tx| erase_in(tx, id)))
            .await
    }
}

/// The live profile `id` inside a write, or where it went.
fn live_in(tx: &mut dyn StoreTx, id: CustomerId) -> Result<Profile, ServiceError> {
    if let Some(p) = tx.profile(id)? {
        return Ok(p);
    }
    Err(match tx.alias(id)? {
        Some(to) => ServiceError::Moved { from: id, to },
        None => ServiceError::ProfileNotFound("profile"),
    })
}

fn erase_in(tx: &mut dyn StoreTx, id: CustomerId) -> Result<(), ServiceError> {
    let p = live_in(tx, id)?;
    let tombstone = SignalRecord {
        fingerprint: String::new(),
        result: None,
    }
    .encode()?;
    for member in p.members() {
        tx.delete_timeline(member)?;
        for signal_id in tx.signal_ids_of(member)? {
            tx.put_signal_record(&signal_id, member, tombstone.clone());
            tx.forget_signal_index(member, &signal_id);
        }
        if member != id {
            tx.delete_alias(member);
            tx.delete_absorbed(member);
        }
    }
    for r in &p.identifiers {
        tx.remove_owner(&r.identifier);
    }
    tx.delete_profile(id);
    metrics::counter!("anamnesis_erasures_total").increment(1);
    Ok(())
}

/// Loads the live profile `id`, lets `change` modify it, bumps the version and
/// stores it, all in one atomic write.
fn update(
    store: &dyn Store,
    id: CustomerId,
    mut change: impl FnMut(&mut dyn StoreTx, &mut Profile) -> Result<(), ServiceError>,
) -> Result<Profile, ServiceError> {
    atomically(store, |tx| {
        let mut p = live_in(tx, id)?;
        let before = p.clone();
        change(tx, &mut p)?;
        if p != before {
            p.version += 1;
            p.updated_at = Utc::now().max(p.updated_at);
            tx.put_profile(&p)?;
        }
        Ok(p)
    })
}

/// Checks the shape of a channel filter in a query.
pub fn valid_channel_filter(c: &str) -> bool {
    is_valid_name(c, 32)
}
