//! Typed, validated settings, loaded in layers: the built-in
//! `config/default.toml`, then an optional file, then `ANAMNESIS__SECTION__KEY`
//! environment variables.
//!
//! Everything that can be wrong with a configuration is found here, at start-up,
//! with an error that names the key; nothing downstream re-checks it.

mod auth;
mod rules;
mod server;
mod storage;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::auth::{
    AuthSettings, KeyAlgorithm, KeySettings, LimitSettings, PrivacySettings, FREE_TEXT_FIELDS,
    SENSITIVE_SCOPES,
};
pub use self::rules::{
    AnswerSettings, ChannelSettings, ConsentSettings, FollowUpSettings, JourneySettings,
    PhoneSettings, TraitSettings,
};
pub use self::server::{LogFormat, ServerSettings, TelemetrySettings};
pub use self::storage::{
    Backend, CacheSettings, ChangeSettings, EventSettings, IdempotencySettings, PgOptions,
    PostgresSettings, RedisSettings, StorageSettings,
};
pub use crate::domain::definitions::{
    IdentifierSettings, IdentifierTypeSettings, InteractionPredicate, JourneyRule, MergePolicy,
    NormaliserKind, OfferSettings, PredicateSettings, SegmentSettings, TrustLevel, TrustSettings,
};
/// The rule sections' shapes are the domain's own; held here as read.
/// `[profiles]` is the domain's per-profile caps as they are.
pub use crate::domain::Caps as ProfileSettings;

/// The built-in defaults, compiled into the binary so it runs with no files.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

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

impl Settings {
    /// Loads the layers in order and checks the result ([`Settings::check`]:
    /// every setting but the rules, which [`Settings::validate`] compiles,
    /// once, where they are used). `file` wins over the `ANAMNESIS_CONFIG`
    /// variable.
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
        settings.check()?;
        Ok(settings)
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
