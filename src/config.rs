//! Typed, validated settings, loaded in layers: the built-in
//! `config/default.toml`, then an optional file, then `ANAMNESIS__SECTION__KEY`
//! environment variables.
//!
//! Everything that can be wrong with a configuration is found here, at start-up,
//! with an error that names the key; nothing downstream re-checks it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The built-in defaults, compiled into the binary so it runs with no files.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

const MAX_IDENTIFIERS_PER_SIGNAL: usize = crate::domain::MAX_IDENTIFIERS;

/// Environment variable naming an optional configuration file.
pub const CONFIG_FILE_ENV: &str = "ANAMNESIS_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be loaded")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: `{key}` {reason}")]
    Invalid { key: String, reason: String },
}

/// TOML has no null: an unset optional setting is left out.
fn strip_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub profiles: ProfileSettings,
    #[serde(default)]
    pub redis: RedisSettings,
    #[serde(default)]
    pub cache: CacheSettings,
    #[serde(default)]
    pub events: EventSettings,
    #[serde(default)]
    pub changes: ChangeSettings,
    #[serde(default)]
    pub idempotency: IdempotencySettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub telemetry: TelemetrySettings,
    pub channels: ChannelSettings,
    pub journey: JourneySettings,
    pub answers: AnswerSettings,
    pub consents: ConsentSettings,
    #[serde(default)]
    pub follow_ups: FollowUpSettings,
    /// Segment name -> what a profile must satisfy to be in it.
    #[serde(default)]
    pub segments: BTreeMap<String, SegmentSettings>,
    /// Offer id -> the offer and the segments it targets.
    #[serde(default)]
    pub offers: BTreeMap<String, OfferSettings>,
    pub traits: TraitSettings,
    pub identifiers: IdentifierSettings,
    pub phone: PhoneSettings,
    pub trust: TrustSettings,
    /// Free text that is not personal data.
    pub privacy: PrivacySettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    pub max_body_bytes: usize,
    pub max_batch_body_bytes: usize,
    pub max_batch_signals: usize,
    pub shutdown_timeout_secs: u64,
    /// Time a client has to send the request line and headers.
    pub request_head_timeout_ms: u64,
    /// Time a client has to send the body once the headers arrived.
    pub body_timeout_ms: u64,
    /// How long an idle keep-alive connection stays open.
    pub keep_alive_secs: u64,
}

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

