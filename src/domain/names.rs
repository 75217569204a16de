//! The shapes of the names and texts a request may carry, written once as the
//! regular expressions the OpenAPI document publishes. The checks themselves
//! live beside the rules that use them ([`super::is_valid_name`],
//! [`super::check_signal_id`], ...); a unit test proves each pattern and its
//! check agree.
//!
//! The schemas here are named components: where the configuration fixes the
//! set of values (known channels, identifier types, journey stages, consent
//! purposes), `crate::openapi::api_doc` replaces the pattern with that set.

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// A channel, question key or event type name: `[a-z][a-z0-9_]`, and so safe
/// in keys, metric labels and URLs.
pub const CHANNEL_PATTERN: &str = "^[a-z][a-z0-9_]{0,31}$";
/// Identifier type names share the channel name shape.
pub const IDENTIFIER_TYPE_PATTERN: &str = CHANNEL_PATTERN;
/// Answer keys and event types: names of up to 64 characters.
pub const KEY_PATTERN: &str = "^[a-z][a-z0-9_]{0,63}$";
/// Trait names may also hold dots for namespacing (`address.city`).
pub const TRAIT_NAME_PATTERN: &str = "^[a-z][a-z0-9_.]{0,63}$";
/// `signal_id` and episode ids: printable ASCII without spaces.
pub const SIGNAL_ID_PATTERN: &str = "^[!-~]{1,128}$";
/// An `Idempotency-Key`: printable ASCII without spaces.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,255}$";
/// The longest `Idempotency-Key` accepted (the draft leaves it to the server).
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// A customer id: `cus_` and the 26 upper-case Crockford base32 characters of
/// a ULID (whose first character is at most 7: 128 bits).
pub const CUSTOMER_ID_PATTERN: &str = "^cus_[0-7][0-9A-HJKMNP-TV-Z]{25}$";
/// A timeline cursor: the `id` of an interaction, `<millis>-<sequence>`.
pub const TIMELINE_CURSOR_PATTERN: &str = "^[0-9]{1,19}-[0-9]{1,19}$";
/// A ledger cursor: the `id` of a history entry, a decimal sequence number.
pub const HISTORY_CURSOR_PATTERN: &str = "^[0-9]{1,19}$";
/// A follow-up list cursor: resolution time, customer id, episode id in hex
/// (printable ASCII: bytes 21 to 7e).
pub const FOLLOW_UP_CURSOR_PATTERN: &str =
    "^[0-9]{1,19}-cus_[0-7][0-9A-HJKMNP-TV-Z]{25}-(2[1-9a-f]|[3-6][0-9a-f]|7[0-9a-e]){1,128}$";
/// The name of an event on a profile's event stream (the kinds of change,
/// and the two last events of a stream).
pub const STREAM_EVENT_PATTERN: &str = "^(profile\\.(created|updated|merged|unmerged|erased)|answer\\.captured|interaction\\.added|episode\\.updated|stream\\.(dropped|closed))$";

fn string_schema(pattern: Option<&str>, description: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(pattern)
        .description(Some(description))
        .examples([example])
        .into()
}

