//! `Idempotency-Key` on every write: a client that retries after a time-out
//! never applies a write twice.
//!
//! A key belongs to the token's subject. Its record holds a fingerprint of
//! the request it was first used with (method, path and body), when that
//! was, and the reply once the write was answered. The record is written in
//! the same atomic write as the effect (the committer hands the key to
//! every write of the job, see [`Keyed`]), so no crash can leave an effect
//! without its key, or a key without its effect: a retry either finds the
//! key, and does nothing, or finds nothing, and the first attempt did
//! nothing either. The reply is kept by a second write right after; should
//! the process die in between, a retry is told the key was used and its
//! answer lost (`409 idempotency_key_used`), never applied again.
//!
//! A reply that names a customer is indexed under that customer, and erasing
//! the customer drops the reply (the key stays used: a retry gets `410`).
//! Records are kept `idempotency.retention_secs` (a day by default), then
//! removed with the change log's pruning.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::committer::Writer;
use super::{atomically, ServiceError, Services};
use crate::domain::CustomerId;
use crate::store::{Store, StoreError, StoreTx};

/// A key as the write that carries it knows it: handed to the committer
/// through [`KEYED`], and by the committer to every write of the job.
#[derive(Debug, Clone)]
pub struct Keyed {
    /// The key's id: a hash of the subject and the key, so the record
    /// names neither.
    pub id: [u8; 32],
    /// What the request was: method, path and body, hashed.
    pub fingerprint: String,
    /// When the key was first used, in milliseconds.
    pub created_millis: u64,
    /// A later job of the same request (a batch goes in chunks): the key
    /// was recorded by its first job, and is recorded again, not checked.
    pub continuing: bool,
}

tokio::task_local! {
    /// The key of the write this task is making, if it carries one.
    pub static KEYED: Keyed;
}

/// What is kept of a key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    pub fingerprint: String,
    pub created_millis: u64,
    /// The answer the first request got; `None` until it is kept, or
    /// after the customer it spoke of was erased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
    /// The customers the reply named (for erasure).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub customers: Vec<CustomerId>,
    /// The reply was dropped because its customer was erased.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
}

/// A kept answer: status and JSON body (empty for `204`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl KeyRecord {
    pub fn decode(bytes: &[u8]) -> Result<KeyRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            key: "idempotency key".into(),
            reason: e.to_string(),
        })
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a key record serialises")
    }
}

/// The id of `key` as used by `subject`.
pub fn key_id(subject: &str, key: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(subject.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    h.finalize().into()
}

/// The fingerprint of a request: method, path with query, and body.
pub fn fingerprint(method: &str, path_and_query: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path_and_query.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// On the committer, before a keyed job runs: the key's record as this
/// group sees it (written by an earlier job of the group included).
pub(super) fn recorded(writer: &Writer<'_>, key: &Keyed) -> Result<Option<Vec<u8>>, ServiceError> {
    let mut found = None;
    let mut failed = None;
    writer.store.write(&mut |tx| {
        match tx.key_record(&key.id) {
            Ok(r) => found = r,
            Err(e) => failed = Some(e),
        }
        false
    })?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(found),
    }
}

/// In the write that makes the effect: the key is used.
pub(super) fn mark(tx: &mut dyn StoreTx, key: &Keyed) {
    let record = KeyRecord {
        fingerprint: key.fingerprint.clone(),
        created_millis: key.created_millis,
        reply: None,
        customers: Vec::new(),
        erased: false,
    };
    tx.put_key_record(&key.id, key.created_millis, record.encode());
}

/// Keeps the reply of a key already marked, indexed under the customers
/// it names.
pub(super) fn keep_reply(
    tx: &mut dyn StoreTx,
    key: &Keyed,
    reply: Reply,
    customers: Vec<CustomerId>,
) -> Result<(), ServiceError> {
    let Some(bytes) = tx.key_record(&key.id)? else {
        return Ok(());
    };
    let mut record = KeyRecord::decode(&bytes)?;
    if record.fingerprint != key.fingerprint {
        return Ok(());
    }
    for c in &customers {
        tx.index_key_record(*c, &key.id);
    }
    record.reply = Some(reply);
    record.customers = customers;
    tx.put_key_record(&key.id, record.created_millis, record.encode());
    Ok(())
}

/// In an erasure: drops the replies that speak of `member`.
pub(super) fn forget_replies(tx: &mut dyn StoreTx, member: CustomerId) -> Result<(), ServiceError> {
    for key_id in tx.key_records_of(member)? {
        let Some(bytes) = tx.key_record(&key_id)? else {
            continue;
        };
        let mut record = KeyRecord::decode(&bytes)?;
        for other in record.customers.iter().filter(|c| **c != member) {
            tx.unindex_key_record(*other, &key_id);
        }
        record.reply = None;
        record.customers.clear();
        record.erased = true;
        tx.put_key_record(&key_id, record.created_millis, record.encode());
    }
    Ok(())
}

/// Removes up to `limit` key records made before `cutoff_millis`; returns
/// how many. Runs on the committer, between groups.
pub(super) fn prune(
    writer: &Writer<'_>,
    cutoff_millis: u64,
    limit: usize,
) -> Result<usize, ServiceError> {
    let old = writer.store.key_records_before(cutoff_millis, limit)?;
    if old.is_empty() {
        return Ok(0);
    }
    let mut failed = None;
    writer.store.write(&mut |tx| {
        for (created, key_id) in &old {
            let customers = match tx.key_record(key_id) {
                Ok(Some(bytes)) => KeyRecord::decode(&bytes)
                    .map(|r| r.customers)
                    .unwrap_or_default(),
                Ok(None) => Vec::new(),
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            };
            for c in customers {
                tx.unindex_key_record(c, key_id);
            }
            tx.delete_key_record(key_id, *created);
        }
        true
    })?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(old.len()),
    }
}

