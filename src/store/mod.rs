//! The durable store behind a trait. Nothing above this module knows which
//! engine keeps the data; [`sled`](self::sled) is the embedded default.
//!
//! The write side assumes a single writer: every change goes through
//! [`Store::write`] from the committer thread (`service::committer`), which is
//! what makes resolution race-free without locks. Reads may come from any
//! thread; they see a write once the committer applied its group.

pub mod backup;
pub mod copy;
mod open;
mod postgres;
mod records;
mod signal_record;
mod sled;

pub use self::open::open;
pub use self::postgres::{migrate, PgOptions, PgStore, SCHEMA_VERSION};
pub use self::records::{kind_of, parse_key, Entry, RecordKey, RecordStats};
pub use self::signal_record::{
    SignalRecord, StoredConflict, StoredIgnored, StoredLeftOut, StoredResult,
};
pub use self::sled::{SledStore, SEQUENCE_BASE};

use crate::domain::{
    Change, CustomerId, FollowUpKey, Identifier, IdentityEvent, Interaction, Profile, Suggestion,
    TimelinePosition,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine failed: {0}")]
    Engine(String),
    #[error("stored record `{key}` could not be decoded: {reason}")]
    Corrupt { key: String, reason: String },
    /// Another writer changed what a group of writes read, so it was not
    /// committed: nothing of it happened, and running it again may succeed.
    #[error("conflict with another writer: {0}")]
    Conflict(String),
}

/// Change-log positions from this one up are provisional: on an engine
/// that takes the real positions at COMMIT (see
/// [`StoreTx::allocate_change`]), the `i`-th taken by a group is
/// `PROVISIONAL + i` until [`Store::flush`] returns, and
/// [`Store::positions`] says what each became.
pub const PROVISIONAL: u64 = 1 << 62;

/// The follow-up index's key bytes: the time, the customer, the episode id,
/// so that "due before" is a range of keys.
pub trait FollowUpKeyBytes: Sized {
    fn to_bytes(&self) -> Vec<u8>;
    fn from_bytes(bytes: &[u8]) -> Option<Self>;
}

impl FollowUpKeyBytes for FollowUpKey {
    fn to_bytes(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(24 + self.episode.len());
        k.extend_from_slice(&self.resolved_millis.to_be_bytes());
        k.extend_from_slice(&self.customer.to_key());
        k.extend_from_slice(self.episode.as_bytes());
        k
    }

    fn from_bytes(bytes: &[u8]) -> Option<FollowUpKey> {
        let millis = <[u8; 8]>::try_from(bytes.get(..8)?).ok()?;
        let customer = CustomerId::from_key(bytes.get(8..24)?)?;
        let episode = std::str::from_utf8(bytes.get(24..)?).ok()?;
        if episode.is_empty() {
            return None;
        }
        Some(FollowUpKey {
            resolved_millis: u64::from_be_bytes(millis),
            customer,
            episode: episode.to_owned(),
        })
    }
}

/// The changes of one use case, applied all together or not at all.
pub trait StoreTx {
    fn profile(&mut self, id: CustomerId) -> Result<Option<Profile>, StoreError>;
    /// The profile and the bytes it takes as stored, from one read.
    fn profile_sized(&mut self, id: CustomerId) -> Result<Option<(Profile, usize)>, StoreError>;
    /// The bytes `id`'s profile takes as stored (0: none): what the
    /// per-profile size cap is judged on.
    fn profile_bytes(&mut self, id: CustomerId) -> Result<usize, StoreError>;
    fn put_profile(&mut self, profile: &Profile) -> Result<(), StoreError>;
    fn delete_profile(&mut self, id: CustomerId);

    /// The live profile an absorbed id now belongs to.
    fn alias(&mut self, id: CustomerId) -> Result<Option<CustomerId>, StoreError>;
    fn put_alias(&mut self, absorbed: CustomerId, survivor: CustomerId);
    fn delete_alias(&mut self, absorbed: CustomerId);

    /// Appends to `customer`'s identity ledger.
    fn add_history(
        &mut self,
        customer: CustomerId,
        event: &IdentityEvent,
    ) -> Result<(), StoreError>;
    /// Removes `customer`'s whole ledger (erasure).
    fn delete_history(&mut self, customer: CustomerId) -> Result<(), StoreError>;

    /// The merge suggestion between `a` and `b`, stored under both.
    fn suggestion(
        &mut self,
        a: CustomerId,
        b: CustomerId,
    ) -> Result<Option<Suggestion>, StoreError>;
    fn put_suggestion(
        &mut self,
        a: CustomerId,
        b: CustomerId,
        s: &Suggestion,
    ) -> Result<(), StoreError>;
    fn delete_suggestion(&mut self, a: CustomerId, b: CustomerId);
    /// Removes every suggestion involving `a` (erasure).
    fn delete_suggestions_of(&mut self, a: CustomerId) -> Result<(), StoreError>;

