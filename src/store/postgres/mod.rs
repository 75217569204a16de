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
//! - **Change-log positions** come from a counter record read and
//!   increased inside the transaction. Two writers that both append to the
//!   log conflict on it, so one waits or re-runs, and positions follow the
//!   commit order: a feed reader never sees position 9 appear after it read
//!   position 10. It serialises the writes that append changes; see
//!   `docs/scaling.md` for what that costs and how far it goes.
//! - **Calls from any thread.** The connections are driven by a small
//!   runtime of this store's own; a call waits for its answer on the
//!   calling thread, which may be a server worker.

pub use crate::config::PgOptions;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

use super::records::{
    change_seq, just_after, key, merge_keys, past_prefix, Changes, Engine, Entries, Entry, Staging,
    CHANGE, META,
};
use super::{StoreError, WriteFn};

/// The schema version this build reads and writes; `anamnesis migrate`
/// brings a database to it.
pub const SCHEMA_VERSION: i32 = 1;

/// The migrations, in order: version, what it does, its statements (`{s}`
/// stands for the configured schema).
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "records and positions",
    "CREATE TABLE {s}.records (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
     CREATE SEQUENCE {s}.positions;",
)];

/// Attempts of one write before a serialization failure is reported.
pub const MAX_ATTEMPTS: u32 = 10;

/// Rows fetched per page of a range read.
const PAGE: i64 = 256;

/// Where the next change-log position is kept (a `META` record).
pub(super) const NEXT_CHANGE: &[u8] = b"store.next_change";

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

/// One connection with its prepared statements.
struct Conn {
    client: Client,
    /// A transaction was begun and not yet ended: such a connection never
    /// goes back to the pool (a panic inside a use case, a failed ROLLBACK).
    in_transaction: std::cell::Cell<bool>,
    get: Statement,
    ascending: Statement,
    descending: Statement,
    keys: Statement,
    upsert: Statement,
    delete: Statement,
    next_position: Statement,
}

impl Conn {
    fn rows(&self, start: &[u8], end: &[u8], descending: bool) -> Result<Vec<Entry>, StoreError> {
        let statement = if descending {
            &self.descending
        } else {
            &self.ascending
        };
        let rows = wait(self.client.query(statement, &[&start, &end, &PAGE])).map_err(engine)?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

pub struct PgStore {
    /// Always `Some` until dropped (see the `Drop` impl).
    runtime: Option<tokio::runtime::Runtime>,
    options: PgOptions,
    idle: Mutex<Pool>,
    freed: Condvar,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Conn>,
    /// Connections open, idle or lent out.
    open: usize,
}

/// A connection lent out; back to the pool when dropped (unless broken).
struct Lent<'s> {
    store: &'s PgStore,
    conn: Option<Conn>,
}

impl std::ops::Deref for Lent<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("lent until dropped")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let mut pool = self.store.pool();
        match self.conn.take() {
            Some(conn)
                if !conn.client.is_closed()
                    && !conn.in_transaction.get()
                    && !std::thread::panicking() =>
            {
                pool.idle.push(conn)
            }
            _ => pool.open -= 1,
        }
        self.store.freed.notify_one();
    }
}

fn quoted(schema: &str) -> String {
    format!("\"{schema}\"")
}

impl PgStore {
    /// Connects and checks that the database holds this build's schema
    /// version (see [`migrate`]).
    pub fn open(options: PgOptions) -> Result<PgStore, StoreError> {
        let store = PgStore::connect(options)?;
        // Fails at start, not at the first request, when the database is
        // unreachable or the schema is not this build's.
        match store.schema_version()? {
            Some(SCHEMA_VERSION) if store.copy_unfinished()? => Err(StoreError::Engine(format!(
                "a copy into the schema `{}` is unfinished: run the same `anamnesis migrate-store` again to finish it",
                store.options.schema
            ))),
            Some(SCHEMA_VERSION) => Ok(store),
            Some(v) if v > SCHEMA_VERSION => Err(StoreError::Engine(format!(
                "the database schema `{}` is at version {v}, newer than this build ({SCHEMA_VERSION}): run a newer build",
                store.options.schema
            ))),
            found => Err(StoreError::Engine(format!(
                "the database schema `{}` is at version {}, this build needs {SCHEMA_VERSION}: run `anamnesis migrate`",
                store.options.schema,
                found.unwrap_or(0)
            ))),
        }
    }

