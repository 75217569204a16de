//! The per-profile caps a signal's changes are held to.

use crate::domain::{json_size, Caps, Profile, ProfileEdit};
use crate::service::views::NotStoredView;

/// The changes of a signal that fit the profile's caps, and a note of each
/// one left out: a new trait, answer or episode past its count
/// (`profiles.max_traits`, `max_answers`, `max_episodes`), or a trait,
/// answer or episode write whose bytes no longer fit under
/// `profiles.max_profile_bytes` (the profile takes `stored_bytes` now; each
/// write is counted at the size of what it stores, twice once the profile
/// holds members' contributions). Removing a trait, and what does not grow
/// with traffic (identifiers, channel counts, the journey, consents,
/// segment counters, each bounded by configuration), always goes through:
/// a full profile still records who the customer is and that they came by.
pub(in crate::service) fn within_caps(
    profile: &Profile,
    changes: Vec<ProfileEdit>,
    stored_bytes: usize,
    caps: &Caps,
) -> (Vec<ProfileEdit>, Vec<NotStoredView>) {
    // What a stored entry costs beyond its name and value (times, channel).
    const ENTRY: usize = 120;
    let copies = if profile.facets.is_empty() { 1 } else { 2 };
    let mut room = caps.max_profile_bytes.saturating_sub(stored_bytes);
    let (mut traits, mut answers, mut episodes) = (
        profile.traits.len(),
        profile.answers.len(),
        profile.episodes.len(),
    );
    let mut not_stored = Vec::new();
    let mut kept = Vec::with_capacity(changes.len());
    for change in changes {
        let (item, known, count, max, what, cost) = match &change {
            ProfileEdit::Trait { name, value } => (
                format!("traits.{name}"),
                profile.traits.contains_key(name),
                &mut traits,
                caps.max_traits,
                "max_traits",
                value
                    .value
                    .as_ref()
                    .map_or(0, |v| name.len() + json_size(v) + ENTRY),
            ),
            ProfileEdit::Answer { key, answer } => (
                format!("answers.{key}"),
                profile.answers.contains_key(key),
                &mut answers,
                caps.max_answers,
                "max_answers",
                key.len()
                    + json_size(&answer.value)
                    + answer.question.as_ref().map_or(0, String::len)
                    + ENTRY,
            ),
            ProfileEdit::Episode { id, title, .. } => (
                format!("episodes.{id}"),
                profile.episodes.contains_key(id),
                &mut episodes,
                caps.max_episodes,
                "max_episodes",
                id.len() + title.as_ref().map_or(0, String::len) + 2 * ENTRY,
            ),
            ProfileEdit::SeeIdentifier { .. }
            | ProfileEdit::RemoveIdentifier(_)
            | ProfileEdit::AdoptIdentifier(_)
            | ProfileEdit::Channel { .. }
            | ProfileEdit::Journey(_)
            | ProfileEdit::Consent { .. }
            | ProfileEdit::Count { .. } => {
                kept.push(change);
                continue;
            }
        };
        let cost = cost * copies;
        let reason = if !known && *count >= max {
            Some(what)
        } else if cost > room {
            Some("max_profile_bytes")
        } else {
            None
        };
        match reason {
            Some(reason) => not_stored.push(NotStoredView {
                item,
                reason: reason.to_owned(),
            }),
            None => {
                *count += usize::from(!known);
                room -= cost;
                kept.push(change);
            }
        }
    }
    (kept, not_stored)
}
