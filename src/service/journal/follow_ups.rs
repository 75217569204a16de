//! The follow-up index: one entry per episode resolved and awaiting the
//! customer's feedback, kept in step with the profiles by every write the
//! journal records, and built once for stores written before it existed.

use std::collections::BTreeSet;

use super::Seen;
use crate::domain::{FollowUpKey, Profile};
use crate::store::{Store, StoreError, StoreTx};

/// Where the bookkeeping notes that every stored profile's follow-ups are
/// in the index (stores written before the index existed get them at
/// start-up), and by which version of the rule: a later rule bumps it and
/// the index is rebuilt.
const FOLLOW_UPS_INDEXED: &str = "follow_ups.indexed";
const FOLLOW_UPS_INDEX_VERSION: u8 = 1;

/// Indexes the follow-ups of every stored profile, once per store: a store
/// written before the index existed has resolved episodes awaiting feedback
/// that no later write would add. Runs before the committer starts (it is
/// then the only writer); returns how many entries it added.
pub fn index_follow_ups_once(store: &dyn Store) -> Result<usize, StoreError> {
    if store.meta(FOLLOW_UPS_INDEXED)?.as_deref() == Some(&[FOLLOW_UPS_INDEX_VERSION]) {
        return Ok(0);
    }
    let mut added = 0;
    let mut after = None;
    loop {
        let page = store.profiles_after(after, 1024)?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.customer_id);
        let entries: Vec<FollowUpKey> = page.iter().flat_map(|p| follow_ups_of(Some(p))).collect();
        added += entries.len();
        store.write(&mut |tx| {
            for entry in &entries {
                tx.put_follow_up(entry);
            }
            true
        })?;
    }
    store.write(&mut |tx| {
        tx.put_meta(FOLLOW_UPS_INDEXED, vec![FOLLOW_UPS_INDEX_VERSION]);
        true
    })?;
    store.flush()?;
    Ok(added)
}

/// The follow-up index entries a profile needs: one per episode resolved
/// and awaiting feedback.
fn follow_ups_of(p: Option<&Profile>) -> BTreeSet<FollowUpKey> {
    p.map(|p| {
        p.episodes
            .values()
            .filter_map(|e| {
                let resolved = e.awaiting_feedback()?;
                Some(FollowUpKey {
                    resolved_millis: u64::try_from(resolved.timestamp_millis()).unwrap_or(0),
                    customer: p.customer_id,
                    episode: e.id.clone(),
                })
            })
            .collect()
    })
    .unwrap_or_default()
}

impl Seen {
    /// Keeps the follow-up index in step with the profiles this write put
    /// or deleted: whatever the use case (a signal, a merge, an unmerge, an
    /// erasure), the index is derived from the profiles alone.
    pub(super) fn index_follow_ups(&self, tx: &mut dyn StoreTx) {
        for (id, after) in &self.after {
            let before = follow_ups_of(self.before.get(id).and_then(Option::as_ref));
            let after = follow_ups_of(after.as_ref());
            for gone in before.difference(&after) {
                tx.delete_follow_up(gone);
            }
            for new in after.difference(&before) {
                tx.put_follow_up(new);
            }
        }
    }
}
