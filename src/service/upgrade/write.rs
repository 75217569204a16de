//! Carrying a decision out inside a write: the stored form taken off its
//! profile, the canonical one put on (after a merge, where one is due),
//! with the ledger entries a signal's changes would leave.

use chrono::{DateTime, Utc};

use super::decide::{survivor_first, Plan};
use super::Outcome;
use crate::domain::{
    CustomerId, Identifier, IdentifierRecord, IdentityEventKind, Profile, ProfileEdit, SignalRules,
};
use crate::service::ingest::{absorb, detach, event, Cause, Linking};
use crate::service::ServiceError;
use crate::store::StoreTx;

/// A stored form taken off a profile: the member that held it and its record.
struct Taken {
    member: CustomerId,
    record: Option<IdentifierRecord>,
}

/// Takes the stored form off `p` and out of the index; the ledger of the
/// member that held it says so.
fn take_off(
    tx: &mut dyn StoreTx,
    p: &mut Profile,
    stored: &Identifier,
    cause: &Cause,
    now: DateTime<Utc>,
    rules: &SignalRules,
) -> Result<Taken, ServiceError> {
    let record = p
        .identifiers
        .iter()
        .find(|r| &r.identifier == stored)
        .cloned();
    let member = detach(tx, p, stored, cause, now, &rules.channels)?;
    tx.remove_owner(stored);
    Ok(Taken { member, record })
}

/// Gives `p` the record taken off, under the canonical name: to the member
/// that already holds the canonical form (the two records become one), or
/// else to the member that held the stored form. The record keeps its first
/// and last sighting, channel and claim mark.
fn put_on(
    tx: &mut dyn StoreTx,
    p: &mut Profile,
    taken: Taken,
    canonical: &Identifier,
    cause: &Cause,
    now: DateTime<Utc>,
    rules: &SignalRules,
) -> Result<(), ServiceError> {
    let Some(mut record) = taken.record else {
        return Ok(());
    };
    record.identifier = canonical.clone();
    let known = p.owns(canonical);
    let holder = if known {
        p.member_of(canonical)
    } else {
        taken.member
    };
    p.apply(
        holder,
        &ProfileEdit::AdoptIdentifier(record),
        &rules.channels,
    );
    tx.set_owner(canonical, p.customer_id);
    if !known {
        let mut added = event(IdentityEventKind::IdentifierAdded, now, cause);
        added.identifier = Some(canonical.clone());
        tx.add_history(holder, &added)?;
    }
    Ok(())
}

/// Carries out a plan inside a write.
pub(super) fn apply(
    tx: &mut dyn StoreTx,
    plan: Plan,
    stored: &Identifier,
    rules: &SignalRules,
    cause: &Cause,
    now: DateTime<Utc>,
) -> Result<Outcome, ServiceError> {
    match plan {
        Plan::Nothing => Ok(Outcome::Canonical),
        Plan::Refuse(reason) => Ok(Outcome::Refused { reason }),
        Plan::Collide { other, reason } => Ok(Outcome::Collision { other, reason }),
        Plan::Rekey {
            mut holder,
            canonical,
        } => {
            let taken = take_off(tx, &mut holder, stored, cause, now, rules)?;
            put_on(tx, &mut holder, taken, &canonical, cause, now, rules)?;
            holder.note_change(now);
            rules.refresh(&mut holder, now);
            tx.put_profile(&holder)?;
            Ok(Outcome::Rekeyed)
        }
        Plan::Merge {
            mut holder,
            other,
            canonical,
        } => {
            let taken = take_off(tx, &mut holder, stored, cause, now, rules)?;
            // A version it was never served at: an unmerge that restores it
            // must not look like the profile it was before.
            holder.note_change(now);
            let (mut survivor, absorbed) = survivor_first(holder, *other);
            let own = |p: &Profile| {
                (p.owns(&canonical) && p.member_of(&canonical) == p.customer_id)
                    .then(|| canonical.clone())
            };
            let linking = Linking {
                survivor: own(&survivor),
                absorbed: own(&absorbed),
            };
            let outcome = Outcome::Merged {
                survivor: survivor.customer_id,
                absorbed: absorbed.customer_id,
            };
            absorb(
                tx,
                &mut survivor,
                absorbed,
                linking,
                cause,
                now,
                &rules.channels,
            )?;
            put_on(tx, &mut survivor, taken, &canonical, cause, now, rules)?;
            survivor.note_change(now);
            rules.refresh(&mut survivor, now);
            tx.put_profile(&survivor)?;
            Ok(outcome)
        }
    }
}
