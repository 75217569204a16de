//! Opening the configured engine: every entry point (the service, each
//! command) gets its store here, so they agree on where it lives and say
//! the same thing when it cannot be opened.

use std::sync::Arc;

use anyhow::Context;

use super::{PgStore, SledStore, Store};
use crate::config::{Backend, StorageSettings};

/// The configured store: sled under `storage.path` (`create`: a new one
/// when there is none), or the database of `storage.postgres`, whose schema
/// must be at this build's version (`anamnesis migrate`).
pub fn open(storage: &StorageSettings, create: bool) -> anyhow::Result<Arc<dyn Store>> {
    match storage.backend {
        Backend::Sled => {
            let path = storage.path.join("db");
            anyhow::ensure!(create || path.exists(), "no store at {}", path.display());
            let store = SledStore::open_with(&path, storage.cache_bytes).with_context(|| {
                format!(
                    "opening the store in {} (is the service running?)",
                    path.display()
                )
            })?;
            Ok(Arc::new(store))
        }
        Backend::Postgres => {
            let options = storage.postgres.options()?;
            let schema = options.schema.clone();
            let store = PgStore::open(options)
                .with_context(|| format!("opening the database store (schema `{schema}`)"))?;
            Ok(Arc::new(store))
        }
    }
}
