//! The table against the errors that use it, and against its documentation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use actix_web::ResponseError;

use super::codes::{self, ErrorCode, Header, Message, TABLE};
use super::{ApiError, HttpRefusal};
use crate::auth::TokenError;
use crate::domain::{CustomerId, CustomerIdError, IdentifierError, SignalError};
use crate::service::ServiceError;
use crate::store::StoreError;

/// The file whose error table people read; the table is found in it by its
/// header row (`| status | codes |`), wherever it stands.
const DOCUMENTED_IN: &str = "docs/errors.md";

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

/// The error table of the documentation: each status with the codes its row
/// names. Text in parentheses explains a code and is not read; the codes are
/// the backticked snake_case words.
fn documented_codes(text: &str) -> BTreeMap<u16, BTreeSet<String>> {
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| l.trim_start().starts_with('|') && cells(l) == ["status", "codes"])
        .unwrap_or_else(|| panic!("{DOCUMENTED_IN} has no `| status | codes |` table"));
    let mut rows = BTreeMap::new();
    for line in lines.skip(1) {
        if !line.trim_start().starts_with('|') {
            break;
        }
        let row = cells(line);
        let [status, codes] = &row[..] else {
            panic!("{DOCUMENTED_IN}: a row of the error table has not two cells: {line}");
        };
        let status: u16 = status
            .parse()
            .unwrap_or_else(|_| panic!("{DOCUMENTED_IN}: `{status}` is not a status"));
        let mut depth = 0usize;
        let mut outside = String::new();
        for c in codes.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                c if depth == 0 => outside.push(c),
                _ => {}
            }
        }
        let named: BTreeSet<String> = outside
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| {
                w.starts_with(|c: char| c.is_ascii_lowercase())
                    && w.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
            .map(str::to_owned)
            .collect();
        assert!(
            rows.insert(status, named).is_none(),
            "{DOCUMENTED_IN}: status {status} has two rows"
        );
    }
    rows
}

#[test]
fn the_documented_table_is_the_table() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DOCUMENTED_IN);
    let text = std::fs::read_to_string(&path).expect("the documentation is readable");
    let documented = documented_codes(&text);
    let mut wrong = Vec::new();
    for entry in TABLE {
        let status = entry.status.as_u16();
        if !documented
            .get(&status)
            .is_some_and(|codes| codes.contains(entry.code))
        {
            wrong.push(format!(
                "`{}` is missing from the row of {status}",
                entry.code
            ));
        }
    }
    for (status, named) in &documented {
        for code in named {
            if !TABLE
                .iter()
                .any(|e| e.code == code && e.status.as_u16() == *status)
            {
                wrong.push(format!(
                    "the row of {status} names `{code}`, which the table has not under {status}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{DOCUMENTED_IN}:\n{}", wrong.join("\n"));
}

#[test]
fn the_documented_table_is_read_as_written() {
    let text = "# Errors\n\nintro\n\n| status | codes |\n|---|---|\n| 409 | `a_b` (of `c_d`), `e`, `Retry-After` |\n| 410 | `f_1` |\n\nafter `g_h`\n";
    let rows = documented_codes(text);
    let names = |s: &[&str]| s.iter().map(|c| c.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(rows[&409], names(&["a_b", "e"]));
    assert_eq!(rows[&410], names(&["f_1"]));
    assert_eq!(rows.len(), 2);
}
