//! Healing after a failed write.
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
//!    [`generation`](super::Engine::generation) moves on and the layers above
//!    forget what they read (see `service::committer`, `service::hot`);
//! 3. waits until a probe file of [`PROBE_BYTES`] can be written and synced
//!    beside the database (probing with sled itself would poison the
//!    database that now serves reads when the disk is still full), then
//!    writes and flushes a probe record through sled, and marks the store
//!    writable again.
//!
//! Retries back off from [`FIRST_RETRY`] to [`LAST_RETRY`]. Writes that
//! arrive meanwhile are refused at once rather than queued.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::open::open_db;
use super::{engine, reason_of, Failure, Inner, Open};
use crate::store::StoreError;

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
/// of the records (those live in the tree named [`TREE`](super::TREE)).
const PROBE_KEY: &[u8] = b"anamnesis.probe";

impl Inner {
    /// Notes that `open` failed with `e`: it is not written again, writes
    /// are refused, and the healer replaces it. Returns the error to report.
    pub(super) fn failed(self: &Arc<Self>, open: &Open, e: sled::Error) -> StoreError {
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