impl PostgresSettings {
    /// The connection options, once validated; an error naming the key
    /// when no URL is set.
    pub fn options(&self) -> Result<crate::store::PgOptions, ConfigError> {
        let url = self.url.clone().ok_or_else(|| {
            invalid(
                "storage.postgres.url",
                "is required with the postgres backend",
            )
        })?;
        Ok(crate::store::PgOptions {
            url,
            schema: self.schema.clone(),
            pool_size: self.pool_size,
            statement_timeout: Duration::from_millis(self.statement_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSettings {
    /// Most profiles one profile may have absorbed.
    pub max_merged: usize,
    /// Most identifiers one profile may hold.
    pub max_identifiers: usize,
    /// Most identifiers one profile may hold on a claim alone (see
    /// [`TrustSettings`]): a claimant cannot fill a profile to its cap.
    pub max_claimed_identifiers: usize,
    /// Most traits (names, removed ones included) one profile may hold.
    pub max_traits: usize,
    /// Most answers one profile may hold.
    pub max_answers: usize,
    /// Most episodes one profile may hold.
    pub max_episodes: usize,
    /// Most bytes one profile may take as stored: past it, a signal's
    /// traits, answers and new episodes are left out (and reported), and
    /// merges that would exceed it are refused.
    pub max_profile_bytes: usize,
    /// Most bytes of `event.properties` one interaction may carry (422
    /// `properties_too_large` past it).
    pub max_properties_bytes: usize,
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

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    #[serde(default, skip_serializing)]
    pub hs256_secret: Option<String>,
    pub audience: String,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    /// Allowed clock difference for `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Longest a token may be valid: `exp - iat`, or `exp - now` without
    /// `iat`. Longer tokens are refused (`token_lifetime_too_long`).
    pub max_token_lifetime_secs: u64,
    /// Keys chosen by a token's `kid`, each pinned to one algorithm.
    #[serde(default)]
    pub keys: Vec<KeySettings>,
    /// A JSON Web Key Set file, re-read when it changes.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// How often the JWKS file is checked for changes.
    pub jwks_poll_ms: u64,
    /// Verified tokens remembered until they expire; 0 verifies every time.
    pub token_cache_entries: usize,
    /// Channel -> the sensitive scopes (`pii:read`, `identity:write`,
    /// `profiles:erase`, `changes:read`, `admin`) a token bound to that
    /// channel may carry.
    /// A channel not named may carry none.
    #[serde(default)]
    pub channel_scopes: BTreeMap<String, Vec<String>>,
}

/// Algorithms a key may be pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum KeyAlgorithm {
    HS256,
    RS256,
    ES256,
    EdDSA,
}

/// One verification key from configuration.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    pub kid: String,
    pub alg: KeyAlgorithm,
    /// The shared secret of an HS256 key.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// PEM file with the public key of an RS256, ES256 or EdDSA key.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// PEM file with the private key, needed only by `anamnesis token` to
    /// sign with this key; the service itself never signs with it.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for KeySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySettings")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_file", &self.public_key_file)
            .field("private_key_file", &self.private_key_file)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Sustained requests per second for one token subject; 0 turns the
    /// limit off.
    pub rate_per_second: u32,
    /// Requests a subject may make at once above the sustained rate.
    pub burst: u32,
    /// How long a refused request waits before its 429 goes out, so a
    /// client that retries in a tight loop cannot spend the CPU others need.
    pub reject_delay_ms: u64,
    /// Sustained signals per second for one token subject, over single
    /// signals and batches alike (a batch of N spends N); 0 turns it off.
    pub signals_per_second: u32,
    /// Signals a subject may send at once above the sustained rate; at
    /// least `server.max_batch_signals`, so the largest batch can pass.
    pub signal_burst: u32,
    /// Lookups by a person-identifying identifier that find nobody, per
    /// token subject and hour; once spent, every such lookup of the subject
    /// is refused until the budget refills. 0 turns the budget off.
    pub lookup_misses_per_hour: u32,
    /// Misses a subject may make at once above the hourly rate.
    pub lookup_miss_burst: u32,
    /// Exports (`GET /v1/profiles/{id}/export`) one subject may have in
    /// progress at once; more get 429.
    pub exports_per_subject: usize,
}

impl std::fmt::Debug for AuthSettings {
    // Secrets never print, not even in a debug dump of the settings.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("disabled", &self.disabled)
            .field("leeway_secs", &self.leeway_secs)
            .field("max_token_lifetime_secs", &self.max_token_lifetime_secs)
            .field("keys", &self.keys)
            .field("jwks_file", &self.jwks_file)
            .field("jwks_poll_ms", &self.jwks_poll_ms)
            .field("token_cache_entries", &self.token_cache_entries)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub format: LogFormat,
    pub level: String,
    /// Where the audit log goes; unset: stdout, beside the other logs.
    #[serde(default)]
    pub audit_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    /// Known channels, highest priority first.
    pub priority: Vec<String>,
    pub allow_unknown: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JourneySettings {
    pub stages: Vec<String>,
    /// Event type -> the stage it moves the customer to.
    #[serde(default)]
    pub event_stages: BTreeMap<String, String>,
    /// Rules on an event's type and properties, tried in order before
    /// `event_stages`; the first that matches sets the stage.
    #[serde(default)]
    pub rules: Vec<JourneyRule>,
}

/// `[[journey.rules]]`: events of this type whose properties hold these
/// values move the customer to `stage`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyRule {
    pub event: String,
    /// Property name -> the value it must equal (all of them).
    #[serde(default)]
    pub properties: BTreeMap<String, serde_json::Value>,
    pub stage: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUpSettings {
    /// How long after an episode is resolved its follow-up falls due.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
}

impl Default for FollowUpSettings {
    fn default() -> Self {
        FollowUpSettings {
            delay: Duration::from_secs(2 * 86_400),
        }
    }
}

/// `[segments.<name>]`: a profile is in the segment while every predicate
/// of `when` holds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSettings {
    #[serde(default)]
    pub description: Option<String>,
    pub when: Vec<PredicateSettings>,
}

/// One condition of a segment. Exactly one of `trait`, `answer`,
/// `journey_stage`, `open_episodes` and `interactions` names what it looks at.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PredicateSettings {
    /// A current trait: exists, or compares with `equals`, `one_of`, `min`, `max`.
    #[serde(rename = "trait", default, skip_serializing_if = "Option::is_none")]
    pub trait_name: Option<String>,
    /// A fresh (unexpired) answer: exists, or compares with `equals`, `one_of`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<serde_json::Value>>,
    /// Numeric bounds on a trait's value (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The current journey stage is one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journey_stage: Option<Vec<String>>,
    /// At least this many episodes are not resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_episodes: Option<u32>,
    /// At least `at_least` matching interactions within the last `within`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactions: Option<InteractionPredicate>,
    /// The predicate must NOT hold.
    #[serde(default)]
    pub negate: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InteractionPredicate {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Property name -> the value it must equal (all of them).
    #[serde(default)]
    pub properties: BTreeMap<String, serde_json::Value>,
    pub at_least: u32,
    #[serde(with = "humantime_serde")]
    pub within: Duration,
}

/// `[offers.<id>]`: shown to profiles in any of `segments`, highest
/// `priority` first.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OfferSettings {
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    pub segments: Vec<String>,
    #[serde(default)]
    pub priority: i64,
    /// Passed to the caller as it is (an image, a link, a code).
    #[serde(default)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerSettings {
    /// Question key -> how long an answer stays fresh.
    #[serde(default, with = "ttl_map")]
    pub ttl: BTreeMap<String, Duration>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentSettings {
    /// Purposes a customer can grant or deny.
    pub purposes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TraitSettings {
    /// Trait names that hold personal data.
    #[serde(default)]
    pub pii: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierSettings {
    pub allow_unknown_types: bool,
    /// Values that never identify anyone, for every type.
    #[serde(default)]
    pub placeholders: Vec<String>,
    pub types: BTreeMap<String, IdentifierTypeSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormaliserKind {
    /// Trim surrounding white space; case is kept.
    Trim,
    /// Trim and lower-case.
    Lowercase,
    /// Trim, lower-case and check the shape of an e-mail address.
    Email,
    /// Parse as a phone number and format it as E.164.
    Phone,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierTypeSettings {
    pub normaliser: NormaliserKind,
    /// Most values of this type on one profile; 0 means no limit.
    pub limit: usize,
    /// Lower wins when picking a merge survivor.
    pub priority: u32,
    pub pii: bool,
    /// Whether a match on this type may fuse two existing profiles: `true`,
    /// `false`, or `"suggest"` (record a merge suggestion instead).
    pub merge: MergePolicy,
    /// Extra placeholder values for this type only.
    #[serde(default)]
    pub placeholders: Vec<String>,
    /// A session identifier (a cookie, a chat session, a device): it names a
    /// browser or a conversation, not a person, so it may join a customer
    /// through a shared identifier where a person-identifying one may not.
    #[serde(default)]
    pub session: bool,
}

/// How far the service believes an identifier, by who asserts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustLevel {
    /// A value the customer typed or told (a web form, a chatbot): it never
    /// fuses customers nor reaches one who holds personal data.
    Claim,
    /// The channel checked it (a caller id, a login, a checkout).
    Verify,
}

impl TrustLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustLevel::Claim => "claim",
            TrustLevel::Verify => "verify",
        }
    }
}

/// The trust table: per caller, per identifier type, `verify` or `claim`.
/// A token bound to a channel (its `channel` claim) is judged by that
/// channel's row; a token without one by `unbound`. In a row, `"*"` sets the
/// level of every type it does not name; a type named nowhere is a claim.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSettings {
    /// Tokens without a channel claim: back-office systems, admin tokens,
    /// `anamnesis import`.
    pub unbound: BTreeMap<String, TrustLevel>,
    /// Channel -> identifier type (or `"*"`) -> level.
    #[serde(default)]
    pub channels: BTreeMap<String, BTreeMap<String, TrustLevel>>,
}

/// Free text (answer values, interaction summaries and properties, episode
/// titles, feedback comments) is personal data: masked for tokens without
/// `pii:read`, except what is named here.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySettings {
    /// Answer keys whose values are not personal.
    #[serde(default)]
    pub public_answers: Vec<String>,
    /// Interaction property keys whose values are not personal.
    #[serde(default)]
    pub public_properties: Vec<String>,
    /// Free-text fields that are not personal, of `episode.title`,
    /// `episode.public_status`, `interaction.summary`, `feedback.comment`.
    #[serde(default)]
    pub public_fields: Vec<String>,
}

/// The free-text fields `privacy.public_fields` may name.
pub const FREE_TEXT_FIELDS: [&str; 4] = [
    "episode.title",
    "episode.public_status",
    "interaction.summary",
    "feedback.comment",
];

/// The scopes a token bound to a channel carries only where
/// `auth.channel_scopes` allows it.
pub const SENSITIVE_SCOPES: [&str; 5] = [
    "pii:read",
    "identity:write",
    "profiles:erase",
    "changes:read",
    "admin",
];

/// What a match on an identifier type may do to two profiles that already exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergePolicy {
    /// Fuse them.
    Merge,
    /// Never fuse them; report a conflict.
    Never,
    /// Do not fuse them; record a suggestion for a person to confirm.
    Suggest,
}

