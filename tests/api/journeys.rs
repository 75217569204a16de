//! The stories the service exists for, end to end through HTTP; and the
//! customer's journey: the stage each event reaches (named by the signal,
//! by a `[[journey.rules]]` entry, or by its event type) and the history of
//! the stages reached.

use anamnesis::config::JourneyRule;
use serde_json::json;

use crate::helpers::{
    assert_error, body, card, event_at, field_list, id_of, now_s, ok, page_view, rfc, shift,
    signal, spawn_app, spawn_app_with, HOUR, MINUTE,
};

#[tokio::test]
async fn ivr_then_chat_then_agent_lookup_by_a_differently_written_number() {
    let app = spawn_app().await;
    // Minutes ago, whatever the day: the IVR's answer keeps for a day.
    let at = |minutes_ago: i64| {
        (chrono::Utc::now() - chrono::Duration::minutes(minutes_ago)).to_rfc3339()
    };
    let ivr = app
        .ingest(json!({
            "signal_id": "ivr-7f3a-0001",
            "channel": "ivr",
            "occurred_at": at(3),
            "identifiers": [{"type": "phone", "value": "06 1234 5678"}],
            "traits": {"preferred_language": "nl"},
            "answers": [{"key": "reason_for_contact", "value": "delivery", "question": "Why are you calling?"}],
            "event": {"type": "call_started", "summary": "Caller chose 'deliveries'",
                      "episode": {"id": "order-A-1001", "title": "Delivery of order A-1001", "status": "open"},
                      "journey_stage": "service", "properties": {"menu_path": "2-1"}}
        }))
        .await;
    assert_eq!(ivr["created"], true);
    let id = ivr["customer_id"].as_str().unwrap().to_owned();

    let chat = app
        .ingest(json!({
            "signal_id": "chat-0001",
            "channel": "chat",
            "occurred_at": at(2),
            "identifiers": [{"type": "phone", "value": "+31 6 12345678"}, {"type": "chat_session", "value": "cs-42"}],
            "answers": [{"key": "order_number", "value": "A-1001", "question": "What is your order number?"}],
            "event": {"type": "chat_message", "summary": "Asked where the parcel is", "episode": {"id": "order-A-1001"}}
        }))
        .await;
    assert_eq!(chat["customer_id"], id.as_str());
    assert_eq!(chat["created"], false);
    assert_eq!(chat["version"], 2);

    // The agent's desktop gets the caller's number in yet another spelling.
    let resp = app.context_by("phone", "0031612345678").await;
    assert_eq!(resp.status(), 200);
    let card = body(resp).await;
    assert_eq!(card["customer_id"], id.as_str());
    assert_eq!(card["traits"]["preferred_language"], "nl");
    assert_eq!(card["answers"]["reason_for_contact"]["value"], "delivery");
    assert_eq!(card["answers"]["reason_for_contact"]["channel"], "ivr");
    assert_eq!(card["answers"]["order_number"]["value"], "A-1001");
    assert_eq!(card["answers"]["order_number"]["channel"], "chat");
    assert_eq!(card["journey_stage"], "service");
    assert_eq!(card["last_channel"], "chat");
    let episodes = card["open_episodes"].as_array().unwrap();
    assert_eq!(episodes.len(), 1);
    assert_eq!(episodes[0]["id"], "order-A-1001");
    assert_eq!(episodes[0]["title"], "Delivery of order A-1001");
    assert_eq!(episodes[0]["channels"], json!(["chat", "ivr"]));
    let recent = card["recent_interactions"].as_array().unwrap();
    let kinds: Vec<&str> = recent.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["chat_message", "call_started"],
        "newest first across channels"
    );
    assert_eq!(recent[1]["properties"]["menu_path"], "2-1");
    let identifiers = card["identifiers"].as_array().unwrap();
    assert!(identifiers.contains(&json!({"type": "phone", "value": "+31612345678"})));
    assert!(identifiers.contains(&json!({"type": "chat_session", "value": "cs-42"})));

    // The same profile through every read path.
    let by_lookup = body(app.lookup("phone", "+31-6-1234-5678").await).await;
    assert_eq!(by_lookup["customer_id"], id.as_str());
    assert_eq!(by_lookup["channels"]["ivr"]["interactions"], 1);
    assert_eq!(by_lookup["channels"]["chat"]["interactions"], 1);
    assert_eq!(by_lookup["traits"]["preferred_language"]["channel"], "ivr");
    assert_eq!(
        by_lookup["traits"]["preferred_language"]["signal_id"],
        "ivr-7f3a-0001"
    );
    let by_id = body(app.context(&id).await).await;
    assert_eq!(by_id, card);
}

