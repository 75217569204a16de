//! The table against the errors that use it.

use std::collections::BTreeSet;
use std::time::Duration;

use actix_web::ResponseError;

use super::codes::{self, ErrorCode, Header, Message, TABLE};
use super::{ApiError, HttpRefusal};
use crate::auth::TokenError;
use crate::domain::{CustomerId, CustomerIdError, IdentifierError, SignalError};
use crate::service::ServiceError;
use crate::store::StoreError;

/// Text an internal cause carries in the samples; no client may hear it.
const SECRET: &str = "disk /var/lib/anamnesis/7 on fire";

fn identifier_errors() -> Vec<IdentifierError> {
    vec![
        IdentifierError::UnknownType("fax".into()),
        IdentifierError::TooLong,
        IdentifierError::Invalid {
            kind: "email".into(),
            reason: "no @".into(),
        },
    ]
}

fn signal_errors() -> Vec<SignalError> {
    let mut all = vec![
        SignalError::InvalidChannel("Web".into()),
        SignalError::UnknownChannel("fax".into()),
        SignalError::InvalidSignalId,
        SignalError::NoIdentifiers,
        SignalError::TooManyIdentifiers(51),
        SignalError::NoUsableIdentifier,
        SignalError::IdentifierLimit {
            kind: "email".into(),
            count: 9,
            limit: 8,
        },
        SignalError::TooManyTraits(101),
        SignalError::InvalidTraitName("A".into()),
        SignalError::TraitValueTooLarge("bio".into()),
        SignalError::TooManyAnswers(51),
        SignalError::InvalidAnswerKey(0),
        SignalError::NullAnswer(0),
        SignalError::AnswerValueTooLarge(0),
        SignalError::TextTooLong("text"),
        SignalError::InvalidEventType("A".into()),
        SignalError::InvalidEpisodeId,
        SignalError::PropertiesTooLarge(16),
        SignalError::ValueTooDeep("traits.x".into()),
        SignalError::UnknownJourneyStage("moon".into()),
        SignalError::InvalidFeedback("nps must be 0 to 10"),
        SignalError::OccurredInFuture,
        SignalError::TooOld("occurred_at"),
    ];
    all.extend(
        identifier_errors()
            .into_iter()
            .map(|source| SignalError::Identifier { index: 0, source }),
    );
    all
}

fn service_errors() -> Vec<ServiceError> {
    let id = CustomerId::generate;
    let mut all = vec![
        ServiceError::ProfileNotFound("profile"),
        ServiceError::InvalidBatchItem {
            index: 2,
            source: SignalError::NoIdentifiers,
        },
        ServiceError::IdentifierNotOwned,
        ServiceError::Moved {
            from: id(),
            to: id(),
        },
        ServiceError::SameProfile,
        ServiceError::MergeRefused("a claim never merges profiles"),
        ServiceError::SignalIdReused("s-1".into()),
        ServiceError::SignalOfErasedProfile("s-1".into()),
        ServiceError::CapExceeded {
            what: "traits",
            cap: 100,
        },
        ServiceError::NothingToUnmerge(id()),
        ServiceError::UnknownPurpose("fax".into()),
        ServiceError::SuggestionNotFound,
        ServiceError::IdentifierNotOnProfile,
        ServiceError::InvalidCursor,
        ServiceError::Store(StoreError::Engine(SECRET.into())),
        ServiceError::Store(StoreError::Corrupt {
            key: SECRET.into(),
            reason: SECRET.into(),
        }),
        ServiceError::NotDurable,
        ServiceError::ShuttingDown,
        ServiceError::Withdrawn,
        ServiceError::KeyUsed(Vec::new()),
        ServiceError::CursorExpired { oldest: 7 },
        ServiceError::TooManyStreams,
        ServiceError::TooManyStreamsForSubject(4),
        ServiceError::BackupUnsupported,
        ServiceError::BackupInProgress,
    ];
    all.extend(signal_errors().into_iter().map(ServiceError::Signal));
    all.extend(
        identifier_errors()
            .into_iter()
            .map(ServiceError::Identifier),
    );
    all
}

fn token_errors() -> Vec<TokenError> {
    vec![
        TokenError::NotBearer,
        TokenError::Malformed,
        TokenError::InQuery,
        TokenError::AlgorithmNotAllowed,
        TokenError::UnknownKey,
        TokenError::NoKeyId,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongAudience,
        TokenError::WrongIssuer,
        TokenError::MissingClaim("exp"),
        TokenError::BadClaim("sub"),
        TokenError::BadClaims,
        TokenError::CriticalHeader,
        TokenError::LifetimeTooLong(Duration::from_secs(86_400)),
    ]
}

