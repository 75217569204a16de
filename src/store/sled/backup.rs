//! A backup of the embedded store: every record as it was at the backup
//! point, read a batch at a time while the committer goes on writing.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use super::Inner;
use crate::store::records::{just_after, Changes, Entry};
use crate::store::{BackupReader, StoreError};

/// What a backup needs of the writes made while it reads: the value each
/// key had at the backup point, taken just before the first write to it
/// since (by [`SledStore::apply_batch`], on the single writer), for the keys
/// the backup has not read yet. A key it already passed was read with its
/// value at the point (no write to it had come in before); a key ahead of
/// it is read from here instead of the tree, and so is one removed since,
/// which the tree no longer yields.
///
/// [`SledStore::apply_batch`]: super::SledStore::apply_batch
#[derive(Default)]
pub(super) struct Recorder {
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
    pub(super) fn note(&self, tree: &sled::Tree, changes: &Changes) -> sled::Result<()> {
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
pub(super) struct SledBackup {
    pub(super) inner: Arc<Inner>,
    pub(super) recorder: Arc<Recorder>,
    /// A reopen of the store ends the backup: it may have read writes the
    /// reopen took back.
    pub(super) generation: u64,
    pub(super) sequences_below: u64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::Engine;
    use crate::store::sled::SledStore;

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
