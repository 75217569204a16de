//! How records are laid out as ordered byte keys, and [`Store`] and
//! [`StoreTx`] written once over any engine that keeps such keys in order.
//!
//! Every kind of record has a one-byte prefix; customer ids are their 16
//! key bytes and numbers are big-endian, so a range of keys is a range of
//! records (a timeline newest first, the change log oldest first). Both
//! engines, sled and a SQL table of `bytea` keys, compare keys as raw bytes,
//! so the layout, and with it every query, is the same on both.
//!
//! # Layout
//!
//! - [`keys`]: the key of each kind of record, and reading a key back.
//! - [`read`]: [`Store`] over any [`Engine`]: every read, by key or by range.
//! - [`write`](mod@write): [`StoreTx`] over any [`Staging`]: every change a
//!   use case makes, as keys put and removed.
//!
//! [`Store`]: super::Store
//! [`StoreTx`]: super::StoreTx

mod keys;
mod read;
mod write;

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub(super) use self::keys::{
    change_key, change_seq, just_after, key, kind_name, past_prefix, renumbered_change, CHANGE,
    META,
};
pub use self::keys::{kind_of, parse_key, RecordKey};
use super::{BackupReader, StoreError, WriteFn};
use crate::domain::CustomerId;

/// One line of a store's record statistics (`anamnesis store-stats`).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RecordStats {
    pub kind: &'static str,
    pub records: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
}

/// Keys and their new values (`None`: removed).
pub(super) type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A key and its value, as an engine returns them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Entries of a range, lazily, in the order asked for.
pub(super) type Entries<'a> = Box<dyn Iterator<Item = Result<Entry, StoreError>> + 'a>;

fn corrupt(k: &[u8], reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: reason.into(),
    }
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
    /// See [`Store::shared`](super::Store::shared).
    const SHARED: bool;

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The entries with `start <= key < end`, ascending, or descending when
    /// `descending`.
    fn range(&self, start: &[u8], end: &[u8], descending: bool) -> Entries<'_>;

    /// Runs `op` over a [`Staging`] of this engine; see
    /// [`Store::write`](super::Store::write).
    fn run_write(&self, op: &mut WriteFn<'_>) -> Result<(), StoreError>;
    /// See [`Store::apply`](super::Store::apply).
    fn apply_staged(&self) -> Result<(), StoreError>;
    /// See [`Store::flush`](super::Store::flush).
    fn make_durable(&self) -> Result<usize, StoreError>;
    fn check(&self) -> Result<(), StoreError>;
    fn disk_bytes(&self) -> Result<u64, StoreError>;
    /// See [`Store::generation`](super::Store::generation).
    fn generation(&self) -> u64 {
        0
    }
    /// See [`Store::begin_group`](super::Store::begin_group).
    fn group(&self) -> bool {
        false
    }
    /// See [`Store::positions`](super::Store::positions).
    fn group_positions(&self) -> Vec<u64> {
        Vec::new()
    }
    /// See [`Store::begin_backup`](super::Store::begin_backup).
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
    /// See [`StoreTx::next_sequence`](super::StoreTx::next_sequence).
    fn next_sequence(&mut self) -> Result<u64, StoreError>;
    /// See [`StoreTx::allocate_change`](super::StoreTx::allocate_change).
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
