//! The one error-code table. Every failure in every layer becomes an
//! [`ApiError`]; its `code` is stable (clients match on it), its status is the
//! one the contract implies, and its body is always
//! `{"error": {"code", "message", "request_id"}}`.
//!
//! Internal causes (store failures) go to the log, never to the client.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::TokenError;
use crate::domain::{CustomerIdError, IdentifierError, SignalError};
use crate::middleware::{current_request, CANONICAL_ID_HEADER};
use crate::service::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    UnknownField(String),
    #[error("{0}")]
    MissingField(String),
    #[error("{0}")]
    InvalidField(String),
    /// An object names a key twice: which one to believe is not ours to guess.
    #[error("{0}")]
    DuplicateKey(String),
    #[error("the body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the body did not arrive within {} ms", .0.as_millis())]
    BodyTimeout(std::time::Duration),
    #[error("{0}")]
    InvalidQuery(String),
    #[error(transparent)]
    InvalidCustomerId(#[from] CustomerIdError),
    #[error("no route matches this path")]
    RouteNotFound,
    #[error("this method is not allowed here; allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("this route needs a bearer token (Authorization: Bearer <token>)")]
    MissingToken,
    #[error(transparent)]
    InvalidToken(#[from] TokenError),
    #[error("this token's subject is over its rate limit; retry after {} s", retry_after_secs(*.0))]
    RateLimited(std::time::Duration),
    #[error("this token's subject is over its budget of signals per second (limits.signals_per_second; a batch spends one per signal); retry after {} s", retry_after_secs(*.wait))]
    SignalRateLimited { wait: std::time::Duration },
    #[error("this token's subject has {0} exports in progress, the most one subject may (limits.exports_per_subject); retry once one finished")]
    TooManyExports(usize),
    #[error("the Idempotency-Key header must be 1 to 255 printable ASCII characters (a UUID or a ULID, say)")]
    InvalidIdempotencyKey,
    #[error("this Idempotency-Key was used with another request (method, path or body differ); use a new key for a new request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is being served, or was applied and its answer lost in a restart; retry later, or read the resource to see its effect")]
    IdempotencyKeyInFlight,
    #[error("the request with this Idempotency-Key was applied, and the customer it spoke of has since been erased: its answer is gone")]
    IdempotentReplyErased,
    #[error("the token lacks the `{0}` scope")]
    InsufficientScope(&'static str),
    #[error("the token is bound to channel `{bound}` and may not write for `{requested}`")]
    ChannelNotAllowed { bound: String, requested: String },
    #[error("tokens bound to channel `{channel}` may not carry the `{scope}` scope (auth.channel_scopes); mint this token without it")]
    ScopeNotAllowedForChannel {
        channel: String,
        scope: &'static str,
    },
    #[error(
        "a token bound to a customer may only read that customer's own view (GET /v1/me/episodes)"
    )]
    CustomerTokenNotAllowed,
    #[error("this route is for tokens bound to a customer (a `customer` claim naming one of their verified identifiers)")]
    CustomerTokenRequired,
    #[error("this token's subject has spent its budget of lookups that find nobody; retry after {} s", retry_after_secs(*.0))]
    LookupBudgetExhausted(std::time::Duration),
    #[error("a batch may hold at most {max} signals, this one has {count}")]
    TooManySignals { count: usize, max: usize },
    #[error("the batch holds no signals")]
    EmptyBatch,
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// `Retry-After` counts whole seconds; round up so a client that waits as told
/// is let through.
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl From<SignalError> for ApiError {
    fn from(e: SignalError) -> Self {
        ApiError::Service(ServiceError::Signal(e))
    }
}

/// The error body of every failed request and every failed batch item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case; match on this, not on the message.
    #[schema(example = "profile_not_found")]
    pub code: String,
    /// For humans; may change between releases.
    pub message: String,
    pub request_id: String,
}

fn identifier_code(e: &IdentifierError) -> (StatusCode, &'static str) {
    let code = match e {
        IdentifierError::UnknownType(_) => "unknown_identifier_type",
        IdentifierError::TooLong => "identifier_too_long",
        IdentifierError::Invalid { .. } => "invalid_identifier",
    };
    (StatusCode::UNPROCESSABLE_ENTITY, code)
}

