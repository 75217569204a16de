//! The `Idempotency-Key` header of every write (see
//! `service::idempotency` for what is kept and when).
//!
//! Same key, same request: the first answer again, with
//! `idempotent-replayed: true`, and nothing applied. Same key, another
//! request: `422 idempotency_key_reused`. Same key while the first request
//! is still being served: `409 idempotency_key_in_flight`. Only answers
//! that applied something (2xx) are kept: a refused request applied
//! nothing, so its retry is judged again.

use std::future::Future;

use actix_web::body::{to_bytes, BoxBody};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, Responder};
use serde_json::Value;

use crate::auth::Principal;
use crate::domain::names::valid_idempotency_key;
use crate::domain::CustomerId;
use crate::error::ApiError;
use crate::service::idempotency::{fingerprint, key_id, KeyRecord, Keyed, Reply, KEYED};
use crate::service::{ServiceError, Services};

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The body of a keyed request, hashed by the body extractor (only when
/// the request carries a key).
#[derive(Debug, Clone, Copy)]
pub struct BodyDigest(pub [u8; 32]);

/// Runs `write` under the request's `Idempotency-Key`, if it has one.
pub async fn idempotent<R: Responder>(
    req: &HttpRequest,
    principal: &Principal,
    services: &Services,
    write: impl Future<Output = Result<R, ApiError>>,
) -> Result<HttpResponse, ApiError> {
    let Some(raw) = req.headers().get(HEADER) else {
        return Ok(write.await?.respond_to(req).map_into_boxed_body());
    };
    let key = raw
        .to_str()
        .ok()
        .filter(|k| valid_idempotency_key(k))
        .ok_or(ApiError::InvalidIdempotencyKey)?;
    let id = key_id(principal.budget_key(), key);
    let digest = req
        .extensions()
        .get::<BodyDigest>()
        .map_or([0; 32], |d| d.0);
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned());
    let fingerprint = fingerprint(req.method().as_str(), &path, &digest);
    // A retry of an answered request: the fast way, without the committer.
    if let Some(record) = services.key_record(&id)? {
        return answer(record, &fingerprint);
    }
    let Some(_claim) = services.claim_key(id) else {
        return Err(ApiError::IdempotencyKeyInFlight);
    };
    let keyed = Keyed {
        id,
        fingerprint: fingerprint.clone(),
        created_millis: u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0),
        continuing: false,
    };
    let outcome = KEYED.scope(keyed.clone(), write).await;
    let response = match outcome {
        Err(ApiError::Service(ServiceError::KeyUsed(bytes))) => {
            return answer(
                KeyRecord::decode(&bytes).map_err(ServiceError::from)?,
                &fingerprint,
            );
        }
        Err(e) => return Err(e),
        Ok(r) => r.respond_to(req).map_into_boxed_body(),
    };
    if !response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let (head, body) = response.into_parts();
    let bytes = to_bytes(body)
        .await
        .map_err(|_| ApiError::Internal("a write's answer could not be read back"))?;
    let reply = Reply {
        status: status.as_u16(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    };
    // Kept before the answer goes out, so a retry after it finds it. Should
    // this fail, the write stands and is answered; a retry hears 409.
    if let Err(e) = services
        .keep_reply(keyed, reply, customers_in(&bytes))
        .await
    {
        tracing::warn!(error = %e, "the reply of a keyed write could not be kept");
    }
    Ok(head.set_body(BoxBody::new(bytes)))
}

/// What a retry hears, from the key's record.
fn answer(record: KeyRecord, fingerprint: &str) -> Result<HttpResponse, ApiError> {
    if record.fingerprint != fingerprint {
        return Err(ApiError::IdempotencyKeyReused);
    }
    if record.erased {
        return Err(ApiError::IdempotentReplyErased);
    }
    let Some(reply) = record.reply else {
        return Err(ApiError::IdempotencyKeyInFlight);
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut response = HttpResponse::build(status);
    response.insert_header((
        HeaderName::from_static(REPLAYED_HEADER),
        HeaderValue::from_static("true"),
    ));
    if reply.body.is_empty() {
        return Ok(response.finish());
    }
    Ok(response
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .body(reply.body))
}

/// The customers an answer names (`customer_id` and `merged_ids` at any
/// depth): an erasure of any of them drops the kept answer.
fn customers_in(body: &[u8]) -> Vec<CustomerId> {
    fn walk(v: &Value, depth: usize, out: &mut Vec<CustomerId>) {
        if depth > 8 {
            return;
        }
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("customer_id" | "survivor_id" | "restored_id", Value::String(s)) => {
                            out.extend(CustomerId::parse(s).ok());
                        }
                        ("merged_ids", Value::Array(ids)) => {
                            out.extend(
                                ids.iter()
                                    .filter_map(Value::as_str)
                                    .filter_map(|s| CustomerId::parse(s).ok()),
                            );
                        }
                        _ => walk(v, depth + 1, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, depth + 1, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        walk(&v, 0, &mut out);
    }
    out.sort();
    out.dedup();
    out
}
