//! Reading profiles and context cards; writing traits and answers; manual merge
//! and erasure.
//!
//! Size: over 900 lines, one `impl Services` block of read and write use
//! cases; the planned split is reads, writes and identity operations.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::erasures::Erasure;
use super::ingest::{absorb, detach, event, within_caps, Cause, Linking};
use super::views::{
    self, Access, ContextCard, HistoryPage, ProfileView, SuggestionView, TimelinePage,
};
use super::{atomically, Caller, ServiceError, Services, Writer};
use crate::cache::Cached;
use crate::domain::{
    check_answers, check_traits, is_valid_name, Answer, AnswerInput, Caps, ChannelRules,
    ConflictReason, Consent, CustomerId, Identifier, IdentityEventKind, Interaction,
    NormaliseOutcome, Profile, ProfileEdit, SignalRules, Suggestion, TraitValue,
};
use crate::domain::{parse_decimal, TimelinePosition};
use crate::store::SignalRecord;
use crate::store::{StoreError, StoreTx};

pub const DEFAULT_CONTEXT_INTERACTIONS: usize = 10;
pub const MAX_PAGE: usize = 200;
/// Interactions kept with a cached card: context cards asking for more are
/// read from the store.
pub const CACHED_INTERACTIONS: usize = 50;

/// What a profile read and a context card are made of; what the caches hold.
#[derive(Debug, Serialize, Deserialize)]
pub struct CardSource {
    pub(crate) profile: Profile,
    pub(crate) recent: Vec<Interaction>,
}

/// A page of a customer's timeline: how many, after which interaction
/// (an interaction id as the previous page handed out), on which channel.
#[derive(Debug, Clone, Default)]
pub struct TimelineQuery {
    /// Page size, 1 to [`MAX_PAGE`] (default 50).
    pub limit: Option<usize>,
    pub cursor: Option<String>,
    pub channel: Option<String>,
}

/// A page of a customer's identity ledger: how many, after which entry.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Page size, 1 to [`MAX_PAGE`] (default 50).
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

impl Services {
    /// The live profile under `id`, or where it went.
    pub(super) fn live(&self, id: CustomerId) -> Result<Profile, ServiceError> {
        if let Some(p) = self.store.profile(id)? {
            return Ok(p);
        }
        match self.store.alias(id)? {
            Some(to) => Err(ServiceError::Moved { from: id, to }),
            None => Err(ServiceError::ProfileNotFound("profile")),
        }
    }

    fn owner_of(&self, identifier: &Identifier) -> Result<Profile, ServiceError> {
        let owner = self
            .store
            .owner(identifier)?
            .ok_or(ServiceError::IdentifierNotOwned)?;
        // The index names a live profile, but a merge may land between the
        // two reads; a miss is a race with erasure.
        self.current(owner)?.ok_or(ServiceError::IdentifierNotOwned)
    }

    /// The live profile under `id`, or the one it was merged into; `None`
    /// when neither exists.
    pub(super) fn current(&self, id: CustomerId) -> Result<Option<Profile>, ServiceError> {
        if let Some(p) = self.store.profile(id)? {
            return Ok(Some(p));
        }
        match self.store.alias(id)? {
            Some(to) => Ok(self.store.profile(to)?),
            None => Ok(None),
        }
    }

    pub async fn profile(
        &self,
        id: CustomerId,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        let source = self.source(id, 0).await?;
        Ok(views::profile_view(&source.profile, &self.masking(access)))
    }

    pub async fn lookup(
        &self,
        kind: &str,
        value: &str,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        let source = self.source_by(kind, value, 0).await?;
        Ok(views::profile_view(&source.profile, &self.masking(access)))
    }

    pub async fn context(
        &self,
        id: CustomerId,
        limit: usize,
        access: Access,
    ) -> Result<ContextCard, ServiceError> {
        let source = self.source(id, limit).await?;
        Ok(self.card(&source, limit, access))
    }

