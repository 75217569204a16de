//! Bad input: every malformed, oversized or rule-breaking request gets its exact
//! status and stable code in the whole error envelope, naming what was wrong;
//! none of them yields a 5xx, creates a profile or changes one.

use reqwest::{Method, Response};
use serde_json::{json, Value};

use crate::helpers::{assert_error, body, signal, spawn_app, spawn_app_with, TestApp, NOBODY};

/// The identifier of the profile that exists before the bad requests arrive.
const EXISTING_COOKIE: &str = "bad-input-existing";
/// `server.max_batch_signals` of the app the table runs against.
const MAX_BATCH: usize = 5;

enum Body {
    None,
    Json(Value),
    /// Sent as is, with this content type (`None`: no content type at all).
    Raw(Option<&'static str>, Vec<u8>),
}

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    body: Body,
    status: u16,
    code: &'static str,
    /// Texts the message must contain: the field, path or value at fault.
    mentions: Vec<String>,
}

impl Case {
    fn new(name: &'static str, method: Method, path: impl Into<String>, body: Body) -> Case {
        Case {
            name,
            method,
            path: path.into(),
            body,
            status: 0,
            code: "",
            mentions: Vec::new(),
        }
    }

    /// A signal posted to `/v1/signals`.
    fn signal(name: &'static str, signal: Value) -> Case {
        Case::new(name, Method::POST, "/v1/signals", Body::Json(signal))
    }

    fn raw(
        name: &'static str,
        content_type: Option<&'static str>,
        text: impl Into<Vec<u8>>,
    ) -> Case {
        Case::new(
            name,
            Method::POST,
            "/v1/signals",
            Body::Raw(content_type, text.into()),
        )
    }

    fn get(name: &'static str, path: impl Into<String>) -> Case {
        Case::new(name, Method::GET, path, Body::None)
    }

    fn expect(mut self, status: u16, code: &'static str) -> Case {
        self.status = status;
        self.code = code;
        self
    }

    fn mentions(mut self, texts: &[&str]) -> Case {
        self.mentions = texts.iter().map(|t| (*t).to_owned()).collect();
        self
    }
}

/// A valid chat signal naming the existing profile's cookie and a fresh email
/// unique to the case, changed by `change` into a bad one. Were it accepted, it
/// would attach the email to the existing profile, which the table would see.
fn bad_signal(case: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut s = signal(
        "chat",
        &[
            ("web_cookie", EXISTING_COOKIE),
            (
                "email",
                &format!("{}@bad-input.example", case.replace('_', "-")),
            ),
        ],
    );
    s["traits"] = json!({ "preferred_language": "nl" });
    change(&mut s);
    s
}

fn many_identifiers(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({ "type": "web_cookie", "value": format!("bad-input-many-{i}") }))
            .collect(),
    )
}

fn many_traits(n: usize) -> Value {
    Value::Object((0..n).map(|i| (format!("trait_{i}"), json!(i))).collect())
}

fn many_answers(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({ "key": format!("question_{i}"), "value": i }))
            .collect(),
    )
}

fn rfc3339_from_now(minutes: i64) -> String {
    (chrono::Utc::now() + chrono::TimeDelta::minutes(minutes)).to_rfc3339()
}

