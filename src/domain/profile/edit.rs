//! How a [`ProfileEdit`] applies to a profile and to the member that
//! contributed it, each field by its own "latest wins" rule.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::merge::merge_identifier_record;
use super::order::observation_order;
use super::*;

impl Profile {
    pub fn new(customer_id: CustomerId, now: DateTime<Utc>) -> Profile {
        Profile {
            customer_id,
            version: 0,
            created_at: now,
            updated_at: now,
            identifiers: Vec::new(),
            traits: BTreeMap::new(),
            answers: BTreeMap::new(),
            channels: BTreeMap::new(),
            merged_ids: Vec::new(),
            journey: None,
            episodes: BTreeMap::new(),
            consents: BTreeMap::new(),
            consent_log: BTreeMap::new(),
            stages: BTreeMap::new(),
            counters: BTreeMap::new(),
            membership: None,
            facets: BTreeMap::new(),
            links: BTreeMap::new(),
            writes: 0,
        }
    }

    /// This profile's own data as a facet (no merge bookkeeping).
    pub(super) fn as_facet(&self) -> Profile {
        Profile {
            merged_ids: Vec::new(),
            facets: BTreeMap::new(),
            links: BTreeMap::new(),
            membership: None,
            ..self.clone()
        }
    }

    /// The member whose contribution holds `identifier` (the profile itself
    /// when it has absorbed nobody or nobody else holds it).
    pub fn member_of(&self, identifier: &Identifier) -> CustomerId {
        self.facets
            .iter()
            .find(|(_, f)| f.owns(identifier))
            .map_or(self.customer_id, |(id, _)| *id)
    }

    /// Applies one change here; says whether anything actually changed.
    pub(super) fn apply_here(&mut self, change: &ProfileEdit, channels: &ChannelRules) -> bool {
        fn differs<T: PartialEq>(before: Option<T>, after: Option<&T>) -> bool {
            before.as_ref() != after
        }
        match change {
            ProfileEdit::SeeIdentifier {
                identifier,
                channel,
                at,
                claimed,
            } => {
                let find = |p: &Profile| {
                    p.identifiers
                        .iter()
                        .position(|r| &r.identifier == identifier)
                };
                let before = find(self).map(|i| self.identifiers[i].clone());
                self.see_identifier(identifier, channel, *at, *claimed, channels);
                differs(before, find(self).map(|i| &self.identifiers[i]))
            }
            ProfileEdit::RemoveIdentifier(identifier) => {
                let count = self.identifiers.len();
                self.identifiers.retain(|r| &r.identifier != identifier);
                self.identifiers.len() != count
            }
            ProfileEdit::AdoptIdentifier(adopted) => {
                let find = |p: &Profile| {
                    p.identifiers
                        .iter()
                        .position(|r| r.identifier == adopted.identifier)
                };
                let before = find(self).map(|i| self.identifiers[i].clone());
                match find(self) {
                    Some(i) => merge_identifier_record(
                        &mut self.identifiers[i],
                        &adopted.channel,
                        adopted.first_seen,
                        adopted.last_seen,
                        adopted.claimed,
                        channels,
                    ),
                    None => self.identifiers.push(adopted.clone()),
                }
                differs(before, find(self).map(|i| &self.identifiers[i]))
            }
            ProfileEdit::Trait { name, value } => {
                let before = self.traits.get(name).cloned();
                self.set_trait(name, value.clone(), channels);
                differs(before, self.traits.get(name))
            }
            ProfileEdit::Answer { key, answer } => {
                let before = self.answers.get(key).cloned();
                self.set_answer(key, answer.clone(), channels);
                differs(before, self.answers.get(key))
            }
            ProfileEdit::Channel {
                channel,
                at,
                interactions,
            } => {
                let before = self.channels.get(channel).cloned();
                self.touch_channel(channel, *at, *interactions);
                differs(before, self.channels.get(channel))
            }
            ProfileEdit::Journey(j) => {
                let before = (self.journey.clone(), self.stages.get(&j.stage).cloned());
                self.set_journey(j.clone(), channels);
                self.visit_stage(
                    &j.stage,
                    &StageVisit {
                        first_at: j.updated_at,
                        first_channel: j.channel.clone(),
                        last_at: j.updated_at,
                        last_channel: j.channel.clone(),
                    },
                );
                before != (self.journey.clone(), self.stages.get(&j.stage).cloned())
            }
            ProfileEdit::Episode {
                id,
                title,
                status,
                public_status,
                feedback,
                channel,
                at,
            } => {
                let before = self.episodes.get(id).cloned();
                let report = EpisodeReport {
                    title: title.as_deref(),
                    status: *status,
                    public_status: public_status.as_deref(),
                    feedback: feedback.as_ref(),
                };
                self.upsert_episode(id, report, channel, *at, channels);
                differs(before, self.episodes.get(id))
            }
            ProfileEdit::Consent { purpose, consent } => {
                let before = (
                    self.consents.get(purpose).cloned(),
                    self.consent_log.get(purpose).cloned(),
                );
                self.set_consent(purpose, consent.clone());
                before
                    != (
                        self.consents.get(purpose).cloned(),
                        self.consent_log.get(purpose).cloned(),
                    )
            }
            ProfileEdit::Count { counter, hit, keep } => {
                let before = self.counters.get(counter).cloned();
                self.count(counter, std::slice::from_ref(hit), *keep);
                differs(before, self.counters.get(counter))
            }
        }
    }

    /// Applies `change` to the profile and to the contribution of `member`.
    pub fn apply(&mut self, member: CustomerId, change: &ProfileEdit, channels: &ChannelRules) {
        if self.apply_here(change, channels) {
            self.writes += 1;
        }
        if let Some(facet) = self.facets.get_mut(&member) {
            if facet.apply_here(change, channels) {
                facet.writes += 1;
            }
        }
    }

