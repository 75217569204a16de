//! Live events in process: who listens to which profile, and handing each
//! event to its listeners without ever waiting for one.
//!
//! Every stream gets a bounded queue. Publishing never blocks: a stream
//! whose queue is full is cut off (its queue closes after what it holds), and
//! the stream ends by telling its client to resume from the last event it
//! received. A slow consumer therefore costs nothing to writers or to other
//! streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::domain::{ChangeKind, CustomerId, LiveEvent};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One stream's end of the hub.
struct Slot {
    tx: Mutex<Option<mpsc::Sender<Arc<LiveEvent>>>>,
    overflowed: AtomicBool,
    /// The profiles whose events it receives (guarded by the hub's lock).
    following: Mutex<Vec<CustomerId>>,
}

impl Slot {
    fn offer(&self, event: &Arc<LiveEvent>) {
        let mut tx = lock(&self.tx);
        if let Some(sender) = tx.as_ref() {
            if sender.try_send(event.clone()).is_err() {
                // Full (or the stream is gone): close the queue after what it holds.
                self.overflowed.store(true, Ordering::SeqCst);
                *tx = None;
                metrics::counter!("anamnesis_event_streams_dropped_total").increment(1);
            }
        }
    }
}

/// Where committed events go: straight to this instance's streams (the
/// [`Hub`]), or, over a store several instances write, to the tail that
/// hands out every instance's changes in log order.
pub trait Publish: Send + Sync {
    fn publish(&self, events: &[Arc<LiveEvent>]);

    /// Whether events other instances send over the Redis bus are wanted
    /// (not when the change log brings them).
    fn takes_remote(&self) -> bool {
        true
    }
}

impl Publish for Hub {
    fn publish(&self, events: &[Arc<LiveEvent>]) {
        self.publish_now(events)
    }
}

pub struct Hub {
    listeners: Mutex<HashMap<CustomerId, Vec<Arc<Slot>>>>,
    buffer: usize,
    open: AtomicUsize,
    max_streams: usize,
    /// Streams open per token subject, and the most one may hold, so one
    /// client cannot take every stream from the others.
    per_subject: Mutex<HashMap<Arc<str>, usize>>,
    max_per_subject: usize,
    closing: watch::Sender<bool>,
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRefusal {
    /// `events.max_streams` are open on this instance.
    Full,
    /// The subject holds `events.max_streams_per_subject` already.
    SubjectFull(usize),
}

/// A stream's subscription: events about the profiles it follows arrive on
/// `events`; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    slot: Arc<Slot>,
    subject: Arc<str>,
    pub events: mpsc::Receiver<Arc<LiveEvent>>,
    pub closing: watch::Receiver<bool>,
}

impl Subscription {
    /// Also receive the events of `id`.
    pub fn follow(&mut self, id: CustomerId) {
        let mut listeners = self.hub.lock();
        Hub::attach(&mut listeners, id, &self.slot);
    }

    /// Whether the hub cut this stream off for falling behind.
    pub fn overflowed(&self) -> bool {
        self.slot.overflowed.load(Ordering::SeqCst)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut listeners = self.hub.lock();
        let following = std::mem::take(&mut *lock(&self.slot.following));
        for id in &following {
            if let Some(slots) = listeners.get_mut(id) {
                slots.retain(|s| !Arc::ptr_eq(s, &self.slot));
                if slots.is_empty() {
                    listeners.remove(id);
                }
            }
        }
        drop(listeners);
        let mut per_subject = lock(&self.hub.per_subject);
        if let Some(n) = per_subject.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                per_subject.remove(&self.subject);
            }
        }
        drop(per_subject);
        self.hub.open.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("anamnesis_event_streams_open").decrement(1.0);
    }
}

