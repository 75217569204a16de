//! Folding one profile into another (a merge) and taking a member back out
//! (an unmerge), so that each member keeps what it contributed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::*;

impl Profile {
    /// Writes attributed to this profile's members in all.
    pub(super) fn subtree_writes(&self) -> u64 {
        if self.facets.is_empty() {
            self.writes
        } else {
            self.facets.values().map(|f| f.writes).sum()
        }
    }

    /// Absorbs `other` as a member, keeping its contribution apart so the merge
    /// can be undone.
    pub fn absorb_member(
        &mut self,
        other: Profile,
        cause: &str,
        now: DateTime<Utc>,
        channels: &ChannelRules,
    ) -> Vec<String> {
        if self.facets.is_empty() {
            self.facets.insert(self.customer_id, self.as_facet());
        }
        // Where the two disagree, the most restrictive decision wins.
        let restricted: BTreeMap<String, Consent> = self
            .consents
            .iter()
            .filter_map(|(purpose, mine)| {
                let theirs = other.consents.get(purpose)?;
                (mine.granted != theirs.granted).then(|| {
                    (
                        purpose.clone(),
                        Consent {
                            granted: false,
                            channel: MERGE_CHANNEL.to_owned(),
                            at: now.max(mine.at).max(theirs.at),
                        },
                    )
                })
            })
            .collect();
        let link = MergeLink {
            into: self.customer_id,
            at: now,
            cause: cause.to_owned(),
            version_before: other.version,
            updated_before: other.updated_at,
            writes_at_merge: other.subtree_writes(),
            members_at_merge: other.members().collect(),
            consents: restricted.clone(),
        };
        self.absorb(&other, channels);
        let restricted_purposes: Vec<String> = restricted.keys().cloned().collect();
        for (purpose, consent) in restricted {
            self.set_consent(&purpose, consent);
        }
        self.updated_at = self.updated_at.max(now);
        let id = other.customer_id;
        if other.facets.is_empty() {
            self.facets.insert(id, other.as_facet());
        } else {
            self.facets.extend(other.facets);
            self.links.extend(other.links);
        }
        self.links.insert(id, link);
        restricted_purposes
    }

    /// Undoes the merge of `member` (and of whatever it had absorbed itself):
    /// returns it restored with exactly its own contributions, and recomputes
    /// this profile from what remains.
    pub fn split(
        &mut self,
        member: CustomerId,
        channels: &ChannelRules,
        now: DateTime<Utc>,
    ) -> Result<Profile, SplitError> {
        let link = self
            .links
            .get(&member)
            .cloned()
            .ok_or(SplitError::NotMerged(member))?;
        // The subtree: `member` and every member whose chain of links reaches it.
        let reaches = |mut id: CustomerId| loop {
            if id == member {
                return true;
            }
            match self.links.get(&id) {
                Some(l) => id = l.into,
                None => return false,
            }
        };
        let subtree: Vec<CustomerId> = self
            .facets
            .keys()
            .copied()
            .filter(|id| reaches(*id))
            .collect();
        let mut facets = std::mem::take(&mut self.facets);
        let mut links = std::mem::take(&mut self.links);
        let mut their_facets = BTreeMap::new();
        let mut their_links = BTreeMap::new();
        for id in &subtree {
            if let Some(f) = facets.remove(id) {
                their_facets.insert(*id, f);
            }
            if let Some(l) = links.remove(id) {
                if *id != member {
                    their_links.insert(*id, l);
                }
            }
        }
        let mut restored = fold(member, their_facets, their_links, channels);
        // Exactly as it was at the merge, unless something of it changed since
        // (a change to its contributions, or a member of it unmerged first):
        // then a version it was never served at, so caches cannot confuse the two.
        let delta = restored
            .subtree_writes()
            .saturating_sub(link.writes_at_merge);
        let mut members: Vec<CustomerId> = restored.members().collect();
        let mut before = link.members_at_merge.clone();
        members.sort();
        before.sort();
        let changed = delta > 0 || (!before.is_empty() && members != before);
        if changed {
            restored.version = link.version_before + delta.max(1);
            restored.updated_at = restored.updated_at.max(now);
            // Kept on its own contribution too, so a later recomputation agrees.
            if let Some(own) = restored.facets.get_mut(&member) {
                own.updated_at = own.updated_at.max(now);
            }
        } else {
            restored.version = link.version_before;
            restored.updated_at = link.updated_before;
        }
        let version = self.version + 1;
        *self = fold(self.customer_id, facets, links, channels);
        self.version = version;
        Ok(restored)
    }

