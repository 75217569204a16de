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
//!
//! # Layout
//!
//! - [`open`]: opening the database at a path, and the store over it.
//! - [`commit`]: the write in progress, and the batch that applies what is
//!   staged.
//! - [`heal`]: what a failure of the engine sets off (the database is
//!   replaced), up to a writable store again.
//! - [`backup`]: a copy of every record as it was at one moment, read while
//!   writes go on.

mod backup;
mod commit;
mod heal;
mod open;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwapOption;

use self::backup::{Recorder, SledBackup};
use self::commit::{SledTx, MAX_STAGED};
use super::records::{Changes, Engine, Entries, Entry};
use super::{BackupReader, StoreError, WriteFn};

/// The tree holding every record.
const TREE: &str = "anamnesis";

/// The bookkeeping record that holds the number sequence numbers start
/// from (see [`SledStore::next_position`]): sled's own counter cannot be
/// set, and a store restored from a backup starts it again at 0.
pub const SEQUENCE_BASE: &str = "store.sequence_base";

pub struct SledStore {
    inner: Arc<Inner>,
}

/// One open database.
struct Open {
    db: sled::Db,
    tree: sled::Tree,
    /// An operation on this database failed: it is replaced, never written again.
    poisoned: AtomicBool,
}

struct Inner {
    path: PathBuf,
    cache_bytes: u64,
    /// The open database; `None` while the healer has dropped a failed one
    /// and not yet opened it again.
    open: ArcSwapOption<Open>,
    /// Writes made since the last flush, not yet in the tree. Also held by
    /// the healer while it marks the store writable, so that no write runs
    /// half before and half after.
    staged: Mutex<Changes>,
    /// Writes are taken (no failure since the last successful probe).
    writable: AtomicBool,
    /// Why writes are not taken, and since when (for `/readyz` and the log).
    failure: Mutex<Option<Failure>>,
    /// Moves on each time another database replaced the open one.
    generation: AtomicU64,
    /// A healer thread runs.
    healing: AtomicBool,
    /// Added to sled's id counter for every sequence number ([`SEQUENCE_BASE`]).
    sequence_base: u64,
    /// The before-images of a backup under way (see [`Recorder`]).
    recorder: Mutex<Option<Arc<Recorder>>>,
}

#[derive(Clone)]
struct Failure {
    reason: String,
    since: Instant,
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// The engine's own words, without the "storage engine failed" of the
/// error's display (the store's messages say that themselves).
fn reason_of(e: &StoreError) -> String {
    match e {
        StoreError::Engine(text) => text.clone(),
        other => other.to_string(),
    }
}

/// What the copy and restore tools ask of an embedded store.
impl SledStore {
    /// How many records the store holds (counts them: about a second per
    /// million).
    pub fn record_count(&self) -> usize {
        self.inner.current().map_or(0, |open| open.tree.len())
    }

    /// A number above every one
    /// [`Staging::next_sequence`](super::records::Staging::next_sequence)
    /// handed out.
    pub fn next_position(&self) -> Result<u64, StoreError> {
        let open = self.inner.current()?;
        self.inner.next_sequence(&open)
    }

    /// Writes records as they are (restoring a backup into a new store);
    /// durable after the next [`flush`](crate::store::Store::flush).
    pub fn put_records(&self, records: Vec<Entry>) -> Result<(), StoreError> {
        let mut staged = self.inner.staged();
        self.inner.check_writable(&mut staged)?;
        let open = self.inner.current()?;
        staged.extend(records.into_iter().map(|(k, v)| (k, Some(v))));
        self.apply_batch(&open, &mut staged)
    }
}

impl Inner {
    fn staged(&self) -> MutexGuard<'_, Changes> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failure(&self) -> MutexGuard<'_, Option<Failure>> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_sequence(self: &Arc<Self>, open: &Open) -> Result<u64, StoreError> {
        match open.db.generate_id() {
            Ok(id) => Ok(id + self.sequence_base),
            Err(e) => Err(self.failed(open, e)),
        }
    }

