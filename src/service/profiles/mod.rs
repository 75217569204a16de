//! Profiles as the use cases see them: reading a profile, a context card or
//! a timeline; writing traits, answers and consent; merging, unmerging and
//! erasing.
//!
//! The shared types and the one atomic update every write goes through are
//! here; the use cases live in `read` (profiles, lookups, context cards, the
//! timeline), `write` (traits, answers, consent, erasure) and `identity`
//! (merge, unmerge, identifier removal, merge suggestions, the ledger), each
//! an `impl Services` block.

mod identity;
mod read;
mod write;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{atomically, ServiceError, Writer};
use crate::domain::{is_valid_name, CustomerId, Interaction, Profile, SignalRules};
use crate::store::StoreTx;

pub const DEFAULT_CONTEXT_INTERACTIONS: usize = 10;
pub const MAX_PAGE: usize = 200;
/// Interactions kept with a cached card: context cards asking for more are
/// read from the store.
pub const CACHED_INTERACTIONS: usize = 50;

/// What a profile read and a context card are made of; what the caches hold.
#[derive(Debug, Serialize, Deserialize)]
pub struct CardSource {
    pub(crate) profile: Profile,
    pub(crate) recent: Vec<Interaction>,
}

/// A page of a customer's timeline: how many, after which interaction
/// (an interaction id as the previous page handed out), on which channel.
#[derive(Debug, Clone, Default)]
pub struct TimelineQuery {
    /// Page size, 1 to [`MAX_PAGE`] (default 50).
    pub limit: Option<usize>,
    pub cursor: Option<String>,
    pub channel: Option<String>,
}

/// A page of a customer's identity ledger: how many, after which entry.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Page size, 1 to [`MAX_PAGE`] (default 50).
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// The live profile `id` inside a write, or where it went.
fn live_in(tx: &mut dyn StoreTx, id: CustomerId) -> Result<Profile, ServiceError> {
    if let Some(p) = tx.profile(id)? {
        return Ok(p);
    }
    Err(match tx.alias(id)? {
        Some(to) => ServiceError::Moved { from: id, to },
        None => ServiceError::ProfileNotFound("profile"),
    })
}

/// Whose write an update is.
#[derive(Clone, Copy)]
enum Attribution {
    /// The profile's own contribution (an agent's or a bot's write).
    Own,
    /// A change of the whole (a merge): nobody's contribution.
    Whole,
}

/// Loads the live profile `id`, lets `change` modify it, records the write and
/// stores it, all in one atomic write.
fn update(
    store: &Writer<'_>,
    rules: &SignalRules,
    id: CustomerId,
    now: DateTime<Utc>,
    attribution: Attribution,
    mut change: impl FnMut(&mut dyn StoreTx, &mut Profile) -> Result<(), ServiceError>,
) -> Result<Profile, ServiceError> {
    atomically(store, |tx| {
        let mut p = live_in(tx, id)?;
        let before = p.clone();
        change(tx, &mut p)?;
        if p != before {
            match attribution {
                Attribution::Own => p.note_write(id, now),
                Attribution::Whole => p.note_change(now),
            }
            rules.refresh(&mut p, now);
            tx.put_profile(&p)?;
        }
        Ok(p)
    })
}

/// Checks the shape of a channel filter in a query.
pub fn valid_channel_filter(c: &str) -> bool {
    is_valid_name(c, 32)
}
