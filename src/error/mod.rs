//! Every failure in every layer becomes an [`ApiError`] (or, before the
//! service sees a request, an [`HttpRefusal`]), and each maps to an entry of
//! the one error-code table, [`codes`]: a stable code (clients match on it),
//! the status the contract implies, the headers the answer carries, and
//! whether the error's own text may be shown. The body is always
//! `{"error": {"code", "message", "request_id"}}`.
//!
//! Internal causes (store failures) go to the log, never to the client.

pub mod codes;
mod refusal;

use actix_web::http::header::HeaderValue;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::TokenError;
use crate::domain::{CustomerId, CustomerIdError, IdentifierError, SignalError};
use crate::middleware::current_request;
use crate::service::ServiceError;

pub use codes::{ErrorCode, Header, Message, Wait};
pub use refusal::HttpRefusal;

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

fn identifier_code(e: &IdentifierError) -> &'static ErrorCode {
    match e {
        IdentifierError::UnknownType(_) => &codes::UNKNOWN_IDENTIFIER_TYPE,
        IdentifierError::TooLong => &codes::IDENTIFIER_TOO_LONG,
        IdentifierError::Invalid { .. } => &codes::INVALID_IDENTIFIER,
    }
}

fn signal_code(e: &SignalError) -> &'static ErrorCode {
    match e {
        SignalError::InvalidChannel(_) => &codes::INVALID_CHANNEL,
        SignalError::UnknownChannel(_) => &codes::UNKNOWN_CHANNEL,
        SignalError::InvalidSignalId => &codes::INVALID_SIGNAL_ID,
        SignalError::NoIdentifiers => &codes::NO_IDENTIFIERS,
        SignalError::TooManyIdentifiers(_) => &codes::TOO_MANY_IDENTIFIERS,
        SignalError::Identifier { source, .. } => identifier_code(source),
        SignalError::NoUsableIdentifier => &codes::NO_USABLE_IDENTIFIER,
        SignalError::IdentifierLimit { .. } => &codes::IDENTIFIER_LIMIT_EXCEEDED,
        SignalError::TooManyTraits(_) => &codes::TOO_MANY_TRAITS,
        SignalError::InvalidTraitName(_) => &codes::INVALID_TRAIT_NAME,
        SignalError::TraitValueTooLarge(_) => &codes::TRAIT_VALUE_TOO_LARGE,
        SignalError::TooManyAnswers(_) => &codes::TOO_MANY_ANSWERS,
        SignalError::InvalidAnswerKey(_) => &codes::INVALID_ANSWER_KEY,
        SignalError::NullAnswer(_) => &codes::INVALID_ANSWER_VALUE,
        SignalError::AnswerValueTooLarge(_) => &codes::ANSWER_VALUE_TOO_LARGE,
        SignalError::TextTooLong(_) => &codes::TEXT_TOO_LONG,
        SignalError::InvalidEventType(_) => &codes::INVALID_EVENT_TYPE,
        SignalError::InvalidEpisodeId => &codes::INVALID_EPISODE_ID,
        SignalError::PropertiesTooLarge(_) => &codes::PROPERTIES_TOO_LARGE,
        SignalError::ValueTooDeep(_) => &codes::VALUE_TOO_DEEP,
        SignalError::UnknownJourneyStage(_) => &codes::UNKNOWN_JOURNEY_STAGE,
        SignalError::InvalidFeedback(_) => &codes::INVALID_FEEDBACK,
        SignalError::OccurredInFuture => &codes::OCCURRED_AT_IN_FUTURE,
        SignalError::TooOld(_) => &codes::TIMESTAMP_OUT_OF_RANGE,
    }
}

