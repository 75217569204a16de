//! Everything that can be wrong with a configuration, found at start-up with
//! an error that names the key. [`Settings::validate`] returns the compiled
//! rules, so that what was checked is what runs.
//!
//! Size: just over 500 lines, one check per setting in the order of
//! `config/default.toml`; splitting it by section would scatter the
//! cross-section checks.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    invalid, Backend, ConfigError, KeyAlgorithm, Settings, TrustLevel, FREE_TEXT_FIELDS,
    SENSITIVE_SCOPES,
};
use crate::domain::{SignalRules, MAX_IDENTIFIERS as MAX_IDENTIFIERS_PER_SIGNAL};

impl Settings {
    /// Checks every section and returns the rules they compile to (the
    /// journey rules, segments and offers are checked by compiling them):
    /// what was checked is what runs. Whoever needs the rules calls it, once.
    pub fn validate(&self) -> Result<SignalRules, ConfigError> {
        self.check()?;
        self.signal_rules().map_err(|e| invalid(e.key, e.reason))
    }

    /// Checks every setting but the rules, which only compiling them can
    /// check ([`Settings::validate`] does both): what loading does.
    pub fn check(&self) -> Result<(), ConfigError> {
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
                KeyAlgorithm::RS256 | KeyAlgorithm::ES256 | KeyAlgorithm::EdDSA => {
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