impl Serialize for MergePolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MergePolicy::Merge => s.serialize_bool(true),
            MergePolicy::Never => s.serialize_bool(false),
            MergePolicy::Suggest => s.serialize_str("suggest"),
        }
    }
}

impl<'de> Deserialize<'de> for MergePolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(true) => Ok(MergePolicy::Merge),
            Raw::Flag(false) => Ok(MergePolicy::Never),
            Raw::Word(w) if w == "suggest" => Ok(MergePolicy::Suggest),
            Raw::Word(w) if w == "true" => Ok(MergePolicy::Merge),
            Raw::Word(w) if w == "false" => Ok(MergePolicy::Never),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "merge must be true, false or \"suggest\", not `{w}`"
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneSettings {
    /// ISO 3166-1 alpha-2 region for numbers without a country code.
    pub default_region: String,
}

mod ttl_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        map.iter()
            .map(|(k, v)| (k.clone(), humantime::format_duration(*v).to_string()))
            .collect::<BTreeMap<_, _>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                humantime::parse_duration(&v)
                    .map(|d| (k.clone(), d))
                    .map_err(|e| {
                        serde::de::Error::custom(format!(
                            "answers.ttl.{k}: `{v}` is not a duration ({e})"
                        ))
                    })
            })
            .collect()
    }
}

