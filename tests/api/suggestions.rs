//! Merge suggestions instead of over-merging (a dismissed one stays
//! dismissed, through a merge too), verified identifiers, and consents
//! across merges.

use serde_json::json;

use crate::helpers::{assert_error, body, identifier_list, signal, spawn_app};

#[tokio::test]
async fn a_shared_family_landline_suggests_and_never_merges() {
    let app = spawn_app().await;
    let anna = app
        .ingest(signal(
            "store",
            &[("email", "anna@example.com"), ("phone", "020 123 4567")],
        ))
        .await;
    let ben = app
        .ingest(signal("store", &[("email", "ben@example.com")]))
        .await;
    let (anna, ben) = (
        anna["customer_id"].as_str().unwrap(),
        ben["customer_id"].as_str().unwrap(),
    );

    // Ben calls from the family landline and gives his e-mail.
    let r = app
        .ingest(json!({"channel": "ivr", "signal_id": "ivr-ben-1",
                       "identifiers": [{"type": "phone", "value": "+31201234567"}, {"type": "email", "value": "ben@example.com"}],
                       "traits": {"nickname": "Benny"}}))
        .await;
    assert_eq!(
        r["customer_id"], ben,
        "the signal lands on the profile of its highest-priority identifier"
    );
    assert_eq!(r["merged_ids"], json!([]));
    assert_eq!(
        r["conflicts"],
        json!([{"type": "phone", "value": "+31201234567", "reason": "merge_suggested"}]),
        "a conflict never names the other customer"
    );
    // Nobody merged; the phone stays Anna's; Ben's trait is Ben's.
    assert_eq!(app.profile(anna).await["merged_ids"], json!([]));
    assert_eq!(
        body(app.lookup("phone", "020 123 4567").await).await["customer_id"],
        anna
    );
    assert_eq!(
        app.profile(ben).await["traits"]["nickname"]["value"],
        "Benny"
    );
    assert!(app.profile(anna).await["traits"].get("nickname").is_none());

    // Both sides see the suggestion, with the evidence.
    for (me, other) in [(anna, ben), (ben, anna)] {
        let list = body(app.get(&format!("/v1/profiles/{me}/suggestions")).await).await;
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["customer_id"], other);
        assert_eq!(
            list[0]["evidence"],
            json!([{"type": "phone", "value": "+31201234567"}])
        );
        assert_eq!(list[0]["signals"], 1);
    }
    // Without pii:read, no suggestions: they name another customer.
    let reader = app.token(&["profiles:read"], None);
    let refused = app
        .get_as(&reader, &format!("/v1/profiles/{anna}/suggestions"))
        .await;
    assert_error(refused, 403, "insufficient_scope").await;

    // Dismissed: gone, and a new signal over the same phone does not bring it back.
    let resp = app
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/profiles/{anna}/suggestions/{ben}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    app.ingest(signal(
        "ivr",
        &[("phone", "0201234567"), ("email", "ben@example.com")],
    ))
    .await;
    assert_eq!(
        body(app.get(&format!("/v1/profiles/{anna}/suggestions")).await).await,
        json!([])
    );
    assert_eq!(
        body(app.get(&format!("/v1/profiles/{ben}/suggestions")).await).await,
        json!([])
    );
    let again = app
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/profiles/{anna}/suggestions/{ben}"),
        )
        .send()
        .await
        .unwrap();
    assert_error(again, 404, "suggestion_not_found").await;
}

#[tokio::test]
async fn accepting_a_suggestion_is_a_manual_merge() {
    let app = spawn_app().await;
    let a = app
        .ingest(signal(
            "store",
            &[("email", "c1@example.com"), ("phone", "0612345678")],
        ))
        .await;
    let b = app
        .ingest(signal("web", &[("email", "c2@example.com")]))
        .await;
    let (a, b) = (
        a["customer_id"].as_str().unwrap(),
        b["customer_id"].as_str().unwrap(),
    );
    app.ingest(signal(
        "chat",
        &[("phone", "0612345678"), ("email", "c2@example.com")],
    ))
    .await;
    let list = body(app.get(&format!("/v1/profiles/{b}/suggestions")).await).await;
    assert_eq!(list[0]["customer_id"], a);
    let resp = app.merge(b, a).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body(resp).await["merged_ids"], json!([a]));
    assert_eq!(
        body(app.get(&format!("/v1/profiles/{b}/suggestions")).await).await,
        json!([])
    );
    // The phone now resolves to the survivor.
    assert_eq!(
        body(app.lookup("phone", "+31612345678").await).await["customer_id"],
        b
    );
}

