//! Moving an embedded store into the shared one (`anamnesis migrate-store`):
//! the records are the same bytes on both engines, so the copy is a copy of
//! keys and values in key order, in batches, with a resume point kept in
//! the target.

use std::collections::BTreeMap;

use super::postgres::PgStore;
use super::records::{just_after, key, Engine, Entry, RecordStats, META};
use super::sled::SledStore;
use super::{Store, StoreError};

/// Where the target keeps the last key copied while a copy is under way.
pub(super) const CURSOR: &[u8] = b"migrate_store.cursor";

/// What the source looked like when the copy began: a resumed copy checks
/// that nothing wrote to it in between.
const SOURCE: &[u8] = b"migrate_store.source";

/// What a finished copy found on both sides, per kind of record (the
/// target's change-log counter, which the source keeps in memory, left out).
#[derive(Debug)]
pub struct CopyReport {
    pub source: Vec<RecordStats>,
    pub target: Vec<RecordStats>,
    /// Records copied by this run (a resumed run counts only its own).
    pub copied: u64,
    /// The run went on from an earlier, interrupted one.
    pub resumed: bool,
}

impl CopyReport {
    /// Both sides hold the same records (counts and bytes per kind).
    pub fn matches(&self) -> bool {
        let totals = |s: &[RecordStats]| {
            s.iter()
                .map(|k| (k.kind, (k.records, k.key_bytes, k.value_bytes)))
                .collect::<BTreeMap<_, _>>()
        };
        totals(&self.source) == totals(&self.target)
    }
}

/// Copies every record of `source` into `target`, `batch` records per
/// transaction, calling `progress` with the records copied so far and
/// stopping between batches once `stop` says so (the cursor then names the
/// resume point; `Ok(None)`). `changes_through` is the highest change-log
/// position the source ever used (retention may have removed it from the
/// log), which the target must not hand out again. The target must be empty, or hold an
/// interrupted copy of this same source, which the copy continues.
pub fn sled_to_postgres(
    source: &SledStore,
    target: &PgStore,
    batch: usize,
    changes_through: u64,
    progress: &mut dyn FnMut(u64),
    stop: &dyn Fn() -> bool,
) -> Result<Option<CopyReport>, StoreError> {
    let cursor_key = key(META, CURSOR);
    let source_key = key(META, SOURCE);
    // The source's last change and its highest pruned position: any write
    // moves the first.
    let mut fingerprint = source.last_change()?.to_be_bytes().to_vec();
    fingerprint.extend_from_slice(&changes_through.to_be_bytes());
    let resume = Engine::get(target, &cursor_key)?;
    let resumed = resume.is_some();
    if resumed {
        if Engine::get(target, &source_key)?.as_deref() != Some(fingerprint.as_slice()) {
            return Err(StoreError::Engine(
                "the source store changed since the interrupted copy began: copy into a new, empty schema".into(),
            ));
        }
    } else {
        if Engine::range(target, &[], &[u8::MAX], false)
            .next()
            .is_some()
        {
            return Err(StoreError::Engine(
                "the target schema already holds records: copy into an empty schema".into(),
            ));
        }
        // From here on the target says a copy is under way: no instance
        // starts on it until the copy is finished.
        target.put_entries(
            &[
                (cursor_key.clone(), Vec::new()),
                (source_key.clone(), fingerprint),
            ],
            &[],
        )?;
    }
    let mut start = resume.map(just_after).unwrap_or_default();
    let mut copied = 0u64;
    loop {
        if stop() {
            return Ok(None);
        }
        let page: Vec<Entry> = Engine::range(source, &start, &[u8::MAX], false)
            .take(batch)
            .collect::<Result<_, _>>()?;
        let Some((last, _)) = page.last() else {
            break;
        };
        start = just_after(last.clone());
        // The records and the resume point in one transaction.
        let mut entries = page;
        let last = entries.last().map(|(k, _)| k.clone()).unwrap_or_default();
        copied += entries.len() as u64;
        entries.push((cursor_key.clone(), last));
        target.put_entries(&entries, &[])?;
        progress(copied);
    }
    // Positions handed out from now on come after every one the source used.
    let through = changes_through.max(source.last_change()?);
    target.reserve_positions(source.next_position()?, through)?;
    target.put_entries(&[], &[cursor_key, source_key])?;
    let target_stats = target.record_stats()?;
    Ok(Some(CopyReport {
        source: source.record_stats()?,
        target: target_stats,
        copied,
        resumed,
    }))
}
