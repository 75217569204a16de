//! The stored shape of a profile and the reconciliation rules that keep it the
//! same whatever order signals arrive in.
//!
//! Every "latest wins" field compares `(observed time, channel rank, signal id,
//! value)` in that order, a total order: two replicas that saw the same signals
//! in any order hold the same values.
//!
//! The value types are here; the order that decides which observation wins
//! in `order`, how an edit applies to a profile in `edit`, and merging and
//! splitting profiles in `merge`.

mod edit;
mod merge;
mod order;

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