impl Settings {
    /// Loads the layers in order and validates the result. `file` wins over
    /// the `ANAMNESIS_CONFIG` variable.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let env_file = std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from);
        let file = file.map(Path::to_path_buf).or(env_file);
        Settings::load_layers(file.as_deref(), None)
    }

    /// The layers, with the environment given explicitly (`None`: the process
    /// environment), so tests need not mutate the process environment.
    pub fn load_layers(
        file: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid(
                    "--config",
                    format!("names `{}`, which does not exist", path.display()),
                ));
            }
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("ANAMNESIS")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("redis.cluster_nodes")
                .source(env),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate_redis(&self) -> Result<(), ConfigError> {
        let redis = &self.redis;
        if let Some(url) = &redis.url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "redis.url",
                    "must start with redis:// or rediss://",
                ));
            }
            if !redis.cluster_nodes.is_empty() {
                return Err(invalid(
                    "redis.cluster_nodes",
                    "cannot be set together with redis.url: one Redis or one cluster",
                ));
            }
        }
        if redis.cluster_nodes.len() > 64 {
            return Err(invalid("redis.cluster_nodes", "must list at most 64 seeds"));
        }
        for node in &redis.cluster_nodes {
            let info = redis::IntoConnectionInfo::into_connection_info(node.as_str());
            let plain = node.starts_with("redis://") || node.starts_with("rediss://");
            if !plain || info.is_err() {
                return Err(invalid(
                    "redis.cluster_nodes",
                    format!("`{node}` is not a redis://host:port address"),
                ));
            }
        }
        Ok(())
    }

    /// Loads only the built-in defaults (for tests and tools).
    pub fn defaults() -> Settings {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("the built-in configuration is valid");
        settings
    }

    /// The configuration in effect (defaults, file and environment layered),
    /// as TOML, with every secret replaced by `<hidden>`: for
    /// `anamnesis check-config`, and safe to paste into a ticket.
    pub fn effective_toml(&self) -> Result<String, ConfigError> {
        const HIDDEN: &str = "<hidden>";
        let mut value = serde_json::to_value(self).map_err(|e| invalid("(all)", e.to_string()))?;
        let auth = &mut value["auth"];
        if self.auth.hs256_secret.is_some() {
            auth["hs256_secret"] = HIDDEN.into();
        }
        // Secrets are never serialised; say where one is set.
        for (i, key) in self.auth.keys.iter().enumerate() {
            if key.secret.is_some() {
                auth["keys"][i]["secret"] = HIDDEN.into();
            }
        }
        // Server URLs may carry a password: redis://user:password@host,
        // postgres://user:password@host/db.
        let hide = |url: &str| match url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://{HIDDEN}@{host}"),
                None => url.to_owned(),
            },
            // key=value form: the password is one of the pairs.
            None if url.contains("password") => HIDDEN.to_owned(),
            None => url.to_owned(),
        };
        if let Some(url) = &self.redis.url {
            value["redis"]["url"] = hide(url).into();
        }
        for (i, node) in self.redis.cluster_nodes.iter().enumerate() {
            value["redis"]["cluster_nodes"][i] = hide(node).into();
        }
        if let Some(url) = &self.storage.postgres.url {
            value["storage"]["postgres"]["url"] = hide(url).into();
        }
        strip_nulls(&mut value);
        toml::to_string(&value).map_err(|e| invalid("(all)", e.to_string()))
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:8080",
                    self.server.listen
                ),
            )
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        if self.server.max_batch_body_bytes < self.server.max_body_bytes {
            return Err(invalid(
                "server.max_batch_body_bytes",
                "must be at least server.max_body_bytes",
            ));
        }
        if self.server.max_batch_signals == 0 || self.server.max_batch_signals > 100_000 {
            return Err(invalid("server.max_batch_signals", "must be 1 to 100000"));
        }
        if self.storage.cache_bytes < 1 << 20 {
            return Err(invalid(
                "storage.cache_bytes",
                "must be at least 1 MiB (1048576)",
            ));
        }
        let pg = &self.storage.postgres;
        if self.storage.backend == Backend::Postgres && pg.url.is_none() {
            return Err(invalid(
                "storage.postgres.url",
                "is required with storage.backend = \"postgres\"",
            ));
        }
        if let Some(url) = &pg.url {
            url.parse::<tokio_postgres::Config>()
                .map_err(|e| invalid("storage.postgres.url", e.to_string()))?;
        }
        let schema_name = |s: &str| {
            s.len() <= 63
                && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !schema_name(&pg.schema) {
            return Err(invalid(
                "storage.postgres.schema",
                "must be 1 to 63 of a-z, 0-9 and _, not starting with a digit",
            ));
        }
        if !(1..=256).contains(&pg.pool_size) {
            return Err(invalid("storage.postgres.pool_size", "must be 1 to 256"));
        }
        if !(100..=600_000).contains(&pg.statement_timeout_ms) {
            return Err(invalid(
                "storage.postgres.statement_timeout_ms",
                "must be 100 to 600000",
            ));
        }
        if !(100..=60_000).contains(&pg.connect_timeout_ms) {
            return Err(invalid(
                "storage.postgres.connect_timeout_ms",
                "must be 100 to 60000",
            ));
        }
        if !(1..=10_000).contains(&pg.poll_ms) {
            return Err(invalid("storage.postgres.poll_ms", "must be 1 to 10000"));
        }
        if self.storage.max_group_commit == 0 {
            return Err(invalid("storage.max_group_commit", "must be at least 1"));
        }
        if !(100..=600_000).contains(&self.storage.write_deadline_ms) {
            return Err(invalid(
                "storage.write_deadline_ms",
                "must be 100 to 600000",
            ));
        }
        if self.profiles.max_merged == 0 {
            return Err(invalid("profiles.max_merged", "must be at least 1"));
        }
        if self.profiles.max_identifiers < MAX_IDENTIFIERS_PER_SIGNAL {
            return Err(invalid(
                "profiles.max_identifiers",
                format!(
                    "must be at least {MAX_IDENTIFIERS_PER_SIGNAL} (the most one signal may carry)"
                ),
            ));
        }
        let p = &self.profiles;
        if p.max_traits < crate::domain::MAX_TRAITS_PER_SIGNAL
            || p.max_answers < crate::domain::MAX_ANSWERS_PER_SIGNAL
            || p.max_episodes == 0
        {
            return Err(invalid(
                "profiles.max_traits",
                "max_traits must be at least 100 and max_answers at least 50 (what one signal may carry), max_episodes at least 1",
            ));
        }
        if !(16 * 1024..=64 * 1024 * 1024).contains(&p.max_profile_bytes) {
            return Err(invalid(
                "profiles.max_profile_bytes",
                "must be 16384 (16 KiB) to 67108864 (64 MiB)",
            ));
        }
        if p.max_properties_bytes == 0 || p.max_properties_bytes > self.server.max_body_bytes {
            return Err(invalid(
                "profiles.max_properties_bytes",
                "must be 1 to server.max_body_bytes",
            ));
        }
        if self.profiles.max_claimed_identifiers == 0
            || self.profiles.max_claimed_identifiers > self.profiles.max_identifiers
        {
            return Err(invalid(
                "profiles.max_claimed_identifiers",
                "must be 1 to profiles.max_identifiers",
            ));
        }
        if self.storage.path.as_os_str().is_empty() {
            return Err(invalid("storage.path", "must not be empty"));
        }
        if !(1..=10_000).contains(&self.redis.connect_timeout_ms) {
            return Err(invalid("redis.connect_timeout_ms", "must be 1 to 10000"));
        }
        if !(1..=10_000).contains(&self.redis.timeout_ms) {
            return Err(invalid("redis.timeout_ms", "must be 1 to 10000"));
        }
        let local = self.cache.local_bytes as u64;
        if local != 0 && !(1 << 20..=1 << 36).contains(&local) {
            return Err(invalid(
                "cache.local_bytes",
                "must be 0 (none) or 1 MiB to 64 GiB",
            ));
        }
        if !(1..=86_400 * 30).contains(&self.redis.ttl_secs) {
            return Err(invalid("redis.ttl_secs", "must be 1 to 2592000"));
        }
        if self.redis.key_prefix.len() > 64
            || self
                .redis
                .key_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
        {
            return Err(invalid(
                "redis.key_prefix",
                "must be at most 64 characters, without spaces or braces (braces would change how a cluster places the keys)",
            ));
        }
        if !(1..=65_536).contains(&self.events.buffer) {
            return Err(invalid("events.buffer", "must be 1 to 65536"));
        }
        if !(1..=3_600).contains(&self.events.heartbeat_secs) {
            return Err(invalid("events.heartbeat_secs", "must be 1 to 3600"));
        }
        if !(1..=86_400).contains(&self.events.max_stream_secs) {
            return Err(invalid("events.max_stream_secs", "must be 1 to 86400"));
        }
        if !(1..=1_000_000).contains(&self.events.max_streams) {
            return Err(invalid("events.max_streams", "must be 1 to 1000000"));
        }
        if !(1..=self.events.max_streams).contains(&self.events.max_streams_per_subject) {
            return Err(invalid(
                "events.max_streams_per_subject",
                "must be 1 to events.max_streams",
            ));
        }
        if !(60..=3600 * 24 * 366).contains(&self.idempotency.retention_secs) {
            return Err(invalid(
                "idempotency.retention_secs",
                "must be 60 to 31622400 (a year)",
            ));
        }
        if !(1..=3600 * 24 * 3660).contains(&self.changes.retention_secs) {
            return Err(invalid(
                "changes.retention_secs",
                "must be 1 to 316224000 (ten years)",
            ));
        }
        self.validate_redis()?;
        if let Some(secret) = &self.auth.hs256_secret {
            if secret.len() < 32 {
                return Err(invalid(
                    "auth.hs256_secret",
                    "must be at least 32 bytes long",
                ));
            }
        }
        if self.auth.audience.trim().is_empty() {
            return Err(invalid("auth.audience", "must not be empty"));
        }
        self.validate_keys()?;
        self.validate_limits()?;
        if tracing_subscriber::EnvFilter::try_new(&self.telemetry.level).is_err() {
            return Err(invalid(
                "telemetry.level",
                format!("`{}` is not a log filter", self.telemetry.level),
            ));
        }
        if self.channels.priority.is_empty() && !self.channels.allow_unknown {
            return Err(invalid(
                "channels.priority",
                "must list at least one channel unless channels.allow_unknown is true",
            ));
        }
        for (i, c) in self.channels.priority.iter().enumerate() {
            if !crate::domain::is_valid_name(c, 32) {
                return Err(invalid(
                    format!("channels.priority[{i}]"),
                    format!("`{c}` is not a channel name ([a-z][a-z0-9_]{{0,31}})"),
                ));
            }
        }
        for (i, purpose) in self.consents.purposes.iter().enumerate() {
            if !crate::domain::is_valid_name(purpose, 64) {
                return Err(invalid(
                    format!("consents.purposes[{i}]"),
                    format!("`{purpose}` is not a purpose name ([a-z][a-z0-9_]{{0,63}})"),
                ));
            }
        }
        if self.journey.stages.is_empty() {
            return Err(invalid("journey.stages", "must list at least one stage"));
        }
        for (event, stage) in &self.journey.event_stages {
            if !self.journey.stages.contains(stage) {
                return Err(invalid(
                    format!("journey.event_stages.{event}"),
                    format!("names `{stage}`, which is not in journey.stages"),
                ));
            }
        }
        crate::domain::JourneyRules::compile(&self.journey.rules, &self.journey.stages)
            .map_err(|e| invalid(e.key, e.reason))?;
        crate::domain::Personalization::compile(&self.segments, &self.offers, &self.journey.stages)
            .map_err(|e| invalid(e.key, e.reason))?;
        if !self.offers.is_empty()
            && !self
                .consents
                .purposes
                .iter()
                .any(|p| p == "personalization")
        {
            return Err(invalid(
                "consents.purposes",
                "must include `personalization` when offers are configured: offers are shown only with that consent",
            ));
        }
        if self.follow_ups.delay > Duration::from_secs(365 * 86_400) {
            return Err(invalid("follow_ups.delay", "must be at most a year"));
        }
        if self.identifiers.types.is_empty() {
            return Err(invalid(
                "identifiers.types",
                "must configure at least one identifier type",
            ));
        }
        for name in self.identifiers.types.keys() {
            if !crate::domain::is_valid_name(name, 32) {
                return Err(invalid(
                    format!("identifiers.types.{name}"),
                    "type names must match [a-z][a-z0-9_]{0,31}",
                ));
            }
        }
        self.validate_trust()?;
        self.validate_access()?;
        if self
            .phone
            .default_region
            .parse::<phonenumber::country::Id>()
            .is_err()
        {
            return Err(invalid(
                "phone.default_region",
                format!(
                    "`{}` is not an ISO 3166-1 region code like NL",
                    self.phone.default_region
                ),
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// Every row of the trust table names known identifier types (or `*`),
    /// and every channel row a channel this service accepts.
    fn validate_trust(&self) -> Result<(), ConfigError> {
        let check_row = |key: &str, row: &BTreeMap<String, TrustLevel>| {
            for kind in row.keys() {
                if kind != "*" && !self.identifiers.types.contains_key(kind) {
                    return Err(invalid(
                        format!("{key}.{kind}"),
                        "names no configured identifier type (use a type from identifiers.types, or \"*\" for all)",
                    ));
                }
            }
            Ok(())
        };
        check_row("trust.unbound", &self.trust.unbound)?;
        for (channel, row) in &self.trust.channels {
            let key = format!("trust.channels.{channel}");
            if !crate::domain::is_valid_name(channel, 32) {
                return Err(invalid(key, "is not a channel name ([a-z][a-z0-9_]{0,31})"));
            }
            if !self.channels.allow_unknown && !self.channels.priority.contains(channel) {
                return Err(invalid(key, "names a channel not in channels.priority"));
            }
            check_row(&key, row)?;
        }
        Ok(())
    }

    /// Channel scopes name channels this service accepts and sensitive
    /// scopes; the privacy lists name free-text fields and valid keys.
    fn validate_access(&self) -> Result<(), ConfigError> {
        for (channel, scopes) in &self.auth.channel_scopes {
            let key = format!("auth.channel_scopes.{channel}");
            if !crate::domain::is_valid_name(channel, 32) {
                return Err(invalid(key, "is not a channel name ([a-z][a-z0-9_]{0,31})"));
            }
            if !self.channels.allow_unknown && !self.channels.priority.contains(channel) {
                return Err(invalid(key, "names a channel not in channels.priority"));
            }
            for scope in scopes {
                if !SENSITIVE_SCOPES.contains(&scope.as_str()) {
                    return Err(invalid(
                        key,
                        format!(
                            "`{scope}` is not one of {} (other scopes need no allowance)",
                            SENSITIVE_SCOPES.join(", ")
                        ),
                    ));
                }
            }
        }
        for field in &self.privacy.public_fields {
            if !FREE_TEXT_FIELDS.contains(&field.as_str()) {
                return Err(invalid(
                    "privacy.public_fields",
                    format!("`{field}` is not one of {}", FREE_TEXT_FIELDS.join(", ")),
                ));
            }
        }
        for (list, names) in [
            ("privacy.public_answers", &self.privacy.public_answers),
            ("privacy.public_properties", &self.privacy.public_properties),
        ] {
            if let Some(bad) = names.iter().find(|n| n.is_empty() || n.len() > 64) {
                return Err(invalid(list, format!("`{bad}` must be 1 to 64 characters")));
            }
        }
        if self.limits.exports_per_subject == 0 {
            return Err(invalid("limits.exports_per_subject", "must be at least 1"));
        }
        if self.limits.signals_per_second > 0
            && (self.limits.signal_burst as usize) < self.server.max_batch_signals
        {
            return Err(invalid(
                "limits.signal_burst",
                "must be at least server.max_batch_signals while limits.signals_per_second is set (else the largest batch never passes)",
            ));
        }
        if self.limits.lookup_misses_per_hour > 0 && self.limits.lookup_miss_burst == 0 {
            return Err(invalid(
                "limits.lookup_miss_burst",
                "must be at least 1 while limits.lookup_misses_per_hour is set",
            ));
        }
        Ok(())
    }

    fn validate_keys(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if auth.leeway_secs > 300 {
            return Err(invalid("auth.leeway_secs", "must be at most 300"));
        }
        if auth.max_token_lifetime_secs == 0 {
            return Err(invalid(
                "auth.max_token_lifetime_secs",
                "must be at least 1 (seconds)",
            ));
        }
        if !(100..=3_600_000).contains(&auth.jwks_poll_ms) {
            return Err(invalid("auth.jwks_poll_ms", "must be 100 to 3600000"));
        }
        if auth.token_cache_entries > 10_000_000 {
            return Err(invalid(
                "auth.token_cache_entries",
                "must be at most 10000000",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, key) in auth.keys.iter().enumerate() {
            let at = |field: &str| format!("auth.keys[{i}].{field}");
            if key.kid.is_empty() || key.kid.len() > 128 {
                return Err(invalid(at("kid"), "must be 1 to 128 characters"));
            }
            if !seen.insert(key.kid.as_str()) {
                return Err(invalid(
                    at("kid"),
                    format!("`{}` is used by two keys", key.kid),
                ));
            }
            match key.alg {
                KeyAlgorithm::HS256 => {
                    match &key.secret {
                        Some(secret) if secret.len() >= 32 => {}
                        Some(_) => {
                            return Err(invalid(at("secret"), "must be at least 32 bytes long"))
                        }
                        None => return Err(invalid(at("secret"), "is required for HS256")),
                    }
                    if key.public_key_file.is_some() || key.private_key_file.is_some() {
                        return Err(invalid(
                            at("public_key_file"),
                            "an HS256 key has a secret, not key files",
                        ));
                    }
                }
                _ => {
                    if key.secret.is_some() {
                        return Err(invalid(
                            at("secret"),
                            "only HS256 keys have a secret; give public_key_file",
                        ));
                    }
                    if key.public_key_file.is_none() {
                        return Err(invalid(
                            at("public_key_file"),
                            format!("is required for {:?}", key.alg),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        if self.limits.rate_per_second > 0 && self.limits.burst == 0 {
            return Err(invalid(
                "limits.burst",
                "must be at least 1 when limits.rate_per_second is set",
            ));
        }
        if self.limits.reject_delay_ms > 10_000 {
            return Err(invalid("limits.reject_delay_ms", "must be at most 10000"));
        }
        let server = &self.server;
        if !(100..=600_000).contains(&server.request_head_timeout_ms) {
            return Err(invalid(
                "server.request_head_timeout_ms",
                "must be 100 to 600000",
            ));
        }
        if !(100..=600_000).contains(&server.body_timeout_ms) {
            return Err(invalid("server.body_timeout_ms", "must be 100 to 600000"));
        }
        if server.keep_alive_secs > 3600 {
            return Err(invalid("server.keep_alive_secs", "must be at most 3600"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn every_shipped_configuration_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Settings::load_layers(Some(&path), env(&[]))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 2, "default and the production example");
    }

    #[test]
    fn environment_overrides_file_and_defaults() {
        let s = Settings::load_layers(
            None,
            env(&[
                ("ANAMNESIS__SERVER__LISTEN", "127.0.0.1:9999"),
                ("ANAMNESIS__STORAGE__PATH", "/tmp/elsewhere"),
                ("ANAMNESIS__AUTH__AUDIENCE", "desk"),
                ("ANAMNESIS__REDIS__URL", "redis://127.0.0.1:6390/0"),
                ("ANAMNESIS__SERVER__MAX_BATCH_SIGNALS", "10"),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:9999");
        assert_eq!(s.storage.path, PathBuf::from("/tmp/elsewhere"));
        assert_eq!(s.auth.audience, "desk");
        assert_eq!(s.redis.url.as_deref(), Some("redis://127.0.0.1:6390/0"));
        assert_eq!(s.server.max_batch_signals, 10);
        assert_eq!(s.identifiers.types["account_id"].limit, 1);
    }

    #[test]
    fn cluster_seeds_come_as_a_list_and_exclude_a_single_url() {
        let seeds = "redis://127.0.0.1:7000,redis://127.0.0.1:7001";
        let s = Settings::load_layers(None, env(&[("ANAMNESIS__REDIS__CLUSTER_NODES", seeds)]))
            .unwrap();
        assert_eq!(
            s.redis.cluster_nodes,
            ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        let both = Settings::load_layers(
            None,
            env(&[
                ("ANAMNESIS__REDIS__CLUSTER_NODES", seeds),
                ("ANAMNESIS__REDIS__URL", "redis://127.0.0.1:6379/0"),
            ]),
        )
        .unwrap_err();
        assert!(both.to_string().contains("redis.cluster_nodes"), "{both}");
        let with_password = "redis://:sesame@10.0.0.1:6379,redis://10.0.0.2:6379";
        let s = Settings::load_layers(
            None,
            env(&[("ANAMNESIS__REDIS__CLUSTER_NODES", with_password)]),
        )
        .unwrap();
        let shown = s.effective_toml().unwrap();
        assert!(!shown.contains("sesame"), "{shown}");
        assert!(shown.contains("redis://<hidden>@10.0.0.1:6379"), "{shown}");
        assert!(shown.contains("redis://10.0.0.2:6379"), "{shown}");
    }

    #[test]
    fn errors_name_the_bad_key() {
        let cases = [
            ("ANAMNESIS__SERVER__WORKERZ", "2", "workerz"),
            ("ANAMNESIS__SERVER__WORKERS", "many", "server.workers"),
            ("ANAMNESIS__SERVER__LISTEN", "nowhere", "server.listen"),
            (
                "ANAMNESIS__PHONE__DEFAULT_REGION",
                "XX",
                "phone.default_region",
            ),
            (
                "ANAMNESIS__AUTH__HS256_SECRET",
                "short",
                "auth.hs256_secret",
            ),
            ("ANAMNESIS__REDIS__URL", "http://x", "redis.url"),
            ("ANAMNESIS__REDIS__TIMEOUT_MS", "0", "redis.timeout_ms"),
            ("ANAMNESIS__CACHE__LOCAL_BYTES", "31", "cache.local_bytes"),
            (
                "ANAMNESIS__STORAGE__CACHE_BYTES",
                "4096",
                "storage.cache_bytes",
            ),
            ("ANAMNESIS__REDIS__KEY_PREFIX", "a b", "redis.key_prefix"),
            ("ANAMNESIS__REDIS__KEY_PREFIX", "a{b}", "redis.key_prefix"),
            (
                "ANAMNESIS__REDIS__CLUSTER_NODES",
                "redis://127.0.0.1:7000,http://x",
                "redis.cluster_nodes",
            ),
            ("ANAMNESIS__EVENTS__BUFFER", "0", "events.buffer"),
            (
                "ANAMNESIS__EVENTS__MAX_STREAM_SECS",
                "0",
                "events.max_stream_secs",
            ),
            (
                "ANAMNESIS__CHANGES__RETENTION_SECS",
                "0",
                "changes.retention_secs",
            ),
            (
                "ANAMNESIS__SERVER__MAX_BATCH_SIGNALS",
                "0",
                "server.max_batch_signals",
            ),
        ];
        for (key, value, named) in cases {
            let err = Settings::load_layers(None, env(&[(key, value)])).unwrap_err();
            let text = format!(
                "{err} {}",
                std::error::Error::source(&err)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
            assert!(
                text.contains(named),
                "{key}={value}: `{text}` does not name {named}"
            );
        }
    }

    #[test]
    fn secrets_never_print() {
        let mut s = Settings::defaults();
        s.auth.hs256_secret = Some("super-secret-value-that-is-long-enough".into());
        let debug = format!("{s:?}");
        let json = serde_json::to_string(&s).unwrap();
        assert!(!debug.contains("super-secret"), "{debug}");
        assert!(!json.contains("super-secret"), "{json}");
    }
}
