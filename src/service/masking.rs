//! The PII masking policy: what a caller may see of personal data, decided
//! from the token's scopes and the configuration's field rules. The response
//! views in [`views`](super::views) apply it; nothing here knows their shapes.

use std::collections::HashSet;

use serde_json::Value;

use crate::config::Settings;
use crate::domain::{IdentifierRules, SignalRules};

pub use crate::domain::Access;

/// Which fields hold personal data, from configuration: the PII traits,
/// and the free text that is *not* personal (free text is, by default).
#[derive(Debug, Clone, Default)]
pub struct FieldRules {
    pub pii_traits: Vec<String>,
    pub public_answers: HashSet<String>,
    pub public_properties: HashSet<String>,
    pub public_title: bool,
    pub public_status: bool,
    pub public_summary: bool,
    pub public_comment: bool,
}

impl FieldRules {
    pub fn new(settings: &Settings) -> FieldRules {
        let privacy = &settings.privacy;
        let field = |name: &str| privacy.public_fields.iter().any(|f| f == name);
        FieldRules {
            pii_traits: settings.traits.pii.clone(),
            public_answers: privacy.public_answers.iter().cloned().collect(),
            public_properties: privacy.public_properties.iter().cloned().collect(),
            public_title: field("episode.title"),
            public_status: field("episode.public_status"),
            public_summary: field("interaction.summary"),
            public_comment: field("feedback.comment"),
        }
    }
}

/// Field rules that decide what is personal, and the one setting views
/// derive a field from.
pub struct Masking<'a> {
    pub access: Access,
    pub identifiers: &'a IdentifierRules,
    pub fields: &'a FieldRules,
    /// A resolved episode's follow-up falls due this long after resolution.
    pub follow_up_delay: chrono::Duration,
}

/// What masked free text shows: nothing of it.
pub const MASKED_TEXT: &str = "****";

/// Masks a PII identifier so that what it shows cannot be completed by
/// trying the rest (each miss spends the lookup budget, see
/// `limits.lookup_misses_per_hour`): at least six characters stay hidden.
///
/// - phones (E.164) keep `+`, the next two digits (the country code, or
///   its start) and, when at least six digits stay hidden, the last two:
///   `+31****78`, so an agent can ask "the number ending in 78?";
/// - e-mails keep the domain, and the first letter of a local part of at
///   least seven characters: `a***@example.com`, `***@example.com`;
/// - other values keep their first two characters when at least six more
///   stay hidden: `LC****`, else nothing: `****`.
pub fn mask(kind: &str, value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    match kind {
        "email" => match value.split_once('@') {
            Some((local, domain)) => {
                let local: Vec<char> = local.chars().collect();
                let first: String = match local.len() >= 7 {
                    true => local[..1].iter().collect(),
                    false => String::new(),
                };
                format!("{first}***@{domain}")
            }
            None => MASKED_TEXT.to_owned(),
        },
        "phone" if chars.len() >= 3 => {
            let head: String = chars[..3].iter().collect();
            // Digits after the head that would stay hidden with a tail of two.
            let hidden = chars.len().saturating_sub(3 + 2);
            let tail: String = match hidden >= 6 {
                true => chars[chars.len() - 2..].iter().collect(),
                false => String::new(),
            };
            format!("{head}****{tail}")
        }
        _ if chars.len() >= 8 => {
            let head: String = chars[..2].iter().collect();
            format!("{head}****")
        }
        _ => MASKED_TEXT.to_owned(),
    }
}

/// Masks a PII trait: its first two characters when it has at least four,
/// so the desk sees a name is there (`An****`). Traits are not lookup keys,
/// so no answer can complete them.
fn mask_trait(value: &str) -> String {
    let head: String = value
        .chars()
        .take(2.min(value.chars().count() / 2))
        .collect();
    format!("{head}****")
}

impl<'a> Masking<'a> {
    /// What `access` may see under `rules` and the field rules.
    pub fn new(access: Access, rules: &'a SignalRules, fields: &'a FieldRules) -> Masking<'a> {
        Masking {
            access,
            identifiers: &rules.identifiers,
            fields,
            follow_up_delay: rules.follow_up_delay,
        }
    }

    pub fn identifier_value(&self, kind: &str, value: &str) -> String {
        if self.access.pii || !self.identifiers.is_secret(kind) {
            value.to_owned()
        } else {
            mask(kind, value)
        }
    }

    pub fn trait_value(&self, name: &str, value: &Value) -> Value {
        // `address` also covers namespaced `address.street`.
        let is_pii = self.fields.pii_traits.iter().any(|t| {
            name == t
                || (name.starts_with(t.as_str()) && name.as_bytes().get(t.len()) == Some(&b'.'))
        });
        if self.access.pii || !is_pii {
            return value.clone();
        }
        match value {
            Value::String(s) => Value::String(mask_trait(s)),
            _ => Value::String(MASKED_TEXT.to_owned()),
        }
    }

    /// Free text, shown when the caller may read personal data or the
    /// configuration calls it not personal (`public`).
    pub(super) fn text(&self, public: bool, text: &Option<String>) -> Option<String> {
        match text {
            Some(_) if !(self.access.pii || public) => Some(MASKED_TEXT.to_owned()),
            other => other.clone(),
        }
    }

    pub fn answer_value(&self, key: &str, value: &Value) -> Value {
        if self.access.pii || self.fields.public_answers.contains(key) {
            value.clone()
        } else {
            Value::String(MASKED_TEXT.to_owned())
        }
    }

    pub fn title(&self, title: &Option<String>) -> Option<String> {
        self.text(self.fields.public_title, title)
    }

    pub fn properties(
        &self,
        properties: serde_json::Map<String, Value>,
    ) -> serde_json::Map<String, Value> {
        if self.access.pii {
            return properties;
        }
        properties
            .into_iter()
            .map(|(k, v)| match self.fields.public_properties.contains(&k) {
                true => (k, v),
                false => (k, Value::String(MASKED_TEXT.to_owned())),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::mask;

    /// Characters of `value` the mask leaves to guess: what a mask does not
    /// show of it, counted generously (any shown character counts as known).
    fn hidden(value: &str, masked: &str) -> usize {
        let shown = masked.chars().filter(|c| *c != '*').count();
        value.chars().count().saturating_sub(shown)
    }

    #[test]
    fn masks_leave_at_least_six_characters_to_guess() {
        // (kind, value, mask, characters hidden)
        for (kind, value, expected, hidden_at_least) in [
            ("phone", "+31612345678", "+31****78", 7),
            ("phone", "+12025550143", "+12****43", 7),
            ("phone", "+4930123456", "+49****56", 6),
            // Too short to show a tail and still hide six digits.
            ("phone", "+6834001", "+68****", 5),
            ("email", "annadevries@example.com", "a***@example.com", 10),
            // A short local part shows nothing of itself (nor its length).
            ("email", "anna@example.com", "***@example.com", 4),
            ("shoe_size", "LC-99887766", "LC****", 9),
            ("shoe_size", "C-1001", "****", 6),
        ] {
            let masked = mask(kind, value);
            assert_eq!(masked, expected, "{kind}:{value}");
            assert!(
                hidden(value, &masked) >= hidden_at_least,
                "{kind}:{value} shows too much: {masked}"
            );
        }
    }
}