    fn recorder(&self) -> Option<Arc<Recorder>> {
        self.recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The open database, or why there is none just now.
    fn current(&self) -> Result<Arc<Open>, StoreError> {
        // A database that failed is not read either: it may hold writes it
        // never made durable, which its replacement will not have.
        let open = self
            .open
            .load_full()
            .filter(|open| !open.poisoned.load(Ordering::SeqCst));
        open.ok_or_else(|| {
            let reason = self.failure().as_ref().map(|f| f.reason.clone());
            StoreError::Engine(format!(
                "the store is being reopened after a failure: {}",
                reason.as_deref().unwrap_or("unknown")
            ))
        })
    }

    /// Writes are refused with this while the store heals; `staged` (the
    /// guard the caller holds) is emptied then: those writes never happened.
    fn check_writable(&self, staged: &mut Changes) -> Result<(), StoreError> {
        if self.writable.load(Ordering::SeqCst) {
            return Ok(());
        }
        staged.clear();
        let failure = self.failure().clone();
        Err(StoreError::Engine(match failure {
            Some(f) => format!(
                "the store takes no writes since a failure {} s ago ({}); it reopens by itself",
                f.since.elapsed().as_secs(),
                f.reason
            ),
            None => "the store takes no writes until it is reopened".into(),
        }))
    }
}

impl Engine for SledStore {
    const SHARED: bool = false;

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let open = self.inner.current()?;
        match open.tree.get(k) {
            Ok(v) => Ok(v.map(|v| v.to_vec())),
            Err(e) => Err(self.inner.failed(&open, e)),
        }
    }

    fn range(&self, start: &[u8], end: &[u8], descending: bool) -> Entries<'_> {
        let open = match self.inner.current() {
            Ok(open) => open,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        // The iterator owns its handle on the tree: a reopen never pulls the
        // database from under it (and waits for it to end).
        let entries = open.tree.range(start.to_vec()..end.to_vec());
        let inner = self.inner.clone();
        let convert = move |e: sled::Result<(sled::IVec, sled::IVec)>| {
            e.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(|e| inner.failed(&open, e))
        };
        if descending {
            Box::new(entries.rev().map(convert))
        } else {
            Box::new(entries.map(convert))
        }
    }

    fn run_write(&self, op: &mut WriteFn<'_>) -> Result<(), StoreError> {
        let mut staged = self.inner.staged();
        self.inner.check_writable(&mut staged)?;
        let open = self.inner.current()?;
        // Applied before this write runs, not after it is staged: should the
        // batch fail, this write has not happened (and says so).
        if staged.len() >= MAX_STAGED {
            self.apply_batch(&open, &mut staged)?;
        }
        let mut tx = SledTx {
            store: self,
            open: &open,
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
        let mut staged = self.inner.staged();
        self.inner.check_writable(&mut staged)?;
        let open = self.inner.current()?;
        self.apply_batch(&open, &mut staged)
    }

    fn make_durable(&self) -> Result<usize, StoreError> {
        let mut staged = self.inner.staged();
        self.inner.check_writable(&mut staged)?;
        let open = self.inner.current()?;
        self.apply_batch(&open, &mut staged)?;
        match open.db.flush() {
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(self.inner.failed(&open, e)),
        }
    }

    /// Ready means writable: a store that only reads is not ready.
    fn check(&self) -> Result<(), StoreError> {
        self.inner.check_writable(&mut Changes::new())?;
        self.get(b"ping").map(|_| ())
    }

    fn disk_bytes(&self) -> Result<u64, StoreError> {
        let open = self.inner.current()?;
        open.db.size_on_disk().map_err(engine)
    }

    fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    fn backup(&self) -> Result<Box<dyn BackupReader>, StoreError> {
        let mut staged = self.inner.staged();
        self.inner.check_writable(&mut staged)?;
        if !staged.is_empty() {
            return Err(StoreError::Engine(
                "a backup starts only with nothing staged (after a flush)".into(),
            ));
        }
        let mut slot = self
            .inner
            .recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Err(StoreError::Engine("a backup is already under way".into()));
        }
        let open = self.inner.current()?;
        let sequences_below = self.inner.next_sequence(&open)?;
        let recorder = Arc::new(Recorder::default());
        *slot = Some(recorder.clone());
        Ok(Box::new(SledBackup {
            inner: self.inner.clone(),
            recorder,
            generation: self.inner.generation.load(Ordering::SeqCst),
            sequences_below,
        }))
    }
}
