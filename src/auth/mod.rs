//! Bearer JWT verification, scopes, and the typed extractor that makes each
//! handler's required scope part of its signature.

mod authenticator;
mod cache;
mod extract;
mod keys;
mod limit;
mod principal;
mod scope;
mod secret;
mod token;

pub use authenticator::Authenticator;
pub use extract::{
    Authorized, BackupStore, CustomerToken, DismissSuggestions, EraseProfiles, ExportProfiles,
    MergeProfiles, Policy, ReadChanges, ReadIdentity, ReadProfiles, RemoveIdentifiers,
    UnmergeProfiles, WriteProfiles, WriteSignals,
};
pub use keys::KeyError;
pub use limit::{Concurrency, LookupBudget, RateLimiter, Slot};
pub use principal::Principal;
pub use scope::Scope;
pub use secret::{default_secret, load_or_create_secret, SecretSource};
pub use token::{CustomerClaim, TokenError};
