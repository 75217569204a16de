//! Ingest: validate a signal where it arrives, then resolve and apply it on the
//! committer thread.
//!
//! Size: about 1,000 lines. `resolve` still holds the translation of a
//! signal into profile edits; moving that pure part into the domain (and
//! out of this file) is the next step.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::idempotency::{Keyed, KEYED};
use super::views::{ignored_view, ConflictView, IgnoredView, IngestResult, NotStoredView};
use super::{atomically, Caller, ServiceError, Services, Writer};
use crate::domain::TimelinePosition;
use crate::domain::{
    fnv1a, json_size, plan_resolution, Answer, Assertion, Caps, ChannelRules, ConflictReason,
    Contribution, CustomerId, Feedback, Hit, Identifier, IdentityEvent, IdentityEventKind,
    Interaction, Journey, Link, Owner, Profile, ProfileEdit, Signal, SignalInput, SignalRules,
    Suggestion, TraitValue, Trust,
};
use crate::store::{
    SignalRecord, StoreError, StoreTx, StoredConflict, StoredIgnored, StoredLeftOut, StoredResult,
};

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

/// A result and whether the profile was created by it.
pub type Ingested = Result<IngestResult, ServiceError>;

/// One item of a batch: either already rejected by the caller's parsing, or a
/// signal to ingest.
pub enum BatchItem<E> {
    Rejected(E),
    Signal(Box<SignalInput>),
}