    pub fn set_consent(&mut self, purpose: &str, candidate: Consent) {
        let log = self.consent_log.entry(purpose.to_owned()).or_default();
        if !log.contains(&candidate) {
            log.push(candidate.clone());
            // Newest first by the same order that picks the current decision.
            log.sort_by(|a, b| (b.at, !b.granted, &b.channel).cmp(&(a.at, !a.granted, &a.channel)));
            log.truncate(CONSENT_HISTORY);
        }
        match self.consents.get(purpose) {
            Some(current) if !candidate.beats(current) => {}
            _ => {
                self.consents.insert(purpose.to_owned(), candidate);
            }
        }
    }

    /// Records that `stage` was reached (first and last times fold in).
    pub(super) fn visit_stage(&mut self, stage: &str, visit: &StageVisit) {
        match self.stages.get_mut(stage) {
            Some(mine) => mine.fold(visit),
            None => {
                self.stages.insert(stage.to_owned(), visit.clone());
            }
        }
    }

    /// Adds `hits` to a counter, keeping the newest `keep` distinct ones:
    /// the same whatever order they arrive in.
    pub fn count(&mut self, counter: &str, hits: &[Hit], keep: usize) {
        let kept = self.counters.entry(counter.to_owned()).or_default();
        for hit in hits {
            if !kept.contains(hit) {
                kept.push(hit.clone());
            }
        }
        kept.sort_by(|a, b| b.cmp(a));
        kept.truncate(keep.max(1));
    }

    /// Records a change of the profile as a whole (a merge, an unmerge) that
    /// is nobody's contribution.
    pub fn note_change(&mut self, now: DateTime<Utc>) {
        self.updated_at = self.updated_at.max(now);
        self.version += 1;
    }

    /// Records that one use case wrote to `member`'s contribution at `now`.
    pub fn note_write(&mut self, member: CustomerId, now: DateTime<Utc>) {
        self.note_change(now);
        if let Some(facet) = self.facets.get_mut(&member) {
            facet.updated_at = facet.updated_at.max(now);
        }
    }

    /// Records that `identifier` was seen on `channel` at `at`.
    pub fn see_identifier(
        &mut self,
        identifier: &Identifier,
        channel: &str,
        at: DateTime<Utc>,
        claimed: bool,
        channels: &ChannelRules,
    ) {
        match self
            .identifiers
            .iter_mut()
            .find(|r| &r.identifier == identifier)
        {
            Some(record) => merge_identifier_record(record, channel, at, at, claimed, channels),
            None => self.identifiers.push(IdentifierRecord {
                identifier: identifier.clone(),
                channel: channel.to_owned(),
                first_seen: at,
                last_seen: at,
                claimed,
            }),
        }
    }

    pub fn set_trait(&mut self, name: &str, candidate: TraitValue, channels: &ChannelRules) {
        match self.traits.get(name) {
            Some(current) if !candidate.beats(current, channels) => {}
            _ => {
                self.traits.insert(name.to_owned(), candidate);
            }
        }
    }

    pub fn set_answer(&mut self, key: &str, candidate: Answer, channels: &ChannelRules) {
        match self.answers.get(key) {
            Some(current) if !candidate.beats(current, channels) => {}
            _ => {
                self.answers.insert(key.to_owned(), candidate);
            }
        }
    }

    pub fn touch_channel(&mut self, channel: &str, at: DateTime<Utc>, interactions: u64) {
        let stats = self
            .channels
            .entry(channel.to_owned())
            .or_insert(ChannelStats {
                first_seen: at,
                last_seen: at,
                interactions: 0,
            });
        stats.first_seen = stats.first_seen.min(at);
        stats.last_seen = stats.last_seen.max(at);
        stats.interactions += interactions;
    }

    pub fn set_journey(&mut self, candidate: Journey, channels: &ChannelRules) {
        let wins = match &self.journey {
            None => true,
            Some(current) => {
                observation_order(
                    channels,
                    (
                        candidate.updated_at,
                        &candidate.channel,
                        Some(&candidate.stage),
                    ),
                    (current.updated_at, &current.channel, Some(&current.stage)),
                ) == Ordering::Greater
            }
        };
        if wins {
            self.journey = Some(candidate);
        }
    }

    /// Inserts or updates an episode by id. Each field keeps the latest report
    /// of it, with ties broken deterministically, so arrival order never matters.
    pub fn upsert_episode(
        &mut self,
        id: &str,
        r: EpisodeReport<'_>,
        channel: &str,
        at: DateTime<Utc>,
        channels: &ChannelRules,
    ) {
        let when = |given: bool| if given { at } else { DateTime::<Utc>::MIN_UTC };
        let report = Episode {
            id: id.to_owned(),
            title: r.title.map(str::to_owned),
            title_at: when(r.title.is_some()),
            status: r.status.unwrap_or(EpisodeStatus::Open),
            status_at: when(r.status.is_some()),
            opened_at: at,
            updated_at: at,
            channels: BTreeSet::from([channel.to_owned()]),
            last_channel: channel.to_owned(),
            public_status: r.public_status.map(str::to_owned),
            public_status_at: when(r.public_status.is_some()),
            feedback: r.feedback.cloned(),
        };
        match self.episodes.get_mut(id) {
            Some(episode) => episode.fold(&report, channels),
            None => {
                self.episodes.insert(id.to_owned(), report);
            }
        }
    }

    /// The channel of the most recent contact.
    pub fn last_channel(&self) -> Option<&str> {
        self.channels
            .iter()
            .max_by_key(|(name, stats)| (stats.last_seen, std::cmp::Reverse(*name)))
            .map(|(name, _)| name.as_str())
    }
}
