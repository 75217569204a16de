//! How records are laid out as ordered byte keys, and [`Store`] and
//! [`StoreTx`] written once over any engine that keeps such keys in order.
//!
//! Every kind of record has a one-byte prefix; customer ids are their 16
//! key bytes and numbers are big-endian, so a range of keys is a range of
//! records (a timeline newest first, the change log oldest first). Both
//! engines, sled and a SQL table of `bytea` keys, compare keys as raw bytes,
//! so the layout, and with it every query, is the same on both.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{BackupReader, FollowUpKeyBytes, Store, StoreError, StoreTx, WriteFn};
use crate::domain::{CustomerId, Identifier, IdentityEvent, Interaction, Profile, Suggestion};
use crate::domain::{FollowUpKey, TimelinePosition};

pub(super) const PROFILE: u8 = b'p';
pub(super) const ALIAS: u8 = b'a';
pub(super) const HISTORY: u8 = b'h';
pub(super) const SUGGESTION: u8 = b'g';
pub(super) const IDENTIFIER: u8 = b'i';
pub(super) const TIMELINE: u8 = b't';
pub(super) const SIGNAL: u8 = b's';
pub(super) const SIGNALS_OF: u8 = b'c';
pub(super) const CHANGE: u8 = b'x';
pub(super) const CHANGES_OF: u8 = b'y';
pub(super) const META: u8 = b'm';
pub(super) const FOLLOW_UP: u8 = b'f';
pub(super) const KEY_RECORD: u8 = b'k';
pub(super) const KEYS_BY_TIME: u8 = b'e';
pub(super) const KEYS_OF: u8 = b'r';

/// One line of a store's record statistics (`anamnesis store-stats`).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RecordStats {
    pub kind: &'static str,
    pub records: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
}

pub(super) fn kind_name(prefix: u8) -> &'static str {
    match prefix {
        PROFILE => "profiles",
        ALIAS => "merged ids",
        HISTORY => "identity ledger entries",
        SUGGESTION => "merge suggestions",
        IDENTIFIER => "identifier owners",
        TIMELINE => "interactions",
        SIGNAL => "signal records",
        SIGNALS_OF => "signal index",
        CHANGE => "change log",
        CHANGES_OF => "change index",
        META => "bookkeeping",
        FOLLOW_UP => "follow-ups due",
        KEY_RECORD => "idempotency keys",
        KEYS_BY_TIME => "idempotency key index",
        KEYS_OF => "idempotency keys per customer",
        _ => "unknown",
    }
}

/// What a stored key names, read back from its bytes (for `anamnesis
/// verify`, which checks every record and index against the others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    Profile(CustomerId),
    /// An absorbed id, pointing at the live profile that holds it.
    Alias(CustomerId),
    History(CustomerId, u64),
    Suggestion(CustomerId, CustomerId),
    /// The owner of an identifier (its index key, `type:value`).
    Owner(Vec<u8>),
    Timeline(CustomerId, TimelinePosition),
    Signal(String),
    /// A signal id recorded under the member whose profile it made.
    SignalOf(CustomerId, String),
    Change(u64),
    /// A change-log position indexed under one profile.
    ChangeOf(CustomerId, u64),
    Meta(String),
    FollowUp(FollowUpKey),
    /// The record of an `Idempotency-Key`, by the key's id.
    KeyRecord(Vec<u8>),
    /// A key record's entry in the time index (when it was made).
    KeyByTime(u64, Vec<u8>),
    /// A key record whose kept reply names this customer.
    KeyOf(CustomerId, Vec<u8>),
    /// A key of no known kind, or of a known kind but the wrong shape.
    Unknown,
}

fn id_at(body: &[u8], at: usize) -> Option<CustomerId> {
    CustomerId::from_key(body.get(at..at + 16)?)
}

fn u64_at(body: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(body.get(at..at + 8)?.try_into().ok()?))
}

