//! Group commit: one thread applies every write and flushes once per batch of
//! queued writes, then acknowledges them all.
//!
//! This is what makes a 2xx durable without a flush per request (the flush is
//! the expensive part), and, because there is one writer, what makes identity
//! resolution free of races: two signals about the same person are resolved one
//! after the other, never side by side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::hot::HotCards;
use super::idempotency::{self, Keyed, KEYED};
use super::journal::{prune, Journal};
use super::ServiceError;
use crate::domain::Committed;
use crate::store::{Store, StoreError, PROVISIONAL};

/// A write waiting for the committer: run, perhaps again (when its group
/// is run again after a conflict), then answered once the group's fate is
/// known.
trait Job: Send {
    fn apply(&mut self, writer: &Writer<'_>);
    /// `Err(())`: the group did not become durable.
    fn finish(self: Box<Self>, flushed: Result<(), ()>);
}

type Queued = Box<dyn Job>;

/// A write as [`Committer::run`] queues it.
struct Pending<T, F> {
    job: F,
    reply: oneshot::Sender<Result<T, ServiceError>>,
    deadline: Instant,
    keyed: Option<Keyed>,
    /// What the last run returned (`None`: not run yet).
    result: Option<Result<T, ServiceError>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send + 'static,
    F: FnMut(&Writer<'_>) -> Result<T, ServiceError> + Send + 'static,
{
    fn apply(&mut self, writer: &Writer<'_>) {
        if matches!(self.result, Some(Err(ServiceError::Withdrawn))) {
            return;
        }
        if self.result.is_none() && Instant::now() > self.deadline {
            // Not started in time: withdrawn, nothing of it applied, so
            // the caller may retry without doubt about its fate.
            WITHDRAWN.with(|w| w.set(w.get() + 1));
            self.result = Some(Err(ServiceError::Withdrawn));
            return;
        }
        let job = &mut self.job;
        self.result = Some(match &self.keyed {
            None => job(writer),
            // A key already used: the job does nothing, and the caller
            // hears what the key's record says.
            Some(key) if key.continuing => {
                writer.keyed.replace(Some(key.clone()));
                let result = job(writer);
                writer.keyed.replace(None);
                result
            }
            Some(key) => match idempotency::recorded(writer, key) {
                Ok(Some(record)) => Err(ServiceError::KeyUsed(record)),
                Err(e) => Err(e),
                Ok(None) => {
                    writer.keyed.replace(Some(key.clone()));
                    let result = job(writer);
                    writer.keyed.replace(None);
                    result
                }
            },
        });
    }

    fn finish(self: Box<Self>, flushed: Result<(), ()>) {
        let result = match (flushed, self.result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(ServiceError::ShuttingDown),
            (Err(()), Some(Err(ServiceError::Withdrawn))) => Err(ServiceError::Withdrawn),
            (Err(()), _) => Err(ServiceError::NotDurable),
        };
        // The caller may have gone away (client disconnected); the write stands.
        let _ = self.reply.send(result);
    }
}

/// What a job on the committer thread writes with: the store, and the
/// journal that turns each write into change-log entries.
pub struct Writer<'a> {
    pub store: &'a dyn Store,
    pub journal: &'a Journal,
    /// The `Idempotency-Key` of the job running now, if it carries one:
    /// every write of the job records it (see [`super::idempotency`]).
    pub keyed: std::cell::RefCell<Option<Keyed>>,
}

/// What happens once a group of writes is durable, before the writers hear
/// so: events are sent and caches are told what went stale. `release`
/// acknowledges the writers; it may be called later, from another thread
/// (after a cache was told), but must be called.
pub trait AfterCommit: Send + Sync + 'static {
    fn committed(&self, committed: Committed, release: Box<dyn FnOnce() + Send>);
}

/// Jobs waiting beyond this make callers wait for a slot (back-pressure).
const QUEUE_DEPTH: usize = 16 * 1024;

/// A group stops taking more writes once it has run this long: the writes
/// already applied are acknowledged only after its flush, so this bounds
/// how long a busy queue can keep them waiting for their answer.
const MAX_GROUP_TIME: Duration = Duration::from_millis(100);

/// One write that held the committer at least this long is logged.
const SLOW_WRITE: Duration = Duration::from_millis(500);

/// Groups that failed in a row: the first is logged as an error, the rest
/// at most once a minute (a full disk fails every group until it heals),
/// and the first success after them once.
#[derive(Default)]
struct Failing {
    since: Option<Instant>,
    groups: u64,
    writes: u64,
    logged: Option<Instant>,
}

impl Failing {
    fn failed(&mut self, e: &StoreError, writes: usize) {
        metrics::counter!("anamnesis_groups_failed_total").increment(1);
        self.groups += 1;
        self.writes += writes as u64;
        let now = Instant::now();
        if self.since.is_none() {
            self.since = Some(now);
            self.logged = Some(now);
            tracing::error!(error = %e, "store flush failed; writes answered 503, not acknowledged");
        } else if self
            .logged
            .is_some_and(|at| at.elapsed() >= Duration::from_secs(60))
        {
            self.logged = Some(now);
            tracing::error!(
                error = %e,
                groups = self.groups,
                writes = self.writes,
                "store flushes still fail; writes answered 503, not acknowledged"
            );
        }
    }

    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                failed_groups = self.groups,
                failed_writes = self.writes,
                after_ms = since.elapsed().as_millis() as u64,
                "store flushes succeed again"
            );
        }
        *self = Failing::default();
    }
}

