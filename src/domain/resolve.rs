//! Identity resolution: given who owns each identifier of a signal, decide which
//! profile the signal lands on, which profiles merge into it, and what must stay
//! apart.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::customer_id::CustomerId;
use super::definitions::MergePolicy;
use super::identifier::{Identifier, IdentifierRules};
use super::signal::Caps;

/// What resolution needs to know about a profile that owns an identifier.
#[derive(Debug, Clone)]
pub struct Owner {
    pub customer_id: CustomerId,
    pub created_at: DateTime<Utc>,
    /// Identifier values held per type.
    pub counts: BTreeMap<String, usize>,
    /// Of those, how many are held on a claim alone.
    pub claimed: usize,
    /// Profiles it absorbed (directly or through chains).
    pub merged: usize,
    /// Bytes it takes as stored.
    pub bytes: usize,
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
    /// The profile is full: `profiles.max_identifiers`,
    /// `profiles.max_claimed_identifiers` or `profiles.max_merged` would be
    /// exceeded. The rest of the signal was stored.
    ProfileCap,
    /// The link is a claim, which never merges nor reaches an existing
    /// profile: a suggestion was recorded. Never reported to the
    /// claimant (it would tell them whom the identifier belongs to).
    #[serde(skip)]
    Claimed,
}

/// Something the signal asserted that was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The profile that stayed apart; `None`: the profile the signal lands on
    /// (which could not take the identifier).
    pub customer_id: Option<CustomerId>,
    pub identifier: Identifier,
    pub reason: ConflictReason,
    /// The signal only claimed the identifier. The sender is never told
    /// what became of a claim: any answer about it (even "over the limit",
    /// set against the silence of a value someone owns) would tell them
    /// whether someone owns it.
    pub claimed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolutionPlan {
    /// `None`: a new profile takes the signal (nobody owns an identifier, or
    /// nobody the signal may reach does).
    pub target: Option<CustomerId>,
    /// Profiles to fold into the target, in order.
    pub absorb: Vec<CustomerId>,
    /// Indices into the signal's identifiers that the target takes (or keeps).
    pub attach: Vec<usize>,
    pub conflicts: Vec<Conflict>,
}

/// How one identifier of a signal links the profile that owns it, weakest
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Link {
    /// A claim, or a verified identifier its owner holds on a claim only:
    /// never fuses, and never makes its owner the target.
    Claim,
    /// Verified, of a type that never merges.
    Never,
    /// Verified, of a `suggest` type (a shared phone).
    Shared,
    /// Verified and of a merging type, or vouched for.
    Fuse,
}

impl Link {
    /// The link a verified identifier of a type with `policy` makes.
    pub fn verified(policy: Option<MergePolicy>) -> Link {
        match policy {
            Some(MergePolicy::Merge) => Link::Fuse,
            Some(MergePolicy::Suggest) => Link::Shared,
            Some(MergePolicy::Never) | None => Link::Never,
        }
    }
}

/// What a signal asserts about one of its identifiers, as far as it is believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assertion {
    /// How it links the profile that owns it (meaningless without an owner).
    pub link: Link,
    /// The signal only claims it: attached, it is held as a claim.
    pub claimed: bool,
    /// The signal verifies it and its owner holds it on a claim alone. A
    /// verification beats a claim: it moves to the target (its owner stays
    /// apart, with a suggestion).
    pub reclaim: bool,
}