/// Reads a stored key back; see [`RecordKey`].
pub fn parse_key(k: &[u8]) -> RecordKey {
    let (Some(&prefix), body) = (k.first(), k.get(1..).unwrap_or_default()) else {
        return RecordKey::Unknown;
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    let parsed = match prefix {
        PROFILE if body.len() == 16 => id_at(body, 0).map(RecordKey::Profile),
        ALIAS if body.len() == 16 => id_at(body, 0).map(RecordKey::Alias),
        HISTORY if body.len() == 24 => {
            id_at(body, 0).and_then(|id| Some(RecordKey::History(id, u64_at(body, 16)?)))
        }
        SUGGESTION if body.len() == 32 => {
            id_at(body, 0).and_then(|a| Some(RecordKey::Suggestion(a, id_at(body, 16)?)))
        }
        IDENTIFIER if !body.is_empty() => Some(RecordKey::Owner(body.to_vec())),
        TIMELINE if body.len() == 32 => id_at(body, 0).and_then(|id| {
            let pos = TimelinePosition {
                millis: u64_at(body, 16)?,
                seq: u64_at(body, 24)?,
            };
            Some(RecordKey::Timeline(id, pos))
        }),
        SIGNAL => text(body).map(RecordKey::Signal),
        SIGNALS_OF if body.len() > 16 => {
            id_at(body, 0).and_then(|id| Some(RecordKey::SignalOf(id, text(&body[16..])?)))
        }
        CHANGE if body.len() == 8 => u64_at(body, 0).map(RecordKey::Change),
        CHANGES_OF if body.len() == 24 => {
            id_at(body, 0).and_then(|id| Some(RecordKey::ChangeOf(id, u64_at(body, 16)?)))
        }
        META => text(body).map(RecordKey::Meta),
        FOLLOW_UP => FollowUpKey::from_bytes(body).map(RecordKey::FollowUp),
        KEY_RECORD if body.len() == 32 => Some(RecordKey::KeyRecord(body.to_vec())),
        KEYS_BY_TIME if body.len() == 40 => {
            u64_at(body, 0).map(|at| RecordKey::KeyByTime(at, body[8..].to_vec()))
        }
        KEYS_OF if body.len() == 48 => {
            id_at(body, 0).map(|id| RecordKey::KeyOf(id, body[16..].to_vec()))
        }
        _ => None,
    };
    parsed.unwrap_or(RecordKey::Unknown)
}

/// The name of the kind of record a key holds (as `anamnesis store-stats`
/// prints it).
pub fn kind_of(k: &[u8]) -> &'static str {
    kind_name(k.first().copied().unwrap_or(0))
}

/// Keys and their new values (`None`: removed).
pub(super) type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A key and its value, as an engine returns them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Entries of a range, lazily, in the order asked for.
pub(super) type Entries<'a> = Box<dyn Iterator<Item = Result<Entry, StoreError>> + 'a>;

pub(super) fn key(prefix: u8, body: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + body.len());
    k.push(prefix);
    k.extend_from_slice(body);
    k
}