    fn connect(options: PgOptions) -> Result<PgStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("anamnesis-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Engine(format!("starting the database runtime: {e}")))?;
        let store = PgStore {
            runtime: Some(runtime),
            options,
            idle: Mutex::default(),
            freed: Condvar::new(),
        };
        Ok(store)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the store")
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection: an idle one, a new one while fewer than `pool_size`
    /// are open, else the next one freed (waiting at most the statement
    /// timeout).
    fn lend(&self) -> Result<Lent<'_>, StoreError> {
        let mut pool = self.pool();
        loop {
            if let Some(conn) = pool.idle.pop() {
                if conn.client.is_closed() {
                    pool.open -= 1;
                    continue;
                }
                return Ok(Lent {
                    store: self,
                    conn: Some(conn),
                });
            }
            if pool.open < self.options.pool_size {
                pool.open += 1;
                drop(pool);
                return match self.new_conn() {
                    Ok(conn) => Ok(Lent {
                        store: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.pool().open -= 1;
                        Err(e)
                    }
                };
            }
            let (guard, waited) = self
                .freed
                .wait_timeout(pool, self.options.statement_timeout)
                .unwrap_or_else(|e| e.into_inner());
            pool = guard;
            if waited.timed_out() && pool.idle.is_empty() && pool.open >= self.options.pool_size {
                return Err(StoreError::Engine(format!(
                    "no database connection free within {} ms (storage.postgres.pool_size = {})",
                    self.options.statement_timeout.as_millis(),
                    self.options.pool_size
                )));
            }
        }
    }

    fn new_conn(&self) -> Result<Conn, StoreError> {
        let client = self.lend_raw()?;
        let s = quoted(&self.options.schema);
        // A transaction left idle (a stuck caller) is ended by the server too.
        let timeout = self.options.statement_timeout.as_millis();
        wait(client.batch_execute(&format!(
            "SET statement_timeout = {timeout}; \
             SET idle_in_transaction_session_timeout = {}",
            timeout * 4
        )))
        .map_err(engine)?;
        let prepare = |sql: String| wait(client.prepare(&sql)).map_err(engine);
        let t = format!("{s}.records");
        Ok(Conn {
            get: prepare(format!("SELECT v FROM {t} WHERE k = $1"))?,
            ascending: prepare(format!(
                "SELECT k, v FROM {t} WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3"
            ))?,
            descending: prepare(format!(
                "SELECT k, v FROM {t} WHERE k >= $1 AND k < $2 ORDER BY k DESC LIMIT $3"
            ))?,
            keys: prepare(format!(
                "SELECT k FROM {t} WHERE k >= $1 AND k < $2 ORDER BY k"
            ))?,
            upsert: prepare(format!(
                "INSERT INTO {t} (k, v) SELECT * FROM UNNEST($1::BYTEA[], $2::BYTEA[]) \
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v"
            ))?,
            delete: prepare(format!("DELETE FROM {t} WHERE k = ANY($1)"))?,
            next_position: prepare(format!("SELECT nextval('{s}.positions')"))?,
            client,
            in_transaction: std::cell::Cell::new(false),
        })
    }

    /// The schema version recorded in the database; `None` before the first
    /// migration.
    fn schema_version(&self) -> Result<Option<i32>, StoreError> {
        let conn = self.lend_raw()?;
        version_of(&conn, &self.options.schema)
    }

    /// A new connection without prepared statements (the tables may not
    /// exist yet), driven by the store's runtime.
    fn lend_raw(&self) -> Result<Client, StoreError> {
        let mut config: tokio_postgres::Config = self
            .options
            .url
            .parse()
            .map_err(|e| StoreError::Engine(format!("storage.postgres.url: {e}")))?;
        config.connect_timeout(self.options.connect_timeout);
        let (client, connection) =
            wait(self.rt().spawn(async move { config.connect(NoTls).await }))
                .map_err(|e| StoreError::Engine(format!("connecting: {e}")))?
                .map_err(engine)?;
        self.rt().spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "database connection closed");
            }
        });
        Ok(client)
    }

    /// Whether `migrate-store` began a copy into this schema and did not
    /// finish it (the service must not start on half a store).
    fn copy_unfinished(&self) -> Result<bool, StoreError> {
        Ok(Engine::get(self, &key(META, super::copy::CURSOR))?.is_some())
    }

    /// Writes `puts` and removes `removes` in one transaction (a copy's
    /// batch; no use case runs).
    pub fn put_entries(&self, puts: &[Entry], removes: &[Vec<u8>]) -> Result<(), StoreError> {
        let conn = self.lend()?;
        let keys: Vec<&[u8]> = puts.iter().map(|(k, _)| k.as_slice()).collect();
        let values: Vec<&[u8]> = puts.iter().map(|(_, v)| v.as_slice()).collect();
        let run = || -> Result<(), tokio_postgres::Error> {
            wait(conn.client.batch_execute("BEGIN"))?;
            if !removes.is_empty() {
                wait(conn.client.execute(&conn.delete, &[&removes]))?;
            }
            if !keys.is_empty() {
                wait(conn.client.execute(&conn.upsert, &[&keys, &values]))?;
            }
            wait(conn.client.batch_execute("COMMIT"))
        };
        run().map_err(|e| {
            let _ = wait(conn.client.batch_execute("ROLLBACK"));
            engine(e)
        })
    }

    /// Makes sure the positions handed out from now on are above
    /// `next_sequence` (interactions, ledger entries) and the change-log
    /// positions above `changes_through`: for a store copied from elsewhere.
    pub fn reserve_positions(
        &self,
        next_sequence: u64,
        changes_through: u64,
    ) -> Result<(), StoreError> {
        let conn = self.lend()?;
        let s = quoted(&self.options.schema);
        wait(conn.client.execute(
            &format!("SELECT setval('{s}.positions', GREATEST($1, (SELECT last_value FROM {s}.positions)))"),
            &[&(next_sequence.min(i64::MAX as u64) as i64)],
        ))
        .map_err(engine)?;
        let k = key(META, NEXT_CHANGE);
        let current = wait(conn.client.query_opt(&conn.get, &[&k]))
            .map_err(engine)?
            .map(|r| decode_position(&r.get::<_, Vec<u8>>(0)))
            .transpose()?
            .unwrap_or(1);
        if current <= changes_through {
            let v = (changes_through + 1).to_be_bytes().to_vec();
            wait(conn.client.execute(&conn.upsert, &[&vec![k], &vec![v]])).map_err(engine)?;
        }
        Ok(())
    }

    /// One attempt of a write: `Ok(true)` committed or discarded, `Err` a
    /// failure (the transaction is rolled back).
    fn attempt(&self, conn: &Conn, op: &mut WriteFn<'_>) -> Result<(), tokio_postgres::Error> {
        conn.in_transaction.set(true);
        wait(
            conn.client
                .batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE"),
        )?;
        let mut tx = PgTx {
            conn,
            overlay: BTreeMap::new(),
            failed: None,
        };
        let keep = op(&mut tx);
        let result = match tx.failed.take() {
            Some(e) => Err(e),
            None if !keep => wait(conn.client.batch_execute("ROLLBACK")),
            None => tx
                .send()
                .and_then(|()| wait(conn.client.batch_execute("COMMIT"))),
        };
        let ended = match &result {
            Ok(()) => true,
            // The transaction is aborted or gone; make the connection usable again.
            Err(_) => wait(conn.client.batch_execute("ROLLBACK")).is_ok(),
        };
        conn.in_transaction.set(!ended);
        result
    }
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