/// A key's first request, being served: dropping it frees the key for a
/// retry.
pub struct InFlight<'a> {
    services: &'a Services,
    id: [u8; 32],
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.services
            .keys_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Services {
    /// The record of a key, as stored.
    pub fn key_record(&self, id: &[u8; 32]) -> Result<Option<KeyRecord>, ServiceError> {
        Ok(stored(&*self.store, id)?)
    }

    /// Claims a key for its first request on this instance; `None` while
    /// another request with it is being served.
    pub fn claim_key(&self, id: [u8; 32]) -> Option<InFlight<'_>> {
        let fresh = self
            .keys_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        // Made only once the lock is released: its drop takes the lock.
        fresh.then(|| InFlight { services: self, id })
    }

    /// Keeps the reply a keyed write got (durably, before it goes out).
    pub async fn keep_reply(
        &self,
        key: Keyed,
        reply: Reply,
        customers: Vec<CustomerId>,
    ) -> Result<(), ServiceError> {
        self.committer
            .run(move |w| {
                atomically(w, |tx| {
                    keep_reply(tx, &key, reply.clone(), customers.clone())
                })
            })
            .await
    }
}

fn stored(store: &dyn Store, id: &[u8; 32]) -> Result<Option<KeyRecord>, StoreError> {
    store
        .key_record(id)?
        .map(|b| KeyRecord::decode(&b))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_to_their_subject_and_requests_told_apart() {
        assert_ne!(key_id("desk", "k-1"), key_id("bot", "k-1"));
        assert_eq!(key_id("desk", "k-1"), key_id("desk", "k-1"));
        // No subject and key can be spliced into another pair.
        assert_ne!(key_id("ab", "c"), key_id("a", "bc"));
        let a = fingerprint("POST", "/v1/signals", b"{}");
        assert_ne!(a, fingerprint("POST", "/v1/signals", b"{ }"));
        assert_ne!(a, fingerprint("PUT", "/v1/signals", b"{}"));
        assert_ne!(a, fingerprint("POST", "/v1/signals/batch", b"{}"));
        assert!(crate::domain::names::valid_idempotency_key("01JD5V6X8Q"));
        assert!(!crate::domain::names::valid_idempotency_key(""));
        assert!(!crate::domain::names::valid_idempotency_key("with space"));
        assert!(!crate::domain::names::valid_idempotency_key(
            &"k".repeat(256)
        ));
        assert!(!crate::domain::names::valid_idempotency_key("ключ"));
    }
}