fn service_code(e: &ServiceError) -> &'static ErrorCode {
    match e {
        ServiceError::Signal(s) => signal_code(s),
        ServiceError::InvalidBatchItem { source, .. } => signal_code(source),
        ServiceError::Identifier(i) => identifier_code(i),
        ServiceError::ProfileNotFound(_) | ServiceError::IdentifierNotOwned => {
            &codes::PROFILE_NOT_FOUND
        }
        ServiceError::Moved { .. } => &codes::PROFILE_MERGED,
        ServiceError::SameProfile => &codes::SAME_PROFILE,
        ServiceError::MergeRefused(_) => &codes::MERGE_CONFLICT,
        ServiceError::SignalIdReused(_) => &codes::SIGNAL_ID_REUSED,
        ServiceError::SignalOfErasedProfile(_) => &codes::PROFILE_ERASED,
        ServiceError::CapExceeded { .. } => &codes::PROFILE_CAP_EXCEEDED,
        ServiceError::NothingToUnmerge(_) => &codes::NOTHING_TO_UNMERGE,
        ServiceError::IdentifierNotOnProfile => &codes::IDENTIFIER_NOT_FOUND,
        ServiceError::SuggestionNotFound => &codes::SUGGESTION_NOT_FOUND,
        ServiceError::UnknownPurpose(_) => &codes::UNKNOWN_PURPOSE,
        ServiceError::InvalidCursor => &codes::INVALID_CURSOR,
        ServiceError::Store(_) | ServiceError::NotDurable => &codes::STORE_UNAVAILABLE,
        ServiceError::ShuttingDown => &codes::SHUTTING_DOWN,
        ServiceError::Withdrawn => &codes::STORE_BUSY,
        ServiceError::KeyUsed(_) => &codes::IDEMPOTENCY_KEY_IN_FLIGHT,
        ServiceError::CursorExpired { .. } => &codes::CURSOR_EXPIRED,
        ServiceError::TooManyStreams => &codes::TOO_MANY_STREAMS,
        ServiceError::TooManyStreamsForSubject(_) => &codes::TOO_MANY_STREAMS_FOR_SUBJECT,
        ServiceError::BackupUnsupported => &codes::BACKUP_NOT_SUPPORTED,
        ServiceError::BackupInProgress => &codes::BACKUP_IN_PROGRESS,
    }
}

