//! Writes that no use case makes, for `anamnesis migrate-store` (see
//! `store::copy`): records written as they are, and positions reserved past
//! those of a copied store.

use super::{engine, quoted, wait, PgStore};
use crate::store::records::Entry;
use crate::store::StoreError;

impl PgStore {
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
        wait(conn.client.execute(
            &format!(
                "SELECT setval('{s}.changes', GREATEST($1, (SELECT last_value FROM {s}.changes)))"
            ),
            &[&(changes_through.clamp(1, i64::MAX as u64) as i64)],
        ))
        .map_err(engine)?;
        Ok(())
    }
}
