//! Range reads, a page of rows per statement.

use std::collections::VecDeque;

use super::pool::Conn;
use super::{engine, wait, PgStore};
use crate::store::records::{just_after, Entry};
use crate::store::StoreError;

/// Rows fetched per page of a range read.
const PAGE: i64 = 256;

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

/// A range read a page at a time. Pages are separate statements, like
/// sled's iterators are not snapshots either.
pub(super) struct Pages<'s> {
    pub(super) store: &'s PgStore,
    pub(super) start: Vec<u8>,
    pub(super) end: Vec<u8>,
    pub(super) descending: bool,
    pub(super) buffered: VecDeque<Entry>,
    pub(super) done: bool,
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