impl ApiError {
    /// Its entry in the table.
    pub fn entry(&self) -> &'static ErrorCode {
        match self {
            ApiError::MalformedJson(_) => &codes::MALFORMED_JSON,
            ApiError::UnknownField(_) => &codes::UNKNOWN_FIELD,
            ApiError::MissingField(_) => &codes::MISSING_FIELD,
            ApiError::InvalidField(_) => &codes::INVALID_FIELD,
            ApiError::DuplicateKey(_) => &codes::DUPLICATE_KEY,
            ApiError::UnsupportedMediaType => &codes::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => &codes::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => &codes::REQUEST_TIMEOUT,
            ApiError::InvalidQuery(_) => &codes::INVALID_QUERY,
            ApiError::InvalidCustomerId(_) => &codes::INVALID_CUSTOMER_ID,
            ApiError::RouteNotFound => &codes::ROUTE_NOT_FOUND,
            ApiError::MethodNotAllowed(_) => &codes::METHOD_NOT_ALLOWED,
            ApiError::MissingToken => &codes::MISSING_TOKEN,
            ApiError::InvalidToken(e) => e.entry(),
            ApiError::RateLimited(_) | ApiError::SignalRateLimited { .. } => &codes::RATE_LIMITED,
            ApiError::InsufficientScope(_) => &codes::INSUFFICIENT_SCOPE,
            ApiError::ChannelNotAllowed { .. } => &codes::CHANNEL_NOT_ALLOWED,
            ApiError::ScopeNotAllowedForChannel { .. } => &codes::SCOPE_NOT_ALLOWED_FOR_CHANNEL,
            ApiError::CustomerTokenNotAllowed => &codes::CUSTOMER_TOKEN_NOT_ALLOWED,
            ApiError::CustomerTokenRequired => &codes::CUSTOMER_TOKEN_REQUIRED,
            ApiError::LookupBudgetExhausted(_) => &codes::LOOKUP_BUDGET_EXHAUSTED,
            ApiError::TooManySignals { .. } => &codes::TOO_MANY_SIGNALS,
            ApiError::EmptyBatch => &codes::EMPTY_BATCH,
            ApiError::InvalidIdempotencyKey => &codes::INVALID_IDEMPOTENCY_KEY,
            ApiError::IdempotencyKeyReused => &codes::IDEMPOTENCY_KEY_REUSED,
            ApiError::IdempotencyKeyInFlight => &codes::IDEMPOTENCY_KEY_IN_FLIGHT,
            ApiError::IdempotentReplyErased => &codes::PROFILE_ERASED,
            ApiError::TooManyExports(_) => &codes::TOO_MANY_EXPORTS_FOR_SUBJECT,
            ApiError::Service(e) => service_code(e),
            ApiError::Internal(_) => &codes::INTERNAL_ERROR,
        }
    }

    /// The status and the stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        let entry = self.entry();
        (entry.status, entry.code)
    }

    /// Whether what failed was a read: the request only reads (GET, HEAD),
    /// and the failure is not a write the service made on its way (a backup
    /// flushes the writes before it, and that flush can fail).
    fn failed_reading(&self) -> bool {
        let flushing = matches!(self, ApiError::Service(ServiceError::NotDurable));
        !flushing && current_request().is_some_and(|r| r.reads_only)
    }

    /// The message shown to the client: the error's own text only where
    /// the table allows it, so never an internal cause.
    fn public_message(&self) -> String {
        self.entry().public_message(self, self.failed_reading())
    }

    /// The body as it is sent, with the current request id.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.entry().code.to_owned(),
                message: self.public_message(),
                request_id: current_request().map(|r| r.request_id).unwrap_or_default(),
            },
        }
    }

    /// How long a rate limit asks the client to wait, where it says.
    fn wait(&self) -> Option<std::time::Duration> {
        if let ApiError::RateLimited(wait)
        | ApiError::LookupBudgetExhausted(wait)
        | ApiError::SignalRateLimited { wait } = self
        {
            Some(*wait)
        } else {
            None
        }
    }

    /// The profile a merged id now lives under, where that is the error.
    fn moved(&self) -> Option<(&CustomerId, &CustomerId)> {
        let ApiError::Service(ServiceError::Moved { from, to }) = self else {
            return None;
        };
        Some((from, to))
    }

    /// The methods a path supports, where the method was not one.
    fn allowed(&self) -> Option<&'static str> {
        let ApiError::MethodNotAllowed(allow) = self else {
            return None;
        };
        Some(allow)
    }

    /// The value of a header the table says this error's answer carries.
    fn header_value(&self, header: Header) -> Option<HeaderValue> {
        match header {
            Header::RetryAfter(Wait::Secs(secs)) => Some(secs.into()),
            Header::RetryAfter(Wait::AsTold) => self.wait().map(|w| retry_after_secs(w).into()),
            Header::Location => self.moved().and_then(|(from, to)| {
                let location = current_request()
                    .map(|r| {
                        r.path_and_query
                            .replacen(&from.to_string(), &to.to_string(), 1)
                    })
                    .unwrap_or_else(|| format!("/v1/profiles/{to}"));
                HeaderValue::try_from(location).ok()
            }),
            Header::CanonicalCustomerId => self
                .moved()
                .and_then(|(_, to)| HeaderValue::try_from(to.to_string()).ok()),
            Header::Allow => self.allowed().map(HeaderValue::from_static),
            Header::WwwAuthenticate => Some(HeaderValue::from_static("Bearer")),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.entry().status
    }

    fn error_response(&self) -> HttpResponse {
        let entry = self.entry();
        if entry.status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else if entry.message != Message::Own {
            // The client hears a fixed text; the cause is kept here.
            tracing::warn!(error = %self, code = entry.code, "request refused");
        }
        let mut builder = HttpResponse::build(entry.status);
        for &header in entry.headers {
            match self.header_value(header) {
                Some(value) => {
                    builder.insert_header((header.name(), value));
                }
                None => tracing::warn!(
                    code = entry.code,
                    header = header.name(),
                    "the table names a header this error has no value for"
                ),
            }
        }
        builder.json(self.body())
    }
}

#[cfg(test)]
mod tests;
