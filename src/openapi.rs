//! The OpenAPI document, generated from the handlers and types. Served at
//! `/openapi.json` and committed as `openapi/openapi.json` (a test keeps the
//! two identical; `anamnesis openapi > openapi/openapi.json` regenerates it).
//!
//! The derive gives the shapes; [`api_doc`] then makes the document tell the
//! whole truth for the running configuration: the configured channels,
//! identifier types, journey stages and consent purposes become enums, the
//! batch size its `maxItems`, and every operation lists every error it can
//! answer, each with the error envelope and the `x-request-id` header every
//! response carries. A fuzzer (`tests/fuzz.rs`) holds the service to it.

use actix_web::http::StatusCode;
use serde_json::{json, Map, Value};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::config::Settings;
use crate::domain::names::{ChannelName, ConsentPurpose, IdentifierType, JourneyStage};
use crate::domain::CustomerId;
use crate::error::codes::{self, Header};
use crate::routes::{admin, changes, engagement, ops, profiles, signals};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "anamnesis",
        description = "Unified customer profile service: identity signals from every channel resolved to one customer, served back as one profile and one context card.\n\nEvery error has the body `{\"error\": {\"code\", \"message\", \"request_id\"}}`; match on `code`. Every response carries an `x-request-id` header. A method a path does not list is answered with `405` and an `Allow` header. Unknown fields in request bodies and unknown query parameters are refused.",
        license(name = "Apache-2.0")
    ),
    paths(
        signals::ingest,
        signals::ingest_batch,
        profiles::get_profile,
        profiles::lookup,
        profiles::context,
        profiles::context_by_identifier,
        profiles::timeline,
        profiles::patch_traits,
        profiles::add_answers,
        profiles::merge,
        profiles::erase,
        profiles::unmerge,
        profiles::history,
        profiles::remove_identifier,
        profiles::set_consent,
        profiles::suggestions,
        profiles::dismiss_suggestion,
        engagement::export,
        engagement::episodes,
        engagement::follow_ups,
        engagement::personalization,
        engagement::personalization_by_identifier,
        engagement::own_episodes,
        changes::events,
        changes::changes,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        admin::backup,
    ),
    components(schemas(
        crate::error::ErrorBody,
        crate::error::ErrorDetail,
        CustomerId,
        ChannelName,
        IdentifierType,
        JourneyStage,
        ConsentPurpose
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "ingest", description = "Identity signals from channels"),
        (name = "profiles", description = "The resolved customer"),
        (name = "context", description = "Context cards for desks and bots"),
        (name = "merges", description = "The identity ledger, unmerge, identifier removal"),
        (name = "episodes", description = "Episodes, and the follow-ups resolved ones leave"),
        (name = "personalization", description = "Segments and offers, behind consent"),
        (name = "changes", description = "The change feed for integrations"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document as served with these settings.
pub fn api_doc(settings: &Settings) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    configured_names(&mut doc, settings);
    at_least_one_score(&mut doc);
    complete_responses(&mut doc);
    doc
}

/// Feedback must carry a score: `nps`, `ces` or both, not null (a rule the
/// derive cannot state).
fn at_least_one_score(doc: &mut Value) {
    let score = |name: &str| {
        json!({
            "required": [name],
            "properties": {name: {"type": "integer"}}
        })
    };
    if let Some(feedback) = doc["components"]["schemas"]["FeedbackInput"].as_object_mut() {
        feedback.insert("anyOf".into(), json!([score("nps"), score("ces")]));
    }
}

/// The document as served, pretty-printed with a trailing newline.
pub fn document(settings: &Settings) -> String {
    let mut text =
        serde_json::to_string_pretty(&api_doc(settings)).expect("the OpenAPI document serialises");
    text.push('\n');
    text
}

/// Where the configuration fixes a set of names, the schema lists exactly it.
fn configured_names(doc: &mut Value, settings: &Settings) {
    let schemas = &mut doc["components"]["schemas"];
    if !settings.channels.allow_unknown {
        restrict(&mut schemas["ChannelName"], &settings.channels.priority);
    }
    if !settings.identifiers.allow_unknown_types {
        let mut types: Vec<(&u32, &String)> = settings
            .identifiers
            .types
            .iter()
            .map(|(name, t)| (&t.priority, name))
            .collect();
        types.sort();
        let names: Vec<String> = types.into_iter().map(|(_, n)| n.clone()).collect();
        restrict(&mut schemas["IdentifierType"], &names);
    }
    restrict(&mut schemas["JourneyStage"], &settings.journey.stages);
    restrict(&mut schemas["ConsentPurpose"], &settings.consents.purposes);
    schemas["BatchRequest"]["properties"]["signals"]["maxItems"] =
        json!(settings.server.max_batch_signals);
}

/// Replaces a name schema's pattern with the list of allowed names.
fn restrict(schema: &mut Value, names: &[String]) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    object.remove("pattern");
    object.insert("enum".into(), json!(names));
    if let Some(first) = names.first() {
        object.insert("examples".into(), json!([first]));
    }
}

