//! `[storage]`, `[profiles]`, `[redis]`, `[cache]`, `[events]`,
//! `[idempotency]` and `[changes]`: where the memory lives, how big a
//! profile may grow, and what is kept around it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub backend: Backend,
    pub path: PathBuf,
    /// Upper bound on writes applied between two flushes.
    pub max_group_commit: usize,
    /// A write the committer has not started this many milliseconds after
    /// it was submitted is withdrawn, unapplied, and answered 503
    /// `store_busy` with Retry-After; once started it is always answered
    /// with its result.
    pub write_deadline_ms: u64,
    /// `false` acknowledges writes before they reach the disk. It exists to
    /// measure what durability costs (benches/load.sh); never in production.
    pub durable: bool,
    /// Bytes of decoded pages the store keeps in memory. The rest of the
    /// store's memory grows with its number of records (BENCHMARKS.md, the
    /// scale run).
    pub cache_bytes: u64,
    /// Where erasures are logged (embedded store); empty: `erasures.log`
    /// in `path`. See [`StorageSettings::erasure_log_path`].
    pub erasure_log: PathBuf,
    pub postgres: PostgresSettings,
}

impl StorageSettings {
    /// The erasure log: one line per erasure (customer ids and a time), so
    /// that a restore of an older backup erases again whoever was erased
    /// since. Kept beside the store unless configured elsewhere.
    pub fn erasure_log_path(&self) -> PathBuf {
        match self.erasure_log.as_os_str().is_empty() {
            true => self.path.join("erasures.log"),
            false => self.erasure_log.clone(),
        }
    }
}

/// Which engine keeps the profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded, in `storage.path`: one instance owns it.
    Sled,
    /// A database speaking the PostgreSQL protocol, shared by instances.
    Postgres,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// Required with `storage.backend = "postgres"`; may carry a password.
    pub url: Option<String>,
    pub schema: String,
    pub pool_size: usize,
    pub statement_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// How often an instance reads the change log for the other instances'
    /// changes (it also reads it at once after each of its own writes).
    pub poll_ms: u64,
}

/// How to reach the database (from `storage.postgres`).
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub url: String,
    /// The schema holding the tables; several deployments can share a
    /// database under different schemas.
    pub schema: String,
    pub pool_size: usize,
    pub statement_timeout: Duration,
    pub connect_timeout: Duration,
}

impl PostgresSettings {
    /// The connection options, once validated; an error naming the key
    /// when no URL is set.
    pub fn options(&self) -> Result<PgOptions, ConfigError> {
        let url = self.url.clone().ok_or_else(|| {
            invalid(
                "storage.postgres.url",
                "is required with the postgres backend",
            )
        })?;
        Ok(PgOptions {
            url,
            schema: self.schema.clone(),
            pool_size: self.pool_size,
            statement_timeout: Duration::from_millis(self.statement_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// One Redis server. Unset (and no `cluster_nodes`): the service runs
    /// without Redis.
    pub url: Option<String>,
    /// A Redis Cluster instead, found through these seed nodes
    /// (`redis://host:port` each; a few are enough, the rest are learnt from
    /// the cluster). In the environment: a comma-separated list.
    pub cluster_nodes: Vec<String>,
    /// Every key this service writes starts with it (several services or
    /// environments can share one Redis).
    pub key_prefix: String,
    /// How long a cached profile or identifier stays cached.
    pub ttl_secs: u64,
    /// Longest wait for a connection to Redis.
    pub connect_timeout_ms: u64,
    /// Longest wait for any Redis answer; past it the store answers instead.
    pub timeout_ms: u64,
}

impl RedisSettings {
    /// Whether a Redis (one server or a cluster) is to be used.
    pub fn configured(&self) -> bool {
        self.url.is_some() || !self.cluster_nodes.is_empty()
    }
}

impl Default for RedisSettings {
    fn default() -> RedisSettings {
        RedisSettings {
            url: None,
            cluster_nodes: Vec::new(),
            key_prefix: "anamnesis:".into(),
            ttl_secs: 600,
            connect_timeout_ms: 50,
            timeout_ms: 25,
        }
    }
}

/// The in-process layer of decoded cards and identifier owners, with or
/// without Redis behind it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Bytes of decoded cards and lookups kept in process, counted as JSON
    /// (0: none).
    pub local_bytes: usize,
}

impl Default for CacheSettings {
    fn default() -> CacheSettings {
        CacheSettings {
            local_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Live event streams (`GET /v1/profiles/{id}/events`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// Events queued for one stream; a consumer further behind is dropped
    /// (told to resume from its last event id).
    pub buffer: usize,
    /// A comment line sent on an idle stream this often, so proxies keep it open.
    pub heartbeat_secs: u64,
    /// Most event streams open at once; more get 503.
    pub max_streams: usize,
    /// Most event streams one token subject may hold open; more get 429.
    pub max_streams_per_subject: usize,
    /// A stream ends after this many seconds (with `stream.closed` and where
    /// to resume), so long-lived connections rebalance across instances.
    pub max_stream_secs: u64,
}

impl Default for EventSettings {
    fn default() -> EventSettings {
        EventSettings {
            buffer: 256,
            heartbeat_secs: 15,
            max_streams: 10_000,
            max_streams_per_subject: 1000,
            max_stream_secs: 3600,
        }
    }
}

/// `Idempotency-Key` on writes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencySettings {
    /// How long a key (and the reply kept for it) is remembered, in seconds.
    pub retention_secs: u64,
}

impl Default for IdempotencySettings {
    fn default() -> IdempotencySettings {
        IdempotencySettings {
            retention_secs: 24 * 3600,
        }
    }
}

/// The change feed (`GET /v1/changes`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChangeSettings {
    /// How long changes are kept, in seconds; older ones are removed.
    pub retention_secs: u64,
}

impl Default for ChangeSettings {
    fn default() -> ChangeSettings {
        ChangeSettings {
            retention_secs: 7 * 24 * 3600,
        }
    }
}