/// One of every kind of error the service answers (add a new variant here).
fn api_errors() -> Vec<ApiError> {
    let wait = Duration::from_millis(1500);
    let mut all = vec![
        ApiError::MalformedJson("expected value at line 1".into()),
        ApiError::UnknownField("unknown field `x`".into()),
        ApiError::MissingField("missing field `channel`".into()),
        ApiError::InvalidField("channel: invalid type".into()),
        ApiError::DuplicateKey("traits: duplicate key `a`".into()),
        ApiError::UnsupportedMediaType,
        ApiError::PayloadTooLarge(65_536),
        ApiError::BodyTimeout(Duration::from_millis(5000)),
        ApiError::InvalidQuery("query string: unknown field `x`".into()),
        ApiError::InvalidCustomerId(CustomerIdError("cus_x".into())),
        ApiError::RouteNotFound,
        ApiError::MethodNotAllowed("GET, POST"),
        ApiError::MissingToken,
        ApiError::RateLimited(wait),
        ApiError::SignalRateLimited { wait },
        ApiError::TooManyExports(2),
        ApiError::InvalidIdempotencyKey,
        ApiError::IdempotencyKeyReused,
        ApiError::IdempotencyKeyInFlight,
        ApiError::IdempotentReplyErased,
        ApiError::InsufficientScope("profiles:read"),
        ApiError::ChannelNotAllowed {
            bound: "web".into(),
            requested: "store".into(),
        },
        ApiError::ScopeNotAllowedForChannel {
            channel: "web".into(),
            scope: "profiles:merge",
        },
        ApiError::CustomerTokenNotAllowed,
        ApiError::CustomerTokenRequired,
        ApiError::LookupBudgetExhausted(wait),
        ApiError::TooManySignals { count: 9, max: 8 },
        ApiError::EmptyBatch,
        ApiError::Internal(SECRET),
    ];
    all.extend(token_errors().into_iter().map(ApiError::InvalidToken));
    all.extend(service_errors().into_iter().map(ApiError::Service));
    all
}

fn refusals() -> Vec<HttpRefusal> {
    [400, 408, 413, 431, 414, 500, 503]
        .into_iter()
        .map(HttpRefusal::for_status)
        .collect()
}

/// Every entry an error of the service maps to.
fn used_entries() -> Vec<&'static ErrorCode> {
    let mut used: Vec<&'static ErrorCode> = api_errors().iter().map(ApiError::entry).collect();
    used.extend(refusals().into_iter().map(HttpRefusal::entry));
    used
}

#[test]
fn every_code_used_is_in_the_table_once() {
    let mut seen = BTreeSet::new();
    for entry in TABLE {
        assert!(
            seen.insert(entry.code),
            "`{}` twice in the table",
            entry.code
        );
        let snake = entry
            .code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        assert!(snake, "`{}` is not snake_case", entry.code);
    }
    for used in used_entries() {
        let found = TABLE.iter().filter(|e| std::ptr::eq(**e, used)).count();
        assert_eq!(found, 1, "`{}` is used but not in the table", used.code);
    }
}

#[test]
fn every_entry_in_the_table_is_reachable() {
    let used = used_entries();
    for entry in TABLE {
        assert!(
            used.iter().any(|u| std::ptr::eq(*u, *entry)),
            "no error answers `{}`: drop it from the table, or add its error to the samples",
            entry.code
        );
    }
}

#[test]
fn a_new_entry_shows_no_message_of_its_own() {
    let entry = ErrorCode::new(actix_web::http::StatusCode::CONFLICT, "some_new_code");
    assert_eq!(entry.message, Message::Fixed(codes::UNSHOWN));
    assert_eq!(entry.public_message(&SECRET, false), codes::UNSHOWN);
    let shown = entry.shows_own_message();
    assert_eq!(shown.public_message(&"it says", false), "it says");
}

#[test]
fn a_message_reaches_the_client_only_where_the_table_allows() {
    for error in api_errors() {
        let entry = error.entry();
        let message = error.body().error.message;
        match entry.message {
            Message::Own => assert_eq!(message, error.to_string(), "{error:?}"),
            Message::Fixed(text) => assert_eq!(message, text, "{error:?}"),
            Message::ReadOrWrite { read, write } => {
                // Outside a request nothing counts as reading.
                assert_eq!(message, write, "{error:?}");
                assert_ne!(message, read);
            }
        }
        if !matches!(entry.message, Message::Own) {
            assert!(!message.contains(SECRET), "{error:?} leaks: {message}");
        }
    }
    for refusal in refusals() {
        let body = refusal.body("r1".into()).error;
        assert_eq!(body.code, refusal.entry().code);
        assert!(!body.message.contains("answered"), "{refusal:?}: {body:?}");
    }
}

/// The HTTP layer's refusals keep the status it wrote: where they name one
/// code for one status, the table agrees.
#[test]
fn refusals_answer_with_the_status_of_their_entry() {
    for status in [400, 408, 413, 431, 500] {
        let entry = HttpRefusal::for_status(status).entry();
        assert_eq!(entry.status.as_u16(), status, "{}", entry.code);
    }
}

#[test]
fn every_answer_carries_the_headers_its_entry_names() {
    let named: BTreeSet<&str> = TABLE
        .iter()
        .flat_map(|e| e.headers.iter().map(|h| h.name()))
        .collect();
    for error in api_errors() {
        let entry = error.entry();
        let response = error.error_response();
        assert_eq!(response.status(), entry.status, "{error:?}");
        for header in entry.headers {
            let value = response.headers().get(header.name());
            assert!(value.is_some(), "{error:?} lacks {}", header.name());
            if let Header::RetryAfter(codes::Wait::Secs(secs)) = header {
                assert_eq!(value.unwrap().to_str().unwrap(), secs.to_string());
            }
        }
        for name in &named {
            let listed = entry.headers.iter().any(|h| h.name() == *name);
            assert_eq!(
                response.headers().contains_key(*name),
                listed,
                "{error:?}: {name}"
            );
        }
    }
    let waited = ApiError::RateLimited(Duration::from_millis(1500)).error_response();
    assert_eq!(waited.headers().get("retry-after").unwrap(), "2");
}
