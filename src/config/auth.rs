//! `[auth]`, `[limits]` and `[privacy]`: who may call, how often, and what
//! counts as personal data.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
