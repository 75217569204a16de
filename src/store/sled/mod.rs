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
//! # Healing after a failed write
//!
//! sled 0.34 remembers the first IO error (a full disk, say) as a "global
//! error" and fails every later operation of that open database, reads
//! included, until it is opened again. So the open database sits behind a
//! swappable handle, and a failure of the engine (a batch, a flush, or a
//! read) starts a healer thread that:
//!
//! 1. marks the store not writable, with the error (`/readyz` shows it), and
//!    drops what was staged: those writes' group is answered 503 "could not
//!    confirm", and a client retries with its `signal_id`;
//! 2. drops the failed database (reads answer a store error from here on:
//!    it may hold writes it never made durable) and opens it again at the
//!    same path, retrying: sled holds a lock on its file until every handle,
//!    iterators included, is gone, and it cannot open on a disk with no
//!    room at all. The reopened database serves reads, with exactly what
//!    reached the disk: a write sled had applied in memory but never made
//!    durable is gone, which is why the store's
//!    [`generation`](Engine::generation) moves on and the layers above
//!    forget what they read (see `service::committer`, `service::hot`);
//! 3. waits until a probe file of [`PROBE_BYTES`] can be written and synced
//!    beside the database (probing with sled itself would poison the
//!    database that now serves reads when the disk is still full), then
//!    writes and flushes a probe record through sled, and marks the store
//!    writable again.
//!
//! Retries back off from [`FIRST_RETRY`] to [`LAST_RETRY`]. Writes that
//! arrive meanwhile are refused at once rather than queued.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use super::records::{
    just_after, key, merge_keys, past_prefix, Changes, Engine, Entries, Entry, Staging, META,
};
use super::{BackupReader, StoreError, WriteFn};

/// Staged keys past which the writes staged so far are applied at once, in
/// one batch, without waiting for the flush. sled frees what a batch
/// replaced only after the batch ends, and a little per later operation: one
/// batch per group of 1,000-signal imports (tens of thousands of keys) left
/// more garbage than it could free, and the process grew by 13 KB per signal
/// until the kernel killed it. Batches of about a thousand keys keep nearly
/// all the gain of batching and a bounded memory (1.6 KB per signal while
/// the page cache fills, as before).
const MAX_STAGED: usize = 1024;

/// Free space the healer wants to see before it lets sled write again: a
/// flush writes at most a couple of sled's 512 KiB log segments, so with
/// this much free the probe through sled (and the first groups) succeed
/// rather than poisoning the reopened database.
pub const PROBE_BYTES: usize = 1 << 20;

/// The healer's first retry comes this soon after a failure...
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// ...and the wait doubles up to this: a reopen reads sled's log, which on
/// a large store takes a while, so a disk that stays full for hours is not
/// reopened several times a second.
const LAST_RETRY: Duration = Duration::from_secs(4);

/// The key of the healer's probe record, in sled's default tree: never one
/// of the records (those live in the tree named [`TREE`]).
const PROBE_KEY: &[u8] = b"anamnesis.probe";

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

/// How long an open waits for the directory's lock. sled's background I/O
/// threads can hold the lock a moment after the last handle in this process
/// is dropped (a restore that loads a store and then reopens it); a lock held
/// by another process (a running service) is still refused, after this.
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn open_db(path: &Path, cache_bytes: u64) -> Result<Open, StoreError> {
    let deadline = Instant::now() + LOCK_WAIT;
    let db = loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // Durability comes from the committer's explicit flush, not a timer.
            .flush_every_ms(None)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.map_err(engine)?,
        }
    };
    let tree = db.open_tree(TREE).map_err(engine)?;
    Ok(Open {
        db,
        tree,
        poisoned: AtomicBool::new(false),
    })
}