    pub async fn context_by(
        &self,
        kind: &str,
        value: &str,
        limit: usize,
        access: Access,
    ) -> Result<ContextCard, ServiceError> {
        let source = self.source_by(kind, value, limit).await?;
        Ok(self.card(&source, limit, access))
    }

    fn card(&self, source: &CardSource, limit: usize, access: Access) -> ContextCard {
        let recent = source.recent.iter().take(limit).cloned().collect();
        views::context_card(
            &source.profile,
            recent,
            &self.masking(access),
            Services::now(),
        )
    }

    /// The live profile `id` and its `limit` newest interactions: from the
    /// in-process layer or Redis when configured and they hold them, else
    /// from the store (and then cached).
    pub(super) async fn source(
        &self,
        id: CustomerId,
        limit: usize,
    ) -> Result<Arc<CardSource>, ServiceError> {
        let limit = limit.min(MAX_PAGE);
        if limit > CACHED_INTERACTIONS || (self.redis.is_none() && self.hot.is_none()) {
            return self.read_source(id, limit).map(Arc::new);
        }
        // Noted before anything is read (see `hot`).
        let noted = match self.hot_layer().map(|hot| hot.card(id)) {
            Some(Ok(card)) => {
                metrics::counter!("anamnesis_cache_requests_total", "kind" => "card", "result" => "local")
                    .increment(1);
                return Ok(card);
            }
            Some(Err(noted)) => Some(noted),
            None => None,
        };
        let keep = |card: Arc<CardSource>, size: usize| {
            if let (Some(hot), Some(noted)) = (&self.hot, noted) {
                hot.keep_card(id, noted, card.clone(), size);
            }
            card
        };
        if let Some(redis) = &self.redis {
            let key = redis.card_key(id);
            match redis.get(&key, "card").await {
                Cached::Hit(body) => match serde_json::from_slice::<CardSource>(&body) {
                    Ok(source) => return Ok(keep(Arc::new(source), body.len())),
                    Err(e) => tracing::warn!(error = %e, "a cached card could not be decoded"),
                },
                Cached::Miss { generation } => {
                    // The position is noted before the read (see `crate::cache`).
                    let seq = self.durable_position();
                    let source = self.read_source(id, CACHED_INTERACTIONS)?;
                    let body = serde_json::to_vec(&source).unwrap_or_default();
                    let size = body.len();
                    if !body.is_empty() {
                        redis.fill(key, generation, seq, body);
                    }
                    return Ok(keep(Arc::new(source), size));
                }
                Cached::Off => {}
            }
        } else {
            metrics::counter!("anamnesis_cache_requests_total", "kind" => "card", "result" => "miss")
                .increment(1);
        }
        // No Redis, or Redis is away: the in-process layer still knows every write.
        if self.hot.is_none() {
            return self.read_source(id, limit).map(Arc::new);
        }
        let source = self.read_source(id, CACHED_INTERACTIONS)?;
        let size = serde_json::to_vec(&source).map_or(0, |b| b.len());
        Ok(keep(Arc::new(source), size))
    }

    fn read_source(&self, id: CustomerId, limit: usize) -> Result<CardSource, ServiceError> {
        self.with_recent(self.live(id)?, limit)
    }

    /// `profile` with its `limit` newest interactions, read from the store.
    fn with_recent(&self, profile: Profile, limit: usize) -> Result<CardSource, ServiceError> {
        let recent = if limit == 0 {
            Vec::new()
        } else {
            self.interactions(&profile, None, limit.min(MAX_PAGE), None)?
                .0
        };
        Ok(CardSource { profile, recent })
    }

