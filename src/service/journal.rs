//! The change journal: what each write changed, as events.
//!
//! Every use case runs its write through a [`Recording`], which watches the
//! store calls it makes (profiles put and deleted, aliases moved, identifiers
//! re-owned, interactions added) and, when the write succeeds, turns them into
//! [`Change`]s. Each change gets the next position of the change log and is
//! written in the same atomic batch as the write itself, so the log never
//! disagrees with the store: a change is in the log exactly when its write is.
//!
//! The log holds ids, kinds, versions and keys, never personal data: an
//! erasure need not hunt through it, and a consumer that wants the content
//! reads the profile (with its own token's field access). The live copy of
//! an event ([`LiveEvent`]) also carries the content it is about (the answer,
//! the interaction, the episode), kept in memory and on the event bus only.
//!
//! Size: about 700 lines, with the follow-up index it also maintains; the
//! planned split gives the follow-up index its own module.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::domain::{
    Change, ChangeKind, Committed, CustomerId, FollowUpKey, Identifier, IdentityEvent, Interaction,
    LiveEvent, Payload, Profile, Suggestion,
};
use crate::store::{decode_change, encode_change, Store, StoreError, StoreTx};

/// The committer thread's journal state: the next log position and what the
/// writes since the last durable flush changed.
pub struct Journal {
    next_seq: Cell<u64>,
    pending: RefCell<Committed>,
}

impl Journal {
    /// Continues after `last`, the highest position already in the log.
    pub fn after(last: u64) -> Journal {
        Journal {
            next_seq: Cell::new(last + 1),
            pending: RefCell::new(Committed::default()),
        }
    }

    /// The next position: the engine's, when it numbers changes in the
    /// transaction (several writers), else this committer's own.
    fn allocate(&self, tx: &mut dyn StoreTx) -> Result<u64, StoreError> {
        if let Some(seq) = tx.allocate_change()? {
            return Ok(seq);
        }
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        Ok(seq)
    }

    /// The highest position handed out so far (0: none).
    pub fn last_position(&self) -> u64 {
        self.next_seq.get() - 1
    }

    /// What was written since the last call (called once a flush succeeded;
    /// after a failed flush the writes stay pending for the next one).
    pub fn take(&self) -> Committed {
        std::mem::take(&mut *self.pending.borrow_mut())
    }

    /// Turns what a [`Recording`] saw into log entries, written by `tx` with the
    /// rest of the write. [`Journal::keep`] them once the write is applied.
    pub fn entries(
        &self,
        tx: &mut dyn StoreTx,
        seen: Seen,
        now: DateTime<Utc>,
    ) -> Result<Committed, StoreError> {
        seen.index_follow_ups(tx);
        let (mut events, customers, identifiers) = seen.into_events(now);
        if events.is_empty() && customers.is_empty() && identifiers.is_empty() {
            return Ok(Committed::default());
        }
        let mut last_seq = 0;
        for event in &mut events {
            event.change.seq = self.allocate(tx)?;
            last_seq = event.change.seq;
            tx.put_change(
                event.change.seq,
                event.change.customer_id,
                encode_change(&event.change)?,
            );
        }
        if last_seq == 0 {
            // Cache entries change without an event (an identifier moved):
            // they still need a position newer than any read before this write.
            last_seq = self.allocate(tx)?;
        }
        Ok(Committed {
            events,
            customers,
            identifiers,
            last_seq,
        })
    }

    /// Keeps what a staged write changed, for sending after the flush.
    pub fn keep(&self, committed: Committed) {
        self.pending.borrow_mut().absorb(committed);
    }

