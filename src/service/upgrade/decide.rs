//! Deciding what one stored identifier asks for: its canonical form, who
//! holds that, and whether the two profiles may become one. Reads only;
//! the same decision serves a run (inside its write) and a dry run.

use std::collections::{BTreeMap, HashMap};

use crate::config::MergePolicy;
use crate::domain::{
    CustomerId, Identifier, IdentifierError, NormaliseOutcome, Profile, SignalRules,
};
use crate::service::ServiceError;
use crate::store::{Store, StoreError, StoreTx};

/// What an identifier's canonical form asks for, decided on what the store
/// holds now.
pub(super) enum Plan {
    /// Canonical already, or no longer stored.
    Nothing,
    /// The rules refuse it now, for this reason.
    Refuse(String),
    /// `holder` keeps it, under its canonical form.
    Rekey {
        holder: Profile,
        canonical: Identifier,
    },
    /// `holder` holds the stored form, `other` the canonical one.
    Merge {
        holder: Profile,
        other: Box<Profile>,
        canonical: Identifier,
    },
    /// `other` holds the canonical form, and the two may not merge.
    Collide {
        other: CustomerId,
        reason: &'static str,
    },
}

/// The reads a plan needs: inside a write, or (dry run) from the store.
pub(super) trait Reads {
    fn owner(&mut self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError>;
    fn profile(&mut self, id: CustomerId) -> Result<Option<Profile>, StoreError>;
}

/// The reads of a write.
pub(super) struct InWrite<'a>(pub(super) &'a mut dyn StoreTx);

impl Reads for InWrite<'_> {
    fn owner(&mut self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError> {
        self.0.owner(identifier)
    }

    fn profile(&mut self, id: CustomerId) -> Result<Option<Profile>, StoreError> {
        self.0.profile(id)
    }
}

/// A dry run's view: the store, with the owners that the run would have
/// moved so far laid over it (so that two stored spellings of one value are
/// reported as one rekey and one merge or collision, as a real run does).
pub(super) struct Preview<'a> {
    pub(super) store: &'a dyn Store,
    pub(super) moved: &'a HashMap<Identifier, Option<CustomerId>>,
}

impl Reads for Preview<'_> {
    fn owner(&mut self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError> {
        match self.moved.get(identifier) {
            Some(owner) => Ok(*owner),
            None => self.store.owner(identifier),
        }
    }

    fn profile(&mut self, id: CustomerId) -> Result<Option<Profile>, StoreError> {
        self.store.profile(id)
    }
}

/// The canonical form of a stored identifier under the current rules.
pub(super) fn canonical(rules: &SignalRules, stored: &Identifier) -> Result<Identifier, String> {
    match rules.identifiers.normalise(stored.kind(), stored.value()) {
        Ok(NormaliseOutcome::Usable(canonical)) => Ok(canonical),
        Ok(NormaliseOutcome::Ignored(_)) => Err("is a placeholder".to_owned()),
        Err(IdentifierError::Invalid { reason, .. }) => Err(reason),
        Err(e @ IdentifierError::TooLong) => Err(e.to_string()),
        Err(IdentifierError::UnknownType(_)) => Err("its type is not configured".to_owned()),
    }
}

/// What to do with `stored`, and the profile that holds it (`None`: nobody
/// does any more, and there is nothing to do).
pub(super) fn plan(
    reads: &mut dyn Reads,
    rules: &SignalRules,
    stored: &Identifier,
) -> Result<(Option<CustomerId>, Plan), ServiceError> {
    let Some(owner) = reads.owner(stored)? else {
        return Ok((None, Plan::Nothing));
    };
    let holder = match reads.profile(owner)? {
        Some(p) if p.owns(stored) => p,
        _ => return Ok((None, Plan::Nothing)),
    };
    let canonical = match canonical(rules, stored) {
        Ok(canonical) if &canonical == stored => return Ok((None, Plan::Nothing)),
        Ok(canonical) => canonical,
        Err(reason) => return Ok((Some(owner), Plan::Refuse(reason))),
    };
    let other = match reads.owner(&canonical)? {
        Some(other) if other != owner => reads.profile(other)?,
        _ => None,
    };
    let plan = match other {
        None => Plan::Rekey { holder, canonical },
        Some(other) => match refusal(rules, &holder, &other, stored, &canonical) {
            Some(reason) => Plan::Collide {
                other: other.customer_id,
                reason,
            },
            None => Plan::Merge {
                holder,
                other: Box::new(other),
                canonical,
            },
        },
    };
    Ok((Some(owner), plan))
}

/// Why `holder` (with the stored form) and `other` (with the canonical
/// one) may not become one, if they may not: the rules a signal's merge
/// keeps. A claim never merges, the type's policy must fuse, and the merged
/// profile must keep its per-type limit and the caps.
fn refusal(
    rules: &SignalRules,
    holder: &Profile,
    other: &Profile,
    stored: &Identifier,
    canonical: &Identifier,
) -> Option<&'static str> {
    let kind = stored.kind();
    let Some(rule) = rules.identifiers.rule(kind) else {
        return Some("its type is not configured");
    };
    if rule.merge != MergePolicy::Merge {
        return Some("the type's merge policy does not merge profiles");
    }
    let claimed = |p: &Profile, i: &Identifier| {
        p.identifiers
            .iter()
            .any(|r| &r.identifier == i && r.claimed)
    };
    if claimed(holder, stored) || claimed(other, canonical) {
        return Some("a claim never merges profiles");
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in holder.identifiers.iter().chain(&other.identifiers) {
        *counts.entry(r.identifier.kind()).or_default() += 1;
    }
    // The two spellings become one identifier.
    if let Some(n) = counts.get_mut(kind) {
        *n -= 1;
    }
    let over_limit = counts.iter().any(|(kind, n)| {
        rules
            .identifiers
            .rule(kind)
            .and_then(|r| r.limit)
            .is_some_and(|l| *n > l)
    });
    if over_limit {
        return Some(
            "together the profiles would hold more identifiers of one type than its limit",
        );
    }
    let caps = &rules.caps;
    let merged = holder.merged_ids.len() + other.merged_ids.len() + 1;
    let identifiers = holder.identifiers.len() + other.identifiers.len() - 1;
    let claims = holder
        .identifiers
        .iter()
        .chain(&other.identifiers)
        .filter(|r| r.claimed)
        .count();
    if merged > caps.max_merged
        || identifiers > caps.max_identifiers
        || claims > caps.max_claimed_identifiers
    {
        return Some("the merged profile would exceed a per-profile cap");
    }
    None
}

/// The survivor of an upgrade's merge: the older profile, as resolution
/// picks between profiles matched by identifiers of the same priority.
pub(super) fn survivor_first(a: Profile, b: Profile) -> (Profile, Profile) {
    if (b.created_at, b.customer_id) < (a.created_at, a.customer_id) {
        (b, a)
    } else {
        (a, b)
    }
}