/// An error answer shared by many operations, under `components/responses`.
struct Shared {
    name: &'static str,
    status: StatusCode,
    /// What the answer means; see `codes`.
    prose: &'static str,
    codes: Listing,
}

/// Which codes a shared answer's description names.
enum Listing {
    /// Every code the table has for the status, after the prose.
    Every,
    /// The ones the prose names (a test holds them to the table): the
    /// status's other codes belong to the operations that answer them.
    InProse,
}

const SHARED_ERRORS: &[Shared] = &[
    Shared {
        name: "BadRequest",
        status: StatusCode::BAD_REQUEST,
        prose: "Malformed JSON, query string, path or `Idempotency-Key`, or a request that is not HTTP/1.1",
        codes: Listing::Every,
    },
    Shared {
        name: "Unauthorized",
        status: StatusCode::UNAUTHORIZED,
        prose: "Missing or refused bearer token, with a code naming the fault",
        codes: Listing::Every,
    },
    Shared {
        name: "Forbidden",
        status: StatusCode::FORBIDDEN,
        prose: "The token lacks the scope, may not write for this channel, carries a scope its channel is not allowed, or is bound to a customer",
        codes: Listing::Every,
    },
    Shared {
        name: "NotFound",
        status: StatusCode::NOT_FOUND,
        prose: "No such profile (or identifier, suggestion, purpose), or no such route",
        codes: Listing::InProse,
    },
    Shared {
        name: "MethodNotAllowed",
        status: StatusCode::METHOD_NOT_ALLOWED,
        prose: "The path does not support this method; `Allow` lists the ones it does",
        codes: Listing::InProse,
    },
    Shared {
        name: "RequestTimeout",
        status: StatusCode::REQUEST_TIMEOUT,
        prose: "The body did not arrive within the configured time",
        codes: Listing::Every,
    },
    Shared {
        name: "PayloadTooLarge",
        status: StatusCode::PAYLOAD_TOO_LARGE,
        prose: "The body is larger than the configured limit",
        codes: Listing::Every,
    },
    Shared {
        name: "UnsupportedMediaType",
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        prose: "The body is not declared as JSON",
        codes: Listing::Every,
    },
    Shared {
        name: "Conflict",
        status: StatusCode::CONFLICT,
        prose: "The write conflicts with the state of the resource, or its `Idempotency-Key` is still in use: `idempotency_key_in_flight` (and, where the operation says so, its own codes)",
        codes: Listing::InProse,
    },
    Shared {
        name: "Gone",
        status: StatusCode::GONE,
        prose: "The customer this write's `Idempotency-Key` spoke of was erased, so its answer is gone: `profile_erased`",
        codes: Listing::InProse,
    },
    Shared {
        name: "UnprocessableEntity",
        status: StatusCode::UNPROCESSABLE_ENTITY,
        prose: "The body is JSON but breaks a rule, or the `Idempotency-Key` was used with another request (`idempotency_key_reused`); the code and message name it",
        codes: Listing::InProse,
    },
    Shared {
        name: "TooManyRequests",
        status: StatusCode::TOO_MANY_REQUESTS,
        prose: "The token's subject is over its rate limit or its signals per second (`rate_limited`; a batch spends one per signal, and nothing of a refused request is applied), or has spent its budget of lookups that find nobody (`lookup_budget_exhausted`), or holds the most event streams (`too_many_streams_for_subject`) or exports (`too_many_exports_for_subject`) one subject may; retry after `Retry-After` seconds",
        codes: Listing::InProse,
    },
    Shared {
        name: "Unavailable",
        status: StatusCode::SERVICE_UNAVAILABLE,
        prose: "The store could not be read or could not confirm the write (`store_unavailable`), the write waited past its deadline and was withdrawn unapplied (`store_busy`), or the service is shutting down (`shutting_down`); retry after `Retry-After` seconds where given",
        codes: Listing::InProse,
    },
];