#[tokio::test]
async fn a_verified_identifier_merges_whatever_its_type_says() {
    let app = spawn_app().await;
    let a = app
        .ingest(signal(
            "store",
            &[("email", "v1@example.com"), ("phone", "0611111111")],
        ))
        .await;
    let b = app
        .ingest(signal("web", &[("email", "v2@example.com")]))
        .await;
    let (a, b) = (
        a["customer_id"].as_str().unwrap(),
        b["customer_id"].as_str().unwrap(),
    );
    let verified = json!({"channel": "app", "identifiers": [
        {"type": "phone", "value": "0611111111", "verified": true},
        {"type": "email", "value": "v2@example.com"}]});
    // A token without identity:write may not vouch, not even with profiles:write.
    let writer = app.token(&["signals:write", "profiles:write"], None);
    let resp = app
        .client
        .post(format!("{}/v1/signals", app.address))
        .bearer_auth(writer)
        .json(&verified)
        .send()
        .await
        .unwrap();
    assert_error(resp, 403, "insufficient_scope").await;
    assert_eq!(
        app.profile(a).await["merged_ids"],
        json!([]),
        "nothing happened"
    );
    // With identity:write the phone merges like an e-mail would.
    let vouching = app.token(&["signals:write", "identity:write"], None);
    let resp = app
        .client
        .post(format!("{}/v1/signals", app.address))
        .bearer_auth(vouching)
        .json(&verified)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = body(resp).await;
    let survivor = r["customer_id"].as_str().unwrap();
    let absorbed = if survivor == a { b } else { a };
    assert_eq!(r["merged_ids"], json!([absorbed]));
    assert_eq!(r["conflicts"], json!([]));
}

#[tokio::test]
async fn merges_keep_the_most_restrictive_consent_and_unmerge_gives_each_its_own() {
    let app = spawn_app().await;
    let a = app
        .ingest(signal("web", &[("email", "k1@example.com")]))
        .await;
    let b = app
        .ingest(signal("store", &[("loyalty_card", "LC-9")]))
        .await;
    let (a, b) = (
        a["customer_id"].as_str().unwrap(),
        b["customer_id"].as_str().unwrap(),
    );
    let put = |id: &str, purpose: &str, granted: bool, channel: &str| {
        app.request(
            reqwest::Method::PUT,
            &format!("/v1/profiles/{id}/consents/{purpose}"),
        )
        .json(&json!({"granted": granted, "channel": channel}))
        .send()
    };
    assert_eq!(
        put(a, "marketing", true, "web").await.unwrap().status(),
        200
    );
    assert_eq!(
        put(a, "analytics", true, "web").await.unwrap().status(),
        200
    );
    assert_eq!(
        put(b, "marketing", false, "store").await.unwrap().status(),
        200
    );
    assert_eq!(
        put(b, "analytics", true, "store").await.unwrap().status(),
        200
    );
    let before_a = app.profile(a).await["consents"].clone();
    let before_b = app.profile(b).await["consents"].clone();
    assert_eq!(before_a["marketing"]["granted"], true);

    let merged = body(app.merge(a, b).await).await;
    assert_eq!(
        merged["consents"]["marketing"]["granted"], false,
        "the most restrictive wins"
    );
    assert_eq!(merged["consents"]["marketing"]["channel"], "merge");
    assert_eq!(
        merged["consents"]["analytics"]["granted"], true,
        "agreement stays"
    );
    let history = body(app.get(&format!("/v1/profiles/{a}/history")).await).await;
    let restricted: Vec<&serde_json::Value> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "consent_restricted")
        .collect();
    assert_eq!(restricted.len(), 1, "{history}");
    assert_eq!(restricted[0]["purpose"], "marketing");
    assert_eq!(restricted[0]["other_id"], b);
    // The merge entry says what each side brought.
    let merged_in = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "merged_in")
        .unwrap();
    assert_eq!(merged_in["contributed"]["identifiers"], 1);
    assert_eq!(merged_in["survivor_contributed"]["identifiers"], 1);
    assert_eq!(merged_in["survivor_contributed"]["traits"], 0);

    let resp = app.unmerge(a, b).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.profile(a).await["consents"],
        before_a,
        "each side gets its own back"
    );
    assert_eq!(app.profile(b).await["consents"], before_b);

    // A later decision by the customer wins over a merge's restriction.
    app.merge(a, b).await;
    assert_eq!(
        put(a, "marketing", true, "web").await.unwrap().status(),
        200
    );
    assert_eq!(
        app.profile(a).await["consents"]["marketing"]["granted"],
        true
    );

    let resp = put(a, "carrier_pigeons", true, "web").await.unwrap();
    assert_error(resp, 404, "unknown_purpose").await;
}

#[tokio::test]
async fn after_an_unmerge_every_identifier_is_on_exactly_one_side() {
    let app = spawn_app().await;
    let t = app.ingest(signal("web", &[("web_cookie", "c0")])).await;
    let m = app
        .ingest(signal("chat", &[("email", "e1@example.com")]))
        .await;
    let (t, m) = (
        t["customer_id"].as_str().unwrap(),
        m["customer_id"].as_str().unwrap(),
    );
    assert_eq!(app.merge(t, m).await.status(), 200);
    // A signal through both sides' identifiers plus a new one: it speaks for
    // the absorbed member (its e-mail outranks the cookie).
    let r = app
        .ingest(signal(
            "app",
            &[
                ("email", "e1@example.com"),
                ("web_cookie", "c0"),
                ("device_id", "d1"),
            ],
        ))
        .await;
    assert_eq!(r["customer_id"], t);
    let resp = app.unmerge(t, m).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(identifier_list(&app.profile(t).await), ["web_cookie:c0"]);
    assert_eq!(
        identifier_list(&app.profile(m).await),
        ["email:e1@example.com", "device_id:d1"]
    );
    assert_eq!(
        body(app.lookup("web_cookie", "c0").await).await["customer_id"],
        t
    );
    assert_eq!(
        body(app.lookup("device_id", "d1").await).await["customer_id"],
        m
    );
    assert_eq!(
        body(app.lookup("email", "e1@example.com").await).await["customer_id"],
        m
    );
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