impl SledStore {
    /// Opens (or creates) the store with sled's default page cache (1 GiB).
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with(path, 1 << 30)
    }

    /// Opens (or creates) the store keeping at most about `cache_bytes` of
    /// decoded pages in memory.
    pub fn open_with(path: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let open = open_db(path, cache_bytes)?;
        let sequence_base = match open.tree.get(key(META, SEQUENCE_BASE.as_bytes())) {
            Ok(Some(v)) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    key: SEQUENCE_BASE.into(),
                    reason: "not a number".into(),
                })?,
            Ok(None) => 0,
            Err(e) => return Err(engine(e)),
        };
        metrics::gauge!("anamnesis_store_writable").set(1.0);
        Ok(SledStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                cache_bytes,
                open: ArcSwapOption::from_pointee(open),
                staged: Mutex::default(),
                writable: AtomicBool::new(true),
                failure: Mutex::default(),
                generation: AtomicU64::new(0),
                healing: AtomicBool::new(false),
                sequence_base,
                recorder: Mutex::default(),
            }),
        })
    }

    /// How many records the store holds (counts them: about a second per
    /// million).
    pub fn record_count(&self) -> usize {
        self.inner.current().map_or(0, |open| open.tree.len())
    }

    /// A number above every one [`Staging::next_sequence`] handed out.
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

    /// Notes that `open` failed with `e`: it is not written again, writes
    /// are refused, and the healer replaces it. Returns the error to report.
    fn failed(self: &Arc<Self>, open: &Open, e: sled::Error) -> StoreError {
        let error = engine(e);
        if open.poisoned.swap(true, Ordering::SeqCst) {
            // Known already (a reader of a database since replaced, say).
            return error;
        }
        let was_writable = self.writable.swap(false, Ordering::SeqCst);
        if was_writable {
            *self.failure() = Some(Failure {
                reason: reason_of(&error),
                since: Instant::now(),
            });
            metrics::gauge!("anamnesis_store_writable").set(0.0);
            metrics::counter!("anamnesis_store_failures_total").increment(1);
            tracing::error!(
                error = %error,
                "the store failed and takes no writes until it is reopened; reopening by itself"
            );
        } else {
            tracing::warn!(error = %error, "the reopened store failed too; reopening again");
        }
        self.start_healer();
        error
    }

    /// Starts the healer thread unless one runs.
    fn start_healer(self: &Arc<Self>) {
        if self.healing.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        let started = std::thread::Builder::new()
            .name("anamnesis-store-healer".into())
            .spawn(move || heal(weak));
        if let Err(e) = started {
            self.healing.store(false, Ordering::SeqCst);
            tracing::error!(error = %e, "the store's healer thread did not start");
        }
    }

    /// One step of healing; `Ok(true)` once the store is writable again.
    fn heal_step(&self) -> Result<bool, StoreError> {
        // 1. A database that never failed, for readers.
        let current = self.open.load_full();
        let open = match current {
            Some(open) if !open.poisoned.load(Ordering::SeqCst) => open,
            stale => {
                // Every handle must go before sled lets go of its file lock:
                // ours first, then readers finish theirs.
                self.open.store(None);
                drop(stale);
                let open = Arc::new(open_db(&self.path, self.cache_bytes)?);
                self.open.store(Some(open.clone()));
                self.generation.fetch_add(1, Ordering::SeqCst);
                metrics::counter!("anamnesis_store_reopens_total").increment(1);
                tracing::info!(
                    "the store was reopened; reads are served again, writes wait for a probe"
                );
                open
            }
        };
        // 2. Room to write, without touching sled.
        self.probe_file()?;
        // 3. A write through sled, with no other write in between.
        let mut staged = self.staged();
        // Whatever a failed group left staged never happened.
        staged.clear();
        if open.poisoned.load(Ordering::SeqCst) {
            return Err(StoreError::Engine(
                "the reopened store failed a read; reopening again".into(),
            ));
        }
        let probe = open
            .db
            .insert(
                PROBE_KEY,
                &chrono::Utc::now().timestamp_millis().to_be_bytes(),
            )
            .and_then(|_| open.db.flush());
        if let Err(e) = probe {
            open.poisoned.store(true, Ordering::SeqCst);
            return Err(engine(e));
        }
        let failed_for = self.failure().take().map(|f| f.since.elapsed());
        self.writable.store(true, Ordering::SeqCst);
        drop(staged);
        metrics::gauge!("anamnesis_store_writable").set(1.0);
        tracing::info!(
            unavailable_ms = failed_for.map_or(0, |d| d.as_millis() as u64),
            "the store takes writes again"
        );
        Ok(true)
    }

    /// Writes and syncs [`PROBE_BYTES`] beside the database, then removes them.
    fn probe_file(&self) -> Result<(), StoreError> {
        use std::io::Write;
        let path = self.path.with_extension("probe");
        let result = std::fs::File::create(&path).and_then(|mut f| {
            f.write_all(&vec![0u8; PROBE_BYTES])?;
            f.sync_all()
        });
        let _ = std::fs::remove_file(&path);
        result.map_err(|e| {
            StoreError::Engine(format!(
                "no room to write beside the store ({} bytes): {e}",
                PROBE_BYTES
            ))
        })
    }
}

