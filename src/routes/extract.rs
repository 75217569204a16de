//! Request-body and query extraction that speaks the error envelope: every
//! failure names what was wrong (and where, as a JSON path).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor,
};

use crate::error::ApiError;

/// The body size limit of a resource; registered as resource `app_data`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// How long a client may take to send a whole body; registered as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub std::time::Duration);

/// A JSON body, size-limited, time-limited and parsed strictly (unknown
/// fields refused).
pub struct JsonBody<T>(pub T);

/// Bodies larger than this are parsed on the blocking pool, not on the
/// server thread: a 1,000-signal batch takes milliseconds to parse, and
/// every other connection of that thread would wait for it.
const PARSE_ASIDE_BYTES: usize = 16 * 1024;

impl<T: DeserializeOwned + Send + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req.app_data::<BodyLimit>().map_or(64 * 1024, |l| l.0);
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let timeout = req
            .app_data::<BodyTimeout>()
            .map_or(std::time::Duration::from_secs(10), |t| t.0);
        let mut payload = payload.take();
        // Only a keyed write needs its body's digest (see `routes::keyed`).
        let keyed = req
            .headers()
            .contains_key(super::keyed::HEADER)
            .then(|| req.clone());
        Box::pin(async move {
            if !is_json {
                return Err(ApiError::UnsupportedMediaType);
            }
            if declared.is_some_and(|n| n > limit) {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            let read = async {
                let mut body = Vec::with_capacity(declared.unwrap_or(1024).min(limit));
                while let Some(chunk) = payload.next().await {
                    let chunk = chunk.map_err(|_| {
                        ApiError::MalformedJson("the body could not be read".into())
                    })?;
                    if body.len() + chunk.len() > limit {
                        return Err(ApiError::PayloadTooLarge(limit));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            };
            let body = tokio::time::timeout(timeout, read)
                .await
                .map_err(|_| ApiError::BodyTimeout(timeout))??;
            if let Some(req) = keyed {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(&body).into();
                req.extensions_mut()
                    .insert(super::keyed::BodyDigest(digest));
            }
            if body.len() > PARSE_ASIDE_BYTES {
                return tokio::task::spawn_blocking(move || parse_json(&body).map(JsonBody))
                    .await
                    .map_err(|_| ApiError::Internal("parsing a body failed"))?;
            }
            parse_json(&body).map(JsonBody)
        })
    }
}

/// Parses strictly, naming the JSON path of whatever is wrong. A key named
/// twice in any object is refused, wherever it is: serde keeps the last of
/// two keys of a map silently, and the sender may have meant the first.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    refuse_duplicate_keys(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(path_error)?;
    de.end()
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok(value)
}

/// Walks the document once, building nothing but the keys of the objects it
/// is in, and answers the first key an object names twice with its path
/// (`signals[2].traits: duplicate key `first_name``), never a value. A
/// document that is not JSON passes: the typed parse says what is wrong.
/// It runs before the typed parse, so a key named twice is `duplicate_key`
/// wherever it is, a field of the schema included.
fn refuse_duplicate_keys(bytes: &[u8]) -> Result<(), ApiError> {
    let mut walk = Walk::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walked = Node(&mut walk).deserialize(&mut de).and_then(|()| de.end());
    match (walked, walk.duplicate) {
        (Ok(()), Some(message)) => Err(ApiError::DuplicateKey(message)),
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

fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    use serde_json::error::Category;
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::MalformedJson(inner.to_string())
        }
        Category::Data => {
            let text = without_value(&inner.to_string());
            // serde_json appends " at line L column C" for body input; keep it, it helps.
            let message = if path == "." {
                text.clone()
            } else {
                format!("{path}: {text}")
            };
            if text.starts_with("unknown field") {
                ApiError::UnknownField(message)
            } else if text.starts_with("missing field") {
                ApiError::MissingField(message)
            } else {
                ApiError::InvalidField(message)
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

/// Query-string parse failures in the envelope.
pub fn query_error(err: actix_web::error::QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidQuery(format!("query string: {err}")).into()
}

/// Path parse failures in the envelope.
pub fn path_error_handler(err: actix_web::error::PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidQuery(format!("path: {err}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The message a body is refused with for a duplicate key, if it is.
    fn duplicate(text: &str) -> Option<String> {
        match parse_json::<Value>(text.as_bytes()) {
            Err(ApiError::DuplicateKey(message)) => Some(message),
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
                    parse_json::<Value>(text.as_bytes()),
                    Err(ApiError::MalformedJson(_))
                ),
                "{text}"
            );
        }
    }
}
