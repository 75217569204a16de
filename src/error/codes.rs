//! The table of error codes: for each stable code, the status it answers
//! with, the headers that answer carries, and what its message may say.
//!
//! Every layer reads it: [`ApiError`](super::ApiError) and
//! [`TokenError`](crate::auth::TokenError) map each variant to an entry here
//! (with exhaustive matches, so a new variant does not compile until it has
//! one), the HTTP layer's own refusals ([`HttpRefusal`](super::HttpRefusal))
//! do the same, and the OpenAPI document takes its per-status headers and
//! code lists from it. A test holds the table in `docs/errors.md` to it.
//!
//! An entry shows its error's own text to the client only when it says so
//! ([`ErrorCode::shows_own_message`]); a new entry answers with a fixed text
//! and leaves its error's text (which may name an internal cause) to the log.

use actix_web::http::StatusCode;

/// One stable code and how its answer looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub status: StatusCode,
    /// Stable, snake_case: what clients match on.
    pub code: &'static str,
    /// Headers every answer with this code carries (besides `x-request-id`).
    pub headers: &'static [Header],
    pub message: Message,
}

/// What the `message` of an answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// The error's own text: it names only what the client sent, or limits
    /// and settings the client may know.
    Own,
    /// This text; the error's own goes to the log.
    Fixed(&'static str),
    /// Fixed texts that depend on what failed: a read can simply be retried,
    /// while a write may need its client to check what happened.
    ReadOrWrite {
        read: &'static str,
        write: &'static str,
    },
}

/// A header an error answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// `Retry-After`, in whole seconds.
    RetryAfter(Wait),
    /// `Location`: the same request on the profile an id was merged into.
    Location,
    /// `canonical-customer-id`: the id that profile lives under.
    CanonicalCustomerId,
    /// `Allow`: the methods a path supports.
    Allow,
    /// `WWW-Authenticate: Bearer`.
    WwwAuthenticate,
}

/// How long a `Retry-After` asks a client to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Always this many seconds.
    Secs(u64),
    /// As long as the error says (a rate limit knows when it refills).
    AsTold,
}

impl Header {
    /// The header's name, lower-case as HTTP/2 and the OpenAPI document spell it.
    pub fn name(self) -> &'static str {
        match self {
            Header::RetryAfter(_) => "retry-after",
            Header::Location => "location",
            Header::CanonicalCustomerId => crate::middleware::CANONICAL_ID_HEADER,
            Header::Allow => "allow",
            Header::WwwAuthenticate => "www-authenticate",
        }
    }
}

/// What a client hears from an entry that does not show its error's text,
/// unless the entry names a better one.
pub const UNSHOWN: &str =
    "the request could not be served; the request_id names it in the service's log";

impl ErrorCode {
    /// An entry that shows no error's own text (see [`UNSHOWN`]) and carries
    /// no headers.
    pub const fn new(status: StatusCode, code: &'static str) -> ErrorCode {
        ErrorCode {
            status,
            code,
            headers: &[],
            message: Message::Fixed(UNSHOWN),
        }
    }

    /// The client hears the error's own text: every error with this code
    /// must keep internal causes out of it.
    pub const fn shows_own_message(self) -> ErrorCode {
        ErrorCode {
            message: Message::Own,
            ..self
        }
    }

    /// The client hears this text, whatever the error.
    pub const fn says(self, text: &'static str) -> ErrorCode {
        ErrorCode {
            message: Message::Fixed(text),
            ..self
        }
    }

    /// The client hears one of two texts, as what failed was a read or a write.
    pub const fn says_for(self, read: &'static str, write: &'static str) -> ErrorCode {
        ErrorCode {
            message: Message::ReadOrWrite { read, write },
            ..self
        }
    }

    pub const fn with(self, headers: &'static [Header]) -> ErrorCode {
        ErrorCode { headers, ..self }
    }

    /// The message a client hears for an error with this code: its own
    /// text only where the entry allows it. `reading`: what failed was a read.
    pub fn public_message(&self, own: &dyn std::fmt::Display, reading: bool) -> String {
        match self.message {
            Message::Own => own.to_string(),
            Message::Fixed(text) => text.to_owned(),
            Message::ReadOrWrite { read, write } => if reading { read } else { write }.to_owned(),
        }
    }

