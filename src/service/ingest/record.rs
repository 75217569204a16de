//! What a signal id keeps: the fingerprint of what the signal asserted, by
//! which a retry is told from a different signal reusing the id, and the
//! result it was answered with, as stored and as answered again.

use crate::domain::{fnv1a, Signal};
use crate::service::views::{ConflictView, IgnoredView, IngestResult, NotStoredView};
use crate::store::{StoredConflict, StoredIgnored, StoredLeftOut, StoredResult};

impl From<&IngestResult> for StoredResult {
    fn from(r: &IngestResult) -> StoredResult {
        StoredResult {
            customer_id: r.customer_id,
            created: r.created,
            merged_ids: r.merged_ids.clone(),
            conflicts: (r.conflicts.iter())
                .map(|c| StoredConflict {
                    kind: c.kind.clone(),
                    value: c.value.clone(),
                    reason: c.reason,
                })
                .collect(),
            version: r.version,
            ignored_identifiers: (r.ignored_identifiers.iter())
                .map(|i| StoredIgnored {
                    index: i.index,
                    kind: i.kind.clone(),
                    value: i.value.clone(),
                    reason: i.reason.clone(),
                })
                .collect(),
            not_stored: (r.not_stored.iter())
                .map(|n| StoredLeftOut {
                    item: n.item.clone(),
                    reason: n.reason.clone(),
                })
                .collect(),
        }
    }
}

impl From<StoredResult> for IngestResult {
    fn from(r: StoredResult) -> IngestResult {
        IngestResult {
            customer_id: r.customer_id,
            created: r.created,
            merged_ids: r.merged_ids,
            conflicts: (r.conflicts.into_iter())
                .map(|c| ConflictView {
                    kind: c.kind,
                    value: c.value,
                    reason: c.reason,
                })
                .collect(),
            version: r.version,
            ignored_identifiers: (r.ignored_identifiers.into_iter())
                .map(|i| IgnoredView {
                    index: i.index,
                    kind: i.kind,
                    value: i.value,
                    reason: i.reason,
                })
                .collect(),
            not_stored: (r.not_stored.into_iter())
                .map(|n| NotStoredView {
                    item: n.item,
                    reason: n.reason,
                })
                .collect(),
        }
    }
}

/// FNV-1a over the canonical JSON of what the signal asserts (see
/// [`fnv1a`]), so records written by one release are understood by the next.
pub(super) fn fingerprint(signal: &Signal, claimed: &[bool]) -> String {
    let explicit_time = signal.occurred_at_given;
    // Everything the signal asserts; a defaulted time is the receiving time and
    // differs between retries, so only an explicit one counts.
    let canonical = serde_json::json!({
        "channel": signal.channel,
        "occurred_at": explicit_time.then_some(signal.occurred_at),
        "identifiers": signal
            .identifiers
            .iter()
            .zip(&signal.verified)
            .map(|(i, v)| (i.to_string(), *v))
            .collect::<Vec<_>>(),
        "traits": signal.traits,
        "answers": signal
            .answers
            .iter()
            // An expiry derived from a defaulted time varies between retries too.
            .map(|a| {
                serde_json::json!([a.key, a.value, a.question, explicit_time.then_some(a.expires_at)])
            })
            .collect::<Vec<_>>(),
        "event": signal.event.as_ref().map(|e| serde_json::json!({
            "type": e.kind,
            "summary": e.summary,
            "journey_stage": e.journey_stage.as_ref().filter(|_| e.journey_stage_given),
            "properties": e.properties,
            "episode": e.episode.as_ref().map(|ep| {
                let mut parts = vec![
                    serde_json::json!(ep.id),
                    serde_json::json!(ep.title),
                    serde_json::json!(ep.status),
                ];
                // Appended only when given, so signals recorded before these
                // fields existed keep their fingerprint.
                if ep.public_status.is_some() || e.feedback.is_some() {
                    parts.push(serde_json::json!(ep.public_status));
                    parts.push(serde_json::json!(e.feedback.as_ref().map(|f| {
                        serde_json::json!([f.nps, f.ces, f.comment])
                    })));
                }
                parts
            }),
        })),
    });
    // Which identifiers the sender could only claim: the same id and body
    // from a sender who verifies them is another assertion, so a claimant
    // who guesses a trusted sender's next `signal_id` gets that signal a
    // 409, never its own claim-level result in place of the verified one.
    // Added only when there is a claim, so earlier records keep matching.
    let mut canonical = canonical;
    if claimed.contains(&true) {
        canonical["claimed"] = serde_json::json!(claimed);
    }
    fnv1a(&serde_json::to_vec(&canonical).unwrap_or_default())
}
