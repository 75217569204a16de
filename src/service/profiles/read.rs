//! Reading a profile: whole, by identifier, as a context card (through the
//! in-process and Redis caches), and its timeline.

use std::sync::Arc;

use super::{CardSource, TimelineQuery, CACHED_INTERACTIONS, MAX_PAGE};
use crate::cache::Cached;
use crate::domain::{
    CustomerId, Identifier, Interaction, NormaliseOutcome, Profile, TimelinePosition,
};
use crate::service::views::{self, Access, ContextCard, ProfileView, TimelinePage};
use crate::service::{ServiceError, Services};

impl Services {
    /// The live profile under `id`, or where it went.
    pub(in crate::service) fn live(&self, id: CustomerId) -> Result<Profile, ServiceError> {
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
    pub(in crate::service) fn current(
        &self,
        id: CustomerId,
    ) -> Result<Option<Profile>, ServiceError> {
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
    pub(in crate::service) async fn source(
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
    pub(in crate::service) async fn source_by(
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
    pub(in crate::service) fn interactions(
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
}
