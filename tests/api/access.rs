//! Who may see and do what, tried as an attacker holding what a public
//! frontend holds (a token bound to channel `web`) and as a privacy reviewer
//! would: no lookup oracle, identity operations as a permission of their
//! own, channel tokens refused the scopes their channel is not allowed, free
//! text masked as personal data, and a customer's token that reads their own
//! open episodes and nothing else.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, Response};
use serde_json::{json, Value};

use crate::helpers::{
    admin_claims, assert_error, body, id_of, send, signal, spawn_app, spawn_app_with, TestApp,
    SECRET,
};

async fn lookup_as(app: &TestApp, token: &str, path: &str, kind: &str, value: &str) -> Response {
    app.client
        .get(format!("{}{path}", app.address))
        .query(&[("type", kind), ("value", value)])
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// A customer the back office knows: e-mail, phone, account, a name, what
/// they told the chatbot, and a case with its feedback.
async fn customer(app: &TestApp) -> String {
    id_of(
        &app.ingest(json!({
            "channel": "agent",
            "identifiers": [{"type": "email", "value": "annadevries@example.com"},
                            {"type": "phone", "value": "06 1234 5678"},
                            {"type": "account_id", "value": "C-1001"}],
            "traits": {"first_name": "Anna"},
            "answers": [
                {"key": "address", "value": "Oudegracht 14, 3511 AB Utrecht"},
                {"key": "reason_for_contact", "value": "delivery"},
                {"key": "order_number", "value": "A-1001"}
            ],
            "event": {"type": "call_started", "summary": "Anna called about the Oudegracht delivery",
                      "properties": {"menu_path": "2-1", "note": "lives above the shop"},
                      "episode": {"id": "order-A-1001", "title": "Delivery to Oudegracht 14",
                                  "status": "open", "public_status": "Your parcel left our depot"}}
        }))
        .await,
    )
}

// ---------------------------------------------------------------------------
// No oracle
// ---------------------------------------------------------------------------

#[tokio::test]
async fn masks_show_too_little_to_guess_and_lookups_that_miss_run_out() {
    let app = spawn_app_with(|s| {
        s.limits.lookup_misses_per_hour = 60;
        s.limits.lookup_miss_burst = 20;
    })
    .await;
    let id = customer(&app).await;
    // What a public frontend holds.
    let desk = app.token_as("web-frontend", &["profiles:read"], Some("web"));

    // The mask: the country code and the last two digits; the first letter
    // of a long local part; at least six characters hidden.
    let card = body(
        send(
            &app,
            Some(&desk),
            Method::GET,
            &format!("/v1/profiles/{id}/context"),
            None,
        )
        .await,
    )
    .await;
    let shown: Vec<&str> = card["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    assert!(shown.contains(&"+31****78"), "{shown:?}");
    assert!(shown.contains(&"a***@example.com"), "{shown:?}");
    assert!(!shown.iter().any(|v| v.contains("5678")), "{shown:?}");

    // Hits spend nothing.
    for _ in 0..30 {
        let resp = lookup_as(&app, &desk, "/v1/profiles/lookup", "phone", "+31612345678").await;
        assert_eq!(resp.status(), 200);
    }
    // The attacker tries the hidden digits, across every lookup route.
    let routes = ["/v1/profiles/lookup", "/v1/context", "/v1/personalization"];
    let mut refused = None;
    for n in 0..40 {
        let guess = format!("+316123456{:02}", n);
        let resp = lookup_as(&app, &desk, routes[n % 3], "phone", &guess).await;
        match resp.status().as_u16() {
            404 => continue,
            429 => {
                refused = Some(n);
                assert!(resp.headers().contains_key("retry-after"));
                assert_error(resp, 429, "lookup_budget_exhausted").await;
                break;
            }
            other => panic!("guess {n}: {other}"),
        }
    }
    assert_eq!(refused, Some(20), "the burst of misses, then refused");
    // Refused hit or miss alike, so the refusal tells nothing.
    let resp = lookup_as(&app, &desk, "/v1/profiles/lookup", "phone", "+31612345678").await;
    assert_error(resp, 429, "lookup_budget_exhausted").await;
    let resp = lookup_as(
        &app,
        &desk,
        "/v1/context",
        "email",
        "annadevries@example.com",
    )
    .await;
    assert_error(resp, 429, "lookup_budget_exhausted").await;
    // Another subject has a budget of its own; reads by id are not lookups.
    let other = app.token_as("desk-13", &["profiles:read"], None);
    let resp = lookup_as(&app, &other, "/v1/context", "phone", "06 1234 5678").await;
    assert_eq!(resp.status(), 200);
    let resp = send(
        &app,
        Some(&desk),
        Method::GET,
        &format!("/v1/profiles/{id}"),
        None,
    )
    .await;
    assert_eq!(resp.status(), 200);
}

/// A claim followed by a read is not a lookup that skips the budget: the
/// claimant's own profile, its suggestions and ledger, and a lookup of the
/// claimed value look the same whether someone else holds the value or not.
#[tokio::test]
async fn a_claim_tells_nothing_about_who_else_holds_the_value() {
    let app = spawn_app_with(|s| {
        s.limits.lookup_misses_per_hour = 60;
        s.limits.lookup_miss_burst = 1;
    })
    .await;
    customer(&app).await;
    let web = app.token_as(
        "web-frontend",
        &["signals:write", "profiles:read", "profiles:write"],
        Some("web"),
    );
    let mut seen = Vec::new();
    for (cookie, email) in [
        ("probe-1", "annadevries@example.com"),
        ("probe-2", "nobody.here@example.com"),
    ] {
        let resp = app
            .post_signal_as(
                &web,
                &signal("web", &[("web_cookie", cookie), ("email", email)]),
            )
            .await;
        let result = body(resp).await;
        let own = id_of(&result);
        let profile = body(
            send(
                &app,
                Some(&web),
                Method::GET,
                &format!("/v1/profiles/{own}"),
                None,
            )
            .await,
        )
        .await;
        let card = body(
            send(
                &app,
                Some(&web),
                Method::GET,
                &format!("/v1/profiles/{own}/context"),
                None,
            )
            .await,
        )
        .await;
        for path in ["suggestions", "history"] {
            let resp = send(
                &app,
                Some(&web),
                Method::GET,
                &format!("/v1/profiles/{own}/{path}"),
                None,
            )
            .await;
            assert_error(resp, 403, "insufficient_scope").await;
        }
        // A browser's cookie works like a password: not shown back.
        assert!(!card.to_string().contains(cookie), "{card}");
        seen.push(json!({
            "result": [result["created"], result["conflicts"], result["merged_ids"]],
            "identifiers": profile["identifiers"].as_array().unwrap().len(),
            "card": card["identifiers"].as_array().unwrap().len(),
        }));
        // Looking the claimed value up is the plain lookup it was before the
        // claim: a hit for the owner's, a miss (spent) for nobody's, never
        // the claimant's profile.
        let resp = lookup_as(&app, &web, "/v1/profiles/lookup", "email", email).await;
        let status = resp.status().as_u16();
        let found = resp.text().await.unwrap();
        assert!(!found.contains(&own), "{found}");
        seen.push(json!(status));
    }
    assert_eq!(seen[0], seen[2], "a claim answered differently: {seen:?}");
    assert_eq!(seen[1], 200);
    assert_eq!(seen[3], 404);
    // That was a miss: the budget of one is spent.
    let resp = lookup_as(
        &app,
        &web,
        "/v1/profiles/lookup",
        "email",
        "annadevries@example.com",
    )
    .await;
    assert_error(resp, 429, "lookup_budget_exhausted").await;
    // The desk with pii:read sees the unconfirmed claim, and the suggestion.
    let desk = app.token_as("desk-12", &["profiles:read", "pii:read"], Some("agent"));
    let owner = body(
        lookup_as(
            &app,
            &desk,
            "/v1/profiles/lookup",
            "email",
            "annadevries@example.com",
        )
        .await,
    )
    .await;
    let suggestions = body(
        send(
            &app,
            Some(&desk),
            Method::GET,
            &format!(
                "/v1/profiles/{}/suggestions",
                owner["customer_id"].as_str().unwrap()
            ),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(suggestions.as_array().unwrap().len(), 1, "{suggestions}");
}

#[tokio::test]
async fn anonymous_visitors_by_cookie_do_not_spend_the_budget() {
    let app = spawn_app_with(|s| {
        s.limits.lookup_misses_per_hour = 60;
        s.limits.lookup_miss_burst = 3;
    })
    .await;
    let web = app.token_as(
        "web-frontend",
        &["profiles:read", "signals:write"],
        Some("web"),
    );
    // Every new visitor's first page is a miss: a random cookie names no person.
    for n in 0..20 {
        let resp = lookup_as(
            &app,
            &web,
            "/v1/personalization",
            "web_cookie",
            &format!("new-visitor-{n}"),
        )
        .await;
        assert_error(resp, 404, "profile_not_found").await;
    }
    let resp = lookup_as(
        &app,
        &web,
        "/v1/profiles/lookup",
        "email",
        "nobody@example.com",
    )
    .await;
    assert_error(resp, 404, "profile_not_found").await;
}

// ---------------------------------------------------------------------------
// Identity operations are their own permission
// ---------------------------------------------------------------------------

#[tokio::test]
async fn merging_unmerging_and_removing_identifiers_need_identity_write() {
    let app = spawn_app().await;
    let a = id_of(
        &app.ingest(signal(
            "agent",
            &[("account_id", "C-2001"), ("phone", "06 2222 3333")],
        ))
        .await,
    );
    let b = id_of(
        &app.ingest(signal(
            "agent",
            &[
                ("email", "bart.jansen@example.com"),
                ("phone", "06 2222 3333"),
            ],
        ))
        .await,
    );
    let web = app.token_as(
        "web-frontend",
        &["profiles:write", "profiles:read", "signals:write"],
        Some("web"),
    );
    let crm = app.token_as("crm", &["profiles:write", "profiles:read"], None);
    let identity = app.token_as("identity-desk", &["identity:write"], None);

    let merge = format!("/v1/profiles/{a}/merge");
    let unmerge = format!("/v1/profiles/{a}/unmerge");
    let remove = format!("/v1/profiles/{a}/identifiers/phone/0622223333");
    let dismiss = format!("/v1/profiles/{a}/suggestions/{b}");
    for token in [&web, &crm] {
        let resp = send(
            &app,
            Some(token),
            Method::POST,
            &merge,
            Some(&json!({"source_id": b})),
        )
        .await;
        assert_error(resp, 403, "insufficient_scope").await;
        let resp = send(
            &app,
            Some(token),
            Method::POST,
            &unmerge,
            Some(&json!({"merged_id": b})),
        )
        .await;
        assert_error(resp, 403, "insufficient_scope").await;
        let resp = send(&app, Some(token), Method::DELETE, &remove, None).await;
        assert_error(resp, 403, "insufficient_scope").await;
        let resp = send(&app, Some(token), Method::DELETE, &dismiss, None).await;
        assert_error(resp, 403, "insufficient_scope").await;
        // Vouching for an identifier decides who is who as well.
        let mut vouch = signal(
            if token == &web { "web" } else { "agent" },
            &[("account_id", "C-2001")],
        );
        vouch["identifiers"][0]["verified"] = json!(true);
        let resp = app.post_signal_as(token, &vouch).await;
        assert_error(resp, 403, "insufficient_scope").await;
    }
    // Nothing changed; the identity desk may.
    assert_eq!(app.profile(&a).await["merged_ids"], json!([]));
    let resp = send(&app, Some(&identity), Method::DELETE, &dismiss, None).await;
    assert_eq!(resp.status(), 204);
    let resp = send(
        &app,
        Some(&identity),
        Method::POST,
        &merge,
        Some(&json!({"source_id": b})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = send(
        &app,
        Some(&identity),
        Method::POST,
        &unmerge,
        Some(&json!({"merged_id": b})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = send(&app, Some(&identity), Method::DELETE, &remove, None).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_channel_token_carrying_a_scope_its_channel_may_not_is_refused_everywhere() {
    let app = spawn_app().await;
    let id = customer(&app).await;
    let profile = format!("/v1/profiles/{id}");
    for scopes in [
        &["profiles:read", "pii:read"][..],
        &["signals:write", "identity:write"][..],
        &["profiles:erase"][..],
        &["changes:read"][..],
        &["admin"][..],
    ] {
        let web = app.token_as("web-frontend", scopes, Some("web"));
        let refused = scopes
            .iter()
            .find(|s| s.contains(':') && **s != "profiles:read" && **s != "signals:write")
            .unwrap_or(&"admin");
        let resp = send(&app, Some(&web), Method::GET, &profile, None).await;
        let error = assert_error(resp, 403, "scope_not_allowed_for_channel").await;
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(refused) && message.contains("`web`"),
            "{message}"
        );
        let resp = app
            .post_signal_as(&web, &signal("web", &[("web_cookie", "c-1")]))
            .await;
        assert_error(resp, 403, "scope_not_allowed_for_channel").await;
        let resp = send(&app, Some(&web), Method::DELETE, &profile, None).await;
        assert_error(resp, 403, "scope_not_allowed_for_channel").await;
    }
    // The profile is intact and nothing leaked.
    assert_eq!(
        app.profile(&id).await["traits"]["first_name"]["value"],
        "Anna"
    );
    // The agent desk's channel may read personal data and change identity.
    let agent = app.token_as(
        "desk-12",
        &["profiles:read", "pii:read", "identity:write"],
        Some("agent"),
    );
    let p = body(send(&app, Some(&agent), Method::GET, &profile, None).await).await;
    assert_eq!(p["traits"]["first_name"]["value"], "Anna");
}

#[tokio::test]
async fn a_company_may_allow_a_channel_a_sensitive_scope() {
    let app = spawn_app_with(|s| {
        s.auth
            .channel_scopes
            .insert("store".into(), vec!["pii:read".into()]);
    })
    .await;
    let id = customer(&app).await;
    let till = app.token_as("till-4", &["profiles:read", "pii:read"], Some("store"));
    let p = body(
        send(
            &app,
            Some(&till),
            Method::GET,
            &format!("/v1/profiles/{id}"),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(p["traits"]["first_name"]["value"], "Anna");
    let till = app.token_as("till-4", &["identity:write"], Some("store"));
    let resp = send(
        &app,
        Some(&till),
        Method::GET,
        &format!("/v1/profiles/{id}"),
        None,
    )
    .await;
    assert_error(resp, 403, "scope_not_allowed_for_channel").await;
}

// ---------------------------------------------------------------------------
// Free text is personal data unless configured otherwise
// ---------------------------------------------------------------------------

/// Every free-text field of `customer`, wherever a reader sees it.
async fn free_text(app: &TestApp, token: &str, id: &str) -> Value {
    let get = |path: String| async move {
        body(send(app, Some(token), Method::GET, &path, None).await).await
    };
    let p = get(format!("/v1/profiles/{id}")).await;
    let card = get(format!("/v1/profiles/{id}/context")).await;
    let timeline = get(format!("/v1/profiles/{id}/timeline")).await;
    let episodes = get(format!("/v1/profiles/{id}/episodes")).await;
    json!({
        "profile_answers": [p["answers"]["address"]["value"], p["answers"]["reason_for_contact"]["value"], p["answers"]["order_number"]["value"]],
        "card_answers": [card["answers"]["address"]["value"], card["answers"]["reason_for_contact"]["value"], card["answers"]["order_number"]["value"]],
        "profile_episode": [p["episodes"][0]["title"], p["episodes"][0]["public_status"]],
        "card_episode": [card["open_episodes"][0]["title"], card["open_episodes"][0]["public_status"]],
        "episodes": [episodes["episodes"][0]["title"], episodes["episodes"][0]["public_status"]],
        "card_interaction": [card["recent_interactions"][0]["summary"], card["recent_interactions"][0]["properties"]],
        "timeline": [timeline["interactions"][0]["summary"], timeline["interactions"][0]["properties"]],
    })
}

#[tokio::test]
async fn free_text_is_masked_without_pii_read_except_what_is_configured_not_personal() {
    let app = spawn_app().await;
    let id = customer(&app).await;
    let web = app.token_as("web-frontend", &["profiles:read"], Some("web"));
    let masked = "****";
    assert_eq!(
        free_text(&app, &web, &id).await,
        json!({
            "profile_answers": [masked, "delivery", "A-1001"],
            "card_answers": [masked, "delivery", "A-1001"],
            "profile_episode": [masked, "Your parcel left our depot"],
            "card_episode": [masked, "Your parcel left our depot"],
            "episodes": [masked, "Your parcel left our depot"],
            "card_interaction": [masked, {"menu_path": masked, "note": masked}],
            "timeline": [masked, {"menu_path": masked, "note": masked}],
        })
    );
    // With `pii:read`, everything in clear.
    let desk = app.token_as("desk-12", &["profiles:read", "pii:read"], None);
    let clear = free_text(&app, &desk, &id).await;
    assert_eq!(
        clear["profile_answers"][0],
        "Oudegracht 14, 3511 AB Utrecht"
    );
    assert_eq!(clear["card_episode"][0], "Delivery to Oudegracht 14");
    assert_eq!(
        clear["timeline"][0],
        "Anna called about the Oudegracht delivery"
    );
    assert_eq!(clear["timeline"][1]["note"], "lives above the shop");

    // Nothing of it anywhere in what the web token reads.
    for path in [
        format!("/v1/profiles/{id}"),
        format!("/v1/profiles/{id}/context"),
        format!("/v1/profiles/{id}/timeline"),
        format!("/v1/profiles/{id}/episodes"),
        format!("/v1/profiles/{id}/history"),
    ] {
        let text = send(&app, Some(&web), Method::GET, &path, None)
            .await
            .text()
            .await
            .unwrap();
        for secret in ["Oudegracht", "above the shop", "Anna", "5678"] {
            assert!(!text.contains(secret), "{path} shows {secret}: {text}");
        }
    }
}

#[tokio::test]
async fn resolved_episodes_feedback_and_follow_ups_mask_their_text() {
    let app = spawn_app_with(|s| s.follow_ups.delay = Duration::from_secs(1)).await;
    let id = customer(&app).await;
    app.ingest(json!({
        "channel": "agent",
        "identifiers": [{"type": "account_id", "value": "C-1001"}],
        "occurred_at": "2026-01-02T10:00:00Z",
        "event": {"type": "case_resolved",
                  "episode": {"id": "complaint-7", "title": "Complaint about Oudegracht courier", "status": "resolved"}}
    }))
    .await;
    let web = app.token_as("web-frontend", &["profiles:read"], Some("web"));
    let page = body(send(&app, Some(&web), Method::GET, "/v1/follow-ups", None).await).await;
    let due: Vec<&Value> = page["follow_ups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["customer_id"] == id.as_str())
        .collect();
    assert_eq!(due.len(), 1, "{page}");
    assert_eq!(due[0]["title"], "****");
    let desk = app.token_as("desk-12", &["profiles:read", "pii:read"], None);
    let page = body(send(&app, Some(&desk), Method::GET, "/v1/follow-ups", None).await).await;
    assert!(page
        .to_string()
        .contains("Complaint about Oudegracht courier"));

    // Feedback's comment is the customer's own words.
    app.ingest(json!({
        "channel": "web",
        "identifiers": [{"type": "account_id", "value": "C-1001"}],
        "event": {"type": "survey_answered",
                  "episode": {"id": "complaint-7",
                              "feedback": {"nps": 9, "comment": "Thanks Joost, my neighbour at number 16 was home"}}}
    }))
    .await;
    let text = send(
        &app,
        Some(&web),
        Method::GET,
        &format!("/v1/profiles/{id}"),
        None,
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(!text.contains("neighbour"), "{text}");
    assert!(text.contains("\"nps\":9"), "{text}");
}

#[tokio::test]
async fn a_company_may_mark_properties_and_fields_not_personal() {
    let app = spawn_app_with(|s| {
        s.privacy.public_properties = vec!["menu_path".into()];
        s.privacy.public_fields = vec!["episode.title".into(), "interaction.summary".into()];
        s.privacy.public_answers = vec![];
    })
    .await;
    let id = customer(&app).await;
    let web = app.token_as("web-frontend", &["profiles:read"], Some("web"));
    let seen = free_text(&app, &web, &id).await;
    assert_eq!(seen["card_answers"], json!(["****", "****", "****"]));
    assert_eq!(
        seen["card_episode"],
        json!(["Delivery to Oudegracht 14", "****"])
    );
    assert_eq!(
        seen["timeline"],
        json!(["Anna called about the Oudegracht delivery", {"menu_path": "2-1", "note": "****"}])
    );
}

#[tokio::test]
async fn live_events_mask_free_text_for_a_token_without_pii_read() {
    let app = spawn_app().await;
    let id = customer(&app).await;
    let web = app.token_as("web-frontend", &["profiles:read"], Some("web"));
    // Replayed from the start of the profile's log.
    let resp = app
        .client
        .get(format!("{}/v1/profiles/{id}/events", app.address))
        .header("last-event-id", "0")
        .bearer_auth(&web)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut resp = resp;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(text.contains("answer.captured")
        && text.contains("interaction.added")
        && text.contains("episode.updated"))
    {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("the replay arrives within 10 s")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    for secret in ["Oudegracht", "above the shop"] {
        assert!(!text.contains(secret), "the stream shows {secret}: {text}");
    }
    assert!(text.contains("\"****\""), "{text}");
    assert!(text.contains("Your parcel left our depot"), "{text}");
}

// ---------------------------------------------------------------------------
// A customer's own view
// ---------------------------------------------------------------------------

/// Claims naming a customer, as a company's login would mint them.
fn customer_token(kind: &str, value: &str, scope: &str) -> String {
    let mut claims = admin_claims("login-portal");
    claims["scope"] = json!(scope);
    claims["customer"] = json!({"type": kind, "value": value});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_customer_reads_their_own_open_episodes_and_nothing_else() {
    let app = spawn_app().await;
    let anna = customer(&app).await;
    // A resolved case, and another customer with a case of their own.
    app.ingest(json!({
        "channel": "agent",
        "identifiers": [{"type": "account_id", "value": "C-1001"}],
        "event": {"type": "case_resolved", "episode": {"id": "complaint-7", "title": "Angry about courier", "status": "resolved"}}
    }))
    .await;
    let bert = id_of(
        &app.ingest(json!({
            "channel": "agent",
            "identifiers": [{"type": "account_id", "value": "C-2002"}],
            "event": {"type": "order_placed", "episode": {"id": "order-B-5", "title": "Bert's sofa", "status": "open", "public_status": "Being made"}}
        }))
        .await,
    );
    let token = customer_token("account_id", "C-1001", "");
    let mine = body(send(&app, Some(&token), Method::GET, "/v1/me/episodes", None).await).await;
    let episodes = mine["episodes"].as_array().unwrap();
    assert_eq!(episodes.len(), 1, "{mine}");
    let fields: Vec<&String> = episodes[0].as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        ["id", "opened_at", "public_status", "status", "updated_at"]
    );
    assert_eq!(episodes[0]["id"], "order-A-1001");
    assert_eq!(episodes[0]["status"], "open");
    assert_eq!(episodes[0]["public_status"], "Your parcel left our depot");
    assert_eq!(
        mine.as_object().unwrap().len(),
        1,
        "nothing but episodes: {mine}"
    );
    // The same customer by another of their identifiers.
    let by_email = customer_token("email", "AnnaDeVries@example.com", "");
    assert_eq!(
        body(send(&app, Some(&by_email), Method::GET, "/v1/me/episodes", None).await).await,
        mine
    );

    // Nothing else, whatever scope the token names.
    for token in [
        token.clone(),
        customer_token("account_id", "C-1001", "admin pii:read"),
    ] {
        for path in [
            format!("/v1/profiles/{anna}"),
            format!("/v1/profiles/{bert}"),
            format!("/v1/profiles/{anna}/context"),
            format!("/v1/profiles/{anna}/timeline"),
            format!("/v1/profiles/{anna}/history"),
            format!("/v1/profiles/{anna}/suggestions"),
            format!("/v1/profiles/{anna}/episodes"),
            "/v1/profiles/lookup?type=account_id&value=C-2002".to_owned(),
            "/v1/follow-ups".to_owned(),
            "/v1/changes".to_owned(),
        ] {
            let resp = send(&app, Some(&token), Method::GET, &path, None).await;
            assert_error(resp, 403, "customer_token_not_allowed").await;
        }
        let resp = app
            .post_signal_as(&token, &signal("web", &[("account_id", "C-2002")]))
            .await;
        assert_error(resp, 403, "customer_token_not_allowed").await;
        let resp = send(
            &app,
            Some(&token),
            Method::PATCH,
            &format!("/v1/profiles/{anna}/traits"),
            Some(&json!({"channel": "web", "traits": {"vip": true}})),
        )
        .await;
        assert_error(resp, 403, "customer_token_not_allowed").await;
    }
    // Staff tokens have no "own" view.
    let resp = send(&app, Some(&app.admin), Method::GET, "/v1/me/episodes", None).await;
    assert_error(resp, 403, "customer_token_required").await;
}

#[tokio::test]
async fn a_customer_token_naming_a_claimed_or_session_identifier_sees_nothing() {
    let app = spawn_app().await;
    customer(&app).await;
    // An attacker's browser claims an e-mail nobody held yet, and opens a case.
    let web = app.token_as("web-frontend", &["signals:write"], Some("web"));
    let resp = app
        .post_signal_as(
            &web,
            &json!({"channel": "web",
                    "identifiers": [{"type": "web_cookie", "value": "attacker-cookie"},
                                    {"type": "email", "value": "victim.later@example.com"}],
                    "event": {"type": "form_sent", "episode": {"id": "fake-1", "status": "open", "public_status": "Refund approved"}}}),
        )
        .await;
    assert!(resp.status().is_success());
    // The real owner of that address logs in later: the claim is not theirs to read.
    let token = customer_token("email", "victim.later@example.com", "");
    let mine = body(send(&app, Some(&token), Method::GET, "/v1/me/episodes", None).await).await;
    assert_eq!(mine, json!({"episodes": []}));
    // A cookie names a browser, a phone may be a household's: not a customer.
    for (kind, value) in [("web_cookie", "attacker-cookie"), ("phone", "06 1234 5678")] {
        let token = customer_token(kind, value, "");
        let resp = send(&app, Some(&token), Method::GET, "/v1/me/episodes", None).await;
        assert_error(resp, 422, "invalid_identifier").await;
    }
    // Nobody by that account: nothing, and no hint.
    let token = customer_token("account_id", "C-9999", "");
    let mine = body(send(&app, Some(&token), Method::GET, "/v1/me/episodes", None).await).await;
    assert_eq!(mine, json!({"episodes": []}));
}