fn decode_position(v: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            key: String::from_utf8_lossy(NEXT_CHANGE).into_owned(),
            reason: "not a position".into(),
        })
}

fn version_of(client: &Client, schema: &str) -> Result<Option<i32>, StoreError> {
    let exists = wait(client.query_one(
        "SELECT count(*) FROM information_schema.tables \
         WHERE table_schema = $1 AND table_name = 'schema_version'",
        &[&schema],
    ))
    .map_err(engine)?
    .try_get::<_, i64>(0)
    .map_err(engine)?;
    if exists == 0 {
        return Ok(None);
    }
    let row = wait(client.query_one(
        &format!("SELECT max(version) FROM {}.schema_version", quoted(schema)),
        &[],
    ))
    .map_err(engine)?;
    row.try_get::<_, Option<i32>>(0).map_err(engine)
}

/// Brings the database to [`SCHEMA_VERSION`]: creates the schema and the
/// version table when missing, then runs each missing migration in a
/// transaction of its own. Safe to run from several instances at once (a
/// migration another one applied first is skipped). Returns the versions
/// applied.
pub fn migrate(options: PgOptions) -> Result<Vec<(i32, &'static str)>, StoreError> {
    let store = PgStore::connect(options)?;
    let client = store.lend_raw()?;
    let s = quoted(&store.options.schema);
    let mut applied = Vec::new();
    for &(version, what, sql) in MIGRATIONS {
        for attempt in 1..=MAX_ATTEMPTS {
            let result = (|| {
                wait(client.batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {s};
                     CREATE TABLE IF NOT EXISTS {s}.schema_version (
                         version INT4 PRIMARY KEY,
                         description TEXT NOT NULL,
                         applied_at TIMESTAMPTZ NOT NULL DEFAULT now());"
                )))?;
                wait(client.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE"))?;
                let done = wait(client.query_one(
                    &format!("SELECT count(*) FROM {s}.schema_version WHERE version = $1"),
                    &[&version],
                ))?
                .get::<_, i64>(0);
                if done > 0 {
                    wait(client.batch_execute("ROLLBACK"))?;
                    return Ok(false);
                }
                wait(client.batch_execute(&sql.replace("{s}", &s)))?;
                wait(client.execute(
                    &format!(
                        "INSERT INTO {s}.schema_version (version, description) VALUES ($1, $2)"
                    ),
                    &[&version, &what],
                ))?;
                wait(client.batch_execute("COMMIT"))?;
                Ok(true)
            })();
            match result {
                Ok(true) => {
                    applied.push((version, what));
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    let _ = wait(client.batch_execute("ROLLBACK"));
                    // Another instance migrating at the same moment: look again.
                    let raced = retryable(&e)
                        || e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                        || e.code() == Some(&SqlState::DUPLICATE_TABLE)
                        || e.code() == Some(&SqlState::DUPLICATE_OBJECT);
                    if !raced || attempt == MAX_ATTEMPTS {
                        return Err(engine(e));
                    }
                    std::thread::sleep(backoff(attempt));
                }
            }
        }
    }
    Ok(applied)
}

