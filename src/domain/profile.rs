//! The stored shape of a profile and the reconciliation rules that keep it the
//! same whatever order signals arrive in.
//!
//! Every "latest wins" field compares `(observed time, channel rank, signal id,
//! value)` in that order, a total order: two replicas that saw the same signals
//! in any order hold the same values.
//!
//! Size: about 1,000 lines, kept in one file for now because the value
//! types, their ordering and `Profile::apply`/`absorb`/`split` share private
//! helpers; the planned split is `profile/{values,order,edit,merge,unmerge}`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::customer_id::CustomerId;
use super::identifier::Identifier;
use super::signal::ChannelRules;

/// A profile as the store keeps it. The timeline is not inside: interactions live
/// under the id of the profile they were written to, and a merged profile reads
/// the timelines of all its members, so a merge never copies interactions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub customer_id: CustomerId,
    /// Bumped on every change; callers use it to detect stale copies.
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub identifiers: Vec<IdentifierRecord>,
    /// Includes deletions (`value: None`) so an older value arriving late cannot
    /// resurrect a deleted trait.
    pub traits: BTreeMap<String, TraitValue>,
    pub answers: BTreeMap<String, Answer>,
    pub channels: BTreeMap<String, ChannelStats>,
    /// Every id this profile absorbed, directly or through a chain.
    pub merged_ids: Vec<CustomerId>,
    pub journey: Option<Journey>,
    pub episodes: BTreeMap<String, Episode>,
    /// Purpose -> the customer's latest decision.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consents: BTreeMap<String, Consent>,
    /// Purpose -> the newest decisions, newest first (at most
    /// [`CONSENT_HISTORY`]), the current one included.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consent_log: BTreeMap<String, Vec<Consent>>,
    /// Stage -> when it was first and last reached, and on which channels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stages: BTreeMap<String, StageVisit>,
    /// Counter key -> the newest interactions it counted (see
    /// `domain::segment`): what windowed segment predicates are decided on,
    /// so no read ever scans the timeline.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<String, Vec<Hit>>,
    /// Segments the profile was in at its last write, and until when that
    /// holds without another write (a window passing, an answer expiring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<Membership>,
    /// What each member contributed, kept once this profile has absorbed
    /// another (empty: the profile is its own only member, and the fields above
    /// are its contribution). The fields above are always the fold of these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facets: BTreeMap<CustomerId, Profile>,
    /// The merge tree: each absorbed member and how it joined.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<CustomerId, MergeLink>,
    /// In a contribution: how many changes it received (an unmerge compares
    /// this with the count at the merge to tell whether anything changed).
    #[serde(default)]
    pub writes: u64,
}

/// How an absorbed member joined its survivor, and what it was then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeLink {
    /// The profile that absorbed it (in a chain, not necessarily the root).
    pub into: CustomerId,
    pub at: DateTime<Utc>,
    /// The signal or token subject that caused the merge.
    pub cause: String,
    /// The absorbed profile's version and update time at the merge, restored
    /// by an unmerge when nothing arrived for it since.
    pub version_before: u64,
    pub updated_before: DateTime<Utc>,
    /// Changes recorded in the absorbed subtree's contributions at the merge.
    pub writes_at_merge: u64,
    /// The absorbed subtree's members at the merge (it and what it had absorbed).
    #[serde(default)]
    pub members_at_merge: Vec<CustomerId>,
    /// Consents the merge restricted (the two sides disagreed): undone with it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consents: BTreeMap<String, Consent>,
}

/// A consent decision for one purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub granted: bool,
    /// The channel it was given on (`merge` for a restriction a merge made).
    pub channel: String,
    pub at: DateTime<Utc>,
}

impl Consent {
    /// The later decision wins; on the same instant a denial wins.
    fn beats(&self, current: &Consent) -> bool {
        (self.at, !self.granted, &self.channel) > (current.at, !current.granted, &current.channel)
    }
}

/// The channel name recorded on a restriction made by a merge.
pub const MERGE_CHANNEL: &str = "merge";

/// Decisions kept per consent purpose.
pub const CONSENT_HISTORY: usize = 20;

/// When a journey stage was first and last reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageVisit {
    pub first_at: DateTime<Utc>,
    pub first_channel: String,
    pub last_at: DateTime<Utc>,
    pub last_channel: String,
}

impl StageVisit {
    /// Folds another report of the same stage in; commutative.
    fn fold(&mut self, other: &StageVisit) {
        if (other.first_at, &other.first_channel) < (self.first_at, &self.first_channel) {
            self.first_at = other.first_at;
            self.first_channel = other.first_channel.clone();
        }
        if (other.last_at, &other.last_channel) > (self.last_at, &self.last_channel) {
            self.last_at = other.last_at;
            self.last_channel = other.last_channel.clone();
        }
    }
}