#[tokio::test]
async fn anonymous_browsing_then_login_merges_into_the_known_customer() {
    let app = spawn_app().await;
    let known = app
        .ingest(json!({
            "channel": "store",
            "occurred_at": "2026-11-01T10:00:00Z",
            "identifiers": [{"type": "account_id", "value": "C-1001"}, {"type": "email", "value": "anna@example.com"}],
            "traits": {"first_name": "Anna"}
        }))
        .await;
    let known_id = known["customer_id"].as_str().unwrap().to_owned();

    let mut anon_id = String::new();
    for (i, page) in ["/cars/pink-sports", "/cars/pink-sports/configure"]
        .iter()
        .enumerate()
    {
        let r = app
            .ingest(json!({
                "channel": "web",
                "occurred_at": format!("2026-11-20T20:0{i}:00Z"),
                "identifiers": [{"type": "web_cookie", "value": "ck-77"}],
                "event": {"type": "page_view", "properties": {"path": page, "category": "sports_car"}}
            }))
            .await;
        anon_id = r["customer_id"].as_str().unwrap().to_owned();
    }
    assert_ne!(anon_id, known_id);

    let login = app
        .ingest(json!({
            "channel": "web",
            "occurred_at": "2026-11-20T20:05:00Z",
            "identifiers": [{"type": "web_cookie", "value": "ck-77"}, {"type": "account_id", "value": "C-1001"}],
            "event": {"type": "login"}
        }))
        .await;
    // The survivor is the profile matched by the highest-priority identifier.
    assert_eq!(login["customer_id"], known_id.as_str());
    assert_eq!(login["merged_ids"], json!([anon_id]));
    assert_eq!(login["conflicts"], json!([]));

    // The anonymous id answers with a permanent redirect to the survivor.
    let resp = app.get_profile(&anon_id).await;
    assert_eq!(
        resp.headers().get("canonical-customer-id").unwrap(),
        known_id.as_str()
    );
    assert_eq!(
        resp.headers().get("location").unwrap(),
        format!("/v1/profiles/{known_id}").as_str()
    );
    assert_error(resp, 308, "profile_merged").await;
    let resp = app.context(&anon_id).await;
    assert_eq!(
        resp.headers().get("location").unwrap(),
        format!("/v1/profiles/{known_id}/context").as_str()
    );

    let merged = app.profile(&known_id).await;
    assert_eq!(merged["merged_ids"], json!([anon_id]));
    assert_eq!(merged["traits"]["first_name"]["value"], "Anna");
    assert_eq!(merged["channels"]["web"]["interactions"], 3);
    let timeline = body(app.timeline(&known_id, &[]).await).await;
    let paths: Vec<&str> = timeline["interactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["properties"]["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        ["/cars/pink-sports/configure", "/cars/pink-sports"],
        "pre-login browsing is in the survivor's timeline"
    );
    // The cookie now resolves to the known customer.
    assert_eq!(
        body(app.lookup("web_cookie", "ck-77").await).await["customer_id"],
        known_id.as_str()
    );
}

#[tokio::test]
async fn store_purchase_with_loyalty_card_and_email_joins_the_same_profile() {
    let app = spawn_app().await;
    let chat = app
        .ingest(signal(
            "chat",
            &[("email", "Bob@Example.com "), ("chat_session", "cs-1")],
        ))
        .await;
    let id = chat["customer_id"].as_str().unwrap().to_owned();
    let pos = app
        .ingest(json!({
            "channel": "store",
            "identifiers": [{"type": "loyalty_card", "value": "LC-555"}, {"type": "email", "value": "bob@example.com"}],
            "event": {"type": "purchase", "properties": {"sku": "SKU-1", "amount": 49.95}}
        }))
        .await;
    assert_eq!(pos["customer_id"], id.as_str());
    let later = app
        .ingest(signal("store", &[("loyalty_card", "LC-555")]))
        .await;
    assert_eq!(later["customer_id"], id.as_str());
    let p = app.profile(&id).await;
    let types: Vec<&str> = p["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["email", "loyalty_card", "chat_session"],
        "ordered by type priority"
    );
    assert_eq!(
        p["journey"]["stage"], "purchase",
        "purchase events move the journey by configuration"
    );
}