/// Every bad request of the table. `existing` and `other` are live profiles.
fn cases(existing: &str, other: &str) -> Vec<Case> {
    let valid = bad_signal("trailing_garbage", |_| {});
    let profile = format!("/v1/profiles/{existing}");
    let traits = format!("{profile}/traits");
    let answers = format!("{profile}/answers");
    let merge = format!("{profile}/merge");
    let timeline = format!("{profile}/timeline");
    let history = format!("{profile}/history");
    let batch = |signals: Value| {
        Case::new(
            "",
            Method::POST,
            "/v1/signals/batch",
            Body::Json(json!({ "signals": signals })),
        )
    };
    let named = |mut case: Case, name: &'static str| {
        case.name = name;
        case
    };
    vec![
        // The body as a whole.
        Case::raw(
            "malformed_json",
            Some("application/json"),
            format!(r#"{{"channel": chat, "identifiers": [{{"type": "web_cookie", "value": "{EXISTING_COOKIE}"}}]}}"#),
        )
        .expect(400, "malformed_json"),
        Case::raw(
            "truncated_json",
            Some("application/json"),
            format!(r#"{{"channel": "chat", "identifiers": [{{"type": "web_cookie", "value": "{EXISTING_COOKIE}"}}"#),
        )
        .expect(400, "malformed_json"),
        Case::raw(
            "trailing_garbage",
            Some("application/json"),
            format!("{valid} trailing"),
        )
        .expect(400, "malformed_json")
        .mentions(&["trailing"]),
        Case::raw(
            "two_json_documents",
            Some("application/json"),
            format!("{valid}{valid}"),
        )
        .expect(400, "malformed_json"),
        Case::raw("empty_body", Some("application/json"), "")
            .expect(400, "malformed_json"),
        Case::raw(
            "invalid_utf8",
            Some("application/json"),
            [
                br#"{"channel": "chat", "identifiers": [{"type": "web_cookie", "value": "bad-input-"#.as_slice(),
                b"\xff\xfe",
                br#""}]}"#.as_slice(),
            ]
            .concat(),
        )
        .expect(400, "malformed_json"),
        Case::raw(
            "nested_too_deep",
            Some("application/json"),
            format!(
                r#"{{"channel": "chat", "identifiers": [{{"type": "web_cookie", "value": "{EXISTING_COOKIE}"}}], "traits": {{"deep": {}{}}}}}"#,
                "[".repeat(500),
                "]".repeat(500)
            ),
        )
        .expect(400, "malformed_json"),
        Case::raw(
            "duplicate_channel",
            Some("application/json"),
            format!(
                r#"{{"channel": "chat", "channel": "agent", "identifiers": [{{"type": "web_cookie", "value": "{EXISTING_COOKIE}"}}]}}"#
            ),
        )
        .expect(422, "duplicate_key")
        .mentions(&["channel"]),
        Case::raw("json_array", Some("application/json"), "[1, 2, 3]")
            .expect(422, "invalid_field"),
        Case::raw("json_string", Some("application/json"), r#""chat""#)
            .expect(422, "invalid_field"),
        Case::raw("json_null", Some("application/json"), "null")
            .expect(422, "invalid_field"),
        Case::raw("text_plain", Some("text/plain"), valid.to_string())
            .expect(415, "unsupported_media_type"),
        Case::raw("form_encoded", Some("application/x-www-form-urlencoded"), "channel=chat")
            .expect(415, "unsupported_media_type"),
        Case::raw("no_content_type", None, valid.to_string())
            .expect(415, "unsupported_media_type"),
        Case::signal(
            "body_over_64_kib",
            bad_signal("body_over_64_kib", |s| {
                s["traits"]["notes"] = json!("x".repeat(65 * 1024));
            }),
        )
        .expect(413, "payload_too_large"),
        // Unknown fields, named with their path.
        Case::signal(
            "unknown_top_level_field",
            bad_signal("unknown_top_level_field", |s| s["colour"] = json!("red")),
        )
        .expect(422, "unknown_field")
        .mentions(&["colour"]),
        Case::signal(
            "unknown_identifier_field",
            bad_signal("unknown_identifier_field", |s| {
                s["identifiers"][0]["source"] = json!("crm");
            }),
        )
        .expect(422, "unknown_field")
        .mentions(&["identifiers[0]", "source"]),
        Case::signal(
            "unknown_event_field",
            bad_signal("unknown_event_field", |s| {
                s["event"] = json!({ "type": "call_started", "mood": "happy" });
            }),
        )
        .expect(422, "unknown_field")
        .mentions(&["event", "mood"]),
        Case::signal(
            "unknown_episode_field",
            bad_signal("unknown_episode_field", |s| {
                s["event"] = json!({
                    "type": "complaint",
                    "episode": { "id": "case-1", "priority": "high" },
                });
            }),
        )
        .expect(422, "unknown_field")
        .mentions(&["event.episode", "priority"]),
        Case::signal(
            "unknown_answer_field",
            bad_signal("unknown_answer_field", |s| {
                s["answers"] = json!([
                    { "key": "order_number", "value": "A-1" },
                    { "key": "reason_for_contact", "value": "delivery", "confidence": 0.9 },
                ]);
            }),
        )
        .expect(422, "unknown_field")
        .mentions(&["answers[1]", "confidence"]),
        // Wrong types and missing fields.
        Case::signal(
            "channel_as_number",
            bad_signal("channel_as_number", |s| s["channel"] = json!(7)),
        )
        .expect(422, "invalid_field")
        .mentions(&["channel"]),
        Case::signal(
            "identifiers_as_object",
            bad_signal("identifiers_as_object", |s| {
                s["identifiers"] = json!({ "type": "web_cookie", "value": EXISTING_COOKIE });
            }),
        )
        .expect(422, "invalid_field")
        .mentions(&["identifiers"]),
        Case::signal(
            "identifier_value_as_number",
            bad_signal("identifier_value_as_number", |s| {
                s["identifiers"][1]["value"] = json!(612_345_678);
            }),
        )
        .expect(422, "invalid_field")
        .mentions(&["identifiers[1].value"]),
        Case::signal(
            "traits_as_array",
            bad_signal("traits_as_array", |s| s["traits"] = json!(["nl"])),
        )
        .expect(422, "invalid_field")
        .mentions(&["traits"]),
        Case::signal(
            "missing_channel",
            bad_signal("missing_channel", |s| {
                s.as_object_mut().unwrap().remove("channel");
            }),
        )
        .expect(422, "missing_field")
        .mentions(&["channel"]),
        Case::signal(
            "missing_identifiers",
            bad_signal("missing_identifiers", |s| {
                s.as_object_mut().unwrap().remove("identifiers");
            }),
        )
        .expect(422, "missing_field")
        .mentions(&["identifiers"]),
        Case::signal(
            "identifier_without_value",
            bad_signal("identifier_without_value", |s| {
                s["identifiers"][1].as_object_mut().unwrap().remove("value");
            }),
        )
        .expect(422, "missing_field")
        .mentions(&["identifiers[1]", "value"]),
        // Identifiers.
        Case::signal(
            "empty_identifiers",
            bad_signal("empty_identifiers", |s| s["identifiers"] = json!([])),
        )
        .expect(422, "no_identifiers"),
        Case::signal(
            "fifty_one_identifiers",
            bad_signal("fifty_one_identifiers", |s| {
                s["identifiers"] = many_identifiers(51);
            }),
        )
        .expect(422, "too_many_identifiers")
        .mentions(&["51"]),
        Case::signal(
            "unknown_identifier_type",
            bad_signal("unknown_identifier_type", |s| {
                s["identifiers"][1] = json!({ "type": "shoe_size", "value": "42" });
            }),
        )
        .expect(422, "unknown_identifier_type")
        .mentions(&["identifiers[1]", "shoe_size"]),
        Case::signal(
            "unparseable_phone",
            bad_signal("unparseable_phone", |s| {
                s["identifiers"][1] = json!({ "type": "phone", "value": "call me maybe 12" });
            }),
        )
        .expect(422, "invalid_identifier")
        .mentions(&["identifiers[1]", "phone"]),
        Case::signal(
            "email_without_at",
            bad_signal("email_without_at", |s| {
                s["identifiers"][1]["value"] = json!("anna.example.com");
            }),
        )
        .expect(422, "invalid_identifier")
        .mentions(&["identifiers[1]", "@"]),
        Case::signal(
            "identifier_with_control_character",
            bad_signal("identifier_with_control_character", |s| {
                s["identifiers"][1] = json!({ "type": "web_cookie", "value": "abc\u{0}def" });
            }),
        )
        .expect(422, "invalid_identifier")
        .mentions(&["identifiers[1]", "control"]),
        Case::signal(
            "identifier_over_256_chars",
            bad_signal("identifier_over_256_chars", |s| {
                s["identifiers"][1] = json!({ "type": "web_cookie", "value": "c".repeat(257) });
            }),
        )
        .expect(422, "identifier_too_long")
        .mentions(&["identifiers[1]", "256"]),
        Case::signal(
            "only_placeholders",
            json!({
                "channel": "ivr",
                "identifiers": [
                    { "type": "phone", "value": "withheld" },
                    { "type": "email", "value": "null" },
                    { "type": "web_cookie", "value": "undefined" },
                ],
                "traits": { "preferred_language": "nl" },
            }),
        )
        .expect(422, "no_usable_identifier"),
        Case::signal(
            "two_account_ids",
            bad_signal("two_account_ids", |s| {
                let ids = s["identifiers"].as_array_mut().unwrap();
                ids.push(json!({ "type": "account_id", "value": "C-1001" }));
                ids.push(json!({ "type": "account_id", "value": "C-2002" }));
            }),
        )
        .expect(422, "identifier_limit_exceeded")
        .mentions(&["account_id"]),
        // Channel and signal id.
        Case::signal(
            "unknown_channel",
            bad_signal("unknown_channel", |s| s["channel"] = json!("pigeon")),
        )
        .expect(422, "unknown_channel")
        .mentions(&["pigeon"]),
        Case::signal(
            "invalid_channel_name",
            bad_signal("invalid_channel_name", |s| s["channel"] = json!("Chat Bot!")),
        )
        .expect(422, "invalid_channel")
        .mentions(&["Chat Bot!"]),
        Case::signal(
            "empty_channel",
            bad_signal("empty_channel", |s| s["channel"] = json!("")),
        )
        .expect(422, "invalid_channel"),
        Case::signal(
            "signal_id_with_space",
            bad_signal("signal_id_with_space", |s| s["signal_id"] = json!("ivr 0001")),
        )
        .expect(422, "invalid_signal_id")
        .mentions(&["signal_id"]),
        Case::signal(
            "signal_id_over_128_chars",
            bad_signal("signal_id_over_128_chars", |s| {
                s["signal_id"] = json!("s".repeat(129));
            }),
        )
        .expect(422, "invalid_signal_id")
        .mentions(&["signal_id"]),
        Case::signal(
            "empty_signal_id",
            bad_signal("empty_signal_id", |s| s["signal_id"] = json!("")),
        )
        .expect(422, "invalid_signal_id"),
        // Traits.
        Case::signal(
            "one_hundred_one_traits",
            bad_signal("one_hundred_one_traits", |s| s["traits"] = many_traits(101)),
        )
        .expect(422, "too_many_traits")
        .mentions(&["101"]),
        Case::signal(
            "trait_name_uppercase",
            bad_signal("trait_name_uppercase", |s| s["traits"]["FirstName"] = json!("Anna")),
        )
        .expect(422, "invalid_trait_name")
        .mentions(&["FirstName"]),
        Case::signal(
            "trait_name_leading_digit",
            bad_signal("trait_name_leading_digit", |s| s["traits"]["1st_visit"] = json!(true)),
        )
        .expect(422, "invalid_trait_name")
        .mentions(&["1st_visit"]),
        Case::signal(
            "trait_name_65_chars",
            bad_signal("trait_name_65_chars", |s| s["traits"]["t".repeat(65)] = json!(1)),
        )
        .expect(422, "invalid_trait_name"),
        Case::signal(
            "trait_value_over_4_kib",
            bad_signal("trait_value_over_4_kib", |s| {
                s["traits"]["notes"] = json!("n".repeat(4097));
            }),
        )
        .expect(422, "trait_value_too_large")
        .mentions(&["notes"]),
        // Answers.
        Case::signal(
            "answer_bad_key",
            bad_signal("answer_bad_key", |s| {
                s["answers"] = json!([{ "key": "Order Number", "value": "A-1001" }]);
            }),
        )
        .expect(422, "invalid_answer_key")
        .mentions(&["answers[0]"]),
        Case::signal(
            "answer_null_value",
            bad_signal("answer_null_value", |s| {
                s["answers"] = json!([
                    { "key": "order_number", "value": "A-1001" },
                    { "key": "reason_for_contact", "value": null },
                ]);
            }),
        )
        .expect(422, "invalid_answer_value")
        .mentions(&["answers[1]"]),
        Case::signal(
            "answer_value_over_4_kib",
            bad_signal("answer_value_over_4_kib", |s| {
                s["answers"] = json!([{ "key": "order_number", "value": "a".repeat(4097) }]);
            }),
        )
        .expect(422, "answer_value_too_large")
        .mentions(&["answers[0]"]),
        Case::signal(
            "fifty_one_answers",
            bad_signal("fifty_one_answers", |s| s["answers"] = many_answers(51)),
        )
        .expect(422, "too_many_answers")
        .mentions(&["51"]),
        // Events.
        Case::signal(
            "invalid_event_type",
            bad_signal("invalid_event_type", |s| {
                s["event"] = json!({ "type": "Call Started" });
            }),
        )
        .expect(422, "invalid_event_type")
        .mentions(&["Call Started"]),
        Case::signal(
            "unknown_journey_stage",
            bad_signal("unknown_journey_stage", |s| {
                s["event"] = json!({ "type": "page_view", "journey_stage": "nirvana" });
            }),
        )
        .expect(422, "unknown_journey_stage")
        .mentions(&["nirvana"]),
        Case::signal(
            "invalid_episode_status",
            bad_signal("invalid_episode_status", |s| {
                s["event"] = json!({
                    "type": "complaint",
                    "episode": { "id": "case-1", "status": "pending" },
                });
            }),
        )
        .expect(422, "invalid_field")
        .mentions(&["event.episode.status", "pending"]),
        Case::signal(
            "properties_as_array",
            bad_signal("properties_as_array", |s| {
                s["event"] = json!({ "type": "page_view", "properties": ["menu", "2-1"] });
            }),
        )
        .expect(422, "invalid_field")
        .mentions(&["event.properties"]),
        Case::signal(
            "answers_as_object",
            bad_signal("answers_as_object", |s| {
                s["answers"] = json!({ "order_number": "A-1001" });
            }),
        )
        .expect(422, "invalid_field")
        .mentions(&["answers"]),
        Case::signal(
            "empty_episode_id",
            bad_signal("empty_episode_id", |s| {
                s["event"] = json!({ "type": "complaint", "episode": { "id": "" } });
            }),
        )
        .expect(422, "invalid_episode_id"),
        Case::signal(
            "summary_over_2000_chars",
            bad_signal("summary_over_2000_chars", |s| {
                s["event"] = json!({ "type": "complaint", "summary": "s".repeat(2001) });
            }),
        )
        .expect(422, "text_too_long")
        .mentions(&["event.summary"]),
        Case::signal(
            "properties_over_16_kib",
            bad_signal("properties_over_16_kib", |s| {
                s["event"] = json!({ "type": "page_view", "properties": { "blob": "p".repeat(17 * 1024) } });
            }),
        )
        .expect(422, "properties_too_large"),
        // Times.
        Case::signal(
            "occurred_at_ten_minutes_ahead",
            bad_signal("occurred_at_ten_minutes_ahead", |s| {
                s["occurred_at"] = json!(rfc3339_from_now(10));
            }),
        )
        .expect(422, "occurred_at_in_future")
        .mentions(&["occurred_at"]),
        Case::signal(
            "occurred_at_not_rfc3339",
            bad_signal("occurred_at_not_rfc3339", |s| {
                s["occurred_at"] = json!("22/11/2026 09:15");
            }),
        )
        .expect(422, "invalid_field")
        .mentions(&["occurred_at"]),
        Case::signal(
            "occurred_at_before_1970",
            bad_signal("occurred_at_before_1970", |s| {
                s["occurred_at"] = json!("1969-07-20T20:17:00Z");
            }),
        )
        .expect(422, "timestamp_out_of_range")
        .mentions(&["occurred_at"]),
        // Batches.
        named(batch(json!([])), "empty_batch").expect(422, "empty_batch"),
        named(
            batch(Value::Array(
                (0..=MAX_BATCH)
                    .map(|i| signal("web", &[("web_cookie", &format!("bad-input-batch-{i}"))]))
                    .collect(),
            )),
            "batch_over_the_configured_count",
        )
        .expect(422, "too_many_signals")
        .mentions(&[(MAX_BATCH + 1).to_string().as_str(), MAX_BATCH.to_string().as_str()]),
        named(
            batch(json!([bad_signal("batch_over_4_mib", |s| {
                s["event"] = json!({ "type": "page_view", "properties": { "blob": "b".repeat(4 * 1024 * 1024) } });
            })])),
            "batch_over_4_mib",
        )
        .expect(413, "payload_too_large"),
        Case::new(
            "batch_unknown_field",
            Method::POST,
            "/v1/signals/batch",
            Body::Json(json!({ "signals": [bad_signal("batch_unknown_field", |_| {})], "atomic": true })),
        )
        .expect(422, "unknown_field")
        .mentions(&["atomic"]),
        Case::new(
            "batch_signals_not_a_list",
            Method::POST,
            "/v1/signals/batch",
            Body::Json(json!({ "signals": bad_signal("batch_signals_not_a_list", |_| {}) })),
        )
        .expect(422, "invalid_field")
        .mentions(&["signals"]),
        Case::new(
            "batch_without_signals",
            Method::POST,
            "/v1/signals/batch",
            Body::Json(json!({})),
        )
        .expect(422, "missing_field")
        .mentions(&["signals"]),
        Case::new(
            "batch_truncated_json",
            Method::POST,
            "/v1/signals/batch",
            Body::Raw(Some("application/json"), format!(r#"{{"signals": [{valid}"#).into()),
        )
        .expect(400, "malformed_json"),
        // Customer ids.
        Case::get("unknown_customer_id", format!("/v1/profiles/{NOBODY}"))
            .expect(404, "profile_not_found"),
        Case::get("malformed_customer_id", "/v1/profiles/anna")
            .expect(400, "invalid_customer_id")
            .mentions(&["anna"]),
        Case::get(
            "lower_case_customer_id",
            "/v1/profiles/cus_01arz3ndektsv4rrffq69g5fav",
        )
        .expect(400, "invalid_customer_id"),
        Case::get("context_of_unknown_customer", format!("/v1/profiles/{NOBODY}/context"))
            .expect(404, "profile_not_found"),
        Case::get("context_of_malformed_customer_id", "/v1/profiles/cus_123/context")
            .expect(400, "invalid_customer_id"),
        Case::get("timeline_of_malformed_customer_id", "/v1/profiles/cus_123/timeline")
            .expect(400, "invalid_customer_id"),
        Case::new("erase_unknown_customer", Method::DELETE, format!("/v1/profiles/{NOBODY}"), Body::None)
            .expect(404, "profile_not_found"),
        // Merge.
        Case::new(
            "merge_malformed_source_id",
            Method::POST,
            merge.clone(),
            Body::Json(json!({ "source_id": "anna" })),
        )
        .expect(422, "invalid_field")
        .mentions(&["source_id", "anna"]),
        Case::new(
            "merge_with_itself",
            Method::POST,
            merge.clone(),
            Body::Json(json!({ "source_id": existing })),
        )
        .expect(422, "same_profile"),
        Case::new(
            "merge_unknown_source",
            Method::POST,
            merge.clone(),
            Body::Json(json!({ "source_id": NOBODY })),
        )
        .expect(404, "profile_not_found"),
        Case::new(
            "merge_breaking_the_account_id_limit",
            Method::POST,
            merge.clone(),
            Body::Json(json!({ "source_id": other })),
        )
        .expect(409, "merge_conflict"),
        Case::new(
            "merge_into_unknown_target",
            Method::POST,
            format!("/v1/profiles/{NOBODY}/merge"),
            Body::Json(json!({ "source_id": existing })),
        )
        .expect(404, "profile_not_found"),
        Case::new(
            "merge_unknown_field",
            Method::POST,
            merge.clone(),
            Body::Json(json!({ "target_id": other })),
        )
        .expect(422, "unknown_field")
        .mentions(&["target_id"]),
        Case::new("merge_empty_object", Method::POST, merge, Body::Json(json!({})))
            .expect(422, "missing_field")
            .mentions(&["source_id"]),
        // Lookup and context by identifier.
        Case::get("lookup_unknown_type", "/v1/profiles/lookup?type=shoe_size&value=42")
            .expect(422, "unknown_identifier_type")
            .mentions(&["shoe_size"]),
        Case::get("lookup_malformed_phone", "/v1/profiles/lookup?type=phone&value=hello")
            .expect(422, "invalid_identifier")
            .mentions(&["phone"]),
        Case::get("lookup_email_without_at", "/v1/profiles/lookup?type=email&value=anna")
            .expect(422, "invalid_identifier"),
        Case::get("lookup_phone_of_pluses", format!("/v1/profiles/lookup?type=phone&value={}", "%2B".repeat(100)))
            .expect(422, "invalid_identifier"),
        Case::get("lookup_phone_of_many_digits", format!("/v1/profiles/lookup?type=phone&value=%2B{}", "9".repeat(200)))
            .expect(422, "invalid_identifier"),
        Case::get("lookup_phone_arabic_digits", "/v1/profiles/lookup?type=phone&value=%D9%A0%D9%A6%D9%A1%D9%A2%D9%A3%D9%A4%D9%A5%D9%A6%D9%A7%D9%A8")
            .expect(422, "invalid_identifier"),
        Case::get("lookup_phone_ext", "/v1/profiles/lookup?type=phone&value=0612345678%20ext%2099999999999999999999")
            .expect(422, "invalid_identifier"),
        Case::get("lookup_phone_star", "/v1/profiles/lookup?type=phone&value=*31%23")
            .expect(422, "invalid_identifier"),
        Case::get(
            "lookup_value_over_256_chars",
            format!("/v1/profiles/lookup?type=web_cookie&value={}", "c".repeat(257)),
        )
        .expect(422, "identifier_too_long"),
        Case::get(
            "lookup_unowned_identifier",
            "/v1/profiles/lookup?type=email&value=nobody%40bad-input.example",
        )
        .expect(404, "profile_not_found"),
        Case::get("lookup_placeholder", "/v1/profiles/lookup?type=phone&value=withheld")
            .expect(404, "profile_not_found"),
        Case::get("lookup_without_value", "/v1/profiles/lookup?type=phone")
            .expect(400, "invalid_query")
            .mentions(&["value"]),
        Case::get(
            "lookup_unknown_parameter",
            format!("/v1/profiles/lookup?type=web_cookie&value={EXISTING_COOKIE}&pretty=true"),
        )
        .expect(400, "invalid_query")
        .mentions(&["pretty"]),
        Case::get("context_by_unowned_identifier", "/v1/context?type=phone&value=0612345670")
            .expect(404, "profile_not_found"),
        Case::get(
            "context_limit_over_200",
            format!("/v1/context?type=web_cookie&value={EXISTING_COOKIE}&limit=201"),
        )
        .expect(400, "invalid_query")
        .mentions(&["limit"]),
        Case::get("context_negative_limit", format!("{profile}/context?limit=-1"))
            .expect(400, "invalid_query")
            .mentions(&["limit"]),
        // Timeline.
        Case::get("timeline_bad_cursor", format!("{timeline}?cursor=not-a-cursor"))
            .expect(400, "invalid_cursor"),
        Case::get("timeline_limit_zero", format!("{timeline}?limit=0"))
            .expect(400, "invalid_query")
            .mentions(&["limit"]),
        Case::get("timeline_limit_over_200", format!("{timeline}?limit=201"))
            .expect(400, "invalid_query")
            .mentions(&["limit"]),
        Case::get("timeline_limit_not_a_number", format!("{timeline}?limit=ten"))
            .expect(400, "invalid_query")
            .mentions(&["limit"]),
        // Only the shapes the service writes are cursors and page sizes: no
        // sign, no more digits than fit.
        Case::get("timeline_signed_cursor", format!("{timeline}?cursor=%2B1-2"))
            .expect(400, "invalid_cursor"),
        Case::get("timeline_cursor_of_20_digits", format!("{timeline}?cursor=1-{}", "9".repeat(20)))
            .expect(400, "invalid_cursor"),
        Case::get("timeline_signed_limit", format!("{timeline}?limit=%2B5"))
            .expect(400, "invalid_query")
            .mentions(&["limit"]),
        // The ledger pages like the timeline.
        Case::get("history_limit_zero", format!("{history}?limit=0"))
            .expect(400, "invalid_query")
            .mentions(&["limit"]),
        Case::get("history_limit_over_200", format!("{history}?limit=201"))
            .expect(400, "invalid_query")
            .mentions(&["limit"]),
        Case::get("history_signed_cursor", format!("{history}?cursor=%2B5"))
            .expect(400, "invalid_cursor"),
        Case::get("timeline_unknown_parameter", format!("{timeline}?order=asc"))
            .expect(400, "invalid_query")
            .mentions(&["order"]),
        Case::get("timeline_bad_channel_filter", format!("{timeline}?channel=Chat%21"))
            .expect(400, "invalid_query")
            .mentions(&["channel"]),
        // Trait and answer writes on the existing profile.
        Case::new(
            "patch_bad_trait_name",
            Method::PATCH,
            traits.clone(),
            Body::Json(json!({ "channel": "agent", "traits": { "nickname": "Annie", "First Name": "Anna" } })),
        )
        .expect(422, "invalid_trait_name")
        .mentions(&["First Name"]),
        Case::new(
            "patch_trait_value_over_4_kib",
            Method::PATCH,
            traits.clone(),
            Body::Json(json!({ "channel": "agent", "traits": { "notes": "n".repeat(4097) } })),
        )
        .expect(422, "trait_value_too_large")
        .mentions(&["notes"]),
        Case::new(
            "patch_unknown_channel",
            Method::PATCH,
            traits.clone(),
            Body::Json(json!({ "channel": "pigeon", "traits": { "nickname": "Annie" } })),
        )
        .expect(422, "unknown_channel")
        .mentions(&["pigeon"]),
        Case::new(
            "patch_one_hundred_one_traits",
            Method::PATCH,
            traits.clone(),
            Body::Json(json!({ "channel": "agent", "traits": many_traits(101) })),
        )
        .expect(422, "too_many_traits"),
        Case::new(
            "patch_unknown_field",
            Method::PATCH,
            traits.clone(),
            Body::Json(json!({ "channel": "agent", "traits": { "nickname": "Annie" }, "replace": true })),
        )
        .expect(422, "unknown_field")
        .mentions(&["replace"]),
        Case::new(
            "patch_traits_not_an_object",
            Method::PATCH,
            traits,
            Body::Json(json!({ "channel": "agent", "traits": "nickname=Annie" })),
        )
        .expect(422, "invalid_field")
        .mentions(&["traits"]),
        Case::new(
            "patch_unknown_customer",
            Method::PATCH,
            format!("/v1/profiles/{NOBODY}/traits"),
            Body::Json(json!({ "channel": "agent", "traits": { "nickname": "Annie" } })),
        )
        .expect(404, "profile_not_found"),
        Case::new(
            "answers_bad_key",
            Method::POST,
            answers.clone(),
            Body::Json(json!({ "channel": "chat", "answers": [
                { "key": "order_number", "value": "A-1001" },
                { "key": "Reason?", "value": "delivery" },
            ] })),
        )
        .expect(422, "invalid_answer_key")
        .mentions(&["answers[1]"]),
        Case::new(
            "answers_null_value",
            Method::POST,
            answers.clone(),
            Body::Json(json!({ "channel": "chat", "answers": [{ "key": "order_number", "value": null }] })),
        )
        .expect(422, "invalid_answer_value")
        .mentions(&["answers[0]"]),
        Case::new(
            "answers_unknown_nested_field",
            Method::POST,
            answers.clone(),
            Body::Json(json!({ "channel": "chat", "answers": [{ "key": "order_number", "value": "A-1", "ttl": 60 }] })),
        )
        .expect(422, "unknown_field")
        .mentions(&["answers[0]", "ttl"]),
        Case::new(
            "answers_without_channel",
            Method::POST,
            answers,
            Body::Json(json!({ "answers": [{ "key": "order_number", "value": "A-1" }] })),
        )
        .expect(422, "missing_field")
        .mentions(&["channel"]),
        // Routing.
        Case::get("unknown_route", "/v1/customers").expect(404, "route_not_found"),
        Case::new("wrong_method", Method::PUT, "/v1/signals", Body::Json(valid.clone()))
            .expect(405, "method_not_allowed"),
    ]
}

async fn send(app: &TestApp, case: &Case) -> Response {
    let request = app.request(case.method.clone(), &case.path);
    let request = match &case.body {
        Body::None => request,
        Body::Json(value) => request.json(value),
        Body::Raw(Some(content_type), text) => request
            .header("content-type", *content_type)
            .body(text.clone()),
        Body::Raw(None, text) => request.body(text.clone()),
    };
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

/// The `{type, value}` pairs a request body asserts, batch items included.
fn identifiers_in(body: &Body) -> Vec<(String, String)> {
    let Body::Json(value) = body else {
        return Vec::new();
    };
    let signals = match value.get("signals") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(item) => vec![item],
        None => vec![value],
    };
    signals
        .into_iter()
        .filter_map(|s| s.get("identifiers")?.as_array())
        .flatten()
        .filter_map(|i| {
            Some((
                i.get("type")?.as_str()?.to_owned(),
                i.get("value")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[tokio::test]
async fn every_bad_input_gets_its_status_and_code_and_changes_nothing() {
    let app = spawn_app_with(|s| s.server.max_batch_signals = MAX_BATCH).await;
    let mut seed = signal(
        "chat",
        &[
            ("web_cookie", EXISTING_COOKIE),
            ("account_id", "BAD-INPUT-1"),
        ],
    );
    seed["traits"] = json!({ "preferred_language": "en" });
    let existing = app.ingest(seed).await["customer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = app
        .ingest(signal(
            "web",
            &[
                ("web_cookie", "bad-input-other"),
                ("account_id", "BAD-INPUT-2"),
            ],
        ))
        .await["customer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = app.profile(&existing).await;
    let other_before = app.profile(&other).await;

    let cases = cases(&existing, &other);
    assert!(cases.len() >= 35, "only {} cases", cases.len());
    for case in &cases {
        assert!(case.status != 0, "{} has no expectation", case.name);
        // Shown with the failure, which assert_error reports without the name.
        println!("case {}", case.name);
        let resp = send(&app, case).await;
        let error = assert_error(resp, case.status, case.code).await;
        let message = error["error"]["message"].as_str().unwrap();
        for text in &case.mentions {
            assert!(
                message.contains(text.as_str()),
                "{}: message {message:?} does not mention {text:?}",
                case.name
            );
        }
        assert_eq!(
            app.profile(&existing).await,
            before,
            "{}: the existing profile changed",
            case.name
        );
        for (kind, value) in identifiers_in(&case.body) {
            if kind == "web_cookie" && value == EXISTING_COOKIE {
                continue;
            }
            let status = app.lookup(&kind, &value).await.status();
            assert_ne!(
                status, 200,
                "{}: {kind}:{value} was attached to a profile",
                case.name
            );
        }
    }
    assert_eq!(app.profile(&other).await, other_before);
}

#[tokio::test]
async fn a_rejected_patch_applies_none_of_its_traits() {
    let app = spawn_app().await;
    let id = app
        .ingest(signal("chat", &[("email", "patch@example.com")]))
        .await["customer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = app.profile(&id).await;
    let resp = app
        .patch_traits(
            &id,
            &json!({ "channel": "agent", "traits": { "nickname": "Annie", "Bad-Name": 1 } }),
        )
        .await;
    assert_error(resp, 422, "invalid_trait_name").await;
    let after = app.profile(&id).await;
    assert_eq!(after["version"], before["version"]);
    assert!(after["traits"].get("nickname").is_none(), "{after}");
    assert_eq!(after, before);

    // The same patch without the bad name is applied: the rejection was the name.
    let resp = app
        .patch_traits(
            &id,
            &json!({ "channel": "agent", "traits": { "nickname": "Annie" } }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let after = body(resp).await;
    assert_eq!(after["version"], before["version"].as_u64().unwrap() + 1);
    assert_eq!(after["traits"]["nickname"]["value"], "Annie");
}

#[tokio::test]
async fn a_batch_answers_every_item_in_order_and_applies_the_good_ones() {
    let app = spawn_app().await;
    let mut reused = signal("ivr", &[("phone", "06 1234 5678")]);
    reused["signal_id"] = json!("batch-ivr-1");
    let mut reused_differently = signal("ivr", &[("phone", "06 8765 4321")]);
    reused_differently["signal_id"] = json!("batch-ivr-1");
    let mut in_the_future = signal("chat", &[("email", "future@example.com")]);
    in_the_future["occurred_at"] = json!("2999-01-01T00:00:00Z");
    let signals = vec![
        signal("web", &[("web_cookie", "batch-good-1")]),
        in_the_future,
        reused,
        signal("ivr", &[("phone", "withheld")]),
        signal(
            "chat",
            &[
                ("web_cookie", "batch-good-1"),
                ("email", "batch-good@example.com"),
            ],
        ),
        reused_differently,
        signal("store", &[("email", "no-at-sign.example.com")]),
    ];
    let resp = app.post_batch(signals).await;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let results = body(resp).await["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 7, "{results:?}");

    let expected: [(u16, Option<&str>); 7] = [
        (201, None),
        (422, Some("occurred_at_in_future")),
        (201, None),
        (422, Some("no_usable_identifier")),
        (200, None),
        (409, Some("signal_id_reused")),
        (422, Some("invalid_identifier")),
    ];
    for (i, (result, (status, code))) in results.iter().zip(expected).enumerate() {
        assert_eq!(result["status"], status, "item {i}: {result}");
        match code {
            Some(code) => {
                let error = result["error"]
                    .as_object()
                    .unwrap_or_else(|| panic!("item {i}: {result}"));
                assert_eq!(error.len(), 3, "item {i}: {result}");
                assert_eq!(error["code"], code, "item {i}: {result}");
                assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
                assert_eq!(error["request_id"], request_id.as_str(), "item {i}");
                assert!(result.get("customer_id").is_none(), "item {i}: {result}");
            }
            None => {
                assert!(result.get("error").is_none(), "item {i}: {result}");
                assert_eq!(result["created"], status == 201, "item {i}: {result}");
            }
        }
    }

    // The good items were applied, the fifth onto the first's profile.
    let first = results[0]["customer_id"].as_str().unwrap();
    assert_eq!(results[4]["customer_id"], first);
    let profile = body(app.lookup("email", "batch-good@example.com").await).await;
    assert_eq!(profile["customer_id"], first);
    let ivr = body(app.lookup("phone", "+31612345678").await).await;
    assert_eq!(ivr["customer_id"], results[2]["customer_id"]);

    // The refused ones left nothing behind.
    for (kind, value) in [("email", "future@example.com"), ("phone", "0687654321")] {
        assert_error(app.lookup(kind, value).await, 404, "profile_not_found").await;
    }
    // The reused id still answers with its first result.
    let mut replay = signal("ivr", &[("phone", "06 1234 5678")]);
    replay["signal_id"] = json!("batch-ivr-1");
    let again = app.ingest(replay).await;
    assert_eq!(again["customer_id"], results[2]["customer_id"]);
}

/// An item that breaks what the published schema states makes the whole batch
/// a 422 naming the item, and nothing of the batch is applied: a sender with
/// a bug gets told, instead of a 200 that hides it.
#[tokio::test]
async fn a_batch_with_an_item_that_breaks_the_schema_is_refused_whole() {
    let app = spawn_app().await;
    let good = signal("web", &[("web_cookie", "batch-whole-good")]);
    let mut unknown_field = signal("chat", &[("email", "unknown-field@example.com")]);
    unknown_field["colour"] = json!("red");
    let mut long_id = signal("web", &[("web_cookie", "batch-whole-long-id")]);
    long_id["signal_id"] = json!("x".repeat(129));
    let mut bad_trait = signal("web", &[("web_cookie", "batch-whole-trait")]);
    bad_trait["traits"] = json!({"Nickname": "Annie"});
    let cases = [
        (
            signal("pigeon", &[("web_cookie", "batch-bad-channel")]),
            "unknown_channel",
            "signals[1]: channel `pigeon`",
        ),
        (unknown_field, "unknown_field", "signals[1].colour"),
        (json!("not a signal"), "invalid_field", "signals[1]"),
        (
            json!({"channel": "web", "identifiers": []}),
            "no_identifiers",
            "signals[1]: ",
        ),
        (
            signal("web", &[("shoe_size", "42")]),
            "unknown_identifier_type",
            "signals[1]: identifiers[0]",
        ),
        (long_id, "invalid_signal_id", "signals[1]: signal_id"),
        (bad_trait, "invalid_trait_name", "signals[1]: trait name"),
    ];
    for (bad, code, named) in cases {
        let resp = app.post_batch(vec![good.clone(), bad.clone()]).await;
        let error = assert_error(resp, 422, code).await;
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(named), "{code}: {message}");
    }
    // Not even the good item was applied.
    assert_error(
        app.lookup("web_cookie", "batch-whole-good").await,
        404,
        "profile_not_found",
    )
    .await;
}

/// Posts `body` with chunked transfer encoding, so no Content-Length announces
/// its size and the limit must hold while it streams in. Returns the status,
/// the `x-request-id` header and the body.
async fn post_chunked(app: &TestApp, path: &str, body: Vec<u8>) -> (u16, String, Value) {
    use std::io::{Read, Write};
    let port = app.port;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.admin
    );
    let raw = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        for chunk in body.chunks(8 * 1024) {
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(chunk);
            framed.extend_from_slice(b"\r\n");
            // The server may answer and close before it has read everything.
            if stream.write_all(&framed).is_err() {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8(response).expect("a UTF-8 response")
    })
    .await
    .unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response: {raw:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let request_id = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-id")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no x-request-id: {head}"));
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, request_id, body)
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_gets_413() {
    let app = spawn_app().await;
    let small = signal("web", &[("web_cookie", "chunked-small")]);
    let (status, _, result) =
        post_chunked(&app, "/v1/signals", serde_json::to_vec(&small).unwrap()).await;
    assert_eq!(status, 201, "{result}");

    let mut big = signal("web", &[("web_cookie", "chunked-big")]);
    big["traits"] = json!({ "notes": "x".repeat(80 * 1024) });
    let (status, request_id, error) =
        post_chunked(&app, "/v1/signals", serde_json::to_vec(&big).unwrap()).await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(
        error,
        json!({ "error": {
            "code": "payload_too_large",
            "message": "the body is larger than the limit of 65536 bytes",
            "request_id": request_id,
        } })
    );
    assert_error(
        app.lookup("web_cookie", "chunked-big").await,
        404,
        "profile_not_found",
    )
    .await;
}

fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

#[tokio::test]
async fn values_nested_too_deep_are_refused_and_deep_ones_stay_readable() {
    let app = spawn_app().await;
    let victim = app
        .ingest(signal("web", &[("email", "victim@example.com")]))
        .await;
    let victim = victim["customer_id"].as_str().unwrap();
    let too_deep = nested(33);
    let cases = [
        json!({"channel": "web", "identifiers": [{"type": "email", "value": "victim@example.com"}], "traits": {"x": too_deep}}),
        json!({"channel": "web", "identifiers": [{"type": "email", "value": "victim@example.com"}],
               "answers": [{"key": "q", "value": too_deep}]}),
        json!({"channel": "web", "identifiers": [{"type": "email", "value": "victim@example.com"}],
               "event": {"type": "page_view", "properties": {"p": nested(32)}}}),
    ];
    for case in &cases {
        assert_error(app.post_signal(case).await, 422, "value_too_deep").await;
    }
    let resp = app
        .patch_traits(
            victim,
            &json!({"channel": "agent", "traits": {"x": too_deep}}),
        )
        .await;
    assert_error(resp, 422, "value_too_deep").await;
    let resp = app
        .post_answers(
            victim,
            &json!({"channel": "agent", "answers": [{"key": "q", "value": too_deep}]}),
        )
        .await;
    assert_error(resp, 422, "value_too_deep").await;

    // The deepest accepted value stays readable, also once the profile is
    // merged (merged profiles store values a few levels deeper).
    app.ingest(
        json!({"channel": "web", "identifiers": [{"type": "email", "value": "victim@example.com"}],
                      "traits": {"x": nested(32)}, "answers": [{"key": "q", "value": nested(32)}]}),
    )
    .await;
    let other = app
        .ingest(signal("store", &[("loyalty_card", "LC-deep")]))
        .await;
    let other = other["customer_id"].as_str().unwrap();
    assert_eq!(app.merge(other, victim).await.status(), 200);
    let p = app.profile(other).await;
    assert_eq!(p["traits"]["x"]["value"], nested(32));
    assert_eq!(
        body(app.context_by("email", "victim@example.com").await).await["customer_id"],
        other
    );
}