    /// The ids whose timelines make up this profile's timeline.
    pub fn members(&self) -> impl Iterator<Item = CustomerId> + '_ {
        std::iter::once(self.customer_id).chain(self.merged_ids.iter().copied())
    }

    pub fn owns(&self, identifier: &Identifier) -> bool {
        self.identifiers.iter().any(|r| &r.identifier == identifier)
    }

    /// Folds `other` into `self` (the survivor). Identifiers are disjoint by the
    /// store's invariant; everything else is reconciled by the same rules as a
    /// new signal, so merging is order-independent too.
    pub fn absorb(&mut self, other: &Profile, channels: &ChannelRules) {
        for record in &other.identifiers {
            match self
                .identifiers
                .iter_mut()
                .find(|r| r.identifier == record.identifier)
            {
                Some(mine) => merge_identifier_record(
                    mine,
                    &record.channel,
                    record.first_seen,
                    record.last_seen,
                    record.claimed,
                    channels,
                ),
                None => self.identifiers.push(record.clone()),
            }
        }
        for (name, value) in &other.traits {
            self.set_trait(name, value.clone(), channels);
        }
        for (key, answer) in &other.answers {
            self.set_answer(key, answer.clone(), channels);
        }
        for (name, stats) in &other.channels {
            match self.channels.get_mut(name) {
                None => {
                    self.channels.insert(name.clone(), stats.clone());
                }
                Some(mine) => {
                    mine.first_seen = mine.first_seen.min(stats.first_seen);
                    mine.last_seen = mine.last_seen.max(stats.last_seen);
                    mine.interactions += stats.interactions;
                }
            }
        }
        if let Some(journey) = &other.journey {
            self.set_journey(journey.clone(), channels);
        }
        for (purpose, consent) in &other.consents {
            self.set_consent(purpose, consent.clone());
        }
        for (purpose, log) in &other.consent_log {
            for consent in log {
                self.set_consent(purpose, consent.clone());
            }
        }
        for (stage, visit) in &other.stages {
            self.visit_stage(stage, visit);
        }
        for (counter, hits) in &other.counters {
            // Nothing is dropped here (the configured bound is not known):
            // the union stays the same in any order, and the next count
            // trims it again.
            let keep = hits.len() + self.counters.get(counter).map_or(0, Vec::len);
            self.count(counter, hits, keep);
        }
        for (id, theirs) in &other.episodes {
            match self.episodes.get_mut(id) {
                None => {
                    self.episodes.insert(id.clone(), theirs.clone());
                }
                Some(mine) => mine.fold(theirs, channels),
            }
        }
        self.merged_ids.push(other.customer_id);
        self.merged_ids.extend(other.merged_ids.iter().copied());
        self.merged_ids.sort();
        self.merged_ids.dedup();
        self.created_at = self.created_at.min(other.created_at);
        self.updated_at = self.updated_at.max(other.updated_at);
    }
}

pub(super) fn merge_identifier_record(
    record: &mut IdentifierRecord,
    channel: &str,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    claimed: bool,
    channels: &ChannelRules,
) {
    // Verified once is verified: in any order, the mark is the AND of all.
    record.claimed &= claimed;
    let earlier = first_seen < record.first_seen
        || (first_seen == record.first_seen
            && channels.rank(channel) < channels.rank(&record.channel));
    if earlier {
        record.first_seen = first_seen;
        record.channel = channel.to_owned();
    }
    record.last_seen = record.last_seen.max(last_seen);
}

/// Rebuilds a profile from its members' contributions: `root`'s own, then the
/// others in id order (the rules are order-independent; the order only makes
/// the output reproducible).
pub(super) fn fold(
    root: CustomerId,
    mut facets: BTreeMap<CustomerId, Profile>,
    links: BTreeMap<CustomerId, MergeLink>,
    channels: &ChannelRules,
) -> Profile {
    let own = facets
        .remove(&root)
        .unwrap_or_else(|| Profile::new(root, Utc::now()));
    let mut view = own.clone();
    view.customer_id = root;
    for facet in facets.values() {
        view.absorb(facet, channels);
    }
    for link in links.values() {
        for (purpose, consent) in &link.consents {
            view.set_consent(purpose, consent.clone());
        }
        // A merge still in effect changed the profile when it happened.
        view.updated_at = view.updated_at.max(link.at);
    }
    if !facets.is_empty() {
        facets.insert(root, own);
        view.facets = facets;
        view.links = links;
    }
    view
}