    /// Like [`Services::source`], for the owner of an identifier; the owner's
    /// id is cached too.
    ///
    /// A value only ever *claimed* on a profile (typed into a form, see
    /// `[trust]`) is looked up as if nobody held it: the claimant's memory is
    /// not the card of whoever the value belongs to, and a claim followed by
    /// a lookup must not tell whether someone else holds it.
    pub(super) async fn source_by(
        &self,
        kind: &str,
        value: &str,
        limit: usize,
    ) -> Result<Arc<CardSource>, ServiceError> {
        let identifier = match self.rules.identifiers.normalise(kind, value) {
            Ok(NormaliseOutcome::Usable(id)) => id,
            Ok(NormaliseOutcome::Ignored(_)) => return Err(ServiceError::IdentifierNotOwned),
            Err(e) => return Err(ServiceError::Identifier(e)),
        };
        let source = self.source_of_owner(&identifier, limit).await?;
        let claimed = source
            .profile
            .identifiers
            .iter()
            .any(|r| r.claimed && r.identifier == identifier);
        match claimed {
            true => Err(ServiceError::IdentifierNotOwned),
            false => Ok(source),
        }
    }

    /// The profile that holds `identifier`, and its `limit` newest
    /// interactions.
    async fn source_of_owner(
        &self,
        identifier: &Identifier,
        limit: usize,
    ) -> Result<Arc<CardSource>, ServiceError> {
        let identifier = identifier.clone();
        if self.redis.is_some() || self.hot.is_some() {
            let noted = match self.hot_layer().map(|hot| hot.owner(&identifier)) {
                Some(Ok(owner)) => {
                    metrics::counter!("anamnesis_cache_requests_total", "kind" => "owner", "result" => "local")
                        .increment(1);
                    // A miss here is a race with a merge or an erasure: the store decides.
                    if let Ok(source) = self.source(owner, limit).await {
                        return Ok(source);
                    }
                    None
                }
                Some(Err(noted)) => Some(noted),
                None => None,
            };
            let keep = |owner: CustomerId| {
                if let (Some(hot), Some(noted)) = (&self.hot, noted) {
                    hot.keep_owner(&identifier, noted, owner);
                }
            };
            let owner = match &self.redis {
                Some(redis) => {
                    let key = redis.owner_key(&identifier);
                    match redis.get(&key, "owner").await {
                        Cached::Hit(body) => std::str::from_utf8(&body)
                            .ok()
                            .and_then(|s| CustomerId::parse(s).ok()),
                        Cached::Miss { generation } => {
                            let seq = self.durable_position();
                            let owner = self.store.owner(&identifier)?;
                            if let Some(owner) = owner {
                                redis.fill(key, generation, seq, owner.to_string().into_bytes());
                            }
                            owner
                        }
                        Cached::Off => self.store.owner(&identifier)?,
                    }
                }
                None => {
                    metrics::counter!("anamnesis_cache_requests_total", "kind" => "owner", "result" => "miss")
                        .increment(1);
                    self.store.owner(&identifier)?
                }
            };
            if let Some(owner) = owner {
                if let Ok(source) = self.source(owner, limit).await {
                    keep(owner);
                    return Ok(source);
                }
            }
        }
        self.with_recent(self.owner_of(&identifier)?, limit)
            .map(Arc::new)
    }

