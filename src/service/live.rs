//! Reading the change log: the change feed for integrations, and the event
//! stream of one profile (its replay from `Last-Event-ID`, then live events).

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::journal::pruned_through;
use super::{views, Access, ServiceError, Services};
use crate::domain::TimelinePosition;
use crate::domain::{Change, ChangeKind, CustomerId, LiveEvent, Payload};
use crate::events::{StreamRefusal, Subscription};
use crate::store::{decode_change, Store, StoreError};

/// Most entries one page of the change feed may ask for.
pub const MAX_CHANGES_PAGE: usize = 1000;
/// Entries read from the log at a time when a stream replays.
const REPLAY_PAGE: usize = 256;

/// A page of the change feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangePage {
    /// Oldest first.
    pub changes: Vec<Change>,
    /// Pass as `after` to read on (the same cursor again when nothing new came).
    #[schema(example = "1042")]
    pub next_cursor: String,
}

/// An event as a stream sends it: the change and, where there is one, what
/// it is about (as the reads show it).
pub struct StreamEvent {
    pub seq: u64,
    pub kind: ChangeKind,
    pub json: String,
}

/// The state of one profile's event stream.
pub struct EventStream {
    pub subscription: Subscription,
    /// The id the stream was opened on.
    origin: CustomerId,
    /// The profiles replayed from the log (the one asked for, and the one it
    /// was merged into).
    followed: Vec<CustomerId>,
    /// Replay position, and the durable position at subscription: live
    /// events up to it were replayed from the log instead.
    replayed: u64,
    upto: u64,
    queue: VecDeque<StreamEvent>,
    pub replay_done: bool,
    /// The id of the last event sent.
    sent: u64,
    /// What the stream's token may see of what events are about.
    access: Access,
}

impl EventStream {
    /// The id of the last event sent (where a client resumes).
    pub fn position(&self) -> u64 {
        self.sent
    }

    /// Whether a live event is news (not replayed already).
    pub fn is_new(&self, event: &LiveEvent) -> bool {
        event.change.seq > self.upto
    }

    pub fn note_sent(&mut self, seq: u64) {
        self.sent = self.sent.max(seq);
    }

    /// Follows (or stops following) a survivor at a replayed merge (unmerge)
    /// of a followed profile; whether the set changed.
    fn note_identity(&mut self, change: &Change) -> bool {
        if change.merged_id != Some(change.customer_id) {
            return false;
        }
        let Some(survivor) = change.survivor_id else {
            return false;
        };
        match change.kind {
            ChangeKind::Merged if !self.followed.contains(&survivor) => {
                self.followed.push(survivor);
                true
            }
            ChangeKind::Unmerged if survivor != self.origin => {
                let before = self.followed.len();
                self.followed.retain(|f| *f != survivor);
                self.followed.len() != before
            }
            ChangeKind::Merged
            | ChangeKind::Unmerged
            | ChangeKind::Created
            | ChangeKind::Updated
            | ChangeKind::AnswerCaptured
            | ChangeKind::InteractionAdded
            | ChangeKind::EpisodeUpdated
            | ChangeKind::Erased => false,
        }
    }
}

impl Services {
    /// A page of the change feed after `after` (from the oldest kept when
    /// `None`). A cursor older than what retention kept is refused: the
    /// consumer has missed changes and must start over.
    pub fn changes(&self, after: Option<u64>, limit: usize) -> Result<ChangePage, ServiceError> {
        let pruned = pruned_through(&*self.store)?;
        let after = match after {
            Some(a) if a < pruned => return Err(ServiceError::CursorExpired { oldest: pruned }),
            Some(a) => a,
            None => pruned,
        };
        let published = self.published_position();
        let mut changes = Vec::new();
        let mut next = after;
        for (seq, bytes) in self
            .store
            .changes(after, limit.clamp(1, MAX_CHANGES_PAGE))?
        {
            // Not yet on disk, or not yet out of the cache: not part of the feed yet.
            if seq > published {
                break;
            }
            next = seq;
            changes.extend(decode_change(seq, &bytes)?);
        }
        // Retention may have run while this page was read.
        let pruned = pruned_through(&*self.store)?;
        if after < pruned {
            return Err(ServiceError::CursorExpired { oldest: pruned });
        }
        Ok(ChangePage {
            changes,
            next_cursor: next.to_string(),
        })
    }

