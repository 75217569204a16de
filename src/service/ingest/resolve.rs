//! Resolving one signal on the committer thread: find the profiles its
//! identifiers lead to, plan and make the merges, take back identifiers a
//! claim held, then write the signal's edits (see [`edits_of`]) within the
//! profile's caps, and keep the result under its `signal_id`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::caps::within_caps;
use super::identity::{absorb, detach, event, suggest, Cause, Linking};
use super::record::fingerprint;
use super::Applied;
use crate::domain::{
    edits_of, interaction_of, plan_resolution, Assertion, ConflictReason, CustomerId,
    IdentityEventKind, Link, Owner, Profile, Signal, SignalEdits, SignalRules, Trust,
};
use crate::service::views::{ignored_view, ConflictView, IngestResult};
use crate::service::{atomically, Caller, ServiceError, Writer};
use crate::store::{SignalRecord, StoreError, StoreTx, StoredResult};

/// Runs on the committer thread: resolves and applies one signal atomically.
pub(super) fn apply_signal(
    store: &Writer<'_>,
    signal: &Signal,
    rules: &SignalRules,
    now: DateTime<Utc>,
    caller: &Caller,
) -> Result<Applied, ServiceError> {
    atomically(store, |tx| resolve(tx, signal, rules, now, caller))
}

