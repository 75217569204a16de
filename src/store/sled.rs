//! The embedded store: one sled tree holding the records as laid out in
//! [`records`](super::records).
//!
//! Keeping everything in one tree lets several writes go in one atomic
//! `apply_batch`. A write's changes are staged in memory; the next flush
//! applies everything staged in one batch (or earlier, in batches of about
//! [`MAX_STAGED`] keys, each holding whole writes) and makes it durable. Within a
//! write, reads see the write's own changes and the staged ones through
//! overlays; the single-writer rule (see the module above) means nothing else
//! changes underneath. One batch per group rather than per write halved the
//! engine's share of the committer's time (each batch costs a lock, a log
//! reservation and a wake-up of its own).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use super::records::{merge_keys, past_prefix, Changes, Engine, Entries, Staging};
use super::{StoreError, WriteFn};

/// Staged keys past which the writes staged so far are applied at once, in
/// one batch, without waiting for the flush. sled frees what a batch
/// replaced only after the batch ends, and a little per later operation: one
/// batch per group of 1,000-signal imports (tens of thousands of keys) left
/// more garbage than it could free, and the process grew by 13 KB per signal
/// until the kernel killed it. Batches of about a thousand keys keep nearly
/// all the gain of batching and a bounded memory (1.6 KB per signal while
/// the page cache fills, as before).
const MAX_STAGED: usize = 1024;

pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Writes made since the last flush, not yet in the tree.
    staged: Mutex<Changes>,
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the store with sled's default page cache (1 GiB).
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with(path, 1 << 30)
    }

    /// Opens (or creates) the store keeping at most about `cache_bytes` of
    /// decoded pages in memory.
    pub fn open_with(path: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // Durability comes from the committer's explicit flush, not a timer.
            .flush_every_ms(None)
            .open()
            .map_err(engine)?;
        let tree = db.open_tree("anamnesis").map_err(engine)?;
        Ok(SledStore {
            db,
            tree,
            staged: Mutex::default(),
        })
    }

    fn staged(&self) -> MutexGuard<'_, Changes> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SledStore {
    /// How many records the store holds (counts them: about a second per
    /// million).
    pub fn record_count(&self) -> usize {
        self.tree.len()
    }

    /// A number above every one [`Staging::next_sequence`] handed out.
    pub fn next_position(&self) -> Result<u64, StoreError> {
        self.db.generate_id().map_err(engine)
    }
}

impl Engine for SledStore {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(k).map_err(engine)?.map(|v| v.to_vec()))
    }

    fn range(&self, start: &[u8], end: &[u8], descending: bool) -> Entries<'_> {
        let entries = self.tree.range(start.to_vec()..end.to_vec());
        let convert = |e: sled::Result<(sled::IVec, sled::IVec)>| {
            e.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine)
        };
        if descending {
            Box::new(entries.rev().map(convert))
        } else {
            Box::new(entries.map(convert))
        }
    }

    fn run_write(&self, op: &mut WriteFn<'_>) -> Result<(), StoreError> {
        let mut staged = self.staged();
        // Applied before this write runs, not after it is staged: should the
        // batch fail, this write has not happened (and says so), and what was
        // staged before stays staged for the flush, which then fails its group.
        if staged.len() >= MAX_STAGED {
            self.apply_batch(&mut staged)?;
        }
        let mut tx = SledTx {
            store: self,
            staged: &staged,
            overlay: BTreeMap::new(),
        };
        if op(&mut tx) {
            let overlay = tx.overlay;
            staged.extend(overlay);
        }
        Ok(())
    }

    fn apply_staged(&self) -> Result<(), StoreError> {
        self.apply_batch(&mut self.staged())
    }

    fn make_durable(&self) -> Result<usize, StoreError> {
        self.apply_staged()?;
        self.db.flush().map_err(engine)
    }

    fn check(&self) -> Result<(), StoreError> {
        self.tree.get(b"ping").map(|_| ()).map_err(engine)
    }

    fn disk_bytes(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(engine)
    }
}

impl SledStore {
    /// Applies everything staged in one batch; on failure it stays staged.
    fn apply_batch(&self, staged: &mut Changes) -> Result<(), StoreError> {
        if staged.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(staged);
        let mut batch = sled::Batch::default();
        for (k, v) in &changes {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                None => batch.remove(k.as_slice()),
            }
        }
        if let Err(e) = self.tree.apply_batch(batch) {
            // Kept for the next attempt, as if never taken.
            *staged = changes;
            return Err(engine(e));
        }
        Ok(())
    }
}

/// The write in progress: changes are collected here and staged at the end.
struct SledTx<'s> {
    store: &'s SledStore,
    /// Earlier writes of this group, not yet in the tree.
    staged: &'s Changes,
    /// `None` marks a removal.
    overlay: Changes,
}

impl Staging for SledTx<'_> {
    fn get(&mut self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.get(k).or_else(|| self.staged.get(k)) {
            Some(v) => Ok(v.clone()),
            None => self.store.get(k),
        }
    }

    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.overlay.insert(k, Some(v));
    }

    fn remove(&mut self, k: Vec<u8>) {
        self.overlay.insert(k, None);
    }

    fn keys_with_prefix(&mut self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let stored = self
            .store
            .range(prefix, &past_prefix(prefix), false)
            .map(|e| e.map(|(k, _)| k));
        merge_keys(stored, &[self.staged, &self.overlay], prefix)
    }

    fn next_sequence(&mut self) -> Result<u64, StoreError> {
        self.store.db.generate_id().map_err(engine)
    }

    /// The committer, the only writer, numbers changes itself.
    fn allocate_change(&mut self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}