    /// After the store replaced its database (see [`Store::generation`]):
    /// of the changes kept from groups whose flush failed, only those whose
    /// log entry reached the disk happened, and are sent with the next
    /// group; the others are dropped, as their writes are gone. Every
    /// profile and identifier they touched is still marked stale then (a
    /// reader may have seen the vanished write). Positions go on from where
    /// they were: none is handed out twice. Returns how many were dropped.
    pub fn after_reopen(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let mut pending = self.pending.borrow_mut();
        let mut kept = Vec::with_capacity(pending.events.len());
        let mut dropped = 0;
        let mut events = std::mem::take(&mut pending.events).into_iter();
        while let Some(event) = events.next() {
            let seq = event.change.seq;
            let found = match store.changes(seq.saturating_sub(1), 1) {
                Ok(first) => first.first().is_some_and(|(s, _)| *s == seq),
                Err(e) => {
                    // Kept unchecked, for the next try.
                    kept.push(event);
                    kept.extend(events);
                    pending.events = kept;
                    return Err(e);
                }
            };
            if found {
                kept.push(event);
            } else {
                dropped += 1;
            }
        }
        pending.events = kept;
        Ok(dropped)
    }
}

/// Where the bookkeeping keeps the highest position removed by retention.
const PRUNED_THROUGH: &str = "changes.pruned_through";

/// Where the bookkeeping keeps a position below which none is handed out
/// again: a restore sets it past every position the store it came from may
/// have handed out after its backup point (see `service::backup`).
pub const POSITIONS_FLOOR: &str = "changes.positions_floor";

