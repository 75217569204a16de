//! The rules of the memory: identifiers and their normalisers, signals, profiles,
//! reconciliation of traits and answers, and identity resolution. Pure: no I/O,
//! no clock except where a caller passes `now`, no actix, sled or redis.

mod access;
mod change;
mod customer_id;
pub mod definitions;
mod history;
mod identifier;
pub mod json;
pub mod names;
mod position;
mod profile;
mod resolve;
pub mod segment;
mod signal;
mod trust;

pub use access::Access;
pub use change::{Change, ChangeKind, Committed, LiveEvent, Payload};
pub use customer_id::{CustomerId, CustomerIdError};
pub use definitions::{
    IdentifierSettings, IdentifierTypeSettings, InteractionPredicate, JourneyRule, MergePolicy,
    NormaliserKind, OfferSettings, PredicateSettings, SegmentSettings, TrustLevel, TrustSettings,
};
pub use history::{Contribution, IdentityEvent, IdentityEventKind, Suggestion};
pub use identifier::{
    Identifier, IdentifierError, IdentifierRules, IgnoredIdentifier, NormaliseOutcome, TypeRule,
};
pub use position::{parse_decimal, FollowUpKey, TimelinePosition};
pub use profile::{
    Answer, ChannelStats, Consent, Episode, EpisodeReport, EpisodeStatus, Feedback, Hit,
    IdentifierRecord, Interaction, Journey, Membership, MergeLink, Profile, ProfileEdit,
    SplitError, StageVisit, TraitValue, CONSENT_HISTORY, MERGE_CHANNEL,
};
pub use resolve::{
    plan_resolution, Assertion, Conflict, ConflictReason, Link, Owner, ResolutionPlan,
};
pub use segment::{JourneyRules, Offer, Personalization, RuleError};
pub use signal::{
    check_answers, check_signal_id, check_traits, edits_of, interaction_of, json_size,
    non_null_value_schema, trait_map_schema, AnswerInput, Caps, ChannelRules, EpisodeInput,
    EventInput, FeedbackInput, IdentifierInput, Signal, SignalEdits, SignalError, SignalInput,
    SignalRules, ValidAnswer, ValidEvent, ValidFeedback, MAX_ANSWERS_PER_SIGNAL, MAX_IDENTIFIERS,
    MAX_TRAITS_PER_SIGNAL,
};
pub use trust::{Trust, TrustRules};

/// FNV-1a of `bytes` as 16 hex digits: stable across builds and versions
/// (unlike `std`'s hasher), for fingerprints that are stored.
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// `[a-z][a-z0-9_]{0,max-1}`: the shape of channel, identifier type and question
/// key names, so they are safe in keys, metrics labels and URLs.
pub fn is_valid_name(name: &str, max: usize) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

/// Trait names additionally allow dots for namespacing: `[a-z][a-z0-9_.]{0,63}`.
pub fn is_valid_trait_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'.')
}