    fn owner(&mut self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError>;
    fn set_owner(&mut self, identifier: &Identifier, owner: CustomerId);
    fn remove_owner(&mut self, identifier: &Identifier);

    /// A number never handed out before, for ordering interactions.
    fn next_sequence(&mut self) -> Result<u64, StoreError>;
    /// Stores an interaction under `member`'s timeline at the position its id encodes.
    fn add_interaction(
        &mut self,
        member: CustomerId,
        interaction: &Interaction,
    ) -> Result<(), StoreError>;
    /// Removes every interaction stored under `member`.
    fn delete_timeline(&mut self, member: CustomerId) -> Result<(), StoreError>;

    /// The first result of a signal, by its `signal_id`, in the service's encoding.
    fn signal_record(&mut self, signal_id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_signal_record(&mut self, signal_id: &str, customer: CustomerId, record: Vec<u8>);
    /// The signal ids recorded for `customer` (for erasure).
    fn signal_ids_of(&mut self, customer: CustomerId) -> Result<Vec<String>, StoreError>;
    fn forget_signal_index(&mut self, customer: CustomerId, signal_id: &str);

    /// A change-log position for this write, when the engine numbers changes
    /// itself: an engine that several processes write to hands out
    /// positions inside the transaction, so they follow the commit order.
    /// `None`: the engine has one writer, which numbers them (the committer).
    fn allocate_change(&mut self) -> Result<Option<u64>, StoreError>;
    /// Appends a record to the change log at `seq`, indexed under `customer`
    /// too (for one profile's event stream).
    fn put_change(&mut self, seq: u64, customer: CustomerId, record: Vec<u8>);
    /// Removes a change-log record and its index entry under `customer`
    /// (retention); an empty position has none.
    fn delete_change(&mut self, seq: u64, customer: Option<CustomerId>);
    /// A small named value of the service's own bookkeeping.
    fn meta(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_meta(&mut self, name: &str, value: Vec<u8>);

    fn put_follow_up(&mut self, entry: &FollowUpKey);
    fn delete_follow_up(&mut self, entry: &FollowUpKey);

    /// The record of an `Idempotency-Key` (by the key's id, see
    /// `service::idempotency`), in the service's encoding.
    fn key_record(&mut self, key_id: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores it, indexed by when it was first made (for retention).
    fn put_key_record(&mut self, key_id: &[u8], created_millis: u64, record: Vec<u8>);
    fn delete_key_record(&mut self, key_id: &[u8], created_millis: u64);
    /// Notes that the stored reply of `key_id` speaks of `customer` (so an
    /// erasure finds it).
    fn index_key_record(&mut self, customer: CustomerId, key_id: &[u8]);
    fn unindex_key_record(&mut self, customer: CustomerId, key_id: &[u8]);
    /// The keys whose replies speak of `customer`, taken out of that index.
    fn key_records_of(&mut self, customer: CustomerId) -> Result<Vec<Vec<u8>>, StoreError>;
}

/// A consistent copy of every record as it was at one moment (the backup
/// point), read a batch at a time while writes go on (see
/// [`Store::begin_backup`]). Dropping it ends the backup.
pub trait BackupReader: Send {
    /// The next records in key order, at most about `max` of them (maybe
    /// none); `None` once every record was read.
    fn next_records(&mut self, max: usize) -> Result<Option<Vec<Entry>>, StoreError>;

    /// A number above every sequence number the copy holds (see
    /// [`StoreTx::next_sequence`]): a store restored from the copy numbers
    /// on from here.
    fn sequences_below(&self) -> u64;
}

/// A use case run by [`Store::write`]. Returning `false` discards every change it made.
pub type WriteFn<'a> = dyn FnMut(&mut dyn StoreTx) -> bool + 'a;

pub trait Store: Send + Sync + 'static {
    /// Whether other instances write this store too: their changes then
    /// reach this one through the change log, and the store is backed up
    /// with its own tools, not by the service.
    fn shared(&self) -> bool;

    fn profile(&self, id: CustomerId) -> Result<Option<Profile>, StoreError>;
    fn alias(&self, id: CustomerId) -> Result<Option<CustomerId>, StoreError>;
    fn owner(&self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError>;
    fn signal_record(&self, signal_id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every suggestion stored under `a`, with the other profile's id as stored.
    fn suggestions(&self, a: CustomerId) -> Result<Vec<(CustomerId, Suggestion)>, StoreError>;

    /// Up to `limit` ledger entries of `customer`, newest first, strictly
    /// older than `before`, each with its position.
    fn history(
        &self,
        customer: CustomerId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, IdentityEvent)>, StoreError>;

    /// Up to `limit` interactions of one member's timeline, newest first,
    /// strictly older than `before`, that `keep` accepts.
    fn timeline(
        &self,
        member: CustomerId,
        before: Option<TimelinePosition>,
        limit: usize,
        keep: &dyn Fn(&Interaction) -> bool,
    ) -> Result<Vec<Interaction>, StoreError>;

    /// The interaction stored under `member` at exactly `pos`.
    fn interaction(
        &self,
        member: CustomerId,
        pos: TimelinePosition,
    ) -> Result<Option<Interaction>, StoreError>;

    /// Up to `limit` change-log records with a position above `after`, oldest first.
    fn changes(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// Like [`Store::changes`], only those indexed under `customer`.
    fn changes_of(
        &self,
        customer: CustomerId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// The highest change-log position ever written (0: none).
    fn last_change(&self) -> Result<u64, StoreError>;

    /// A small named value of the service's own bookkeeping.
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` live profiles with an id above `after`, in id order.
    fn profiles_after(
        &self,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<Profile>, StoreError>;

    /// Up to `limit` follow-up entries after `after` (in key order) resolved
    /// before `resolved_before` (milliseconds), oldest first.
    fn follow_ups(
        &self,
        after: Option<&FollowUpKey>,
        resolved_before: u64,
        limit: usize,
    ) -> Result<Vec<FollowUpKey>, StoreError>;

    /// The record of an `Idempotency-Key`, as last applied.
    fn key_record(&self, key_id: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Whether the time index holds `key_id` at `created_millis`.
    fn key_record_indexed(&self, created_millis: u64, key_id: &[u8]) -> Result<bool, StoreError>;

    /// Up to `limit` key records made before `created_before`
    /// (milliseconds), oldest first: (when made, key id).
    fn key_records_before(
        &self,
        created_before: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// Runs `op` and stages its changes if it returns `true` (all of them,
    /// or none). Later writes see them; readers see them after
    /// [`Store::apply`] or [`Store::flush`] at the latest (an engine may
    /// apply staged writes earlier, whole writes at a time).
    fn write(&self, op: &mut WriteFn<'_>) -> Result<(), StoreError>;

    /// Applies every staged write in one atomic batch, visible to readers
    /// but not yet durable. On failure they stay staged.
    fn apply(&self) -> Result<(), StoreError>;

    /// Applies every staged write and makes everything applied durable;
    /// returns the bytes written.
    fn flush(&self) -> Result<usize, StoreError>;

    /// Makes the writes up to the next [`Store::flush`] (or
    /// [`Store::apply`]) one group: on an engine that several processes
    /// write, one transaction, all of it committed or none of it. Returns
    /// whether a group that fails is gone entirely (then the writer may
    /// run it again, on [`StoreError::Conflict`]); `false` on an engine
    /// that keeps failed writes staged for the next flush, and groups
    /// anyway.
    fn begin_group(&self) -> bool;

    /// The real change-log positions of the last group's provisional ones
    /// ([`PROVISIONAL`] `+ i` became the `i`-th); empty on an engine whose
    /// writer numbers changes itself.
    fn positions(&self) -> Vec<u64>;

    /// A cheap check that the engine answers and takes writes (for
    /// `/readyz`); the error says why not.
    fn ping(&self) -> Result<(), StoreError>;

    /// Moves on each time the engine replaced its open database after a
    /// failure (see [`sled`](self::sled)): writes it had applied but not made
    /// durable may be gone, so whatever was read before (caches, changes
    /// kept for the next group) is not to be trusted. Always 0 for an engine
    /// that never replaces itself.
    fn generation(&self) -> u64;

    /// Starts a backup: a copy of every record as it is now, which the
    /// returned reader yields while later writes go on. Call it on the
    /// single writer with nothing staged (right after [`Store::flush`]);
    /// one at a time. Engines that are backed up by other means refuse.
    fn begin_backup(&self) -> Result<Box<dyn BackupReader>, StoreError>;

    /// Up to `limit` records, every kind, in key order, with a key above
    /// `after` (from the first when `None`): keys and values as stored.
    fn records_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<records::Entry>, StoreError>;

    /// What the store holds, per kind of record: how many, and the bytes of
    /// their keys and values (reads every record: seconds per million).
    fn record_stats(&self) -> Result<Vec<RecordStats>, StoreError>;

    /// Bytes the store takes on disk (for the database backend, its table
    /// and index as the database counts them).
    fn size_on_disk(&self) -> Result<u64, StoreError>;
}

/// A change-log entry as the log keeps it.
pub fn encode_change(change: &Change) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(change).map_err(|e| StoreError::Engine(format!("encoding failed: {e}")))
}

/// The change-log entry at `seq`, read back; `None` for a position taken
/// with nothing to tell (an empty record, see `store::postgres`). The
/// position is the key's: on a shared store the copy inside the record is
/// the provisional one the writer knew.
pub fn decode_change(seq: u64, bytes: &[u8]) -> Result<Option<Change>, StoreError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let mut change: Change = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: format!("change {seq}"),
        reason: e.to_string(),
    })?;
    change.seq = seq;
    Ok(Some(change))
}