/// The smallest key greater than `k`: where a range strictly after it starts.
pub(super) fn just_after(mut k: Vec<u8>) -> Vec<u8> {
    k.push(0);
    k
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Where a scan of the keys under `prefix` ends (every prefix here starts
/// with a kind's letter, so one exists).
pub(super) fn past_prefix(prefix: &[u8]) -> Vec<u8> {
    prefix_end(prefix).unwrap_or_else(|| vec![u8::MAX; prefix.len() + 1])
}

fn timeline_key(member: CustomerId, pos: TimelinePosition) -> Vec<u8> {
    let mut k = key(TIMELINE, &member.to_key());
    k.extend_from_slice(&pos.millis.to_be_bytes());
    k.extend_from_slice(&pos.seq.to_be_bytes());
    k
}

fn signals_of_key(customer: CustomerId, signal_id: &str) -> Vec<u8> {
    let mut k = key(SIGNALS_OF, &customer.to_key());
    k.extend_from_slice(signal_id.as_bytes());
    k
}

pub(super) fn change_key(seq: u64) -> Vec<u8> {
    key(CHANGE, &seq.to_be_bytes())
}

fn changes_of_key(customer: CustomerId, seq: u64) -> Vec<u8> {
    let mut k = key(CHANGES_OF, &customer.to_key());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn corrupt(k: &[u8], reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: reason.into(),
    }
}

/// The position at the end of a change-log key (or its index's key).
pub(super) fn change_seq(k: &[u8]) -> Result<u64, StoreError> {
    k.len()
        .checked_sub(8)
        .and_then(|at| <[u8; 8]>::try_from(&k[at..]).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(k, "change key without a position"))
}

fn keys_by_time_key(created_millis: u64, key_id: &[u8]) -> Vec<u8> {
    let mut k = key(KEYS_BY_TIME, &created_millis.to_be_bytes());
    k.extend_from_slice(key_id);
    k
}

fn keys_of_key(customer: CustomerId, key_id: &[u8]) -> Vec<u8> {
    let mut k = key(KEYS_OF, &customer.to_key());
    k.extend_from_slice(key_id);
    k
}

fn suggestion_key(a: CustomerId, b: CustomerId) -> Vec<u8> {
    let mut k = key(SUGGESTION, &a.to_key());
    k.extend_from_slice(&b.to_key());
    k
}

fn decode<T: DeserializeOwned>(k: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(k, e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Engine(format!("encoding failed: {e}")))
}

fn decode_id(k: &[u8], bytes: &[u8]) -> Result<CustomerId, StoreError> {
    CustomerId::from_key(bytes).ok_or_else(|| corrupt(k, "not a customer id"))
}

/// What an engine offers: an ordered map of byte keys, and writes made all
/// at once or not at all.
pub(super) trait Engine: Send + Sync + 'static {
    /// See [`Store::shared`].
    const SHARED: bool;

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The entries with `start <= key < end`, ascending, or descending when
    /// `descending`.
    fn range(&self, start: &[u8], end: &[u8], descending: bool) -> Entries<'_>;

    /// Runs `op` over a [`Staging`] of this engine; see [`Store::write`].
    fn run_write(&self, op: &mut WriteFn<'_>) -> Result<(), StoreError>;
    /// See [`Store::apply`].
    fn apply_staged(&self) -> Result<(), StoreError>;
    /// See [`Store::flush`].
    fn make_durable(&self) -> Result<usize, StoreError>;
    fn check(&self) -> Result<(), StoreError>;
    fn disk_bytes(&self) -> Result<u64, StoreError>;
    /// See [`Store::generation`].
    fn generation(&self) -> u64 {
        0
    }
    /// See [`Store::begin_backup`].
    fn backup(&self) -> Result<Box<dyn BackupReader>, StoreError> {
        Err(StoreError::Engine(
            "this engine is backed up with its own tools".into(),
        ))
    }

    /// The highest key below `end` and at or above `start`.
    fn last_in(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.range(start, end, true)
            .next()
            .transpose()
            .map(|e| e.map(|(k, _)| k))
    }
}

/// A write in progress on an engine: reads see the write's own changes.
pub(super) trait Staging {
    fn get(&mut self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&mut self, k: Vec<u8>, v: Vec<u8>);
    fn remove(&mut self, k: Vec<u8>);
    /// Keys under `prefix` as stored, plus those this write added, minus
    /// those it removed.
    fn keys_with_prefix(&mut self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError>;
    /// See [`StoreTx::next_sequence`].
    fn next_sequence(&mut self) -> Result<u64, StoreError>;
    /// See [`StoreTx::allocate_change`].
    fn allocate_change(&mut self) -> Result<Option<u64>, StoreError>;
}

/// Merges stored keys under `prefix` with layers of changes (later layers win).
pub(super) fn merge_keys(
    stored: impl IntoIterator<Item = Result<Vec<u8>, StoreError>>,
    layers: &[&Changes],
    prefix: &[u8],
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut keys = BTreeSet::new();
    for k in stored {
        keys.insert(k?);
    }
    for layer in layers {
        for (k, v) in layer.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(_) => keys.insert(k.clone()),
                None => keys.remove(k),
            };
        }
    }
    Ok(keys.into_iter().collect())
}

/// Every record of the store, grouped by kind (reads them all).
pub(super) fn stats<E: Engine>(engine: &E) -> Result<Vec<RecordStats>, StoreError> {
    let mut by_kind: BTreeMap<u8, RecordStats> = BTreeMap::new();
    for entry in engine.range(&[], &[u8::MAX], false) {
        let (k, v) = entry?;
        let prefix = k.first().copied().unwrap_or(0);
        let stats = by_kind.entry(prefix).or_insert_with(|| RecordStats {
            kind: kind_name(prefix),
            ..RecordStats::default()
        });
        stats.records += 1;
        stats.key_bytes += k.len() as u64;
        stats.value_bytes += v.len() as u64;
    }
    Ok(by_kind.into_values().collect())
}

impl<E: Engine> Store for E {
    fn shared(&self) -> bool {
        E::SHARED
    }

    fn profile(&self, id: CustomerId) -> Result<Option<Profile>, StoreError> {
        let k = key(PROFILE, &id.to_key());
        self.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    fn alias(&self, id: CustomerId) -> Result<Option<CustomerId>, StoreError> {
        let k = key(ALIAS, &id.to_key());
        self.get(&k)?.map(|v| decode_id(&k, &v)).transpose()
    }

    fn owner(&self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError> {
        let k = key(IDENTIFIER, &identifier.key());
        self.get(&k)?.map(|v| decode_id(&k, &v)).transpose()
    }

    fn signal_record(&self, signal_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(SIGNAL, signal_id.as_bytes()))
    }

    fn suggestions(&self, a: CustomerId) -> Result<Vec<(CustomerId, Suggestion)>, StoreError> {
        let prefix = key(SUGGESTION, &a.to_key());
        let mut out = Vec::new();
        for entry in self.range(&prefix, &past_prefix(&prefix), false) {
            let (k, v) = entry?;
            let other = decode_id(&k, &k[prefix.len()..])?;
            out.push((other, decode(&k, &v)?));
        }
        Ok(out)
    }

    fn history(
        &self,
        customer: CustomerId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, IdentityEvent)>, StoreError> {
        let start = key(HISTORY, &customer.to_key());
        let mut end = start.clone();
        end.extend_from_slice(&before.unwrap_or(u64::MAX).to_be_bytes());
        let mut out = Vec::with_capacity(limit.min(64));
        for entry in self.range(&start, &end, true).take(limit) {
            let (k, v) = entry?;
            let seq = k
                .get(start.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(&k, "history key without a position"))?;
            out.push((seq, decode(&k, &v)?));
        }
        Ok(out)
    }

    fn timeline(
        &self,
        member: CustomerId,
        before: Option<TimelinePosition>,
        limit: usize,
        keep: &dyn Fn(&Interaction) -> bool,
    ) -> Result<Vec<Interaction>, StoreError> {
        let start = key(TIMELINE, &member.to_key());
        let end = timeline_key(
            member,
            before.unwrap_or(TimelinePosition {
                millis: u64::MAX,
                seq: u64::MAX,
            }),
        );
        let mut out = Vec::with_capacity(limit.min(64));
        for entry in self.range(&start, &end, true) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry?;
            let interaction: Interaction = decode(&k, &v)?;
            if keep(&interaction) {
                out.push(interaction);
            }
        }
        Ok(out)
    }

    fn interaction(
        &self,
        member: CustomerId,
        pos: TimelinePosition,
    ) -> Result<Option<Interaction>, StoreError> {
        let k = timeline_key(member, pos);
        self.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    fn changes(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = change_key(after.saturating_add(1));
        let end = key(CHANGE + 1, &[]);
        let mut out = Vec::with_capacity(limit.min(256));
        if after == u64::MAX {
            return Ok(out);
        }
        for entry in self.range(&start, &end, false).take(limit) {
            let (k, v) = entry?;
            out.push((change_seq(&k)?, v));
        }
        Ok(out)
    }

    fn changes_of(
        &self,
        customer: CustomerId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = changes_of_key(customer, after.saturating_add(1));
        let end = just_after(changes_of_key(customer, u64::MAX));
        let mut out = Vec::with_capacity(limit.min(256));
        if after == u64::MAX {
            return Ok(out);
        }
        for entry in self.range(&start, &end, false) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry?;
            let seq = change_seq(&k)?;
            if let Some(v) = self.get(&change_key(seq))? {
                out.push((seq, v));
            }
        }
        Ok(out)
    }

    fn profiles_after(
        &self,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<Profile>, StoreError> {
        let start = match after {
            Some(id) => just_after(key(PROFILE, &id.to_key())),
            None => key(PROFILE, &[]),
        };
        let end = key(PROFILE + 1, &[]);
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in self.range(&start, &end, false).take(limit) {
            let (k, v) = entry?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    fn follow_ups(
        &self,
        after: Option<&FollowUpKey>,
        resolved_before: u64,
        limit: usize,
    ) -> Result<Vec<FollowUpKey>, StoreError> {
        let start = match after {
            Some(a) => just_after(key(FOLLOW_UP, &a.to_bytes())),
            None => key(FOLLOW_UP, &[]),
        };
        let end = key(FOLLOW_UP, &resolved_before.to_be_bytes());
        let mut out = Vec::with_capacity(limit.min(256));
        if start >= end {
            return Ok(out);
        }
        for entry in self.range(&start, &end, false).take(limit) {
            let (k, _) = entry?;
            let parsed = FollowUpKey::from_bytes(&k[1..])
                .ok_or_else(|| corrupt(&k, "not a follow-up key"))?;
            out.push(parsed);
        }
        Ok(out)
    }

    fn key_record(&self, key_id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(KEY_RECORD, key_id))
    }

    fn key_record_indexed(&self, created_millis: u64, key_id: &[u8]) -> Result<bool, StoreError> {
        Ok(self
            .get(&keys_by_time_key(created_millis, key_id))?
            .is_some())
    }

    fn key_records_before(
        &self,
        created_before: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = key(KEYS_BY_TIME, &[]);
        let end = key(KEYS_BY_TIME, &created_before.to_be_bytes());
        let mut out = Vec::new();
        for entry in self.range(&start, &end, false).take(limit) {
            let (k, _) = entry?;
            let millis = k
                .get(1..9)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(&k, "not an idempotency key index entry"))?;
            out.push((millis, k[9..].to_vec()));
        }
        Ok(out)
    }

    fn last_change(&self) -> Result<u64, StoreError> {
        match self.last_in(&key(CHANGE, &[]), &key(CHANGE + 1, &[]))? {
            Some(k) => change_seq(&k),
            None => Ok(0),
        }
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(META, name.as_bytes()))
    }

    fn write(&self, op: &mut WriteFn<'_>) -> Result<(), StoreError> {
        self.run_write(op)
    }

    fn apply(&self) -> Result<(), StoreError> {
        self.apply_staged()
    }

    fn flush(&self) -> Result<usize, StoreError> {
        self.make_durable()
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.check()
    }

    fn record_stats(&self) -> Result<Vec<RecordStats>, StoreError> {
        stats(self)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.disk_bytes()
    }

    fn generation(&self) -> u64 {
        Engine::generation(self)
    }

    fn begin_backup(&self) -> Result<Box<dyn BackupReader>, StoreError> {
        self.backup()
    }

    fn records_after(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let start = after.map(|k| just_after(k.to_vec())).unwrap_or_default();
        self.range(&start, &[u8::MAX; 2], false)
            .take(limit)
            .collect()
    }
}

fn get_id<S: Staging + ?Sized>(tx: &mut S, k: Vec<u8>) -> Result<Option<CustomerId>, StoreError> {
    tx.get(&k)?.map(|v| decode_id(&k, &v)).transpose()
}

impl<S: Staging> StoreTx for S {
    fn profile(&mut self, id: CustomerId) -> Result<Option<Profile>, StoreError> {
        let k = key(PROFILE, &id.to_key());
        self.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    fn profile_sized(&mut self, id: CustomerId) -> Result<Option<(Profile, usize)>, StoreError> {
        let k = key(PROFILE, &id.to_key());
        self.get(&k)?
            .map(|v| decode(&k, &v).map(|p| (p, v.len())))
            .transpose()
    }

    fn profile_bytes(&mut self, id: CustomerId) -> Result<usize, StoreError> {
        Ok(self
            .get(&key(PROFILE, &id.to_key()))?
            .map_or(0, |v| v.len()))
    }

    fn put_profile(&mut self, profile: &Profile) -> Result<(), StoreError> {
        let v = encode(profile)?;
        self.put(key(PROFILE, &profile.customer_id.to_key()), v);
        Ok(())
    }

    fn delete_profile(&mut self, id: CustomerId) {
        self.remove(key(PROFILE, &id.to_key()));
    }

    fn alias(&mut self, id: CustomerId) -> Result<Option<CustomerId>, StoreError> {
        get_id(self, key(ALIAS, &id.to_key()))
    }

    fn put_alias(&mut self, absorbed: CustomerId, survivor: CustomerId) {
        self.put(key(ALIAS, &absorbed.to_key()), survivor.to_key().to_vec());
    }

    fn delete_alias(&mut self, absorbed: CustomerId) {
        self.remove(key(ALIAS, &absorbed.to_key()));
    }

    fn add_history(
        &mut self,
        customer: CustomerId,
        event: &IdentityEvent,
    ) -> Result<(), StoreError> {
        let seq = Staging::next_sequence(self)?;
        let mut k = key(HISTORY, &customer.to_key());
        k.extend_from_slice(&seq.to_be_bytes());
        let v = encode(event)?;
        self.put(k, v);
        Ok(())
    }

    fn delete_history(&mut self, customer: CustomerId) -> Result<(), StoreError> {
        for k in self.keys_with_prefix(&key(HISTORY, &customer.to_key()))? {
            self.remove(k);
        }
        Ok(())
    }

    fn suggestion(
        &mut self,
        a: CustomerId,
        b: CustomerId,
    ) -> Result<Option<Suggestion>, StoreError> {
        let k = suggestion_key(a, b);
        self.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    fn put_suggestion(
        &mut self,
        a: CustomerId,
        b: CustomerId,
        s: &Suggestion,
    ) -> Result<(), StoreError> {
        let v = encode(s)?;
        self.put(suggestion_key(a, b), v.clone());
        self.put(suggestion_key(b, a), v);
        Ok(())
    }

    fn delete_suggestion(&mut self, a: CustomerId, b: CustomerId) {
        self.remove(suggestion_key(a, b));
        self.remove(suggestion_key(b, a));
    }

    fn delete_suggestions_of(&mut self, a: CustomerId) -> Result<(), StoreError> {
        let prefix = key(SUGGESTION, &a.to_key());
        for k in self.keys_with_prefix(&prefix)? {
            if let Some(b) = CustomerId::from_key(&k[prefix.len()..]) {
                self.remove(suggestion_key(b, a));
            }
            self.remove(k);
        }
        Ok(())
    }

    fn owner(&mut self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError> {
        get_id(self, key(IDENTIFIER, &identifier.key()))
    }

    fn set_owner(&mut self, identifier: &Identifier, owner: CustomerId) {
        self.put(key(IDENTIFIER, &identifier.key()), owner.to_key().to_vec());
    }

    fn remove_owner(&mut self, identifier: &Identifier) {
        self.remove(key(IDENTIFIER, &identifier.key()));
    }

    fn next_sequence(&mut self) -> Result<u64, StoreError> {
        Staging::next_sequence(self)
    }

    fn add_interaction(
        &mut self,
        member: CustomerId,
        interaction: &Interaction,
    ) -> Result<(), StoreError> {
        let pos = TimelinePosition::from_id(&interaction.id).ok_or_else(|| {
            StoreError::Engine(format!("interaction id `{}` is malformed", interaction.id))
        })?;
        let v = encode(interaction)?;
        self.put(timeline_key(member, pos), v);
        Ok(())
    }

    fn delete_timeline(&mut self, member: CustomerId) -> Result<(), StoreError> {
        for k in self.keys_with_prefix(&key(TIMELINE, &member.to_key()))? {
            self.remove(k);
        }
        Ok(())
    }

    fn signal_record(&mut self, signal_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(SIGNAL, signal_id.as_bytes()))
    }

    fn put_signal_record(&mut self, signal_id: &str, customer: CustomerId, record: Vec<u8>) {
        self.put(key(SIGNAL, signal_id.as_bytes()), record);
        self.put(signals_of_key(customer, signal_id), Vec::new());
    }

    fn signal_ids_of(&mut self, customer: CustomerId) -> Result<Vec<String>, StoreError> {
        let prefix = key(SIGNALS_OF, &customer.to_key());
        Ok(self
            .keys_with_prefix(&prefix)?
            .into_iter()
            .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect())
    }

    fn forget_signal_index(&mut self, customer: CustomerId, signal_id: &str) {
        self.remove(signals_of_key(customer, signal_id));
    }

    fn allocate_change(&mut self) -> Result<Option<u64>, StoreError> {
        Staging::allocate_change(self)
    }

    fn put_change(&mut self, seq: u64, customer: CustomerId, record: Vec<u8>) {
        self.put(change_key(seq), record);
        self.put(changes_of_key(customer, seq), Vec::new());
    }

    fn delete_change(&mut self, seq: u64, customer: CustomerId) {
        self.remove(change_key(seq));
        self.remove(changes_of_key(customer, seq));
    }

    fn meta(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(META, name.as_bytes()))
    }

    fn put_meta(&mut self, name: &str, value: Vec<u8>) {
        self.put(key(META, name.as_bytes()), value);
    }

    fn put_follow_up(&mut self, entry: &FollowUpKey) {
        self.put(key(FOLLOW_UP, &entry.to_bytes()), Vec::new());
    }

    fn key_record(&mut self, key_id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(KEY_RECORD, key_id))
    }

    fn put_key_record(&mut self, key_id: &[u8], created_millis: u64, record: Vec<u8>) {
        self.put(key(KEY_RECORD, key_id), record);
        self.put(keys_by_time_key(created_millis, key_id), Vec::new());
    }

    fn delete_key_record(&mut self, key_id: &[u8], created_millis: u64) {
        self.remove(key(KEY_RECORD, key_id));
        self.remove(keys_by_time_key(created_millis, key_id));
    }

    fn index_key_record(&mut self, customer: CustomerId, key_id: &[u8]) {
        self.put(keys_of_key(customer, key_id), Vec::new());
    }

    fn key_records_of(&mut self, customer: CustomerId) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = key(KEYS_OF, &customer.to_key());
        let keys = self.keys_with_prefix(&prefix)?;
        for k in &keys {
            self.remove(k.clone());
        }
        Ok(keys
            .into_iter()
            .map(|k| k[prefix.len()..].to_vec())
            .collect())
    }

    fn unindex_key_record(&mut self, customer: CustomerId, key_id: &[u8]) {
        self.remove(keys_of_key(customer, key_id));
    }

    fn delete_follow_up(&mut self, entry: &FollowUpKey) {
        self.remove(key(FOLLOW_UP, &entry.to_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_past_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
