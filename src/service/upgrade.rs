//! Re-normalising the identifiers a store already holds, after the rules of
//! normalisation changed (`anamnesis upgrade-identifiers`): each stored
//! value is normalised again; one whose canonical form differs moves to
//! it, merges with the profile that already holds it where a signal would
//! have merged the two, or is reported for a person to decide.
//!
//! Every change is one atomic write through the committer, with ledger
//! entries (cause `upgrade`), change-log records and cache invalidation like
//! any other. A change re-reads what it changes inside its write, so a run
//! is idempotent: running it again finds nothing left to do but what it
//! reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use chrono::{DateTime, Utc};

use super::ingest::{absorb, detach, event, Cause, Linking};
use super::{atomically, ServiceError, Services};
use crate::config::MergePolicy;
use crate::domain::{
    CustomerId, Identifier, IdentifierError, IdentifierRecord, IdentityEventKind, NormaliseOutcome,
    Profile, ProfileEdit, SignalRules,
};
use crate::store::{Store, StoreError, StoreTx};

/// The store's bookkeeping value that says where an interrupted run
/// stopped: the last profile done, in id order (empty: none).
pub const CHECKPOINT: &str = "upgrade.identifiers.after";

/// Profiles read per page of the scan; the checkpoint moves once per page.
const PAGE: usize = 256;

/// The ledger's `cause` for what the upgrade changed.
pub const UPGRADE_CAUSE: &str = "upgrade";

/// What became of one stored identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It is canonical: nothing to do.
    Canonical,
    /// It moved to its canonical form on its profile.
    Rekeyed,
    /// Its canonical form belonged to another profile, and the two became
    /// one: `absorbed` went into `survivor`.
    Merged {
        survivor: CustomerId,
        absorbed: CustomerId,
    },
    /// Its canonical form belongs to `other`, and the two may not merge:
    /// both are left as they are.
    Collision {
        other: CustomerId,
        reason: &'static str,
    },
    /// The rules now refuse the value: it is left as it is.
    Refused { reason: String },
}

impl Outcome {
    /// The word a report uses.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Canonical => "canonical",
            Outcome::Rekeyed => "rekeyed",
            Outcome::Merged { .. } => "merged",
            Outcome::Collision { .. } => "collision",
            Outcome::Refused { .. } => "refused",
        }
    }
}

/// One stored identifier that is not canonical, and what became of it (or,
/// in a dry run, what would). It names the identifier's type, never its value.
#[derive(Debug, Clone)]
pub struct Finding {
    pub kind: String,
    /// The profile that held it.
    pub customer_id: CustomerId,
    pub outcome: Outcome,
}

/// Counts per outcome, over one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpgradeSummary {
    pub profiles: u64,
    pub canonical: u64,
    pub rekeyed: u64,
    pub merged: u64,
    pub collisions: u64,
    pub refused: u64,
    /// Where the scan began: `None` from the start, or after this profile
    /// (an interrupted run's checkpoint).
    pub resumed_after: Option<CustomerId>,
    /// False when it stopped early (asked to); the checkpoint says where.
    pub finished: bool,
}

impl fmt::Display for Finding {
    /// `OUTCOME type=TYPE customer=ID`, then the other profile and the
    /// reason where there are any: ids and types, never a value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} type={} customer={}",
            self.outcome.name(),
            self.kind,
            self.customer_id
        )?;
        match &self.outcome {
            Outcome::Canonical | Outcome::Rekeyed => Ok(()),
            Outcome::Merged { survivor, absorbed } => {
                write!(f, " survivor={survivor} absorbed={absorbed}")
            }
            Outcome::Collision { other, reason } => write!(f, " other={other} reason={reason:?}"),
            Outcome::Refused { reason } => write!(f, " reason={reason:?}"),
        }
    }
}

impl fmt::Display for UpgradeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} profiles, {} identifiers: {} canonical, {} rekeyed, {} merged, {} collisions, {} refused",
            self.profiles,
            self.identifiers(),
            self.canonical,
            self.rekeyed,
            self.merged,
            self.collisions,
            self.refused
        )
    }
}

impl UpgradeSummary {
    /// Identifiers looked at: each counted once, by what became of it.
    pub fn identifiers(&self) -> u64 {
        self.canonical + self.rekeyed + self.merged + self.collisions + self.refused
    }

