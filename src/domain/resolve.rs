//! Identity resolution: given who owns each identifier of a signal, decide which
//! profile the signal lands on, which profiles merge into it, and what must stay
//! apart.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::customer_id::CustomerId;
use super::identifier::{Identifier, IdentifierRules};
use crate::config::MergePolicy;

/// What resolution needs to know about a profile that owns an identifier.
#[derive(Debug, Clone)]
pub struct Owner {
    pub customer_id: CustomerId,
    pub created_at: DateTime<Utc>,
    /// Identifier values held per type.
    pub counts: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConflictReason {
    /// Merging (or attaching) would exceed the per-profile limit of the type.
    IdentifierLimit,
    /// The only link is an identifier whose type may not merge two profiles.
    MergeNotAllowed,
    /// The only link is of a `suggest` type: a merge suggestion was recorded.
    MergeSuggested,
}

/// Something the signal asserted that was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The profile that stayed apart, or the one that could not take the identifier.
    pub customer_id: CustomerId,
    pub identifier: Identifier,
    pub reason: ConflictReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolutionPlan {
    /// `None`: nobody owns any identifier; create a profile.
    pub target: Option<CustomerId>,
    /// Profiles to fold into the target, in order.
    pub absorb: Vec<CustomerId>,
    /// Indices into the signal's identifiers that the target takes (or keeps).
    pub attach: Vec<usize>,
    pub conflicts: Vec<Conflict>,
}

/// How strongly a signal links a profile, from its strongest identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Strength {
    Never,
    Suggest,
    Merge,
}

/// Plans the resolution of a signal.
///
/// `owners[i]` is the live profile owning `identifiers[i]`, if any, and
/// `verified[i]` says the caller vouched for it (it then merges whatever its
/// type says). Profiles linked through at least one identifier that may merge
/// fuse into one survivor: the profile matched by the highest-priority
/// identifier, then the oldest, then the smallest id. A profile joins only if
/// the combined profile stays within every per-type limit; otherwise it stays
/// apart and is reported as a conflict, as are profiles linked only through
/// types that never merge. Profiles linked only through `suggest` types stay
/// apart too, reported as `merge_suggested`.
pub fn plan_resolution(
    identifiers: &[Identifier],
    owners: &[Option<CustomerId>],
    verified: &[bool],
    profiles: &BTreeMap<CustomerId, Owner>,
    rules: &IdentifierRules,
) -> ResolutionPlan {
    debug_assert_eq!(identifiers.len(), owners.len());
    // Best (lowest) priority through which each owner is linked, the strongest
    // link, and the identifier of the best link.
    let mut links: BTreeMap<CustomerId, (u32, Strength, usize)> = BTreeMap::new();
    for (i, (id, owner)) in identifiers.iter().zip(owners).enumerate() {
        let Some(owner) = owner else { continue };
        let priority = rules.priority(id.kind());
        let strength = if verified.get(i).copied().unwrap_or(false) {
            Strength::Merge
        } else {
            match rules.rule(id.kind()).map(|r| r.merge) {
                Some(MergePolicy::Merge) => Strength::Merge,
                Some(MergePolicy::Suggest) => Strength::Suggest,
                Some(MergePolicy::Never) | None => Strength::Never,
            }
        };
        let entry = links.entry(*owner).or_insert((priority, strength, i));
        if priority < entry.0 {
            entry.0 = priority;
            entry.2 = i;
        }
        entry.1 = entry.1.max(strength);
    }
    if links.is_empty() {
        return ResolutionPlan {
            target: None,
            absorb: Vec::new(),
            attach: (0..identifiers.len()).collect(),
            conflicts: Vec::new(),
        };
    }
    let rank = |id: &CustomerId| {
        let (priority, _, _) = links[id];
        let created = profiles.get(id).map(|p| p.created_at);
        (priority, created, *id)
    };
    let mut candidates: Vec<CustomerId> = links.keys().copied().collect();
    candidates.sort_by_key(rank);
    let target = if links.len() == 1 {
        candidates[0]
    } else {
        candidates
            .iter()
            .copied()
            .find(|id| links[id].1 == Strength::Merge)
            .unwrap_or(candidates[0])
    };

    let mut counts = profiles
        .get(&target)
        .map(|p| p.counts.clone())
        .unwrap_or_default();
    let mut absorb = Vec::new();
    let mut conflicts = Vec::new();
    for candidate in candidates.iter().copied().filter(|c| *c != target) {
        let (_, strength, via) = links[&candidate];
        let reason = match strength {
            Strength::Never => Some(ConflictReason::MergeNotAllowed),
            Strength::Suggest => Some(ConflictReason::MergeSuggested),
            Strength::Merge => None,
        };
        if let Some(reason) = reason {
            conflicts.push(Conflict {
                customer_id: candidate,
                identifier: identifiers[via].clone(),
                reason,
            });
            continue;
        }
        let theirs = profiles
            .get(&candidate)
            .map(|p| p.counts.clone())
            .unwrap_or_default();
        let over = theirs.iter().find(|(kind, n)| {
            let limit = rules.rule(kind).and_then(|r| r.limit);
            limit.is_some_and(|l| counts.get(*kind).copied().unwrap_or(0) + **n > l)
        });
        if over.is_some() {
            conflicts.push(Conflict {
                customer_id: candidate,
                identifier: identifiers[via].clone(),
                reason: ConflictReason::IdentifierLimit,
            });
            continue;
        }
        for (kind, n) in theirs {
            *counts.entry(kind).or_default() += n;
        }
        absorb.push(candidate);
    }
    let mut attach = Vec::new();
    for (i, (id, owner)) in identifiers.iter().zip(owners).enumerate() {
        match owner {
            Some(o) if *o == target || absorb.contains(o) => attach.push(i),
            Some(_) => {}
            None => {
                let limit = rules.rule(id.kind()).and_then(|r| r.limit);
                let have = counts.get(id.kind()).copied().unwrap_or(0);
                if limit.is_some_and(|l| have >= l) {
                    conflicts.push(Conflict {
                        customer_id: target,
                        identifier: id.clone(),
                        reason: ConflictReason::IdentifierLimit,
                    });
                } else {
                    *counts.entry(id.kind().to_owned()).or_default() += 1;
                    attach.push(i);
                }
            }
        }
    }
    ResolutionPlan {
        target: Some(target),
        absorb,
        attach,
        conflicts,
    }
}
