//! Opening the database at a path, and the store over it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use super::{engine, Inner, Open, SledStore, SEQUENCE_BASE, TREE};
use crate::store::records::{key, META};
use crate::store::StoreError;

/// How long an open waits for the directory's lock. sled's background I/O
/// threads can hold the lock a moment after the last handle in this process
/// is dropped (a restore that loads a store and then reopens it); a lock held
/// by another process (a running service) is still refused, after this.
const LOCK_WAIT: Duration = Duration::from_secs(2);

pub(super) fn open_db(path: &Path, cache_bytes: u64) -> Result<Open, StoreError> {
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
}
