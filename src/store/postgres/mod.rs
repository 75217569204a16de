//! The shared store: the records of [`records`](super::records), one row per
//! key, in a table of a database that speaks the PostgreSQL protocol.
//!
//! Written for PostgreSQL and for the distributed engines that speak its
//! protocol with serializable transactions (CockroachDB, YugabyteDB): only
//! plain tables, a primary-key index, a sequence, `UNNEST` and `ON CONFLICT`;
//! no advisory locks, no `LISTEN`, no server-side functions.
//!
//! - **Writes** run in one `SERIALIZABLE` transaction each. The use case reads
//!   through the transaction and its own changes (kept here, sent at the
//!   end in two statements). A serialization failure or deadlock re-runs
//!   the use case from the start, up to [`MAX_ATTEMPTS`] times with
//!   jittered exponential back-off; use cases have no effect outside their
//!   transaction, so a re-run is safe. The write returns once COMMIT
//!   returned: acknowledged means committed.
//! - **Groups.** The committer makes each group of writes one transaction
//!   (see [`Store::begin_group`](crate::store::Store::begin_group)): one
//!   COMMIT, one log sync, for the whole group. A conflict anywhere in it
//!   fails the group with [`StoreError::Conflict`], nothing of it
//!   committed, and the committer runs it again.
//! - **Change-log positions** are taken from a sequence just before COMMIT
//!   (see [`tx`]), not from a record inside the transaction: no record is
//!   updated by every write. Positions can then become visible out of
//!   order for a moment (9 commits just after 10); readers of the log wait
//!   a bounded time for such a gap (see `service::tail` and
//!   `docs/scaling.md`).
//! - **Calls from any thread.** The connections are driven by a small
//!   runtime of this store's own; a call waits for its answer on the
//!   calling thread, which may be a server worker.
//!
//! # Layout
//!
//! - [`schema`]: the schema version, the migrations, and the check at open.
//! - [`pool`]: the connections, the runtime that drives them and the pool
//!   that lends them.
//! - [`read`]: range reads, a page at a time.
//! - [`tx`]: a write's transaction, and its attempts.
//! - [`bulk`]: writes no use case makes, for `anamnesis migrate-store`.

mod bulk;
mod pool;
mod read;
mod schema;
mod tx;

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tokio_postgres::error::SqlState;

use self::pool::Pool;
use self::read::Pages;
pub use self::schema::{migrate, SCHEMA_VERSION};
use self::tx::Open;
use super::records::{Engine, Entries};
use super::{StoreError, WriteFn};
pub use crate::config::PgOptions;

/// Attempts of one write before a serialization failure is reported.
pub const MAX_ATTEMPTS: u32 = 10;

fn engine(e: tokio_postgres::Error) -> StoreError {
    describe(&e)
}

/// The server's message and code, not just "db error".
fn describe(e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            StoreError::Engine(format!("database: {} ({})", db.message(), db.code().code()))
        }
        None => StoreError::Engine(format!("database: {e}")),
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// Runs a future to completion on the calling thread. The connections are
/// driven by the store's runtime, so the calling thread only waits.
fn wait<F: std::future::Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

pub struct PgStore {
    /// Always `Some` until dropped (see the `Drop` impl).
    runtime: Option<tokio::runtime::Runtime>,
    options: PgOptions,
    idle: Mutex<Pool>,
    freed: Condvar,
    /// The committer's group of writes (see [`Store::begin_group`]).
    ///
    /// [`Store::begin_group`]: crate::store::Store::begin_group
    group: Mutex<Group>,
}

#[derive(Default)]
struct Group {
    /// Writes join a group until the next flush.
    grouping: bool,
    /// Its transaction, once the first write of the group opened it.
    open: Option<Open>,
    /// A failure before the transaction opened (no connection).
    failed: Option<StoreError>,
    /// The last committed group's positions.
    positions: Vec<u64>,
}

fn quoted(schema: &str) -> String {
    format!("\"{schema}\"")
}

