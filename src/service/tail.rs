//! Following a shared store's change log (the database backend, written by
//! several instances): each instance hands its streams the changes of every
//! instance, in log order, and moves its feed and cache positions past them.
//!
//! Positions are handed out in commit order there (see `store::postgres`),
//! so reading the log after the last position read never skips a change
//! that commits later. The tail reads on a short poll, and at once when this
//! instance committed something; its own events keep the payload they were
//! committed with, the others' payload is read from the store, as a stream
//! replay does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use super::live::payload_from_store;
use crate::cache::RedisLink;
use crate::domain::LiveEvent;
use crate::events::{Hub, Publish};
use crate::store::{decode_change, Store};

/// Changes read per page.
const PAGE: usize = 256;

pub struct Tail {
    /// This instance's committed events not yet reached by the tail, by
    /// position, and the highest position handed to the streams; one lock,
    /// so an event is either kept for the tail or already past it.
    state: Mutex<State>,
    woken: Mutex<bool>,
    wake: Condvar,
    /// Set once the Redis link exists (it is built after the tail, and
    /// holds the tail: weak, so that neither keeps the other alive).
    redis: OnceLock<Weak<RedisLink>>,
}

struct State {
    own: BTreeMap<u64, LiveEvent>,
    cursor: u64,
}

/// Where the tail hands its results.
pub struct Targets {
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    /// The feed's and the stream replays' limit.
    pub published: Arc<AtomicU64>,
    /// The position cache fills are stamped with.
    pub durable: Arc<AtomicU64>,
}

impl Tail {
    /// Starts following the log after position `from`, every `poll` at
    /// least. The thread ends once the returned `Tail` is dropped.
    pub fn start(targets: Targets, from: u64, poll: Duration) -> Arc<Tail> {
        let tail = Arc::new(Tail {
            state: Mutex::new(State {
                own: BTreeMap::new(),
                cursor: from,
            }),
            woken: Mutex::new(false),
            wake: Condvar::new(),
            redis: OnceLock::new(),
        });
        let weak = Arc::downgrade(&tail);
        std::thread::Builder::new()
            .name("anamnesis-tail".into())
            .spawn(move || follow(weak, targets, poll))
            .expect("the tail thread starts");
        tail
    }

    /// Marks in Redis, before the feed shows them, the cards that other
    /// instances' changes made stale.
    pub fn use_redis(&self, redis: &Arc<RedisLink>) {
        let _ = self.redis.set(Arc::downgrade(redis));
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a wake-up or `poll`.
    fn sleep(&self, poll: Duration) {
        let woken = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        let (mut woken, _) = self
            .wake
            .wait_timeout_while(woken, poll, |w| !*w)
            .unwrap_or_else(|e| e.into_inner());
        *woken = false;
    }

    /// Reads what was committed after the cursor and hands it out; the
    /// number of changes read. A record this build cannot read (a newer
    /// build's kind of change, during a rolling deploy) is logged and
    /// passed over, so one record never stops the tail.
    fn step(&self, targets: &Targets) -> Result<usize, crate::store::StoreError> {
        let mut read = 0;
        loop {
            let from = self.state().cursor;
            let page = targets.store.changes(from, PAGE)?;
            let Some(&(last, _)) = page.last() else {
                return Ok(read);
            };
            let full = page.len() == PAGE;
            let mut events = Vec::with_capacity(page.len());
            let mut cards = Vec::new();
            for (seq, bytes) in page {
                let change = match decode_change(seq, &bytes) {
                    Ok(change) => change,
                    Err(e) => {
                        tracing::warn!(seq, error = %e, "a change this build cannot read: passed over");
                        continue;
                    }
                };
                cards.push(change.customer_id);
                cards.extend(change.survivor_id);
                cards.extend(change.merged_id);
                let own = self.state().own.get(&seq).cloned();
                let event = match own {
                    Some(event) => event,
                    None => {
                        let data = payload_from_store(&*targets.store, &change).unwrap_or_else(|e| {
                            tracing::warn!(seq, error = %e, "reading a change's payload failed");
                            None
                        });
                        LiveEvent { data, change }
                    }
                };
                events.push(Arc::new(event));
            }
            read += events.len();
            cards.sort_unstable();
            cards.dedup();
            if let Some(redis) = self.redis.get().and_then(Weak::upgrade) {
                redis.mark_cards_blocking(&cards, last);
            }
            // Positions first, as the committer does: a stream that opens
            // now replays up to here and takes the rest live.
            targets.published.fetch_max(last, Ordering::SeqCst);
            targets.durable.fetch_max(last, Ordering::SeqCst);
            targets.hub.publish_now(&events);
            {
                let mut state = self.state();
                state.cursor = last;
                // Events committed here that the log showed first are not kept.
                state.own.retain(|seq, _| *seq > last);
            }
            if !full {
                return Ok(read);
            }
        }
    }
}

fn follow(tail: Weak<Tail>, targets: Targets, poll: Duration) {
    while let Some(tail) = tail.upgrade() {
        if let Err(e) = tail.step(&targets) {
            tracing::warn!(error = %e, "following the change log failed; trying again");
        }
        tail.sleep(poll);
    }
}

impl Publish for Tail {
    /// This instance's own events: kept for the tail, which hands them out
    /// in log order with the others'.
    fn publish(&self, events: &[Arc<LiveEvent>]) {
        {
            let mut state = self.state();
            let cursor = state.cursor;
            for event in events {
                if event.change.seq > cursor {
                    state.own.insert(event.change.seq, (**event).clone());
                }
            }
        }
        *self.woken.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_one();
    }

    /// The log holds every instance's changes: no need for the bus's copy.
    fn takes_remote(&self) -> bool {
        false
    }
}