/// The position the next one handed out must exceed (0: none set).
pub fn positions_floor(store: &dyn Store) -> Result<u64, StoreError> {
    Ok(store
        .meta(POSITIONS_FLOOR)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// The highest change-log position removed by retention (0: none): a feed
/// cursor below it has missed changes.
pub fn pruned_through(store: &dyn Store) -> Result<u64, StoreError> {
    Ok(store
        .meta(PRUNED_THROUGH)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Removes up to `max` changes older than `retention`, oldest first; returns
/// how many. Runs on the committer thread (the single writer).
pub fn prune(
    store: &dyn Store,
    retention: std::time::Duration,
    now: DateTime<Utc>,
    max: usize,
) -> Result<usize, StoreError> {
    let Ok(retention) = chrono::Duration::from_std(retention) else {
        return Ok(0);
    };
    let cutoff = now - retention;
    let mut from = pruned_through(store)?;
    let mut doomed = Vec::new();
    'scan: while doomed.len() < max {
        // A page at a time: most runs find the first change still young.
        let page = store.changes(from, 64.min(max - doomed.len()))?;
        if page.is_empty() {
            break;
        }
        for (seq, bytes) in page {
            let change = decode_change(seq, &bytes)?;
            if change.at >= cutoff {
                break 'scan;
            }
            doomed.push((seq, change.customer_id));
            from = seq;
        }
    }
    let Some(&(last, _)) = doomed.last() else {
        return Ok(0);
    };
    store.write(&mut |tx| {
        for (seq, customer) in &doomed {
            tx.delete_change(*seq, *customer);
        }
        // Another instance sharing the store may have pruned further.
        let Ok(before) = tx.meta(PRUNED_THROUGH) else {
            return false;
        };
        let before = before
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        tx.put_meta(PRUNED_THROUGH, last.max(before).to_be_bytes().to_vec());
        true
    })?;
    Ok(doomed.len())
}

/// What one write did, as seen through its store calls.
#[derive(Default)]
pub struct Seen {
    /// Each profile as it was before the write (`None`: did not exist).
    before: BTreeMap<CustomerId, Option<Profile>>,
    /// Each profile the write put (`Some`) or deleted (`None`).
    after: BTreeMap<CustomerId, Option<Profile>>,
    /// Each alias the write changed: before and after.
    aliases: BTreeMap<CustomerId, (Option<CustomerId>, Option<CustomerId>)>,
    identifiers: BTreeSet<Identifier>,
    interactions: Vec<(CustomerId, Interaction)>,
}

/// Where the bookkeeping notes that every stored profile's follow-ups are
/// in the index (stores written before the index existed get them at
/// start-up), and by which version of the rule: a later rule bumps it and
/// the index is rebuilt.
const FOLLOW_UPS_INDEXED: &str = "follow_ups.indexed";
const FOLLOW_UPS_INDEX_VERSION: u8 = 1;

/// Indexes the follow-ups of every stored profile, once per store: a store
/// written before the index existed has resolved episodes awaiting feedback
/// that no later write would add. Runs before the committer starts (it is
/// then the only writer); returns how many entries it added.
pub fn index_follow_ups_once(store: &dyn Store) -> Result<usize, StoreError> {
    if store.meta(FOLLOW_UPS_INDEXED)?.as_deref() == Some(&[FOLLOW_UPS_INDEX_VERSION]) {
        return Ok(0);
    }
    let mut added = 0;
    let mut after = None;
    loop {
        let page = store.profiles_after(after, 1024)?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.customer_id);
        let entries: Vec<FollowUpKey> = page.iter().flat_map(|p| follow_ups_of(Some(p))).collect();
        added += entries.len();
        store.write(&mut |tx| {
            for entry in &entries {
                tx.put_follow_up(entry);
            }
            true
        })?;
    }
    store.write(&mut |tx| {
        tx.put_meta(FOLLOW_UPS_INDEXED, vec![FOLLOW_UPS_INDEX_VERSION]);
        true
    })?;
    store.flush()?;
    Ok(added)
}

/// The follow-up index entries a profile needs: one per episode resolved
/// and awaiting feedback.
fn follow_ups_of(p: Option<&Profile>) -> BTreeSet<FollowUpKey> {
    p.map(|p| {
        p.episodes
            .values()
            .filter_map(|e| {
                let resolved = e.awaiting_feedback()?;
                Some(FollowUpKey {
                    resolved_millis: u64::try_from(resolved.timestamp_millis()).unwrap_or(0),
                    customer: p.customer_id,
                    episode: e.id.clone(),
                })
            })
            .collect()
    })
    .unwrap_or_default()
}

impl Seen {
    /// Keeps the follow-up index in step with the profiles this write put
    /// or deleted: whatever the use case (a signal, a merge, an unmerge, an
    /// erasure), the index is derived from the profiles alone.
    fn index_follow_ups(&self, tx: &mut dyn StoreTx) {
        for (id, after) in &self.after {
            let before = follow_ups_of(self.before.get(id).and_then(Option::as_ref));
            let after = follow_ups_of(after.as_ref());
            for gone in before.difference(&after) {
                tx.delete_follow_up(gone);
            }
            for new in after.difference(&before) {
                tx.put_follow_up(new);
            }
        }
    }

    fn into_events(
        self,
        now: DateTime<Utc>,
    ) -> (Vec<LiveEvent>, BTreeSet<CustomerId>, BTreeSet<Identifier>) {
        let mut first = Vec::new();
        let mut merges = Vec::new();
        let mut content = Vec::new();
        let mut updates = Vec::new();
        let mut erasures = Vec::new();
        let plain = |change: Change| LiveEvent { change, data: None };
        let none: Option<Profile> = None;

        for (&id, after) in &self.after {
            let before = self.before.get(&id).unwrap_or(&none);
            match (before, after) {
                (None, Some(p)) => {
                    let restored_from = self.aliases.get(&id).and_then(|(was, _)| *was);
                    match restored_from {
                        Some(survivor) => {
                            // An unmerge: sent on the restored profile and the survivor.
                            for (on, version) in [
                                (id, Some(p.version)),
                                (survivor, self.version_after(survivor)),
                            ] {
                                let mut c = Change::new(ChangeKind::Unmerged, on, now);
                                c.version = version;
                                c.survivor_id = Some(survivor);
                                c.merged_id = Some(id);
                                first.push(plain(c));
                            }
                        }
                        None => {
                            let mut c = Change::new(ChangeKind::Created, id, now);
                            c.version = Some(p.version);
                            first.push(plain(c));
                            content.extend(content_events(id, None, p, now));
                        }
                    }
                }
                (Some(b), Some(p)) => {
                    content.extend(content_events(id, Some(b), p, now));
                    if p.version != b.version {
                        let mut c = Change::new(ChangeKind::Updated, id, now);
                        c.version = Some(p.version);
                        updates.push(plain(c));
                    }
                }
                (Some(_), None) => match self.aliases.get(&id).and_then(|(_, now_to)| *now_to) {
                    Some(survivor) => {
                        for (on, version) in [(id, None), (survivor, self.version_after(survivor))]
                        {
                            let mut c = Change::new(ChangeKind::Merged, on, now);
                            c.version = version;
                            c.survivor_id = Some(survivor);
                            c.merged_id = Some(id);
                            merges.push(plain(c));
                        }
                    }
                    None => erasures.push(plain(Change::new(ChangeKind::Erased, id, now))),
                },
                (None, None) => {}
            }
        }
        // An erasure ends the streams of the ids merged into the erased
        // profile too (their aliases go with it).
        let erased: BTreeSet<CustomerId> = erasures.iter().map(|e| e.change.customer_id).collect();
        for (member, (was, now_to)) in &self.aliases {
            let gone = !matches!(self.after.get(member), Some(Some(_)));
            if now_to.is_none() && gone && was.is_some_and(|root| erased.contains(&root)) {
                erasures.push(plain(Change::new(ChangeKind::Erased, *member, now)));
            }
        }
        for (member, interaction) in &self.interactions {
            let on = self.live_owner(*member);
            let mut c = Change::new(ChangeKind::InteractionAdded, on, now);
            c.interaction_id = Some(interaction.id.clone());
            content.push(LiveEvent {
                change: c,
                data: Some(Payload::Interaction(interaction.clone())),
            });
        }

        let mut customers: BTreeSet<CustomerId> = self.after.keys().copied().collect();
        for (absorbed, (was, now_to)) in &self.aliases {
            customers.insert(*absorbed);
            customers.extend(was.iter().chain(now_to.iter()).copied());
        }
        let events = first
            .into_iter()
            .chain(merges)
            .chain(content)
            .chain(updates)
            .chain(erasures)
            .collect();
        (events, customers, self.identifiers)
    }

    fn version_after(&self, id: CustomerId) -> Option<u64> {
        self.after
            .get(&id)
            .and_then(|p| p.as_ref())
            .map(|p| p.version)
    }

    /// The profile (put by this write) that `member` belongs to, or itself.
    fn live_owner(&self, member: CustomerId) -> CustomerId {
        self.after
            .values()
            .flatten()
            .find(|p| p.members().any(|m| m == member))
            .map_or(member, |p| p.customer_id)
    }
}

/// Answers captured and episodes changed between `before` and `after`.
fn content_events(
    id: CustomerId,
    before: Option<&Profile>,
    after: &Profile,
    now: DateTime<Utc>,
) -> Vec<LiveEvent> {
    let mut out = Vec::new();
    for (key, answer) in &after.answers {
        // Another answer, not older than what the profile held (a merge
        // brings the absorbed profile's newer answers; an unmerge taking some
        // back is no capture).
        let old = before.and_then(|b| b.answers.get(key));
        if old.is_none_or(|o| o != answer && answer.captured_at >= o.captured_at) {
            let mut c = Change::new(ChangeKind::AnswerCaptured, id, now);
            c.key = Some(key.clone());
            out.push(LiveEvent {
                change: c,
                data: Some(Payload::Answer(answer.clone())),
            });
        }
    }
    for (episode_id, episode) in &after.episodes {
        let old = before.and_then(|b| b.episodes.get(episode_id));
        if old.is_none_or(|o| {
            episode.updated_at > o.updated_at
                || (o != episode && o.updated_at == episode.updated_at)
        }) {
            let mut c = Change::new(ChangeKind::EpisodeUpdated, id, now);
            c.episode_id = Some(episode_id.clone());
            out.push(LiveEvent {
                change: c,
                data: Some(Payload::Episode(episode.clone())),
            });
        }
    }
    out
}

/// A store transaction that remembers what the write does (see [`Seen`]).
pub struct Recording<'t> {
    inner: &'t mut dyn StoreTx,
    seen: Seen,
    /// A failed read of the state before a change made by a call that cannot
    /// return an error: the write must not go ahead unrecorded.
    failure: Option<StoreError>,
}

impl<'t> Recording<'t> {
    pub fn new(inner: &'t mut dyn StoreTx) -> Recording<'t> {
        Recording {
            inner,
            seen: Seen::default(),
            failure: None,
        }
    }

    /// What the write did, or the recorder's own read failure.
    pub fn finish(self) -> Result<Seen, StoreError> {
        match self.failure {
            Some(e) => Err(e),
            None => Ok(self.seen),
        }
    }

    fn note_before(&mut self, id: CustomerId) -> Result<(), StoreError> {
        if !self.seen.before.contains_key(&id) && !self.seen.after.contains_key(&id) {
            let p = self.inner.profile(id)?;
            self.seen.before.insert(id, p);
        }
        Ok(())
    }

    fn note_alias(&mut self, id: CustomerId) {
        if !self.seen.aliases.contains_key(&id) {
            match self.inner.alias(id) {
                Ok(was) => {
                    self.seen.aliases.insert(id, (was, was));
                }
                Err(e) => {
                    self.failure.get_or_insert(e);
                }
            }
        }
    }
}

impl StoreTx for Recording<'_> {
    fn profile(&mut self, id: CustomerId) -> Result<Option<Profile>, StoreError> {
        Ok(self.profile_sized(id)?.map(|(p, _)| p))
    }

    fn profile_sized(&mut self, id: CustomerId) -> Result<Option<(Profile, usize)>, StoreError> {
        let found = self.inner.profile_sized(id)?;
        let seen = &mut self.seen;
        if !seen.before.contains_key(&id) && !seen.after.contains_key(&id) {
            seen.before
                .insert(id, found.as_ref().map(|(p, _)| p.clone()));
        }
        Ok(found)
    }

    fn profile_bytes(&mut self, id: CustomerId) -> Result<usize, StoreError> {
        self.inner.profile_bytes(id)
    }

    fn put_profile(&mut self, profile: &Profile) -> Result<(), StoreError> {
        self.note_before(profile.customer_id)?;
        self.inner.put_profile(profile)?;
        self.seen
            .after
            .insert(profile.customer_id, Some(profile.clone()));
        Ok(())
    }

    fn delete_profile(&mut self, id: CustomerId) {
        if let Err(e) = self.note_before(id) {
            self.failure.get_or_insert(e);
        }
        self.inner.delete_profile(id);
        self.seen.after.insert(id, None);
    }

    fn alias(&mut self, id: CustomerId) -> Result<Option<CustomerId>, StoreError> {
        self.inner.alias(id)
    }

    fn put_alias(&mut self, absorbed: CustomerId, survivor: CustomerId) {
        self.note_alias(absorbed);
        self.inner.put_alias(absorbed, survivor);
        if let Some(entry) = self.seen.aliases.get_mut(&absorbed) {
            entry.1 = Some(survivor);
        }
    }

    fn delete_alias(&mut self, absorbed: CustomerId) {
        self.note_alias(absorbed);
        self.inner.delete_alias(absorbed);
        if let Some(entry) = self.seen.aliases.get_mut(&absorbed) {
            entry.1 = None;
        }
    }

    fn add_history(
        &mut self,
        customer: CustomerId,
        event: &IdentityEvent,
    ) -> Result<(), StoreError> {
        self.inner.add_history(customer, event)
    }

    fn delete_history(&mut self, customer: CustomerId) -> Result<(), StoreError> {
        self.inner.delete_history(customer)
    }

    fn suggestion(
        &mut self,
        a: CustomerId,
        b: CustomerId,
    ) -> Result<Option<Suggestion>, StoreError> {
        self.inner.suggestion(a, b)
    }

    fn put_suggestion(
        &mut self,
        a: CustomerId,
        b: CustomerId,
        s: &Suggestion,
    ) -> Result<(), StoreError> {
        self.inner.put_suggestion(a, b, s)
    }

    fn delete_suggestion(&mut self, a: CustomerId, b: CustomerId) {
        self.inner.delete_suggestion(a, b)
    }

    fn delete_suggestions_of(&mut self, a: CustomerId) -> Result<(), StoreError> {
        self.inner.delete_suggestions_of(a)
    }

    fn owner(&mut self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError> {
        self.inner.owner(identifier)
    }

    fn set_owner(&mut self, identifier: &Identifier, owner: CustomerId) {
        self.inner.set_owner(identifier, owner);
        self.seen.identifiers.insert(identifier.clone());
    }

    fn remove_owner(&mut self, identifier: &Identifier) {
        self.inner.remove_owner(identifier);
        self.seen.identifiers.insert(identifier.clone());
    }

    fn next_sequence(&mut self) -> Result<u64, StoreError> {
        self.inner.next_sequence()
    }

    fn add_interaction(
        &mut self,
        member: CustomerId,
        interaction: &Interaction,
    ) -> Result<(), StoreError> {
        self.inner.add_interaction(member, interaction)?;
        self.seen.interactions.push((member, interaction.clone()));
        Ok(())
    }

    fn delete_timeline(&mut self, member: CustomerId) -> Result<(), StoreError> {
        self.inner.delete_timeline(member)
    }

    fn signal_record(&mut self, signal_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.signal_record(signal_id)
    }

    fn put_signal_record(&mut self, signal_id: &str, customer: CustomerId, record: Vec<u8>) {
        self.inner.put_signal_record(signal_id, customer, record)
    }

    fn signal_ids_of(&mut self, customer: CustomerId) -> Result<Vec<String>, StoreError> {
        self.inner.signal_ids_of(customer)
    }

    fn forget_signal_index(&mut self, customer: CustomerId, signal_id: &str) {
        self.inner.forget_signal_index(customer, signal_id)
    }

    fn allocate_change(&mut self) -> Result<Option<u64>, StoreError> {
        self.inner.allocate_change()
    }

    fn put_change(&mut self, seq: u64, customer: CustomerId, record: Vec<u8>) {
        self.inner.put_change(seq, customer, record)
    }

    fn delete_change(&mut self, seq: u64, customer: CustomerId) {
        self.inner.delete_change(seq, customer)
    }

    fn meta(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.meta(name)
    }

    fn put_meta(&mut self, name: &str, value: Vec<u8>) {
        self.inner.put_meta(name, value)
    }

    fn put_follow_up(&mut self, entry: &FollowUpKey) {
        self.inner.put_follow_up(entry)
    }

    fn delete_follow_up(&mut self, entry: &FollowUpKey) {
        self.inner.delete_follow_up(entry)
    }

    fn key_record(&mut self, key_id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.key_record(key_id)
    }

    fn put_key_record(&mut self, key_id: &[u8], created_millis: u64, record: Vec<u8>) {
        self.inner.put_key_record(key_id, created_millis, record)
    }

    fn delete_key_record(&mut self, key_id: &[u8], created_millis: u64) {
        self.inner.delete_key_record(key_id, created_millis)
    }

    fn index_key_record(&mut self, customer: CustomerId, key_id: &[u8]) {
        self.inner.index_key_record(customer, key_id)
    }

    fn unindex_key_record(&mut self, customer: CustomerId, key_id: &[u8]) {
        self.inner.unindex_key_record(customer, key_id)
    }

    fn key_records_of(&mut self, customer: CustomerId) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.key_records_of(customer)
    }
}

#[cfg(test)]
mod tests {
    use super::{index_follow_ups_once, ChangeKind, Journal, Seen};
    use crate::domain::names::STREAM_EVENT_PATTERN;
    use crate::domain::{ChannelRules, CustomerId, EpisodeReport, EpisodeStatus, Profile};
    use crate::store::{SledStore, Store};

    /// A store written before the follow-up index existed gets its resolved
    /// episodes indexed at the next start, once.
    #[test]
    fn follow_ups_stored_before_the_index_are_indexed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let at = chrono::Utc::now();
        let channels = ChannelRules::new(vec!["web".into()], false);
        let mut p = Profile::new(CustomerId::generate(), at);
        for (id, status) in [
            ("o-1", EpisodeStatus::Resolved),
            ("o-2", EpisodeStatus::Open),
        ] {
            let report = EpisodeReport {
                status: Some(status),
                ..EpisodeReport::default()
            };
            p.upsert_episode(id, report, "web", at, &channels);
        }
        // Written past the journal, as a release without the index did.
        store.write(&mut |tx| tx.put_profile(&p).is_ok()).unwrap();
        store.flush().unwrap();
        assert!(store.follow_ups(None, u64::MAX, 10).unwrap().is_empty());
        assert_eq!(index_follow_ups_once(&store).unwrap(), 1);
        let listed = store.follow_ups(None, u64::MAX, 10).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].customer, listed[0].episode.as_str()),
            (p.customer_id, "o-1")
        );
        assert_eq!(index_follow_ups_once(&store).unwrap(), 0, "only once");
    }

    /// After a reopen, changes kept from failed groups are sent only when
    /// their log entry reached the disk; the profiles they touched are
    /// still marked stale, and positions go on past them.
    #[test]
    fn after_a_reopen_only_changes_that_reached_the_disk_are_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let journal = Journal::after(0);
        let on_disk = CustomerId::generate();
        let gone = CustomerId::generate();
        for (customer, write) in [(on_disk, true), (gone, false)] {
            let mut seen = Seen::default();
            seen.after.insert(customer, None);
            seen.before
                .insert(customer, Some(Profile::new(customer, chrono::Utc::now())));
            let mut kept = None;
            store
                .write(&mut |tx| {
                    kept = Some(
                        journal
                            .entries(tx, std::mem::take(&mut seen), chrono::Utc::now())
                            .unwrap(),
                    );
                    write
                })
                .unwrap();
            journal.keep(kept.take().unwrap());
        }
        store.flush().unwrap();
        assert_eq!(journal.after_reopen(&store).unwrap(), 1);
        let committed = journal.take();
        let sent: Vec<_> = committed
            .events
            .iter()
            .map(|e| e.change.customer_id)
            .collect();
        assert_eq!(sent, vec![on_disk]);
        assert!(committed.customers.contains(&gone), "still marked stale");
        assert_eq!(journal.next_seq.get(), 3, "no position is handed out twice");
    }

    /// The documented pattern of event names admits every kind there is.
    #[test]
    fn every_kind_of_change_has_a_documented_event_name() {
        let pattern = regex::Regex::new(STREAM_EVENT_PATTERN).unwrap();
        let kinds = [
            ChangeKind::Created,
            ChangeKind::Updated,
            ChangeKind::AnswerCaptured,
            ChangeKind::InteractionAdded,
            ChangeKind::EpisodeUpdated,
            ChangeKind::Merged,
            ChangeKind::Unmerged,
            ChangeKind::Erased,
        ];
        for kind in kinds {
            assert!(pattern.is_match(kind.as_str()), "{}", kind.as_str());
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str(), "the feed and the stream name it alike");
        }
        for last in ["stream.dropped", "stream.closed"] {
            assert!(pattern.is_match(last));
        }
        assert!(!pattern.is_match("profile.anything"));
    }
}