impl Hub {
    pub fn new(buffer: usize, max_streams: usize, max_per_subject: usize) -> Hub {
        Hub {
            listeners: Mutex::new(HashMap::new()),
            buffer,
            open: AtomicUsize::new(0),
            max_streams,
            per_subject: Mutex::new(HashMap::new()),
            max_per_subject,
            closing: watch::channel(false).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CustomerId, Vec<Arc<Slot>>>> {
        lock(&self.listeners)
    }

    /// A new stream following `id` for `subject`, unless `max_streams` are
    /// open, or the subject holds its share already.
    pub fn subscribe(
        self: &Arc<Self>,
        id: CustomerId,
        subject: &Arc<str>,
    ) -> Result<Subscription, StreamRefusal> {
        {
            let mut per_subject = lock(&self.per_subject);
            let held = per_subject.entry(subject.clone()).or_default();
            if *held >= self.max_per_subject {
                if *held == 0 {
                    per_subject.remove(subject);
                }
                return Err(StreamRefusal::SubjectFull(self.max_per_subject));
            }
            if self.open.fetch_add(1, Ordering::SeqCst) >= self.max_streams {
                self.open.fetch_sub(1, Ordering::SeqCst);
                if *held == 0 {
                    per_subject.remove(subject);
                }
                return Err(StreamRefusal::Full);
            }
            *held += 1;
        }
        metrics::gauge!("anamnesis_event_streams_open").increment(1.0);
        let (tx, rx) = mpsc::channel(self.buffer);
        let slot = Arc::new(Slot {
            tx: Mutex::new(Some(tx)),
            overflowed: AtomicBool::new(false),
            following: Mutex::new(Vec::new()),
        });
        let mut sub = Subscription {
            hub: self.clone(),
            slot,
            subject: subject.clone(),
            events: rx,
            closing: self.closing.subscribe(),
        };
        sub.follow(id);
        Ok(sub)
    }

    fn attach(
        listeners: &mut HashMap<CustomerId, Vec<Arc<Slot>>>,
        id: CustomerId,
        slot: &Arc<Slot>,
    ) {
        let mut following = lock(&slot.following);
        if !following.contains(&id) {
            following.push(id);
            listeners.entry(id).or_default().push(slot.clone());
        }
    }

    /// Stops `slot` following `id`, unless the stream was opened on it.
    fn detach(
        listeners: &mut HashMap<CustomerId, Vec<Arc<Slot>>>,
        id: CustomerId,
        slot: &Arc<Slot>,
    ) {
        let mut following = lock(&slot.following);
        if following.first() == Some(&id) {
            return;
        }
        following.retain(|f| *f != id);
        if let Some(slots) = listeners.get_mut(&id) {
            slots.retain(|s| !Arc::ptr_eq(s, slot));
            if slots.is_empty() {
                listeners.remove(&id);
            }
        }
    }

    /// Hands each event to the streams following its profile; never waits
    /// (see [`Publish`]).
    ///
    /// A stream following a profile that is merged away follows the survivor
    /// from that event on, before any later event is handed out, so it misses
    /// nothing the survivor does next; an unmerge of that profile ends it.
    pub fn publish_now(&self, events: &[Arc<LiveEvent>]) {
        if events.is_empty() {
            return;
        }
        let mut listeners = self.lock();
        if listeners.is_empty() {
            return;
        }
        for event in events {
            let change = &event.change;
            let Some(slots) = listeners.get(&change.customer_id) else {
                continue;
            };
            for slot in slots {
                slot.offer(event);
            }
            // The absorbed (restored) profile's copy of a merge (unmerge).
            if change.merged_id != Some(change.customer_id) {
                continue;
            }
            let Some(survivor) = change.survivor_id else {
                continue;
            };
            let slots: Vec<Arc<Slot>> = slots.clone();
            match change.kind {
                ChangeKind::Merged => {
                    for slot in &slots {
                        Hub::attach(&mut listeners, survivor, slot);
                    }
                }
                ChangeKind::Unmerged => {
                    for slot in &slots {
                        Hub::detach(&mut listeners, survivor, slot);
                    }
                }
                ChangeKind::Created
                | ChangeKind::Updated
                | ChangeKind::AnswerCaptured
                | ChangeKind::InteractionAdded
                | ChangeKind::EpisodeUpdated
                | ChangeKind::Erased => {}
            }
        }
    }

    /// Ends every stream (the service is shutting down).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}