#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Queued>,
    deadline: Duration,
}

/// How the committer groups, flushes and prunes.
pub struct CommitPolicy {
    /// Most writes applied between two flushes.
    pub max_group: usize,
    /// `false`: acknowledge without flushing (measurements only).
    pub durable_writes: bool,
    /// How long the change log keeps a change.
    pub retention: Duration,
    /// A write not started this long after it was submitted is withdrawn,
    /// unapplied, and answered [`ServiceError::Withdrawn`].
    pub deadline: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub key_retention: Duration,
}

thread_local! {
    /// Writes the committer thread withdrew in the current group.
    static WITHDRAWN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Runs one job, and notes (histogram, and a log line when slow) how long it
/// held the committer.
fn timed(mut job: Queued, writer: &Writer<'_>) -> Queued {
    let started = Instant::now();
    job.apply(writer);
    let took = started.elapsed();
    metrics::histogram!("anamnesis_write_apply_seconds").record(took.as_secs_f64());
    if took >= SLOW_WRITE {
        tracing::warn!(
            elapsed_ms = took.as_millis() as u64,
            "one write held the committer for a long time"
        );
    }
    job
}

/// Runs of a group that keeps conflicting with other writers before its
/// writes are answered 503.
const MAX_RUNS: u32 = 10;

/// Jittered exponential back-off before run `run + 1` of a group that
/// conflicted: 2 ms doubling up to 128 ms, times 0.5 to 1.5, so that
/// instances which collided do not collide again in step.
fn backoff(run: u32) -> Duration {
    let base = 1u64 << run.min(7);
    Duration::from_micros((base as f64 * 1000.0 * (rand::random::<f64>() + 0.5)) as u64)
}

/// Ends a group of writes: makes it durable and answers its writers.
struct Settle<'a> {
    store: &'a dyn Store,
    writer: &'a Writer<'a>,
    durable_writes: bool,
    generation: u64,
    hot: Option<&'a HotCards>,
    durable: &'a AtomicU64,
    after: &'a dyn AfterCommit,
}