/// FNV-1a over the canonical JSON of what the signal asserts (see
/// [`fnv1a`]), so records written by one release are understood by the next.
fn fingerprint(signal: &Signal, claimed: &[bool]) -> String {
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

impl Services {
    /// Resolves one signal, believing its identifiers as far as `caller`
    /// may vouch for them (see [`crate::domain::TrustRules`]). The result is
    /// unmasked; the caller masks it.
    pub async fn ingest(&self, input: SignalInput, caller: Caller) -> Ingested {
        self.ingest_received(input, caller, Services::now()).await
    }

    /// Resolves one signal as if it was received at `received_at`: how a
    /// replay of stored signals (with the receipt times kept with them)
    /// orders them as they were ordered when they first arrived.
    pub async fn ingest_received(
        &self,
        input: SignalInput,
        caller: Caller,
        received_at: DateTime<Utc>,
    ) -> Ingested {
        let now = received_at;
        let signal = Signal::parse(input, &self.rules, now)?;
        let rules = self.rules.clone();
        let who = caller.clone();
        let applied = self
            .committer
            .run(move |store| apply_signal(store, &signal, &rules, now, &who))
            .await;
        Ok(after_commit(&caller, applied?))
    }

    /// Resolves a batch in order, each signal on its own: one failing signal
    /// does not stop the others. The batch goes to the committer in chunks
    /// of [`BATCH_CHUNK`], each a job of its own, so another writer waits
    /// for one chunk, never for a whole batch; it is answered once every
    /// chunk is durable.
    pub async fn ingest_batch<E: Send + 'static>(
        &self,
        items: Vec<BatchItem<E>>,
        caller: Caller,
    ) -> Result<Vec<Result<IngestResult, Result<E, ServiceError>>>, ServiceError> {
        self.ingest_batch_within(items, caller, true).await
    }

    /// [`Services::ingest_batch`] as one job, with no other writer to make
    /// way for: the command-line import, alone on its store.
    pub async fn ingest_batch_unlimited<E: Send + 'static>(
        &self,
        items: Vec<BatchItem<E>>,
        caller: Caller,
    ) -> Result<Vec<Result<IngestResult, Result<E, ServiceError>>>, ServiceError> {
        self.ingest_batch_within(items, caller, false).await
    }

    async fn ingest_batch_within<E: Send + 'static>(
        &self,
        items: Vec<BatchItem<E>>,
        caller: Caller,
        shared: bool,
    ) -> Result<Vec<Result<IngestResult, Result<E, ServiceError>>>, ServiceError> {
        let now = Services::now();
        let rules = self.rules.clone();
        let large = items.len() > BATCH_CHUNK;
        let parse = move || -> Vec<Result<Signal, Result<E, ServiceError>>> {
            items
                .into_iter()
                .map(|item| match item {
                    BatchItem::Rejected(e) => Err(Ok(e)),
                    BatchItem::Signal(input) => {
                        Signal::parse(*input, &rules, now).map_err(|e| Err(ServiceError::Signal(e)))
                    }
                })
                .collect()
        };
        // Normalising a large batch's identifiers takes milliseconds: on
        // the blocking pool, so the server thread keeps serving others.
        let prepared = if shared && large {
            tokio::task::spawn_blocking(parse)
                .await
                .map_err(|_| ServiceError::ShuttingDown)?
        } else {
            parse()
        };
        let chunk = if shared {
            BATCH_CHUNK
        } else {
            prepared.len().max(1)
        };
        let keyed = KEYED.try_with(Clone::clone).ok();
        let mut results = Vec::with_capacity(prepared.len());
        let mut rest = prepared.into_iter();
        loop {
            let part: Vec<_> = rest.by_ref().take(chunk).collect();
            if part.is_empty() {
                break;
            }
            let first = results.is_empty();
            let count = part.len();
            let rules = self.rules.clone();
            let who = caller.clone();
            // Signals that did not parse stay here; the job runs the others,
            // by reference, as it runs again if its group conflicted.
            let mut signals = Vec::with_capacity(count);
            let mut refused = Vec::new();
            for (i, p) in part.into_iter().enumerate() {
                match p {
                    Ok(signal) => signals.push((i, signal)),
                    Err(e) => refused.push((i, Err(e))),
                }
            }
            let job = move |store: &Writer<'_>| {
                Ok(signals
                    .iter()
                    .map(|(i, signal)| (*i, apply_signal(store, signal, &rules, now, &who)))
                    .collect::<Vec<_>>())
            };
            // Later chunks carry the key on (it was recorded by the first).
            let outcome = match (&keyed, first) {
                (Some(k), false) => {
                    let going_on = Keyed {
                        continuing: true,
                        ..k.clone()
                    };
                    KEYED.scope(going_on, self.committer.run(job)).await
                }
                _ => self.committer.run(job).await,
            };
            match outcome {
                Ok(out) => {
                    let mut merged: Vec<_> = out
                        .into_iter()
                        .map(|(i, applied)| (i, applied.map_err(Err)))
                        .chain(refused)
                        .collect();
                    merged.sort_by_key(|(i, _)| *i);
                    results.extend(merged.into_iter().map(|(_, r)| r));
                }
                Err(e) if first => return Err(e),
                // What befell a later chunk befalls each of its items.
                Err(e) => results.extend((0..count).map(|_| Err(Err(per_item(&e))))),
            }
        }
        Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(applied) => Ok(after_commit(&caller, applied)),
                Err(e) => {
                    metrics::counter!("anamnesis_signals_ingested_total", "outcome" => "rejected")
                        .increment(1);
                    Err(e)
                }
            })
            .collect())
    }
}

/// Signals per committer job of a batch: about 3 ms of the committer's time
/// each on two cores.
const BATCH_CHUNK: usize = 16;

/// The answer for each item of a chunk whose job failed as a whole.
fn per_item(e: &ServiceError) -> ServiceError {
    match e {
        ServiceError::Withdrawn => ServiceError::Withdrawn,
        ServiceError::ShuttingDown => ServiceError::ShuttingDown,
        _ => ServiceError::NotDurable,
    }
}

/// A signal's result, and whether this call made it (not a replay of the
/// result stored for its `signal_id`).
struct Applied {
    result: IngestResult,
    fresh: bool,
}

