//! The change journal: what each write changed, as events.
//!
//! Every use case runs its write through a [`Recording`], which watches the
//! store calls it makes (profiles put and deleted, aliases moved, identifiers
//! re-owned, interactions added) and, when the write succeeds, turns them into
//! [`Change`](crate::domain::Change)s. Each change gets the next position of the change log and is
//! written in the same atomic batch as the write itself, so the log never
//! disagrees with the store: a change is in the log exactly when its write is.
//!
//! The log holds ids, kinds, versions and keys, never personal data: an
//! erasure need not hunt through it, and a consumer that wants the content
//! reads the profile (with its own token's field access). The live copy of
//! an event ([`LiveEvent`](crate::domain::LiveEvent)) also carries the content it is about (the answer,
//! the interaction, the episode), kept in memory and on the event bus only.
//!
//! The journal's state and the log's bookkeeping are here; what a write did
//! ([`Seen`]) and the events it makes are in `seen`, the transaction that
//! watches the store calls in `recording`, and the follow-up index the
//! journal keeps in step with the profiles in `follow_ups`.

mod follow_ups;
mod recording;
mod seen;

pub use follow_ups::index_follow_ups_once;
pub use recording::Recording;
pub use seen::Seen;

use std::cell::{Cell, RefCell};

use chrono::{DateTime, Utc};

use crate::domain::Committed;
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
    // Empty positions seen since the last old change: removed with the
    // next old change after them, never on their own (their age is unknown).
    let mut empty = Vec::new();
    'scan: while doomed.len() < max {
        // A page at a time: most runs find the first change still young.
        let page = store.changes(from, 64.min(max - doomed.len()))?;
        if page.is_empty() {
            break;
        }
        for (seq, bytes) in page {
            from = seq;
            let Some(change) = decode_change(seq, &bytes)? else {
                empty.push((seq, None));
                continue;
            };
            if change.at >= cutoff {
                break 'scan;
            }
            doomed.append(&mut empty);
            doomed.push((seq, Some(change.customer_id)));
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

#[cfg(test)]
mod tests {
    use super::{index_follow_ups_once, Journal, Seen};
    use crate::domain::names::STREAM_EVENT_PATTERN;
    use crate::domain::ChangeKind;
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