/// One interaction a counter counted: when it happened, and its id (so the
/// same interaction is never counted twice, whatever merges bring it again).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hit {
    pub at: DateTime<Utc>,
    pub id: String,
}

/// Segment membership as of a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub segments: Vec<String>,
    /// Which segment definitions decided it: after a change of
    /// configuration, a read works membership out again.
    #[serde(default)]
    pub rules: String,
    /// Past this instant the membership must be worked out again (`None`:
    /// it holds until the next write).
    pub until: Option<DateTime<Utc>>,
}

/// What a customer said about how an episode was handled.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Feedback {
    pub at: DateTime<Utc>,
    pub channel: String,
    /// Net promoter score, 0 to 10.
    pub nps: Option<u8>,
    /// Customer effort score, 1 to 7.
    pub ces: Option<u8>,
    pub comment: Option<String>,
}

/// One change to a profile, applied to the view and to the contributing member.
#[derive(Debug, Clone)]
pub enum ProfileEdit {
    SeeIdentifier {
        identifier: Identifier,
        channel: String,
        at: DateTime<Utc>,
        /// Seen on a claim only; a verified sighting clears the mark for good.
        claimed: bool,
    },
    RemoveIdentifier(Identifier),
    /// An identifier's whole record, taken over as it is (first and last
    /// sighting, channel, claim mark): a stored identifier moving to its
    /// canonical spelling. Folded into the record already there, if any.
    AdoptIdentifier(IdentifierRecord),
    Trait {
        name: String,
        value: TraitValue,
    },
    Answer {
        key: String,
        answer: Answer,
    },
    Channel {
        channel: String,
        at: DateTime<Utc>,
        interactions: u64,
    },
    Journey(Journey),
    Episode {
        id: String,
        title: Option<String>,
        status: Option<EpisodeStatus>,
        public_status: Option<String>,
        feedback: Option<Feedback>,
        channel: String,
        at: DateTime<Utc>,
    },
    Consent {
        purpose: String,
        consent: Consent,
    },
    /// An interaction a segment counter counts; the counter keeps the
    /// newest `keep`.
    Count {
        counter: String,
        hit: Hit,
        keep: usize,
    },
}

/// Why an unmerge cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("{0} is not merged into this profile")]
    NotMerged(CustomerId),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentifierRecord {
    #[serde(flatten)]
    pub identifier: Identifier,
    /// The channel that first reported it.
    pub channel: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Only ever claimed (typed or told, see `[trust]`), never verified: it
    /// neither merges nor lends this profile to a verified signal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claimed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraitValue {
    /// `None` records a deletion.
    pub value: Option<Value>,
    pub channel: String,
    pub observed_at: DateTime<Utc>,
    pub signal_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub value: Value,
    pub question: Option<String>,
    pub channel: String,
    pub captured_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub signal_id: Option<String>,
}

