//! The embedded store: one sled tree, with a one-byte prefix per kind of record.
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

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{FollowUpKey, Store, StoreError, StoreTx, TimelinePosition, WriteFn};
use crate::domain::{CustomerId, Identifier, IdentityEvent, Interaction, Profile, Suggestion};

const PROFILE: u8 = b'p';
const ALIAS: u8 = b'a';
const HISTORY: u8 = b'h';
const SUGGESTION: u8 = b'g';
const IDENTIFIER: u8 = b'i';
const TIMELINE: u8 = b't';
const SIGNAL: u8 = b's';
const SIGNALS_OF: u8 = b'c';
const CHANGE: u8 = b'x';
const CHANGES_OF: u8 = b'y';
const META: u8 = b'm';
const FOLLOW_UP: u8 = b'f';

/// One line of [`SledStore::stats`].
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RecordStats {
    pub kind: &'static str,
    pub records: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
}

fn kind_name(prefix: u8) -> &'static str {
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
        _ => "unknown",
    }
}

/// Keys and their new values (`None`: removed).
type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

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

fn key(prefix: u8, body: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + body.len());
    k.push(prefix);
    k.extend_from_slice(body);
    k
}

/// The smallest key greater than `k`: where a range strictly after it starts.
fn just_after(mut k: Vec<u8>) -> Vec<u8> {
    k.push(0);
    k
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

fn change_key(seq: u64) -> Vec<u8> {
    key(CHANGE, &seq.to_be_bytes())
}

fn changes_of_key(customer: CustomerId, seq: u64) -> Vec<u8> {
    let mut k = key(CHANGES_OF, &customer.to_key());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The position at the end of a change-log key (or its index's key).
fn change_seq(k: &[u8]) -> Result<u64, StoreError> {
    k.len()
        .checked_sub(8)
        .and_then(|at| <[u8; 8]>::try_from(&k[at..]).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            key: String::from_utf8_lossy(k).into_owned(),
            reason: "change key without a position".into(),
        })
}

fn suggestion_key(a: CustomerId, b: CustomerId) -> Vec<u8> {
    let mut k = key(SUGGESTION, &a.to_key());
    k.extend_from_slice(&b.to_key());
    k
}

fn decode<T: DeserializeOwned>(k: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Engine(format!("encoding failed: {e}")))
}

fn decode_id(k: &[u8], bytes: &[u8]) -> Result<CustomerId, StoreError> {
    CustomerId::from_key(bytes).ok_or_else(|| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: "not a customer id".into(),
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

    /// What the store holds, per kind of record: how many, and the bytes of
    /// their keys and values (the live data, before the engine's own
    /// overhead). Reads every record: seconds per million.
    pub fn stats(&self) -> Result<Vec<RecordStats>, StoreError> {
        let mut by_kind: BTreeMap<u8, RecordStats> = BTreeMap::new();
        for entry in self.tree.iter() {
            let (k, v) = entry.map_err(engine)?;
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

    /// Bytes the store's files take on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(engine)
    }

    fn get(&self, k: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.tree.get(k).map_err(engine)
    }
}

impl Store for SledStore {
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
        Ok(self
            .get(&key(SIGNAL, signal_id.as_bytes()))?
            .map(|v| v.to_vec()))
    }

    fn suggestions(&self, a: CustomerId) -> Result<Vec<(CustomerId, Suggestion)>, StoreError> {
        let prefix = key(SUGGESTION, &a.to_key());
        let mut out = Vec::new();
        for entry in self.tree.scan_prefix(&prefix) {
            let (k, v) = entry.map_err(engine)?;
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
        for entry in self.tree.range(start.clone()..end).rev().take(limit) {
            let (k, v) = entry.map_err(engine)?;
            let seq = k
                .get(start.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "history key without a position".into(),
                })?;
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
        let end = match before {
            Some(pos) => timeline_key(member, pos),
            None => timeline_key(
                member,
                TimelinePosition {
                    millis: u64::MAX,
                    seq: u64::MAX,
                },
            ),
        };
        let mut out = Vec::with_capacity(limit.min(64));
        for entry in self.tree.range(start..end).rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry.map_err(engine)?;
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
        for entry in self.tree.range(start..end).take(limit) {
            let (k, v) = entry.map_err(engine)?;
            out.push((change_seq(&k)?, v.to_vec()));
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
        let end = changes_of_key(customer, u64::MAX);
        let mut out = Vec::with_capacity(limit.min(256));
        for entry in self.tree.range(start..=end).take(limit) {
            let (k, _) = entry.map_err(engine)?;
            let seq = change_seq(&k)?;
            if let Some(v) = self.get(&change_key(seq))? {
                out.push((seq, v.to_vec()));
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
        for entry in self.tree.range(start..end).take(limit) {
            let (k, v) = entry.map_err(engine)?;
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
        for entry in self.tree.range(start..end).take(limit) {
            let (k, _) = entry.map_err(engine)?;
            let parsed = FollowUpKey::from_bytes(&k[1..]).ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "not a follow-up key".into(),
            })?;
            out.push(parsed);
        }
        Ok(out)
    }

    fn last_change(&self) -> Result<u64, StoreError> {
        let start = key(CHANGE, &[]);
        let end = key(CHANGE + 1, &[]);
        match self.tree.range(start..end).next_back() {
            Some(entry) => change_seq(&entry.map_err(engine)?.0),
            None => Ok(0),
        }
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(&key(META, name.as_bytes()))?.map(|v| v.to_vec()))
    }

    fn write(&self, op: &mut WriteFn<'_>) -> Result<(), StoreError> {
        let mut staged = self.staged();
        // Applied before this write runs, not after it is staged: should the
        // batch fail, this write has not happened (and says so), and what was
        // staged before stays staged for the flush, which then fails its group.
        if staged.len() >= MAX_STAGED {
            self.apply_staged(&mut staged)?;
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

    fn apply(&self) -> Result<(), StoreError> {
        self.apply_staged(&mut self.staged())
    }

    fn flush(&self) -> Result<usize, StoreError> {
        self.apply()?;
        self.db.flush().map_err(engine)
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.tree.get(b"ping").map(|_| ()).map_err(engine)
    }
}

impl SledStore {
    /// Applies everything staged in one batch; on failure it stays staged.
    fn apply_staged(&self, staged: &mut Changes) -> Result<(), StoreError> {
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

impl SledTx<'_> {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.get(k).or_else(|| self.staged.get(k)) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.store.get(k)?.map(|v| v.to_vec())),
        }
    }

    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.overlay.insert(k, Some(v));
    }

    fn remove(&mut self, k: Vec<u8>) {
        self.overlay.insert(k, None);
    }

    fn get_id(&self, k: Vec<u8>) -> Result<Option<CustomerId>, StoreError> {
        self.get(&k)?.map(|v| decode_id(&k, &v)).transpose()
    }

    /// Keys under `prefix` as stored, plus those staged or added by this
    /// write, minus those removed.
    fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = std::collections::BTreeSet::new();
        for entry in self.store.tree.scan_prefix(prefix).keys() {
            keys.insert(entry.map_err(engine)?.to_vec());
        }
        for layer in [self.staged, &self.overlay] {
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
}

impl StoreTx for SledTx<'_> {
    fn profile(&mut self, id: CustomerId) -> Result<Option<Profile>, StoreError> {
        let k = key(PROFILE, &id.to_key());
        self.get(&k)?.map(|v| decode(&k, &v)).transpose()
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
        self.get_id(key(ALIAS, &id.to_key()))
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
        let seq = self.next_sequence()?;
        let mut k = key(HISTORY, &customer.to_key());
        k.extend_from_slice(&seq.to_be_bytes());
        let v = encode(event)?;
        self.put(k, v);
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

    fn delete_history(&mut self, customer: CustomerId) -> Result<(), StoreError> {
        for k in self.keys_with_prefix(&key(HISTORY, &customer.to_key()))? {
            self.remove(k);
        }
        Ok(())
    }

    fn owner(&mut self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError> {
        self.get_id(key(IDENTIFIER, &identifier.key()))
    }

    fn set_owner(&mut self, identifier: &Identifier, owner: CustomerId) {
        self.put(key(IDENTIFIER, &identifier.key()), owner.to_key().to_vec());
    }

    fn remove_owner(&mut self, identifier: &Identifier) {
        self.remove(key(IDENTIFIER, &identifier.key()));
    }

    fn next_sequence(&mut self) -> Result<u64, StoreError> {
        self.store.db.generate_id().map_err(engine)
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

    fn delete_follow_up(&mut self, entry: &FollowUpKey) {
        self.remove(key(FOLLOW_UP, &entry.to_bytes()));
    }
}
