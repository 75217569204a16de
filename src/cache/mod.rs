//! Redis: the hot-profile cache and the event bus between instances.
//!
//! Redis is a cache, never the truth. Every call is bounded by
//! `redis.timeout_ms`; a call that fails or times out is answered from the
//! store, and Redis is left alone (degraded) until a background check finds it
//! again. Nothing is ever written only to Redis.
//!
//! # Never a stale read
//!
//! Each entry is `<generation>:<position>:<body>`. The position is a change-log
//! position (see `service::journal`):
//!
//! - A reader that misses notes the highest durable position *before* it
//!   reads the store, and fills the entry with that position, unless the entry
//!   already holds a newer one.
//! - Once a write is durable, and before it is acknowledged, every entry it
//!   made stale is overwritten with a marker carrying the write's position, in
//!   one script run. A fill that raced the write carries an older position and
//!   loses, whichever lands first.
//! - When a marker cannot be written (Redis down or slow), the write is still
//!   acknowledged, and Redis is not read again until the generation has been
//!   bumped, which makes every earlier entry unusable. The same happens when
//!   the connection drops: a Redis that restarts from an old snapshot cannot
//!   bring old entries back.
//!
//! The in-process fan-out of events waits for the markers too, so a desk that
//! refetches on an event never sees the version before it.
//!
//! # One Redis or a cluster
//!
//! `redis.url` names one server; `redis.cluster_nodes` a Redis Cluster. A
//! cluster runs a script or a multi-key command only on keys of one hash
//! slot, so there keys are spread over buckets, each one slot by its hash
//! tag (`<prefix>{<store>:<bucket>}:card:<id>`), each with a generation of
//! its own. A write marks each bucket it touched with one script run, and
//! publishes its events once every bucket is marked; after an outage every
//! bucket's generation is bumped. One server has one bucket, and the keys
//! of earlier releases (`<prefix><store>:card:<id>`), so that instances of
//! both can share it during a rolling upgrade. Events go out with
//! `PUBLISH`, which a cluster delivers to the subscribers of every node; an
//! instance subscribes through one seed, and through the next when that one
//! is lost.
//!
//! The cluster client retries nothing itself: a node that restarted (maybe
//! from an old snapshot) or a replica that took over shows as a failed call
//! on the connection to it, which degrades Redis and leads to a new
//! generation, exactly as a dropped connection to one server does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

mod bus;
mod conn;
mod entries;
mod health;
mod keys;

pub use self::entries::Cached;

use self::bus::BusMessageRef;
use self::conn::{Cluster, Conn};
use self::entries::{FILL, MARK};
use self::keys::CLUSTER_BUCKETS;
use crate::config::RedisSettings;
use crate::domain::{Committed, CustomerId, LiveEvent};
use crate::events::Publish;

/// A group of durable writes on its way to Redis, then to the writers.
struct Commit {
    events: Vec<Arc<LiveEvent>>,
    keys: Vec<String>,
    seq: u64,
    /// Runs once the markers are written (or could not be), before the events go out.
    invalidate: Box<dyn FnOnce() + Send>,
    release: Box<dyn FnOnce() + Send>,
}

pub struct RedisLink {
    /// Where the event subscription goes: the server, or each seed in turn.
    subscribe_to: Vec<redis::Client>,
    /// Replaced by a new one when a cluster's was lost (see `recover`).
    conn: std::sync::Mutex<Conn>,
    /// A cluster: how to connect to it afresh.
    cluster: Option<Cluster>,
    handle: Handle,
    /// Starts every key and the event channel's name (shared by every instance).
    prefix: String,
    /// The store's id: part of every key.
    store: String,
    /// 1 on one server, `CLUSTER_BUCKETS` on a cluster.
    buckets: u32,
    published: Arc<AtomicU64>,
    ttl_ms: u64,
    timeout: Duration,
    /// Redis may be used.
    healthy: AtomicBool,
    /// Some marker may be missing: bump the generation before using Redis again.
    dirty: AtomicBool,
    /// Redis answers again and is being brought back: writes mark their
    /// entries already, so that a steady stream of writes cannot keep it
    /// from coming back (each unmarked one would call for another bump).
    returning: AtomicBool,
    /// Set when markers can no longer be written at all: Redis stays off.
    closed: AtomicBool,
    /// Tells this instance's own events from the others' on the bus.
    instance: String,
    /// Where events go once marked: the streams, or the tail.
    hub: Arc<dyn Publish>,
    commits: mpsc::UnboundedSender<Commit>,
    fill: Script,
    mark: Script,
}

impl RedisLink {
    /// Connects lazily: the service starts (and serves from the store) even
    /// when Redis is down, and uses it once it answers.
    /// `store` names the store this instance writes to (keys carry it);
    /// `published` is advanced once a group's entries are marked.
    pub fn start(
        settings: &RedisSettings,
        store: &str,
        hub: Arc<dyn Publish>,
        published: Arc<AtomicU64>,
    ) -> anyhow::Result<Arc<RedisLink>> {
        // Part of every key, and of a cluster's hash tags: braces or a
        // colon would move keys to other slots or buckets.
        anyhow::ensure!(
            !store.is_empty() && store.chars().all(|c| c.is_ascii_alphanumeric()),
            "the store id `{store}` is not alphanumeric"
        );
        let handle = conn::runtime()?;
        let timeout = Duration::from_millis(settings.timeout_ms);
        let (conn, subscribe_to, cluster) = conn::connect(settings, &handle, timeout)?;
        let (commits, commit_rx) = mpsc::unbounded_channel();
        let link = Arc::new(RedisLink {
            subscribe_to,
            conn: std::sync::Mutex::new(conn),
            buckets: if cluster.is_some() {
                CLUSTER_BUCKETS
            } else {
                1
            },
            cluster,
            handle: handle.clone(),
            prefix: settings.key_prefix.clone(),
            store: store.to_owned(),
            published,
            ttl_ms: settings.ttl_secs * 1000,
            timeout,
            // Unproven until the first check answers; and any entry from
            // before this start may be stale: bump the generation first.
            healthy: AtomicBool::new(false),
            dirty: AtomicBool::new(true),
            returning: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            instance: ulid::Ulid::new().to_string(),
            hub,
            commits,
            fill: Script::new(FILL),
            mark: Script::new(MARK),
        });
        metrics::gauge!("anamnesis_redis_up").set(0.0);
        handle.spawn(link.clone().recover());
        handle.spawn(link.clone().listen());
        handle.spawn(link.clone().send_commits(commit_rx));
        Ok(link)
    }

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

    async fn send_commits(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Commit>) {
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
