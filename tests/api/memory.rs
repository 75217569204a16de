//! Memory beyond identity (issue 7): journey rules and history, episodes with
//! a public status and the follow-ups they owe, consent history, segments and
//! offers (personalisation, and its consent), the export of everything, and
//! the start-up checks of their configuration.
//!
//! Segment windows are relative to now, so every `occurred_at` here is too,
//! to the whole second, so that times sent in come back spelled the same.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anamnesis::config::{JourneyRule, OfferSettings, SegmentSettings, Settings};
use chrono::{DateTime, FixedOffset, SecondsFormat, SubsecRound, TimeDelta, Utc};
use reqwest::{Method, Response};
use serde_json::{json, Value};

use crate::binary::free_port;
use crate::helpers::{
    assert_error, body, id_of, signal, spawn_app, spawn_app_with, TestApp, SECRET,
};

/// A well-formed customer id nobody has.
const NOBODY: &str = "cus_01ARZ3NDEKTSV4RRFFQ69G5FAV";
const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// A `due_before` later than every follow-up.
const FAR: &str = "2999-01-01T00:00:00Z";

// ---------------------------------------------------------------------------
// Time, configuration and request helpers.

/// Now, to the whole second.
fn now_s() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

/// `base` moved by `secs` seconds (negative: earlier).
fn shift(base: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    base + TimeDelta::seconds(secs)
}

/// RFC 3339 as the service writes whole seconds: `2026-11-22T09:15:00Z`.
fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A signal from `channel` for one identifier, at `at`, with `event`.
fn event_at(channel: &str, who: (&str, &str), at: DateTime<Utc>, event: Value) -> Value {
    json!({
        "channel": channel,
        "occurred_at": rfc(at),
        "identifiers": [{"type": who.0, "value": who.1}],
        "event": event,
    })
}

/// A page view from `channel` with these properties.
fn page_view(channel: &str, who: (&str, &str), at: DateTime<Utc>, properties: Value) -> Value {
    event_at(
        channel,
        who,
        at,
        json!({"type": "page_view", "properties": properties}),
    )
}

/// A signal that reports on an episode (`episode` is the `event.episode` object).
fn episode_at(
    channel: &str,
    who: (&str, &str),
    at: DateTime<Utc>,
    kind: &str,
    episode: Value,
) -> Value {
    event_at(channel, who, at, json!({"type": kind, "episode": episode}))
}

fn segment(when: Value) -> SegmentSettings {
    serde_json::from_value(json!({ "when": when })).expect("segment settings")
}

fn offer(title: &str, segments: &[&str], priority: i64, data: Value) -> OfferSettings {
    serde_json::from_value(json!({
        "title": title,
        "description": format!("About: {title}"),
        "segments": segments,
        "priority": priority,
        "data": data,
    }))
    .expect("offer settings")
}

/// At least two page views of `category` within 30 days.
fn shoppers_of(category: &str) -> SegmentSettings {
    segment(json!([{"interactions": {
        "type": "page_view",
        "properties": {"category": category},
        "at_least": 2,
        "within": "30days",
    }}]))
}

/// The dealer of the issue: sports car shoppers get the pink roadster, SUV
/// shoppers the black SUV (which ranks higher).
fn car_dealer(s: &mut Settings) {
    s.segments
        .insert("sports_car_shoppers".into(), shoppers_of("sports_car"));
    s.segments.insert("suv_shoppers".into(), shoppers_of("suv"));
    s.offers.insert(
        "pink_roadster".into(),
        offer(
            "Test drive the pink roadster",
            &["sports_car_shoppers"],
            10,
            json!({"image": "/img/pink.png"}),
        ),
    );
    s.offers.insert(
        "black_suv".into(),
        offer(
            "The black SUV, now in stock",
            &["suv_shoppers"],
            20,
            json!({"image": "/img/black-suv.png"}),
        ),
    );
}

/// The pink roadster offer as the personalisation of a sports car shopper shows it.
fn pink_roadster() -> Value {
    json!({
        "id": "pink_roadster",
        "title": "Test drive the pink roadster",
        "description": "About: Test drive the pink roadster",
        "priority": 10,
        "segments": ["sports_car_shoppers"],
        "data": {"image": "/img/pink.png"},
    })
}

async fn get_query(app: &TestApp, path: &str, query: &[(&str, &str)]) -> Response {
    app.request(Method::GET, path)
        .query(query)
        .send()
        .await
        .unwrap()
}

async fn get_query_as(app: &TestApp, token: &str, path: &str, query: &[(&str, &str)]) -> Response {
    app.client
        .get(format!("{}{path}", app.address))
        .bearer_auth(token)
        .query(query)
        .send()
        .await
        .unwrap()
}

/// The body of a response that must be 200.
async fn ok(resp: Response, what: &str) -> Value {
    let status = resp.status();
    let b = body(resp).await;
    assert_eq!(status, 200, "{what}: {b}");
    b
}

async fn episodes(app: &TestApp, id: &str, status: Option<&str>) -> Response {
    let query: Vec<(&str, &str)> = status.map(|s| ("status", s)).into_iter().collect();
    get_query(app, &format!("/v1/profiles/{id}/episodes"), &query).await
}

/// The episode ids of `GET /v1/profiles/{id}/episodes?status=...`, in order.
async fn episode_ids(app: &TestApp, id: &str, status: Option<&str>) -> Vec<String> {
    let list = ok(episodes(app, id, status).await, "episodes").await;
    assert_eq!(list["customer_id"], id, "{list}");
    field_list(&list["episodes"], "id")
}

