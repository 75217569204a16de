//! Following a shared store's change log (the database backend, written by
//! several instances): each instance hands its streams the changes of every
//! instance, in log order, and moves its feed and cache positions past them.
//!
//! Positions are taken just before COMMIT there (see `store::postgres`), so
//! a position can become visible a moment after a higher one: the tail
//! hands out changes up to the first missing position only, and waits for
//! it up to [`GAP_WAIT`]. A position still missing then was taken by a
//! write that did not commit (it failed, or its instance died), and is
//! passed over; should it appear later after all (a COMMIT that took
//! longer than that), the tail still hands it out, late and out of order,
//! for [`LATE_WATCH`]. The tail reads on a short poll, and at once when
//! this instance committed something; its own events keep the payload they
//! were committed with, the others' payload is read from the store, as a
//! stream replay does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::live::payload_from_store;
use crate::cache::RedisLink;
use crate::domain::LiveEvent;
use crate::events::{Hub, Publish};
use crate::store::{decode_change, Store};

/// Changes read per page.
const PAGE: usize = 256;

/// How long a missing position holds back the changes after it: far
/// longer than the time between a write taking its positions and its
/// COMMIT returning (one statement and the COMMIT).
pub const GAP_WAIT: Duration = Duration::from_secs(2);

/// How long a position passed over is still looked for.
pub const LATE_WATCH: Duration = Duration::from_secs(600);

/// How often the log is read while a gap holds changes back.
const GAP_POLL: Duration = Duration::from_millis(5);

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

/// What the tail thread alone keeps about missing positions.
#[derive(Default)]
struct Gaps {
    /// The first missing position after the cursor, and since when.
    open: Option<(u64, Instant)>,
    /// Positions passed over, and when.
    passed: BTreeMap<u64, Instant>,
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
    /// number of changes read, and whether a gap holds changes back. A
    /// record this build cannot read (a newer build's kind of change,
    /// during a rolling deploy) is logged and passed over, so one record
    /// never stops the tail.
    fn step(
        &self,
        targets: &Targets,
        gaps: &mut Gaps,
    ) -> Result<(usize, bool), crate::store::StoreError> {
        let mut read = self.late(targets, gaps)?;
        loop {
            let from = self.state().cursor;
            let page = targets.store.changes(from, PAGE)?;
            let full = page.len() == PAGE;
            let mut entries = Vec::with_capacity(page.len());
            let mut expected = from + 1;
            let mut held = false;
            for (seq, bytes) in page {
                if seq > expected {
                    let since = match gaps.open {
                        Some((at, since)) if at == expected => since,
                        _ => {
                            let now = Instant::now();
                            gaps.open = Some((expected, now));
                            now
                        }
                    };
                    if since.elapsed() < GAP_WAIT {
                        held = true;
                        break;
                    }
                    tracing::warn!(
                        from = expected,
                        to = seq - 1,
                        "change-log positions never committed (a write failed or its instance stopped): passed over"
                    );
                    metrics::counter!("anamnesis_change_positions_passed_total")
                        .increment(seq - expected);
                    let now = Instant::now();
                    // Watched for a while, should they commit late after all.
                    for missing in expected..seq.min(expected + 1024) {
                        gaps.passed.insert(missing, now);
                    }
                }
                gaps.open = None;
                expected = seq + 1;
                entries.push((seq, bytes));
            }
            let Some(&(last, _)) = entries.last() else {
                return Ok((read, held));
            };
            read += self.hand_out(targets, entries, last);
            if !full || held {
                return Ok((read, held));
            }
        }
    }

    /// Looks for positions passed over that committed late after all, and
    /// hands them out; the number found.
    fn late(&self, targets: &Targets, gaps: &mut Gaps) -> Result<usize, crate::store::StoreError> {
        gaps.passed.retain(|_, at| at.elapsed() < LATE_WATCH);
        let mut found = Vec::new();
        for &seq in gaps.passed.keys() {
            if let Some(entry) = targets.store.changes(seq - 1, 1)?.into_iter().next() {
                if entry.0 == seq {
                    found.push(entry);
                }
            }
        }
        if found.is_empty() {
            return Ok(0);
        }
        for (seq, _) in &found {
            gaps.passed.remove(seq);
            tracing::warn!(
                seq,
                "a change committed after the tail passed its position: handed out late"
            );
        }
        metrics::counter!("anamnesis_changes_late_total").increment(found.len() as u64);
        let cursor = self.state().cursor;
        Ok(self.hand_out(targets, found, cursor))
    }

    /// Hands `entries` to the streams and moves the positions to `last`.
    fn hand_out(&self, targets: &Targets, entries: Vec<(u64, Vec<u8>)>, last: u64) -> usize {
        let mut events = Vec::with_capacity(entries.len());
        let mut cards = Vec::new();
        for (seq, bytes) in entries {
            let change = match decode_change(seq, &bytes) {
                Ok(Some(change)) => change,
                // A position taken with nothing to tell.
                Ok(None) => continue,
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
        let mut state = self.state();
        state.cursor = state.cursor.max(last);
        // Events committed here that the log showed first are not kept.
        let cursor = state.cursor;
        state.own.retain(|seq, _| *seq > cursor);
        events.len()
    }
}

fn follow(tail: Weak<Tail>, targets: Targets, poll: Duration) {
    let mut gaps = Gaps::default();
    while let Some(tail) = tail.upgrade() {
        let held = match tail.step(&targets, &mut gaps) {
            Ok((_, held)) => held,
            Err(e) => {
                tracing::warn!(error = %e, "following the change log failed; trying again");
                false
            }
        };
        tail.sleep(if held { GAP_POLL.min(poll) } else { poll });
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