impl Answer {
    pub fn is_fresh(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelStats {
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Interactions (events) recorded on this channel.
    pub interactions: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journey {
    pub stage: String,
    pub updated_at: DateTime<Utc>,
    pub channel: String,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeStatus {
    Open,
    WaitingOnCustomer,
    WaitingOnUs,
    Resolved,
}

impl EpisodeStatus {
    pub fn is_open(self) -> bool {
        self != EpisodeStatus::Resolved
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub id: String,
    pub title: Option<String>,
    /// When `title` was last set (`MIN_UTC` when never).
    #[serde(default = "never")]
    pub title_at: DateTime<Utc>,
    pub status: EpisodeStatus,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When `status` was last set; the later report wins.
    pub status_at: DateTime<Utc>,
    pub channels: BTreeSet<String>,
    pub last_channel: String,
    /// A status line meant for the customer ("Your parcel left our depot").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_status: Option<String>,
    /// When `public_status` was last set (`MIN_UTC` when never).
    #[serde(default = "never")]
    pub public_status_at: DateTime<Utc>,
    /// The latest feedback on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<Feedback>,
}

fn never() -> DateTime<Utc> {
    DateTime::<Utc>::MIN_UTC
}

impl Episode {
    /// Folds another report (or another profile's copy) of the same episode in.
    /// Commutative: the result does not depend on which side is `self`.
    pub fn fold(&mut self, other: &Episode, channels: &ChannelRules) {
        self.opened_at = self.opened_at.min(other.opened_at);
        self.channels.extend(other.channels.iter().cloned());
        let theirs = (
            other.updated_at,
            std::cmp::Reverse(channels.rank(&other.last_channel)),
            &other.last_channel,
        );
        let mine = (
            self.updated_at,
            std::cmp::Reverse(channels.rank(&self.last_channel)),
            &self.last_channel,
        );
        if theirs > mine {
            self.updated_at = other.updated_at;
            self.last_channel = other.last_channel.clone();
        }
        if (other.title_at, &other.title) > (self.title_at, &self.title) {
            self.title = other.title.clone();
            self.title_at = other.title_at;
        }
        if (other.status_at, other.status) > (self.status_at, self.status) {
            self.status = other.status;
            self.status_at = other.status_at;
        }
        if (other.public_status_at, &other.public_status)
            > (self.public_status_at, &self.public_status)
        {
            self.public_status = other.public_status.clone();
            self.public_status_at = other.public_status_at;
        }
        if other.feedback > self.feedback {
            self.feedback = other.feedback.clone();
        }
    }

    /// When it was resolved, if it is and no feedback arrived since: a
    /// follow-up is due a configured delay after this.
    pub fn awaiting_feedback(&self) -> Option<DateTime<Utc>> {
        (self.status == EpisodeStatus::Resolved
            && self.feedback.as_ref().is_none_or(|f| f.at < self.status_at))
        .then_some(self.status_at)
    }

    /// When it was resolved, if it is.
    pub fn resolved_at(&self) -> Option<DateTime<Utc>> {
        (self.status == EpisodeStatus::Resolved).then_some(self.status_at)
    }
}

/// What one report says about an episode; `None` fields say nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct EpisodeReport<'a> {
    pub title: Option<&'a str>,
    pub status: Option<EpisodeStatus>,
    pub public_status: Option<&'a str>,
    pub feedback: Option<&'a Feedback>,
}

/// One touchpoint on the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    /// `<millis>.<sequence>`: unique, and the timeline's sort key.
    pub id: String,
    pub channel: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub summary: Option<String>,
    pub episode_id: Option<String>,
    pub journey_stage: Option<String>,
    pub properties: serde_json::Map<String, Value>,
    pub signal_id: Option<String>,
    /// When the service received the signal, where that differs from
    /// `occurred_at` (the signal named an earlier or a later time). A later
    /// `occurred_at` is never stored: it is ordered as the receipt time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<DateTime<Utc>>,
}

/// Orders two observations: `Greater` means `a` wins.
fn observation_order(
    channels: &ChannelRules,
    (a_at, a_channel, a_signal): (DateTime<Utc>, &str, Option<&str>),
    (b_at, b_channel, b_signal): (DateTime<Utc>, &str, Option<&str>),
) -> Ordering {
    a_at.cmp(&b_at)
        // A lower rank is a higher priority, so the comparison is reversed.
        .then_with(|| channels.rank(b_channel).cmp(&channels.rank(a_channel)))
        .then_with(|| a_signal.cmp(&b_signal))
}

fn value_order(a: &Option<Value>, b: &Option<Value>) -> Ordering {
    let text = |v: &Option<Value>| v.as_ref().map(Value::to_string);
    text(a).cmp(&text(b))
}

impl TraitValue {
    /// Whether `self` should replace `current`.
    pub fn beats(&self, current: &TraitValue, channels: &ChannelRules) -> bool {
        observation_order(
            channels,
            (self.observed_at, &self.channel, self.signal_id.as_deref()),
            (
                current.observed_at,
                &current.channel,
                current.signal_id.as_deref(),
            ),
        )
        .then_with(|| value_order(&self.value, &current.value))
            == Ordering::Greater
    }
}

impl Answer {
    pub fn beats(&self, current: &Answer, channels: &ChannelRules) -> bool {
        observation_order(
            channels,
            (self.captured_at, &self.channel, self.signal_id.as_deref()),
            (
                current.captured_at,
                &current.channel,
                current.signal_id.as_deref(),
            ),
        )
        .then_with(|| self.value.to_string().cmp(&current.value.to_string()))
        .then_with(|| self.question.cmp(&current.question))
        .then_with(|| self.expires_at.cmp(&current.expires_at))
            == Ordering::Greater
    }
}

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
    fn as_facet(&self) -> Profile {
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
    fn apply_here(&mut self, change: &ProfileEdit, channels: &ChannelRules) -> bool {
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
    fn visit_stage(&mut self, stage: &str, visit: &StageVisit) {
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

    /// Writes attributed to this profile's members in all.
    fn subtree_writes(&self) -> u64 {
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

fn merge_identifier_record(
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
fn fold(
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
