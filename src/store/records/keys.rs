//! The key of each kind of record: a one-byte prefix, then customer ids
//! as their 16 key bytes and numbers big-endian, so that a range of keys is
//! a range of records; and a key read back into what it names.

use super::corrupt;
use crate::domain::{CustomerId, FollowUpKey, TimelinePosition};
use crate::store::{FollowUpKeyBytes, StoreError};

pub(in crate::store) const PROFILE: u8 = b'p';
pub(in crate::store) const ALIAS: u8 = b'a';
pub(in crate::store) const HISTORY: u8 = b'h';
pub(in crate::store) const SUGGESTION: u8 = b'g';
pub(in crate::store) const IDENTIFIER: u8 = b'i';
pub(in crate::store) const TIMELINE: u8 = b't';
pub(in crate::store) const SIGNAL: u8 = b's';
pub(in crate::store) const SIGNALS_OF: u8 = b'c';
pub(in crate::store) const CHANGE: u8 = b'x';
pub(in crate::store) const CHANGES_OF: u8 = b'y';
pub(in crate::store) const META: u8 = b'm';
pub(in crate::store) const FOLLOW_UP: u8 = b'f';
pub(in crate::store) const KEY_RECORD: u8 = b'k';
pub(in crate::store) const KEYS_BY_TIME: u8 = b'e';
pub(in crate::store) const KEYS_OF: u8 = b'r';

pub(in crate::store) fn kind_name(prefix: u8) -> &'static str {
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

pub(in crate::store) fn key(prefix: u8, body: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + body.len());
    k.push(prefix);
    k.extend_from_slice(body);
    k
}

/// The smallest key greater than `k`: where a range strictly after it starts.
pub(in crate::store) fn just_after(mut k: Vec<u8>) -> Vec<u8> {
    k.push(0);
    k
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub(in crate::store) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
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
pub(in crate::store) fn past_prefix(prefix: &[u8]) -> Vec<u8> {
    prefix_end(prefix).unwrap_or_else(|| vec![u8::MAX; prefix.len() + 1])
}

pub(super) fn timeline_key(member: CustomerId, pos: TimelinePosition) -> Vec<u8> {
    let mut k = key(TIMELINE, &member.to_key());
    k.extend_from_slice(&pos.millis.to_be_bytes());
    k.extend_from_slice(&pos.seq.to_be_bytes());
    k
}

pub(super) fn signals_of_key(customer: CustomerId, signal_id: &str) -> Vec<u8> {
    let mut k = key(SIGNALS_OF, &customer.to_key());
    k.extend_from_slice(signal_id.as_bytes());
    k
}

pub(in crate::store) fn change_key(seq: u64) -> Vec<u8> {
    key(CHANGE, &seq.to_be_bytes())
}

pub(super) fn changes_of_key(customer: CustomerId, seq: u64) -> Vec<u8> {
    let mut k = key(CHANGES_OF, &customer.to_key());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// A change-log key (or its index's key) at a provisional position (see
/// [`PROVISIONAL`](crate::store::PROVISIONAL)), at the real position
/// `positions[i]` instead, with `i`; `None` for any other key.
pub(in crate::store) fn renumbered_change(k: &[u8], positions: &[u64]) -> Option<(Vec<u8>, usize)> {
    if !matches!(k.first(), Some(&CHANGE) | Some(&CHANGES_OF)) {
        return None;
    }
    let seq = change_seq(k).ok()?;
    let i = usize::try_from(seq.checked_sub(crate::store::PROVISIONAL)?).ok()?;
    let real = positions.get(i)?;
    let mut renumbered = k[..k.len() - 8].to_vec();
    renumbered.extend_from_slice(&real.to_be_bytes());
    Some((renumbered, i))
}

/// The position at the end of a change-log key (or its index's key).
pub(in crate::store) fn change_seq(k: &[u8]) -> Result<u64, StoreError> {
    k.len()
        .checked_sub(8)
        .and_then(|at| <[u8; 8]>::try_from(&k[at..]).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(k, "change key without a position"))
}

pub(super) fn keys_by_time_key(created_millis: u64, key_id: &[u8]) -> Vec<u8> {
    let mut k = key(KEYS_BY_TIME, &created_millis.to_be_bytes());
    k.extend_from_slice(key_id);
    k
}

pub(super) fn keys_of_key(customer: CustomerId, key_id: &[u8]) -> Vec<u8> {
    let mut k = key(KEYS_OF, &customer.to_key());
    k.extend_from_slice(key_id);
    k
}

pub(super) fn suggestion_key(a: CustomerId, b: CustomerId) -> Vec<u8> {
    let mut k = key(SUGGESTION, &a.to_key());
    k.extend_from_slice(&b.to_key());
    k
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