impl Settle<'_> {
    /// Flushes the group; once durable, its events are sent and its
    /// writers answered. On failure the group comes back, unanswered.
    fn flush(&self, group: Vec<Queued>) -> Result<(), (StoreError, Vec<Queued>)> {
        let store = self.store;
        let started = Instant::now();
        let mut flushed = if self.durable_writes {
            store.flush()
        } else {
            store.apply().map(|()| 0)
        };
        if flushed.is_ok() && store.generation() != self.generation {
            // The store failed and was reopened while this group ran: what
            // it staged before the failure is gone.
            flushed = Err(StoreError::Engine(
                "the store was reopened while the group was written".into(),
            ));
        }
        metrics::histogram!("anamnesis_store_flush_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("anamnesis_group_commit_size").record(group.len() as f64);
        if let Err(e) = flushed {
            return Err((e, group));
        }
        let mut committed = self.writer.journal.take();
        renumber(&mut committed, &store.positions());
        // Readers now see these writes: what the in-process layer holds of
        // what they changed goes.
        if let Some(hot) = self.hot {
            hot.invalidate(&committed.customers, &committed.identifiers);
        }
        self.durable.fetch_max(committed.last_seq, Ordering::SeqCst);
        self.after.committed(
            committed,
            Box::new(move || {
                for job in group {
                    job.finish(Ok(()));
                }
            }),
        );
        Ok(())
    }

    /// Runs a group that conflicted with another writer again, halved each
    /// time it conflicts (so that one contended write does not keep the
    /// others back), until it commits or has run [`MAX_RUNS`] times.
    fn again(&self, group: Vec<Queued>, failing: &mut Failing) {
        let mut chunks = std::collections::VecDeque::from([(group, 1u32)]);
        while let Some((chunk, run)) = chunks.pop_front() {
            metrics::counter!("anamnesis_store_retries_total").increment(1);
            std::thread::sleep(backoff(run));
            self.store.begin_group();
            let chunk: Vec<Queued> = chunk
                .into_iter()
                .map(|job| timed(job, self.writer))
                .collect();
            match self.flush(chunk) {
                Ok(()) => failing.recovered(),
                Err((StoreError::Conflict(_), mut chunk)) if run < MAX_RUNS => {
                    self.writer.journal.take();
                    let second = chunk.split_off(chunk.len() / 2);
                    if !second.is_empty() {
                        chunks.push_front((second, run + 1));
                    }
                    if !chunk.is_empty() {
                        chunks.push_front((chunk, run + 1));
                    }
                }
                Err((e, chunk)) => {
                    self.writer.journal.take();
                    failing.failed(&e, chunk.len());
                    for job in chunk {
                        job.finish(Err(()));
                    }
                }
            }
        }
    }
}

/// Gives the events of a group the real positions of the provisional ones
/// they were written with (see [`PROVISIONAL`]).
fn renumber(committed: &mut Committed, positions: &[u64]) {
    let real = |seq: u64| match seq.checked_sub(PROVISIONAL) {
        Some(i) => positions.get(i as usize).copied().unwrap_or(seq),
        None => seq,
    };
    for event in &mut committed.events {
        event.change.seq = real(event.change.seq);
    }
    committed.last_seq = committed
        .events
        .iter()
        .map(|e| e.change.seq)
        .chain(positions.iter().copied())
        .chain([real(committed.last_seq)])
        .max()
        .unwrap_or(0);
}