/// Counts a committed signal and audits the merges it made: one line per
/// absorbed profile, naming the caller, as for a manual merge. A replay made
/// no merge, and is neither counted as one nor audited.
fn after_commit(caller: &Caller, applied: Applied) -> IngestResult {
    let r = applied.result;
    let outcome = if r.created { "created" } else { "attached" };
    metrics::counter!("anamnesis_signals_ingested_total", "outcome" => outcome).increment(1);
    if applied.fresh && !r.merged_ids.is_empty() {
        metrics::counter!("anamnesis_merges_total", "kind" => "automatic")
            .increment(r.merged_ids.len() as u64);
        for merged in &r.merged_ids {
            crate::telemetry::record_signal_merge(
                &caller.subject,
                caller.channel.as_deref(),
                r.customer_id,
                *merged,
            );
        }
    }
    r
}

/// Runs on the committer thread: resolves and applies one signal atomically.
fn apply_signal(
    store: &Writer<'_>,
    signal: &Signal,
    rules: &SignalRules,
    now: DateTime<Utc>,
    caller: &Caller,
) -> Result<Applied, ServiceError> {
    atomically(store, |tx| resolve(tx, signal, rules, now, caller))
}

fn resolve(
    tx: &mut dyn StoreTx,
    signal: &Signal,
    rules: &SignalRules,
    now: DateTime<Utc>,
    caller: &Caller,
) -> Result<Applied, ServiceError> {
    let trust: Vec<Trust> = signal
        .identifiers
        .iter()
        .zip(&signal.verified)
        .map(|(ident, vouched)| {
            rules
                .trust
                .trust(caller.channel.as_deref(), ident.kind(), *vouched)
        })
        .collect();
    let claims: Vec<bool> = trust.iter().map(|t| *t == Trust::Claimed).collect();
    // Only a signal with an id is ever compared with an earlier one.
    let fingerprint = signal
        .signal_id
        .as_ref()
        .map(|_| fingerprint(signal, &claims));
    if let (Some(id), Some(fingerprint)) = (&signal.signal_id, &fingerprint) {
        if let Some(bytes) = tx.signal_record(id)? {
            let record = SignalRecord::decode(&bytes)?;
            return match record.result {
                None => Err(ServiceError::SignalOfErasedProfile(id.clone())),
                Some(_) if &record.fingerprint != fingerprint => {
                    Err(ServiceError::SignalIdReused(id.clone()))
                }
                Some(result) => Ok(Applied {
                    result: result.into(),
                    fresh: false,
                }),
            };
        }
    }

    let mut owners = Vec::with_capacity(signal.identifiers.len());
    let mut profiles: BTreeMap<CustomerId, Profile> = BTreeMap::new();
    // Bytes each takes as stored, read with it (the size cap).
    let mut sizes: BTreeMap<CustomerId, usize> = BTreeMap::new();
    for identifier in &signal.identifiers {
        let owner = tx.owner(identifier)?;
        if let Some(id) = owner {
            if let std::collections::btree_map::Entry::Vacant(slot) = profiles.entry(id) {
                let (profile, bytes) = tx.profile_sized(id)?.ok_or_else(|| {
                    StoreError::Engine(format!("identifier index names missing profile {id}"))
                })?;
                slot.insert(profile);
                sizes.insert(id, bytes);
            }
        }
        owners.push(owner);
    }
    let mut summaries: BTreeMap<CustomerId, Owner> = BTreeMap::new();
    for (id, p) in &profiles {
        let mut counts = BTreeMap::new();
        for r in &p.identifiers {
            *counts.entry(r.identifier.kind().to_owned()).or_default() += 1;
        }
        let owner = Owner {
            customer_id: *id,
            created_at: p.created_at,
            counts,
            claimed: p.identifiers.iter().filter(|r| r.claimed).count(),
            merged: p.merged_ids.len(),
            bytes: sizes.get(id).copied().unwrap_or(0),
        };
        summaries.insert(*id, owner);
    }
    // A verified (even vouched-for) identifier that its owner holds on a
    // claim alone links no better than a claim: whoever typed it first gains
    // nothing by it, least of all a merge with the customer who verifies
    // it. It moves to wherever the verified signal lands.
    let assertions: Vec<Assertion> = signal
        .identifiers
        .iter()
        .zip(&owners)
        .zip(&trust)
        .map(|((ident, owner), trust)| {
            let held_on_claim = owner
                .and_then(|o| profiles.get(&o))
                .and_then(|p| p.identifiers.iter().find(|r| &r.identifier == ident))
                .is_some_and(|r| r.claimed);
            let link = match trust {
                Trust::Claimed => Link::Claim,
                _ if held_on_claim => Link::Claim,
                Trust::Vouched => Link::Fuse,
                Trust::Verified => {
                    Link::verified(rules.identifiers.rule(ident.kind()).map(|r| r.merge))
                }
            };
            Assertion {
                link,
                claimed: *trust == Trust::Claimed,
                reclaim: *trust != Trust::Claimed && held_on_claim,
            }
        })
        .collect();
    let plan = plan_resolution(
        &signal.identifiers,
        &owners,
        &assertions,
        &summaries,
        &rules.identifiers,
        &rules.caps,
    );

    let (mut target, created) = match plan.target.and_then(|t| profiles.remove(&t)) {
        Some(p) => (p, false),
        None => (Profile::new(CustomerId::generate(), now), true),
    };
    let id = target.customer_id;
    let channels = &rules.channels;
    let cause = Cause {
        text: signal
            .signal_id
            .clone()
            .map_or_else(|| "signal".to_owned(), |sid| format!("signal:{sid}")),
        by: Some(caller.subject.clone()),
        channel: Some(signal.channel.clone()),
    };
    if created {
        tx.add_history(id, &event(IdentityEventKind::Created, now, &cause))?;
    }
    let mut absorbed_profiles = Vec::with_capacity(plan.absorb.len());
    for absorbed_id in &plan.absorb {
        let absorbed = profiles
            .remove(absorbed_id)
            .ok_or_else(|| StoreError::Engine(format!("profile {absorbed_id} vanished")))?;
        absorbed_profiles.push(absorbed);
    }
    // The identifier through which the signal reached a profile.
    let reached_through = |who: CustomerId| {
        signal
            .identifiers
            .iter()
            .zip(&owners)
            .filter(|(_, o)| **o == Some(who))
            .map(|(ident, _)| ident)
            .min_by_key(|ident| rules.identifiers.priority(ident.kind()))
            .cloned()
    };
    for absorbed in absorbed_profiles {
        let linking = Linking {
            // Named only when it is the survivor's own (not a member's, which
            // an unmerge could take away and an erasure then forget).
            survivor: reached_through(id).filter(|ident| target.member_of(ident) == id),
            absorbed: reached_through(absorbed.customer_id),
        };
        absorb(tx, &mut target, absorbed, linking, &cause, now, channels)?;
    }

    for conflict in &plan.conflicts {
        let suggested = matches!(
            conflict.reason,
            ConflictReason::MergeSuggested | ConflictReason::Claimed
        );
        if let (true, Some(other)) = (suggested, conflict.customer_id) {
            let ours: Vec<CustomerId> = target.members().collect();
            let theirs: Vec<CustomerId> = profiles
                .get(&other)
                .map_or_else(|| vec![other], |p| p.members().collect());
            suggest(
                tx,
                (id, &ours),
                (other, &theirs),
                &conflict.identifier,
                &cause.text,
                now,
            )?;
        }
    }

    // The member the signal speaks for: whoever held the highest-priority
    // identifier it matched; the new data becomes that member's contribution.
    let member = signal
        .identifiers
        .iter()
        .zip(&owners)
        .filter(|(_, o)| o.is_some_and(|o| o == id || plan.absorb.contains(&o)))
        .map(|(ident, _)| ident)
        .min_by_key(|ident| rules.identifiers.priority(ident.kind()))
        .map_or(id, |ident| target.member_of(ident));

    // Identifiers a verified signal takes back from a profile that only
    // claimed them: they leave that profile (and its ledger says so).
    let mut losers: BTreeMap<CustomerId, Profile> = BTreeMap::new();
    for &i in &plan.attach {
        let Some(o) = owners[i].filter(|o| *o != id && !plan.absorb.contains(o)) else {
            continue;
        };
        let identifier = &signal.identifiers[i];
        let loser = match losers.entry(o) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => match profiles.remove(&o) {
                Some(p) => e.insert(p),
                None => continue,
            },
        };
        let held_by = detach(tx, loser, identifier, &cause, now, channels)?;
        loser.note_write(held_by, now);
        owners[i] = None;
    }
    for mut loser in losers.into_values() {
        rules.refresh(&mut loser, now);
        tx.put_profile(&loser)?;
    }

    let at = signal.ordered_at();
    let mut changes: Vec<ProfileEdit> = Vec::new();
    for &i in &plan.attach {
        let identifier = &signal.identifiers[i];
        if owners[i].is_none() {
            tx.set_owner(identifier, id);
            let mut added = event(IdentityEventKind::IdentifierAdded, now, &cause);
            added.identifier = Some(identifier.clone());
            // In the ledger of the member that holds it, so that erasing that
            // member (after an unmerge) erases this entry too.
            tx.add_history(member, &added)?;
        }
        // A known identifier stays in the contribution that holds it; a new
        // one joins the member the signal speaks for.
        let holder = if owners[i].is_some() {
            target.member_of(identifier)
        } else {
            member
        };
        let seen = ProfileEdit::SeeIdentifier {
            identifier: identifier.clone(),
            channel: signal.channel.clone(),
            at,
            claimed: assertions[i].claimed,
        };
        target.apply(holder, &seen, channels);
    }
    for (name, value) in &signal.traits {
        changes.push(ProfileEdit::Trait {
            name: name.clone(),
            value: TraitValue {
                value: value.clone(),
                channel: signal.channel.clone(),
                observed_at: at,
                signal_id: signal.signal_id.clone(),
            },
        });
    }
    for a in &signal.answers {
        changes.push(ProfileEdit::Answer {
            key: a.key.clone(),
            answer: Answer {
                value: a.value.clone(),
                question: a.question.clone(),
                channel: signal.channel.clone(),
                captured_at: at,
                expires_at: a.expires_at,
                signal_id: signal.signal_id.clone(),
            },
        });
    }
    changes.push(ProfileEdit::Channel {
        channel: signal.channel.clone(),
        at,
        interactions: u64::from(signal.event.is_some()),
    });
    if let Some(event) = &signal.event {
        let position = TimelinePosition {
            millis: u64::try_from(at.timestamp_millis()).unwrap_or(0),
            seq: tx.next_sequence()?,
        };
        let interaction = Interaction {
            id: position.to_id(),
            channel: signal.channel.clone(),
            kind: event.kind.clone(),
            occurred_at: at,
            summary: event.summary.clone(),
            episode_id: event.episode.as_ref().map(|e| e.id.clone()),
            journey_stage: event.journey_stage.clone(),
            properties: event.properties.clone(),
            signal_id: signal.signal_id.clone(),
            received_at: (signal.received_at != at).then_some(signal.received_at),
        };
        // Stored under the member, so an unmerge takes it along.
        tx.add_interaction(member, &interaction)?;
        for counter in
            rules
                .personalization
                .counters_for(&event.kind, &signal.channel, &event.properties)
        {
            changes.push(ProfileEdit::Count {
                counter: counter.key.clone(),
                hit: Hit {
                    at,
                    id: interaction.id.clone(),
                },
                keep: counter.keep,
            });
        }
        if let Some(ep) = &event.episode {
            let feedback = event.feedback.as_ref().map(|f| Feedback {
                at,
                channel: signal.channel.clone(),
                nps: f.nps,
                ces: f.ces,
                comment: f.comment.clone(),
            });
            // The scores are traits too: the latest score says how the
            // customer feels now, whatever the episode.
            for (name, score) in [
                ("nps", event.feedback.as_ref().and_then(|f| f.nps)),
                ("ces", event.feedback.as_ref().and_then(|f| f.ces)),
            ] {
                if let Some(score) = score {
                    changes.push(ProfileEdit::Trait {
                        name: name.to_owned(),
                        value: TraitValue {
                            value: Some(score.into()),
                            channel: signal.channel.clone(),
                            observed_at: at,
                            signal_id: signal.signal_id.clone(),
                        },
                    });
                }
            }
            changes.push(ProfileEdit::Episode {
                id: ep.id.clone(),
                title: ep.title.clone(),
                status: ep.status,
                public_status: ep.public_status.clone(),
                feedback,
                channel: signal.channel.clone(),
                at,
            });
        }
        if let Some(stage) = &event.journey_stage {
            changes.push(ProfileEdit::Journey(Journey {
                stage: stage.clone(),
                updated_at: at,
                channel: signal.channel.clone(),
            }));
        }
    }
    let stored_bytes = if created {
        0
    } else {
        summaries.get(&id).map_or(0, |o| o.bytes)
            + plan
                .absorb
                .iter()
                .filter_map(|a| summaries.get(a))
                .map(|o| o.bytes)
                .sum::<usize>()
    };
    let (changes, not_stored) = within_caps(&target, changes, stored_bytes, &rules.caps);
    for change in &changes {
        target.apply(member, change, channels);
    }
    target.note_write(member, now);
    rules.refresh(&mut target, now);
    tx.put_profile(&target)?;

    let result = IngestResult {
        customer_id: id,
        created,
        merged_ids: plan.absorb.clone(),
        // Never another customer's id, and nothing about a claim: the answer
        // must not tell the sender whom an identifier belongs to.
        conflicts: plan
            .conflicts
            .iter()
            .filter(|c| !c.claimed && c.reason != ConflictReason::Claimed)
            .map(|c| ConflictView {
                kind: c.identifier.kind().to_owned(),
                value: c.identifier.value().to_owned(),
                reason: c.reason,
            })
            .collect(),
        version: target.version,
        ignored_identifiers: signal.ignored.iter().map(ignored_view).collect(),
        not_stored,
    };
    if let (Some(signal_id), Some(fingerprint)) = (&signal.signal_id, fingerprint) {
        let record = SignalRecord {
            fingerprint,
            result: Some(StoredResult::from(&result)),
        };
        // Indexed under the member it speaks for: erasing that member turns it
        // into a tombstone, whatever it was merged into at the time.
        tx.put_signal_record(signal_id, member, record.encode()?);
    }
    Ok(Applied {
        result,
        fresh: true,
    })
}

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
pub(super) fn within_caps(
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
            _ => {
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

/// The identifiers through which a signal reached the two sides of a merge
/// (none for a manual merge).
#[derive(Debug, Default)]
pub(super) struct Linking {
    pub survivor: Option<Identifier>,
    pub absorbed: Option<Identifier>,
}

/// Who made an identity change, and through what: named in every ledger entry.
#[derive(Debug, Clone)]
pub(super) struct Cause {
    /// `signal:<signal_id>`, `signal`, or `token:<subject>`.
    pub text: String,
    pub by: Option<String>,
    pub channel: Option<String>,
}

impl Cause {
    /// A change a caller asked for directly (not through a signal).
    pub fn request(caller: &Caller) -> Cause {
        Cause {
            text: format!("token:{}", caller.subject),
            by: Some(caller.subject.clone()),
            channel: caller.channel.clone(),
        }
    }
}

/// Folds `absorbed` into `target` and re-points everything that named it. The
/// cost depends on the number of identifiers and merged ids, never on the
/// length of the timeline, which stays where it was written.
pub(super) fn absorb(
    tx: &mut dyn StoreTx,
    target: &mut Profile,
    absorbed: Profile,
    linking: Linking,
    cause: &Cause,
    now: DateTime<Utc>,
    channels: &ChannelRules,
) -> Result<(), ServiceError> {
    let survivor = target.customer_id;
    let absorbed_id = absorbed.customer_id;
    for record in &absorbed.identifiers {
        tx.set_owner(&record.identifier, survivor);
    }
    for old in absorbed.members() {
        tx.put_alias(old, survivor);
    }
    tx.delete_profile(absorbed_id);
    // A suggestion between the two is settled by the merge.
    tx.delete_suggestion(survivor, absorbed_id);
    let contributed = Contribution::of(&absorbed);
    let survivor_contributed = Some(Contribution::of(target));
    let mut merged_in = event(IdentityEventKind::MergedIn, now, cause);
    // Each side's ledger names its own identifier of the link: a ledger goes
    // with its profile when that is erased, and so does what it names.
    merged_in.identifier = linking.survivor;
    merged_in.other_id = Some(absorbed_id);
    merged_in.contributed = Some(contributed);
    merged_in.survivor_contributed = survivor_contributed;
    tx.add_history(survivor, &merged_in)?;
    let mut merged_out = event(IdentityEventKind::MergedOut, now, cause);
    merged_out.identifier = linking.absorbed;
    merged_out.other_id = Some(survivor);
    merged_out.contributed = Some(contributed);
    merged_out.survivor_contributed = survivor_contributed;
    tx.add_history(absorbed_id, &merged_out)?;
    for purpose in target.absorb_member(absorbed, &cause.text, now, channels) {
        let mut restricted = event(IdentityEventKind::ConsentRestricted, now, cause);
        restricted.other_id = Some(absorbed_id);
        restricted.purpose = Some(purpose);
        tx.add_history(survivor, &restricted)?;
    }
    Ok(())
}

/// Records (or strengthens) the suggestion that `a` and `b` are one person,
/// unless a person already dismissed it.
fn suggest(
    tx: &mut dyn StoreTx,
    (a, a_members): (CustomerId, &[CustomerId]),
    (b, b_members): (CustomerId, &[CustomerId]),
    evidence: &Identifier,
    cause: &str,
    now: DateTime<Utc>,
) -> Result<(), ServiceError> {
    // A dismissal is remembered whatever either side absorbed since.
    for x in a_members {
        for y in b_members {
            if tx
                .suggestion(*x, *y)?
                .is_some_and(|s| s.dismissed_at.is_some())
            {
                return Ok(());
            }
        }
    }
    let mut s = match tx.suggestion(a, b)? {
        Some(s) if s.dismissed_at.is_some() => return Ok(()),
        Some(s) => s,
        None => Suggestion {
            evidence: Vec::new(),
            first_at: now,
            last_at: now,
            count: 0,
            last_cause: String::new(),
            dismissed_at: None,
        },
    };
    if !s.evidence.contains(evidence) {
        s.evidence.push(evidence.clone());
    }
    s.count += 1;
    s.last_at = now;
    s.last_cause = cause.to_owned();
    tx.put_suggestion(a, b, &s)?;
    metrics::counter!("anamnesis_merge_suggestions_total").increment(1);
    Ok(())
}

/// Takes `identifier` off profile `p`, from the member that holds it, and
/// records the removal in that member's ledger (which goes with it if it is
/// erased). Returns the member. The identifier index is the caller's to
/// update: it either frees the value or hands it to another profile.
pub(super) fn detach(
    tx: &mut dyn StoreTx,
    p: &mut Profile,
    identifier: &Identifier,
    cause: &Cause,
    now: DateTime<Utc>,
    channels: &ChannelRules,
) -> Result<CustomerId, ServiceError> {
    let member = p.member_of(identifier);
    p.apply(
        member,
        &ProfileEdit::RemoveIdentifier(identifier.clone()),
        channels,
    );
    let mut removed = event(IdentityEventKind::IdentifierRemoved, now, cause);
    removed.identifier = Some(identifier.clone());
    tx.add_history(member, &removed)?;
    Ok(member)
}

/// A ledger entry with no identifier, other profile or contribution yet.
pub(super) fn event(kind: IdentityEventKind, at: DateTime<Utc>, cause: &Cause) -> IdentityEvent {
    IdentityEvent {
        kind,
        at,
        cause: cause.text.clone(),
        identifier: None,
        other_id: None,
        contributed: None,
        survivor_contributed: None,
        purpose: None,
        by: cause.by.clone(),
        channel: cause.channel.clone(),
    }
}
