//! Request-body and query extraction that speaks the error envelope: every
//! failure names what was wrong (and where, as a JSON path).

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

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

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
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
            parse_json(&body).map(JsonBody)
        })
    }
}

/// Parses strictly, naming the JSON path of whatever is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(path_error)?;
    de.end()
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok(value)
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
