//! What a signal is judged by, built once from the settings: channels,
//! identifier types, journey and answer rules, per-profile caps, trust and
//! personalization.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{clip, SignalError};
use crate::domain::identifier::IdentifierRules;
use crate::domain::is_valid_name;
use crate::domain::segment::{JourneyRules, Personalization};

/// Channel names and their priority.
#[derive(Debug, Clone)]
pub struct ChannelRules {
    priority: Vec<String>,
    allow_unknown: bool,
}

impl ChannelRules {
    pub fn new(priority: Vec<String>, allow_unknown: bool) -> ChannelRules {
        ChannelRules {
            priority,
            allow_unknown,
        }
    }

    /// Position in the priority list; unknown channels rank after all known ones.
    pub fn rank(&self, channel: &str) -> usize {
        self.priority
            .iter()
            .position(|c| c == channel)
            .unwrap_or(self.priority.len())
    }

    pub fn check(&self, channel: &str) -> Result<(), SignalError> {
        if !is_valid_name(channel, 32) {
            return Err(SignalError::InvalidChannel(clip(channel)));
        }
        if !self.allow_unknown && !self.priority.iter().any(|c| c == channel) {
            return Err(SignalError::UnknownChannel(channel.to_owned()));
        }
        Ok(())
    }
}

/// Everything validation needs besides the signal.
#[derive(Debug, Clone)]
pub struct SignalRules {
    pub identifiers: IdentifierRules,
    pub channels: ChannelRules,
    pub stages: Vec<String>,
    pub event_stages: BTreeMap<String, String>,
    /// `journey.rules`: checked before `event_stages`.
    pub journey_rules: JourneyRules,
    pub answer_ttl: BTreeMap<String, Duration>,
    pub caps: Caps,
    /// Who is believed about which identifier type.
    pub trust: crate::domain::trust::TrustRules,
    pub personalization: Personalization,
    /// How long after an episode is resolved its follow-up falls due.
    pub follow_up_delay: chrono::Duration,
}

/// Per-profile caps: the most absorbed profiles, identifiers, traits,
/// answers and episodes one holds, and the most bytes it takes as stored;
/// and the most bytes of properties one interaction carries.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    /// Most profiles one profile may have absorbed.
    pub max_merged: usize,
    /// Most identifiers one profile may hold.
    pub max_identifiers: usize,
    /// Most identifiers one profile may hold on a claim alone (see
    /// [`TrustSettings`](crate::domain::TrustSettings)): a claimant cannot fill a profile to its cap.
    pub max_claimed_identifiers: usize,
    /// Most traits (names, removed ones included) one profile may hold.
    pub max_traits: usize,
    /// Most answers one profile may hold.
    pub max_answers: usize,
    /// Most episodes one profile may hold.
    pub max_episodes: usize,
    /// Most bytes one profile may take as stored: past it, a signal's
    /// traits, answers and new episodes are left out (and reported), and
    /// merges that would exceed it are refused.
    pub max_profile_bytes: usize,
    /// Most bytes of `event.properties` one interaction may carry (422
    /// `properties_too_large` past it).
    pub max_properties_bytes: usize,
}

impl Caps {
    /// The built-in defaults (`config/default.toml`).
    pub const DEFAULT: Caps = Caps {
        max_merged: 100,
        max_identifiers: 1000,
        max_claimed_identifiers: 10,
        max_traits: 500,
        max_answers: 200,
        max_episodes: 500,
        max_profile_bytes: 256 * 1024,
        max_properties_bytes: 16 * 1024,
    };
}

impl SignalRules {
    /// Works out what a profile derives from the rest before it is stored:
    /// its segment membership as of `now` (nothing when no segment is
    /// configured: 60 bytes less on every profile).
    pub fn refresh(&self, p: &mut crate::domain::Profile, now: DateTime<Utc>) {
        p.membership = self
            .personalization
            .has_segments()
            .then(|| self.personalization.membership(p, now));
    }
}
