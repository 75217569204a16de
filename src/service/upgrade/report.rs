//! What an upgrade run tells: the outcome for each identifier that was not
//! canonical, the counts over the run, and the options it ran with.

use std::fmt;

use crate::domain::CustomerId;

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

    pub(super) fn count(&mut self, outcome: &Outcome) {
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