/// Plans the resolution of a signal.
///
/// `owners[i]` is the live profile owning `identifiers[i]`, and
/// `assertions[i]` how far the signal is believed about it. The target is
/// the profile matched by the highest-priority identifier (then the oldest,
/// then the smallest id) among those linked for a merge; else among those
/// linked through a shared or non-merging type; else a new profile. A claim
/// never chooses the target: what it brings goes where the signal's
/// verified identifiers lead, or to a new profile, so it can neither write
/// into another customer's memory nor lend them its own identifiers. A
/// shared link never takes a new person-identifying identifier: such a
/// signal gets a new profile too. Other profiles linked for a merge fuse
/// into the target while every per-type limit and cap holds; the rest stay
/// apart as conflicts (suggestions for shared and claimed links). New
/// identifiers attach while limits and caps hold.
pub fn plan_resolution(
    identifiers: &[Identifier],
    owners: &[Option<CustomerId>],
    assertions: &[Assertion],
    profiles: &BTreeMap<CustomerId, Owner>,
    rules: &IdentifierRules,
    caps: &Caps,
) -> ResolutionPlan {
    debug_assert_eq!(identifiers.len(), owners.len());
    debug_assert_eq!(identifiers.len(), assertions.len());
    // Best (lowest) priority through which each owner is linked, the strongest
    // link, and the identifier of the best link.
    let mut linked: BTreeMap<CustomerId, (u32, Link, usize)> = BTreeMap::new();
    for (i, (id, owner)) in identifiers.iter().zip(owners).enumerate() {
        let Some(owner) = owner else { continue };
        let priority = rules.priority(id.kind());
        let link = assertions[i].link;
        let entry = linked.entry(*owner).or_insert((priority, link, i));
        if priority < entry.0 {
            entry.0 = priority;
            entry.2 = i;
        }
        entry.1 = entry.1.max(link);
    }
    let rank = |id: &CustomerId| {
        let (priority, _, _) = linked[id];
        let created = profiles.get(id).map(|p| p.created_at);
        (priority, created, *id)
    };
    let mut candidates: Vec<CustomerId> = linked.keys().copied().collect();
    candidates.sort_by_key(rank);
    let link_of = |id: &CustomerId| linked[id].1;
    let first = |ok: &dyn Fn(&CustomerId) -> bool| candidates.iter().copied().find(|c| ok(c));
    let mut target = first(&|c| link_of(c) == Link::Fuse)
        .or_else(|| first(&|c| matches!(link_of(c), Link::Shared | Link::Never)));
    // A shared identifier (a household's landline) with someone new on it:
    // the newcomer gets a profile of their own, never the customer's.
    if target.is_some_and(|t| link_of(&t) == Link::Shared) {
        let newcomer = identifiers
            .iter()
            .zip(owners)
            .zip(assertions)
            .any(|((id, owner), a)| {
                let arrives = owner.is_none() || (a.reclaim && *owner != target);
                arrives && !rules.rule(id.kind()).is_some_and(|r| r.session)
            });
        if newcomer {
            target = None;
        }
    }

    let summary = |id: Option<CustomerId>| id.and_then(|id| profiles.get(&id));
    let mut counts = summary(target)
        .map(|p| p.counts.clone())
        .unwrap_or_default();
    let mut total: usize = counts.values().sum();
    let mut held_claimed = summary(target).map_or(0, |p| p.claimed);
    let mut merged = summary(target).map_or(0, |p| p.merged);
    let mut bytes = summary(target).map_or(0, |p| p.bytes);
    let mut absorb = Vec::new();
    let mut conflicts = Vec::new();
    for candidate in candidates.iter().copied().filter(|c| Some(*c) != target) {
        let (_, link, via) = linked[&candidate];
        let reason = match link {
            Link::Claim => Some(ConflictReason::Claimed),
            Link::Never => Some(ConflictReason::MergeNotAllowed),
            Link::Shared => Some(ConflictReason::MergeSuggested),
            Link::Fuse => None,
        };
        let mut conflict = |reason| {
            conflicts.push(Conflict {
                customer_id: Some(candidate),
                identifier: identifiers[via].clone(),
                reason,
                claimed: assertions[via].claimed,
            });
        };
        if let Some(reason) = reason {
            conflict(reason);
            continue;
        }
        let Some(theirs) = profiles.get(&candidate) else {
            continue;
        };
        let over = theirs.counts.iter().any(|(kind, n)| {
            let limit = rules.rule(kind).and_then(|r| r.limit);
            limit.is_some_and(|l| counts.get(kind).copied().unwrap_or(0) + n > l)
        });
        if over {
            conflict(ConflictReason::IdentifierLimit);
            continue;
        }
        let their_total: usize = theirs.counts.values().sum();
        if merged + theirs.merged + 1 > caps.max_merged
            || total + their_total > caps.max_identifiers
            || held_claimed + theirs.claimed > caps.max_claimed_identifiers
            || bytes + theirs.bytes > caps.max_profile_bytes
        {
            conflict(ConflictReason::ProfileCap);
            continue;
        }
        bytes += theirs.bytes;
        for (kind, n) in &theirs.counts {
            *counts.entry(kind.clone()).or_default() += n;
        }
        total += their_total;
        held_claimed += theirs.claimed;
        merged += theirs.merged + 1;
        absorb.push(candidate);
    }
    let mut attach = Vec::new();
    for (i, (id, owner)) in identifiers.iter().zip(owners).enumerate() {
        let assertion = assertions[i];
        let arrives = match owner {
            Some(o) if Some(*o) == target || absorb.contains(o) => {
                attach.push(i);
                continue;
            }
            None => true,
            Some(_) => assertion.reclaim,
        };
        if !arrives {
            continue;
        }
        let limit = rules.rule(id.kind()).and_then(|r| r.limit);
        let have = counts.get(id.kind()).copied().unwrap_or(0);
        let reason = if limit.is_some_and(|l| have >= l) {
            Some(ConflictReason::IdentifierLimit)
        } else if total >= caps.max_identifiers
            || (assertion.claimed && held_claimed >= caps.max_claimed_identifiers)
        {
            Some(ConflictReason::ProfileCap)
        } else {
            None
        };
        match reason {
            Some(reason) => conflicts.push(Conflict {
                customer_id: None,
                identifier: id.clone(),
                reason,
                claimed: assertion.claimed,
            }),
            None => {
                *counts.entry(id.kind().to_owned()).or_default() += 1;
                total += 1;
                held_claimed += usize::from(assertion.claimed);
                attach.push(i);
            }
        }
    }
    ResolutionPlan {
        target,
        absorb,
        attach,
        conflicts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NormaliseOutcome;

    fn rules() -> IdentifierRules {
        IdentifierRules::new(&crate::domain::definitions::shipped_identifiers(), "NL")
    }

    fn ident(rules: &IdentifierRules, kind: &str, value: &str) -> Identifier {
        match rules.normalise(kind, value) {
            Ok(NormaliseOutcome::Usable(id)) => id,
            _ => panic!("{kind}:{value} is usable"),
        }
    }

    const CAPS: Caps = Caps::DEFAULT;

    fn owner(id: CustomerId, kinds: &[&str]) -> Owner {
        let mut counts = BTreeMap::new();
        for k in kinds {
            *counts.entry((*k).to_owned()).or_default() += 1;
        }
        Owner {
            customer_id: id,
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            counts,
            claimed: 0,
            merged: 0,
            bytes: 1000,
        }
    }

    fn assert(link: Link, claimed: bool) -> Assertion {
        Assertion {
            link,
            claimed,
            reclaim: false,
        }
    }

    #[test]
    fn a_claim_never_fuses_nor_reaches_a_customer_with_personal_data() {
        let r = rules();
        let (victim, attacker) = (CustomerId::generate(), CustomerId::generate());
        let ids = [
            ident(&r, "email", "vera@example.com"),
            ident(&r, "web_cookie", "atk"),
        ];
        let profiles = BTreeMap::from([
            (victim, owner(victim, &["email"])),
            (attacker, owner(attacker, &["web_cookie"])),
        ]);
        let plan = plan_resolution(
            &ids,
            &[Some(victim), Some(attacker)],
            &[assert(Link::Claim, true), assert(Link::Fuse, false)],
            &profiles,
            &r,
            &CAPS,
        );
        assert_eq!(plan.target, Some(attacker));
        assert!(plan.absorb.is_empty());
        assert_eq!(plan.attach, vec![1]);
        assert_eq!(plan.conflicts.len(), 1);
        assert_eq!(plan.conflicts[0].reason, ConflictReason::Claimed);

        // Alone, the claim gets a profile of its own.
        let plan = plan_resolution(
            &ids[..1],
            &[Some(victim)],
            &[assert(Link::Claim, true)],
            &profiles,
            &r,
            &CAPS,
        );
        assert_eq!(plan.target, None);
        assert!(plan.attach.is_empty());
    }

    #[test]
    fn a_claim_never_chooses_the_target_even_an_anonymous_one() {
        let r = rules();
        let anon = CustomerId::generate();
        let ids = [
            ident(&r, "chat_session", "someone-elses"),
            ident(&r, "web_cookie", "mine"),
        ];
        let profiles = BTreeMap::from([(anon, owner(anon, &["chat_session"]))]);
        let plan = plan_resolution(
            &ids,
            &[Some(anon), None],
            &[assert(Link::Claim, true), assert(Link::Fuse, false)],
            &profiles,
            &r,
            &CAPS,
        );
        assert_eq!(plan.target, None);
        assert_eq!(plan.attach, vec![1]);
        assert_eq!(plan.conflicts[0].reason, ConflictReason::Claimed);
    }

    #[test]
    fn a_claim_over_a_limit_is_marked_as_a_claim() {
        let r = rules();
        let me = CustomerId::generate();
        let mut mine = owner(me, &["web_cookie"]);
        mine.counts.insert("email".into(), 5);
        let profiles = BTreeMap::from([(me, mine)]);
        let plan = plan_resolution(
            &[
                ident(&r, "web_cookie", "mine"),
                ident(&r, "email", "x@example.com"),
            ],
            &[Some(me), None],
            &[assert(Link::Fuse, false), assert(Link::Claim, true)],
            &profiles,
            &r,
            &CAPS,
        );
        assert_eq!(plan.attach, vec![0]);
        assert_eq!(plan.conflicts.len(), 1);
        assert_eq!(plan.conflicts[0].reason, ConflictReason::IdentifierLimit);
        assert!(plan.conflicts[0].claimed);
    }

    #[test]
    fn a_shared_number_takes_sessions_but_no_newcomer() {
        let r = rules();
        let anna = CustomerId::generate();
        let profiles = BTreeMap::from([(anna, owner(anna, &["phone"]))]);
        let phone = ident(&r, "phone", "020 123 4567");
        let with = |other: Identifier| {
            plan_resolution(
                &[phone.clone(), other],
                &[Some(anna), None],
                &[assert(Link::Shared, false), assert(Link::Fuse, false)],
                &profiles,
                &r,
                &CAPS,
            )
        };
        let session = with(ident(&r, "chat_session", "cs-1"));
        assert_eq!(session.target, Some(anna));
        assert_eq!(session.attach, vec![0, 1]);
        let newcomer = with(ident(&r, "email", "ben@example.com"));
        assert_eq!(newcomer.target, None);
        assert_eq!(newcomer.attach, vec![1]);
        assert_eq!(newcomer.conflicts[0].reason, ConflictReason::MergeSuggested);
        assert_eq!(newcomer.conflicts[0].customer_id, Some(anna));
    }

    #[test]
    fn caps_keep_what_fits_and_report_the_rest() {
        let r = rules();
        let (a, b) = (CustomerId::generate(), CustomerId::generate());
        let mut full = owner(a, &[]);
        full.counts.insert("web_cookie".into(), 59);
        full.claimed = 10;
        // B is the younger: A survives.
        let mut young = owner(b, &["web_cookie", "web_cookie"]);
        young.created_at = Utc::now();
        let profiles = BTreeMap::from([(a, full), (b, young)]);
        let caps = Caps {
            max_identifiers: 60,
            ..CAPS
        };
        let ids = [
            ident(&r, "web_cookie", "a"),
            ident(&r, "web_cookie", "b"),
            ident(&r, "email", "claimed@example.com"),
            ident(&r, "device_id", "d1"),
            ident(&r, "device_id", "d2"),
        ];
        let plan = plan_resolution(
            &ids,
            &[Some(a), Some(b), None, None, None],
            &[
                assert(Link::Fuse, false),
                assert(Link::Fuse, false),
                assert(Link::Claim, true),
                assert(Link::Fuse, false),
                assert(Link::Fuse, false),
            ],
            &profiles,
            &r,
            &caps,
        );
        assert_eq!(plan.target, Some(a));
        assert!(plan.absorb.is_empty(), "59 + 2 is over the cap: no merge");
        // The claim is over its own cap; the first device fits, the second not.
        assert_eq!(plan.attach, vec![0, 3]);
        let reasons: Vec<_> = plan.conflicts.iter().map(|c| c.reason).collect();
        assert_eq!(reasons, vec![ConflictReason::ProfileCap; 3]);
    }
}