fn resolve(
    tx: &mut dyn StoreTx,
    signal: &Signal,
    rules: &SignalRules,
    now: DateTime<Utc>,
    caller: &Caller,
) -> Result<Applied, ServiceError> {
    let trust: Vec<Trust> = signal
        .identifiers
        .iter()
        .zip(&signal.verified)
        .map(|(ident, vouched)| {
            rules
                .trust
                .trust(caller.channel.as_deref(), ident.kind(), *vouched)
        })
        .collect();
    let claims: Vec<bool> = trust.iter().map(|t| *t == Trust::Claimed).collect();
    // Only a signal with an id is ever compared with an earlier one.
    let fingerprint = signal
        .signal_id
        .as_ref()
        .map(|_| fingerprint(signal, &claims));
    if let (Some(id), Some(fingerprint)) = (&signal.signal_id, &fingerprint) {
        if let Some(bytes) = tx.signal_record(id)? {
            let record = SignalRecord::decode(&bytes)?;
            return match record.result {
                None => Err(ServiceError::SignalOfErasedProfile(id.clone())),
                Some(_) if &record.fingerprint != fingerprint => {
                    Err(ServiceError::SignalIdReused(id.clone()))
                }
                Some(result) => Ok(Applied {
                    result: result.into(),
                    fresh: false,
                }),
            };
        }
    }

    let mut owners = Vec::with_capacity(signal.identifiers.len());
    let mut profiles: BTreeMap<CustomerId, Profile> = BTreeMap::new();
    // Bytes each takes as stored, read with it (the size cap).
    let mut sizes: BTreeMap<CustomerId, usize> = BTreeMap::new();
    for identifier in &signal.identifiers {
        let owner = tx.owner(identifier)?;
        if let Some(id) = owner {
            if let std::collections::btree_map::Entry::Vacant(slot) = profiles.entry(id) {
                let (profile, bytes) = tx.profile_sized(id)?.ok_or_else(|| {
                    StoreError::Engine(format!("identifier index names missing profile {id}"))
                })?;
                slot.insert(profile);
                sizes.insert(id, bytes);
            }
        }
        owners.push(owner);
    }
    let mut summaries: BTreeMap<CustomerId, Owner> = BTreeMap::new();
    for (id, p) in &profiles {
        let mut counts = BTreeMap::new();
        for r in &p.identifiers {
            *counts.entry(r.identifier.kind().to_owned()).or_default() += 1;
        }
        let owner = Owner {
            customer_id: *id,
            created_at: p.created_at,
            counts,
            claimed: p.identifiers.iter().filter(|r| r.claimed).count(),
            merged: p.merged_ids.len(),
            bytes: sizes.get(id).copied().unwrap_or(0),
        };
        summaries.insert(*id, owner);
    }
    // A verified (even vouched-for) identifier that its owner holds on a
    // claim alone links no better than a claim: whoever typed it first gains
    // nothing by it, least of all a merge with the customer who verifies
    // it. It moves to wherever the verified signal lands.
    let assertions: Vec<Assertion> = signal
        .identifiers
        .iter()
        .zip(&owners)
        .zip(&trust)
        .map(|((ident, owner), trust)| {
            let held_on_claim = owner
                .and_then(|o| profiles.get(&o))
                .and_then(|p| p.identifiers.iter().find(|r| &r.identifier == ident))
                .is_some_and(|r| r.claimed);
            let link = match trust {
                Trust::Claimed => Link::Claim,
                _ if held_on_claim => Link::Claim,
                Trust::Vouched => Link::Fuse,
                Trust::Verified => {
                    Link::verified(rules.identifiers.rule(ident.kind()).map(|r| r.merge))
                }
            };
            Assertion {
                link,
                claimed: *trust == Trust::Claimed,
                reclaim: *trust != Trust::Claimed && held_on_claim,
            }
        })
        .collect();
    let plan = plan_resolution(
        &signal.identifiers,
        &owners,
        &assertions,
        &summaries,
        &rules.identifiers,
        &rules.caps,
    );

    let (mut target, created) = match plan.target.and_then(|t| profiles.remove(&t)) {
        Some(p) => (p, false),
        None => (Profile::new(CustomerId::generate(), now), true),
    };
    let id = target.customer_id;
    let channels = &rules.channels;
    let cause = Cause {
        text: signal
            .signal_id
            .clone()
            .map_or_else(|| "signal".to_owned(), |sid| format!("signal:{sid}")),
        by: Some(caller.subject.clone()),
        channel: Some(signal.channel.clone()),
    };
    if created {
        tx.add_history(id, &event(IdentityEventKind::Created, now, &cause))?;
    }
    let mut absorbed_profiles = Vec::with_capacity(plan.absorb.len());
    for absorbed_id in &plan.absorb {
        let absorbed = profiles
            .remove(absorbed_id)
            .ok_or_else(|| StoreError::Engine(format!("profile {absorbed_id} vanished")))?;
        absorbed_profiles.push(absorbed);
    }
    // The identifier through which the signal reached a profile.
    let reached_through = |who: CustomerId| {
        signal
            .identifiers
            .iter()
            .zip(&owners)
            .filter(|(_, o)| **o == Some(who))
            .map(|(ident, _)| ident)
            .min_by_key(|ident| rules.identifiers.priority(ident.kind()))
            .cloned()
    };
    for absorbed in absorbed_profiles {
        let linking = Linking {
            // Named only when it is the survivor's own (not a member's, which
            // an unmerge could take away and an erasure then forget).
            survivor: reached_through(id).filter(|ident| target.member_of(ident) == id),
            absorbed: reached_through(absorbed.customer_id),
        };
        absorb(tx, &mut target, absorbed, linking, &cause, now, channels)?;
    }

    for conflict in &plan.conflicts {
        let suggested = matches!(
            conflict.reason,
            ConflictReason::MergeSuggested | ConflictReason::Claimed
        );
        if let (true, Some(other)) = (suggested, conflict.customer_id) {
            let ours: Vec<CustomerId> = target.members().collect();
            let theirs: Vec<CustomerId> = profiles
                .get(&other)
                .map_or_else(|| vec![other], |p| p.members().collect());
            suggest(
                tx,
                (id, &ours),
                (other, &theirs),
                &conflict.identifier,
                &cause.text,
                now,
            )?;
        }
    }

    // The member the signal speaks for: whoever held the highest-priority
    // identifier it matched; the new data becomes that member's contribution.
    let member = signal
        .identifiers
        .iter()
        .zip(&owners)
        .filter(|(_, o)| o.is_some_and(|o| o == id || plan.absorb.contains(&o)))
        .map(|(ident, _)| ident)
        .min_by_key(|ident| rules.identifiers.priority(ident.kind()))
        .map_or(id, |ident| target.member_of(ident));

    // Identifiers a verified signal takes back from a profile that only
    // claimed them: they leave that profile (and its ledger says so).
    let mut losers: BTreeMap<CustomerId, Profile> = BTreeMap::new();
    for &i in &plan.attach {
        let Some(o) = owners[i].filter(|o| *o != id && !plan.absorb.contains(o)) else {
            continue;
        };
        let identifier = &signal.identifiers[i];
        let loser = match losers.entry(o) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => match profiles.remove(&o) {
                Some(p) => e.insert(p),
                None => continue,
            },
        };
        let held_by = detach(tx, loser, identifier, &cause, now, channels)?;
        loser.note_write(held_by, now);
        owners[i] = None;
    }
    for mut loser in losers.into_values() {
        rules.refresh(&mut loser, now);
        tx.put_profile(&loser)?;
    }

    for &i in plan.attach.iter().filter(|&&i| owners[i].is_none()) {
        let identifier = &signal.identifiers[i];
        tx.set_owner(identifier, id);
        let mut added = event(IdentityEventKind::IdentifierAdded, now, &cause);
        added.identifier = Some(identifier.clone());
        // In the ledger of the member that holds it, so that erasing that
        // member (after an unmerge) erases this entry too.
        tx.add_history(member, &added)?;
    }
    // Numbered only when there is an event: each number is taken from the store.
    let interaction = match signal.event {
        Some(_) => interaction_of(signal, tx.next_sequence()?),
        None => None,
    };
    if let Some(interaction) = &interaction {
        // Stored under the member, so an unmerge takes it along.
        tx.add_interaction(member, interaction)?;
    }
    let SignalEdits { sightings, changes } = edits_of(
        signal,
        &claims,
        interaction.as_ref(),
        &rules.personalization,
    );
    for &i in &plan.attach {
        // A known identifier stays in the contribution that holds it; a new
        // one joins the member the signal speaks for.
        let holder = match owners[i] {
            Some(_) => target.member_of(&signal.identifiers[i]),
            None => member,
        };
        target.apply(holder, &sightings[i], channels);
    }
    let stored_bytes = if created {
        0
    } else {
        summaries.get(&id).map_or(0, |o| o.bytes)
            + plan
                .absorb
                .iter()
                .filter_map(|a| summaries.get(a))
                .map(|o| o.bytes)
                .sum::<usize>()
    };
    let (changes, not_stored) = within_caps(&target, changes, stored_bytes, &rules.caps);
    for change in &changes {
        target.apply(member, change, channels);
    }
    target.note_write(member, now);
    rules.refresh(&mut target, now);
    tx.put_profile(&target)?;

    let result = IngestResult {
        customer_id: id,
        created,
        merged_ids: plan.absorb.clone(),
        // Never another customer's id, and nothing about a claim: the answer
        // must not tell the sender whom an identifier belongs to.
        conflicts: plan
            .conflicts
            .iter()
            .filter(|c| !c.claimed && c.reason != ConflictReason::Claimed)
            .map(|c| ConflictView {
                kind: c.identifier.kind().to_owned(),
                value: c.identifier.value().to_owned(),
                reason: c.reason,
            })
            .collect(),
        version: target.version,
        ignored_identifiers: signal.ignored.iter().map(ignored_view).collect(),
        not_stored,
    };
    if let (Some(signal_id), Some(fingerprint)) = (&signal.signal_id, fingerprint) {
        let record = SignalRecord {
            fingerprint,
            result: Some(StoredResult::from(&result)),
        };
        // Indexed under the member it speaks for: erasing that member turns it
        // into a tombstone, whatever it was merged into at the time.
        tx.put_signal_record(signal_id, member, record.encode()?);
    }
    Ok(Applied {
        result,
        fresh: true,
    })
}