    /// Opens the event stream of `id`, replaying what came after
    /// `last_event_id` first. An id merged into another streams the
    /// survivor's events too.
    pub fn open_stream(
        &self,
        id: CustomerId,
        last_event_id: Option<u64>,
        access: Access,
        subject: &Arc<str>,
    ) -> Result<EventStream, ServiceError> {
        if let Some(after) = last_event_id {
            let oldest = pruned_through(&*self.store)?;
            if after < oldest {
                return Err(ServiceError::CursorExpired { oldest });
            }
        }
        let mut subscription = self.hub.subscribe(id, subject).map_err(|r| match r {
            StreamRefusal::Full => ServiceError::TooManyStreams,
            StreamRefusal::SubjectFull(max) => ServiceError::TooManyStreamsForSubject(max),
        })?;
        if *subscription.closing.borrow() {
            return Err(ServiceError::ShuttingDown);
        }
        // Follow where the id lives now, then note the position: every event
        // past it arrives live (to the profiles followed by then), every one
        // up to it is in the log. A merge landing in between moves the alias:
        // follow again until it holds still.
        // The profile `id` was merged into, if it is not live itself.
        let root_of = |id| -> Result<Option<CustomerId>, ServiceError> {
            Ok(match self.store.profile(id)? {
                Some(_) => None,
                None => self.store.alias(id)?,
            })
        };
        let mut followed = vec![id];
        let upto = loop {
            let root = root_of(id)?;
            if let Some(root) = root {
                subscription.follow(root);
                if !followed.contains(&root) {
                    followed.push(root);
                }
            }
            let upto = self.published_position();
            if root_of(id)? == root {
                if root.is_none() && self.store.profile(id)?.is_none() {
                    // Gone; a stream resuming may still collect the erasure.
                    let after = last_event_id.ok_or(ServiceError::ProfileNotFound("profile"))?;
                    if self.store.changes_of(id, after, 1)?.is_empty() {
                        return Err(ServiceError::ProfileNotFound("profile"));
                    }
                }
                break upto;
            }
        };
        let replayed = last_event_id.unwrap_or(upto).min(upto);
        Ok(EventStream {
            subscription,
            origin: id,
            followed,
            replayed,
            upto,
            queue: VecDeque::new(),
            replay_done: replayed >= upto,
            sent: last_event_id.unwrap_or(upto),
            access,
        })
    }

    /// The next replayed event, reading the log a page at a time; `None`
    /// once the replay reached the position noted at subscription.
    ///
    /// The replay follows merges and unmerges as they happened: from a
    /// `profile.merged` of a followed profile it reads the survivor's changes
    /// too, and stops at the `profile.unmerged` that takes it back.
    pub fn replay_next(
        &self,
        stream: &mut EventStream,
    ) -> Result<Option<StreamEvent>, ServiceError> {
        if stream.queue.is_empty() && !stream.replay_done {
            let mut page: Vec<Change> = Vec::new();
            for id in &stream.followed {
                for (seq, bytes) in self.store.changes_of(*id, stream.replayed, REPLAY_PAGE)? {
                    if seq > stream.upto {
                        break;
                    }
                    page.extend(decode_change(seq, &bytes)?);
                }
            }
            page.sort_by_key(|c| c.seq);
            page.dedup_by_key(|c| c.seq);
            page.truncate(REPLAY_PAGE);
            if page.is_empty() {
                stream.replay_done = true;
            }
            for change in page {
                stream.replayed = change.seq;
                let moved = stream.note_identity(&change);
                let data = self.replayed_data(&change, stream.access)?;
                stream.queue.push_back(stream_event(&change, data));
                if moved {
                    // Read on from here with the new set of profiles.
                    break;
                }
            }
        }
        Ok(stream.queue.pop_front())
    }