/// The healer thread: steps until the store is writable again, backing
/// off; ends early when the store is dropped.
fn heal(weak: Weak<Inner>) {
    let mut wait = FIRST_RETRY;
    let mut last_logged: Option<Instant> = None;
    loop {
        std::thread::sleep(wait);
        let Some(inner) = weak.upgrade() else {
            return;
        };
        match inner.heal_step() {
            Ok(_) => {
                inner.healing.store(false, Ordering::SeqCst);
                // A failure may have come in just before the flag went down.
                if !inner.writable.load(Ordering::SeqCst) {
                    inner.start_healer();
                }
                return;
            }
            Err(e) => {
                if let Some(f) = inner.failure().as_mut() {
                    f.reason = reason_of(&e);
                }
                // One line a minute at most, after the first.
                if last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    last_logged = Some(Instant::now());
                    tracing::warn!(error = %e, "the store is not writable yet; retrying");
                }
            }
        }
        drop(inner);
        wait = (wait * 2).min(LAST_RETRY);
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

/// What a backup needs of the writes made while it reads: the value each
/// key had at the backup point, taken just before the first write to it
/// since (by [`SledStore::apply_batch`], on the single writer), for the keys
/// the backup has not read yet. A key it already passed was read with its
/// value at the point (no write to it had come in before); a key ahead of
/// it is read from here instead of the tree, and so is one removed since,
/// which the tree no longer yields.
#[derive(Default)]
struct Recorder {
    state: Mutex<Recorded>,
}

#[derive(Default)]
struct Recorded {
    /// The last key the backup read (`None`: none yet); keys up to it are
    /// not recorded any more.
    cursor: Option<Vec<u8>>,
    /// Every key was read.
    done: bool,
    /// Keys ahead of the cursor changed since the point, with their value
    /// then (`None`: absent then).
    before: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Recorder {
    fn state(&self) -> MutexGuard<'_, Recorded> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what `changes` are about to overwrite, where the backup needs it.
    fn note(&self, tree: &sled::Tree, changes: &Changes) -> sled::Result<()> {
        let mut state = self.state();
        if state.done {
            return Ok(());
        }
        for k in changes.keys() {
            let ahead = state.cursor.as_ref().is_none_or(|c| k > c);
            if ahead && !state.before.contains_key(k) {
                let then = tree.get(k)?.map(|v| v.to_vec());
                state.before.insert(k.clone(), then);
            }
        }
        Ok(())
    }
}

/// Moves the recorded keys below `upto` (all, when `None`) that existed at
/// the point into `out`: keys removed since, which the tree no longer yields.
fn drain_removed(state: &mut Recorded, upto: Option<&[u8]>, out: &mut Vec<Entry>) {
    while let Some(first) = state.before.first_entry() {
        if upto.is_some_and(|upto| first.key().as_slice() >= upto) {
            break;
        }
        if let (k, Some(v)) = first.remove_entry() {
            out.push((k, v));
        }
    }
}

/// A backup under way over the sled store (see [`Recorder`]).
struct SledBackup {
    inner: Arc<Inner>,
    recorder: Arc<Recorder>,
    /// A reopen of the store ends the backup: it may have read writes the
    /// reopen took back.
    generation: u64,
    sequences_below: u64,
}

impl BackupReader for SledBackup {
    fn next_records(&mut self, max: usize) -> Result<Option<Vec<Entry>>, StoreError> {
        let max = max.max(1);
        let start = {
            let state = self.recorder.state();
            if state.done {
                return Ok(None);
            }
            state.cursor.clone().map(just_after).unwrap_or_default()
        };
        if self.inner.generation.load(Ordering::SeqCst) != self.generation {
            return Err(StoreError::Engine(
                "the store was reopened after a failure while the backup was taken; take it again"
                    .into(),
            ));
        }
        let open = self.inner.current()?;
        // Read before the recorder is locked: a write that lands meanwhile
        // was recorded (the cursor is still behind its key), and wins below.
        let live: Vec<Entry> = open
            .tree
            .range(start..)
            .take(max)
            .map(|e| {
                e.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| self.inner.failed(&open, e))
            })
            .collect::<Result<_, _>>()?;
        let exhausted = live.len() < max;
        let mut state = self.recorder.state();
        let mut out = Vec::with_capacity(live.len());
        for (k, v) in live {
            drain_removed(&mut state, Some(&k), &mut out);
            match state.before.remove(&k) {
                Some(Some(then)) => out.push((k.clone(), then)),
                // Written since the point: not in the copy.
                Some(None) => {}
                None => out.push((k.clone(), v)),
            }
            state.cursor = Some(k);
        }
        if exhausted {
            drain_removed(&mut state, None, &mut out);
            state.done = true;
        }
        Ok(Some(out))
    }

    fn sequences_below(&self) -> u64 {
        self.sequences_below
    }
}

impl Drop for SledBackup {
    fn drop(&mut self) {
        let mut slot = self
            .inner
            .recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slot
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, &self.recorder))
        {
            *slot = None;
        }
    }
}