fn signal_code(e: &SignalError) -> (StatusCode, &'static str) {
    let code = match e {
        SignalError::InvalidChannel(_) => "invalid_channel",
        SignalError::UnknownChannel(_) => "unknown_channel",
        SignalError::InvalidSignalId => "invalid_signal_id",
        SignalError::NoIdentifiers => "no_identifiers",
        SignalError::TooManyIdentifiers(_) => "too_many_identifiers",
        SignalError::Identifier { source, .. } => return identifier_code(source),
        SignalError::NoUsableIdentifier => "no_usable_identifier",
        SignalError::IdentifierLimit { .. } => "identifier_limit_exceeded",
        SignalError::TooManyTraits(_) => "too_many_traits",
        SignalError::InvalidTraitName(_) => "invalid_trait_name",
        SignalError::TraitValueTooLarge(_) => "trait_value_too_large",
        SignalError::TooManyAnswers(_) => "too_many_answers",
        SignalError::InvalidAnswerKey(_) => "invalid_answer_key",
        SignalError::NullAnswer(_) => "invalid_answer_value",
        SignalError::AnswerValueTooLarge(_) => "answer_value_too_large",
        SignalError::TextTooLong(_) => "text_too_long",
        SignalError::InvalidEventType(_) => "invalid_event_type",
        SignalError::InvalidEpisodeId => "invalid_episode_id",
        SignalError::PropertiesTooLarge(_) => "properties_too_large",
        SignalError::ValueTooDeep(_) => "value_too_deep",
        SignalError::UnknownJourneyStage(_) => "unknown_journey_stage",
        SignalError::InvalidFeedback(_) => "invalid_feedback",
        SignalError::OccurredInFuture => "occurred_at_in_future",
        SignalError::TooOld(_) => "timestamp_out_of_range",
    };
    (StatusCode::UNPROCESSABLE_ENTITY, code)
}

