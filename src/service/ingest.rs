//! Ingest: validate a signal where it arrives, then resolve and apply it on the
//! committer thread.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::views::{ignored_view, ConflictView, IngestResult};
use super::{atomically, ServiceError, Services};
use crate::domain::{
    plan_resolution, Answer, CustomerId, Interaction, Journey, Owner, Profile, ProfileState,
    Signal, SignalInput, SignalRules, TraitValue,
};
use crate::store::{Store, StoreError, StoreTx, TimelinePosition};

/// What the store keeps per `signal_id`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SignalRecord {
    /// Fingerprint of the signal's content, to tell a replay from a reuse.
    pub fingerprint: String,
    /// The first result; `None` once the profile was erased.
    pub result: Option<IngestResult>,
}

impl SignalRecord {
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|e| StoreError::Engine(e.to_string()))
    }

    pub fn decode(bytes: &[u8]) -> Result<SignalRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            key: "signal record".into(),
            reason: e.to_string(),
        })
    }
}

/// A result and whether the profile was created by it.
pub type Ingested = Result<IngestResult, ServiceError>;

/// One item of a batch: either already rejected by the caller's parsing, or a
/// signal to ingest.
pub enum BatchItem<E> {
    Rejected(E),
    Signal(Box<SignalInput>),
}