/// Jittered exponential back-off before attempt `attempt + 1`: 4 ms doubling
/// up to 256 ms (about 1 s over nine re-runs), times a random factor of 0.5 to 1.5 so that writers which
/// collided do not collide again in step.
fn backoff(attempt: u32) -> Duration {
    let base = 2u64 << attempt.min(7);
    let jitter = rand::random::<f64>() + 0.5;
    Duration::from_micros((base as f64 * 1000.0 * jitter) as u64)
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
        let conn = self.lend()?;
        let mut attempt = 1;
        loop {
            match self.attempt(&conn, op) {
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

    /// Committed writes are visible and durable already.
    fn apply_staged(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn make_durable(&self) -> Result<usize, StoreError> {
        Ok(0)
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

/// A range read a page at a time. Pages are separate statements, like
/// sled's iterators are not snapshots either.
struct Pages<'s> {
    store: &'s PgStore,
    start: Vec<u8>,
    end: Vec<u8>,
    descending: bool,
    buffered: VecDeque<Entry>,
    done: bool,
}

impl Iterator for Pages<'_> {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffered.is_empty() && !self.done {
            let page = self
                .store
                .lend()
                .and_then(|conn| conn.rows(&self.start, &self.end, self.descending));
            match page {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(rows) => {
                    self.done = (rows.len() as i64) < PAGE;
                    if let Some((last, _)) = rows.last() {
                        // The next page continues past the last key read.
                        if self.descending {
                            self.end = last.clone();
                        } else {
                            self.start = just_after(last.clone());
                        }
                    }
                    self.buffered.extend(rows);
                }
            }
        }
        self.buffered.pop_front().map(Ok)
    }
}

/// A write in progress: reads go through the transaction, changes are kept
/// here and sent just before COMMIT.
struct PgTx<'c> {
    conn: &'c Conn,
    /// `None` marks a removal.
    overlay: Changes,
    /// The first database error; the write then fails (or is re-run) whatever
    /// the use case returns.
    failed: Option<tokio_postgres::Error>,
}