    /// The `status code` pair the documentation cites, like `422 idempotency_key_reused`.
    pub fn cited(&self) -> String {
        format!("{} {}", self.status.as_str(), self.code)
    }
}

/// Declares each entry as a `static` and lists every one in [`TABLE`], so an
/// entry cannot exist outside the table.
macro_rules! table {
    ($($name:ident = $entry:expr;)*) => {
        $(pub static $name: ErrorCode = $entry;)*

        /// Every entry once, by status, in the order the documentation lists
        /// each status's codes.
        pub static TABLE: &[&ErrorCode] = &[$(&$name),*];
    };
}

const RETRY_AS_TOLD: &[Header] = &[Header::RetryAfter(Wait::AsTold)];
const RETRY_1: &[Header] = &[Header::RetryAfter(Wait::Secs(1))];
const RETRY_5: &[Header] = &[Header::RetryAfter(Wait::Secs(5))];
const BEARER: &[Header] = &[Header::WwwAuthenticate];

use StatusCode as S;

table! {
    PROFILE_MERGED = ErrorCode::new(S::PERMANENT_REDIRECT, "profile_merged")
        .with(&[Header::Location, Header::CanonicalCustomerId])
        .shows_own_message();

    MALFORMED_JSON = ErrorCode::new(S::BAD_REQUEST, "malformed_json").shows_own_message();
    INVALID_QUERY = ErrorCode::new(S::BAD_REQUEST, "invalid_query").shows_own_message();
    INVALID_CUSTOMER_ID = ErrorCode::new(S::BAD_REQUEST, "invalid_customer_id").shows_own_message();
    INVALID_CURSOR = ErrorCode::new(S::BAD_REQUEST, "invalid_cursor").shows_own_message();
    INVALID_IDEMPOTENCY_KEY = ErrorCode::new(S::BAD_REQUEST, "invalid_idempotency_key")
        .shows_own_message();
    MALFORMED_REQUEST = ErrorCode::new(S::BAD_REQUEST, "malformed_request").shows_own_message();

    MISSING_TOKEN = ErrorCode::new(S::UNAUTHORIZED, "missing_token").with(BEARER).shows_own_message();
    INVALID_TOKEN = ErrorCode::new(S::UNAUTHORIZED, "invalid_token").with(BEARER).shows_own_message();
    TOKEN_IN_QUERY = ErrorCode::new(S::UNAUTHORIZED, "token_in_query").with(BEARER).shows_own_message();
    TOKEN_ALGORITHM_NOT_ALLOWED = ErrorCode::new(S::UNAUTHORIZED, "token_algorithm_not_allowed")
        .with(BEARER)
        .shows_own_message();
    UNKNOWN_KEY_ID = ErrorCode::new(S::UNAUTHORIZED, "unknown_key_id").with(BEARER).shows_own_message();
    TOKEN_SIGNATURE_INVALID = ErrorCode::new(S::UNAUTHORIZED, "token_signature_invalid")
        .with(BEARER)
        .shows_own_message();
    TOKEN_EXPIRED = ErrorCode::new(S::UNAUTHORIZED, "token_expired").with(BEARER).shows_own_message();
    TOKEN_NOT_YET_VALID = ErrorCode::new(S::UNAUTHORIZED, "token_not_yet_valid")
        .with(BEARER)
        .shows_own_message();
    TOKEN_AUDIENCE_MISMATCH = ErrorCode::new(S::UNAUTHORIZED, "token_audience_mismatch")
        .with(BEARER)
        .shows_own_message();
    TOKEN_ISSUER_MISMATCH = ErrorCode::new(S::UNAUTHORIZED, "token_issuer_mismatch")
        .with(BEARER)
        .shows_own_message();
    TOKEN_CLAIM_MISSING = ErrorCode::new(S::UNAUTHORIZED, "token_claim_missing")
        .with(BEARER)
        .shows_own_message();
    TOKEN_CLAIMS_INVALID = ErrorCode::new(S::UNAUTHORIZED, "token_claims_invalid")
        .with(BEARER)
        .shows_own_message();
    TOKEN_LIFETIME_TOO_LONG = ErrorCode::new(S::UNAUTHORIZED, "token_lifetime_too_long")
        .with(BEARER)
        .shows_own_message();
    TOKEN_CRITICAL_HEADER = ErrorCode::new(S::UNAUTHORIZED, "token_critical_header")
        .with(BEARER)
        .shows_own_message();

    INSUFFICIENT_SCOPE = ErrorCode::new(S::FORBIDDEN, "insufficient_scope").shows_own_message();
    CHANNEL_NOT_ALLOWED = ErrorCode::new(S::FORBIDDEN, "channel_not_allowed").shows_own_message();
    SCOPE_NOT_ALLOWED_FOR_CHANNEL = ErrorCode::new(S::FORBIDDEN, "scope_not_allowed_for_channel")
        .shows_own_message();
    CUSTOMER_TOKEN_NOT_ALLOWED = ErrorCode::new(S::FORBIDDEN, "customer_token_not_allowed")
        .shows_own_message();
    CUSTOMER_TOKEN_REQUIRED = ErrorCode::new(S::FORBIDDEN, "customer_token_required")
        .shows_own_message();

    PROFILE_NOT_FOUND = ErrorCode::new(S::NOT_FOUND, "profile_not_found").shows_own_message();
    ROUTE_NOT_FOUND = ErrorCode::new(S::NOT_FOUND, "route_not_found").shows_own_message();
    IDENTIFIER_NOT_FOUND = ErrorCode::new(S::NOT_FOUND, "identifier_not_found").shows_own_message();
    SUGGESTION_NOT_FOUND = ErrorCode::new(S::NOT_FOUND, "suggestion_not_found").shows_own_message();
    UNKNOWN_PURPOSE = ErrorCode::new(S::NOT_FOUND, "unknown_purpose").shows_own_message();

    METHOD_NOT_ALLOWED = ErrorCode::new(S::METHOD_NOT_ALLOWED, "method_not_allowed")
        .with(&[Header::Allow])
        .shows_own_message();

    REQUEST_TIMEOUT = ErrorCode::new(S::REQUEST_TIMEOUT, "request_timeout").shows_own_message();

    MERGE_CONFLICT = ErrorCode::new(S::CONFLICT, "merge_conflict").shows_own_message();
    SIGNAL_ID_REUSED = ErrorCode::new(S::CONFLICT, "signal_id_reused").shows_own_message();
    NOTHING_TO_UNMERGE = ErrorCode::new(S::CONFLICT, "nothing_to_unmerge").shows_own_message();
    PROFILE_CAP_EXCEEDED = ErrorCode::new(S::CONFLICT, "profile_cap_exceeded").shows_own_message();
    IDEMPOTENCY_KEY_IN_FLIGHT = ErrorCode::new(S::CONFLICT, "idempotency_key_in_flight")
        .shows_own_message();
    BACKUP_IN_PROGRESS = ErrorCode::new(S::CONFLICT, "backup_in_progress").shows_own_message();
    BACKUP_NOT_SUPPORTED = ErrorCode::new(S::CONFLICT, "backup_not_supported").shows_own_message();

    PROFILE_ERASED = ErrorCode::new(S::GONE, "profile_erased").shows_own_message();
    CURSOR_EXPIRED = ErrorCode::new(S::GONE, "cursor_expired").shows_own_message();

    PAYLOAD_TOO_LARGE = ErrorCode::new(S::PAYLOAD_TOO_LARGE, "payload_too_large").shows_own_message();

    UNSUPPORTED_MEDIA_TYPE = ErrorCode::new(S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        .shows_own_message();

    UNKNOWN_FIELD = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "unknown_field").shows_own_message();
    MISSING_FIELD = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "missing_field").shows_own_message();
    INVALID_FIELD = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "invalid_field").shows_own_message();
    INVALID_CHANNEL = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "invalid_channel").shows_own_message();
    UNKNOWN_CHANNEL = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "unknown_channel").shows_own_message();
    INVALID_SIGNAL_ID = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "invalid_signal_id")
        .shows_own_message();
    NO_IDENTIFIERS = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "no_identifiers").shows_own_message();
    TOO_MANY_IDENTIFIERS = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "too_many_identifiers")
        .shows_own_message();
    UNKNOWN_IDENTIFIER_TYPE = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "unknown_identifier_type")
        .shows_own_message();
    IDENTIFIER_TOO_LONG = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "identifier_too_long")
        .shows_own_message();
    INVALID_IDENTIFIER = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "invalid_identifier")
        .shows_own_message();
    NO_USABLE_IDENTIFIER = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "no_usable_identifier")
        .shows_own_message();
    IDENTIFIER_LIMIT_EXCEEDED = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "identifier_limit_exceeded")
        .shows_own_message();
    TOO_MANY_TRAITS = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "too_many_traits").shows_own_message();
    INVALID_TRAIT_NAME = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "invalid_trait_name")
        .shows_own_message();
    TRAIT_VALUE_TOO_LARGE = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "trait_value_too_large")
        .shows_own_message();
    TOO_MANY_ANSWERS = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "too_many_answers")
        .shows_own_message();
    INVALID_ANSWER_KEY = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "invalid_answer_key")
        .shows_own_message();
    INVALID_ANSWER_VALUE = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "invalid_answer_value")
        .shows_own_message();
    ANSWER_VALUE_TOO_LARGE = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "answer_value_too_large")
        .shows_own_message();
    TEXT_TOO_LONG = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "text_too_long").shows_own_message();
    INVALID_EVENT_TYPE = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "invalid_event_type")
        .shows_own_message();
    INVALID_EPISODE_ID = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "invalid_episode_id")
        .shows_own_message();
    PROPERTIES_TOO_LARGE = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "properties_too_large")
        .shows_own_message();
    VALUE_TOO_DEEP = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "value_too_deep").shows_own_message();
    UNKNOWN_JOURNEY_STAGE = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "unknown_journey_stage")
        .shows_own_message();
    INVALID_FEEDBACK = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "invalid_feedback")
        .shows_own_message();
    OCCURRED_AT_IN_FUTURE = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "occurred_at_in_future")
        .shows_own_message();
    TIMESTAMP_OUT_OF_RANGE = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "timestamp_out_of_range")
        .shows_own_message();
    TOO_MANY_SIGNALS = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "too_many_signals")
        .shows_own_message();
    EMPTY_BATCH = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "empty_batch").shows_own_message();
    SAME_PROFILE = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "same_profile").shows_own_message();
    DUPLICATE_KEY = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "duplicate_key").shows_own_message();
    IDEMPOTENCY_KEY_REUSED = ErrorCode::new(S::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
        .shows_own_message();

    RATE_LIMITED = ErrorCode::new(S::TOO_MANY_REQUESTS, "rate_limited")
        .with(RETRY_AS_TOLD)
        .shows_own_message();
    LOOKUP_BUDGET_EXHAUSTED = ErrorCode::new(S::TOO_MANY_REQUESTS, "lookup_budget_exhausted")
        .with(RETRY_AS_TOLD)
        .shows_own_message();
    TOO_MANY_STREAMS_FOR_SUBJECT =
        ErrorCode::new(S::TOO_MANY_REQUESTS, "too_many_streams_for_subject")
            .with(RETRY_5)
            .shows_own_message();
    TOO_MANY_EXPORTS_FOR_SUBJECT =
        ErrorCode::new(S::TOO_MANY_REQUESTS, "too_many_exports_for_subject")
            .with(RETRY_5)
            .shows_own_message();

    HEADERS_TOO_LARGE = ErrorCode::new(S::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large")
        .shows_own_message();

    INTERNAL_ERROR = ErrorCode::new(S::INTERNAL_SERVER_ERROR, "internal_error")
        .says("an internal error occurred");

    STORE_UNAVAILABLE = ErrorCode::new(S::SERVICE_UNAVAILABLE, "store_unavailable")
        .with(RETRY_1)
        .says_for(
            "the store could not be read just now; retry after Retry-After",
            "the store could not confirm the write as durable; retry with the same signal_id (or re-read first)",
        );
    STORE_BUSY = ErrorCode::new(S::SERVICE_UNAVAILABLE, "store_busy")
        .with(RETRY_1)
        .shows_own_message();
    SHUTTING_DOWN = ErrorCode::new(S::SERVICE_UNAVAILABLE, "shutting_down").shows_own_message();
    TOO_MANY_STREAMS = ErrorCode::new(S::SERVICE_UNAVAILABLE, "too_many_streams")
        .with(RETRY_5)
        .shows_own_message();
}

/// The entries answering with this status, in table order.
pub fn with_status(status: StatusCode) -> impl Iterator<Item = &'static ErrorCode> {
    TABLE.iter().copied().filter(move |e| e.status == status)
}