    /// What a replayed change is about, as it is now (the log keeps no
    /// content): the current answer, episode or interaction, if still there.
    fn replayed_data(
        &self,
        change: &Change,
        access: Access,
    ) -> Result<Option<Value>, ServiceError> {
        let payload = payload_from_store(&*self.store, change)?;
        Ok(payload.map(|p| self.payload_view(change, &p, access)))
    }

    /// How often an idle stream gets a heartbeat.
    pub fn heartbeat(&self) -> std::time::Duration {
        self.heartbeat
    }

    /// How long a stream stays open at most.
    pub fn max_stream(&self) -> std::time::Duration {
        self.max_stream
    }
}

impl Services {
    /// A live event as `stream` sends it.
    pub fn live_event(&self, event: &Arc<LiveEvent>, stream: &EventStream) -> StreamEvent {
        stream_event(
            &event.change,
            event
                .data
                .as_ref()
                .map(|p| self.payload_view(&event.change, p, stream.access)),
        )
    }

    fn payload_view(&self, change: &Change, payload: &Payload, access: Access) -> Value {
        let m = self.masking(access);
        let view = match payload {
            Payload::Answer(a) => {
                let key = change.key.as_deref().unwrap_or("");
                serde_json::to_value(views::answer_view(key, a, &m))
            }
            Payload::Interaction(i) => serde_json::to_value(views::interaction_view(i.clone(), &m)),
            Payload::Episode(e) => serde_json::to_value(views::episode_view(e, &m)),
        };
        view.unwrap_or(Value::Null)
    }
}

fn stream_event(change: &Change, data: Option<Value>) -> StreamEvent {
    let mut json = serde_json::to_value(change).unwrap_or(Value::Null);
    if let (Some(data), Value::Object(map)) = (data, &mut json) {
        map.insert("data".into(), data);
    }
    StreamEvent {
        seq: change.seq,
        kind: change.kind,
        json: json.to_string(),
    }
}

/// What a change from the log is about, as it is now in the store (the
/// answer, episode or interaction it names), for changes that carry one.
pub(super) fn payload_from_store(
    store: &dyn Store,
    change: &Change,
) -> Result<Option<Payload>, StoreError> {
    let needs_profile = matches!(
        change.kind,
        ChangeKind::AnswerCaptured | ChangeKind::EpisodeUpdated | ChangeKind::InteractionAdded
    );
    if !needs_profile {
        return Ok(None);
    }
    let id = change.customer_id;
    let p = match store.profile(id)? {
        Some(p) => p,
        None => match store.alias(id)? {
            Some(to) => match store.profile(to)? {
                Some(p) => p,
                None => return Ok(None),
            },
            None => return Ok(None),
        },
    };
    Ok(match change.kind {
        ChangeKind::AnswerCaptured => change
            .key
            .as_ref()
            .and_then(|k| p.answers.get(k))
            .cloned()
            .map(Payload::Answer),
        ChangeKind::EpisodeUpdated => change
            .episode_id
            .as_ref()
            .and_then(|e| p.episodes.get(e))
            .cloned()
            .map(Payload::Episode),
        ChangeKind::InteractionAdded => match change
            .interaction_id
            .as_deref()
            .and_then(TimelinePosition::from_id)
        {
            Some(pos) => {
                let mut found = None;
                for member in p.members() {
                    if let Some(i) = store.interaction(member, pos)? {
                        found = Some(Payload::Interaction(i));
                        break;
                    }
                }
                found
            }
            None => None,
        },
        // Carry no payload (and returned above).
        ChangeKind::Created
        | ChangeKind::Updated
        | ChangeKind::Merged
        | ChangeKind::Unmerged
        | ChangeKind::Erased => None,
    })
}