#[tokio::test]
async fn two_account_ids_never_merge() {
    let app = spawn_app().await;
    let x = app.ingest(signal("web", &[("account_id", "C-1")])).await;
    let y = app
        .ingest(signal(
            "web",
            &[("account_id", "C-2"), ("email", "y@example.com")],
        ))
        .await;
    let (x, y) = (
        x["customer_id"].as_str().unwrap(),
        y["customer_id"].as_str().unwrap(),
    );
    let r = app
        .ingest(signal(
            "chat",
            &[("account_id", "C-1"), ("email", "y@example.com")],
        ))
        .await;
    assert_eq!(r["customer_id"], x);
    assert_eq!(r["merged_ids"], json!([]));
    assert_eq!(
        r["conflicts"],
        json!([{"type": "email", "value": "y@example.com", "reason": "identifier_limit"}]),
        "a conflict never names the other customer"
    );
    // Both stay whole and apart; the email stays with its owner.
    assert_eq!(
        body(app.lookup("email", "y@example.com").await).await["customer_id"],
        y
    );
    assert_eq!(
        app.profile(x).await["identifiers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A confirmed manual merge is refused as well.
    assert_error(app.merge(x, y).await, 409, "merge_conflict").await;
    // And a new account id on a profile that already has one is not attached.
    let r = app
        .ingest(signal(
            "web",
            &[("account_id", "C-3"), ("email", "y@example.com")],
        ))
        .await;
    assert_eq!(r["customer_id"], y);
    assert_eq!(r["conflicts"][0]["reason"], "identifier_limit");
    assert_eq!(r["conflicts"][0]["value"], "C-3");
    assert_error(
        app.lookup("account_id", "C-3").await,
        404,
        "profile_not_found",
    )
    .await;
}

#[tokio::test]
async fn later_observations_win_whatever_the_arrival_order() {
    let app = spawn_app().await;
    let first = app
        .ingest(
            json!({"signal_id": "late", "channel": "web", "occurred_at": "2026-11-22T10:00:00Z",
                       "identifiers": [{"type": "email", "value": "t@example.com"}],
                       "traits": {"tier": "gold", "city": "Utrecht"}}),
        )
        .await;
    let id = first["customer_id"].as_str().unwrap().to_owned();
    // An older observation arrives afterwards: it must not overwrite.
    app.ingest(
        json!({"signal_id": "early", "channel": "agent", "occurred_at": "2026-11-22T09:00:00Z",
                      "identifiers": [{"type": "email", "value": "t@example.com"}],
                      "traits": {"tier": "silver", "nickname": "T"}}),
    )
    .await;
    // A tie on time goes to the higher-priority channel (agent over web).
    app.ingest(
        json!({"channel": "agent", "occurred_at": "2026-11-22T10:00:00Z",
                      "identifiers": [{"type": "email", "value": "t@example.com"}],
                      "traits": {"city": "Amsterdam"}}),
    )
    .await;
    let p = app.profile(&id).await;
    assert_eq!(
        p["traits"]["tier"],
        json!({"value": "gold", "channel": "web", "observed_at": "2026-11-22T10:00:00Z", "signal_id": "late"})
    );
    assert_eq!(p["traits"]["nickname"]["value"], "T");
    assert_eq!(p["traits"]["city"]["value"], "Amsterdam");
    assert_eq!(p["traits"]["city"]["channel"], "agent");
    // A deletion is an observation too: an older value arriving later stays deleted.
    let resp = app
        .patch_traits(
            &id,
            &json!({"channel": "agent", "traits": {"nickname": null}}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(body(resp).await["traits"].get("nickname").is_none());
    app.ingest(
        json!({"channel": "chat", "occurred_at": "2026-11-22T09:30:00Z",
                      "identifiers": [{"type": "email", "value": "t@example.com"}],
                      "traits": {"nickname": "Old"}}),
    )
    .await;
    assert!(app.profile(&id).await["traits"].get("nickname").is_none());
}

#[tokio::test]
async fn replaying_a_signal_returns_the_first_result_and_changes_nothing() {
    let app = spawn_app().await;
    let s = json!({"signal_id": "bot-1", "channel": "chatbot", "identifiers": [{"type": "chat_session", "value": "s-1"}],
                   "answers": [{"key": "order_number", "value": "A-9"}], "event": {"type": "answer_captured"}});
    let first = app.post_signal(&s).await;
    assert_eq!(first.status(), 201);
    let first = body(first).await;
    let again = app.post_signal(&s).await;
    assert_eq!(
        again.status(),
        201,
        "a replay answers exactly like the first call"
    );
    assert_eq!(body(again).await, first);
    let id = first["customer_id"].as_str().unwrap();
    let p = app.profile(id).await;
    assert_eq!(p["version"], 1);
    assert_eq!(p["channels"]["chatbot"]["interactions"], 1);
    // The same id in a batch is a replay too.
    let batch = body(app.post_batch(vec![s.clone(), s.clone()]).await).await;
    for item in batch["results"].as_array().unwrap() {
        assert_eq!(item["customer_id"], id);
        assert_eq!(item["status"], 201);
    }
    assert_eq!(app.profile(id).await["version"], 1);
    // Reusing an id for different content is refused, not silently ignored.
    let mut other = s.clone();
    other["answers"][0]["value"] = json!("A-10");
    assert_error(app.post_signal(&other).await, 409, "signal_id_reused").await;
}

#[tokio::test]
async fn erasing_frees_the_identifiers_and_nothing_comes_back() {
    let app = spawn_app().await;
    let a = app
        .ingest(json!({"signal_id": "e-1", "channel": "ivr", "identifiers": [{"type": "phone", "value": "0612345678"}],
                       "traits": {"first_name": "Eve"}, "event": {"type": "call_started"}}))
        .await;
    let b = app.ingest(signal("web", &[("web_cookie", "ck-e")])).await;
    let merged = app
        .merge(
            a["customer_id"].as_str().unwrap(),
            b["customer_id"].as_str().unwrap(),
        )
        .await;
    assert_eq!(merged.status(), 200);
    let id = a["customer_id"].as_str().unwrap();
    let absorbed = b["customer_id"].as_str().unwrap();

    let resp = app.erase(id).await;
    assert_eq!(resp.status(), 204);
    assert_error(app.get_profile(id).await, 404, "profile_not_found").await;
    assert_error(app.get_profile(absorbed).await, 404, "profile_not_found").await;
    assert_error(
        app.lookup("phone", "+31612345678").await,
        404,
        "profile_not_found",
    )
    .await;
    assert_error(
        app.lookup("web_cookie", "ck-e").await,
        404,
        "profile_not_found",
    )
    .await;
    assert_error(app.timeline(id, &[]).await, 404, "profile_not_found").await;
    assert_error(app.erase(id).await, 404, "profile_not_found").await;
    // A retried old signal does not resurrect the customer.
    let replay = json!({"signal_id": "e-1", "channel": "ivr", "identifiers": [{"type": "phone", "value": "0612345678"}],
                        "traits": {"first_name": "Eve"}, "event": {"type": "call_started"}});
    assert_error(app.post_signal(&replay).await, 410, "profile_erased").await;
    // The number is free: a new signal makes a new, empty profile.
    let fresh = app
        .ingest(signal("ivr", &[("phone", "06 1234 5678")]))
        .await;
    assert_eq!(fresh["created"], true);
    assert_ne!(fresh["customer_id"], id);
    let p = app.profile(fresh["customer_id"].as_str().unwrap()).await;
    assert_eq!(p["traits"], json!({}));
    assert_eq!(p["merged_ids"], json!([]));
    let t = body(
        app.timeline(fresh["customer_id"].as_str().unwrap(), &[])
            .await,
    )
    .await;
    assert_eq!(t["interactions"], json!([]));
}

#[tokio::test]
async fn timeline_pages_newest_first_with_a_cursor_and_a_channel_filter() {
    let app = spawn_app().await;
    let mut id = String::new();
    for i in 0..7 {
        let channel = if i % 2 == 0 { "web" } else { "chat" };
        let r = app
            .ingest(
                json!({"channel": channel, "occurred_at": format!("2026-11-22T10:0{i}:00Z"),
                           "identifiers": [{"type": "email", "value": "p@example.com"}],
                           "event": {"type": "touch", "properties": {"n": i}}}),
            )
            .await;
        id = r["customer_id"].as_str().unwrap().to_owned();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("limit", "3".to_owned())];
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = body(app.timeline(&id, &q).await).await;
        for i in page["interactions"].as_array().unwrap() {
            seen.push(i["properties"]["n"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, [6, 5, 4, 3, 2, 1, 0]);
    let chat = body(app.timeline(&id, &[("channel", "chat")]).await).await;
    let ns: Vec<i64> = chat["interactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["properties"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, [5, 3, 1]);
    let card = body(app.get(&format!("/v1/profiles/{id}/context?limit=2")).await).await;
    assert_eq!(card["recent_interactions"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn expired_answers_leave_the_card_but_stay_in_the_profile() {
    let app = spawn_app().await;
    let r = app
        .ingest(
            json!({"channel": "chatbot", "identifiers": [{"type": "chat_session", "value": "s-x"}],
            "answers": [
                {"key": "order_number", "value": "A-1", "expires_at": "2020-01-01T00:00:00Z"},
                {"key": "reason_for_contact", "value": "refund"}
            ]}),
        )
        .await;
    let id = r["customer_id"].as_str().unwrap();
    let card = body(app.context(id).await).await;
    assert!(card["answers"].get("order_number").is_none());
    assert_eq!(card["answers"]["reason_for_contact"]["value"], "refund");
    assert!(
        card["answers"]["reason_for_contact"]["expires_at"].is_string(),
        "configured ttl stamps an expiry"
    );
    let p = app.profile(id).await;
    assert_eq!(p["answers"]["order_number"]["value"], "A-1");
    // Answers posted directly are fresh and carry their channel.
    let resp = app
        .post_answers(id, &json!({"channel": "agent", "answers": [{"key": "order_number", "value": "A-2", "question": "Order?"}]}))
        .await;
    assert_eq!(resp.status(), 200);
    let card = body(app.context(id).await).await;
    assert_eq!(card["answers"]["order_number"]["value"], "A-2");
    assert_eq!(card["answers"]["order_number"]["channel"], "agent");
}

#[tokio::test]
async fn placeholder_identifiers_are_ignored_and_reported() {
    let app = spawn_app().await;
    let r = app
        .ingest(signal(
            "ivr",
            &[
                ("phone", "Withheld"),
                ("email", "unknown"),
                ("account_id", "C-77"),
            ],
        ))
        .await;
    let ignored = r["ignored_identifiers"].as_array().unwrap();
    assert_eq!(ignored.len(), 2);
    assert_eq!(ignored[0]["index"], 0);
    assert_eq!(ignored[0]["reason"], "placeholder");
    assert_eq!(ignored[1]["index"], 1);
    // Two callers with a withheld number are not linked.
    let other = app
        .ingest(signal(
            "ivr",
            &[("phone", "withheld"), ("account_id", "C-78")],
        ))
        .await;
    assert_ne!(other["customer_id"], r["customer_id"]);
}

#[tokio::test]
async fn merged_profiles_keep_episodes_and_answers_of_both() {
    let app = spawn_app().await;
    let a = app
        .ingest(json!({"channel": "chat", "identifiers": [{"type": "email", "value": "m@example.com"}],
                       "event": {"type": "complaint", "episode": {"id": "case-1", "title": "Broken screen", "status": "open"}}}))
        .await;
    let b = app
        .ingest(json!({"channel": "ivr", "identifiers": [{"type": "phone", "value": "0687654321"}],
                       "answers": [{"key": "reason_for_contact", "value": "screen"}],
                       "event": {"type": "call_started", "episode": {"id": "case-2", "status": "resolved"}}}))
        .await;
    let (a, b) = (
        a["customer_id"].as_str().unwrap(),
        b["customer_id"].as_str().unwrap(),
    );
    let resp = app.merge(a, b).await;
    assert_eq!(resp.status(), 200);
    let p = body(resp).await;
    assert_eq!(p["merged_ids"], json!([b]));
    assert_eq!(p["answers"]["reason_for_contact"]["value"], "screen");
    let card = body(app.context(a).await).await;
    let open: Vec<&str> = card["open_episodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(open, ["case-1"], "resolved episodes are not open");
    assert_eq!(card["recent_interactions"].as_array().unwrap().len(), 2);
    // Merging again is harmless; merging into the absorbed id redirects.
    assert_eq!(app.merge(a, b).await.status(), 200);
    assert_error(app.merge(b, a).await, 308, "profile_merged").await;
    assert_eq!(
        body(app.lookup("phone", "06 8765 4321").await).await["customer_id"],
        a
    );
}

// ---------------------------------------------------------------------------
// Journey stages: which stage each event reaches, and the history of stages.

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
