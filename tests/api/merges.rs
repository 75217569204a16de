//! Merges you can trust and undo: unmerge restores both sides exactly, chains
//! unmerge link by link, identifiers can be detached, erasing an unmerged
//! profile leaves none of its identifiers on the survivor, every identity
//! change is in the ledger, caps hold, and concurrent merging keeps the
//! identity invariants.
//!
//! Automatic merges here always link profiles through identifiers whose type
//! fuses profiles (email, account_id, loyalty_card, device_id, chat_session,
//! web_cookie), never through a phone: phones only suggest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use reqwest::{Method, Response};
use serde_json::{json, Value};

use crate::helpers::{
    assert_error, body, id_of, identifier_list, owner, signal, spawn_app, spawn_app_with, TestApp,
    NOBODY,
};

// ---------------------------------------------------------------------------
// Helpers

fn version(p: &Value) -> u64 {
    p["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no version in {p}"))
}

/// `v` without the named top-level fields.
fn without(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    let object = v.as_object_mut().expect("an object");
    for k in keys {
        object.remove(*k);
    }
    v
}

/// An unmerge that must succeed; returns `{survivor, restored}`.
async fn unmerged(app: &TestApp, id: &str, merged: &str) -> Value {
    let resp = app.unmerge(id, merged).await;
    let status = resp.status();
    let b = body(resp).await;
    assert_eq!(status, 200, "unmerge {merged} from {id}: {b}");
    assert_eq!(
        b.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["restored", "survivor"],
        "{b}"
    );
    assert_eq!(b["survivor"]["customer_id"], id);
    assert_eq!(b["restored"]["customer_id"], merged);
    b
}

/// A manual merge that must succeed; returns the merged profile.
async fn merged(app: &TestApp, target: &str, source: &str) -> Value {
    let resp = app.merge(target, source).await;
    let status = resp.status();
    let b = body(resp).await;
    assert_eq!(status, 200, "merge {source} into {target}: {b}");
    b
}

/// `path_value` goes into the URL as written (encode it yourself).
async fn remove_identifier(app: &TestApp, id: &str, kind: &str, path_value: &str) -> Response {
    app.request(
        Method::DELETE,
        &format!("/v1/profiles/{id}/identifiers/{kind}/{path_value}"),
    )
    .send()
    .await
    .unwrap()
}

async fn history_page(app: &TestApp, id: &str, query: &[(&str, &str)]) -> Value {
    let resp = app
        .request(Method::GET, &format!("/v1/profiles/{id}/history"))
        .query(query)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let b = body(resp).await;
    assert_eq!(status, 200, "history of {id}: {b}");
    assert_eq!(b["customer_id"], id, "{b}");
    b
}

