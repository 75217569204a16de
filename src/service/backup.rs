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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use sha2::{Digest, Sha256};

use super::erasures::Erasure;
use super::idempotency::KeyRecord;
use super::journal;
use super::views::Access;
use super::{Caller, ServiceError, Services};
use crate::domain::{CustomerId, IdentityEvent, Interaction, Profile, Suggestion};
use crate::store::backup::{encode_frame, encode_record, BackupPoint, StreamEnd};
use crate::store::{
    decode_change, parse_key, BackupReader, RecordKey, SignalRecord, Store, StoreError,
};

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

/// The outcome of [`verify`].
#[derive(Debug, Default)]
pub struct Verified {
    pub records: u64,
    /// The first problems found, each naming the record (ids, kinds, never
    /// an identifier's value); at most the `max_listed` asked for.
    pub problems: Vec<String>,
    /// Every problem found, listed or not.
    pub problem_count: u64,
}

struct Findings {
    listed: Vec<String>,
    count: u64,
    max: usize,
}

impl Findings {
    fn note(&mut self, problem: String) {
        self.count += 1;
        if self.listed.len() < self.max {
            self.listed.push(problem);
        }
    }
}

fn decodes<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, String> {
    serde_json::from_slice(v).map_err(|e| format!("does not decode: {e}"))
}

/// A live profile, or an absorbed id whose alias leads to one.
fn known(store: &dyn Store, id: CustomerId) -> Result<bool, StoreError> {
    if store.profile(id)?.is_some() {
        return Ok(true);
    }
    Ok(match store.alias(id)? {
        Some(to) => store.profile(to)?.is_some(),
        None => false,
    })
}

/// Reads every record of `store` and checks that it decodes, that every
/// index entry points at a live record, and the identity invariants: an
/// identifier owned is on its owner's profile and every identifier on a
/// profile is owned by it; an absorbed id is an alias of the live profile
/// that lists it. Reads the records once, in key order, and looks each
/// index entry's target up (memory stays small). The service must be
/// stopped.
pub fn verify(store: &dyn Store, max_listed: usize) -> Result<Verified, StoreError> {
    let mut found = Findings {
        listed: Vec::new(),
        count: 0,
        max: max_listed,
    };
    let mut records = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.records_after(after.as_deref(), 1024)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (k, v) in &page {
            records += 1;
            if let Err(problem) = check_record(store, k, v)? {
                found.note(problem);
            }
        }
    }
    Ok(Verified {
        records,
        problems: found.listed,
        problem_count: found.count,
    })
}