impl Shared {
    fn description(&self) -> String {
        match self.codes {
            Listing::Every => {
                let codes: Vec<String> = codes::with_status(self.status)
                    .map(|e| format!("`{}`", e.code))
                    .collect();
                format!("{}: {}", self.prose, codes.join(", "))
            }
            Listing::InProse => self.prose.to_owned(),
        }
    }
}

/// The shared answer for a status, if there is one.
fn shared(status: &str) -> Option<&'static Shared> {
    SHARED_ERRORS.iter().find(|s| s.status.as_str() == status)
}

fn request_id_header() -> Value {
    json!({
        "description": "The request id, also in the body of an error: the caller's own plain id of up to 64 characters, or a generated one.",
        "required": true,
        "schema": {"type": "string", "minLength": 1, "maxLength": 64}
    })
}

fn error_content() -> Value {
    json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}})
}

/// Headers an answer with this status always carries besides
/// `x-request-id`: those the table gives every code of the status.
fn status_headers(status: &str) -> Vec<(&'static str, Value)> {
    let Ok(status) = status.parse::<u16>() else {
        return Vec::new();
    };
    let Ok(status) = StatusCode::from_u16(status) else {
        return Vec::new();
    };
    let mut entries = codes::with_status(status);
    let Some(first) = entries.next() else {
        return Vec::new();
    };
    let mut common: Vec<Header> = first.headers.to_vec();
    for entry in entries {
        common.retain(|h| entry.headers.iter().any(|o| o.name() == h.name()));
    }
    common
        .into_iter()
        .map(|h| (h.name(), header_spec(h)))
        .collect()
}

/// How the document describes a header of an error answer.
fn header_spec(header: Header) -> Value {
    match header {
        Header::RetryAfter(_) => {
            json!({"description": "Seconds to wait before retrying", "required": true, "schema": {"type": "integer", "minimum": 1}})
        }
        Header::Location => {
            json!({"description": "The same request on the surviving profile", "required": true, "schema": {"type": "string"}})
        }
        Header::CanonicalCustomerId => {
            json!({"description": "The id the profile now lives under", "required": true, "schema": {"$ref": "#/components/schemas/CustomerId"}})
        }
        Header::Allow => {
            json!({"description": "The methods the path supports", "required": true, "schema": {"type": "string"}})
        }
        Header::WwwAuthenticate => {
            json!({"description": "`Bearer`", "required": true, "schema": {"type": "string"}})
        }
    }
}

/// Every operation lists every error it can answer; every response declares
/// the headers it always carries, and has a description.
fn complete_responses(doc: &mut Value) {
    let mut shared = Map::new();
    for answer in SHARED_ERRORS {
        let mut headers = Map::new();
        headers.insert("x-request-id".into(), request_id_header());
        for (header, spec) in status_headers(answer.status.as_str()) {
            headers.insert(header.into(), spec);
        }
        shared.insert(
            answer.name.into(),
            json!({"description": answer.description(), "headers": headers, "content": error_content()}),
        );
    }
    doc["components"]["responses"] = Value::Object(shared);

    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            if matches!(method.as_str(), "post" | "put" | "patch" | "delete") {
                add_idempotency_key(operation);
            }
            complete_operation(path, operation);
        }
    }
}

/// Every write takes an `Idempotency-Key` (see `routes::keyed`).
fn add_idempotency_key(operation: &mut Value) {
    let parameter = json!({
        "name": "Idempotency-Key",
        "in": "header",
        "required": false,
        "description": format!(
            "Makes a retry safe: the same key (per token subject, kept `idempotency.retention_secs`, a day by default) with the same request answers the first answer again, with `idempotent-replayed: true`, and applies nothing; with another request `{}`; while the first is still being served `{}`; once the customer it spoke of is erased `{}`. A malformed key is `{}`.",
            codes::IDEMPOTENCY_KEY_REUSED.cited(),
            codes::IDEMPOTENCY_KEY_IN_FLIGHT.cited(),
            codes::PROFILE_ERASED.cited(),
            codes::INVALID_IDEMPOTENCY_KEY.cited(),
        ),
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": crate::domain::names::IDEMPOTENCY_KEY_PATTERN},
        "example": "01JD5V6X8QK4Q6M9W1E7T3C2ZB"
    });
    match operation["parameters"].as_array_mut() {
        Some(list) => list.push(parameter),
        None => operation["parameters"] = json!([parameter]),
    }
}

