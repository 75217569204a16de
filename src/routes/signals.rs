//! `POST /v1/signals` and `POST /v1/signals/batch`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{BodyLimit, JsonBody};
use super::keyed::idempotent;
use super::resource;
use crate::auth::{Authorized, RateLimiter, WriteSignals};
use crate::domain::SignalInput;
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::middleware::note_customer;
use crate::service::views::IngestResult;
use crate::service::{BatchItem, Services};

pub fn configure(cfg: &mut web::ServiceConfig, single_limit: usize, batch_limit: usize) {
    cfg.service(
        resource("/v1/signals/batch", "POST")
            .app_data(BodyLimit(batch_limit))
            .route(web::post().to(ingest_batch)),
    )
    .service(
        resource("/v1/signals", "POST")
            .app_data(BodyLimit(single_limit))
            .route(web::post().to(ingest)),
    );
}

fn status_of(result: &IngestResult) -> StatusCode {
    if result.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// Ingest one signal.
///
/// Resolves the identifiers to one customer (creating, attaching or merging),
/// applies traits, answers and the event, and answers once the write is durable.
#[utoipa::path(
    post, path = "/v1/signals", tag = "ingest",
    request_body = SignalInput,
    responses(
        (status = 201, description = "A new profile was created (a replay of that signal answers the same)", body = IngestResult),
        (status = 200, description = "The signal joined an existing profile", body = IngestResult),
        (status = 409, description = "signal_id reused for a different signal", body = ErrorBody),
        (status = 410, description = "signal_id of an erased profile", body = ErrorBody),
        (status = 422, description = "Invalid signal", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn ingest(
    req: HttpRequest,
    auth: Authorized<WriteSignals>,
    services: web::Data<Services>,
    limiter: web::Data<RateLimiter>,
    JsonBody(input): JsonBody<SignalInput>,
) -> Result<HttpResponse, ApiError> {
    idempotent(&req, &auth.principal, &services, async {
        limiter.spend_signals(&auth.principal, 1).await?;
        auth.principal.check_channel(&input.channel)?;
        auth.principal.check_verified(&input)?;
        let result = services
            .ingest(input, super::caller(&auth.principal))
            .await?;
        note_customer(&result.customer_id);
        let masked = result.masked(&services.masking(auth.principal.access()));
        Ok(HttpResponse::build(status_of(&masked)).json(masked))
    })
    .await
}

/// Body of `POST /v1/signals/batch`.
///
/// Two kinds of bad item, two answers. An item that breaks what this schema
/// states (not an object, an unknown or missing field, a wrong type, a name,
/// length, count or enum rule) makes the whole batch a `422` naming the item
/// (`signals[3].channel: ...`): the sender has a bug, and a `200` would hide
/// it. An item of the right shape that the service still refuses (a phone
/// number that is no phone number, only placeholders, a time in the future,
/// a `signal_id` reused, a channel the token may not write) gets its error in
/// its own place in `results`, and the other items are ingested.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// At least one, and up to `server.max_batch_signals` (default 1,000).
    #[schema(min_items = 1)]
    pub signals: Vec<SignalInput>,
}

/// One item's outcome: a result (with `status` 200 or 201) or an error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BatchItemResult {
    Ok {
        status: u16,
        #[serde(flatten)]
        result: IngestResult,
    },
    Err {
        status: u16,
        error: ErrorDetail,
    },
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    /// One entry per signal, in request order.
    pub results: Vec<BatchItemResult>,
}

fn item_error(e: &ApiError) -> BatchItemResult {
    BatchItemResult::Err {
        status: e.status_and_code().0.as_u16(),
        error: e.body().error,
    }
}

/// Ingest many signals.
///
/// Each signal is resolved on its own, in order; one signal the service
/// refuses does not stop the others. The response is `200` with one result
/// or error per item. A batch with an item that breaks the schema is refused
/// whole with `422` (see `BatchRequest`).
#[utoipa::path(
    post, path = "/v1/signals/batch", tag = "ingest",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result or error per signal, in order", body = BatchResponse),
        (status = 422, description = "Empty batch, too many signals, or an item that breaks the schema (the message names it)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn ingest_batch(
    req: HttpRequest,
    auth: Authorized<WriteSignals>,
    services: web::Data<Services>,
    limiter: web::Data<RateLimiter>,
    JsonBody(batch): JsonBody<BatchRequest>,
) -> Result<HttpResponse, ApiError> {
    idempotent(&req, &auth.principal, &services, async {
        let count = batch.signals.len();
        if count == 0 {
            return Err(ApiError::EmptyBatch);
        }
        if count > services.max_batch() {
            return Err(ApiError::TooManySignals {
                count,
                max: services.max_batch(),
            });
        }
        // A large batch off the server thread, as its parse was (see `extract`).
        let batch = if count > 16 {
            let services = services.clone();
            web::block(move || services.check_batch_shape(&batch.signals).map(|()| batch))
                .await
                .map_err(|_| ApiError::Internal("checking a batch failed"))??
        } else {
            services.check_batch_shape(&batch.signals)?;
            batch
        };
        // One per signal, after the checks that refuse the batch whole (those
        // cost the caller nothing but the request).
        limiter.spend_signals(&auth.principal, count).await?;
        let items: Vec<BatchItem<ApiError>> = batch
            .signals
            .into_iter()
            .map(|input| {
                match auth
                    .principal
                    .check_channel(&input.channel)
                    .and_then(|()| auth.principal.check_verified(&input))
                {
                    Ok(()) => BatchItem::Signal(Box::new(input)),
                    Err(e) => BatchItem::Rejected(e),
                }
            })
            .collect();
        let outcomes = services
            .ingest_batch(items, super::caller(&auth.principal))
            .await?;
        let masking = services.masking(auth.principal.access());
        let results = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Ok(result) => {
                    let result = result.masked(&masking);
                    BatchItemResult::Ok {
                        status: status_of(&result).as_u16(),
                        result,
                    }
                }
                Err(Ok(api)) => item_error(&api),
                Err(Err(service)) => item_error(&ApiError::Service(service)),
            })
            .collect();
        Ok(web::Json(BatchResponse { results }))
    })
    .await
}
