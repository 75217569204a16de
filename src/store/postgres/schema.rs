//! The schema this build reads and writes: its version, the migrations that
//! bring a database to it (`anamnesis migrate`), and the check at open that
//! the database holds it.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::{backoff, engine, quoted, retryable, wait, PgOptions, PgStore, MAX_ATTEMPTS};
use crate::store::records::{change_seq, key, Engine, CHANGE, META};
use crate::store::StoreError;

/// The schema version this build reads and writes; `anamnesis migrate`
/// brings a database to it.
pub const SCHEMA_VERSION: i32 = 2;

/// A migration's step written in code, run in its transaction after its
/// statements.
type Step = fn(&Client, &str) -> Result<(), tokio_postgres::Error>;

/// The migrations, in order: version, what it does, its statements (`{s}`
/// stands for the configured schema), and a step in code if it has one.
const MIGRATIONS: &[(i32, &str, &str, Option<Step>)] = &[
    (
        1,
        "records and positions",
        "CREATE TABLE {s}.records (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
         CREATE SEQUENCE {s}.positions;",
        None,
    ),
    (
        2,
        "change-log positions from a sequence",
        // CACHE 1: every session takes the next value of one counter, so
        // positions taken later are higher, whichever instance took them.
        "CREATE SEQUENCE {s}.changes CACHE 1;",
        Some(positions_from_counter),
    ),
];

/// Version 1 kept the next change-log position in a record that every
/// write updated; the sequence goes on from it (or from the highest
/// position in the log), and the record goes.
fn positions_from_counter(client: &Client, s: &str) -> Result<(), tokio_postgres::Error> {
    let counter = key(META, b"store.next_change");
    let next = client_get(client, s, &counter)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(1, u64::from_be_bytes);
    let last = wait(client.query_opt(
        &format!("SELECT k FROM {s}.records WHERE k >= $1 AND k < $2 ORDER BY k DESC LIMIT 1"),
        &[&key(CHANGE, &[]), &key(CHANGE + 1, &[])],
    ))?
    .and_then(|r| change_seq(&r.get::<_, Vec<u8>>(0)).ok())
    .unwrap_or(0);
    let through = (next.saturating_sub(1)).max(last);
    if through > 0 {
        wait(client.execute(
            &format!("SELECT setval('{s}.changes', $1)"),
            &[&(through.min(i64::MAX as u64) as i64)],
        ))?;
    }
    wait(client.execute(
        &format!("DELETE FROM {s}.records WHERE k = $1"),
        &[&counter],
    ))?;
    Ok(())
}

fn client_get(
    client: &Client,
    s: &str,
    k: &[u8],
) -> Result<Option<Vec<u8>>, tokio_postgres::Error> {
    Ok(
        wait(client.query_opt(&format!("SELECT v FROM {s}.records WHERE k = $1"), &[&k]))?
            .map(|r| r.get(0)),
    )
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

    /// The schema version recorded in the database; `None` before the first
    /// migration.
    fn schema_version(&self) -> Result<Option<i32>, StoreError> {
        let conn = self.lend_raw()?;
        version_of(&conn, &self.options.schema)
    }

    /// Whether `migrate-store` began a copy into this schema and did not
    /// finish it (the service must not start on half a store).
    fn copy_unfinished(&self) -> Result<bool, StoreError> {
        Ok(Engine::get(self, &key(META, crate::store::copy::CURSOR))?.is_some())
    }
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
    for &(version, what, sql, step) in MIGRATIONS {
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
                if let Some(step) = step {
                    step(&client, &s)?;
                }
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
