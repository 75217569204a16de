//! Regressions from review: inputs that could make a profile unreadable,
//! personal data surviving an erasure, forgotten dismissals, leaks.

use serde_json::{json, Value};

use crate::helpers::{assert_error, body, signal, spawn_app};

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

#[tokio::test]
async fn a_dismissed_suggestion_stays_dismissed_after_a_merge() {
    let app = spawn_app().await;
    let a = app
        .ingest(signal(
            "web",
            &[("email", "ha@example.com"), ("phone", "0611112222")],
        ))
        .await;
    let b = app
        .ingest(signal("web", &[("email", "hb@example.com")]))
        .await;
    let (a, b) = (
        a["customer_id"].as_str().unwrap(),
        b["customer_id"].as_str().unwrap(),
    );
    app.ingest(signal(
        "ivr",
        &[("email", "hb@example.com"), ("phone", "0611112222")],
    ))
    .await;
    let resp = app
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/profiles/{a}/suggestions/{b}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    // A is absorbed by C; the same evidence arrives again.
    let c = app
        .ingest(signal(
            "web",
            &[("account_id", "HC-1"), ("email", "ha@example.com")],
        ))
        .await;
    let c = c["customer_id"].as_str().unwrap();
    app.ingest(signal(
        "ivr",
        &[("email", "hb@example.com"), ("phone", "0611112222")],
    ))
    .await;
    assert_eq!(
        body(app.get(&format!("/v1/profiles/{c}/suggestions")).await).await,
        json!([])
    );
    assert_eq!(
        body(app.get(&format!("/v1/profiles/{b}/suggestions")).await).await,
        json!([])
    );
}

#[tokio::test]
async fn namespaced_pii_traits_are_masked_and_errors_do_not_echo_values() {
    let app = spawn_app().await;
    let r = app
        .ingest(json!({"channel": "agent", "identifiers": [{"type": "account_id", "value": "C-55"}],
                       "traits": {"address.street": "Main 1", "address": "Main 1, Utrecht", "tier": "gold"}}))
        .await;
    let id = r["customer_id"].as_str().unwrap();
    let reader = app.token(&["profiles:read"], None);
    let resp = app.get_as(&reader, &format!("/v1/profiles/{id}")).await;
    let p = body(resp).await;
    assert_eq!(p["traits"]["address.street"]["value"], "Ma****");
    assert_eq!(p["traits"]["address"]["value"], "Ma****");
    assert_eq!(p["traits"]["tier"]["value"], "gold");

    let resp = app
        .post_signal(
            &json!({"channel": "ivr", "identifiers": [{"type": "phone", "value": 612345678}]}),
        )
        .await;
    let err = assert_error(resp, 422, "invalid_field").await;
    let message = err["error"]["message"].as_str().unwrap();
    assert!(!message.contains("612345678"), "{message}");
    assert!(message.contains("identifiers[0].value"), "{message}");
}

#[tokio::test]
async fn reusing_a_signal_id_for_a_different_event_is_refused() {
    let app = spawn_app().await;
    let first = json!({"signal_id": "s-1", "channel": "web", "identifiers": [{"type": "web_cookie", "value": "r1"}],
                       "event": {"type": "page_view", "properties": {"path": "/a"}}});
    assert_eq!(app.post_signal(&first).await.status(), 201);
    let mut other = first.clone();
    other["event"]["properties"]["path"] = json!("/b");
    assert_error(app.post_signal(&other).await, 409, "signal_id_reused").await;
    assert_eq!(
        app.post_signal(&first).await.status(),
        201,
        "the true replay still answers"
    );
}