/// Declares an OpenAPI-only type: a named string schema with a pattern.
macro_rules! name_schema {
    ($(#[$doc:meta])* $name:ident, $pattern:expr, $description:literal, $example:literal) => {
        $(#[$doc])*
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                string_schema($pattern, $description, $example)
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

name_schema!(
    /// A channel name; the configured channels unless `channels.allow_unknown`.
    ChannelName,
    Some(CHANNEL_PATTERN),
    "A channel name (`channels.priority`).",
    "ivr"
);
name_schema!(
    /// An identifier type; the configured ones unless `identifiers.allow_unknown_types`.
    IdentifierType,
    Some(IDENTIFIER_TYPE_PATTERN),
    "An identifier type (`identifiers.types`).",
    "phone"
);
name_schema!(
    /// A journey stage; always one of `journey.stages` (stage names have no
    /// shape of their own).
    JourneyStage,
    None,
    "A journey stage (`journey.stages`).",
    "service"
);
name_schema!(
    /// A consent purpose; always one of `consents.purposes`.
    ConsentPurpose,
    Some(KEY_PATTERN),
    "A consent purpose (`consents.purposes`).",
    "marketing"
);

impl utoipa::PartialSchema for super::CustomerId {
    fn schema() -> RefOr<Schema> {
        string_schema(
            Some(CUSTOMER_ID_PATTERN),
            "A customer id: `cus_` and a ULID, so ids sort by creation time.",
            "cus_01JD3X4Y5Z6A7B8C9D0E1F2G3H",
        )
    }
}

impl utoipa::ToSchema for super::CustomerId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("CustomerId")
    }
}

/// Whether a key is one this service accepts: 1 to [`MAX_IDEMPOTENCY_KEY_CHARS`]
/// printable ASCII characters (a UUID, a ULID, a hash).
pub fn valid_idempotency_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_CHARS
        && key.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{check_signal_id, is_valid_name, is_valid_trait_name, CustomerId};

    /// The check a pattern publishes.
    type Check = dyn Fn(&str) -> bool;

    fn matches(pattern: &str, text: &str) -> bool {
        regex::Regex::new(pattern).unwrap().is_match(text)
    }

    /// Texts on both sides of every rule: empty, case, digits first, dots,
    /// spaces, control characters, non-ASCII, a trailing newline, lengths.
    fn samples() -> Vec<String> {
        let mut texts: Vec<String> = [
            "",
            "a",
            "z9",
            "a_b",
            "a.b",
            "A",
            "9a",
            "_a",
            "a-b",
            "a b",
            "a\n",
            "a\u{7f}",
            "é",
            "ivr-7f3a-0001",
            "x y",
            "~!",
            "\u{0}",
            "1-2",
            "12-",
            "-12",
            "+1",
            "0",
            "007",
            "cus_01JD3X4Y5Z6A7B8C9D0E1F2G3H",
            "cus_01jd3x4y5z6a7b8c9d0e1f2g3h",
            "cus_81JD3X4Y5Z6A7B8C9D0E1F2G3H",
            "cus_01JD3X4Y5Z6A7B8C9D0E1F2G3I",
            "cus_01JD3X4Y5Z6A7B8C9D0E1F2G3",
            "cus_01JD3X4Y5Z6A7B8C9D0E1F2G3HH",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [31, 32, 33, 63, 64, 65, 127, 128, 129] {
            texts.push("a".repeat(n));
        }
        texts.push(format!("{}-{}", "9".repeat(19), "9".repeat(19)));
        texts.push(format!("{}-1", "9".repeat(20)));
        texts.push("9".repeat(19));
        texts.push("9".repeat(20));
        let id = "cus_01M83EDRV0FKRY1XCBH0BNP572";
        for episode in [
            "6f2d41",
            "78",
            "a",
            "",
            "6F",
            "zz",
            "ff",
            &"ab".repeat(128),
            &"ab".repeat(129),
        ] {
            texts.push(format!("1732000000000-{id}-{episode}"));
        }
        texts.push(format!("{}-{id}-6f", "9".repeat(20)));
        texts.push(format!("-{id}-6f"));
        texts.push("12-cus_81M83EDRV0FKRY1XCBH0BNP572-6f".to_owned());
        texts.push("k".repeat(255));
        texts.push("k".repeat(256));
        texts
    }

    #[test]
    fn every_published_pattern_says_what_its_check_does() {
        let decimal = |t: &str| crate::domain::parse_decimal(t).is_some();
        let cursor = |t: &str| crate::domain::TimelinePosition::from_id(t).is_some();
        let follow_up = |t: &str| crate::domain::FollowUpKey::from_cursor(t).is_some();
        let checks: [(&str, &Check); 9] = [
            (CHANNEL_PATTERN, &|t| is_valid_name(t, 32)),
            (KEY_PATTERN, &|t| is_valid_name(t, 64)),
            (TRAIT_NAME_PATTERN, &is_valid_trait_name),
            (SIGNAL_ID_PATTERN, &|t| check_signal_id(t).is_ok()),
            (CUSTOMER_ID_PATTERN, &|t| CustomerId::parse(t).is_ok()),
            (TIMELINE_CURSOR_PATTERN, &cursor),
            (HISTORY_CURSOR_PATTERN, &decimal),
            (FOLLOW_UP_CURSOR_PATTERN, &follow_up),
            (IDEMPOTENCY_KEY_PATTERN, &valid_idempotency_key),
        ];
        for (pattern, check) in checks {
            for text in samples() {
                assert_eq!(
                    matches(pattern, &text),
                    check(&text),
                    "{pattern} and its check disagree on {text:?}"
                );
            }
        }
        for _ in 0..100 {
            let id = CustomerId::generate().to_string();
            assert!(matches(CUSTOMER_ID_PATTERN, &id), "{id}");
        }
    }
}