fn service_code(e: &ServiceError) -> (StatusCode, &'static str) {
    match e {
        ServiceError::Signal(s) => signal_code(s),
        ServiceError::InvalidBatchItem { source, .. } => signal_code(source),
        ServiceError::Identifier(i) => identifier_code(i),
        ServiceError::ProfileNotFound(_) | ServiceError::IdentifierNotOwned => {
            (StatusCode::NOT_FOUND, "profile_not_found")
        }
        ServiceError::Moved { .. } => (StatusCode::PERMANENT_REDIRECT, "profile_merged"),
        ServiceError::SameProfile => (StatusCode::UNPROCESSABLE_ENTITY, "same_profile"),
        ServiceError::MergeRefused(_) => (StatusCode::CONFLICT, "merge_conflict"),
        ServiceError::SignalIdReused(_) => (StatusCode::CONFLICT, "signal_id_reused"),
        ServiceError::SignalOfErasedProfile(_) => (StatusCode::GONE, "profile_erased"),
        ServiceError::CapExceeded { .. } => (StatusCode::CONFLICT, "profile_cap_exceeded"),
        ServiceError::NothingToUnmerge(_) => (StatusCode::CONFLICT, "nothing_to_unmerge"),
        ServiceError::IdentifierNotOnProfile => (StatusCode::NOT_FOUND, "identifier_not_found"),
        ServiceError::SuggestionNotFound => (StatusCode::NOT_FOUND, "suggestion_not_found"),
        ServiceError::UnknownPurpose(_) => (StatusCode::NOT_FOUND, "unknown_purpose"),
        ServiceError::InvalidCursor => (StatusCode::BAD_REQUEST, "invalid_cursor"),
        ServiceError::Store(_) | ServiceError::NotDurable => {
            (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
        }
        ServiceError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        ServiceError::Withdrawn => (StatusCode::SERVICE_UNAVAILABLE, "store_busy"),
        ServiceError::KeyUsed(_) => (StatusCode::CONFLICT, "idempotency_key_in_flight"),
        ServiceError::CursorExpired { .. } => (StatusCode::GONE, "cursor_expired"),
        ServiceError::TooManyStreams => (StatusCode::SERVICE_UNAVAILABLE, "too_many_streams"),
        ServiceError::TooManyStreamsForSubject(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams_for_subject",
        ),
        ServiceError::BackupUnsupported => (StatusCode::CONFLICT, "backup_not_supported"),
        ServiceError::BackupInProgress => (StatusCode::CONFLICT, "backup_in_progress"),
    }
}

impl ApiError {
    /// The status and the stable code: the table.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::UnknownField(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_field"),
            ApiError::MissingField(_) => (StatusCode::UNPROCESSABLE_ENTITY, "missing_field"),
            ApiError::InvalidField(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            ApiError::DuplicateKey(_) => (StatusCode::UNPROCESSABLE_ENTITY, "duplicate_key"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            ApiError::InvalidCustomerId(_) => (StatusCode::BAD_REQUEST, "invalid_customer_id"),
            ApiError::RouteNotFound => (StatusCode::NOT_FOUND, "route_not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::MissingToken => (StatusCode::UNAUTHORIZED, "missing_token"),
            ApiError::InvalidToken(e) => (StatusCode::UNAUTHORIZED, e.code()),
            ApiError::RateLimited(_) | ApiError::SignalRateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
            }
            ApiError::InsufficientScope(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            ApiError::ChannelNotAllowed { .. } => (StatusCode::FORBIDDEN, "channel_not_allowed"),
            ApiError::ScopeNotAllowedForChannel { .. } => {
                (StatusCode::FORBIDDEN, "scope_not_allowed_for_channel")
            }
            ApiError::CustomerTokenNotAllowed => {
                (StatusCode::FORBIDDEN, "customer_token_not_allowed")
            }
            ApiError::CustomerTokenRequired => (StatusCode::FORBIDDEN, "customer_token_required"),
            ApiError::LookupBudgetExhausted(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "lookup_budget_exhausted")
            }
            ApiError::TooManySignals { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "too_many_signals")
            }
            ApiError::EmptyBatch => (StatusCode::UNPROCESSABLE_ENTITY, "empty_batch"),
            ApiError::InvalidIdempotencyKey => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
            ApiError::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ApiError::IdempotencyKeyInFlight => (StatusCode::CONFLICT, "idempotency_key_in_flight"),
            ApiError::IdempotentReplyErased => (StatusCode::GONE, "profile_erased"),
            ApiError::TooManyExports(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_exports_for_subject",
            ),
            ApiError::Service(e) => service_code(e),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// The message shown to the client: never an internal cause.
    fn public_message(&self) -> String {
        match self {
            ApiError::Service(ServiceError::Store(_))
                if current_request().is_some_and(|r| r.reads_only) =>
            {
                "the store could not be read just now; retry after Retry-After".into()
            }
            ApiError::Service(ServiceError::Store(_))
            | ApiError::Service(ServiceError::NotDurable) => {
                "the store could not confirm the write as durable; retry with the same signal_id (or re-read first)".into()
            }
            ApiError::Internal(_) => "an internal error occurred".into(),
            other => other.to_string(),
        }
    }

    /// The body as it is sent, with the current request id.
    pub fn body(&self) -> ErrorBody {
        let (_, code) = self.status_and_code();
        ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.public_message(),
                request_id: current_request().map(|r| r.request_id).unwrap_or_default(),
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut builder = HttpResponse::build(status);
        match self {
            ApiError::Service(ServiceError::Moved { from, to }) => {
                let location = current_request()
                    .map(|r| {
                        r.path_and_query
                            .replacen(&from.to_string(), &to.to_string(), 1)
                    })
                    .unwrap_or_else(|| format!("/v1/profiles/{to}"));
                builder.insert_header((header::LOCATION, location));
                builder.insert_header((CANONICAL_ID_HEADER, to.to_string()));
            }
            ApiError::MethodNotAllowed(allow) => {
                builder.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
            }
            ApiError::MissingToken | ApiError::InvalidToken(_) => {
                builder
                    .insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            ApiError::RateLimited(wait)
            | ApiError::LookupBudgetExhausted(wait)
            | ApiError::SignalRateLimited { wait, .. } => {
                builder.insert_header((header::RETRY_AFTER, retry_after_secs(*wait)));
            }
            ApiError::Service(
                ServiceError::Withdrawn | ServiceError::Store(_) | ServiceError::NotDurable,
            ) => {
                builder.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            ApiError::Service(ServiceError::TooManyStreams)
            | ApiError::Service(ServiceError::TooManyStreamsForSubject(_))
            | ApiError::TooManyExports(_) => {
                builder.insert_header((header::RETRY_AFTER, HeaderValue::from_static("5")));
            }
            _ => {}
        }
        builder.json(self.body())
    }
}