impl PgTx<'_> {
    fn note<T>(&mut self, r: Result<T, tokio_postgres::Error>) -> Result<T, StoreError> {
        r.map_err(|e| {
            let reported = describe(&e);
            // The first one decides whether the write is re-run.
            self.failed.get_or_insert(e);
            reported
        })
    }

    /// The changes, in two statements.
    fn send(&mut self) -> Result<(), tokio_postgres::Error> {
        let mut put_keys = Vec::new();
        let mut put_values = Vec::new();
        let mut removed = Vec::new();
        for (k, v) in std::mem::take(&mut self.overlay) {
            match v {
                Some(v) => {
                    put_keys.push(k);
                    put_values.push(v);
                }
                None => removed.push(k),
            }
        }
        if !removed.is_empty() {
            wait(self.conn.client.execute(&self.conn.delete, &[&removed]))?;
        }
        if !put_keys.is_empty() {
            wait(
                self.conn
                    .client
                    .execute(&self.conn.upsert, &[&put_keys, &put_values]),
            )?;
        }
        Ok(())
    }
}

impl Staging for PgTx<'_> {
    fn get(&mut self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.overlay.get(k) {
            return Ok(v.clone());
        }
        let row = wait(self.conn.client.query_opt(&self.conn.get, &[&k]));
        Ok(self.note(row)?.map(|r| r.get(0)))
    }

    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.overlay.insert(k, Some(v));
    }

    fn remove(&mut self, k: Vec<u8>) {
        self.overlay.insert(k, None);
    }

    fn keys_with_prefix(&mut self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let end = past_prefix(prefix);
        let rows = wait(self.conn.client.query(&self.conn.keys, &[&prefix, &end]));
        let stored: Vec<Vec<u8>> = self.note(rows)?.into_iter().map(|r| r.get(0)).collect();
        merge_keys(stored.into_iter().map(Ok), &[&self.overlay], prefix)
    }

    fn next_sequence(&mut self) -> Result<u64, StoreError> {
        let row = wait(self.conn.client.query_one(&self.conn.next_position, &[]));
        Ok(self.note(row)?.get::<_, i64>(0) as u64)
    }

    fn allocate_change(&mut self) -> Result<Option<u64>, StoreError> {
        let counter = key(META, NEXT_CHANGE);
        let next = match self.get(&counter)? {
            Some(v) => decode_position(&v)?,
            None => {
                // The first change of this store: after any already in the log.
                let start = key(CHANGE, &[]);
                let end = key(CHANGE + 1, &[]);
                let row = wait(
                    self.conn
                        .client
                        .query(&self.conn.descending, &[&start, &end, &1i64]),
                );
                match self.note(row)?.first() {
                    Some(r) => change_seq(&r.get::<_, Vec<u8>>(0))? + 1,
                    None => 1,
                }
            }
        };
        self.put(counter, (next + 1).to_be_bytes().to_vec());
        Ok(Some(next))
    }
}