impl Committer {
    /// Starts the committer thread. `last_change` is the highest change-log
    /// position in the store; `durable` is kept at the highest position that
    /// is on disk.
    pub fn start(
        store: Arc<dyn Store>,
        policy: CommitPolicy,
        last_change: u64,
        durable: Arc<AtomicU64>,
        after: Arc<dyn AfterCommit>,
        hot: Option<Arc<HotCards>>,
    ) -> Committer {
        let CommitPolicy {
            max_group,
            durable_writes,
            retention,
            deadline,
            key_retention,
        } = policy;
        // Old changes are removed between groups, at most this often.
        let prune_every = (retention / 2).min(Duration::from_secs(60));
        let (tx, mut rx) = mpsc::channel::<Queued>(QUEUE_DEPTH);
        durable.fetch_max(last_change, Ordering::SeqCst);
        std::thread::Builder::new()
            .name("anamnesis-committer".into())
            .spawn(move || {
                let journal = Journal::after(last_change);
                let writer = Writer {
                    store: &*store,
                    journal: &journal,
                    keyed: std::cell::RefCell::new(None),
                };
                let mut completions: Vec<Queued> = Vec::with_capacity(max_group);
                let mut pruned_at = Instant::now();
                let mut generation = store.generation();
                let mut failing = Failing::default();
                while let Some(first) = rx.blocking_recv() {
                    let now = store.generation();
                    if now != generation {
                        // The store replaced its database after a failure:
                        // what failed groups left in the journal is sorted
                        // into what reached the disk and what is gone.
                        match journal.after_reopen(&*store) {
                            Ok(dropped) => {
                                generation = now;
                                if dropped > 0 {
                                    tracing::warn!(
                                        changes = dropped,
                                        "writes answered 503 before the store was reopened did not reach the disk; their events are not sent"
                                    );
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "sorting the changes of failed writes waits for the store")
                            }
                        }
                    }
                    if pruned_at.elapsed() >= prune_every {
                        pruned_at = Instant::now();
                        match prune(&*store, retention, chrono::Utc::now(), 10_000) {
                            Ok(0) => {}
                            Ok(n) => {
                                metrics::counter!("anamnesis_changes_pruned_total")
                                    .increment(n as u64);
                            }
                            Err(e) => tracing::warn!(error = %e, "pruning old changes failed"),
                        }
                        let cutoff = chrono::Utc::now()
                            .timestamp_millis()
                            .saturating_sub(key_retention.as_millis() as i64);
                        match idempotency::prune(&writer, cutoff.max(0) as u64, 10_000) {
                            Ok(0) => {}
                            Ok(n) => {
                                metrics::counter!("anamnesis_idempotency_keys_pruned_total")
                                    .increment(n as u64);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "pruning old idempotency keys failed")
                            }
                        }
                    }
                    let group_started = Instant::now();
                    let regroup = store.begin_group();
                    completions.push(timed(first, &writer));
                    while completions.len() < max_group && group_started.elapsed() < MAX_GROUP_TIME
                    {
                        match rx.try_recv() {
                            Ok(job) => completions.push(timed(job, &writer)),
                            Err(_) => break,
                        }
                    }
                    let withdrawn = WITHDRAWN.with(|w| w.replace(0));
                    if withdrawn > 0 {
                        metrics::counter!("anamnesis_writes_withdrawn_total")
                            .increment(withdrawn);
                        tracing::warn!(
                            writes = withdrawn,
                            "withdrew writes that waited for the committer past their deadline (storage.write_deadline_ms); each was answered 503 store_busy, unapplied"
                        );
                    }
                    let group = std::mem::replace(&mut completions, Vec::with_capacity(max_group));
                    let settle = Settle {
                        store: &*store,
                        writer: &writer,
                        durable_writes,
                        generation,
                        hot: hot.as_deref(),
                        durable: &durable,
                        after: &*after,
                    };
                    match settle.flush(group) {
                        Ok(()) => failing.recovered(),
                        Err((e, group)) if regroup && matches!(e, StoreError::Conflict(_)) => {
                            // Nothing of the group happened: it runs again,
                            // in smaller groups while it conflicts.
                            journal.take();
                            settle.again(group, &mut failing);
                        }
                        Err((e, group)) => {
                            if regroup {
                                // The group is gone, and what it changed with it.
                                journal.take();
                            }
                            // Otherwise what these writes changed stays in
                            // the journal: sent with the next group that
                            // reaches the disk, less what a reopen of the
                            // store shows never reached it (see
                            // `Journal::after_reopen`).
                            failing.failed(&e, group.len());
                            for job in group {
                                job.finish(Err(()));
                            }
                        }
                    }
                }
                if let Err(e) = store.flush() {
                    tracing::error!(error = %e, "final store flush failed");
                }
            })
            .expect("the committer thread starts");
        Committer { tx, deadline }
    }

    /// Runs `job` on the committer thread and answers once its changes are
    /// durable. It may run more than once: when its group conflicted with
    /// another writer of a shared store, nothing of it happened, and the
    /// group runs again.
    pub async fn run<T, F>(&self, job: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnMut(&Writer<'_>) -> Result<T, ServiceError> + Send + 'static,
    {
        let deadline = Instant::now() + self.deadline;
        let keyed = KEYED.try_with(Clone::clone).ok();
        let (reply, answer) = oneshot::channel();
        let wrapped: Queued = Box::new(Pending {
            job,
            reply,
            deadline,
            keyed,
            result: None,
        });
        match tokio::time::timeout_at(deadline.into(), self.tx.send(wrapped)).await {
            Ok(sent) => sent.map_err(|_| ServiceError::ShuttingDown)?,
            Err(_) => {
                metrics::counter!("anamnesis_writes_withdrawn_total").increment(1);
                return Err(ServiceError::Withdrawn);
            }
        }
        answer.await.map_err(|_| ServiceError::ShuttingDown)?
    }

    /// Waits until every write queued before this call is durable.
    pub async fn sync(&self) -> Result<(), ServiceError> {
        self.run(|_| Ok(())).await
    }
}
