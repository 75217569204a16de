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
//!
//! This file holds the run: the scan, its checkpoint, one atomic write per
//! identifier. `decide` works out what an identifier asks for, `write`
//! carries that out inside a write, `report` is what a run tells.

mod decide;
mod report;
mod write;

use std::collections::{HashMap, HashSet};

use super::ingest::Cause;
use super::{atomically, ServiceError, Services};
use crate::domain::{CustomerId, Identifier, Profile};
use decide::{canonical, plan, survivor_first, InWrite, Plan, Preview};
use write::apply;

pub use report::{Finding, Outcome, UpgradeOptions, UpgradeSummary};

/// The store's bookkeeping value that says where an interrupted run
/// stopped: the last profile done, in id order (empty: none).
pub const CHECKPOINT: &str = "upgrade.identifiers.after";

/// Profiles read per page of the scan; the checkpoint moves once per page.
const PAGE: usize = 256;

/// The ledger's `cause` for what the upgrade changed.
pub const UPGRADE_CAUSE: &str = "upgrade";

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
