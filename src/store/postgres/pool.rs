//! The connections: each with its prepared statements, driven by the
//! store's own runtime, lent out by a pool of at most `pool_size`.

use std::sync::{Condvar, Mutex};

use tokio_postgres::{Client, NoTls, Statement};

use super::{engine, quoted, wait, PgOptions, PgStore};
use crate::store::StoreError;

/// One connection with its prepared statements.
pub(super) struct Conn {
    pub(super) client: Client,
    /// A transaction was begun and not yet ended: such a connection never
    /// goes back to the pool (a panic inside a use case, a failed ROLLBACK).
    pub(super) in_transaction: std::cell::Cell<bool>,
    pub(super) get: Statement,
    pub(super) ascending: Statement,
    pub(super) descending: Statement,
    pub(super) keys: Statement,
    pub(super) upsert: Statement,
    pub(super) delete: Statement,
    pub(super) next_position: Statement,
    /// `$1` change-log positions, in one statement.
    pub(super) next_changes: Statement,
}

#[derive(Default)]
pub(super) struct Pool {
    pub(super) idle: Vec<Conn>,
    /// Connections open, idle or lent out.
    pub(super) open: usize,
}

/// A connection lent out; back to the pool when dropped (unless broken).
pub(super) struct Lent<'s> {
    store: &'s PgStore,
    conn: Option<Conn>,
}

impl std::ops::Deref for Lent<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("lent until dropped")
    }
}

impl Lent<'_> {
    /// The connection, kept beyond this loan (a group's transaction);
    /// [`PgStore::give_back`] returns it.
    pub(super) fn keep(mut self) -> Conn {
        self.conn.take().expect("lent until dropped")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        // Kept (`None`): still open, and counted so.
        if let Some(conn) = self.conn.take() {
            self.store.give_back(Some(conn));
        }
    }
}

impl PgStore {
    /// A connection back to the pool, or `None` for one given up (closed,
    /// or left in a transaction).
    pub(super) fn give_back(&self, conn: Option<Conn>) {
        let mut pool = self.pool();
        match conn {
            Some(conn)
                if !conn.client.is_closed()
                    && !conn.in_transaction.get()
                    && !std::thread::panicking() =>
            {
                pool.idle.push(conn)
            }
            _ => pool.open -= 1,
        }
        self.freed.notify_one();
    }
}

impl PgStore {
    pub(super) fn connect(options: PgOptions) -> Result<PgStore, StoreError> {
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
            group: Mutex::default(),
        };
        Ok(store)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the store")
    }

    pub(super) fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection: an idle one, a new one while fewer than `pool_size`
    /// are open, else the next one freed (waiting at most the statement
    /// timeout).
    pub(super) fn lend(&self) -> Result<Lent<'_>, StoreError> {
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
            next_changes: prepare(format!(
                "SELECT nextval('{s}.changes') FROM generate_series(1, $1::INT8)"
            ))?,
            client,
            in_transaction: std::cell::Cell::new(false),
        })
    }

    /// A new connection without prepared statements (the tables may not
    /// exist yet), driven by the store's runtime.
    pub(super) fn lend_raw(&self) -> Result<Client, StoreError> {
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
}
