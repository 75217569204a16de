//! What one write did, as seen through its store calls, and the change-log
//! entries and live events it makes.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::domain::{
    Change, ChangeKind, CustomerId, Identifier, Interaction, LiveEvent, Payload, Profile,
};

/// What one write did, as seen through its store calls.
#[derive(Default)]
pub struct Seen {
    /// Each profile as it was before the write (`None`: did not exist).
    pub(super) before: BTreeMap<CustomerId, Option<Profile>>,
    /// Each profile the write put (`Some`) or deleted (`None`).
    pub(super) after: BTreeMap<CustomerId, Option<Profile>>,
    /// Each alias the write changed: before and after.
    pub(super) aliases: BTreeMap<CustomerId, (Option<CustomerId>, Option<CustomerId>)>,
    pub(super) identifiers: BTreeSet<Identifier>,
    pub(super) interactions: Vec<(CustomerId, Interaction)>,
}

impl Seen {
    pub(super) fn into_events(
        self,
        now: DateTime<Utc>,
    ) -> (Vec<LiveEvent>, BTreeSet<CustomerId>, BTreeSet<Identifier>) {
        let mut first = Vec::new();
        let mut merges = Vec::new();
        let mut content = Vec::new();
        let mut updates = Vec::new();
        let mut erasures = Vec::new();
        let plain = |change: Change| LiveEvent { change, data: None };
        let none: Option<Profile> = None;

        for (&id, after) in &self.after {
            let before = self.before.get(&id).unwrap_or(&none);
            match (before, after) {
                (None, Some(p)) => {
                    let restored_from = self.aliases.get(&id).and_then(|(was, _)| *was);
                    match restored_from {
                        Some(survivor) => {
                            // An unmerge: sent on the restored profile and the survivor.
                            for (on, version) in [
                                (id, Some(p.version)),
                                (survivor, self.version_after(survivor)),
                            ] {
                                let mut c = Change::new(ChangeKind::Unmerged, on, now);
                                c.version = version;
                                c.survivor_id = Some(survivor);
                                c.merged_id = Some(id);
                                first.push(plain(c));
                            }
                        }
                        None => {
                            let mut c = Change::new(ChangeKind::Created, id, now);
                            c.version = Some(p.version);
                            first.push(plain(c));
                            content.extend(content_events(id, None, p, now));
                        }
                    }
                }
                (Some(b), Some(p)) => {
                    content.extend(content_events(id, Some(b), p, now));
                    if p.version != b.version {
                        let mut c = Change::new(ChangeKind::Updated, id, now);
                        c.version = Some(p.version);
                        updates.push(plain(c));
                    }
                }
                (Some(_), None) => match self.aliases.get(&id).and_then(|(_, now_to)| *now_to) {
                    Some(survivor) => {
                        for (on, version) in [(id, None), (survivor, self.version_after(survivor))]
                        {
                            let mut c = Change::new(ChangeKind::Merged, on, now);
                            c.version = version;
                            c.survivor_id = Some(survivor);
                            c.merged_id = Some(id);
                            merges.push(plain(c));
                        }
                    }
                    None => erasures.push(plain(Change::new(ChangeKind::Erased, id, now))),
                },
                (None, None) => {}
            }
        }
        // An erasure ends the streams of the ids merged into the erased
        // profile too (their aliases go with it).
        let erased: BTreeSet<CustomerId> = erasures.iter().map(|e| e.change.customer_id).collect();
        for (member, (was, now_to)) in &self.aliases {
            let gone = !matches!(self.after.get(member), Some(Some(_)));
            if now_to.is_none() && gone && was.is_some_and(|root| erased.contains(&root)) {
                erasures.push(plain(Change::new(ChangeKind::Erased, *member, now)));
            }
        }
        for (member, interaction) in &self.interactions {
            let on = self.live_owner(*member);
            let mut c = Change::new(ChangeKind::InteractionAdded, on, now);
            c.interaction_id = Some(interaction.id.clone());
            content.push(LiveEvent {
                change: c,
                data: Some(Payload::Interaction(interaction.clone())),
            });
        }

        let mut customers: BTreeSet<CustomerId> = self.after.keys().copied().collect();
        for (absorbed, (was, now_to)) in &self.aliases {
            customers.insert(*absorbed);
            customers.extend(was.iter().chain(now_to.iter()).copied());
        }
        let events = first
            .into_iter()
            .chain(merges)
            .chain(content)
            .chain(updates)
            .chain(erasures)
            .collect();
        (events, customers, self.identifiers)
    }

    fn version_after(&self, id: CustomerId) -> Option<u64> {
        self.after
            .get(&id)
            .and_then(|p| p.as_ref())
            .map(|p| p.version)
    }

    /// The profile (put by this write) that `member` belongs to, or itself.
    fn live_owner(&self, member: CustomerId) -> CustomerId {
        self.after
            .values()
            .flatten()
            .find(|p| p.members().any(|m| m == member))
            .map_or(member, |p| p.customer_id)
    }
}

/// Answers captured and episodes changed between `before` and `after`.
fn content_events(
    id: CustomerId,
    before: Option<&Profile>,
    after: &Profile,
    now: DateTime<Utc>,
) -> Vec<LiveEvent> {
    let mut out = Vec::new();
    for (key, answer) in &after.answers {
        // Another answer, not older than what the profile held (a merge
        // brings the absorbed profile's newer answers; an unmerge taking some
        // back is no capture).
        let old = before.and_then(|b| b.answers.get(key));
        if old.is_none_or(|o| o != answer && answer.captured_at >= o.captured_at) {
            let mut c = Change::new(ChangeKind::AnswerCaptured, id, now);
            c.key = Some(key.clone());
            out.push(LiveEvent {
                change: c,
                data: Some(Payload::Answer(answer.clone())),
            });
        }
    }
    for (episode_id, episode) in &after.episodes {
        let old = before.and_then(|b| b.episodes.get(episode_id));
        if old.is_none_or(|o| {
            episode.updated_at > o.updated_at
                || (o != episode && o.updated_at == episode.updated_at)
        }) {
            let mut c = Change::new(ChangeKind::EpisodeUpdated, id, now);
            c.episode_id = Some(episode_id.clone());
            out.push(LiveEvent {
                change: c,
                data: Some(Payload::Episode(episode.clone())),
            });
        }
    }
    out
}