/// FNV-1a over the canonical JSON of what the signal asserts. Stable across
/// builds and versions (unlike `std`'s hasher), so records written by one
/// release are understood by the next.
fn fingerprint(signal: &Signal, explicit_time: bool) -> String {
    #[derive(Serialize)]
    struct Canonical<'a> {
        channel: &'a str,
        occurred_at: Option<DateTime<Utc>>,
        identifiers: Vec<String>,
        traits: &'a BTreeMap<String, Option<serde_json::Value>>,
        answers: Vec<(&'a str, &'a serde_json::Value, &'a Option<String>)>,
        event: Option<(&'a str, &'a Option<String>, Option<&'a str>)>,
    }
    let canonical = Canonical {
        channel: &signal.channel,
        occurred_at: explicit_time.then_some(signal.occurred_at),
        identifiers: signal.identifiers.iter().map(|i| i.to_string()).collect(),
        traits: &signal.traits,
        answers: signal
            .answers
            .iter()
            .map(|a| (a.key.as_str(), &a.value, &a.question))
            .collect(),
        event: signal.event.as_ref().map(|e| {
            (
                e.kind.as_str(),
                &e.summary,
                e.episode.as_ref().map(|ep| ep.id.as_str()),
            )
        }),
    };
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

impl Services {
    /// Resolves one signal. The result is unmasked; the caller masks it.
    pub async fn ingest(&self, input: SignalInput) -> Ingested {
        let now = Services::now();
        let explicit_time = input.occurred_at.is_some();
        let signal = Signal::parse(input, &self.rules, now)?;
        let fp = fingerprint(&signal, explicit_time);
        let rules = self.rules.clone();
        let result = self
            .committer
            .run(move |store| apply_signal(store, &signal, &fp, &rules, now))
            .await;
        record_outcome(result.as_ref().ok());
        result
    }

    /// Resolves a batch in order, each signal on its own: one failing signal
    /// does not stop the others. All are acknowledged after one flush.
    pub async fn ingest_batch<E: Send + 'static>(
        &self,
        items: Vec<BatchItem<E>>,
    ) -> Result<Vec<Result<IngestResult, Result<E, ServiceError>>>, ServiceError> {
        let now = Services::now();
        let prepared: Vec<Result<(Signal, String), Result<E, ServiceError>>> = items
            .into_iter()
            .map(|item| match item {
                BatchItem::Rejected(e) => Err(Ok(e)),
                BatchItem::Signal(input) => {
                    let explicit = input.occurred_at.is_some();
                    Signal::parse(*input, &self.rules, now)
                        .map(|s| {
                            let fp = fingerprint(&s, explicit);
                            (s, fp)
                        })
                        .map_err(|e| Err(ServiceError::Signal(e)))
                }
            })
            .collect();
        let rules = self.rules.clone();
        let results = self
            .committer
            .run(move |store| {
                Ok(prepared
                    .into_iter()
                    .map(|p| match p {
                        Ok((signal, fp)) => {
                            apply_signal(store, &signal, &fp, &rules, now).map_err(Err)
                        }
                        Err(e) => Err(e),
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        for r in &results {
            record_outcome(r.as_ref().ok());
        }
        Ok(results)
    }
}

fn record_outcome(result: Option<&IngestResult>) {
    match result {
        Some(r) => {
            let outcome = if r.created { "created" } else { "attached" };
            metrics::counter!("anamnesis_signals_ingested_total", "outcome" => outcome)
                .increment(1);
            if !r.merged_ids.is_empty() {
                metrics::counter!("anamnesis_merges_total", "kind" => "automatic")
                    .increment(r.merged_ids.len() as u64);
            }
        }
        None => {
            metrics::counter!("anamnesis_signals_ingested_total", "outcome" => "rejected")
                .increment(1);
        }
    }
}

/// Runs on the committer thread: resolves and applies one signal atomically.
fn apply_signal(
    store: &dyn Store,
    signal: &Signal,
    fingerprint: &str,
    rules: &SignalRules,
    now: DateTime<Utc>,
) -> Ingested {
    atomically(store, |tx| resolve(tx, signal, fingerprint, rules, now))
}

fn resolve(
    tx: &mut dyn StoreTx,
    signal: &Signal,
    fingerprint: &str,
    rules: &SignalRules,
    now: DateTime<Utc>,
) -> Ingested {
    if let Some(id) = &signal.signal_id {
        if let Some(bytes) = tx.signal_record(id)? {
            let record = SignalRecord::decode(&bytes)?;
            return match record.result {
                None => Err(ServiceError::SignalOfErasedProfile(id.clone())),
                Some(_) if record.fingerprint != fingerprint => {
                    Err(ServiceError::SignalIdReused(id.clone()))
                }
                Some(result) => Ok(result),
            };
        }
    }

    let mut owners = Vec::with_capacity(signal.identifiers.len());
    let mut profiles: BTreeMap<CustomerId, Profile> = BTreeMap::new();
    for identifier in &signal.identifiers {
        let owner = tx.owner(identifier)?;
        if let Some(id) = owner {
            if let std::collections::btree_map::Entry::Vacant(slot) = profiles.entry(id) {
                let profile = tx.profile(id)?.ok_or_else(|| {
                    StoreError::Engine(format!("identifier index names missing profile {id}"))
                })?;
                slot.insert(profile);
            }
        }
        owners.push(owner);
    }
    let summaries: BTreeMap<CustomerId, Owner> = profiles
        .iter()
        .map(|(id, p)| {
            let mut counts = BTreeMap::new();
            for r in &p.identifiers {
                *counts.entry(r.identifier.kind().to_owned()).or_default() += 1;
            }
            (
                *id,
                Owner {
                    customer_id: *id,
                    created_at: p.created_at,
                    counts,
                },
            )
        })
        .collect();
    let plan = plan_resolution(&signal.identifiers, &owners, &summaries, &rules.identifiers);

    let (mut target, created) = match plan.target.and_then(|t| profiles.remove(&t)) {
        Some(p) => (p, false),
        None => (Profile::new(CustomerId::generate(), now), true),
    };
    let channels = &rules.channels;
    let cause = signal
        .signal_id
        .clone()
        .map_or_else(|| "signal".to_owned(), |id| format!("signal:{id}"));
    for absorbed_id in &plan.absorb {
        let absorbed = profiles
            .remove(absorbed_id)
            .ok_or_else(|| StoreError::Engine(format!("profile {absorbed_id} vanished")))?;
        absorb(tx, &mut target, absorbed, &cause, now, channels)?;
    }
    let id = target.customer_id;
    for &i in &plan.attach {
        let identifier = &signal.identifiers[i];
        target.see_identifier(identifier, &signal.channel, signal.occurred_at, channels);
        tx.set_owner(identifier, id);
    }
    for (name, value) in &signal.traits {
        target.set_trait(
            name,
            TraitValue {
                value: value.clone(),
                channel: signal.channel.clone(),
                observed_at: signal.occurred_at,
                signal_id: signal.signal_id.clone(),
            },
            channels,
        );
    }
    for a in &signal.answers {
        target.set_answer(
            &a.key,
            Answer {
                value: a.value.clone(),
                question: a.question.clone(),
                channel: signal.channel.clone(),
                captured_at: signal.occurred_at,
                expires_at: a.expires_at,
                signal_id: signal.signal_id.clone(),
            },
            channels,
        );
    }
    target.touch_channel(
        &signal.channel,
        signal.occurred_at,
        u64::from(signal.event.is_some()),
    );
    if let Some(event) = &signal.event {
        let position = TimelinePosition {
            millis: u64::try_from(signal.occurred_at.timestamp_millis()).unwrap_or(0),
            seq: tx.next_sequence()?,
        };
        let interaction = Interaction {
            id: position.to_id(),
            channel: signal.channel.clone(),
            kind: event.kind.clone(),
            occurred_at: signal.occurred_at,
            summary: event.summary.clone(),
            episode_id: event.episode.as_ref().map(|e| e.id.clone()),
            journey_stage: event.journey_stage.clone(),
            properties: event.properties.clone(),
            signal_id: signal.signal_id.clone(),
        };
        tx.add_interaction(id, &interaction)?;
        if let Some(ep) = &event.episode {
            target.upsert_episode(
                &ep.id,
                ep.title.as_deref(),
                ep.status,
                &signal.channel,
                signal.occurred_at,
                channels,
            );
        }
        if let Some(stage) = &event.journey_stage {
            target.set_journey(
                Journey {
                    stage: stage.clone(),
                    updated_at: signal.occurred_at,
                    channel: signal.channel.clone(),
                },
                channels,
            );
        }
    }
    target.version += 1;
    target.updated_at = now.max(target.updated_at);
    tx.put_profile(&target)?;

    let result = IngestResult {
        customer_id: id,
        created,
        merged_ids: plan.absorb.clone(),
        conflicts: plan
            .conflicts
            .iter()
            .map(|c| ConflictView {
                customer_id: c.customer_id,
                kind: c.identifier.kind().to_owned(),
                value: c.identifier.value().to_owned(),
                reason: c.reason,
            })
            .collect(),
        version: target.version,
        ignored_identifiers: signal.ignored.iter().map(ignored_view).collect(),
    };
    if let Some(signal_id) = &signal.signal_id {
        let record = SignalRecord {
            fingerprint: fingerprint.to_owned(),
            result: Some(result.clone()),
        };
        tx.put_signal_record(signal_id, id, record.encode()?);
    }
    Ok(result)
}

/// Folds `absorbed` into `target` and re-points everything that named it. The
/// cost depends on the number of identifiers and merged ids, never on the
/// length of the timeline, which stays where it was written.
pub(super) fn absorb(
    tx: &mut dyn StoreTx,
    target: &mut Profile,
    absorbed: Profile,
    cause: &str,
    now: DateTime<Utc>,
    channels: &crate::domain::ChannelRules,
) -> Result<(), ServiceError> {
    let survivor = target.customer_id;
    target.absorb(&absorbed, channels);
    for record in &absorbed.identifiers {
        tx.set_owner(&record.identifier, survivor);
    }
    for old in absorbed.members() {
        tx.put_alias(old, survivor);
    }
    tx.delete_profile(absorbed.customer_id);
    tx.put_absorbed(
        absorbed.customer_id,
        &ProfileState {
            merged_into: survivor,
            merged_at: now,
            cause: cause.to_owned(),
            snapshot: absorbed,
        },
    )?;
    Ok(())
}