impl SledStore {
    /// Applies everything staged in one batch. On failure the staged writes
    /// are dropped: the database is replaced (see the module doc), and what
    /// sled had not made durable goes with it.
    fn apply_batch(&self, open: &Open, staged: &mut Changes) -> Result<(), StoreError> {
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
struct SledTx<'s> {
    store: &'s SledStore,
    /// The database this write reads and numbers from.
    open: &'s Arc<Open>,
    /// Earlier writes of this group, not yet in the tree.
    staged: &'s Changes,
    /// `None` marks a removal.
    overlay: Changes,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies changes as the committer's batches do.
    fn apply(store: &SledStore, changes: &[(&str, Option<&str>)]) {
        let open = store.inner.current().unwrap();
        let mut staged = store.inner.staged();
        for (k, v) in changes {
            staged.insert(k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()));
        }
        store.apply_batch(&open, &mut staged).unwrap();
    }

    fn keys(entries: &[Entry]) -> Vec<(String, String)> {
        entries
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect()
    }

    /// Writes ahead of the backup's cursor and behind it, removals and new
    /// keys on both sides: the copy is the store as it was at the point.
    #[test]
    fn a_backup_reads_the_store_as_it_was_whatever_is_written_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let at_point: Vec<(&str, Option<&str>)> = names.iter().map(|k| (*k, Some("0"))).collect();
        apply(&store, &at_point);
        let mut reader = store.backup().unwrap();
        assert!(store.backup().is_err(), "one backup at a time");
        let mut copy = reader.next_records(3).unwrap().unwrap();
        apply(
            &store,
            &[
                ("b", Some("1")),
                ("e", Some("1")),
                ("f", None),
                ("cc", Some("new")),
                ("aa", Some("new")),
                ("a", None),
            ],
        );
        apply(&store, &[("e", Some("2"))]);
        copy.extend(reader.next_records(2).unwrap().unwrap());
        apply(
            &store,
            &[("g", None), ("d", Some("1")), ("zz", Some("new"))],
        );
        while let Some(more) = reader.next_records(100).unwrap() {
            copy.extend(more);
        }
        let expected: Vec<(String, String)> = names
            .iter()
            .map(|k| (k.to_string(), "0".to_string()))
            .collect();
        assert_eq!(keys(&copy), expected);
        apply(&store, &[("h", Some("after"))]);
        assert!(reader.next_records(10).unwrap().is_none());
        drop(reader);
        let mut again = store.backup().unwrap();
        let now = again.next_records(100).unwrap().unwrap();
        assert!(keys(&now).contains(&("zz".into(), "new".into())));
        assert!(keys(&now).contains(&("h".into(), "after".into())));
    }
}
