//! Backup, restore and verify of the embedded store: the use cases. The
//! format of a backup is `store::backup`.
//!
//! **A backup while the service writes.** The committer (the single writer)
//! runs one short job: it flushes what its current group staged so far,
//! notes the backup point (the last change-log position, the time) and
//! starts the store's backup reader, which from then on keeps the value at
//! the point of every key a later write overwrites or removes, for as long
//! as the reader has not passed it (see `store::sled`). That job is the
//! only pause of the writes (`anamnesis_backup_pause_seconds`); the copy
//! itself is read while writes go on, and holds every record as it was at
//! the point: exactly the writes whose change-log positions are at or below
//! the point's `last_change`.
//!
//! **A restore** loads a checked backup into a new store beside the old one
//! and swaps them, then erases again every customer the erasure log lists
//! (see [`erasures`](super::erasures)), so that nobody erased after the
//! backup was taken comes back. It also moves three pieces of bookkeeping:
//! change-log positions go on [`RESTORE_POSITION_GAP`] past the last one
//! the old store had handed out by the point (a feed reader's cursor from
//! after the point never skips a change of the restored store); sequence
//! numbers go on above every one in the copy; and the store gets a new id,
//! so that a shared Redis never serves what the old store cached.
//!
//! **Verifying** a stopped store is [`verify()`]: every record decodes, every
//! index entry points at a live record, the identity invariants hold.

mod verify;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use sha2::{Digest, Sha256};

use super::erasures::Erasure;
use super::journal;
use super::views::Access;
use super::{Caller, ServiceError, Services};
use crate::domain::CustomerId;
use crate::store::backup::{encode_frame, encode_record, BackupPoint, StreamEnd};
use crate::store::{BackupReader, Store, StoreError};

/// The media type of a backup stream, for the route that sends one.
pub use crate::store::backup::STREAM_TYPE;
pub use verify::{verify, Verified};

/// How far past the old store's last handed-out position a restored store
/// starts: room for every change the old store may have made after the
/// backup point (at 20,000 changes a second, 1.7 years), and still far
/// below 2^53, where JSON numbers stop being exact.
pub const RESTORE_POSITION_GAP: u64 = 1 << 40;

/// Records read from the store per chunk of the stream.
const CHUNK_RECORDS: usize = 1024;

/// Resets the "a backup is under way" flag when the stream ends or is dropped.
struct Underway(Arc<AtomicBool>);

impl Drop for Underway {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A backup being sent: the stream's bytes a chunk at a time (see
/// `store::backup` for the frames). Each chunk reads the store: call it off
/// the server's threads.
pub struct BackupStream {
    reader: Box<dyn BackupReader>,
    point: Option<BackupPoint>,
    hash: Sha256,
    records: u64,
    finished: bool,
    started: Instant,
    _underway: Underway,
}

impl BackupStream {
    /// The next bytes of the stream; `None` after its last frame.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        if self.finished {
            return Ok(None);
        }
        let mut out = Vec::new();
        if let Some(point) = self.point.take() {
            encode_frame(&mut out, b'H', &point);
        }
        match self.reader.next_records(CHUNK_RECORDS)? {
            Some(records) => {
                let mut body = Vec::new();
                for (k, v) in &records {
                    body.clear();
                    encode_record(&mut body, k, v);
                    self.hash.update(&body);
                    out.push(b'R');
                    out.extend_from_slice(&body);
                }
                self.records += records.len() as u64;
            }
            None => {
                let end = StreamEnd {
                    records: self.records,
                    sha256: std::mem::take(&mut self.hash)
                        .finalize()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                };
                encode_frame(&mut out, b'E', &end);
                self.finished = true;
                tracing::info!(
                    records = self.records,
                    elapsed_ms = self.started.elapsed().as_millis() as u64,
                    "backup sent"
                );
            }
        }
        Ok(Some(out))
    }
}

