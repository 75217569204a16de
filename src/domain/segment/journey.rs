//! `[[journey.rules]]`: which stage an event puts the customer in.

use serde_json::Value;

use super::{properties_match, refuse, RuleError};
use crate::domain::definitions::JourneyRule;
use crate::domain::is_valid_name;

/// `[[journey.rules]]`, checked in order.
#[derive(Debug, Clone, Default)]
pub struct JourneyRules {
    rules: Vec<JourneyRule>,
}

impl JourneyRules {
    pub fn compile(rules: &[JourneyRule], stages: &[String]) -> Result<JourneyRules, RuleError> {
        for (i, rule) in rules.iter().enumerate() {
            let key = format!("journey.rules[{i}]");
            if !is_valid_name(&rule.event, 64) {
                return Err(refuse(
                    format!("{key}.event"),
                    format!(
                        "`{}` is not an event type ([a-z][a-z0-9_]{{0,63}})",
                        rule.event
                    ),
                ));
            }
            if !stages.contains(&rule.stage) {
                return Err(refuse(
                    format!("{key}.stage"),
                    format!("names `{}`, which is not in journey.stages", rule.stage),
                ));
            }
        }
        Ok(JourneyRules {
            rules: rules.to_vec(),
        })
    }

    /// The stage the first matching rule gives an event.
    pub fn stage_for(
        &self,
        kind: &str,
        properties: &serde_json::Map<String, Value>,
    ) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.event == kind && properties_match(&r.properties, properties))
            .map(|r| r.stage.as_str())
    }
}
