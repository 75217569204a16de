//! Writes: one `SERIALIZABLE` transaction per write, or per group of writes
//! on the committer (see [`Store::begin_group`](crate::store::Store::begin_group)).
//! Reads go through the transaction and the writes' own changes, which are
//! kept here and sent just before COMMIT, in two statements.
//!
//! Change-log positions are not taken inside the transaction's reads and
//! writes: a write gets provisional ones ([`PROVISIONAL`] and up), and the
//! real ones come from the `changes` sequence, in one statement, just before
//! COMMIT. So no record is locked or updated by every write (a counter
//! record was, once: every writer of the fleet queued on it), and the time
//! between taking a position and committing it is one statement and the
//! COMMIT. Readers of the log wait a bounded time for a position that is
//! taken but not yet committed (see `service::tail`).

use std::collections::BTreeMap;

use super::pool::Conn;
use super::{describe, wait, PgStore};
use crate::store::records::{
    change_key, merge_keys, past_prefix, renumbered_change, Changes, Staging,
};
use crate::store::{StoreError, WriteFn, PROVISIONAL};

/// A transaction in progress on one connection: the changes staged so far
/// and the provisional positions handed out.
pub(super) struct Open {
    pub(super) conn: Conn,
    pub(super) staged: Changes,
    /// Provisional positions handed out so far (the next is `PROVISIONAL + taken`).
    pub(super) taken: u64,
    /// The first database error: the transaction is lost, and the group
    /// fails (or is re-run) whatever its writes return.
    pub(super) failed: Option<tokio_postgres::Error>,
}

impl Open {
    pub(super) fn begin(conn: Conn) -> Result<Open, Box<(Conn, tokio_postgres::Error)>> {
        conn.in_transaction.set(true);
        match wait(
            conn.client
                .batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE"),
        ) {
            Ok(()) => Ok(Open {
                conn,
                staged: BTreeMap::new(),
                taken: 0,
                failed: None,
            }),
            Err(e) => Err(Box::new((conn, e))),
        }
    }

    /// Runs one write in this transaction: `Ok(true)` its changes were
    /// staged, `Ok(false)` it discarded them, `Err` a database error (the
    /// transaction is lost).
    pub(super) fn run(&mut self, op: &mut WriteFn<'_>) -> Result<bool, StoreError> {
        if let Some(e) = &self.failed {
            return Err(describe(e));
        }
        let mut tx = PgTx {
            conn: &self.conn,
            below: &self.staged,
            own: BTreeMap::new(),
            taken: self.taken,
            failed: None,
        };
        let keep = op(&mut tx);
        let PgTx {
            own, taken, failed, ..
        } = tx;
        if let Some(e) = failed {
            let reported = describe(&e);
            self.failed = Some(e);
            return Err(reported);
        }
        if keep {
            self.staged.extend(own);
            self.taken = taken;
        }
        Ok(keep)
    }

    /// Gives the provisional positions their real ones, sends the changes
    /// and commits. Returns the positions, in the order the provisional
    /// ones were handed out.
    pub(super) fn commit(&mut self) -> Result<Vec<u64>, tokio_postgres::Error> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let positions = if self.taken > 0 {
            let rows = wait(
                self.conn
                    .client
                    .query(&self.conn.next_changes, &[&(self.taken as i64)]),
            )?;
            let mut positions: Vec<u64> = rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
            positions.sort_unstable();
            positions
        } else {
            Vec::new()
        };
        let staged = std::mem::take(&mut self.staged);
        let mut used = vec![false; positions.len()];
        let mut staged: Changes = staged
            .into_iter()
            .map(|(k, v)| match renumbered_change(&k, &positions) {
                Some((k, i)) => {
                    used[i] = true;
                    (k, v)
                }
                None => (k, v),
            })
            .collect();
        // A position taken without a change recorded at it (a write that
        // moved cache entries without an event) is filled with an empty
        // record, so that readers of the log do not wait for it.
        for (i, &seq) in positions.iter().enumerate() {
            if !used[i] {
                staged.insert(change_key(seq), Some(Vec::new()));
            }
        }
        send(&self.conn, staged)?;
        wait(self.conn.client.batch_execute("COMMIT"))?;
        self.conn.in_transaction.set(false);
        Ok(positions)
    }

    /// Ends the transaction without committing; the connection, when it
    /// could be made usable again.
    pub(super) fn abandon(self) -> Option<Conn> {
        let ended = wait(self.conn.client.batch_execute("ROLLBACK")).is_ok();
        self.conn.in_transaction.set(!ended);
        ended.then_some(self.conn)
    }
}