impl Services {
    /// Starts a backup of the store as it is now (see the module doc).
    /// Refused on the database backend, and while another backup runs.
    pub async fn backup(&self) -> Result<BackupStream, ServiceError> {
        if !self.embedded {
            return Err(ServiceError::BackupUnsupported);
        }
        if self.backing_up.swap(true, Ordering::SeqCst) {
            return Err(ServiceError::BackupInProgress);
        }
        let underway = Underway(self.backing_up.clone());
        let (reader, point, paused) = self
            .committer
            .run(|w| {
                let paused = Instant::now();
                // What this group staged so far is in the copy, and durable.
                w.store.flush()?;
                let reader = w.store.begin_backup()?;
                let point = BackupPoint {
                    at: Utc::now(),
                    last_change: w.store.last_change()?,
                    positions_through: w.journal.last_position(),
                    sequences_below: reader.sequences_below(),
                };
                Ok((reader, point, paused.elapsed()))
            })
            .await?;
        metrics::histogram!("anamnesis_backup_pause_seconds").record(paused.as_secs_f64());
        tracing::info!(
            last_change = point.last_change,
            pause_us = paused.as_micros() as u64,
            "backup started"
        );
        Ok(BackupStream {
            reader,
            point: Some(point),
            hash: Sha256::new(),
            records: 0,
            finished: false,
            started: Instant::now(),
            _underway: underway,
        })
    }

    /// Erases `id` as [`Services::erase`] does, without logging it: for a
    /// restore, which applies the log again.
    async fn erase_unlogged(&self, id: CustomerId, caller: &Caller) -> Result<(), ServiceError> {
        self.erase_with(id, caller.clone(), false).await
    }

    /// Erases again every customer `erasures` lists, in order (a restore:
    /// see the module doc). An id the store holds no more is counted as
    /// gone; an id the store holds merged into another profile (the merge
    /// was undone after the backup) is split off again and erased; where
    /// that is refused, the whole profile holding it is erased, and named
    /// in the report, since an erased customer must not come back.
    pub async fn reapply_erasures(
        &self,
        erasures: &[Erasure],
    ) -> Result<ErasuresReapplied, ServiceError> {
        let caller = Caller::unbound("cli:restore");
        let mut report = ErasuresReapplied::default();
        for erasure in erasures {
            let ids =
                std::iter::once(erasure.customer_id).chain(erasure.merged_ids.iter().copied());
            for id in ids {
                match self.erase_unlogged(id, &caller).await {
                    Ok(()) => report.erased += 1,
                    Err(ServiceError::ProfileNotFound(_)) => report.gone += 1,
                    Err(ServiceError::Moved { to, .. }) => {
                        let split = self
                            .unmerge(to, id, caller.clone(), Access { pii: false })
                            .await;
                        match split {
                            Ok(_) => {
                                self.erase_unlogged(id, &caller).await?;
                                report.split_off += 1;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, %id, survivor = %to, "an erased id is merged into a profile it cannot be split from; erasing that profile whole");
                                self.erase_unlogged(to, &caller).await?;
                                report.whole.push((id, to));
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }
}

/// What a restore's erasures did.
#[derive(Debug, Default)]
pub struct ErasuresReapplied {
    /// Profiles erased again (the backup held them).
    pub erased: u64,
    /// Ids the restored store did not hold (erased before the backup point).
    pub gone: u64,
    /// Ids the backup held merged into another profile, split off and erased.
    pub split_off: u64,
    /// (erased id, the profile erased whole because of it).
    pub whole: Vec<(CustomerId, CustomerId)>,
}

/// The bookkeeping a restored store needs (see the module doc), written
/// into `store` once the records are in.
pub fn mark_restored(store: &dyn Store, point: &BackupPoint) -> Result<(), StoreError> {
    let floor = point
        .positions_through
        .max(point.last_change)
        .saturating_add(RESTORE_POSITION_GAP);
    let id = ulid::Ulid::new().to_string().to_lowercase();
    store.write(&mut |tx| {
        tx.put_meta(journal::POSITIONS_FLOOR, floor.to_be_bytes().to_vec());
        tx.put_meta(
            crate::store::SEQUENCE_BASE,
            point.sequences_below.to_be_bytes().to_vec(),
        );
        tx.put_meta(super::STORE_ID, id.clone().into_bytes());
        true
    })?;
    store.flush()?;
    Ok(())
}
