//! The write side of the embedded store: the write in progress, read
//! through its own changes and the staged ones, and the batch that applies
//! what is staged to the tree.

use std::sync::Arc;

use super::{Open, SledStore};
use crate::store::records::{merge_keys, past_prefix, Changes, Staging};
use crate::store::StoreError;

/// Staged keys past which the writes staged so far are applied at once, in
/// one batch, without waiting for the flush. sled frees what a batch
/// replaced only after the batch ends, and a little per later operation: one
/// batch per group of 1,000-signal imports (tens of thousands of keys) left
/// more garbage than it could free, and the process grew by 13 KB per signal
/// until the kernel killed it. Batches of about a thousand keys keep nearly
/// all the gain of batching and a bounded memory (1.6 KB per signal while
/// the page cache fills, as before).
pub(super) const MAX_STAGED: usize = 1024;

impl SledStore {
    /// Applies everything staged in one batch. On failure the staged writes
    /// are dropped: the database is replaced (see [`heal`]), and what
    /// sled had not made durable goes with it.
    ///
    /// [`heal`]: super::heal
    pub(super) fn apply_batch(&self, open: &Open, staged: &mut Changes) -> Result<(), StoreError> {
        if staged.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(staged);
        if let Some(recorder) = self.inner.recorder() {
            recorder
                .note(&open.tree, &changes)
                .map_err(|e| self.inner.failed(open, e))?;
        }
        let mut batch = sled::Batch::default();
        for (k, v) in &changes {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                None => batch.remove(k.as_slice()),
            }
        }
        open.tree
            .apply_batch(batch)
            .map_err(|e| self.inner.failed(open, e))
    }
}

/// The write in progress: changes are collected here and staged at the end.
pub(super) struct SledTx<'s> {
    pub(super) store: &'s SledStore,
    /// The database this write reads and numbers from.
    pub(super) open: &'s Arc<Open>,
    /// Earlier writes of this group, not yet in the tree.
    pub(super) staged: &'s Changes,
    /// `None` marks a removal.
    pub(super) overlay: Changes,
}

impl Staging for SledTx<'_> {
    fn get(&mut self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.get(k).or_else(|| self.staged.get(k)) {
            Some(v) => Ok(v.clone()),
            None => match self.open.tree.get(k) {
                Ok(v) => Ok(v.map(|v| v.to_vec())),
                Err(e) => Err(self.store.inner.failed(self.open, e)),
            },
        }
    }

    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.overlay.insert(k, Some(v));
    }

    fn remove(&mut self, k: Vec<u8>) {
        self.overlay.insert(k, None);
    }

    fn keys_with_prefix(&mut self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let store = self.store;
        let open = self.open;
        let stored = open
            .tree
            .range(prefix.to_vec()..past_prefix(prefix))
            .map(|e| {
                e.map(|(k, _)| k.to_vec())
                    .map_err(|e| store.inner.failed(open, e))
            });
        merge_keys(stored, &[self.staged, &self.overlay], prefix)
    }

    fn next_sequence(&mut self) -> Result<u64, StoreError> {
        self.store.inner.next_sequence(self.open)
    }

    /// The committer, the only writer, numbers changes itself.
    fn allocate_change(&mut self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}