/// The changes, in two statements.
fn send(conn: &Conn, changes: Changes) -> Result<(), tokio_postgres::Error> {
    let mut put_keys = Vec::new();
    let mut put_values = Vec::new();
    let mut removed = Vec::new();
    for (k, v) in changes {
        match v {
            Some(v) => {
                put_keys.push(k);
                put_values.push(v);
            }
            None => removed.push(k),
        }
    }
    if !removed.is_empty() {
        wait(conn.client.execute(&conn.delete, &[&removed]))?;
    }
    if !put_keys.is_empty() {
        wait(conn.client.execute(&conn.upsert, &[&put_keys, &put_values]))?;
    }
    Ok(())
}

impl PgStore {
    /// One attempt of a write on its own: its own transaction, committed
    /// at once. The error is the database's (the transaction is rolled back).
    pub(super) fn attempt(
        &self,
        conn: Conn,
        op: &mut WriteFn<'_>,
    ) -> (Option<Conn>, Result<(), tokio_postgres::Error>) {
        let mut open = match Open::begin(conn) {
            Ok(open) => open,
            Err(failed) => {
                let (conn, e) = *failed;
                return (Some(conn), Err(e));
            }
        };
        let kept = match open.run(op) {
            Ok(kept) => kept,
            Err(_) => {
                let e = open.failed.take().expect("a failed run keeps its error");
                return (open.abandon(), Err(e));
            }
        };
        if !kept {
            return (open.abandon(), Ok(()));
        }
        match open.commit() {
            Ok(_) => (Some(open.conn), Ok(())),
            Err(e) => (open.abandon(), Err(e)),
        }
    }
}

/// A write in progress: reads go through the transaction, then the
/// changes staged by earlier writes of the group, then this write's own.
struct PgTx<'c> {
    conn: &'c Conn,
    below: &'c Changes,
    /// `None` marks a removal.
    own: Changes,
    taken: u64,
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
}

impl Staging for PgTx<'_> {
    fn get(&mut self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.own.get(k).or_else(|| self.below.get(k)) {
            return Ok(v.clone());
        }
        let row = wait(self.conn.client.query_opt(&self.conn.get, &[&k]));
        Ok(self.note(row)?.map(|r| r.get(0)))
    }

    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.own.insert(k, Some(v));
    }

    fn remove(&mut self, k: Vec<u8>) {
        self.own.insert(k, None);
    }

    fn keys_with_prefix(&mut self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let end = past_prefix(prefix);
        let rows = wait(self.conn.client.query(&self.conn.keys, &[&prefix, &end]));
        let stored: Vec<Vec<u8>> = self.note(rows)?.into_iter().map(|r| r.get(0)).collect();
        merge_keys(stored.into_iter().map(Ok), &[self.below, &self.own], prefix)
    }

    fn next_sequence(&mut self) -> Result<u64, StoreError> {
        let row = wait(self.conn.client.query_one(&self.conn.next_position, &[]));
        Ok(self.note(row)?.get::<_, i64>(0) as u64)
    }

    /// A provisional position; the real one is taken just before COMMIT.
    fn allocate_change(&mut self) -> Result<Option<u64>, StoreError> {
        let seq = PROVISIONAL + self.taken;
        self.taken += 1;
        Ok(Some(seq))
    }
}