fn complete_operation(path: &str, operation: &mut Value) {
    let secured = operation["security"].as_array().is_some_and(|reqs| {
        reqs.iter()
            .any(|r| r.as_object().is_some_and(|o| !o.is_empty()))
    });
    let has_body = operation.get("requestBody").is_some();
    let has_params = operation["parameters"]
        .as_array()
        .is_some_and(|p| !p.is_empty());
    let mut wanted: Vec<&str> = Vec::new();
    if has_params || has_body {
        wanted.push("400");
    }
    if secured {
        wanted.extend(["401", "403", "429", "503"]);
    }
    if path.contains('{') {
        wanted.push("404");
    }
    if has_body {
        wanted.extend(["408", "413", "415", "422"]);
    }
    let keyed = operation["parameters"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["name"] == "Idempotency-Key"));
    if keyed {
        wanted.extend(["409", "410", "422"]);
    }
    let Some(responses) = operation["responses"].as_object_mut() else {
        return;
    };
    for status in wanted {
        if !responses.contains_key(status) {
            let answer = shared(status).expect("every wanted status has a shared response");
            responses.insert(
                status.into(),
                json!({"$ref": format!("#/components/responses/{}", answer.name)}),
            );
        }
    }
    for (status, response) in responses.iter_mut() {
        let Some(response) = response.as_object_mut() else {
            continue;
        };
        if response.contains_key("$ref") {
            continue;
        }
        let described = response
            .get("description")
            .and_then(Value::as_str)
            .is_some_and(|d| !d.is_empty());
        if !described {
            let fallback = shared(status).map_or_else(|| "Success".to_owned(), Shared::description);
            response.insert("description".into(), json!(fallback));
        }
        let headers = response
            .entry("headers")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("headers is an object");
        headers.insert("x-request-id".into(), request_id_header());
        for (header, spec) in status_headers(status) {
            headers.insert(header.into(), spec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::names;

    fn patterns(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("pattern", Value::String(p)) => found.push(p.clone()),
                        _ => patterns(v, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| patterns(v, found)),
            _ => {}
        }
    }

    /// Patterns written as literals in `#[schema]` attributes are the ones
    /// `domain::names` tests against the checks.
    #[test]
    fn every_pattern_in_the_document_is_a_tested_one() {
        let known = [
            names::CHANNEL_PATTERN,
            names::KEY_PATTERN,
            names::TRAIT_NAME_PATTERN,
            names::SIGNAL_ID_PATTERN,
            names::CUSTOMER_ID_PATTERN,
            names::TIMELINE_CURSOR_PATTERN,
            names::HISTORY_CURSOR_PATTERN,
            names::FOLLOW_UP_CURSOR_PATTERN,
            names::STREAM_EVENT_PATTERN,
            names::IDEMPOTENCY_KEY_PATTERN,
        ];
        let mut found = Vec::new();
        patterns(&api_doc(&Settings::defaults()), &mut found);
        assert!(found.len() > 5, "{found:?}");
        for p in found {
            assert!(known.contains(&p.as_str()), "untested pattern {p}");
        }
    }

    /// A shared answer names only codes the table has under its status.
    #[test]
    fn shared_answers_name_codes_of_their_status() {
        for answer in SHARED_ERRORS {
            let description = answer.description();
            let named: Vec<&str> = description
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|w| w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                .collect();
            for code in named {
                assert!(
                    codes::with_status(answer.status).any(|e| e.code == code),
                    "{}: `{code}` is not a code of {}",
                    answer.name,
                    answer.status
                );
            }
        }
    }

    /// Every response of every operation has a description and the request id.
    #[test]
    fn every_response_is_described_and_carries_the_request_id() {
        let doc = api_doc(&Settings::defaults());
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, response) in op["responses"].as_object().unwrap() {
                    let response = match response.get("$ref").and_then(Value::as_str) {
                        Some(r) => {
                            &doc["components"]["responses"]
                                [r.trim_start_matches("#/components/responses/")]
                        }
                        None => response,
                    };
                    let at = format!("{method} {path} {status}");
                    assert!(
                        response["description"]
                            .as_str()
                            .is_some_and(|d| !d.is_empty()),
                        "{at}"
                    );
                    assert_eq!(
                        response["headers"]["x-request-id"]["required"], true,
                        "{at}"
                    );
                }
            }
        }
    }
}
