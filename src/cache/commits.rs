//! The write path. Once writes are durable, their entries are marked
//! stale and their events published on the bus; only then do the events
//! reach local streams and the writers get their answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::bus::BusMessageRef;
use super::RedisLink;
use crate::domain::{Committed, CustomerId, LiveEvent};

/// A group of durable writes on its way to Redis, then to the writers.
pub(super) struct Commit {
    events: Vec<Arc<LiveEvent>>,
    keys: Vec<String>,
    seq: u64,
    /// Runs once the markers are written (or could not be), before the events go out.
    invalidate: Box<dyn FnOnce() + Send>,
    release: Box<dyn FnOnce() + Send>,
}

impl RedisLink {
    /// Called on the committer thread once writes are durable: marks what
    /// they made stale, sends their events to every instance, and only then
    /// hands the events to local streams and acknowledges the writers.
    pub fn committed(
        &self,
        committed: Committed,
        invalidate: Box<dyn FnOnce() + Send>,
        release: Box<dyn FnOnce() + Send>,
    ) {
        let keys = committed
            .customers
            .iter()
            .map(|id| self.card_key(*id))
            .chain(committed.identifiers.iter().map(|i| self.owner_key(i)))
            .collect();
        let commit = Commit {
            events: committed.events.into_iter().map(Arc::new).collect(),
            keys,
            seq: committed.last_seq,
            invalidate,
            release,
        };
        if let Err(unsent) = self.commits.send(commit) {
            // The Redis thread is gone: never hold a writer, and never read
            // Redis again, since its entries are no longer marked.
            self.closed.store(true, Ordering::SeqCst);
            self.degrade("the Redis thread stopped", true);
            let commit = unsent.0;
            (commit.invalidate)();
            self.published.fetch_max(commit.seq, Ordering::SeqCst);
            self.hub.publish(&commit.events);
            (commit.release)();
        }
    }

    pub(super) async fn send_commits(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Commit>) {
        while let Some(first) = rx.recv().await {
            let mut group = vec![first];
            while group.len() < 64 {
                match rx.try_recv() {
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            let seq = group.iter().map(|c| c.seq).max().unwrap_or(0);
            let keys: Vec<&String> = group.iter().flat_map(|c| &c.keys).collect();
            let events: Vec<&LiveEvent> =
                group.iter().flat_map(|c| &c.events).map(|e| &**e).collect();
            if !keys.is_empty() || !events.is_empty() {
                let message = if events.is_empty() || !self.healthy() {
                    String::new()
                } else {
                    serde_json::to_string(&BusMessageRef {
                        origin: &self.instance,
                        events: &events,
                    })
                    .unwrap_or_default()
                };
                self.mark_stale(&keys, seq, message).await;
            }
            for commit in &mut group {
                let invalidate = std::mem::replace(&mut commit.invalidate, Box::new(|| {}));
                invalidate();
            }
            self.published.fetch_max(seq, Ordering::SeqCst);
            for commit in group {
                self.hub.publish(&commit.events);
                (commit.release)();
            }
        }
    }

    /// Marks the cards of `customers` stale at `seq`, from a thread outside
    /// any runtime (the change-log tail: another instance's write, which that
    /// instance marks too; whichever comes first, both are harmless).
    pub fn mark_cards_blocking(self: &Arc<Self>, customers: &[CustomerId], seq: u64) {
        if customers.is_empty() {
            return;
        }
        let link = self.clone();
        let keys: Vec<String> = customers.iter().map(|id| self.card_key(*id)).collect();
        let done = self.handle.spawn(async move {
            let keys: Vec<&String> = keys.iter().collect();
            link.mark_stale(&keys, seq, String::new()).await;
        });
        let _ = futures_executor::block_on(done);
    }
}
