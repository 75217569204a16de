//! The rules as an operator writes them: the shapes the configuration's rule
//! sections (`[identifiers]`, `[trust]`, `[[journey.rules]]`, `[segments]`,
//! `[offers]`) take. They belong to the domain, which compiles them into
//! its rules; the configuration holds them and knows nothing of what they
//! mean.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[[journey.rules]]`: events of this type whose properties hold these
/// values move the customer to `stage`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyRule {
    pub event: String,
    /// Property name -> the value it must equal (all of them).
    #[serde(default)]
    pub properties: BTreeMap<String, serde_json::Value>,
    pub stage: String,
}

/// `[segments.<name>]`: a profile is in the segment while every predicate
/// of `when` holds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSettings {
    #[serde(default)]
    pub description: Option<String>,
    pub when: Vec<PredicateSettings>,
}

/// One condition of a segment. Exactly one of `trait`, `answer`,
/// `journey_stage`, `open_episodes` and `interactions` names what it looks at.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PredicateSettings {
    /// A current trait: exists, or compares with `equals`, `one_of`, `min`, `max`.
    #[serde(rename = "trait", default, skip_serializing_if = "Option::is_none")]
    pub trait_name: Option<String>,
    /// A fresh (unexpired) answer: exists, or compares with `equals`, `one_of`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<serde_json::Value>>,
    /// Numeric bounds on a trait's value (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The current journey stage is one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journey_stage: Option<Vec<String>>,
    /// At least this many episodes are not resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_episodes: Option<u32>,
    /// At least `at_least` matching interactions within the last `within`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactions: Option<InteractionPredicate>,
    /// The predicate must NOT hold.
    #[serde(default)]
    pub negate: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InteractionPredicate {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Property name -> the value it must equal (all of them).
    #[serde(default)]
    pub properties: BTreeMap<String, serde_json::Value>,
    pub at_least: u32,
    #[serde(with = "humantime_serde")]
    pub within: Duration,
}

/// `[offers.<id>]`: shown to profiles in any of `segments`, highest
/// `priority` first.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OfferSettings {
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    pub segments: Vec<String>,
    #[serde(default)]
    pub priority: i64,
    /// Passed to the caller as it is (an image, a link, a code).
    #[serde(default)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierSettings {
    pub allow_unknown_types: bool,
    /// Values that never identify anyone, for every type.
    #[serde(default)]
    pub placeholders: Vec<String>,
    pub types: BTreeMap<String, IdentifierTypeSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormaliserKind {
    /// Trim surrounding white space; case is kept.
    Trim,
    /// Trim and lower-case.
    Lowercase,
    /// Trim, lower-case and check the shape of an e-mail address.
    Email,
    /// Parse as a phone number and format it as E.164.
    Phone,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierTypeSettings {
    pub normaliser: NormaliserKind,
    /// Most values of this type on one profile; 0 means no limit.
    pub limit: usize,
    /// Lower wins when picking a merge survivor.
    pub priority: u32,
    pub pii: bool,
    /// Whether a match on this type may fuse two existing profiles: `true`,
    /// `false`, or `"suggest"` (record a merge suggestion instead).
    pub merge: MergePolicy,
    /// Extra placeholder values for this type only.
    #[serde(default)]
    pub placeholders: Vec<String>,
    /// A session identifier (a cookie, a chat session, a device): it names a
    /// browser or a conversation, not a person, so it may join a customer
    /// through a shared identifier where a person-identifying one may not.
    #[serde(default)]
    pub session: bool,
}

/// How far the service believes an identifier, by who asserts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustLevel {
    /// A value the customer typed or told (a web form, a chatbot): it never
    /// fuses customers nor reaches one who holds personal data.
    Claim,
    /// The channel checked it (a caller id, a login, a checkout).
    Verify,
}

impl TrustLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustLevel::Claim => "claim",
            TrustLevel::Verify => "verify",
        }
    }
}

/// The trust table: per caller, per identifier type, `verify` or `claim`.
/// A token bound to a channel (its `channel` claim) is judged by that
/// channel's row; a token without one by `unbound`. In a row, `"*"` sets the
/// level of every type it does not name; a type named nowhere is a claim.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSettings {
    /// Tokens without a channel claim: back-office systems, admin tokens,
    /// `anamnesis import`.
    pub unbound: BTreeMap<String, TrustLevel>,
    /// Channel -> identifier type (or `"*"`) -> level.
    #[serde(default)]
    pub channels: BTreeMap<String, BTreeMap<String, TrustLevel>>,
}

/// What a match on an identifier type may do to two profiles that already exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergePolicy {
    /// Fuse them.
    Merge,
    /// Never fuse them; report a conflict.
    Never,
    /// Do not fuse them; record a suggestion for a person to confirm.
    Suggest,
}

impl Serialize for MergePolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MergePolicy::Merge => s.serialize_bool(true),
            MergePolicy::Never => s.serialize_bool(false),
            MergePolicy::Suggest => s.serialize_str("suggest"),
        }
    }
}

impl<'de> Deserialize<'de> for MergePolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(true) => Ok(MergePolicy::Merge),
            Raw::Flag(false) => Ok(MergePolicy::Never),
            Raw::Word(w) if w == "suggest" => Ok(MergePolicy::Suggest),
            Raw::Word(w) if w == "true" => Ok(MergePolicy::Merge),
            Raw::Word(w) if w == "false" => Ok(MergePolicy::Never),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "merge must be true, false or \"suggest\", not `{w}`"
            ))),
        }
    }
}

/// The identifier types the service ships with (`config/default.toml`), for
/// the domain's own tests: read from the file, not through the configuration.
#[cfg(test)]
pub(crate) fn shipped_identifiers() -> IdentifierSettings {
    #[derive(Deserialize)]
    struct Shipped {
        identifiers: IdentifierSettings,
    }
    let all: toml::Table = toml::from_str(include_str!("../../config/default.toml"))
        .expect("the shipped configuration is TOML");
    let identifiers = all
        .get("identifiers")
        .expect("it has [identifiers]")
        .clone();
    let shipped: Shipped = toml::Table::from_iter([("identifiers".to_owned(), identifiers)])
        .try_into()
        .expect("its [identifiers] section reads");
    shipped.identifiers
}