/// The whole ledger of `id` (one page of 200), checking it is complete.
async fn history(app: &TestApp, id: &str) -> Vec<Value> {
    let page = history_page(app, id, &[("limit", "200")]).await;
    assert!(
        page["next_cursor"].is_null(),
        "one page holds it all: {page}"
    );
    page["events"].as_array().unwrap().clone()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

/// The whole timeline of `id` (at most 200 interactions).
async fn timeline(app: &TestApp, id: &str) -> Value {
    let resp = app.timeline(id, &[("limit", "200")]).await;
    assert_eq!(resp.status(), 200, "timeline of {id}");
    let t = body(resp).await;
    assert!(t["next_cursor"].is_null(), "{t}");
    t
}

fn signal_ids(timeline: &Value) -> Vec<String> {
    timeline["interactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["signal_id"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn context(app: &TestApp, id: &str) -> Value {
    let resp = app.context(id).await;
    assert_eq!(resp.status(), 200, "context of {id}");
    body(resp).await
}

/// What the outside world can see of a profile.
#[derive(Debug, Clone)]
struct Snapshot {
    profile: Value,
    timeline: Value,
    context: Value,
}

async fn snapshot(app: &TestApp, id: &str) -> Snapshot {
    Snapshot {
        profile: app.profile(id).await,
        timeline: timeline(app, id).await,
        context: context(app, id).await,
    }
}

/// Asserts `after` is `before` exactly, timestamps and version included.
fn assert_identical(who: &str, before: &Snapshot, after: &Snapshot) {
    assert_eq!(
        after.profile, before.profile,
        "{who}: the profile is byte-identical"
    );
    assert_eq!(
        after.timeline, before.timeline,
        "{who}: the timeline is identical"
    );
    assert_eq!(
        after.context, before.context,
        "{who}: the context card is identical"
    );
}

/// Asserts `after` is `before` except for a strictly greater version (and,
/// when `updated_at_may_move`, a later or equal `updated_at`).
fn assert_same_but_newer(
    who: &str,
    before: &Snapshot,
    after: &Snapshot,
    updated_at_may_move: bool,
) {
    let mut ignored = vec!["version"];
    if updated_at_may_move {
        ignored.push("updated_at");
        let (b, a) = (
            before.profile["updated_at"].as_str().unwrap(),
            after.profile["updated_at"].as_str().unwrap(),
        );
        assert!(
            nanos(a) >= nanos(b),
            "{who}: updated_at never goes back ({b} -> {a})"
        );
    }
    assert_eq!(
        without(&after.profile, &ignored),
        without(&before.profile, &ignored),
        "{who}: the profile is as before the merge"
    );
    assert!(
        version(&after.profile) > version(&before.profile),
        "{who}: the version moved on ({} -> {})",
        version(&before.profile),
        version(&after.profile)
    );
    assert_eq!(
        after.timeline, before.timeline,
        "{who}: the timeline is as before the merge"
    );
    assert_eq!(
        without(&after.context, &["version"]),
        without(&before.context, &["version"]),
        "{who}: the context card is as before the merge"
    );
    assert_eq!(after.context["version"], after.profile["version"]);
}

/// An RFC 3339 timestamp as nanoseconds since the epoch.
fn nanos(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_nanos_opt()
        .unwrap()
}

async fn assert_redirects(app: &TestApp, absorbed: &str, survivor: &str) {
    let resp = app.get_profile(absorbed).await;
    assert_eq!(
        resp.headers()
            .get("canonical-customer-id")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some(survivor.to_owned()),
        "{absorbed} redirects to {survivor}"
    );
    assert_error(resp, 308, "profile_merged").await;
}

fn identifier_values(p: &Value) -> BTreeSet<String> {
    identifier_list(p).into_iter().collect()
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Anna: account, email and a plain phone; three signals on store and chat.
async fn seed_anna(app: &TestApp) -> String {
    let r = app
        .ingest(json!({
            "signal_id": "anna-1",
            "channel": "store",
            "occurred_at": "2026-10-01T10:00:00Z",
            "identifiers": [{"type": "account_id", "value": "C-1001"},
                            {"type": "email", "value": "anna@example.com"},
                            {"type": "phone", "value": "06 1111 2222"}],
            "traits": {"first_name": "Anna", "tier": "gold", "segment": "vip"},
            "answers": [{"key": "preferred_store", "value": "Utrecht", "question": "Which store?"}],
            "event": {"type": "purchase", "summary": "Bought a bike",
                      "episode": {"id": "order-A-1", "title": "Order A-1", "status": "open"},
                      "journey_stage": "purchase", "properties": {"sku": "S1"}}
        }))
        .await;
    let id = id_of(&r);
    for (sid, at, tr) in [
        (
            "anna-2",
            "2026-10-05T10:00:00Z",
            json!({"segment": "vip-plus"}),
        ),
        ("anna-3", "2026-10-07T10:00:00Z", json!({})),
    ] {
        let r = app
            .ingest(json!({
                "signal_id": sid,
                "channel": "chat",
                "occurred_at": at,
                "identifiers": [{"type": "email", "value": "anna@example.com"}],
                "traits": tr,
                "event": {"type": "chat_message", "summary": "Where is my parcel?",
                          "episode": {"id": "shared-ep"}}
            }))
            .await;
        assert_eq!(id_of(&r), id);
    }
    id
}

/// Bea: a web cookie and a device, seen on web and chat; some of her traits
/// are later than Anna's (they win in a merge), some earlier (they lose).
async fn seed_bea(app: &TestApp) -> String {
    let r = app
        .ingest(json!({
            "signal_id": "bea-1",
            "channel": "web",
            "occurred_at": "2026-10-03T10:00:00Z",
            "identifiers": [{"type": "web_cookie", "value": "ck-bea"},
                            {"type": "device_id", "value": "dev-bea"}],
            "traits": {"tier": "silver", "segment": "basic", "color": "pink"},
            "answers": [{"key": "preferred_store", "value": "Amsterdam"}],
            "event": {"type": "page_view",
                      "episode": {"id": "shared-ep", "title": "Shared matter", "status": "waiting_on_us"},
                      "properties": {"path": "/bikes"}}
        }))
        .await;
    let id = id_of(&r);
    for (sid, at) in [
        ("bea-2", "2026-10-04T10:00:00Z"),
        ("bea-3", "2026-10-08T10:00:00Z"),
    ] {
        let r = app
            .ingest(json!({
                "signal_id": sid,
                "channel": "chat",
                "occurred_at": at,
                "identifiers": [{"type": "web_cookie", "value": "ck-bea"}],
                "event": {"type": "chat_message", "episode": {"id": "shared-ep"}}
            }))
            .await;
        assert_eq!(id_of(&r), id);
    }
    id
}

/// Checks that the merged profile really mixes Anna and Bea.
async fn assert_anna_and_bea_merged(app: &TestApp, anna: &str, bea: &str) {
    let m = app.profile(anna).await;
    assert_eq!(m["merged_ids"], json!([bea]));
    assert_eq!(m["identifiers"].as_array().unwrap().len(), 5, "{m}");
    assert_eq!(
        m["traits"]["tier"]["value"], "silver",
        "Bea's later tier wins"
    );
    assert_eq!(
        m["traits"]["segment"]["value"], "vip-plus",
        "Anna's later segment wins"
    );
    assert_eq!(m["traits"]["color"]["value"], "pink");
    assert_eq!(m["answers"]["preferred_store"]["value"], "Amsterdam");
    assert_eq!(m["channels"]["chat"]["interactions"], 4);
    assert_eq!(
        timeline(app, anna).await["interactions"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_redirects(app, bea, anna).await;
    assert_eq!(
        owner(app, "web_cookie", "ck-bea").await.as_deref(),
        Some(anna)
    );
}

/// After an unmerge: each side answers 200 and owns its identifiers again.
async fn assert_anna_and_bea_apart(app: &TestApp, anna: &str, bea: &str) {
    assert_eq!(app.get_profile(bea).await.status(), 200, "no more redirect");
    for (kind, value, who) in [
        ("account_id", "C-1001", anna),
        ("email", "anna@example.com", anna),
        ("phone", "+31611112222", anna),
        ("web_cookie", "ck-bea", bea),
        ("device_id", "dev-bea", bea),
    ] {
        assert_eq!(
            owner(app, kind, value).await.as_deref(),
            Some(who),
            "{kind}:{value}"
        );
    }
    let card = body(app.context_by("device_id", "dev-bea").await).await;
    assert_eq!(card["customer_id"], bea);
}

// ---------------------------------------------------------------------------
// 1, 2: merge then unmerge is the identity

#[tokio::test]
async fn manual_merge_then_unmerge_restores_both_profiles_exactly() {
    let app = spawn_app().await;
    let anna = seed_anna(&app).await;
    let bea = seed_bea(&app).await;
    let anna_before = snapshot(&app, &anna).await;
    let bea_before = snapshot(&app, &bea).await;

    let m = merged(&app, &anna, &bea).await;
    assert_eq!(m, app.profile(&anna).await);
    assert_anna_and_bea_merged(&app, &anna, &bea).await;

    let result = unmerged(&app, &anna, &bea).await;
    let anna_after = snapshot(&app, &anna).await;
    let bea_after = snapshot(&app, &bea).await;
    assert_eq!(
        result["survivor"], anna_after.profile,
        "the response is the stored state"
    );
    assert_eq!(
        result["restored"], bea_after.profile,
        "the response is the stored state"
    );

    assert_same_but_newer("survivor", &anna_before, &anna_after, false);
    assert!(
        version(&anna_after.profile) > version(&m),
        "never backwards"
    );
    assert_identical("restored", &bea_before, &bea_after);
    assert_anna_and_bea_apart(&app, &anna, &bea).await;

    // Nothing points from Bea to Anna any more: once Bea is erased, her id is
    // unknown rather than an alias of Anna.
    assert_eq!(app.erase(&bea).await.status(), 204);
    assert_error(app.get_profile(&bea).await, 404, "profile_not_found").await;
    assert_eq!(app.profile(&anna).await, anna_after.profile);
}

#[tokio::test]
async fn automatic_merge_then_unmerge_restores_both_profiles_exactly() {
    let app = spawn_app().await;
    let anna = seed_anna(&app).await;
    let bea = seed_bea(&app).await;
    let anna_before = snapshot(&app, &anna).await;
    let bea_before = snapshot(&app, &bea).await;

    // One chat signal names Anna's email and Bea's cookie: one person. Its
    // time lies inside both sides' chat history, so it adds no observation
    // beyond the merge itself.
    let r = app
        .ingest(json!({
            "signal_id": "link-1",
            "channel": "chat",
            "occurred_at": "2026-10-06T10:00:00Z",
            "identifiers": [{"type": "web_cookie", "value": "ck-bea"},
                            {"type": "email", "value": "anna@example.com"}]
        }))
        .await;
    assert_eq!(id_of(&r), anna, "email outranks the cookie");
    assert_eq!(r["merged_ids"], json!([bea]));
    assert_anna_and_bea_merged(&app, &anna, &bea).await;
    let merged_updated_at = app.profile(&anna).await["updated_at"].clone();

    let result = unmerged(&app, &anna, &bea).await;
    let anna_after = snapshot(&app, &anna).await;
    let bea_after = snapshot(&app, &bea).await;
    assert_eq!(result["survivor"], anna_after.profile);
    assert_eq!(result["restored"], bea_after.profile);

    // The linking signal was a write through Anna's own email: her profile is
    // as before but for the version and the time of that write.
    assert_same_but_newer("survivor", &anna_before, &anna_after, true);
    assert_eq!(anna_after.profile["updated_at"], merged_updated_at);
    assert_identical("restored", &bea_before, &bea_after);
    assert_anna_and_bea_apart(&app, &anna, &bea).await;
}

#[tokio::test]
async fn a_signal_naming_both_members_leaves_each_identifier_with_its_own_member() {
    let app = spawn_app().await;
    let anna = seed_anna(&app).await;
    let bea = seed_bea(&app).await;
    merged(&app, &anna, &bea).await;
    // After the merge, one signal names both: the data goes to Anna (the
    // higher-priority identifier) but Bea's cookie stays Bea's.
    app.ingest(json!({
        "signal_id": "both-1",
        "channel": "web",
        "occurred_at": "2026-10-12T10:00:00Z",
        "identifiers": [{"type": "email", "value": "anna@example.com"},
                        {"type": "web_cookie", "value": "ck-bea"}],
        "traits": {"language": "nl"}
    }))
    .await;
    let result = unmerged(&app, &anna, &bea).await;
    let survivor = identifier_values(&result["survivor"]);
    let restored = identifier_values(&result["restored"]);
    assert_eq!(
        survivor,
        set(&[
            "account_id:C-1001",
            "email:anna@example.com",
            "phone:+31611112222"
        ]),
        "the survivor lists only its own identifiers"
    );
    assert_eq!(restored, set(&["web_cookie:ck-bea", "device_id:dev-bea"]));
    assert!(survivor.is_disjoint(&restored));
    assert_eq!(
        owner(&app, "web_cookie", "ck-bea").await.as_deref(),
        Some(bea.as_str())
    );
    assert_eq!(result["survivor"]["traits"]["language"]["value"], "nl");
}

#[tokio::test]
async fn an_absorbed_member_seen_through_its_identifier_comes_back_with_a_new_version() {
    let app = spawn_app().await;
    let anna = seed_anna(&app).await;
    let bea = seed_bea(&app).await;
    let bea_before = app.profile(&bea).await;
    merged(&app, &anna, &bea).await;
    // Anna's email outranks Bea's cookie: the signal speaks for Anna, but
    // Bea's cookie record (last seen) moves on.
    app.ingest(json!({
        "channel": "web",
        "occurred_at": "2026-10-12T10:00:00Z",
        "identifiers": [{"type": "email", "value": "anna@example.com"},
                        {"type": "web_cookie", "value": "ck-bea"}]
    }))
    .await;
    let restored = unmerged(&app, &anna, &bea).await["restored"].clone();
    let cookie = restored["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "web_cookie")
        .unwrap()
        .clone();
    assert_eq!(cookie["last_seen"], "2026-10-12T10:00:00Z", "{restored}");
    assert_ne!(restored, bea_before, "Bea's content changed");
    assert!(
        version(&restored) > version(&bea_before),
        "changed content needs a version past {}: {restored}",
        version(&bea_before)
    );
    assert_ne!(restored["updated_at"], bea_before["updated_at"]);
}

// ---------------------------------------------------------------------------
// 3: new signals on both sides after the merge

#[tokio::test]
async fn unmerge_after_new_signals_on_both_sides_gives_each_side_its_own() {
    let app = spawn_app().await;
    let anna = seed_anna(&app).await;
    let bea = seed_bea(&app).await;
    let bea_before = app.profile(&bea).await;
    merged(&app, &anna, &bea).await;
    assert_anna_and_bea_merged(&app, &anna, &bea).await;

    // Through Bea's own cookie: a new device, traits (one overriding the
    // merged tier), an answer, an interaction in a new episode.
    let r = app
        .ingest(json!({
            "signal_id": "bea-after",
            "channel": "web",
            "occurred_at": "2026-10-10T10:00:00Z",
            "identifiers": [{"type": "web_cookie", "value": "ck-bea"},
                            {"type": "device_id", "value": "dev-bea-2"}],
            "traits": {"size": "L", "tier": "platinum"},
            "answers": [{"key": "callback", "value": "evening"}],
            "event": {"type": "page_view", "episode": {"id": "ep-bea", "title": "Bea's return", "status": "open"},
                      "properties": {"path": "/returns"}}
        }))
        .await;
    assert_eq!(id_of(&r), anna);
    // Through Anna's own email: a trait, an answer, an update of her episode.
    let r = app
        .ingest(json!({
            "signal_id": "anna-after",
            "channel": "chat",
            "occurred_at": "2026-10-11T10:00:00Z",
            "identifiers": [{"type": "email", "value": "anna@example.com"}],
            "traits": {"language": "en"},
            "answers": [{"key": "delivery_note", "value": "neighbour"}],
            "event": {"type": "chat_message", "episode": {"id": "order-A-1", "status": "resolved"}}
        }))
        .await;
    assert_eq!(id_of(&r), anna);
    // An agent writes on the merged profile: the survivor's own.
    let resp = app
        .patch_traits(
            &anna,
            &json!({"channel": "agent", "traits": {"nickname": "Annie"}}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let before_unmerge = app.profile(&anna).await;
    assert_eq!(before_unmerge["traits"]["tier"]["value"], "platinum");

    let result = unmerged(&app, &anna, &bea).await;
    let a = app.profile(&anna).await;
    let b = app.profile(&bea).await;
    assert_eq!(result["survivor"], a);
    assert_eq!(result["restored"], b);

    // Bea: her identifiers, including the one that arrived after the merge.
    assert_eq!(
        identifier_values(&b),
        set(&[
            "web_cookie:ck-bea",
            "device_id:dev-bea",
            "device_id:dev-bea-2"
        ])
    );
    assert_eq!(keys(&b["traits"]), ["color", "segment", "size", "tier"]);
    assert_eq!(b["traits"]["tier"]["value"], "platinum");
    assert_eq!(b["traits"]["tier"]["signal_id"], "bea-after");
    assert_eq!(
        b["traits"]["segment"],
        json!({"value": "basic", "channel": "web", "observed_at": "2026-10-03T10:00:00Z", "signal_id": "bea-1"}),
        "recomputed: Anna's segment had won in the merge"
    );
    assert_eq!(keys(&b["answers"]), ["callback", "preferred_store"]);
    assert_eq!(b["answers"]["preferred_store"]["value"], "Amsterdam");
    let episodes: Vec<&str> = b["episodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(episodes, ["ep-bea", "shared-ep"]);
    let shared = &b["episodes"][1];
    assert_eq!(
        shared["channels"],
        json!(["chat", "web"]),
        "only Bea's reports: {shared}"
    );
    assert_eq!(shared["status"], "waiting_on_us");
    assert_eq!(shared["opened_at"], "2026-10-03T10:00:00Z");
    assert_eq!(
        signal_ids(&timeline(&app, &bea).await),
        ["bea-after", "bea-3", "bea-2", "bea-1"]
    );
    assert_eq!(b["channels"]["web"]["interactions"], 2);
    assert_eq!(b["channels"]["chat"]["interactions"], 2);
    assert_eq!(b["merged_ids"], json!([]));
    assert_eq!(b["created_at"], bea_before["created_at"]);
    assert!(
        version(&b) > version(&bea_before),
        "Bea changed: her version moved on"
    );

    // Anna: her own, plus what came through her email and the agent.
    assert_eq!(
        identifier_values(&a),
        set(&[
            "account_id:C-1001",
            "email:anna@example.com",
            "phone:+31611112222"
        ])
    );
    assert_eq!(
        keys(&a["traits"]),
        ["first_name", "language", "nickname", "segment", "tier"]
    );
    assert_eq!(
        a["traits"]["tier"],
        json!({"value": "gold", "channel": "store", "observed_at": "2026-10-01T10:00:00Z", "signal_id": "anna-1"}),
        "recomputed: Bea's tier had won in the merge"
    );
    assert_eq!(a["traits"]["segment"]["value"], "vip-plus");
    assert_eq!(a["traits"]["language"]["value"], "en");
    assert_eq!(a["traits"]["nickname"]["value"], "Annie");
    assert_eq!(keys(&a["answers"]), ["delivery_note", "preferred_store"]);
    assert_eq!(a["answers"]["preferred_store"]["value"], "Utrecht");
    let episodes: Vec<(&str, &str)> = a["episodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["status"].as_str().unwrap()))
        .collect();
    assert_eq!(episodes, [("order-A-1", "resolved"), ("shared-ep", "open")]);
    assert_eq!(
        a["episodes"][1]["title"],
        Value::Null,
        "Bea's title left with her"
    );
    assert_eq!(
        signal_ids(&timeline(&app, &anna).await),
        ["anna-after", "anna-3", "anna-2", "anna-1"]
    );
    assert_eq!(keys(&a["channels"]), ["agent", "chat", "store"]);
    assert_eq!(a["channels"]["chat"]["interactions"], 3);
    assert_eq!(a["merged_ids"], json!([]));
    assert!(version(&a) > version(&before_unmerge));

    let card = context(&app, &anna).await;
    assert_eq!(card["traits"]["tier"], "gold");
    assert_eq!(card["last_channel"], "agent");
    let card = context(&app, &bea).await;
    assert_eq!(card["traits"]["tier"], "platinum");
    assert_eq!(card["recent_interactions"][0]["signal_id"], "bea-after");

    // The device that arrived after the merge resolves to Bea, and so do
    // later signals through it.
    assert_eq!(
        owner(&app, "device_id", "dev-bea-2").await.as_deref(),
        Some(bea.as_str())
    );
    let r = app
        .ingest(signal("app", &[("device_id", "dev-bea-2")]))
        .await;
    assert_eq!(id_of(&r), bea);
}

// ---------------------------------------------------------------------------
// 4: a chain of three

/// A (email), B (cookie) which absorbs C (device); then A absorbs B.
/// Returns the ids and the snapshots of A, B and C before any merge and of B
/// holding C.
async fn chain(app: &TestApp) -> ([String; 3], [Snapshot; 3], Snapshot) {
    let a = id_of(
        &app.ingest(json!({
            "signal_id": "a-1", "channel": "store", "occurred_at": "2026-10-01T10:00:00Z",
            "identifiers": [{"type": "email", "value": "a@example.com"}],
            "traits": {"tier": "gold"},
            "event": {"type": "purchase", "episode": {"id": "ep-a"}}
        }))
        .await,
    );
    let b = id_of(
        &app.ingest(json!({
            "signal_id": "b-1", "channel": "web", "occurred_at": "2026-10-02T10:00:00Z",
            "identifiers": [{"type": "web_cookie", "value": "ck-b"}],
            "traits": {"tier": "silver", "color": "blue"},
            "answers": [{"key": "size", "value": "M"}],
            "event": {"type": "page_view", "episode": {"id": "ep-b"}}
        }))
        .await,
    );
    let c = id_of(
        &app.ingest(json!({
            "signal_id": "c-1", "channel": "app", "occurred_at": "2026-10-03T10:00:00Z",
            "identifiers": [{"type": "device_id", "value": "dev-c"},
                            {"type": "chat_session", "value": "cs-c"}],
            "traits": {"tier": "bronze", "pet": "cat"},
            "answers": [{"key": "size", "value": "S"}],
            "event": {"type": "app_open", "episode": {"id": "ep-c"}}
        }))
        .await,
    );
    let before = [
        snapshot(app, &a).await,
        snapshot(app, &b).await,
        snapshot(app, &c).await,
    ];
    // B absorbs C, then A absorbs B.
    merged(app, &b, &c).await;
    let b_with_c = snapshot(app, &b).await;
    assert_eq!(b_with_c.profile["merged_ids"], json!([c]));
    assert_eq!(b_with_c.profile["traits"]["tier"]["value"], "bronze");
    merged(app, &a, &b).await;
    let m = app.profile(&a).await;
    let mut expected = vec![b.clone(), c.clone()];
    expected.sort();
    assert_eq!(m["merged_ids"], json!(expected));
    assert_eq!(
        identifier_values(&m),
        set(&[
            "email:a@example.com",
            "web_cookie:ck-b",
            "device_id:dev-c",
            "chat_session:cs-c"
        ])
    );
    assert_eq!(signal_ids(&timeline(app, &a).await), ["c-1", "b-1", "a-1"]);
    assert_redirects(app, &b, &a).await;
    assert_redirects(app, &c, &a).await;
    ([a, b, c], before, b_with_c)
}

#[tokio::test]
async fn a_chain_of_three_unmerges_link_by_link_from_the_top() {
    let app = spawn_app().await;
    let ([a, b, c], [a0, b0, c0], b_with_c) = chain(&app).await;

    // A lets go of B, which comes back holding C, exactly as it was.
    let r = unmerged(&app, &a, &b).await;
    assert_eq!(r["restored"]["merged_ids"], json!([c]));
    let b1 = snapshot(&app, &b).await;
    assert_identical("B holding C", &b_with_c, &b1);
    assert_same_but_newer("A", &a0, &snapshot(&app, &a).await, false);
    assert_redirects(&app, &c, &b).await;
    assert_eq!(
        owner(&app, "device_id", "dev-c").await.as_deref(),
        Some(b.as_str())
    );
    assert_eq!(
        owner(&app, "web_cookie", "ck-b").await.as_deref(),
        Some(b.as_str())
    );
    assert_eq!(
        owner(&app, "email", "a@example.com").await.as_deref(),
        Some(a.as_str())
    );
    // C is no longer A's to give back.
    assert_error(app.unmerge(&a, &c).await, 409, "nothing_to_unmerge").await;

    // Then B lets go of C.
    unmerged(&app, &b, &c).await;
    assert_identical("C", &c0, &snapshot(&app, &c).await);
    let b2 = snapshot(&app, &b).await;
    assert_same_but_newer("B", &b0, &b2, true);
    assert!(version(&b2.profile) > version(&b_with_c.profile));
    assert_eq!(app.get_profile(&c).await.status(), 200);
    assert_eq!(
        owner(&app, "chat_session", "cs-c").await.as_deref(),
        Some(c.as_str())
    );
}

/// C comes straight out of A while B stays inside; then B comes out. Returns
/// B's snapshots holding C and at the end.
async fn unmerge_inner_link_first(app: &TestApp) -> (Snapshot, Snapshot) {
    let ([a, b, c], [a0, b0, c0], b_with_c) = chain(app).await;

    // C comes straight back out of A; B stays inside A.
    let r = unmerged(app, &a, &c).await;
    assert_eq!(r["survivor"]["merged_ids"], json!([b]));
    assert_identical("C", &c0, &snapshot(app, &c).await);
    assert_redirects(app, &b, &a).await;
    let m = app.profile(&a).await;
    assert_eq!(
        identifier_values(&m),
        set(&["email:a@example.com", "web_cookie:ck-b"])
    );
    assert_eq!(keys(&m["traits"]), ["color", "tier"]);
    assert_eq!(
        m["traits"]["tier"]["value"], "silver",
        "recomputed without C's bronze"
    );
    assert_eq!(m["answers"]["size"]["value"], "M");
    assert_eq!(signal_ids(&timeline(app, &a).await), ["b-1", "a-1"]);
    assert_eq!(
        owner(app, "device_id", "dev-c").await.as_deref(),
        Some(c.as_str())
    );
    assert_eq!(
        owner(app, "chat_session", "cs-c").await.as_deref(),
        Some(c.as_str())
    );

    // Then B: it comes back as it was before it absorbed C.
    unmerged(app, &a, &b).await;
    assert_same_but_newer("A", &a0, &snapshot(app, &a).await, false);
    let b2 = snapshot(app, &b).await;
    assert_same_but_newer("B", &b0, &b2, true);
    assert_eq!(app.get_profile(&c).await.status(), 200);
    assert_identical("C", &c0, &snapshot(app, &c).await);
    assert_eq!(
        owner(app, "web_cookie", "ck-b").await.as_deref(),
        Some(b.as_str())
    );
    (b_with_c, b2)
}

#[tokio::test]
async fn a_chain_of_three_unmerges_the_inner_link_first() {
    let app = spawn_app().await;
    unmerge_inner_link_first(&app).await;
}

#[tokio::test]
async fn after_the_inner_link_left_first_the_middle_profile_comes_back_with_a_new_version() {
    let app = spawn_app().await;
    let (b_with_c, b2) = unmerge_inner_link_first(&app).await;
    assert!(
        version(&b2.profile) > version(&b_with_c.profile),
        "B was last served at version {} holding C; without C it needs a newer one, got {}",
        version(&b_with_c.profile),
        version(&b2.profile)
    );
}

// ---------------------------------------------------------------------------
// 5: what cannot be unmerged

#[tokio::test]
async fn unmerge_refuses_what_it_cannot_undo() {
    let app = spawn_app().await;
    let a = id_of(&app.ingest(signal("web", &[("web_cookie", "u-a")])).await);
    let b = id_of(&app.ingest(signal("web", &[("web_cookie", "u-b")])).await);
    let other = id_of(
        &app.ingest(signal("web", &[("web_cookie", "u-other")]))
            .await,
    );
    merged(&app, &a, &b).await;
    let a_before = app.profile(&a).await;
    let other_before = app.profile(&other).await;

    // Not merged into the profile: itself, an unrelated live profile, an id nobody has.
    for merged_id in [a.as_str(), other.as_str(), NOBODY] {
        let err = assert_error(app.unmerge(&a, merged_id).await, 409, "nothing_to_unmerge").await;
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains(merged_id),
            "the message names the id: {err}"
        );
    }
    // Unknown profile.
    assert_error(app.unmerge(NOBODY, &b).await, 404, "profile_not_found").await;
    // Malformed ids: in the path a 400, in the body the field is invalid.
    assert_error(app.unmerge("cus_123", &b).await, 400, "invalid_customer_id").await;
    for bad in ["anna", "cus_01arz3ndektsv4rrffq69g5fav", ""] {
        let err = assert_error(app.unmerge(&a, bad).await, 422, "invalid_field").await;
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("merged_id"),
            "{err}"
        );
    }
    let resp = app
        .request(Method::POST, &format!("/v1/profiles/{a}/unmerge"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(resp, 422, "missing_field").await;
    let resp = app
        .request(Method::POST, &format!("/v1/profiles/{a}/unmerge"))
        .json(&json!({"merged_id": b, "source_id": b}))
        .send()
        .await
        .unwrap();
    assert_error(resp, 422, "unknown_field").await;
    // Unmerging on the absorbed id redirects to the survivor.
    let resp = app.unmerge(&b, &b).await;
    assert_eq!(
        resp.headers().get("canonical-customer-id").unwrap(),
        a.as_str()
    );
    assert_eq!(
        resp.headers().get("location").unwrap(),
        format!("/v1/profiles/{a}/unmerge").as_str()
    );
    assert_error(resp, 308, "profile_merged").await;
    // Reading is not enough to unmerge.
    let reader = app.token(&["profiles:read"], None);
    let resp = app
        .client
        .post(format!("{}/v1/profiles/{a}/unmerge", app.address))
        .bearer_auth(&reader)
        .json(&json!({"merged_id": b}))
        .send()
        .await
        .unwrap();
    assert_error(resp, 403, "insufficient_scope").await;

    // None of that changed anything.
    assert_eq!(app.profile(&a).await, a_before);
    assert_eq!(app.profile(&other).await, other_before);
    assert_redirects(&app, &b, &a).await;

    // The real unmerge works once; a second time there is nothing to undo.
    unmerged(&app, &a, &b).await;
    assert_error(app.unmerge(&a, &b).await, 409, "nothing_to_unmerge").await;
}

// ---------------------------------------------------------------------------
// 6: detaching an identifier

#[tokio::test]
async fn removing_an_identifier_detaches_it_for_good() {
    let app = spawn_app().await;
    let p = id_of(
        &app.ingest(json!({
            "channel": "ivr",
            "identifiers": [{"type": "email", "value": "dad@example.com"},
                            {"type": "phone", "value": "+31 6 1234 5678"},
                            {"type": "loyalty_card", "value": "LC-1"}],
            "traits": {"first_name": "Dad"}
        }))
        .await,
    );
    let other = id_of(
        &app.ingest(signal("web", &[("web_cookie", "ck-other")]))
            .await,
    );
    let before = app.profile(&p).await;

    // The family landline, written in the national format and URL-encoded.
    let resp = remove_identifier(&app, &p, "phone", "06%2012%2034%2056%2078").await;
    assert_eq!(resp.status(), 200);
    let after = body(resp).await;
    assert_eq!(
        after,
        app.profile(&p).await,
        "the response is the stored state"
    );
    assert_eq!(
        identifier_values(&after),
        set(&["email:dad@example.com", "loyalty_card:LC-1"])
    );
    assert_eq!(after["traits"], before["traits"], "nothing else is touched");
    assert!(version(&after) > version(&before));
    assert_eq!(owner(&app, "phone", "0612345678").await, None);
    assert_error(
        app.context_by("phone", "+31612345678").await,
        404,
        "profile_not_found",
    )
    .await;

    // Again: it is no longer there.
    assert_error(
        remove_identifier(&app, &p, "phone", "%2B31612345678").await,
        404,
        "identifier_not_found",
    )
    .await;
    // Another profile's identifier, and one nobody has.
    assert_error(
        remove_identifier(&app, &p, "web_cookie", "ck-other").await,
        404,
        "identifier_not_found",
    )
    .await;
    assert_error(
        remove_identifier(&app, &p, "email", "nobody@example.com").await,
        404,
        "identifier_not_found",
    )
    .await;
    assert_eq!(
        owner(&app, "web_cookie", "ck-other").await.as_deref(),
        Some(other.as_str())
    );
    // Unknown profile, unknown type, malformed value.
    assert_error(
        remove_identifier(&app, NOBODY, "email", "dad@example.com").await,
        404,
        "profile_not_found",
    )
    .await;
    assert_error(
        remove_identifier(&app, &p, "shoe_size", "42").await,
        422,
        "unknown_identifier_type",
    )
    .await;
    assert_error(
        remove_identifier(&app, &p, "phone", "hello").await,
        422,
        "invalid_identifier",
    )
    .await;

    // A future signal with the phone no longer lands on this profile.
    let r = app.ingest(signal("ivr", &[("phone", "06-12345678")])).await;
    assert_eq!(r["created"], true);
    let kid = id_of(&r);
    assert_ne!(kid, p);
    assert_eq!(
        owner(&app, "phone", "+31612345678").await.as_deref(),
        Some(kid.as_str())
    );
    assert_eq!(
        identifier_values(&app.profile(&p).await),
        set(&["email:dad@example.com", "loyalty_card:LC-1"])
    );

    // Removing with a literal `+` (percent-encoded) works as well.
    let resp = remove_identifier(&app, &kid, "phone", "%2B31612345678").await;
    assert_eq!(resp.status(), 200, "{}", body(resp).await);
    assert_eq!(owner(&app, "phone", "+31612345678").await, None);
    // An e-mail written with capitals and spaces is normalised too.
    let resp = remove_identifier(&app, &p, "email", "%20DAD@Example.COM%20").await;
    assert_eq!(resp.status(), 200, "{}", body(resp).await);
    assert_eq!(owner(&app, "email", "dad@example.com").await, None);

    // All of it is in the ledger.
    let events = history(&app, &p).await;
    let removed: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "identifier_removed")
        .collect();
    assert_eq!(removed.len(), 2, "{events:?}");
    assert_eq!(
        removed[0]["identifier"],
        json!({"type": "email", "value": "dad@example.com"})
    );
    assert_eq!(
        removed[1]["identifier"],
        json!({"type": "phone", "value": "+31612345678"})
    );
    for e in removed {
        assert_eq!(e["cause"], "token:test-admin");
        assert!(e["other_id"].is_null());
    }
    assert_eq!(events[0]["kind"], "identifier_removed", "newest first");

    // Removing on an absorbed id redirects to the survivor.
    merged(&app, &other, &p).await;
    let resp = remove_identifier(&app, &p, "loyalty_card", "LC-1").await;
    assert_eq!(
        resp.headers().get("canonical-customer-id").unwrap(),
        other.as_str()
    );
    assert_error(resp, 308, "profile_merged").await;
}

#[tokio::test]
async fn removing_an_absorbed_members_identifier_survives_unmerge_with_a_newer_version() {
    let app = spawn_app().await;
    let anna = seed_anna(&app).await;
    let bea = seed_bea(&app).await;
    let bea_before = app.profile(&bea).await;
    merged(&app, &anna, &bea).await;
    // A wrongly linked device on the merged profile; it was Bea's.
    let resp = remove_identifier(&app, &anna, "device_id", "dev-bea").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(owner(&app, "device_id", "dev-bea").await, None);

    let r = unmerged(&app, &anna, &bea).await;
    assert_eq!(
        identifier_values(&r["restored"]),
        set(&["web_cookie:ck-bea"]),
        "the removal stands"
    );
    assert_eq!(owner(&app, "device_id", "dev-bea").await, None);
    assert_eq!(
        identifier_values(&r["survivor"]),
        set(&[
            "account_id:C-1001",
            "email:anna@example.com",
            "phone:+31611112222"
        ])
    );
    assert!(
        version(&r["restored"]) > version(&bea_before),
        "Bea lost an identifier, so her version must move past {}: {}",
        version(&bea_before),
        r["restored"]
    );
}

// ---------------------------------------------------------------------------
// 7: the identity ledger

#[tokio::test]
async fn history_records_every_identity_event_newest_first() {
    let app = spawn_app().await;
    let a = id_of(
        &app.ingest(json!({
            "signal_id": "h-1", "channel": "ivr",
            "identifiers": [{"type": "email", "value": "hanna@example.com"},
                            {"type": "phone", "value": "06 4321 8888"}]
        }))
        .await,
    );
    let b = id_of(
        &app.ingest(json!({
            "signal_id": "h-2", "channel": "web",
            "identifiers": [{"type": "web_cookie", "value": "ck-h"}],
            "traits": {"color": "green"},
            "answers": [{"key": "size", "value": "M"}],
            "event": {"type": "page_view", "episode": {"id": "ep-h"}}
        }))
        .await,
    );
    let c = id_of(
        &app.ingest(json!({
            "signal_id": "h-3", "channel": "app",
            "identifiers": [{"type": "device_id", "value": "dev-h"}, {"type": "chat_session", "value": "cs-h"}]
        }))
        .await,
    );
    // Automatic merge through the cookie.
    let r = app
        .ingest(json!({
            "signal_id": "h-link", "channel": "web",
            "identifiers": [{"type": "email", "value": "hanna@example.com"},
                            {"type": "web_cookie", "value": "ck-h"}]
        }))
        .await;
    assert_eq!(r["merged_ids"], json!([b]));
    // Manual merge, manual unmerge, identifier removal.
    merged(&app, &a, &c).await;
    unmerged(&app, &a, &c).await;
    let resp = remove_identifier(&app, &a, "phone", "0643218888").await;
    assert_eq!(resp.status(), 200);

    let events = history(&app, &a).await;
    assert_eq!(
        kinds(&events),
        [
            "identifier_removed",
            "unmerged",
            "merged_in",
            "merged_in",
            "identifier_added",
            "identifier_added",
            "created"
        ]
    );
    for e in &events {
        for k in [
            "at",
            "cause",
            "contributed",
            "id",
            "identifier",
            "kind",
            "other_id",
        ] {
            assert!(e.get(k).is_some(), "{k} in {e}");
        }
    }
    let ats: Vec<i64> = events
        .iter()
        .map(|e| nanos(e["at"].as_str().unwrap()))
        .collect();
    assert!(
        ats.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {ats:?}"
    );
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "ids descend: {ids:?}");

    let phone = json!({"type": "phone", "value": "+31643218888"});
    let email = json!({"type": "email", "value": "hanna@example.com"});
    assert_eq!(events[0]["identifier"], phone);
    assert_eq!(events[0]["cause"], "token:test-admin");
    assert_eq!(events[1]["other_id"], c.as_str());
    assert_eq!(events[1]["cause"], "token:test-admin");
    assert!(events[1]["contributed"].is_null());
    // The manual merge of C.
    assert_eq!(events[2]["other_id"], c.as_str());
    assert_eq!(events[2]["cause"], "token:test-admin");
    assert!(
        events[2]["identifier"].is_null(),
        "a manual merge has no linking identifier"
    );
    assert_eq!(
        events[2]["contributed"],
        json!({"identifiers": 2, "traits": 0, "answers": 0, "episodes": 0, "interactions": 0})
    );
    // The automatic merge of B, with B's share. Each ledger names its own
    // side of the link: here the survivor's e-mail (B's cookie is named in
    // B's ledger, which goes with B if B is ever erased). It names who did
    // it and through which channel, as manual changes do.
    assert_eq!(events[3]["other_id"], b.as_str());
    assert_eq!(events[3]["cause"], "signal:h-link");
    assert_eq!(events[3]["identifier"], email);
    assert_eq!(events[3]["by"], "test-admin");
    assert_eq!(events[3]["channel"], "web");
    assert_eq!(events[2]["by"], "test-admin");
    assert!(
        events[2]["channel"].is_null(),
        "the admin token has no channel claim"
    );
    assert_eq!(
        events[3]["contributed"],
        json!({"identifiers": 1, "traits": 1, "answers": 1, "episodes": 1, "interactions": 1})
    );
    // Creation by the first signal, with both identifiers.
    let added: BTreeSet<String> = events[4..6]
        .iter()
        .map(|e| e["identifier"].to_string())
        .collect();
    assert_eq!(
        added,
        [email.to_string(), phone.to_string()].into_iter().collect()
    );
    for e in &events[4..] {
        assert_eq!(e["cause"], "signal:h-1");
        assert!(e["other_id"].is_null());
        assert!(e["contributed"].is_null());
    }
    assert!(events[6]["identifier"].is_null());

    // B's own ledger: created, its cookie, then merged out into A.
    let b_events = history(&app, &b).await;
    assert_eq!(
        kinds(&b_events),
        ["merged_out", "identifier_added", "created"]
    );
    assert_eq!(b_events[0]["other_id"], a.as_str());
    assert_eq!(b_events[0]["cause"], "signal:h-link");
    assert_eq!(
        b_events[0]["identifier"],
        json!({"type": "web_cookie", "value": "ck-h"})
    );
    assert_eq!(b_events[0]["contributed"], events[3]["contributed"]);
    assert_eq!(b_events[2]["cause"], "signal:h-2");
    // C: merged out and back.
    let c_events = history(&app, &c).await;
    assert_eq!(
        kinds(&c_events),
        [
            "unmerged",
            "merged_out",
            "identifier_added",
            "identifier_added",
            "created"
        ]
    );
    assert_eq!(c_events[0]["other_id"], a.as_str());
    assert_eq!(c_events[1]["other_id"], a.as_str());
    assert_eq!(c_events[1]["cause"], "token:test-admin");

    // Cursor pagination: pages of 2 walk the same ledger and end without a cursor.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = vec![("limit", "2")];
        if let Some(c) = cursor.as_deref() {
            query.push(("cursor", c));
        }
        let page = history_page(&app, &a, &query).await;
        let got = page["events"].as_array().unwrap();
        assert!(!got.is_empty() && got.len() <= 2, "{page}");
        walked.extend(got.iter().cloned());
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination ends");
    }
    assert_eq!(pages, 4);
    assert_eq!(walked, events);
    // A page exactly as long as what is left has no cursor.
    let page = history_page(&app, &a, &[("limit", "7")]).await;
    assert!(page["next_cursor"].is_null(), "{page}");
    assert_eq!(page["events"].as_array().unwrap().len(), 7);
    let page = history_page(&app, &a, &[("limit", "6")]).await;
    assert_eq!(page["next_cursor"], events[5]["id"]);
    // A bad cursor, a bad limit, an unknown id.
    let resp = app
        .request(Method::GET, &format!("/v1/profiles/{a}/history"))
        .query(&[("cursor", "yesterday")])
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "invalid_cursor").await;
    let resp = app.get(&format!("/v1/profiles/{NOBODY}/history")).await;
    assert_error(resp, 404, "profile_not_found").await;

    // Who was linked to whom is personal data: not without `pii:read`, nor
    // without `profiles:read`.
    for scopes in [&["profiles:read"][..], &["pii:read"][..]] {
        let reader = app.token(scopes, None);
        let resp = app
            .client
            .get(format!("{}/v1/profiles/{a}/history?limit=200", app.address))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap();
        assert_error(resp, 403, "insufficient_scope").await;
    }

    // Erasure: the ledger keeps only that it happened, with no personal data.
    assert_eq!(app.erase(&a).await.status(), 204);
    let after = history(&app, &a).await;
    assert_eq!(kinds(&after), ["erased"]);
    assert_eq!(after[0]["cause"], "token:test-admin");
    assert!(after[0]["identifier"].is_null());
    assert!(after[0]["other_id"].is_null());
    assert!(after[0]["contributed"].is_null());
    // B was erased with A: its ledger is gone too, or keeps only erasures.
    let resp = app.get(&format!("/v1/profiles/{b}/history")).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let b_after: Value = serde_json::from_str(&text).unwrap();
    match status {
        404 => assert_eq!(b_after["error"]["code"], "profile_not_found"),
        200 => assert!(
            kinds(b_after["events"].as_array().unwrap())
                .iter()
                .all(|k| *k == "erased"),
            "{b_after}"
        ),
        other => panic!("history of erased member: {other} {text}"),
    }
    for secret in ["hanna", "4321", "8888", "ck-h", "h-link", "h-1", "h-2"] {
        assert!(
            !text.contains(secret),
            "{secret} in the erased ledger of B: {text}"
        );
    }
    let page = history_page(&app, &a, &[]).await;
    let text = page.to_string();
    for secret in ["hanna", "4321", "8888", "ck-h", "h-link", "h-1", "h-2"] {
        assert!(
            !text.contains(secret),
            "{secret} in the erased ledger: {text}"
        );
    }
}

// ---------------------------------------------------------------------------
// 8: caps

#[tokio::test]
async fn merges_beyond_the_merged_cap_are_refused_and_change_nothing() {
    let app = spawn_app_with(|s| {
        s.profiles.max_merged = 2;
        s.profiles.max_identifiers = 60;
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = app
            .ingest(json!({"channel": "web", "identifiers": [{"type": "web_cookie", "value": format!("cap-{i}")}],
                           "traits": {format!("t{i}"): i}, "event": {"type": "page_view"}}))
            .await;
        ids.push(id_of(&r));
    }
    merged(&app, &ids[0], &ids[1]).await;
    merged(&app, &ids[0], &ids[2]).await;

    // An automatic merge beyond the cap: the signal stores what fits (its
    // trait, on A) and reports the merge it could not make; D stays apart.
    let r = app
        .ingest(json!({"signal_id": "cap-link", "channel": "web",
                       "identifiers": [{"type": "web_cookie", "value": "cap-0"},
                                       {"type": "web_cookie", "value": "cap-3"}],
                       "traits": {"linked": true}}))
        .await;
    assert_eq!(id_of(&r), ids[0]);
    assert_eq!(r["merged_ids"], json!([]));
    assert_eq!(
        r["conflicts"],
        json!([{"type": "web_cookie", "value": "cap-3", "reason": "profile_cap"}])
    );
    assert_eq!(
        app.profile(&ids[0]).await["traits"]["linked"]["value"],
        true
    );

    let a = snapshot(&app, &ids[0]).await;
    let d = snapshot(&app, &ids[3]).await;
    let a_history = history(&app, &ids[0]).await;
    // A manual merge beyond the cap.
    let err = assert_error(
        app.merge(&ids[0], &ids[3]).await,
        409,
        "profile_cap_exceeded",
    )
    .await;
    assert!(
        err["error"]["message"].as_str().unwrap().contains('2'),
        "{err}"
    );
    // The other way round: D would absorb A, which holds two already.
    assert_error(
        app.merge(&ids[3], &ids[0]).await,
        409,
        "profile_cap_exceeded",
    )
    .await;
    // A chain: E holding F is two more for A... and one more for E.
    merged(&app, &ids[4], &ids[5]).await;
    assert_error(
        app.merge(&ids[0], &ids[4]).await,
        409,
        "profile_cap_exceeded",
    )
    .await;

    assert_identical("A", &a, &snapshot(&app, &ids[0]).await);
    assert_identical("D", &d, &snapshot(&app, &ids[3]).await);
    assert_eq!(
        history(&app, &ids[0]).await,
        a_history,
        "nothing in the ledger"
    );
    assert_eq!(
        owner(&app, "web_cookie", "cap-3").await.as_deref(),
        Some(ids[3].as_str())
    );

    // Unmerging frees a slot; the same link is then made.
    unmerged(&app, &ids[0], &ids[2]).await;
    let r = app
        .ingest(json!({"signal_id": "cap-link-2", "channel": "web",
                       "identifiers": [{"type": "web_cookie", "value": "cap-0"},
                                       {"type": "web_cookie", "value": "cap-3"}]}))
        .await;
    assert_eq!(r["merged_ids"], json!([ids[3]]));
    assert_eq!(r["conflicts"], json!([]));
}

#[tokio::test]
async fn signals_and_merges_beyond_the_identifier_cap_store_what_fits() {
    let app = spawn_app_with(|s| {
        s.profiles.max_merged = 2;
        s.profiles.max_identifiers = 60;
    })
    .await;
    let cookies = |range: std::ops::Range<usize>| -> Vec<Value> {
        range
            .map(|i| json!({"type": "web_cookie", "value": format!("idc-{i}")}))
            .collect()
    };
    let p = id_of(
        &app.ingest(json!({"channel": "web", "identifiers": cookies(0..50)}))
            .await,
    );
    let r = app
        .ingest(json!({"channel": "web", "identifiers": cookies(49..59)}))
        .await;
    assert_eq!(id_of(&r), p);
    assert_eq!(
        app.profile(&p).await["identifiers"]
            .as_array()
            .unwrap()
            .len(),
        59
    );

    // 59 + 2 new > 60: the first new one fits, the second is reported, and
    // the rest of the signal (its trait, its event) is stored.
    let r = app
        .ingest(json!({"channel": "web", "identifiers": cookies(58..61),
                       "traits": {"big": true}, "event": {"type": "page_view"}}))
        .await;
    assert_eq!(id_of(&r), p);
    assert_eq!(
        r["conflicts"],
        json!([{"type": "web_cookie", "value": "idc-60", "reason": "profile_cap"}])
    );
    let profile = app.profile(&p).await;
    assert_eq!(profile["identifiers"].as_array().unwrap().len(), 60);
    assert_eq!(profile["traits"]["big"]["value"], true);
    assert_eq!(profile["channels"]["web"]["interactions"], 1);
    assert_eq!(
        owner(&app, "web_cookie", "idc-59").await.as_deref(),
        Some(p.as_str())
    );
    assert_eq!(owner(&app, "web_cookie", "idc-60").await, None);

    // A merge that would bring two more identifiers.
    let before = snapshot(&app, &p).await;
    let before_history = history(&app, &p).await;
    let q = id_of(
        &app.ingest(json!({"channel": "web", "identifiers": cookies(100..102)}))
            .await,
    );
    let q_before = snapshot(&app, &q).await;
    assert_error(app.merge(&p, &q).await, 409, "profile_cap_exceeded").await;
    assert_error(app.merge(&q, &p).await, 409, "profile_cap_exceeded").await;
    assert_identical("P", &before, &snapshot(&app, &p).await);
    assert_identical("Q", &q_before, &snapshot(&app, &q).await);
    assert_eq!(history(&app, &p).await, before_history);

    // The same link by a signal: reported, both stay whole.
    let r = app
        .ingest(json!({"channel": "web", "identifiers": [cookies(0..1)[0].clone(), cookies(100..101)[0].clone()]}))
        .await;
    assert_eq!(id_of(&r), p);
    assert_eq!(r["merged_ids"], json!([]));
    assert_eq!(
        r["conflicts"],
        json!([{"type": "web_cookie", "value": "idc-100", "reason": "profile_cap"}])
    );
    assert_eq!(
        owner(&app, "web_cookie", "idc-100").await.as_deref(),
        Some(q.as_str())
    );
}

// ---------------------------------------------------------------------------
// 9: concurrency

/// Many signals, merges and unmerges at once over the identifiers of a few
/// people; afterwards every identity invariant holds and nothing is lost.
/// With `cross`, some signals name two people's identifiers (automatic merges).
///
/// The random traffic may race itself out of every merge (each one finding
/// its target merged away), so the storm also carries one merge, one
/// unmerge and one automatic merge over people nobody else touches: those
/// always happen, concurrently with the rest, however the machine schedules.
async fn concurrent_identity_traffic(cross: bool) {
    const PEOPLE: usize = 8;
    // People 8 to 13: pairs that only the dedicated tasks touch.
    const MERGE_PAIR: (usize, usize) = (8, 9);
    const UNMERGE_PAIR: (usize, usize) = (10, 11);
    const AUTO_PAIR: (usize, usize) = (12, 13);
    const TASKS: usize = 100;
    let app = Arc::new(spawn_app().await);
    let mut people = Vec::new();
    for i in 0..PEOPLE + 6 {
        let r = app
            .ingest(json!({"channel": "web", "identifiers": [
                {"type": "email", "value": format!("p{i}@example.com")},
                {"type": "web_cookie", "value": format!("base-{i}")}]}))
            .await;
        people.push(id_of(&r));
    }
    // Some merges already done, so unmerges have something to undo from the start.
    for (target, source) in [(0, 1), (2, 3), (4, 5), UNMERGE_PAIR] {
        merged(&app, &people[target], &people[source]).await;
    }
    let people = Arc::new(people);
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (app, people) = (app.clone(), people.clone());
        tasks.spawn(async move {
            let (a, b) = MERGE_PAIR;
            let resp = app.merge(&people[a], &people[b]).await;
            assert_eq!(resp.status(), 200, "{}", body(resp).await);
            (None, "merged")
        });
    }
    {
        let (app, people) = (app.clone(), people.clone());
        tasks.spawn(async move {
            let (a, b) = UNMERGE_PAIR;
            let resp = app.unmerge(&people[a], &people[b]).await;
            assert_eq!(resp.status(), 200, "{}", body(resp).await);
            (None, "unmerged")
        });
    }
    if cross {
        let app = app.clone();
        tasks.spawn(async move {
            let (i, j) = AUTO_PAIR;
            let k = TASKS;
            let b = app
                .ingest(json!({
                    "signal_id": format!("sig-{k}"),
                    "channel": "app",
                    "identifiers": [
                        {"type": "web_cookie", "value": format!("base-{i}")},
                        {"type": "chat_session", "value": format!("cs-{k}")},
                        {"type": "email", "value": format!("p{j}@example.com")},
                    ],
                    "traits": {format!("t{k}"): k},
                    "event": {"type": "app_open", "properties": {"k": k}}
                }))
                .await;
            assert_eq!(b["merged_ids"].as_array().unwrap().len(), 1, "{b}");
            (Some((k, i)), "auto-merged")
        });
    }
    for k in 0..TASKS {
        let app = app.clone();
        let people = people.clone();
        tasks.spawn(async move {
            // A fixed pseudo-random pair per task.
            let i = (k * 7 + 3) % PEOPLE;
            let j = (i + 1 + (k * 5) % (PEOPLE - 1)) % PEOPLE;
            match k % 4 {
                0 | 1 => {
                    let mut identifiers = vec![
                        json!({"type": "web_cookie", "value": format!("base-{i}")}),
                        json!({"type": "chat_session", "value": format!("cs-{k}")}),
                    ];
                    if cross && k % 4 == 1 {
                        identifiers
                            .push(json!({"type": "email", "value": format!("p{j}@example.com")}));
                    }
                    let resp = app
                        .post_signal(&json!({
                            "signal_id": format!("sig-{k}"),
                            "channel": "app",
                            "identifiers": identifiers,
                            "traits": {format!("t{k}"): k},
                            "event": {"type": "app_open", "properties": {"k": k}}
                        }))
                        .await;
                    let status = resp.status().as_u16();
                    let b = body(resp).await;
                    assert_eq!(status, 200, "signal {k}: {b}");
                    if !cross {
                        assert_eq!(b["conflicts"], json!([]), "signal {k}: {b}");
                        assert_eq!(b["merged_ids"], json!([]), "signal {k}: {b}");
                    }
                    let merging = !b["merged_ids"].as_array().unwrap().is_empty();
                    (Some((k, i)), if merging { "auto-merged" } else { "signal" })
                }
                2 => {
                    // Merge into wherever i is now.
                    let resp = app.get_profile(&people[i]).await;
                    let target = resp
                        .headers()
                        .get("canonical-customer-id")
                        .map_or(people[i].clone(), |v| v.to_str().unwrap().to_owned());
                    let resp = app.merge(&target, &people[j]).await;
                    let status = resp.status().as_u16();
                    let b = body(resp).await;
                    let code = b["error"]["code"].as_str().unwrap_or("");
                    let outcome = match (status, code) {
                        (200, _) => "merged",
                        (308, "profile_merged") => "raced",
                        (409, "merge_conflict") => "limit",
                        (422, "same_profile") => "same",
                        _ => panic!("merge {k}: {status} {b}"),
                    };
                    (None, outcome)
                }
                _ => {
                    // Undo wherever j went (a few tries: others move it too).
                    let mut outcome = "not merged";
                    for _ in 0..3 {
                        let resp = app.get_profile(&people[j]).await;
                        let Some(to) = resp
                            .headers()
                            .get("canonical-customer-id")
                            .map(|v| v.to_str().unwrap().to_owned())
                        else {
                            break;
                        };
                        let resp = app.unmerge(&to, &people[j]).await;
                        let status = resp.status().as_u16();
                        let b = body(resp).await;
                        outcome = match (status, b["error"]["code"].as_str()) {
                            (200, _) => "unmerged",
                            (308, Some("profile_merged")) => "unmerge raced a merge",
                            (409, Some("nothing_to_unmerge")) => "unmerge raced an unmerge",
                            _ => panic!("unmerge {k}: {status} {b}"),
                        };
                        if status == 200 {
                            break;
                        }
                    }
                    (None, outcome)
                }
            }
        });
    }
    let mut acknowledged = Vec::new();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (signal, outcome) = joined.unwrap();
        acknowledged.extend(signal);
        *outcomes.entry(outcome).or_default() += 1;
    }
    assert_eq!(acknowledged.len(), TASKS / 2 + usize::from(cross));
    eprintln!("outcomes: {outcomes:?}");
    // The storm really merged and unmerged.
    assert!(
        outcomes.get("merged").is_some_and(|n| *n > 0),
        "{outcomes:?}"
    );
    assert!(
        outcomes.get("unmerged").is_some_and(|n| *n > 0),
        "{outcomes:?}"
    );
    if cross {
        assert!(
            outcomes.get("auto-merged").is_some_and(|n| *n > 0),
            "{outcomes:?}"
        );
    }

    // Every person's id is live or an alias of a live profile that lists it.
    let mut live: BTreeMap<String, Value> = BTreeMap::new();
    for id in people.iter() {
        let resp = app.get_profile(id).await;
        match resp.status().as_u16() {
            200 => {
                live.insert(id.clone(), body(resp).await);
            }
            308 => {
                let to = resp.headers()["canonical-customer-id"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let survivor = app.profile(&to).await;
                assert!(
                    survivor["merged_ids"]
                        .as_array()
                        .unwrap()
                        .contains(&json!(id)),
                    "{id} redirects to {to}, which lists it: {survivor}"
                );
            }
            other => panic!("{id}: {other}"),
        }
    }
    assert!(!live.is_empty());
    // Every merged id of a live profile redirects to it.
    for (id, p) in &live {
        for m in p["merged_ids"].as_array().unwrap() {
            assert!(
                !live.contains_key(m.as_str().unwrap()),
                "{m} is live and merged into {id}"
            );
            assert_redirects(&app, m.as_str().unwrap(), id).await;
        }
    }
    // Every identifier is listed by exactly one live profile, which owns it.
    let mut listed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, p) in &live {
        for ident in identifier_values(p) {
            listed.entry(ident).or_default().push(id.clone());
        }
    }
    let doubles: Vec<_> = listed.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        doubles.is_empty(),
        "identifiers on two live profiles: {doubles:?}"
    );
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for i in 0..people.len() {
        expected.insert(format!("email:p{i}@example.com"));
        expected.insert(format!("web_cookie:base-{i}"));
    }
    for (k, _) in &acknowledged {
        expected.insert(format!("chat_session:cs-{k}"));
    }
    assert_eq!(
        listed.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "no identifier lost or invented"
    );
    for (ident, ids) in &listed {
        let (kind, value) = ident.split_once(':').unwrap();
        assert_eq!(
            owner(&app, kind, value).await.as_ref(),
            Some(&ids[0]),
            "{ident}"
        );
    }
    // Every acknowledged signal's trait and interaction are on the profile
    // its chat session resolves to, and nowhere is an interaction counted twice.
    let mut timelines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in live.keys() {
        timelines.insert(id.clone(), signal_ids(&timeline(&app, id).await));
    }
    for (k, i) in &acknowledged {
        let holder = &listed[&format!("chat_session:cs-{k}")][0];
        let p = &live[holder];
        if !cross {
            // The signal named only base-i and its session: they stay together.
            assert_eq!(
                &listed[&format!("web_cookie:base-{i}")][0],
                holder,
                "signal {k}'s identifiers resolve to one profile"
            );
        }
        assert_eq!(
            p["traits"][format!("t{k}")]["value"],
            json!(k),
            "trait of signal {k} on {holder}"
        );
        assert!(
            timelines[holder].contains(&format!("sig-{k}")),
            "interaction of signal {k} on {holder}"
        );
    }
    let all: Vec<&String> = timelines.values().flatten().collect();
    assert_eq!(
        all.len(),
        acknowledged.len(),
        "each interaction once: {all:?}"
    );
    let traits: usize = live
        .values()
        .map(|p| p["traits"].as_object().unwrap().len())
        .sum();
    assert_eq!(traits, acknowledged.len(), "each trait once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_signals_merges_and_unmerges_keep_every_identity_invariant() {
    concurrent_identity_traffic(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_automatic_merges_and_unmerges_keep_every_identity_invariant() {
    concurrent_identity_traffic(true).await;
}

// ---------------------------------------------------------------------------
// 10: erasing after an unmerge

#[tokio::test]
async fn erasing_an_unmerged_profile_leaves_none_of_its_identifiers_elsewhere() {
    let app = spawn_app().await;
    let a = app
        .ingest(signal("web", &[("email", "anna@example.com")]))
        .await;
    let b = app
        .ingest(signal("web", &[("email", "bob@example.com")]))
        .await;
    let (a, b) = (
        a["customer_id"].as_str().unwrap(),
        b["customer_id"].as_str().unwrap(),
    );
    assert_eq!(app.merge(a, b).await.status(), 200);
    // While merged, Bob's signal brings a new phone (it joins Bob's share).
    app.ingest(json!({"signal_id": "bob-phone", "channel": "ivr",
                      "identifiers": [{"type": "email", "value": "bob@example.com"}, {"type": "phone", "value": "0687654321"}]}))
        .await;
    let resp = app.unmerge(a, b).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(app.erase(b).await.status(), 204);

    let history = body(
        app.get(&format!("/v1/profiles/{a}/history?limit=200"))
            .await,
    )
    .await;
    let text = history.to_string();
    assert!(!text.contains("bob@example.com"), "{text}");
    assert!(!text.contains("+31687654321"), "{text}");
    // Bob's signal, replayed, does not come back.
    let replay = json!({"signal_id": "bob-phone", "channel": "ivr",
                        "identifiers": [{"type": "email", "value": "bob@example.com"}, {"type": "phone", "value": "0687654321"}]});
    assert_error(app.post_signal(&replay).await, 410, "profile_erased").await;
    assert_error(
        app.lookup("phone", "0687654321").await,
        404,
        "profile_not_found",
    )
    .await;
}
