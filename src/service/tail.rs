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
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use super::journal::{Change, LiveEvent};
use super::live::payload_from_store;
use crate::events::{Hub, Publish};
use crate::store::Store;

/// Changes read per page.
const PAGE: usize = 256;

pub struct Tail {
    /// This instance's committed events not yet reached by the tail, by position.
    own: Mutex<BTreeMap<u64, LiveEvent>>,
    /// The highest position handed to the streams.
    cursor: AtomicU64,
    woken: Mutex<bool>,
    wake: Condvar,
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
            own: Mutex::default(),
            cursor: AtomicU64::new(from),
            woken: Mutex::new(false),
            wake: Condvar::new(),
        });
        let weak = Arc::downgrade(&tail);
        std::thread::Builder::new()
            .name("anamnesis-tail".into())
            .spawn(move || follow(weak, targets, poll))
            .expect("the tail thread starts");
        tail
    }

    fn lock_own(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, LiveEvent>> {
        self.own.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a wake-up or `poll`; `false` once nothing wakes it any more.
    fn sleep(&self, poll: Duration) {
        let woken = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        let (mut woken, _) = self
            .wake
            .wait_timeout_while(woken, poll, |w| !*w)
            .unwrap_or_else(|e| e.into_inner());
        *woken = false;
    }

    /// Reads what was committed after the cursor and hands it out; the
    /// number of changes read.
    fn step(&self, targets: &Targets) -> Result<usize, crate::store::StoreError> {
        let mut read = 0;
        loop {
            let from = self.cursor.load(Ordering::SeqCst);
            let page = targets.store.changes(from, PAGE)?;
            let Some(&(last, _)) = page.last() else {
                return Ok(read);
            };
            let full = page.len() == PAGE;
            let mut events = Vec::with_capacity(page.len());
            for (seq, bytes) in page {
                let change = Change::decode(seq, &bytes)?;
                let own = self.lock_own().remove(&seq);
                let event = match own {
                    Some(event) => event,
                    None => LiveEvent {
                        data: payload_from_store(&*targets.store, &change)?,
                        change,
                    },
                };
                events.push(Arc::new(event));
            }
            read += events.len();
            targets.hub.publish_now(&events);
            self.cursor.store(last, Ordering::SeqCst);
            // Events committed here that the log showed first are not kept.
            self.lock_own().retain(|seq, _| *seq > last);
            targets.published.fetch_max(last, Ordering::SeqCst);
            targets.durable.fetch_max(last, Ordering::SeqCst);
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
        let cursor = self.cursor.load(Ordering::SeqCst);
        {
            let mut own = self.lock_own();
            for event in events {
                if event.change.seq > cursor {
                    own.insert(event.change.seq, (**event).clone());
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
