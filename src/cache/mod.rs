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
//!
//! # Layout
//!
//! - `conn`: connecting to one server or a cluster, on a thread of its own.
//! - `keys`: the key scheme: prefix, store, buckets and their generations.
//! - `entries`: reading, filling and marking entries, with the Lua scripts.
//! - `health`: in use, degraded or returning; the check that brings it back.
//! - `commits`: the write path, from durable writes to markers to events.
//! - `bus`: events to and from the other instances.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

mod bus;
mod commits;
mod conn;
mod entries;
mod health;
mod keys;

pub use self::entries::Cached;

use self::commits::Commit;
use self::conn::{Cluster, Conn};
use self::entries::{FILL, MARK};
use self::keys::CLUSTER_BUCKETS;
use crate::config::RedisSettings;
use crate::events::Publish;

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
}