/// One record's checks: `Ok(Err(problem))` names what is wrong.
fn check_record(store: &dyn Store, k: &[u8], v: &[u8]) -> Result<Result<(), String>, StoreError> {
    let outcome = match parse_key(k) {
        RecordKey::Profile(id) => check_profile(store, id, v)?,
        RecordKey::Alias(absorbed) => match CustomerId::from_key(v) {
            None => Err(format!("merged id {absorbed}: the profile it points to is not an id")),
            Some(survivor) => match store.profile(survivor)? {
                None => Err(format!(
                    "merged id {absorbed} points to {survivor}, which is not a live profile"
                )),
                Some(p) if !p.merged_ids.contains(&absorbed) => Err(format!(
                    "merged id {absorbed} points to {survivor}, which does not list it as merged"
                )),
                Some(_) if store.profile(absorbed)?.is_some() => Err(format!(
                    "merged id {absorbed} is also a live profile of its own"
                )),
                Some(_) => Ok(()),
            },
        },
        RecordKey::History(id, seq) => decodes::<IdentityEvent>(v)
            .map(|_| ())
            .map_err(|e| format!("ledger entry {seq} of {id} {e}")),
        RecordKey::Suggestion(a, b) => match decodes::<Suggestion>(v) {
            Err(e) => Err(format!("merge suggestion {a}/{b} {e}")),
            Ok(_) => match store.suggestions(b)?.iter().any(|(other, _)| *other == a) {
                true => Ok(()),
                false => Err(format!(
                    "merge suggestion {a}/{b} has no counterpart under {b}"
                )),
            },
        },
        RecordKey::Owner(key) => check_owner(store, &key, v)?,
        RecordKey::Timeline(member, pos) => match decodes::<Interaction>(v) {
            Err(e) => Err(format!("interaction {} of {member} {e}", pos.to_id())),
            Ok(i) if i.id != pos.to_id() => Err(format!(
                "interaction {} of {member} is stored under position {}",
                i.id,
                pos.to_id()
            )),
            Ok(_) if !known(store, member)? => Err(format!(
                "interaction {} belongs to {member}, which is neither a live profile nor merged into one",
                pos.to_id()
            )),
            Ok(_) => Ok(()),
        },
        RecordKey::Signal(id) => SignalRecord::decode(v)
            .map(|_| ())
            .map_err(|e| format!("signal record `{id}` does not decode: {e}")),
        RecordKey::SignalOf(member, signal_id) => {
            if store.signal_record(&signal_id)?.is_none() {
                Err(format!(
                    "the signal index of {member} names `{signal_id}`, which has no record"
                ))
            } else if !known(store, member)? {
                Err(format!(
                    "the signal index names {member}, which is neither a live profile nor merged into one"
                ))
            } else {
                Ok(())
            }
        }
        RecordKey::Change(seq) => match decode_change(seq, v) {
            Err(e) => Err(e.to_string()),
            Ok(c) if c.seq != seq => Err(format!("change {seq} says it is change {}", c.seq)),
            Ok(c) => {
                let indexed = store
                    .changes_of(c.customer_id, seq.saturating_sub(1), 1)?
                    .first()
                    .is_some_and(|(s, _)| *s == seq);
                match indexed {
                    true => Ok(()),
                    false => Err(format!(
                        "change {seq} is not in the change index of {}",
                        c.customer_id
                    )),
                }
            }
        },
        RecordKey::ChangeOf(customer, seq) => match store.changes(seq.saturating_sub(1), 1)?.first() {
            Some((s, bytes)) if *s == seq => match decode_change(seq, bytes) {
                Ok(c) if c.customer_id == customer => Ok(()),
                Ok(c) => Err(format!(
                    "the change index of {customer} names change {seq}, which is about {}",
                    c.customer_id
                )),
                // Reported at the change itself.
                Err(_) => Ok(()),
            },
            _ => Err(format!(
                "the change index of {customer} names change {seq}, which does not exist"
            )),
        },
        RecordKey::Meta(_) => Ok(()),
        RecordKey::FollowUp(f) => match store.profile(f.customer)? {
            Some(p) if p.episodes.get(&f.episode).is_some_and(|e| e.awaiting_feedback().is_some()) => {
                Ok(())
            }
            Some(_) => Err(format!(
                "the follow-up index names episode `{}` of {}, which awaits no feedback",
                f.episode, f.customer
            )),
            None => Err(format!(
                "the follow-up index names {}, which is not a live profile",
                f.customer
            )),
        },
        RecordKey::KeyRecord(id) => match KeyRecord::decode(v) {
            Err(e) => Err(format!("an idempotency key record {e}")),
            Ok(r) => {
                match store.key_record_indexed(r.created_millis, &id)? {
                    true => Ok(()),
                    false => Err("an idempotency key record is missing from its time index".into()),
                }
            }
        },
        RecordKey::KeyByTime(_, id) => match store.key_record(&id)? {
            Some(_) => Ok(()),
            None => Err("the idempotency key time index names a key that is not stored".into()),
        },
        RecordKey::KeyOf(customer, id) => match store.key_record(&id)? {
            Some(bytes) => match KeyRecord::decode(&bytes) {
                Ok(r) if r.customers.contains(&customer) => Ok(()),
                Ok(_) => Err(format!(
                    "an idempotency key is indexed under {customer}, whose reply does not name them"
                )),
                // Reported at the record itself.
                Err(_) => Ok(()),
            },
            None => Err(format!(
                "an idempotency key indexed under {customer} is not stored"
            )),
        },
        RecordKey::Unknown => Err(format!(
            "a record of no known kind (key starting with byte {})",
            k.first().copied().unwrap_or(0)
        )),
    };
    Ok(outcome)
}

fn check_profile(
    store: &dyn Store,
    id: CustomerId,
    v: &[u8],
) -> Result<Result<(), String>, StoreError> {
    let p: Profile = match decodes(v) {
        Ok(p) => p,
        Err(e) => return Ok(Err(format!("profile {id} {e}"))),
    };
    if p.customer_id != id {
        return Ok(Err(format!(
            "profile stored under {id} says it is {}",
            p.customer_id
        )));
    }
    for r in &p.identifiers {
        match store.owner(&r.identifier)? {
            Some(owner) if owner == id => {}
            Some(owner) => {
                return Ok(Err(format!(
                    "profile {id} holds a {} identifier owned by {owner}",
                    r.identifier.kind()
                )))
            }
            None => {
                return Ok(Err(format!(
                    "profile {id} holds a {} identifier nobody owns in the index",
                    r.identifier.kind()
                )))
            }
        }
    }
    for merged in &p.merged_ids {
        if store.alias(*merged)? != Some(id) {
            return Ok(Err(format!(
                "profile {id} lists {merged} as merged, but {merged} does not point to it"
            )));
        }
    }
    Ok(Ok(()))
}

fn check_owner(store: &dyn Store, key: &[u8], v: &[u8]) -> Result<Result<(), String>, StoreError> {
    let kind = key
        .iter()
        .position(|b| *b == b':')
        .map(|at| String::from_utf8_lossy(&key[..at]).into_owned())
        .unwrap_or_else(|| "?".into());
    let Some(owner) = CustomerId::from_key(v) else {
        return Ok(Err(format!("a {kind} identifier's owner is not an id")));
    };
    Ok(match store.profile(owner)? {
        None => Err(format!(
            "a {kind} identifier is owned by {owner}, which is not a live profile"
        )),
        Some(p) if !p.identifiers.iter().any(|r| r.identifier.key() == key) => Err(format!(
            "a {kind} identifier is owned by {owner}, whose profile does not hold it"
        )),
        Some(_) => Ok(()),
    })
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
