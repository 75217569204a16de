//! Use cases: resolve a signal, read a profile or a context card, write traits
//! and answers, merge and erase. Transport-neutral: handlers call these, and so
//! could a CLI or a queue consumer.

pub mod committer;
mod ingest;
pub mod profiles;
pub mod views;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::domain::{
    ConflictReason, CustomerId, IdentifierError, SignalError, SignalInput, SignalRules,
};
use crate::store::{Store, StoreError, StoreTx};

pub use committer::Committer;
pub use ingest::{BatchItem, Ingested};
pub use profiles::{
    AnswersInput, ConsentInput, HistoryQuery, MergeInput, TimelineQuery, TraitsPatch, UnmergeInput,
};
pub use views::{Access, Masking};

/// Failures of a use case. Every variant maps to one stable error code in
/// `crate::error`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error("no {0} with this id")]
    ProfileNotFound(&'static str),
    #[error("{0}")]
    Identifier(#[from] IdentifierError),
    /// A batch item that breaks a rule the schema states: the whole batch is
    /// refused, naming the item (see [`SignalInput::check_shape`]).
    #[error("signals[{index}]: {source}")]
    InvalidBatchItem { index: usize, source: SignalError },
    #[error("no profile owns this identifier")]
    IdentifierNotOwned,
    /// The id was merged into another profile; answer with a redirect.
    #[error("profile {from} was merged into {to}")]
    Moved { from: CustomerId, to: CustomerId },
    #[error("a profile cannot be merged with itself")]
    SameProfile,
    #[error("the merge would break a rule: {0}")]
    MergeRefused(&'static str),
    #[error("signal_id `{0}` was already used for a different signal")]
    SignalIdReused(String),
    #[error("signal_id `{0}` belongs to a profile that was erased")]
    SignalOfErasedProfile(String),
    #[error("the profile would hold more {what} than the cap of {cap}")]
    CapExceeded { what: &'static str, cap: usize },
    #[error("{0} is not merged into this profile; there is nothing to undo")]
    NothingToUnmerge(CustomerId),
    #[error("consent purpose `{0}` is not configured")]
    UnknownPurpose(String),
    #[error("there is no open merge suggestion between these profiles")]
    SuggestionNotFound,
    #[error("the identifier is not on this profile")]
    IdentifierNotOnProfile,
    #[error("cursor is not one this service issued")]
    InvalidCursor,
    #[error("store failure: {0}")]
    Store(#[from] StoreError),
    #[error("the write could not be made durable")]
    NotDurable,
    #[error("the service is shutting down")]
    ShuttingDown,
}

impl ServiceError {
    pub fn merge_refused(reason: ConflictReason) -> ServiceError {
        match reason {
            ConflictReason::IdentifierLimit => ServiceError::MergeRefused(
                "together the profiles would hold more identifiers of one type than its limit",
            ),
            ConflictReason::MergeNotAllowed | ConflictReason::MergeSuggested => {
                ServiceError::MergeRefused("the identifier type may not merge profiles")
            }
        }
    }
}

/// Everything the use cases share; one per process, behind an `Arc`.
pub struct Services {
    store: Arc<dyn Store>,
    committer: Committer,
    rules: Arc<SignalRules>,
    pii_traits: Vec<String>,
    purposes: Vec<String>,
    max_batch: usize,
}

impl Services {
    pub fn new(settings: &Settings, store: Arc<dyn Store>) -> Services {
        let committer = Committer::start(store.clone(), settings.storage.max_group_commit);
        let rules = SignalRules::from_settings(settings);
        Services {
            store,
            committer,
            rules: Arc::new(rules),
            pii_traits: settings.traits.pii.clone(),
            purposes: settings.consents.purposes.clone(),
            max_batch: settings.server.max_batch_signals,
        }
    }

    pub fn masking(&self, access: Access) -> Masking<'_> {
        Masking {
            access,
            identifiers: &self.rules.identifiers,
            pii_traits: &self.pii_traits,
        }
    }

    pub fn rules(&self) -> &SignalRules {
        &self.rules
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Refuses a batch holding an item the published schema calls malformed,
    /// naming the first such item; the rest of validation is per item.
    pub fn check_batch_shape(&self, signals: &[SignalInput]) -> Result<(), ServiceError> {
        signals.iter().enumerate().try_for_each(|(index, s)| {
            s.check_shape(&self.rules)
                .map_err(|source| ServiceError::InvalidBatchItem { index, source })
        })
    }

    /// Whether the store answers (for `/readyz`).
    pub fn store_ready(&self) -> Result<(), StoreError> {
        self.store.ping()
    }

    /// Waits until every acknowledged and queued write is on disk.
    pub async fn sync(&self) -> Result<(), ServiceError> {
        self.committer.sync().await
    }

    fn now() -> DateTime<Utc> {
        Utc::now()
    }
}

/// Runs a use case as one atomic write: its changes are applied only if it
/// succeeds, so a failure never leaves a partial write behind.
fn atomically<T>(
    store: &dyn Store,
    mut f: impl FnMut(&mut dyn StoreTx) -> Result<T, ServiceError>,
) -> Result<T, ServiceError> {
    let mut outcome = None;
    store.write(&mut |tx| {
        let result = f(tx);
        let commit = result.is_ok();
        outcome = Some(result);
        commit
    })?;
    outcome.unwrap_or(Err(ServiceError::ShuttingDown))
}
