//! Request-body and query extraction that speaks the error envelope: every
//! failure names what was wrong (and where, as a JSON path).

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::domain::json::{self, JsonError};
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

/// Parses a body strictly (see [`crate::domain::json`]), refusing in the
/// error envelope.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    json::parse(bytes).map_err(refused)
}

/// A refused document as the envelope answers it.
fn refused(e: JsonError) -> ApiError {
    match e {
        JsonError::Malformed(message) => ApiError::MalformedJson(message),
        JsonError::UnknownField(message) => ApiError::UnknownField(message),
        JsonError::MissingField(message) => ApiError::MissingField(message),
        JsonError::InvalidField(message) => ApiError::InvalidField(message),
        JsonError::DuplicateKey(message) => ApiError::DuplicateKey(message),
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