    pub fn timeline(
        &self,
        id: CustomerId,
        q: &TimelineQuery,
        access: Access,
    ) -> Result<TimelinePage, ServiceError> {
        let p = self.live(id)?;
        let masking = self.masking(access);
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
            interactions: items
                .into_iter()
                .map(|i| views::interaction_view(i, &masking))
                .collect(),
            next_cursor,
        })
    }

    /// Newest-first interactions across every member of the profile, and whether
    /// older ones remain.
    pub(super) fn interactions(
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
        channel: String,
        traits: BTreeMap<String, Value>,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        self.rules.channels.check(&channel)?;
        check_traits(&traits)?;
        let now = Services::now();
        let changes = traits
            .iter()
            .map(|(name, value)| ProfileEdit::Trait {
                name: name.clone(),
                value: TraitValue {
                    value: (!value.is_null()).then(|| value.clone()),
                    channel: channel.clone(),
                    observed_at: now,
                    signal_id: None,
                },
            })
            .collect();
        self.write_own(id, channel, changes, now, access).await
    }

    pub async fn add_answers(
        &self,
        id: CustomerId,
        channel: String,
        answers: Vec<AnswerInput>,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        self.rules.channels.check(&channel)?;
        let now = Services::now();
        let answers = check_answers(answers, now, &self.rules.answer_ttl)?;
        let changes = answers
            .into_iter()
            .map(|a| ProfileEdit::Answer {
                key: a.key,
                answer: Answer {
                    value: a.value,
                    question: a.question,
                    channel: channel.clone(),
                    captured_at: now,
                    expires_at: a.expires_at,
                    signal_id: None,
                },
            })
            .collect();
        self.write_own(id, channel, changes, now, access).await
    }

    /// Applies changes made on the profile's own behalf (an agent's or a
    /// bot's direct write) on `channel`, as one durable write.
    async fn write_own(
        &self,
        id: CustomerId,
        channel: String,
        mut changes: Vec<ProfileEdit>,
        now: DateTime<Utc>,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        changes.push(ProfileEdit::Channel {
            channel,
            at: now,
            interactions: 0,
        });
        let rules = self.rules.clone();
        let p = self
            .committer
            .run(move |store| {
                update(store, &rules, id, now, Attribution::Own, |tx, p| {
                    // A direct write is one change: all of it fits, or none
                    // of it is made.
                    let stored = tx.profile_bytes(p.customer_id)?;
                    let (kept, refused) = within_caps(p, changes.clone(), stored, &rules.caps);
                    if let Some(first) = refused.first() {
                        let caps = &rules.caps;
                        let (what, cap) = match first.reason.as_str() {
                            "max_traits" => ("traits", caps.max_traits),
                            "max_answers" => ("answers", caps.max_answers),
                            "max_episodes" => ("episodes", caps.max_episodes),
                            _ => ("bytes", caps.max_profile_bytes),
                        };
                        return Err(ServiceError::CapExceeded { what, cap });
                    }
                    apply_own(p, &kept, &rules.channels);
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
        caller: Caller,
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
                update(store, &rules, target, now, Attribution::Whole, |tx, t| {
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
                    let bytes =
                        tx.profile_bytes(t.customer_id)? + tx.profile_bytes(s.customer_id)?;
                    check_caps(t, &s, bytes, &rules.caps)?;
                    let cause = Cause::request(&caller);
                    absorb(tx, t, s, Linking::default(), &cause, now, &rules.channels)?;
                    Ok(())
                })
            })
            .await?;
        // Counted once committed: a shared store may run the write again.
        metrics::counter!("anamnesis_merges_total", "kind" => "manual").increment(1);
        Ok(views::profile_view(&p, &self.masking(access)))
    }

    /// Erases a profile and everything that leads to it: identifiers, aliases,
    /// timelines, ledgers and suggestions of every member, and the results stored for
    /// its signals (replaced by a record that keeps no personal data).
    pub async fn erase(&self, id: CustomerId, caller: Caller) -> Result<(), ServiceError> {
        self.erase_with(id, caller, true).await
    }

    /// Erases `id`; `logged`: in the erasure log too (always, but when a
    /// restore applies the log again).
    pub(super) async fn erase_with(
        &self,
        id: CustomerId,
        caller: Caller,
        logged: bool,
    ) -> Result<(), ServiceError> {
        let now = Services::now();
        let cause = Cause::request(&caller);
        let log = self.erasures.clone().filter(|_| logged);
        self.committer
            .run(move |store| {
                atomically(store, |tx| {
                    let merged_ids = erase_in(tx, id, &cause, now)?;
                    // Logged before the write is flushed, so never
                    // acknowledged unlogged (see `erasures`); a line that
                    // cannot be written refuses the erasure.
                    if let Some(log) = &log {
                        let erasure = Erasure {
                            at: Utc::now(),
                            customer_id: id,
                            merged_ids,
                        };
                        log.append(&erasure).map_err(|e| {
                            StoreError::Engine(format!(
                                "appending to the erasure log {}: {e}",
                                log.path().display()
                            ))
                        })?;
                    }
                    Ok(())
                })
            })
            .await?;
        // Counted once committed: a shared store may run the write again.
        metrics::counter!("anamnesis_erasures_total").increment(1);
        Ok(())
    }

    /// Undoes the merge of `merged` into `id`: `merged` comes back under its
    /// own id with exactly what it (and whatever it had absorbed) contributed,
    /// including what arrived since through its own identifiers; `id` keeps
    /// only its own. Returns both, survivor first.
    pub async fn unmerge(
        &self,
        id: CustomerId,
        merged: CustomerId,
        caller: Caller,
        access: Access,
    ) -> Result<(ProfileView, ProfileView), ServiceError> {
        let now = Services::now();
        let rules = self.rules.clone();
        let (survivor, restored) = self
            .committer
            .run(move |store| {
                atomically(store, |tx| {
                    let mut p = live_in(tx, id)?;
                    let mut restored = p
                        .split(merged, &rules.channels, now)
                        .map_err(|_| ServiceError::NothingToUnmerge(merged))?;
                    for r in &restored.identifiers {
                        tx.set_owner(&r.identifier, merged);
                    }
                    tx.delete_alias(merged);
                    for member in &restored.merged_ids {
                        tx.put_alias(*member, merged);
                    }
                    rules.refresh(&mut p, now);
                    rules.refresh(&mut restored, now);
                    tx.put_profile(&p)?;
                    tx.put_profile(&restored)?;
                    let cause = Cause::request(&caller);
                    let mut on_survivor = event(IdentityEventKind::Unmerged, now, &cause);
                    on_survivor.other_id = Some(merged);
                    tx.add_history(id, &on_survivor)?;
                    let mut on_restored = event(IdentityEventKind::Unmerged, now, &cause);
                    on_restored.other_id = Some(id);
                    tx.add_history(merged, &on_restored)?;
                    Ok((p, restored))
                })
            })
            .await?;
        metrics::counter!("anamnesis_unmerges_total").increment(1);
        let masking = self.masking(access);
        Ok((
            views::profile_view(&survivor, &masking),
            views::profile_view(&restored, &masking),
        ))
    }

    /// Detaches a wrongly linked identifier: future signals with it no longer
    /// resolve to this profile.
    pub async fn remove_identifier(
        &self,
        id: CustomerId,
        kind: String,
        value: String,
        caller: Caller,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        let identifier = match self.rules.identifiers.normalise(&kind, &value)? {
            NormaliseOutcome::Usable(identifier) => identifier,
            NormaliseOutcome::Ignored(_) => return Err(ServiceError::IdentifierNotOnProfile),
        };
        let now = Services::now();
        let rules = self.rules.clone();
        let p = self
            .committer
            .run(move |store| {
                update(store, &rules, id, now, Attribution::Own, |tx, p| {
                    if !p.owns(&identifier) {
                        return Err(ServiceError::IdentifierNotOnProfile);
                    }
                    let cause = Cause::request(&caller);
                    detach(tx, p, &identifier, &cause, now, &rules.channels)?;
                    tx.remove_owner(&identifier);
                    Ok(())
                })
            })
            .await?;
        Ok(views::profile_view(&p, &self.masking(access)))
    }

    /// Records the customer's decision for a purpose; the later decision wins.
    pub async fn set_consent(
        &self,
        id: CustomerId,
        purpose: String,
        granted: bool,
        channel: String,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        if !self.purposes.contains(&purpose) {
            return Err(ServiceError::UnknownPurpose(
                purpose.chars().take(64).collect(),
            ));
        }
        self.rules.channels.check(&channel)?;
        let now = Services::now();
        let change = ProfileEdit::Consent {
            purpose,
            consent: Consent {
                granted,
                channel: channel.clone(),
                at: now,
            },
        };
        self.write_own(id, channel, vec![change], now, access).await
    }

    /// Open merge suggestions involving this profile (or any profile it
    /// absorbed), one per other live profile, with the evidence.
    pub fn suggestions(
        &self,
        id: CustomerId,
        access: Access,
    ) -> Result<Vec<SuggestionView>, ServiceError> {
        self.suggestions_of(&self.live(id)?, access)
    }

    /// The same for a profile already read.
    pub(super) fn suggestions_of(
        &self,
        p: &Profile,
        access: Access,
    ) -> Result<Vec<SuggestionView>, ServiceError> {
        let mut by_other: BTreeMap<CustomerId, Suggestion> = BTreeMap::new();
        for member in p.members() {
            for (other, s) in self.store.suggestions(member)? {
                if s.dismissed_at.is_some() {
                    continue;
                }
                let Some(live) = self.current(other)?.map(|o| o.customer_id) else {
                    continue;
                };
                if live == p.customer_id {
                    continue;
                }
                match by_other.get_mut(&live) {
                    None => {
                        by_other.insert(live, s);
                    }
                    Some(seen) => {
                        for e in s.evidence {
                            if !seen.evidence.contains(&e) {
                                seen.evidence.push(e);
                            }
                        }
                        seen.count += s.count;
                        seen.first_at = seen.first_at.min(s.first_at);
                        seen.last_at = seen.last_at.max(s.last_at);
                    }
                }
            }
        }
        let masking = self.masking(access);
        Ok(by_other
            .into_iter()
            .map(|(other, s)| views::suggestion_view(other, s, &masking))
            .collect())
    }

    /// Dismisses the suggestion that `id` and `other` are one person; it is
    /// remembered and not proposed again.
    pub async fn dismiss_suggestion(
        &self,
        id: CustomerId,
        other: CustomerId,
        caller: Caller,
    ) -> Result<(), ServiceError> {
        let now = Services::now();
        self.committer
            .run(move |store| {
                atomically(store, |tx| {
                    let p = live_in(tx, id)?;
                    let o = tx.profile(other)?.ok_or(ServiceError::SuggestionNotFound)?;
                    let mut found = false;
                    for a in p.members() {
                        for b in o.members() {
                            if let Some(mut s) = tx.suggestion(a, b)? {
                                if s.dismissed_at.is_none() {
                                    s.dismissed_at = Some(now);
                                    s.last_cause = Cause::request(&caller).text;
                                    tx.put_suggestion(a, b, &s)?;
                                    found = true;
                                }
                            }
                        }
                    }
                    if found {
                        Ok(())
                    } else {
                        Err(ServiceError::SuggestionNotFound)
                    }
                })
            })
            .await
    }

    /// A profile's identity ledger, newest first. Absorbed and erased ids keep
    /// theirs (an erased one only the erasure entry).
    pub fn history(
        &self,
        id: CustomerId,
        q: &HistoryQuery,
        access: Access,
    ) -> Result<HistoryPage, ServiceError> {
        let before = match &q.cursor {
            Some(c) => Some(parse_decimal(c).ok_or(ServiceError::InvalidCursor)?),
            None => None,
        };
        let limit = q.limit.unwrap_or(50).clamp(1, MAX_PAGE);
        let mut entries = self.store.history(id, before, limit + 1)?;
        if entries.is_empty() && before.is_none() {
            // Nothing recorded: tell a typo from a quiet profile.
            self.live(id).map(|_| ()).or_else(|e| match e {
                ServiceError::Moved { .. } => Ok(()),
                other => Err(other),
            })?;
        }
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next_cursor = if more {
            entries.last().map(|(seq, _)| seq.to_string())
        } else {
            None
        };
        let masking = self.masking(access);
        Ok(HistoryPage {
            customer_id: id,
            events: entries
                .into_iter()
                .map(|(seq, e)| views::history_view(seq, e, &masking))
                .collect(),
            next_cursor,
        })
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

/// Erases the live profile `id` and everything it absorbed; returns the
/// ids it had absorbed.
fn erase_in(
    tx: &mut dyn StoreTx,
    id: CustomerId,
    cause: &Cause,
    now: DateTime<Utc>,
) -> Result<Vec<CustomerId>, ServiceError> {
    let p = live_in(tx, id)?;
    let tombstone = SignalRecord {
        fingerprint: String::new(),
        result: None,
    }
    .encode()?;
    for member in p.members() {
        super::idempotency::forget_replies(tx, member)?;
        tx.delete_timeline(member)?;
        for signal_id in tx.signal_ids_of(member)? {
            tx.put_signal_record(&signal_id, member, tombstone.clone());
            tx.forget_signal_index(member, &signal_id);
        }
        tx.delete_history(member)?;
        tx.delete_suggestions_of(member)?;
        if member != id {
            tx.delete_alias(member);
        }
    }
    for r in &p.identifiers {
        tx.remove_owner(&r.identifier);
    }
    tx.delete_profile(id);
    // The ledger keeps that the erasure happened, and by whom; nothing else.
    tx.add_history(id, &event(IdentityEventKind::Erased, now, cause))?;
    Ok(p.merged_ids.clone())
}

/// Applies changes made on the profile's own behalf (an agent, a manual write):
/// they are the root member's contribution.
fn apply_own(p: &mut Profile, changes: &[ProfileEdit], channels: &ChannelRules) {
    let own = p.customer_id;
    for change in changes {
        p.apply(own, change, channels);
    }
}

/// Whose write an update is.
#[derive(Clone, Copy)]
enum Attribution {
    /// The profile's own contribution (an agent's or a bot's write).
    Own,
    /// A change of the whole (a merge): nobody's contribution.
    Whole,
}

/// Loads the live profile `id`, lets `change` modify it, records the write and
/// stores it, all in one atomic write.
fn update(
    store: &Writer<'_>,
    rules: &SignalRules,
    id: CustomerId,
    now: DateTime<Utc>,
    attribution: Attribution,
    mut change: impl FnMut(&mut dyn StoreTx, &mut Profile) -> Result<(), ServiceError>,
) -> Result<Profile, ServiceError> {
    atomically(store, |tx| {
        let mut p = live_in(tx, id)?;
        let before = p.clone();
        change(tx, &mut p)?;
        if p != before {
            match attribution {
                Attribution::Own => p.note_write(id, now),
                Attribution::Whole => p.note_change(now),
            }
            rules.refresh(&mut p, now);
            tx.put_profile(&p)?;
        }
        Ok(p)
    })
}

/// Checks the shape of a channel filter in a query.
pub fn valid_channel_filter(c: &str) -> bool {
    is_valid_name(c, 32)
}

/// Refuses a manual merge that would make a profile hold more merged
/// profiles or identifiers, or take more bytes, than the configured caps. (A signal's merges are
/// held to the same caps by the planner, which stores what fits instead.)
fn check_caps(
    target: &Profile,
    absorbed: &Profile,
    bytes: usize,
    caps: &Caps,
) -> Result<(), ServiceError> {
    if bytes > caps.max_profile_bytes {
        return Err(ServiceError::CapExceeded {
            what: "bytes",
            cap: caps.max_profile_bytes,
        });
    }
    let merged = target.merged_ids.len() + absorbed.merged_ids.len() + 1;
    if merged > caps.max_merged {
        return Err(ServiceError::CapExceeded {
            what: "merged profiles",
            cap: caps.max_merged,
        });
    }
    let identifiers = target.identifiers.len() + absorbed.identifiers.len();
    if identifiers > caps.max_identifiers {
        return Err(ServiceError::CapExceeded {
            what: "identifiers",
            cap: caps.max_identifiers,
        });
    }
    Ok(())
}
