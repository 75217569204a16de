//! Ingest: validate a signal where it arrives, then resolve and apply it on the
//! committer thread.
//!
//! This module holds the entry points (one signal, a batch) and what follows
//! a commit. `resolve` finds the profile a signal belongs to and writes
//! what it changes (the changes themselves are the domain's
//! [`edits_of`](crate::domain::edits_of)); `caps` holds them to the
//! profile's caps; `identity` makes the merges, detachments and ledger
//! entries that signals and direct requests share; `record` is what a
//! `signal_id` keeps, so a retry is answered as the first time.

mod caps;
mod identity;
mod record;
mod resolve;

use chrono::{DateTime, Utc};

use self::resolve::apply_signal;
use super::idempotency::{Keyed, KEYED};
use super::views::IngestResult;
use super::{Caller, ServiceError, Services, Writer};
use crate::domain::{Signal, SignalInput};

pub(super) use caps::within_caps;
pub(super) use identity::{absorb, detach, event, Cause, Linking};

/// A result and whether the profile was created by it.
pub type Ingested = Result<IngestResult, ServiceError>;

/// One item of a batch: either already rejected by the caller's parsing, or a
/// signal to ingest.
pub enum BatchItem<E> {
    Rejected(E),
    Signal(Box<SignalInput>),
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
        ServiceError::Signal(_)
        | ServiceError::ProfileNotFound(_)
        | ServiceError::Identifier(_)
        | ServiceError::InvalidBatchItem { .. }
        | ServiceError::IdentifierNotOwned
        | ServiceError::Moved { .. }
        | ServiceError::SameProfile
        | ServiceError::MergeRefused(_)
        | ServiceError::SignalIdReused(_)
        | ServiceError::SignalOfErasedProfile(_)
        | ServiceError::CapExceeded { .. }
        | ServiceError::NothingToUnmerge(_)
        | ServiceError::UnknownPurpose(_)
        | ServiceError::SuggestionNotFound
        | ServiceError::IdentifierNotOnProfile
        | ServiceError::InvalidCursor
        | ServiceError::Store(_)
        | ServiceError::NotDurable
        | ServiceError::KeyUsed(_)
        | ServiceError::CursorExpired { .. }
        | ServiceError::TooManyStreams
        | ServiceError::TooManyStreamsForSubject(_)
        | ServiceError::BackupUnsupported
        | ServiceError::BackupInProgress => ServiceError::NotDurable,
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
