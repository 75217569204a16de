//! A write: one `SERIALIZABLE` transaction per attempt, read through the
//! transaction and the write's own changes, which are sent just before
//! COMMIT.

use std::collections::BTreeMap;

use super::pool::Conn;
use super::{describe, wait, PgStore, NEXT_CHANGE};
use crate::store::records::{
    change_seq, key, merge_keys, past_prefix, Changes, Staging, CHANGE, META,
};
use crate::store::{StoreError, WriteFn};

impl PgStore {
    /// One attempt of a write: `Ok(true)` committed or discarded, `Err` a
    /// failure (the transaction is rolled back).
    pub(super) fn attempt(
        &self,
        conn: &Conn,
        op: &mut WriteFn<'_>,
    ) -> Result<(), tokio_postgres::Error> {
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

pub(super) fn decode_position(v: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            key: String::from_utf8_lossy(NEXT_CHANGE).into_owned(),
            reason: "not a position".into(),
        })
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
