//! The sections that feed the rules of the memory (`[channels]`,
//! `[journey]`, `[answers]`, `[consents]`, `[follow_ups]`, `[traits]`,
//! `[phone]`), and the one place the domain's rules are built from the
//! settings: [`Settings::signal_rules`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{JourneyRule, Settings};
use crate::domain::{
    ChannelRules, IdentifierRules, JourneyRules, Personalization, RuleError, SignalRules,
    TrustRules,
};

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
    /// The domain's rules, built from these settings; fails where the journey
    /// rules, segments or offers do not fit together. [`Settings::validate`]
    /// calls it and reports the failure with the key it names.
    pub fn signal_rules(&self) -> Result<SignalRules, RuleError> {
        let settings = self;
        Ok(SignalRules {
            identifiers: IdentifierRules::new(
                &settings.identifiers,
                &settings.phone.default_region,
            ),
            channels: ChannelRules::new(
                settings.channels.priority.clone(),
                settings.channels.allow_unknown,
            ),
            stages: settings.journey.stages.clone(),
            event_stages: settings.journey.event_stages.clone(),
            journey_rules: JourneyRules::compile(
                &settings.journey.rules,
                &settings.journey.stages,
            )?,
            answer_ttl: settings.answers.ttl.clone(),
            caps: settings.profiles,
            trust: TrustRules::new(&settings.trust),
            personalization: Personalization::compile(
                &settings.segments,
                &settings.offers,
                &settings.journey.stages,
            )?,
            follow_up_delay: chrono::Duration::from_std(settings.follow_ups.delay).map_err(
                |_| RuleError {
                    key: "follow_ups.delay".into(),
                    reason: "is too long".into(),
                },
            )?,
        })
    }
}
