//! Use cases: resolve a signal, read a profile or a context card, write traits
//! and answers, merge and erase. Transport-neutral: handlers call these, and so
//! could a CLI or a queue consumer.

pub mod backup;
pub mod committer;
pub mod engagement;
pub mod erasures;
mod hot;
pub mod idempotency;
mod ingest;
pub mod journal;
pub mod live;
pub mod masking;
pub mod profiles;
mod tail;
pub mod upgrade;
pub mod views;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use chrono::{DateTime, Utc};

use crate::cache::RedisLink;
use crate::config::Settings;
use crate::domain::{
    Committed, ConflictReason, CustomerId, IdentifierError, LiveEvent, SignalError, SignalInput,
    SignalRules,
};
use crate::events::{Hub, Publish};
use crate::store::{Store, StoreError, StoreTx};
use hot::HotCards;
use tail::Tail;

pub use committer::{AfterCommit, CommitPolicy, Committer, Writer};
pub use ingest::{BatchItem, Ingested};
use journal::Recording;
pub use masking::{Access, FieldRules, Masking};
pub use profiles::{HistoryQuery, TimelineQuery};

/// Failures of a use case. Every variant maps to one stable error code in
/// `crate::error`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error("no {0} with this id")]
    ProfileNotFound(&'static str),
    #[error("{0}")]
    Identifier(#[from] IdentifierError),
    /// A batch item that breaks a rule the schema states: the whole batch is
    /// refused, naming the item (see [`SignalInput::check_shape`]).
    #[error("signals[{index}]: {source}")]
    InvalidBatchItem { index: usize, source: SignalError },
    #[error("no profile owns this identifier")]
    IdentifierNotOwned,
    /// The id was merged into another profile; answer with a redirect.
    #[error("profile {from} was merged into {to}")]
    Moved { from: CustomerId, to: CustomerId },
    #[error("a profile cannot be merged with itself")]
    SameProfile,
    #[error("the merge would break a rule: {0}")]
    MergeRefused(&'static str),
    #[error("signal_id `{0}` was already used for a different signal")]
    SignalIdReused(String),
    #[error("signal_id `{0}` belongs to a profile that was erased")]
    SignalOfErasedProfile(String),
    #[error("the profile would hold more {what} than the cap of {cap}")]
    CapExceeded { what: &'static str, cap: usize },
    #[error("{0} is not merged into this profile; there is nothing to undo")]
    NothingToUnmerge(CustomerId),
    #[error("consent purpose `{0}` is not configured")]
    UnknownPurpose(String),
    #[error("there is no open merge suggestion between these profiles")]
    SuggestionNotFound,
    #[error("the identifier is not on this profile")]
    IdentifierNotOnProfile,
    #[error("cursor is not one this service issued")]
    InvalidCursor,
    #[error("store failure: {0}")]
    Store(#[from] StoreError),
    #[error("the write could not be made durable")]
    NotDurable,
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The write waited for the committer past its deadline and was
    /// withdrawn before anything of it was applied.
    #[error("the store was too busy to start this write in time (storage.write_deadline_ms); nothing of it was applied; retry after Retry-After")]
    Withdrawn,
    /// The job's `Idempotency-Key` was used already: its record, as stored.
    /// The HTTP layer answers it (a replay, or why not).
    #[error("this Idempotency-Key was used already")]
    KeyUsed(Vec<u8>),
    #[error("changes up to {oldest} are no longer kept; read the feed again from its start")]
    CursorExpired { oldest: u64 },
    #[error("too many event streams are open; try again later")]
    TooManyStreams,
    #[error("this token's subject has {0} event streams open, the most one subject may hold (events.max_streams_per_subject); close one first")]
    TooManyStreamsForSubject(usize),
    #[error("the database backend is backed up with the database's own tools, not by the service")]
    BackupUnsupported,
    #[error("a backup is already being taken; try again once it is done")]
    BackupInProgress,
}

impl ServiceError {
    pub fn merge_refused(reason: ConflictReason) -> ServiceError {
        match reason {
            ConflictReason::IdentifierLimit => ServiceError::MergeRefused(
                "together the profiles would hold more identifiers of one type than its limit",
            ),
            ConflictReason::MergeNotAllowed | ConflictReason::MergeSuggested => {
                ServiceError::MergeRefused("the identifier type may not merge profiles")
            }
            ConflictReason::ProfileCap => {
                ServiceError::MergeRefused("the merged profile would exceed a per-profile cap")
            }
            ConflictReason::Claimed => ServiceError::MergeRefused("a claim never merges profiles"),
        }
    }
}

/// Who asks for a change: named in the ledger and the audit log, and the
/// row of the trust table its signals are judged by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub` (or what stands in for it, like `cli:import`).
    pub subject: String,
    /// The token's `channel` claim: `None` for back-office and admin tokens.
    pub channel: Option<String>,
}

impl Caller {
    /// A caller bound to no channel (the back office, the command line).
    pub fn unbound(subject: impl Into<String>) -> Caller {
        Caller {
            subject: subject.into(),
            channel: None,
        }
    }
}

/// Everything the use cases share; one per process, behind an `Arc`.
pub struct Services {
    store: Arc<dyn Store>,
    committer: Committer,
    rules: Arc<SignalRules>,
    fields: views::FieldRules,
    purposes: Vec<String>,
    max_batch: usize,
    /// Live event streams of this process.
    hub: Arc<Hub>,
    /// Over a shared store: follows the change log for every instance's
    /// events (kept here so that it runs as long as the services).
    _tail: Option<Arc<Tail>>,
    /// The cache and event bus, when Redis is configured.
    redis: Option<Arc<RedisLink>>,
    /// `Idempotency-Key`s whose first request is being served here.
    keys_in_flight: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
    /// Decoded cards and owners in front of Redis.
    hot: Option<Arc<HotCards>>,
    /// The highest change-log position that is on disk: a cache fill notes
    /// it before reading the store (see `crate::cache`).
    durable: Arc<AtomicU64>,
    /// The highest position whose stale cache entries are gone and whose
    /// events were handed out: the change feed and stream replays stop here,
    /// so whoever reads a change and then the profile sees that change.
    published: Arc<AtomicU64>,
    heartbeat: Duration,
    max_stream: Duration,
    /// The erasure log (embedded store only; see [`erasures`]).
    erasures: Option<Arc<erasures::ErasureLog>>,
    /// A backup is being taken (one at a time).
    backing_up: Arc<std::sync::atomic::AtomicBool>,
    /// The embedded store (backups are of it alone).
    embedded: bool,
}

/// Sends what durable writes changed: through Redis when configured (which
/// then hands it to local streams), else straight to local streams.
struct Fanout {
    hub: Arc<dyn Publish>,
    redis: Option<Arc<RedisLink>>,
    hot: Option<Arc<HotCards>>,
    published: Arc<AtomicU64>,
}

impl AfterCommit for Fanout {
    fn committed(&self, committed: Committed, release: Box<dyn FnOnce() + Send>) {
        match &self.redis {
            Some(redis) => {
                // Once the markers are written, what the in-process layer
                // copied from Redis meanwhile goes too (see `hot`).
                let invalidate: Box<dyn FnOnce() + Send> = match &self.hot {
                    Some(hot) => {
                        let hot = hot.clone();
                        let customers = committed.customers.clone();
                        let identifiers = committed.identifiers.clone();
                        Box::new(move || hot.invalidate(&customers, &identifiers))
                    }
                    None => Box::new(|| {}),
                };
                redis.committed(committed, invalidate, release)
            }
            None => {
                self.published
                    .fetch_max(committed.last_seq, Ordering::SeqCst);
                let events: Vec<Arc<LiveEvent>> =
                    committed.events.into_iter().map(Arc::new).collect();
                self.hub.publish(&events);
                release();
            }
        }
    }
}

/// This store's own id, made on first use: cache keys carry it, so that
/// instances over different stores can share one Redis without reading each
/// other's entries (instances over one store share them).
/// Where the bookkeeping keeps the store's id.
pub(crate) const STORE_ID: &str = "store.id";

fn store_identity(store: &dyn Store) -> anyhow::Result<String> {
    const NAME: &str = STORE_ID;
    if let Some(id) = store.meta(NAME)? {
        return Ok(String::from_utf8_lossy(&id).into_owned());
    }
    // Made in the write, so that instances starting together over one
    // shared store agree: the one that commits second sees the first's id.
    let mut id = String::new();
    store.write(&mut |tx| match tx.meta(NAME) {
        Ok(Some(existing)) => {
            id = String::from_utf8_lossy(&existing).into_owned();
            false
        }
        Ok(None) => {
            id = ulid::Ulid::new().to_string().to_lowercase();
            tx.put_meta(NAME, id.clone().into_bytes());
            true
        }
        Err(_) => false,
    })?;
    store.flush()?;
    anyhow::ensure!(!id.is_empty(), "the store's id could not be read");
    Ok(id)
}

impl Services {
    /// Starts the committer (and, when configured, the Redis link) over `store`.
    pub fn new(settings: &Settings, store: Arc<dyn Store>) -> anyhow::Result<Services> {
        let hub = Arc::new(Hub::new(
            settings.events.buffer,
            settings.events.max_streams,
            settings.events.max_streams_per_subject,
        ));
        // Positions are never reused, even when retention emptied the log
        // or the store was restored from a backup.
        let last_change = store
            .last_change()?
            .max(journal::pruned_through(&*store)?)
            .max(journal::positions_floor(&*store)?);
        // Everything in the store was published by an earlier run: the feed
        // and stream replays serve it from the first request on.
        let published = Arc::new(AtomicU64::new(last_change));
        let durable = Arc::new(AtomicU64::new(0));
        let shared = store.shared();
        // Over a store other instances write, events come from its log.
        let tail = shared.then(|| {
            Tail::start(
                tail::Targets {
                    store: store.clone(),
                    hub: hub.clone(),
                    published: published.clone(),
                    durable: durable.clone(),
                },
                last_change,
                Duration::from_millis(settings.storage.postgres.poll_ms),
            )
        });
        let events: Arc<dyn Publish> = match &tail {
            Some(tail) => tail.clone(),
            None => hub.clone(),
        };
        let redis = match settings.redis.configured() {
            true => Some(RedisLink::start(
                &settings.redis,
                &store_identity(&*store)?,
                events.clone(),
                published.clone(),
            )?),
            false => None,
        };
        if let (Some(tail), Some(redis)) = (&tail, &redis) {
            tail.use_redis(redis);
        }
        // The in-process layer forgets what this instance writes; over a
        // shared store others write too, and it would serve their
        // overwritten copies: Redis, which every instance marks, is the
        // cache there.
        let hot = match settings.cache.local_bytes {
            bytes if bytes > 0 && !shared => Some(Arc::new(HotCards::new(
                bytes,
                Duration::from_secs(settings.redis.ttl_secs),
            ))),
            _ => None,
        };
        let indexed = journal::index_follow_ups_once(&*store)?;
        if indexed > 0 {
            tracing::info!(
                entries = indexed,
                "indexed the follow-ups of profiles stored before the follow-up index existed"
            );
        }
        let committer = Committer::start(
            store.clone(),
            CommitPolicy {
                max_group: settings.storage.max_group_commit,
                durable_writes: settings.storage.durable,
                retention: Duration::from_secs(settings.changes.retention_secs),
                deadline: Duration::from_millis(settings.storage.write_deadline_ms),
                key_retention: Duration::from_secs(settings.idempotency.retention_secs),
            },
            last_change,
            durable.clone(),
            Arc::new(Fanout {
                hub: events,
                redis: redis.clone(),
                hot: hot.clone(),
                published: published.clone(),
            }),
            hot.clone(),
        );
        let rules = settings.validate()?;
        // A shared store is backed up with the database's own tools, which
        // take erasures with them.
        let erasures = match shared {
            true => None,
            false => {
                let path = settings.storage.erasure_log_path();
                let log = erasures::ErasureLog::open(&path)
                    .with_context(|| format!("opening the erasure log {}", path.display()))?;
                Some(Arc::new(log))
            }
        };
        Ok(Services {
            store,
            committer,
            rules: Arc::new(rules),
            fields: views::FieldRules::new(settings),
            purposes: settings.consents.purposes.clone(),
            max_batch: settings.server.max_batch_signals,
            hub,
            _tail: tail,
            redis,
            keys_in_flight: Default::default(),
            hot,
            durable,
            published,
            heartbeat: Duration::from_secs(settings.events.heartbeat_secs),
            max_stream: Duration::from_secs(settings.events.max_stream_secs),
            erasures,
            backing_up: Arc::default(),
            embedded: !shared,
        })
    }

    /// The in-process layer, emptied first when the store replaced its
    /// database since it was last asked: it may hold what a reader saw of
    /// writes that never reached the disk (see `Store::generation`).
    fn hot_layer(&self) -> Option<&HotCards> {
        let hot = self.hot.as_deref()?;
        hot.follow(self.store.generation());
        Some(hot)
    }

    /// The highest change-log position on disk: what a reader may have seen.
    fn durable_position(&self) -> u64 {
        self.durable.load(Ordering::SeqCst)
    }

    /// The highest change-log position fully handed out (see `published`).
    fn published_position(&self) -> u64 {
        self.published.load(Ordering::SeqCst)
    }

    /// Redis's state for `/readyz`: `not_configured`, `ok` or `degraded`.
    pub fn redis_state(&self) -> &'static str {
        match &self.redis {
            None => "not_configured",
            Some(r) if r.healthy() => "ok",
            Some(_) => "degraded",
        }
    }

    /// Ends every live stream (the service is shutting down).
    pub fn close_streams(&self) {
        self.hub.close();
    }

    pub fn masking(&self, access: Access) -> Masking<'_> {
        Masking::new(access, &self.rules, &self.fields)
    }

    /// Whether a lookup by an identifier of `kind` spends the lookup budget
    /// when it misses: every type but the session ones (random values a
    /// browser, device or chat made up, which name no person).
    pub fn is_budgeted_lookup(&self, kind: &str) -> bool {
        !self.rules.identifiers.rule(kind).is_some_and(|r| r.session)
    }

    pub fn rules(&self) -> &SignalRules {
        &self.rules
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Refuses a batch holding an item the published schema calls malformed,
    /// naming the first such item; the rest of validation is per item.
    pub fn check_batch_shape(&self, signals: &[SignalInput]) -> Result<(), ServiceError> {
        signals.iter().enumerate().try_for_each(|(index, s)| {
            s.check_shape(&self.rules)
                .map_err(|source| ServiceError::InvalidBatchItem { index, source })
        })
    }

    /// Whether the store answers (for `/readyz`).
    pub fn store_ready(&self) -> Result<(), StoreError> {
        self.store.ping()
    }

    /// Waits until every acknowledged and queued write is on disk.
    pub async fn sync(&self) -> Result<(), ServiceError> {
        self.committer.sync().await
    }

    fn now() -> DateTime<Utc> {
        Utc::now()
    }
}

/// Runs a use case as one atomic write: its changes are applied only if it
/// succeeds, so a failure never leaves a partial write behind.
///
/// The write's changes go to the change log in the same atomic batch (see
/// [`journal`]).
fn atomically<T>(
    w: &Writer<'_>,
    mut f: impl FnMut(&mut dyn StoreTx) -> Result<T, ServiceError>,
) -> Result<T, ServiceError> {
    let mut outcome = None;
    let mut committed = None;
    w.store.write(&mut |tx| {
        let mut recording = Recording::new(&mut *tx);
        let result = f(&mut recording);
        let seen = recording.finish();
        let result = match (result, seen) {
            (Ok(value), Ok(seen)) => w
                .journal
                .entries(tx, seen, Utc::now())
                .map(|c| {
                    committed = Some(c);
                    value
                })
                .map_err(ServiceError::from),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e.into()),
        };
        let commit = result.is_ok();
        if commit {
            if let Some(key) = w.keyed.borrow().as_ref() {
                idempotency::mark(tx, key);
            }
        }
        outcome = Some(result);
        commit
    })?;
    let outcome = outcome.unwrap_or(Err(ServiceError::ShuttingDown));
    if outcome.is_ok() {
        if let Some(c) = committed {
            w.journal.keep(c);
        }
    }
    outcome
}
