//! The strict reading of JSON that every signal goes through, whether it
//! arrives in a request body or as a line of an imported file: a key named
//! twice is refused, an unknown field is refused, and every failure names
//! the JSON path of what is wrong, never a value (it may be personal data).
//! Nesting is bounded by `serde_json`'s recursion limit (128 levels): a
//! deeper document is malformed. Pure: the HTTP layer and the import each
//! map [`JsonError`] to their own answer.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor,
};

/// Why a document was refused. Each message is the one a client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON, more than one value, or nested too deep.
    #[error("the body is not valid JSON: {0}")]
    Malformed(String),
    #[error("{0}")]
    UnknownField(String),
    #[error("{0}")]
    MissingField(String),
    /// A value of the wrong type or outside what the field takes.
    #[error("{0}")]
    InvalidField(String),
    /// An object names a key twice: which one to believe is not ours to guess.
    #[error("{0}")]
    DuplicateKey(String),
}

/// Parses strictly, naming the JSON path of whatever is wrong. A key named
/// twice in any object is refused, wherever it is: serde keeps the last of
/// two keys of a map silently, and the sender may have meant the first.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    refuse_duplicate_keys(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(path_error)?;
    de.end().map_err(|e| JsonError::Malformed(e.to_string()))?;
    Ok(value)
}

/// Walks the document once, building nothing but the keys of the objects it
/// is in, and answers the first key an object names twice with its path
/// (`signals[2].traits: duplicate key `first_name``), never a value. A
/// document that is not JSON passes: the typed parse says what is wrong.
/// It runs before the typed parse, so a key named twice is `duplicate_key`
/// wherever it is, a field of the schema included.
fn refuse_duplicate_keys(bytes: &[u8]) -> Result<(), JsonError> {
    let mut walk = Walk::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walked = Node(&mut walk).deserialize(&mut de).and_then(|()| de.end());
    match (walked, walk.duplicate) {
        (Ok(()), Some(message)) => Err(JsonError::DuplicateKey(message)),
        _ => Ok(()),
    }
}

/// Keys longer than this are cut short in a message.
const SHOWN_KEY_CHARS: usize = 64;

/// Where the walk is, and what it found.
#[derive(Default)]
struct Walk<'de> {
    path: Vec<Step<'de>>,
    duplicate: Option<String>,
}

enum Step<'de> {
    Key(Cow<'de, str>),
    Index(usize),
}

impl Walk<'_> {
    /// The path as `serde_path_to_error` writes it: `signals[2].traits`.
    fn path(&self) -> String {
        let mut text = String::new();
        for step in &self.path {
            match step {
                Step::Key(key) => {
                    if !text.is_empty() {
                        text.push('.');
                    }
                    text.extend(key.chars().take(SHOWN_KEY_CHARS));
                }
                Step::Index(i) => text.push_str(&format!("[{i}]")),
            }
        }
        text
    }
}

/// One value of the document.
struct Node<'w, 'de>(&'w mut Walk<'de>);

/// An object key, borrowed from the body unless it holds an escape.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Objects with more keys than this look keys up in a set rather than a list.
const LISTED_KEYS: usize = 16;

impl<'de> Visitor<'de> for Node<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let walk = self.0;
        let mut index = 0;
        loop {
            walk.path.push(Step::Index(index));
            let more = seq.next_element_seed(Node(&mut *walk))?;
            walk.path.pop();
            if more.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let walk = self.0;
        let mut listed: Vec<Cow<'de, str>> = Vec::new();
        let mut set: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let seen = if set.is_empty() {
                listed.contains(&key)
            } else {
                set.contains(&key)
            };
            if seen && walk.duplicate.is_none() {
                // The first one found; the walk goes on only to tell a
                // whole document from one the typed parse refuses anyway.
                let shown: String = key.chars().take(SHOWN_KEY_CHARS).collect();
                let path = walk.path();
                walk.duplicate = Some(if path.is_empty() {
                    format!("duplicate key `{shown}`")
                } else {
                    format!("{path}: duplicate key `{shown}`")
                });
            }
            walk.path.push(Step::Key(key));
            map.next_value_seed(Node(&mut *walk))?;
            let Some(Step::Key(key)) = walk.path.pop() else {
                unreachable!("the walk pops what it pushed");
            };
            if seen {
                continue;
            }
            if set.is_empty() && listed.len() < LISTED_KEYS {
                listed.push(key);
            } else {
                set.extend(listed.drain(..));
                set.insert(key);
            }
        }
        Ok(())
    }
}

fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> JsonError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    use serde_json::error::Category;
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => JsonError::Malformed(inner.to_string()),
        Category::Data => {
            let text = without_value(&inner.to_string());
            // serde_json appends " at line L column C" for body input; keep it, it helps.
            let message = if path == "." {
                text.clone()
            } else {
                format!("{path}: {text}")
            };
            if text.starts_with("unknown field") {
                JsonError::UnknownField(message)
            } else if text.starts_with("missing field") {
                JsonError::MissingField(message)
            } else {
                JsonError::InvalidField(message)
            }
        }
    }
}

/// serde names the offending value (``invalid type: integer `612345678` ``);
/// that value may be a phone number, so it never reaches the message.
fn without_value(text: &str) -> String {
    if !(text.starts_with("invalid type:") || text.starts_with("invalid value:")) {
        return text.to_owned();
    }
    let Some(open) = text.find('`') else {
        return text.to_owned();
    };
    match text[open + 1..].find('`') {
        Some(len) => {
            let close = open + 1 + len;
            format!("{}…{}", &text[..open], &text[close + 1..])
        }
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The message a document is refused with for a duplicate key, if it is.
    fn duplicate(text: &str) -> Option<String> {
        match parse::<Value>(text.as_bytes()) {
            Err(JsonError::DuplicateKey(message)) => Some(message),
            _ => None,
        }
    }

    #[test]
    fn a_duplicate_key_is_named_with_its_path() {
        let cases = [
            (r#"{"a": 1, "a": 2}"#, "duplicate key `a`"),
            (
                r#"{"x": {"b": [1, {"c": 1, "c": null}]}}"#,
                "x.b[1]: duplicate key `c`",
            ),
            (r#"[{}, {"k": 1, "k": 1}]"#, "[1]: duplicate key `k`"),
            // The same key however it is escaped.
            (r#"{"tier": 1, "t\u0069er": 2}"#, "duplicate key `tier`"),
        ];
        for (text, message) in cases {
            assert_eq!(duplicate(text).as_deref(), Some(message), "{text}");
        }
    }

    #[test]
    fn many_keys_are_compared_all_the_same() {
        let keys: Vec<String> = (0..100).map(|i| format!("\"k{i}\": {i}")).collect();
        let unique = format!("{{{}}}", keys.join(", "));
        assert_eq!(duplicate(&unique), None);
        for repeated in [0, 15, 16, 17, 99] {
            let text = format!("{{{}, \"k{repeated}\": 0}}", keys.join(", "));
            assert_eq!(
                duplicate(&text),
                Some(format!("duplicate key `k{repeated}`")),
                "{repeated}"
            );
        }
    }

    #[test]
    fn the_same_key_in_two_objects_is_no_duplicate() {
        assert_eq!(
            duplicate(r#"{"a": {"a": 1}, "b": {"a": 2}, "c": [{"a": 1}, {"a": 2}]}"#),
            None
        );
    }

    #[test]
    fn a_long_key_is_cut_short_and_no_value_is_shown() {
        let key = "k".repeat(500);
        let text = format!(r#"{{"{key}": "secret-1", "{key}": "secret-2"}}"#);
        let message = duplicate(&text).unwrap();
        assert_eq!(
            message,
            format!("duplicate key `{}`", "k".repeat(SHOWN_KEY_CHARS))
        );
        assert!(!message.contains("secret"));
    }

    #[test]
    fn what_is_not_json_is_left_to_the_typed_parse() {
        for text in [
            r#"{"a": 1, "a": "#,
            "{\"a\": 1} trailing",
            &format!("{}{}", "[".repeat(500), "]".repeat(500)),
        ] {
            assert!(
                matches!(
                    parse::<Value>(text.as_bytes()),
                    Err(JsonError::Malformed(_))
                ),
                "{text}"
            );
        }
    }
}