/// The one episode `episode` of profile `id`, from the episodes list.
async fn episode(app: &TestApp, id: &str, episode: &str) -> Value {
    let list = ok(episodes(app, id, None).await, "episodes").await;
    list["episodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == episode)
        .unwrap_or_else(|| panic!("no episode {episode} in {list}"))
        .clone()
}

async fn follow_ups(app: &TestApp, query: &[(&str, &str)]) -> Response {
    get_query(app, "/v1/follow-ups", query).await
}

/// The follow-ups due before `due_before` (one page of 200).
async fn due_before(app: &TestApp, due_before: &str) -> Vec<Value> {
    let page = ok(
        follow_ups(app, &[("due_before", due_before), ("limit", "200")]).await,
        "follow-ups",
    )
    .await;
    assert!(page["next_cursor"].is_null(), "one page: {page}");
    page["follow_ups"].as_array().unwrap().clone()
}

async fn card(app: &TestApp, id: &str) -> Value {
    ok(app.context(id).await, "context").await
}

async fn put_consent(
    app: &TestApp,
    id: &str,
    purpose: &str,
    granted: bool,
    channel: &str,
) -> Response {
    app.request(
        Method::PUT,
        &format!("/v1/profiles/{id}/consents/{purpose}"),
    )
    .json(&json!({"granted": granted, "channel": channel}))
    .send()
    .await
    .unwrap()
}

async fn grant_personalization(app: &TestApp, id: &str) {
    let resp = put_consent(app, id, "personalization", true, "web").await;
    assert_eq!(resp.status(), 200, "consent granted");
}

async fn personalization(app: &TestApp, id: &str) -> Value {
    ok(
        app.get(&format!("/v1/profiles/{id}/personalization")).await,
        "personalization",
    )
    .await
}

async fn personalization_by(app: &TestApp, kind: &str, value: &str) -> Response {
    get_query(
        app,
        "/v1/personalization",
        &[("type", kind), ("value", value)],
    )
    .await
}

/// The segments a profile is in (it must have granted personalisation).
async fn segments_of(app: &TestApp, id: &str) -> Vec<String> {
    let p = personalization(app, id).await;
    assert_eq!(p["consent"], true, "{p}");
    p["segments"]
        .as_array()
        .unwrap_or_else(|| panic!("no segments in {p}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// `field` of each object of a JSON array, in order.
fn field_list(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|e| {
            e[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field} in {e}"))
                .to_owned()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Journey.

/// An explicit `journey_stage` beats a `[[journey.rules]]` entry, which beats
/// `event_stages`; the history keeps, per stage, when and on which channel it
/// was first and last reached, ordered by first reach whatever the arrival
/// order.
#[tokio::test]
async fn journey_stage_comes_from_the_signal_then_the_rules_then_the_event_type() {
    let app = spawn_app_with(|s| {
        s.journey.rules = vec![serde_json::from_value::<JourneyRule>(json!({
            "event": "page_view",
            "properties": {"category": "checkout"},
            "stage": "purchase",
        }))
        .unwrap()];
    })
    .await;
    let t = now_s();
    let who = ("email", "journey@example.com");
    // A page view the rule does not match: awareness, by event_stages.
    let id = id_of(
        &app.ingest(page_view(
            "web",
            who,
            shift(t, -5 * HOUR),
            json!({"category": "shoes"}),
        ))
        .await,
    );
    assert_eq!(app.profile(&id).await["journey"]["stage"], "awareness");
    // The rule matches on type and the listed property; others do not matter.
    app.ingest(page_view(
        "app",
        who,
        shift(t, -4 * HOUR),
        json!({"category": "checkout", "path": "/checkout/pay"}),
    ))
    .await;
    let p = app.profile(&id).await;
    assert_eq!(p["journey"]["stage"], "purchase", "{p}");
    assert_eq!(p["journey"]["updated_at"], rfc(shift(t, -4 * HOUR)));
    // Property values compare as JSON: "Checkout" is not "checkout".
    app.ingest(page_view(
        "app",
        who,
        shift(t, -3 * HOUR - 30 * MINUTE),
        json!({"category": "Checkout"}),
    ))
    .await;
    assert_eq!(app.profile(&id).await["journey"]["stage"], "awareness");
    // An explicit stage beats the rule.
    app.ingest(event_at(
        "chat",
        who,
        shift(t, -3 * HOUR),
        json!({"type": "page_view", "journey_stage": "service", "properties": {"category": "checkout"}}),
    ))
    .await;
    assert_eq!(app.profile(&id).await["journey"]["stage"], "service");
    app.ingest(page_view("app", who, shift(t, -2 * HOUR), json!({})))
        .await;
    // A checkout seen in the store long ago arrives last: it is the first
    // purchase, but the current stage stays the latest one.
    app.ingest(page_view(
        "store",
        who,
        shift(t, -6 * HOUR),
        json!({"category": "checkout"}),
    ))
    .await;

    let p = app.profile(&id).await;
    assert_eq!(
        p["journey"],
        json!({
            "stage": "awareness",
            "updated_at": rfc(shift(t, -2 * HOUR)),
            "history": [
                {"stage": "purchase",
                 "first_at": rfc(shift(t, -6 * HOUR)), "first_channel": "store",
                 "last_at": rfc(shift(t, -4 * HOUR)), "last_channel": "app"},
                {"stage": "awareness",
                 "first_at": rfc(shift(t, -5 * HOUR)), "first_channel": "web",
                 "last_at": rfc(shift(t, -2 * HOUR)), "last_channel": "app"},
                {"stage": "service",
                 "first_at": rfc(shift(t, -3 * HOUR)), "first_channel": "chat",
                 "last_at": rfc(shift(t, -3 * HOUR)), "last_channel": "chat"},
            ],
        })
    );
    assert_eq!(card(&app, &id).await["journey_stage"], "awareness");
    // Each interaction keeps the stage it was given.
    let timeline = ok(app.timeline(&id, &[]).await, "timeline").await;
    assert_eq!(
        field_list(&timeline["interactions"], "journey_stage"),
        [
            "awareness",
            "service",
            "awareness",
            "purchase",
            "awareness",
            "purchase"
        ]
    );
}

/// Rules are tried in order and the first match wins; a rule with no
/// properties matches every event of its type, ahead of `event_stages`.
#[tokio::test]
async fn the_first_matching_journey_rule_wins() {
    let app = spawn_app_with(|s| {
        s.journey.rules = serde_json::from_value::<Vec<JourneyRule>>(json!([
            {"event": "page_view", "properties": {"category": "checkout"}, "stage": "purchase"},
            {"event": "page_view", "stage": "consideration"},
        ]))
        .unwrap();
    })
    .await;
    let t = now_s();
    let who = ("web_cookie", "ck-rules");
    let id = id_of(
        &app.ingest(page_view(
            "web",
            who,
            shift(t, -2 * HOUR),
            json!({"category": "checkout"}),
        ))
        .await,
    );
    assert_eq!(app.profile(&id).await["journey"]["stage"], "purchase");
    app.ingest(page_view(
        "web",
        who,
        shift(t, -HOUR),
        json!({"category": "shoes"}),
    ))
    .await;
    assert_eq!(
        app.profile(&id).await["journey"]["stage"],
        "consideration",
        "the catch-all rule beats event_stages (page_view = awareness)"
    );
    // Other event types still follow event_stages.
    app.ingest(event_at("web", who, t, json!({"type": "add_to_cart"})))
        .await;
    let p = app.profile(&id).await;
    assert_eq!(p["journey"]["stage"], "consideration");
    assert_eq!(
        field_list(&p["journey"]["history"], "stage"),
        ["purchase", "consideration"]
    );
}

// ---------------------------------------------------------------------------
// Episodes.

/// Episodes keep a public status across channels; the list puts unresolved
/// ones first (latest update first) and then resolved ones (newest first),
/// filters by one status or a comma list, and refuses unknown statuses; the
/// card shows them in the same order.
#[tokio::test]
async fn episodes_are_listed_unresolved_first_and_filtered_by_status() {
    let app = spawn_app().await;
    let t = now_s();
    let who = ("email", "episodes@example.com");
    let id = id_of(
        &app.ingest(episode_at(
            "chat",
            who,
            shift(t, -6 * HOUR),
            "complaint",
            json!({"id": "case-1", "title": "Broken screen", "status": "open"}),
        ))
        .await,
    );
    for s in [
        episode_at(
            "web",
            who,
            shift(t, -5 * HOUR),
            "order_placed",
            json!({"id": "order-1", "title": "Order 1", "status": "open", "public_status": "Order received"}),
        ),
        episode_at(
            "email",
            who,
            shift(t, -2 * HOUR),
            "email_sent",
            json!({"id": "order-1", "status": "waiting_on_customer", "public_status": "Please send a photo of the label"}),
        ),
        episode_at(
            "web",
            who,
            shift(t, -4 * HOUR),
            "order_placed",
            json!({"id": "order-2", "title": "Order 2", "status": "open", "public_status": "Packed"}),
        ),
        episode_at(
            "store",
            who,
            shift(t, -3 * HOUR),
            "picked_up",
            json!({"id": "order-2", "status": "resolved"}),
        ),
        episode_at(
            "web",
            who,
            shift(t, -7 * HOUR),
            "order_placed",
            json!({"id": "order-3", "title": "Order 3", "status": "open"}),
        ),
        episode_at(
            "chat",
            who,
            shift(t, -HOUR),
            "chat_message",
            json!({"id": "order-3", "status": "resolved", "public_status": "Refunded"}),
        ),
    ] {
        app.ingest(s).await;
    }

    let list = ok(episodes(&app, &id, None).await, "episodes").await;
    assert_eq!(list["customer_id"], id.as_str());
    assert_eq!(
        field_list(&list["episodes"], "id"),
        ["order-1", "case-1", "order-3", "order-2"]
    );
    assert_eq!(
        list["episodes"][0],
        json!({
            "id": "order-1", "title": "Order 1", "status": "waiting_on_customer",
            "public_status": "Please send a photo of the label",
            "opened_at": rfc(shift(t, -5 * HOUR)), "updated_at": rfc(shift(t, -2 * HOUR)),
            "channels": ["email", "web"], "last_channel": "email",
            "resolved_at": null, "feedback": null, "follow_up_due_at": null,
        })
    );
    // A report without a public status keeps the last one; the default delay is two days.
    assert_eq!(
        list["episodes"][3],
        json!({
            "id": "order-2", "title": "Order 2", "status": "resolved", "public_status": "Packed",
            "opened_at": rfc(shift(t, -4 * HOUR)), "updated_at": rfc(shift(t, -3 * HOUR)),
            "channels": ["store", "web"], "last_channel": "store",
            "resolved_at": rfc(shift(t, -3 * HOUR)), "feedback": null,
            "follow_up_due_at": rfc(shift(t, -3 * HOUR + 2 * DAY)),
        })
    );
    assert_eq!(list["episodes"][2]["public_status"], "Refunded");
    assert_eq!(list["episodes"][2]["resolved_at"], rfc(shift(t, -HOUR)));
    assert_eq!(list["episodes"][1]["public_status"], Value::Null);
    // The profile holds the same views.
    let profile_episodes = app.profile(&id).await["episodes"].clone();
    let order_1 = profile_episodes
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "order-1")
        .cloned();
    assert_eq!(order_1.as_ref(), Some(&list["episodes"][0]));

    assert_eq!(episode_ids(&app, &id, Some("open")).await, ["case-1"]);
    assert_eq!(
        episode_ids(&app, &id, Some("open,waiting_on_customer")).await,
        ["order-1", "case-1"]
    );
    assert_eq!(
        episode_ids(&app, &id, Some("resolved")).await,
        ["order-3", "order-2"]
    );
    assert_eq!(
        episode_ids(&app, &id, Some("waiting_on_us")).await,
        Vec::<String>::new()
    );
    for bad in ["closed", "open,nope", "open;resolved"] {
        assert_error(episodes(&app, &id, Some(bad)).await, 400, "invalid_query").await;
    }
    assert_error(episodes(&app, NOBODY, None).await, 404, "profile_not_found").await;

    let c = card(&app, &id).await;
    assert_eq!(
        field_list(&c["episodes"], "id"),
        ["order-1", "case-1", "order-3", "order-2"]
    );
    assert_eq!(c["episodes"][0], list["episodes"][0]);
    assert_eq!(field_list(&c["open_episodes"], "id"), ["order-1", "case-1"]);
    // Both resolved episodes await feedback, due two days after resolution: soonest first.
    assert_eq!(
        c["follow_ups"],
        json!([
            {"episode_id": "order-2", "title": "Order 2", "due_at": rfc(shift(t, -3 * HOUR + 2 * DAY))},
            {"episode_id": "order-3", "title": "Order 3", "due_at": rfc(shift(t, -HOUR + 2 * DAY))},
        ])
    );
    // Neither is due yet.
    assert_eq!(
        ok(follow_ups(&app, &[]).await, "follow-ups").await["follow_ups"],
        json!([])
    );
}

/// A merged-away id answers the episodes list with a redirect to the survivor.
#[tokio::test]
async fn episodes_of_a_merged_away_profile_redirect_to_the_survivor() {
    let app = spawn_app().await;
    let t = now_s();
    let anon = id_of(
        &app.ingest(episode_at(
            "web",
            ("web_cookie", "ck-ep"),
            shift(t, -HOUR),
            "return_requested",
            json!({"id": "return-1", "title": "Return", "status": "open"}),
        ))
        .await,
    );
    let known = id_of(&app.ingest(signal("store", &[("account_id", "C-55")])).await);
    let login = app
        .ingest(signal(
            "web",
            &[("web_cookie", "ck-ep"), ("account_id", "C-55")],
        ))
        .await;
    assert_eq!(login["merged_ids"], json!([anon]));
    let resp = episodes(&app, &anon, Some("open")).await;
    assert_eq!(
        resp.headers().get("canonical-customer-id").unwrap(),
        known.as_str()
    );
    assert_error(resp, 308, "profile_merged").await;
    assert_eq!(episode_ids(&app, &known, Some("open")).await, ["return-1"]);
}

// ---------------------------------------------------------------------------
// Follow-ups.

/// One hour between resolution and follow-up.
fn one_hour_follow_ups(s: &mut Settings) {
    s.follow_ups.delay = Duration::from_secs(3600);
}

/// Opens `episode` for `who` at `opened`, resolves it at `resolved`; returns the customer id.
async fn resolved_episode(
    app: &TestApp,
    who: (&str, &str),
    episode: &str,
    opened: DateTime<Utc>,
    resolved: DateTime<Utc>,
) -> String {
    let id = id_of(
        &app.ingest(episode_at(
            "chat",
            who,
            opened,
            "order_placed",
            json!({"id": episode, "title": format!("Order {episode}"), "status": "open"}),
        ))
        .await,
    );
    app.ingest(episode_at(
        "web",
        who,
        resolved,
        "delivered",
        json!({"id": episode, "status": "resolved"}),
    ))
    .await;
    id
}

/// The proof: an order episode over three channels is resolved, its
/// follow-up falls due `follow_ups.delay` later, shows on the list and the
/// card, and goes away when the customer's feedback arrives, which the
/// episode and the profile's `nps` trait then hold.
#[tokio::test]
async fn a_resolved_episode_owes_a_follow_up_until_feedback_arrives() {
    let app = spawn_app_with(one_hour_follow_ups).await;
    let t = now_s();
    let who = ("email", "follow-up@example.com");
    let order = "order-B-2002";
    let id = id_of(
        &app.ingest(episode_at(
            "chat",
            who,
            shift(t, -5 * HOUR),
            "order_placed",
            json!({"id": order, "title": "Order B-2002", "status": "open", "public_status": "We received your order"}),
        ))
        .await,
    );
    app.ingest(episode_at(
        "web",
        who,
        shift(t, -4 * HOUR),
        "delivery_tracked",
        json!({"id": order, "status": "waiting_on_us", "public_status": "On its way"}),
    ))
    .await;
    assert_eq!(
        due_before(&app, FAR).await,
        Vec::<Value>::new(),
        "not resolved yet"
    );
    assert_eq!(
        episode(&app, &id, order).await["follow_up_due_at"],
        Value::Null
    );

    app.ingest(episode_at(
        "ivr",
        who,
        shift(t, -3 * HOUR),
        "call_started",
        json!({"id": order, "status": "resolved", "public_status": "Delivered"}),
    ))
    .await;
    let resolved = json!({
        "id": order, "title": "Order B-2002", "status": "resolved", "public_status": "Delivered",
        "opened_at": rfc(shift(t, -5 * HOUR)), "updated_at": rfc(shift(t, -3 * HOUR)),
        "channels": ["chat", "ivr", "web"], "last_channel": "ivr",
        "resolved_at": rfc(shift(t, -3 * HOUR)), "feedback": null,
        "follow_up_due_at": rfc(shift(t, -2 * HOUR)),
    });
    assert_eq!(episode(&app, &id, order).await, resolved);
    assert_eq!(app.profile(&id).await["episodes"], json!([resolved]));

    // Due at resolved_at + delay: listed by default (due before now)...
    let entry = json!({
        "customer_id": id, "episode_id": order, "title": "Order B-2002",
        "resolved_at": rfc(shift(t, -3 * HOUR)), "due_at": rfc(shift(t, -2 * HOUR)),
        "channels": ["chat", "ivr", "web"], "last_channel": "ivr",
    });
    let page = ok(follow_ups(&app, &[]).await, "follow-ups").await;
    assert_eq!(page, json!({"follow_ups": [entry], "next_cursor": null}));
    assert_eq!(due_before(&app, FAR).await, std::slice::from_ref(&entry));
    // ...but not before it is due.
    assert_eq!(
        due_before(&app, &rfc(shift(t, -2 * HOUR - 1))).await,
        Vec::<Value>::new()
    );

    let c = card(&app, &id).await;
    assert_eq!(
        c["follow_ups"],
        json!([{"episode_id": order, "title": "Order B-2002", "due_at": rfc(shift(t, -2 * HOUR))}])
    );
    assert_eq!(field_list(&c["episodes"], "id"), [order]);
    assert_eq!(c["open_episodes"], json!([]));

    // The customer answers the survey.
    app.ingest(json!({
        "signal_id": "fb-1",
        "channel": "web",
        "occurred_at": rfc(shift(t, -HOUR)),
        "identifiers": [{"type": who.0, "value": who.1}],
        "event": {"type": "survey_answered", "episode": {"id": order,
                  "feedback": {"nps": 9, "comment": "Quick and friendly"}}},
    }))
    .await;
    assert_eq!(due_before(&app, FAR).await, Vec::<Value>::new());
    assert_eq!(
        ok(follow_ups(&app, &[]).await, "follow-ups").await,
        json!({"follow_ups": [], "next_cursor": null})
    );
    assert_eq!(card(&app, &id).await["follow_ups"], json!([]));
    let answered = episode(&app, &id, order).await;
    assert_eq!(
        answered["feedback"],
        json!({"nps": 9, "ces": null, "comment": "Quick and friendly", "channel": "web", "at": rfc(shift(t, -HOUR))})
    );
    assert_eq!(answered["status"], "resolved");
    assert_eq!(answered["resolved_at"], rfc(shift(t, -3 * HOUR)));
    assert_eq!(answered["follow_up_due_at"], Value::Null);
    let p = app.profile(&id).await;
    assert_eq!(
        p["traits"]["nps"],
        json!({"value": 9, "channel": "web", "observed_at": rfc(shift(t, -HOUR)), "signal_id": "fb-1"})
    );
    assert!(p["traits"].get("ces").is_none(), "{p}");
    // A customer effort score lands as its own trait.
    app.ingest(event_at(
        "chat",
        who,
        shift(t, -30 * MINUTE),
        json!({"type": "survey_answered", "episode": {"id": order, "feedback": {"ces": 2}}}),
    ))
    .await;
    assert_eq!(app.profile(&id).await["traits"]["ces"]["value"], 2);
    assert_eq!(app.profile(&id).await["traits"]["nps"]["value"], 9);
}

/// Feedback out of range, empty, or about no episode is refused with a
/// stable code, and changes nothing: the follow-up stays due.
#[tokio::test]
async fn bad_feedback_is_refused_and_the_follow_up_stays() {
    let app = spawn_app_with(one_hour_follow_ups).await;
    let t = now_s();
    let who = ("email", "bad-feedback@example.com");
    let id = resolved_episode(&app, who, "o-1", shift(t, -5 * HOUR), shift(t, -3 * HOUR)).await;
    let with_feedback = |feedback: Value| {
        event_at(
            "web",
            who,
            shift(t, -HOUR),
            json!({"type": "survey_answered", "episode": {"id": "o-1", "feedback": feedback}}),
        )
    };
    for feedback in [
        json!({"nps": 11}),
        json!({"ces": 0}),
        json!({"ces": 8}),
        json!({"nps": 10, "ces": 8}),
        json!({}),
        json!({"comment": "no score at all"}),
    ] {
        let resp = app.post_signal(&with_feedback(feedback.clone())).await;
        let b = assert_error(resp, 422, "invalid_feedback").await;
        assert!(
            b["error"]["message"].as_str().unwrap().contains("feedback"),
            "{feedback}: {b}"
        );
    }
    // Not even an integer: refused (as a bad feedback or a bad field type).
    for feedback in [json!({"nps": -1}), json!({"nps": 9.5}), json!({"nps": "9"})] {
        let resp = app.post_signal(&with_feedback(feedback.clone())).await;
        assert_eq!(resp.status(), 422, "{feedback}");
        let b = body(resp).await;
        let code = b["error"]["code"].as_str().unwrap_or_default();
        assert!(
            code == "invalid_feedback" || code == "invalid_field",
            "{feedback}: {b}"
        );
    }
    // Feedback is about an episode: it has no place outside one.
    let no_episode = event_at(
        "web",
        who,
        shift(t, -HOUR),
        json!({"type": "survey_answered", "feedback": {"nps": 9}}),
    );
    assert_error(app.post_signal(&no_episode).await, 422, "unknown_field").await;
    let long_status = episode_at(
        "web",
        who,
        shift(t, -HOUR),
        "status_update",
        json!({"id": "o-1", "public_status": "x".repeat(2001)}),
    );
    assert_error(app.post_signal(&long_status).await, 422, "text_too_long").await;

    let listed = due_before(&app, FAR).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["customer_id"], id.as_str());
    assert_eq!(listed[0]["due_at"], rfc(shift(t, -2 * HOUR)));
    let e = episode(&app, &id, "o-1").await;
    assert_eq!(e["feedback"], Value::Null);
    assert_eq!(e["public_status"], Value::Null);
    let p = app.profile(&id).await;
    assert!(p["traits"].get("nps").is_none(), "{p}");
    assert!(p["traits"].get("ces").is_none(), "{p}");
}

/// Reopening an episode withdraws its follow-up; resolving it again owes a
/// new one, from the new resolution, which feedback given before that
/// resolution (even arriving late) does not settle.
#[tokio::test]
async fn reopening_withdraws_the_follow_up_and_only_later_feedback_settles_it() {
    let app = spawn_app_with(one_hour_follow_ups).await;
    let t = now_s();
    let who = ("email", "reopen@example.com");
    let id = resolved_episode(&app, who, "o-2", shift(t, -6 * HOUR), shift(t, -5 * HOUR)).await;
    assert_eq!(due_before(&app, FAR).await.len(), 1);

    app.ingest(episode_at(
        "chat",
        who,
        shift(t, -4 * HOUR),
        "complaint",
        json!({"id": "o-2", "status": "open", "public_status": "Looking into it again"}),
    ))
    .await;
    assert_eq!(due_before(&app, FAR).await, Vec::<Value>::new());
    let e = episode(&app, &id, "o-2").await;
    assert_eq!(e["status"], "open");
    assert_eq!(e["resolved_at"], Value::Null);
    assert_eq!(e["follow_up_due_at"], Value::Null);
    assert_eq!(card(&app, &id).await["follow_ups"], json!([]));

    app.ingest(episode_at(
        "chat",
        who,
        shift(t, -2 * HOUR),
        "chat_message",
        json!({"id": "o-2", "status": "resolved"}),
    ))
    .await;
    let listed = due_before(&app, FAR).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["resolved_at"], rfc(shift(t, -2 * HOUR)));
    assert_eq!(listed[0]["due_at"], rfc(shift(t, -HOUR)));

    // Feedback from before this resolution arrives late: still due.
    app.ingest(event_at(
        "web",
        who,
        shift(t, -3 * HOUR),
        json!({"type": "survey_answered", "episode": {"id": "o-2", "feedback": {"nps": 3}}}),
    ))
    .await;
    assert_eq!(due_before(&app, FAR).await.len(), 1);
    assert_eq!(
        episode(&app, &id, "o-2").await["follow_up_due_at"],
        rfc(shift(t, -HOUR))
    );
    // Feedback at the resolution's instant or later settles it.
    app.ingest(event_at(
        "web",
        who,
        shift(t, -2 * HOUR),
        json!({"type": "survey_answered", "episode": {"id": "o-2", "feedback": {"nps": 8}}}),
    ))
    .await;
    assert_eq!(due_before(&app, FAR).await, Vec::<Value>::new());
    assert_eq!(app.profile(&id).await["traits"]["nps"]["value"], 8);
}

/// A follow-up follows its episode into the survivor of a merge (listed
/// once, under the survivor), and leaves with an erased profile.
#[tokio::test]
async fn follow_ups_move_with_a_merge_and_leave_with_an_erasure() {
    let app = spawn_app_with(one_hour_follow_ups).await;
    let t = now_s();
    let known = id_of(
        &app.ingest(signal(
            "store",
            &[("account_id", "C-7"), ("email", "fiona@example.com")],
        ))
        .await,
    );
    let anon = resolved_episode(
        &app,
        ("web_cookie", "ck-f"),
        "return-9",
        shift(t, -5 * HOUR),
        shift(t, -3 * HOUR),
    )
    .await;
    assert_ne!(anon, known);
    let listed = due_before(&app, FAR).await;
    assert_eq!(
        field_list(&Value::from(listed.clone()), "customer_id"),
        [anon.as_str()]
    );

    let login = app
        .ingest(json!({
            "channel": "web",
            "occurred_at": rfc(shift(t, -MINUTE)),
            "identifiers": [{"type": "web_cookie", "value": "ck-f"}, {"type": "account_id", "value": "C-7"}],
            "event": {"type": "login"},
        }))
        .await;
    assert_eq!(id_of(&login), known);
    assert_eq!(login["merged_ids"], json!([anon]));
    let listed = due_before(&app, FAR).await;
    assert_eq!(listed.len(), 1, "listed once: {listed:?}");
    assert_eq!(listed[0]["customer_id"], known.as_str());
    assert_eq!(listed[0]["episode_id"], "return-9");
    assert_eq!(listed[0]["due_at"], rfc(shift(t, -2 * HOUR)));
    assert_eq!(
        card(&app, &known).await["follow_ups"],
        json!([{"episode_id": "return-9", "title": "Order return-9", "due_at": rfc(shift(t, -2 * HOUR))}])
    );

    assert_eq!(app.erase(&known).await.status(), 204);
    assert_eq!(due_before(&app, FAR).await, Vec::<Value>::new());
    assert_error(episodes(&app, &known, None).await, 404, "profile_not_found").await;
}

/// The list is ordered by due time, pages with `limit` and `next_cursor`,
/// reads `due_before` with any offset, and refuses bad queries and tokens
/// without `profiles:read`.
#[tokio::test]
async fn follow_ups_page_by_due_time() {
    let app = spawn_app_with(one_hour_follow_ups).await;
    let t = now_s();
    // Resolved 3, 5 and 4 hours ago: due 2, 4 and 3 hours ago.
    let mut ids = Vec::new();
    for (n, resolved) in [(1, 3), (2, 5), (3, 4)] {
        let email = format!("page-{n}@example.com");
        ids.push(
            resolved_episode(
                &app,
                ("email", email.as_str()),
                // Characters a URL would need escaped: the cursor must not.
                &format!("o+{n}&#%"),
                shift(t, -6 * HOUR),
                shift(t, -resolved * HOUR),
            )
            .await,
        );
    }
    let expected = [ids[1].clone(), ids[2].clone(), ids[0].clone()];

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..4 {
        let mut query = vec![("due_before", FAR.to_owned()), ("limit", "1".to_owned())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = ok(follow_ups(&app, &query).await, "follow-ups page").await;
        let entries = page["follow_ups"].as_array().unwrap();
        assert!(entries.len() <= 1, "{page}");
        seen.extend(field_list(&page["follow_ups"], "customer_id"));
        match page["next_cursor"].as_str() {
            Some(c) => {
                let url_safe = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
                assert!(c.bytes().all(url_safe), "{c}");
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(seen, expected);
    assert!(cursor.is_some(), "the first pages pointed further");
    let all = due_before(&app, FAR).await;
    assert_eq!(
        field_list(&Value::from(all.clone()), "due_at"),
        [
            rfc(shift(t, -4 * HOUR)),
            rfc(shift(t, -3 * HOUR)),
            rfc(shift(t, -2 * HOUR))
        ]
    );

    // Half an hour after the first is due, written in +02:00.
    let plus_two = FixedOffset::east_opt(2 * 3600).unwrap();
    let cut = shift(t, -4 * HOUR + 30 * MINUTE)
        .with_timezone(&plus_two)
        .to_rfc3339_opts(SecondsFormat::Secs, false);
    assert!(cut.ends_with("+02:00"), "{cut}");
    assert_eq!(
        field_list(&Value::from(due_before(&app, &cut).await), "customer_id"),
        [ids[1].as_str()]
    );

    for query in [
        [("limit", "0")],
        [("limit", "201")],
        [("due_before", "tomorrow")],
        [("due_before", "2026-13-01T00:00:00Z")],
    ] {
        assert_error(follow_ups(&app, &query).await, 400, "invalid_query").await;
    }
    let writer = app.token(&["signals:write"], None);
    assert_error(
        get_query_as(&app, &writer, "/v1/follow-ups", &[]).await,
        403,
        "insufficient_scope",
    )
    .await;
    let reader = app.token(&["profiles:read"], None);
    let page = ok(
        get_query_as(&app, &reader, "/v1/follow-ups", &[("due_before", FAR)]).await,
        "reader",
    )
    .await;
    assert_eq!(page["follow_ups"].as_array().unwrap().len(), 3);
}

// ---------------------------------------------------------------------------
// Consent.

/// A consent decision keeps its history, newest first and at most 20, beside
/// the current decision; unknown purposes are refused as before.
#[tokio::test]
async fn consents_keep_their_history_newest_first() {
    let app = spawn_app().await;
    let id = id_of(
        &app.ingest(signal("web", &[("web_cookie", "ck-consent")]))
            .await,
    );
    let resp = put_consent(&app, &id, "personalization", true, "web").await;
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let resp = put_consent(&app, &id, "personalization", false, "app").await;
    assert_eq!(resp.status(), 200);
    let returned = body(resp).await;

    let p = app.profile(&id).await;
    assert_eq!(returned["consents"], p["consents"]);
    let consent = &p["consents"]["personalization"];
    assert_eq!(consent["granted"], false, "{consent}");
    assert_eq!(consent["channel"], "app");
    let history = consent["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{consent}");
    assert_eq!(
        history[0],
        json!({"granted": false, "channel": "app", "at": consent["at"]})
    );
    assert_eq!(history[1]["granted"], true);
    assert_eq!(history[1]["channel"], "web");
    let when = |e: &Value| DateTime::parse_from_rfc3339(e["at"].as_str().unwrap()).unwrap();
    assert!(
        when(&history[1]) < when(&history[0]),
        "newest first: {consent}"
    );
    // Other purposes are untouched.
    assert!(p["consents"].get("marketing").is_none(), "{p}");

    // At most 20 decisions are kept, the newest.
    for n in 0..21 {
        let channel = if n % 2 == 0 { "web" } else { "chat" };
        let resp = put_consent(&app, &id, "personalization", n % 2 == 0, channel).await;
        assert_eq!(resp.status(), 200);
    }
    let consent = app.profile(&id).await["consents"]["personalization"].clone();
    let history = consent["history"].as_array().unwrap();
    assert_eq!(history.len(), 20, "{consent}");
    assert_eq!(
        history[0]["granted"], true,
        "the 21st decision (n = 20) grants"
    );
    assert_eq!(history[0]["channel"], "web");
    assert_eq!(history[0]["at"], consent["at"]);
    assert_eq!(consent["granted"], true);

    assert_error(
        put_consent(&app, &id, "carrier_pigeons", true, "web").await,
        404,
        "unknown_purpose",
    )
    .await;
}

// ---------------------------------------------------------------------------
// Personalisation: segments and offers.

/// Browses anonymously with `cookie`: two sports car pages and one SUV page,
/// in the last three hours. Returns the anonymous profile's id.
async fn browse_anonymously(app: &TestApp, cookie: &str, t: DateTime<Utc>) -> String {
    let who = ("web_cookie", cookie);
    let mut id = String::new();
    for (at, category, path) in [
        (-3 * HOUR, "sports_car", "/cars/pink-sports"),
        (-2 * HOUR, "suv", "/cars/black-suv"),
        (
            -2 * HOUR + 5 * MINUTE,
            "sports_car",
            "/cars/pink-sports/configure",
        ),
    ] {
        let r = app
            .ingest(page_view(
                "web",
                who,
                shift(t, at),
                json!({"category": category, "path": path}),
            ))
            .await;
        if !id.is_empty() {
            assert_eq!(id_of(&r), id, "one cookie, one profile");
        }
        id = id_of(&r);
    }
    id
}

/// The customer logs in with `account` on the browsing cookie.
async fn log_in(app: &TestApp, cookie: &str, account: &str, t: DateTime<Utc>) -> Value {
    app.ingest(json!({
        "channel": "web",
        "occurred_at": rfc(shift(t, -HOUR)),
        "identifiers": [{"type": "web_cookie", "value": cookie}, {"type": "account_id", "value": account}],
        "event": {"type": "login"},
    }))
    .await
}

/// The headline: someone who looked at the pink sports car twice
/// (anonymously) and at an SUV once is offered the pink roadster, not the
/// black SUV, once logged in and consenting; by id and by cookie.
#[tokio::test]
async fn the_pink_sports_car_shopper_is_offered_the_pink_roadster() {
    let app = spawn_app_with(car_dealer).await;
    let t = now_s();
    let anon = browse_anonymously(&app, "ck-pink", t).await;
    let login = log_in(&app, "ck-pink", "C-2001", t).await;
    assert_eq!(id_of(&login), anon);
    assert_eq!(login["merged_ids"], json!([]));

    // Consent is opt-in: nothing before it is given.
    assert_eq!(
        personalization(&app, &anon).await,
        json!({"customer_id": anon, "consent": false, "reason": "consent_not_given", "segments": [], "offers": []})
    );
    grant_personalization(&app, &anon).await;

    // A front end's token reads it without pii:read.
    let front = app.token(&["profiles:read"], None);
    let p = ok(
        get_query_as(
            &app,
            &front,
            &format!("/v1/profiles/{anon}/personalization"),
            &[],
        )
        .await,
        "personalization",
    )
    .await;
    assert_eq!(
        p,
        json!({
            "customer_id": anon, "consent": true, "reason": null,
            "segments": ["sports_car_shoppers"],
            "offers": [pink_roadster()],
        })
    );
    // The same through the cookie and the account id.
    assert_eq!(
        ok(
            personalization_by(&app, "web_cookie", "ck-pink").await,
            "by cookie"
        )
        .await,
        p
    );
    assert_eq!(
        ok(
            personalization_by(&app, "account_id", "C-2001").await,
            "by account"
        )
        .await,
        p
    );
    assert_error(
        personalization_by(&app, "web_cookie", "ck-nobody").await,
        404,
        "profile_not_found",
    )
    .await;
    assert_error(
        app.get(&format!("/v1/profiles/{NOBODY}/personalization"))
            .await,
        404,
        "profile_not_found",
    )
    .await;
    let writer = app.token(&["signals:write"], None);
    assert_error(
        app.get_as(&writer, &format!("/v1/profiles/{anon}/personalization"))
            .await,
        403,
        "insufficient_scope",
    )
    .await;

    // A second SUV page puts them in both segments: the SUV ranks first.
    app.ingest(page_view(
        "web",
        ("web_cookie", "ck-pink"),
        shift(t, -30 * MINUTE),
        json!({"category": "suv"}),
    ))
    .await;
    let p = personalization(&app, &anon).await;
    assert_eq!(
        p["segments"],
        json!(["sports_car_shoppers", "suv_shoppers"])
    );
    assert_eq!(
        field_list(&p["offers"], "id"),
        ["black_suv", "pink_roadster"]
    );
}

/// When the login merges the anonymous browsing into the customer the
/// service already knew, the survivor is the one offered the pink roadster.
#[tokio::test]
async fn the_pink_roadster_follows_the_browsing_into_the_known_customer() {
    let app = spawn_app_with(car_dealer).await;
    let t = now_s();
    let known = id_of(
        &app.ingest(json!({
            "channel": "store",
            "occurred_at": rfc(shift(t, -10 * DAY)),
            "identifiers": [{"type": "account_id", "value": "C-1001"}, {"type": "email", "value": "anna@example.com"}],
            "traits": {"first_name": "Anna"},
        }))
        .await,
    );
    let anon = browse_anonymously(&app, "ck-77", t).await;
    assert_ne!(anon, known);
    let login = log_in(&app, "ck-77", "C-1001", t).await;
    assert_eq!(id_of(&login), known);
    assert_eq!(login["merged_ids"], json!([anon]));

    grant_personalization(&app, &known).await;
    let p = personalization(&app, &known).await;
    assert_eq!(p["customer_id"], known.as_str());
    assert_eq!(p["segments"], json!(["sports_car_shoppers"]));
    assert_eq!(p["offers"], json!([pink_roadster()]));
    assert_eq!(
        ok(
            personalization_by(&app, "web_cookie", "ck-77").await,
            "by cookie"
        )
        .await,
        p
    );
}

/// Withdrawing consent removes personalisation at once (reason
/// `consent_denied`); granting it again brings it back.
#[tokio::test]
async fn withdrawn_consent_removes_personalisation_at_once() {
    let app = spawn_app_with(car_dealer).await;
    let t = now_s();
    let id = browse_anonymously(&app, "ck-withdraw", t).await;
    log_in(&app, "ck-withdraw", "C-3001", t).await;
    grant_personalization(&app, &id).await;
    assert_eq!(
        field_list(&personalization(&app, &id).await["offers"], "id"),
        ["pink_roadster"]
    );

    let resp = put_consent(&app, &id, "personalization", false, "web").await;
    assert_eq!(resp.status(), 200);
    let denied = json!({"customer_id": id, "consent": false, "reason": "consent_denied", "segments": [], "offers": []});
    assert_eq!(personalization(&app, &id).await, denied);
    assert_eq!(
        ok(
            personalization_by(&app, "web_cookie", "ck-withdraw").await,
            "by cookie"
        )
        .await,
        denied
    );

    grant_personalization(&app, &id).await;
    assert_eq!(
        field_list(&personalization(&app, &id).await["offers"], "id"),
        ["pink_roadster"]
    );
    // Another purpose is not personalisation.
    let other = id_of(
        &app.ingest(signal("web", &[("web_cookie", "ck-marketing")]))
            .await,
    );
    assert_eq!(
        put_consent(&app, &other, "marketing", true, "web")
            .await
            .status(),
        200
    );
    let p = personalization(&app, &other).await;
    assert_eq!(p["consent"], false);
    assert_eq!(p["reason"], "consent_not_given");
}

/// Offers rank by priority, then id; an offer on two segments lists the ones
/// the profile is in.
#[tokio::test]
async fn offers_rank_by_priority_then_id() {
    let app = spawn_app_with(|s| {
        car_dealer(s);
        s.offers.insert(
            "car_mats".into(),
            offer(
                "Floor mats for any car",
                &["sports_car_shoppers", "suv_shoppers"],
                10,
                json!({}),
            ),
        );
    })
    .await;
    let t = now_s();
    let id = browse_anonymously(&app, "ck-rank", t).await;
    grant_personalization(&app, &id).await;
    let p = personalization(&app, &id).await;
    assert_eq!(p["segments"], json!(["sports_car_shoppers"]));
    assert_eq!(
        field_list(&p["offers"], "id"),
        ["car_mats", "pink_roadster"]
    );
    assert_eq!(p["offers"][0]["segments"], json!(["sports_car_shoppers"]));
    assert_eq!(p["offers"][0]["data"], json!({}));

    app.ingest(page_view(
        "web",
        ("web_cookie", "ck-rank"),
        shift(t, -MINUTE),
        json!({"category": "suv"}),
    ))
    .await;
    let p = personalization(&app, &id).await;
    assert_eq!(
        field_list(&p["offers"], "id"),
        ["black_suv", "car_mats", "pink_roadster"]
    );
    let mut matched: Vec<&str> = p["offers"][1]["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    matched.sort_unstable();
    assert_eq!(matched, ["sports_car_shoppers", "suv_shoppers"]);
}

/// Interactions older than the window do not count.
#[tokio::test]
async fn interactions_outside_the_window_do_not_count() {
    let app = spawn_app_with(car_dealer).await;
    let t = now_s();
    let who = ("web_cookie", "ck-old");
    let id = id_of(
        &app.ingest(page_view(
            "web",
            who,
            shift(t, -40 * DAY),
            json!({"category": "sports_car"}),
        ))
        .await,
    );
    app.ingest(page_view(
        "web",
        who,
        shift(t, -40 * DAY + HOUR),
        json!({"category": "sports_car"}),
    ))
    .await;
    grant_personalization(&app, &id).await;
    let p = personalization(&app, &id).await;
    assert_eq!(p["segments"], json!([]), "{p}");
    assert_eq!(p["offers"], json!([]));
    // One recent view with two old ones is still one in the window.
    app.ingest(page_view(
        "web",
        who,
        shift(t, -29 * DAY),
        json!({"category": "sports_car"}),
    ))
    .await;
    assert_eq!(segments_of(&app, &id).await, Vec::<String>::new());
    // Views of another category, or of another type, do not count either.
    app.ingest(page_view(
        "web",
        who,
        shift(t, -DAY),
        json!({"category": "suv"}),
    ))
    .await;
    app.ingest(event_at(
        "web",
        who,
        shift(t, -DAY),
        json!({"type": "product_view", "properties": {"category": "sports_car"}}),
    ))
    .await;
    assert_eq!(segments_of(&app, &id).await, Vec::<String>::new());
    app.ingest(page_view(
        "web",
        who,
        shift(t, -HOUR),
        json!({"category": "sports_car"}),
    ))
    .await;
    assert_eq!(segments_of(&app, &id).await, ["sports_car_shoppers"]);
}

/// Trait (equals, min, negate), answer, journey stage and open-episode
/// predicates: a profile enters and leaves segments as writes change it.
#[tokio::test]
async fn profiles_enter_and_leave_segments_as_they_change() {
    let app = spawn_app_with(|s| {
        s.segments.insert(
            "vip".into(),
            segment(json!([{"trait": "vip", "equals": true}])),
        );
        s.segments.insert(
            "dutch_not_vip".into(),
            segment(json!([
                {"trait": "country", "one_of": ["NL", "BE"]},
                {"trait": "vip", "equals": true, "negate": true},
            ])),
        );
        s.segments.insert(
            "big_spender".into(),
            segment(json!([{"trait": "lifetime_value", "min": 1000}])),
        );
        s.segments.insert(
            "in_service".into(),
            segment(json!([{"journey_stage": ["service", "loyalty"]}])),
        );
        s.segments.insert(
            "has_open_case".into(),
            segment(json!([{"open_episodes": 1}])),
        );
        s.segments.insert(
            "delivery_question".into(),
            segment(json!([{"answer": "reason_for_contact", "one_of": ["delivery"]}])),
        );
    })
    .await;
    let who = ("email", "segments@example.com");
    let id = id_of(
        &app.ingest(json!({
            "channel": "web",
            "identifiers": [{"type": who.0, "value": who.1}],
            "traits": {"country": "NL", "lifetime_value": 500},
            "answers": [{"key": "reason_for_contact", "value": "delivery", "expires_at": "2020-01-01T00:00:00Z"}],
        }))
        .await,
    );
    grant_personalization(&app, &id).await;
    assert_eq!(
        segments_of(&app, &id).await,
        ["dutch_not_vip"],
        "an expired answer does not count"
    );

    app.ingest(json!({
        "channel": "store",
        "identifiers": [{"type": who.0, "value": who.1}],
        "traits": {"vip": true, "lifetime_value": 1500},
    }))
    .await;
    assert_eq!(segments_of(&app, &id).await, ["big_spender", "vip"]);

    app.ingest(json!({
        "channel": "ivr",
        "identifiers": [{"type": who.0, "value": who.1}],
        "answers": [{"key": "reason_for_contact", "value": "delivery"}],
        "event": {"type": "call_started", "journey_stage": "service",
                  "episode": {"id": "case-9", "title": "Late parcel", "status": "open"}},
    }))
    .await;
    assert_eq!(
        segments_of(&app, &id).await,
        [
            "big_spender",
            "delivery_question",
            "has_open_case",
            "in_service",
            "vip"
        ]
    );

    let resp = app
        .patch_traits(&id, &json!({"channel": "agent", "traits": {"vip": false}}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        segments_of(&app, &id).await,
        [
            "big_spender",
            "delivery_question",
            "dutch_not_vip",
            "has_open_case",
            "in_service"
        ]
    );

    app.ingest(json!({
        "channel": "agent",
        "identifiers": [{"type": who.0, "value": who.1}],
        "answers": [{"key": "reason_for_contact", "value": "refund"}],
        "traits": {"country": "DE"},
        "event": {"type": "call_ended", "episode": {"id": "case-9", "status": "resolved"}},
    }))
    .await;
    assert_eq!(segments_of(&app, &id).await, ["big_spender", "in_service"]);

    app.ingest(json!({
        "channel": "web",
        "identifiers": [{"type": who.0, "value": who.1}],
        "event": {"type": "page_view"},
    }))
    .await;
    let resp = app
        .patch_traits(
            &id,
            &json!({"channel": "agent", "traits": {"lifetime_value": 999.5}}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(segments_of(&app, &id).await, Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// Export.

/// The export is one JSON attachment with everything: the unmasked profile,
/// the whole timeline (more than a page), the identity ledger, segments and
/// suggestions; it needs both profiles:read and pii:read.
#[tokio::test]
async fn export_holds_everything_and_needs_pii_read() {
    let app = spawn_app_with(|s| {
        s.segments.insert(
            "vip".into(),
            segment(json!([{"trait": "vip", "equals": true}])),
        );
    })
    .await;
    let t = now_s();
    let id = id_of(
        &app.ingest(json!({
            "channel": "ivr",
            "identifiers": [{"type": "phone", "value": "06 1234 5678"}],
            "traits": {"vip": true, "first_name": "Eva"},
        }))
        .await,
    );
    // The back office vouches for the phone: a shared-type phone alone
    // would not bring a new e-mail onto an existing customer.
    app.ingest(json!({"channel": "chat", "identifiers": [
        {"type": "phone", "value": "+31612345678", "verified": true},
        {"type": "email", "value": "eva@example.com"},
    ]}))
    .await;
    grant_personalization(&app, &id).await;
    let views: Vec<Value> = (0..250)
        .map(|n: i64| {
            page_view(
                "web",
                ("phone", "0612345678"),
                shift(t, -(250 - n) * MINUTE),
                json!({"n": n}),
            )
        })
        .collect();
    let resp = app.post_batch(views).await;
    assert_eq!(resp.status(), 200);
    let batch = body(resp).await;
    for item in batch["results"].as_array().unwrap() {
        assert_eq!(item["status"], 200, "{item}");
        assert_eq!(item["customer_id"], id.as_str());
    }

    let path = format!("/v1/profiles/{id}/export");
    let resp = app.get(&path).await;
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert_eq!(
        resp.headers()["content-disposition"].to_str().unwrap(),
        format!("attachment; filename=\"{id}.json\"")
    );
    let export = body(resp).await;
    assert_eq!(export["customer_id"], id.as_str());
    let exported_at = export["exported_at"].as_str().unwrap();
    assert!(
        DateTime::parse_from_rfc3339(exported_at).is_ok(),
        "{exported_at}"
    );
    let profile = app.profile(&id).await;
    assert_eq!(export["profile"], profile);
    assert!(identifier_values(&export["profile"]).contains(&"+31612345678".to_owned()));
    assert!(identifier_values(&export["profile"]).contains(&"eva@example.com".to_owned()));
    assert_eq!(export["profile"]["traits"]["first_name"]["value"], "Eva");

    let timeline = export["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 250, "every interaction, beyond one page");
    let ns: Vec<i64> = timeline
        .iter()
        .map(|i| i["properties"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (0..250).rev().collect::<Vec<i64>>(), "newest first");
    assert_eq!(timeline[0]["type"], "page_view");
    assert_eq!(timeline[0]["channel"], "web");
    assert_eq!(timeline[0]["occurred_at"], rfc(shift(t, -MINUTE)));
    // The first page of the timeline endpoint is the export's start.
    let page = ok(app.timeline(&id, &[("limit", "200")]).await, "timeline").await;
    assert_eq!(
        page["interactions"].as_array().unwrap()[..],
        timeline[..200]
    );

    let history = export["history"].as_array().unwrap();
    assert_eq!(
        field_list(&export["history"], "kind"),
        ["identifier_added", "identifier_added", "created"]
    );
    assert_eq!(
        history[0]["identifier"],
        json!({"type": "email", "value": "eva@example.com"})
    );
    assert_eq!(export["segments"], json!(["vip"]));
    assert_eq!(export["suggestions"], json!([]));

    // Both scopes are needed.
    let both = app.token(&["profiles:read", "pii:read"], None);
    let resp = app.get_as(&both, &path).await;
    assert_eq!(resp.status(), 200);
    let again = body(resp).await;
    assert_eq!(again["profile"], export["profile"]);
    assert_eq!(again["timeline"], export["timeline"]);
    for scopes in [
        &["profiles:read"][..],
        &["pii:read"][..],
        &["signals:write", "profiles:write"][..],
    ] {
        let token = app.token(scopes, None);
        assert_error(app.get_as(&token, &path).await, 403, "insufficient_scope").await;
    }
    assert_error(
        app.get(&format!("/v1/profiles/{NOBODY}/export")).await,
        404,
        "profile_not_found",
    )
    .await;
}

fn identifier_values(p: &Value) -> Vec<String> {
    field_list(&p["identifiers"], "value")
}

// ---------------------------------------------------------------------------
// Configuration checks.

/// Every bad segment, offer or journey rule is refused by `validate()` with
/// a message naming where it is; the dealer's configuration passes.
#[test]
fn settings_name_the_path_of_a_bad_segment_offer_or_rule() {
    let mut good = Settings::defaults();
    car_dealer(&mut good);
    good.validate()
        .expect("the dealer's configuration is valid");

    let with_segment = |name: &str, when: Value| {
        let mut s = Settings::defaults();
        s.segments.insert(name.into(), segment(when));
        s
    };
    let interactions = |at_least: i64, within: &str| json!([{"interactions": {"type": "page_view", "at_least": at_least, "within": within}}]);
    let mut cases: Vec<(&str, Settings, &str)> = vec![
        (
            "window of 0s",
            with_segment("bad", interactions(2, "0s")),
            "segments.bad.when[0]",
        ),
        (
            "window over 366 days",
            with_segment("bad", interactions(2, "367days")),
            "segments.bad.when[0]",
        ),
        (
            "at_least 0",
            with_segment("bad", interactions(0, "30days")),
            "segments.bad.when[0]",
        ),
        (
            "at_least 101",
            with_segment("bad", interactions(101, "30days")),
            "segments.bad.when[0]",
        ),
        (
            "two kinds",
            with_segment("bad", json!([{"trait": "vip", "open_episodes": 1}])),
            "segments.bad.when[0]",
        ),
        (
            "no kind",
            with_segment("bad", json!([{"negate": true}])),
            "segments.bad.when[0]",
        ),
        (
            "unknown stage",
            with_segment(
                "bad",
                json!([{"trait": "vip"}, {"journey_stage": ["nirvana"]}]),
            ),
            "segments.bad.when[1]",
        ),
        (
            "bad name",
            with_segment("Bad-Name", json!([{"trait": "vip"}])),
            "Bad-Name",
        ),
    ];
    let with_offer = |id: &str, segments: &[&str]| {
        let mut s = Settings::defaults();
        car_dealer(&mut s);
        s.offers
            .insert(id.into(), offer("An offer", segments, 1, json!({})));
        s
    };
    cases.push((
        "offer on an unknown segment",
        with_offer("ghost", &["nowhere"]),
        "offers.ghost",
    ));
    cases.push((
        "offer on no segment",
        with_offer("empty", &[]),
        "offers.empty",
    ));
    cases.push((
        "bad offer id",
        with_offer("Pink Roadster!", &["suv_shoppers"]),
        "Pink Roadster!",
    ));
    let mut rule = Settings::defaults();
    rule.journey.rules = vec![serde_json::from_value(
        json!({"event": "page_view", "properties": {"category": "checkout"}, "stage": "nirvana"}),
    )
    .unwrap()];
    cases.push(("rule to an unknown stage", rule, "journey.rules"));

    for (what, settings, path) in cases {
        let error = match settings.validate() {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains(path),
            "{what}: `{error}` does not name {path}"
        );
    }
}

/// Runs `anamnesis --config FILE serve` with `toml` as the file; returns the
/// exit status and what it printed on stderr. Fails when it starts serving.
fn start_with_config(toml: &str) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("anamnesis.toml");
    std::fs::write(&file, toml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_anamnesis"))
        .arg("--config")
        .arg(&file)
        .arg("serve")
        .env(
            "ANAMNESIS__SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("ANAMNESIS__STORAGE__PATH", dir.path().join("data"))
        .env("ANAMNESIS__AUTH__HS256_SECRET", SECRET)
        .env_remove("ANAMNESIS_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the service kept running with:\n{toml}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

/// The binary refuses to start on a bad segment or offer, and says where.
#[test]
fn the_binary_refuses_a_bad_segment_and_names_it() {
    let cases = [
        (
            "[segments.bad]\nwhen = [{ interactions = { type = \"page_view\", at_least = 2, within = \"0s\" } }]\n",
            &["segments.bad"][..],
        ),
        (
            "[segments.bad]\nwhen = [{ interactions = { type = \"page_view\", at_least = 2, within = \"forever\" } }]\n",
            &["segments.bad"][..],
        ),
        (
            "[segments.bad]\nwhen = [{ trait_name = \"x\" }]\n",
            &["segments.bad", "trait_name"][..],
        ),
        (
            "[segments.bad]\nwhen = [{ trait = \"vip\", open_episodes = 1 }]\n",
            &["segments.bad"][..],
        ),
        (
            "[segments.fine]\nwhen = [{ trait = \"vip\" }]\n\n[offers.ghost]\ntitle = \"Ghost\"\nsegments = [\"nowhere\"]\n",
            &["offers.ghost"][..],
        ),
    ];
    for (toml, mentions) in cases {
        let (status, stderr) = start_with_config(toml);
        assert!(!status.success(), "started with:\n{toml}");
        for m in mentions {
            assert!(
                stderr.contains(m),
                "stderr does not name `{m}` for\n{toml}\n---\n{stderr}"
            );
        }
    }
    // A good segment loads.
    let good = "[segments.fine]\nwhen = [{ trait = \"vip\" }]\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("good.toml");
    std::fs::write(&file, good).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_anamnesis"))
        .arg("--config")
        .arg(&file)
        .arg("openapi")
        .env("ANAMNESIS__STORAGE__PATH", dir.path().join("data"))
        .env_remove("ANAMNESIS_CONFIG")
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "a good segment loads: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