impl Drop for PgStore {
    /// The store may be dropped on a server thread, where a runtime must
    /// not block to shut down: its connections are left to close.
    fn drop(&mut self) {
        self.pool().idle.clear();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Jittered exponential back-off before attempt `attempt + 1`: 4 ms doubling
/// up to 256 ms (about 1 s over nine re-runs), times a random factor of 0.5 to 1.5 so that writers which
/// collided do not collide again in step.
fn backoff(attempt: u32) -> Duration {
    let base = 2u64 << attempt.min(7);
    let jitter = rand::random::<f64>() + 0.5;
    Duration::from_micros((base as f64 * 1000.0 * jitter) as u64)
}

impl PgStore {
    fn group(&self) -> std::sync::MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write of the group: in its transaction, opened by the first.
    fn in_group(&self, group: &mut Group, op: &mut WriteFn<'_>) -> Result<(), StoreError> {
        if let Some(e) = &group.failed {
            return Err(e.clone());
        }
        if group.open.is_none() {
            let conn = match self.lend() {
                Ok(lent) => lent.keep(),
                Err(e) => {
                    group.failed = Some(e.clone());
                    return Err(e);
                }
            };
            match Open::begin(conn) {
                Ok(open) => group.open = Some(open),
                Err(failed) => {
                    let (conn, e) = *failed;
                    self.give_back(Some(conn));
                    let e = classify(&e);
                    group.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        let open = group.open.as_mut().expect("opened above");
        open.run(op).map(|_| ()).map_err(|e| match &open.failed {
            Some(db) => classify(db),
            None => e,
        })
    }

    /// Ends the group: commits its transaction; the bytes are not counted.
    fn commit_group(&self) -> Result<usize, StoreError> {
        let mut group = self.group();
        group.grouping = false;
        group.positions.clear();
        if let Some(e) = group.failed.take() {
            if let Some(open) = group.open.take() {
                let conn = open.abandon();
                self.give_back(conn);
            }
            return Err(e);
        }
        let Some(mut open) = group.open.take() else {
            return Ok(0);
        };
        match open.commit() {
            Ok(positions) => {
                group.positions = positions;
                self.give_back(Some(open.conn));
                Ok(0)
            }
            Err(e) => {
                let reported = classify(&e);
                let conn = open.abandon();
                self.give_back(conn);
                Err(reported)
            }
        }
    }
}

/// A conflict with another writer (the group may be run again), or another
/// failure.
fn classify(e: &tokio_postgres::Error) -> StoreError {
    match describe(e) {
        StoreError::Engine(text) if retryable(e) => StoreError::Conflict(text),
        other => other,
    }
}

impl Engine for PgStore {
    const SHARED: bool = true;

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = self.lend()?;
        let row = wait(conn.client.query_opt(&conn.get, &[&k])).map_err(engine)?;
        Ok(row.map(|r| r.get(0)))
    }

    fn range(&self, start: &[u8], end: &[u8], descending: bool) -> Entries<'_> {
        Box::new(Pages {
            store: self,
            start: start.to_vec(),
            end: end.to_vec(),
            descending,
            buffered: VecDeque::new(),
            done: start >= end,
        })
    }

    fn run_write(&self, op: &mut WriteFn<'_>) -> Result<(), StoreError> {
        let mut group = self.group();
        if group.grouping {
            return self.in_group(&mut group, op);
        }
        drop(group);
        let mut attempt = 1;
        loop {
            let (conn, result) = self.attempt(self.lend()?.keep(), op);
            self.give_back(conn);
            match result {
                Ok(()) => return Ok(()),
                Err(e) if retryable(&e) && attempt < MAX_ATTEMPTS => {
                    metrics::counter!("anamnesis_store_retries_total").increment(1);
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
                Err(e) => return Err(engine(e)),
            }
        }
    }

    /// Commits the group, if one is open; other writes are committed
    /// already.
    fn apply_staged(&self) -> Result<(), StoreError> {
        self.commit_group().map(|_| ())
    }

    fn make_durable(&self) -> Result<usize, StoreError> {
        self.commit_group()
    }

    fn group(&self) -> bool {
        let mut group = self.group();
        group.grouping = true;
        true
    }

    fn group_positions(&self) -> Vec<u64> {
        self.group().positions.clone()
    }

    fn check(&self) -> Result<(), StoreError> {
        let conn = self.lend()?;
        wait(conn.client.simple_query("SELECT 1")).map_err(engine)?;
        Ok(())
    }

    /// The table and its index, as the database counts them.
    fn disk_bytes(&self) -> Result<u64, StoreError> {
        let conn = self.lend()?;
        let table = format!("{}.records", quoted(&self.options.schema));
        let row = wait(conn.client.query_one(
            "SELECT pg_total_relation_size($1::TEXT::REGCLASS)",
            &[&table],
        ))
        .map_err(engine)?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }
}