    fn count(&mut self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Canonical => &mut self.canonical,
            Outcome::Rekeyed => &mut self.rekeyed,
            Outcome::Merged { .. } => &mut self.merged,
            Outcome::Collision { .. } => &mut self.collisions,
            Outcome::Refused { .. } => &mut self.refused,
        };
        *counter += 1;
    }
}

/// How to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpgradeOptions {
    /// Report what would happen; change nothing (the checkpoint included).
    pub dry_run: bool,
    /// Scan from the first profile even when a checkpoint says where an
    /// interrupted run stopped.
    pub from_start: bool,
}

/// What an identifier's canonical form asks for, decided on what the store
/// holds now.
enum Plan {
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
trait Reads {
    fn owner(&mut self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError>;
    fn profile(&mut self, id: CustomerId) -> Result<Option<Profile>, StoreError>;
}

/// The reads of a write.
struct InWrite<'a>(&'a mut dyn StoreTx);

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
struct Preview<'a> {
    store: &'a dyn Store,
    moved: &'a HashMap<Identifier, Option<CustomerId>>,
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
fn canonical(rules: &SignalRules, stored: &Identifier) -> Result<Identifier, String> {
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
fn plan(
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
fn survivor_first(a: Profile, b: Profile) -> (Profile, Profile) {
    if (b.created_at, b.customer_id) < (a.created_at, a.customer_id) {
        (b, a)
    } else {
        (a, b)
    }
}

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
fn apply(
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

impl Services {
    /// Normalises every stored identifier again with the current rules and
    /// moves, merges or reports each one that is not canonical (see the
    /// module doc). `report` hears of each such identifier as it is
    /// decided; `stop` is asked between profiles. Goes on from the
    /// checkpoint of an interrupted run unless told to start over.
    pub async fn upgrade_identifiers(
        &self,
        options: UpgradeOptions,
        report: &mut dyn FnMut(&Finding),
        stop: &dyn Fn() -> bool,
    ) -> Result<UpgradeSummary, ServiceError> {
        let mut summary = UpgradeSummary::default();
        let checkpoint = match options.from_start || options.dry_run {
            true => None,
            false => self
                .store
                .meta(CHECKPOINT)?
                .and_then(|b| CustomerId::parse(std::str::from_utf8(&b).ok()?).ok()),
        };
        summary.resumed_after = checkpoint;
        let mut after = checkpoint;
        // A dry run's owners as a run would have left them.
        let mut moved: HashMap<Identifier, Option<CustomerId>> = HashMap::new();
        // Profiles this run's merges absorbed: a page read before may still list them.
        let mut absorbed: HashSet<CustomerId> = HashSet::new();
        loop {
            let page = self.store.profiles_after(after, PAGE)?;
            if page.is_empty() {
                break;
            }
            for profile in page {
                if stop() {
                    self.save_checkpoint(after, options).await?;
                    return Ok(summary);
                }
                let id = profile.customer_id;
                if !absorbed.contains(&id) {
                    summary.profiles += 1;
                    let mut pending = self.not_canonical(&profile);
                    summary.canonical += (profile.identifiers.len() - pending.len()) as u64;
                    let mut decided: Vec<Identifier> = Vec::new();
                    while let Some(stored) = pending.pop() {
                        let finding = match options.dry_run {
                            true => self.preview(&stored, &mut moved)?,
                            false => self.upgrade_one(stored.clone()).await?,
                        };
                        decided.push(stored);
                        let Some(finding) = finding else {
                            summary.canonical += 1;
                            continue;
                        };
                        summary.count(&finding.outcome);
                        report(&finding);
                        let Outcome::Merged {
                            survivor,
                            absorbed: gone,
                        } = finding.outcome
                        else {
                            continue;
                        };
                        if options.dry_run {
                            // Nothing merged: the scan reaches it as it is.
                            continue;
                        }
                        absorbed.insert(gone);
                        // What the absorbed side brought is here now, and
                        // the scan will not reach it under its own id.
                        if survivor == id {
                            if let Some(merged) = self.store.profile(survivor)? {
                                let brought: Vec<Identifier> = self
                                    .not_canonical(&merged)
                                    .into_iter()
                                    .filter(|i| !decided.contains(i) && !pending.contains(i))
                                    .collect();
                                pending.extend(brought);
                            }
                        }
                    }
                }
                after = Some(id);
            }
            self.save_checkpoint(after, options).await?;
        }
        self.clear_checkpoint(options).await?;
        summary.finished = true;
        Ok(summary)
    }

    /// The identifiers of `p` that the current rules spell otherwise (or
    /// refuse), last first.
    fn not_canonical(&self, p: &Profile) -> Vec<Identifier> {
        p.identifiers
            .iter()
            .map(|r| &r.identifier)
            .filter(|i| canonical(&self.rules, i).as_ref() != Ok(*i))
            .rev()
            .cloned()
            .collect()
    }

    /// Decides one stored identifier and carries the decision out, in one
    /// atomic write; `None` when there was nothing to do after all.
    async fn upgrade_one(&self, stored: Identifier) -> Result<Option<Finding>, ServiceError> {
        let rules = self.rules.clone();
        let now = Services::now();
        self.committer
            .run(move |w| {
                atomically(w, |tx| {
                    let mut reads = InWrite(&mut *tx);
                    let (holder, plan) = plan(&mut reads, &rules, &stored)?;
                    let outcome = apply(tx, plan, &stored, &rules, &upgrade_cause(), now)?;
                    Ok(holder.map(|customer_id| Finding {
                        kind: stored.kind().to_owned(),
                        customer_id,
                        outcome,
                    }))
                })
            })
            .await
    }

    /// What [`Services::upgrade_one`] would do, from the store as it is and
    /// the run's moves so far; changes nothing.
    fn preview(
        &self,
        stored: &Identifier,
        moved: &mut HashMap<Identifier, Option<CustomerId>>,
    ) -> Result<Option<Finding>, ServiceError> {
        let mut reads = Preview {
            store: &*self.store,
            moved,
        };
        let (holder, plan) = plan(&mut reads, &self.rules, stored)?;
        let outcome = match plan {
            Plan::Nothing => Outcome::Canonical,
            Plan::Refuse(reason) => Outcome::Refused { reason },
            Plan::Collide { other, reason } => Outcome::Collision { other, reason },
            Plan::Rekey { holder, canonical } => {
                moved.insert(stored.clone(), None);
                moved.insert(canonical, Some(holder.customer_id));
                Outcome::Rekeyed
            }
            Plan::Merge {
                holder,
                other,
                canonical,
            } => {
                let (survivor, absorbed) = survivor_first(holder, *other);
                moved.insert(stored.clone(), None);
                moved.insert(canonical, Some(survivor.customer_id));
                Outcome::Merged {
                    survivor: survivor.customer_id,
                    absorbed: absorbed.customer_id,
                }
            }
        };
        Ok(holder.map(|customer_id| Finding {
            kind: stored.kind().to_owned(),
            customer_id,
            outcome,
        }))
    }

    async fn save_checkpoint(
        &self,
        after: Option<CustomerId>,
        options: UpgradeOptions,
    ) -> Result<(), ServiceError> {
        let Some(after) = after.filter(|_| !options.dry_run) else {
            return Ok(());
        };
        self.committer
            .run(move |w| {
                atomically(w, |tx| {
                    tx.put_meta(CHECKPOINT, after.to_string().into_bytes());
                    Ok(())
                })
            })
            .await
    }

    /// A finished run leaves no checkpoint: the next one starts from the top.
    async fn clear_checkpoint(&self, options: UpgradeOptions) -> Result<(), ServiceError> {
        if options.dry_run || self.store.meta(CHECKPOINT)?.is_none_or(|b| b.is_empty()) {
            return Ok(());
        }
        self.committer
            .run(move |w| {
                atomically(w, |tx| {
                    tx.put_meta(CHECKPOINT, Vec::new());
                    Ok(())
                })
            })
            .await
    }
}

/// Who made the upgrade's changes, as the ledger names them.
fn upgrade_cause() -> Cause {
    Cause {
        text: UPGRADE_CAUSE.to_owned(),
        by: Some("cli:upgrade-identifiers".to_owned()),
        channel: None,
    }
}
