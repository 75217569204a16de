//! Verifying a stopped store: every record decodes, every index entry
//! points at a live record, and the identity invariants hold.

use crate::domain::{CustomerId, IdentityEvent, Interaction, Profile, Suggestion};
use crate::service::idempotency::KeyRecord;
use crate::store::{decode_change, parse_key, RecordKey, SignalRecord, Store, StoreError};

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
            // A position taken with nothing to tell: no index entry.
            Ok(None) => Ok(()),
            Ok(Some(c)) => {
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
                Ok(Some(c)) if c.customer_id == customer => Ok(()),
                Ok(None) => Err(format!(
                    "the change index of {customer} names change {seq}, an empty position"
                )),
                Ok(Some(c)) => Err(format!(
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
