//! Writing to a profile on its own behalf: traits, answers, a consent
//! decision; and erasing it with everything that leads to it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{live_in, update, Attribution};
use crate::domain::{
    check_answers, check_traits, Answer, AnswerInput, ChannelRules, Consent, CustomerId,
    IdentityEventKind, Profile, ProfileEdit, TraitValue,
};
use crate::service::erasures::Erasure;
use crate::service::ingest::{event, within_caps, Cause};
use crate::service::views::{self, Access, ProfileView};
use crate::service::{atomically, Caller, ServiceError, Services};
use crate::store::{SignalRecord, StoreError, StoreTx};

impl Services {
    pub async fn patch_traits(
        &self,
        id: CustomerId,
        channel: String,
        traits: BTreeMap<String, Value>,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        self.rules.channels.check(&channel)?;
        check_traits(&traits)?;
        let now = Services::now();
        let changes = traits
            .iter()
            .map(|(name, value)| ProfileEdit::Trait {
                name: name.clone(),
                value: TraitValue {
                    value: (!value.is_null()).then(|| value.clone()),
                    channel: channel.clone(),
                    observed_at: now,
                    signal_id: None,
                },
            })
            .collect();
        self.write_own(id, channel, changes, now, access).await
    }

    pub async fn add_answers(
        &self,
        id: CustomerId,
        channel: String,
        answers: Vec<AnswerInput>,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        self.rules.channels.check(&channel)?;
        let now = Services::now();
        let answers = check_answers(answers, now, &self.rules.answer_ttl)?;
        let changes = answers
            .into_iter()
            .map(|a| ProfileEdit::Answer {
                key: a.key,
                answer: Answer {
                    value: a.value,
                    question: a.question,
                    channel: channel.clone(),
                    captured_at: now,
                    expires_at: a.expires_at,
                    signal_id: None,
                },
            })
            .collect();
        self.write_own(id, channel, changes, now, access).await
    }

    /// Applies changes made on the profile's own behalf (an agent's or a
    /// bot's direct write) on `channel`, as one durable write.
    async fn write_own(
        &self,
        id: CustomerId,
        channel: String,
        mut changes: Vec<ProfileEdit>,
        now: DateTime<Utc>,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        changes.push(ProfileEdit::Channel {
            channel,
            at: now,
            interactions: 0,
        });
        let rules = self.rules.clone();
        let p = self
            .committer
            .run(move |store| {
                update(store, &rules, id, now, Attribution::Own, |tx, p| {
                    // A direct write is one change: all of it fits, or none
                    // of it is made.
                    let stored = tx.profile_bytes(p.customer_id)?;
                    let (kept, refused) = within_caps(p, changes.clone(), stored, &rules.caps);
                    if let Some(first) = refused.first() {
                        let caps = &rules.caps;
                        let (what, cap) = match first.reason.as_str() {
                            "max_traits" => ("traits", caps.max_traits),
                            "max_answers" => ("answers", caps.max_answers),
                            "max_episodes" => ("episodes", caps.max_episodes),
                            _ => ("bytes", caps.max_profile_bytes),
                        };
                        return Err(ServiceError::CapExceeded { what, cap });
                    }
                    apply_own(p, &kept, &rules.channels);
                    Ok(())
                })
            })
            .await?;
        Ok(views::profile_view(&p, &self.masking(access)))
    }

    /// Records the customer's decision for a purpose; the later decision wins.
    pub async fn set_consent(
        &self,
        id: CustomerId,
        purpose: String,
        granted: bool,
        channel: String,
        access: Access,
    ) -> Result<ProfileView, ServiceError> {
        if !self.purposes.contains(&purpose) {
            return Err(ServiceError::UnknownPurpose(
                purpose.chars().take(64).collect(),
            ));
        }
        self.rules.channels.check(&channel)?;
        let now = Services::now();
        let change = ProfileEdit::Consent {
            purpose,
            consent: Consent {
                granted,
                channel: channel.clone(),
                at: now,
            },
        };
        self.write_own(id, channel, vec![change], now, access).await
    }

    /// Erases a profile and everything that leads to it: identifiers, aliases,
    /// timelines, ledgers and suggestions of every member, and the results stored for
    /// its signals (replaced by a record that keeps no personal data).
    pub async fn erase(&self, id: CustomerId, caller: Caller) -> Result<(), ServiceError> {
        self.erase_with(id, caller, true).await
    }

    /// Erases `id`; `logged`: in the erasure log too (always, but when a
    /// restore applies the log again).
    pub(in crate::service) async fn erase_with(
        &self,
        id: CustomerId,
        caller: Caller,
        logged: bool,
    ) -> Result<(), ServiceError> {
        let now = Services::now();
        let cause = Cause::request(&caller);
        let log = self.erasures.clone().filter(|_| logged);
        self.committer
            .run(move |store| {
                atomically(store, |tx| {
                    let merged_ids = erase_in(tx, id, &cause, now)?;
                    // Logged before the write is flushed, so never
                    // acknowledged unlogged (see `erasures`); a line that
                    // cannot be written refuses the erasure.
                    if let Some(log) = &log {
                        let erasure = Erasure {
                            at: Utc::now(),
                            customer_id: id,
                            merged_ids,
                        };
                        log.append(&erasure).map_err(|e| {
                            StoreError::Engine(format!(
                                "appending to the erasure log {}: {e}",
                                log.path().display()
                            ))
                        })?;
                    }
                    Ok(())
                })
            })
            .await?;
        // Counted once committed: a shared store may run the write again.
        metrics::counter!("anamnesis_erasures_total").increment(1);
        Ok(())
    }
}

/// Erases the live profile `id` and everything it absorbed; returns the
/// ids it had absorbed.
fn erase_in(
    tx: &mut dyn StoreTx,
    id: CustomerId,
    cause: &Cause,
    now: DateTime<Utc>,
) -> Result<Vec<CustomerId>, ServiceError> {
    let p = live_in(tx, id)?;
    let tombstone = SignalRecord {
        fingerprint: String::new(),
        result: None,
    }
    .encode()?;
    for member in p.members() {
        crate::service::idempotency::forget_replies(tx, member)?;
        tx.delete_timeline(member)?;
        for signal_id in tx.signal_ids_of(member)? {
            tx.put_signal_record(&signal_id, member, tombstone.clone());
            tx.forget_signal_index(member, &signal_id);
        }
        tx.delete_history(member)?;
        tx.delete_suggestions_of(member)?;
        if member != id {
            tx.delete_alias(member);
        }
    }
    for r in &p.identifiers {
        tx.remove_owner(&r.identifier);
    }
    tx.delete_profile(id);
    // The ledger keeps that the erasure happened, and by whom; nothing else.
    tx.add_history(id, &event(IdentityEventKind::Erased, now, cause))?;
    Ok(p.merged_ids.clone())
}

/// Applies changes made on the profile's own behalf (an agent, a manual write):
/// they are the root member's contribution.
fn apply_own(p: &mut Profile, changes: &[ProfileEdit], channels: &ChannelRules) {
    let own = p.customer_id;
    for change in changes {
        p.apply(own, change, channels);
    }
}
