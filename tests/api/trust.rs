//! Trust in identity, tried as an attacker holding what a public web
//! frontend holds: a token bound to channel `web` with `signals:write`. No
//! claim may hand one customer's memory to another.

use serde_json::{json, Value};

use crate::helpers::{
    assert_error, body, id_of, identifier_list, owner, signal, spawn_app, spawn_app_with, TestApp,
};

/// A customer the back office knows well: e-mail, phone, a name, an answer
/// and an open case.
async fn victim(app: &TestApp) -> String {
    id_of(
        &app.ingest(json!({
            "channel": "store",
            "identifiers": [{"type": "email", "value": "vera@example.com"},
                            {"type": "phone", "value": "06 1111 2222"}],
            "traits": {"first_name": "Vera"},
            "answers": [{"key": "order_number", "value": "A-7001"}],
            "event": {"type": "order_placed",
                      "episode": {"id": "order-A-7001", "title": "Delivery of A-7001", "status": "open"}}
        }))
        .await,
    )
}

/// The attacker's own token: what a public web frontend holds.
fn web_token(app: &TestApp) -> String {
    app.token_as("web-frontend", &["signals:write"], Some("web"))
}

/// Posts `identifiers` on channel `web` with the web frontend's token;
/// returns the customer id it landed on.
async fn from_web(app: &TestApp, identifiers: &[(&str, &str)]) -> String {
    let (_, r) = ingest_as(app, &web_token(app), &signal("web", identifiers)).await;
    id_of(&r)
}

/// Posts as `token`; the result must be a 200 or 201.
async fn ingest_as(app: &TestApp, token: &str, signal: &Value) -> (u16, Value) {
    let resp = app.post_signal_as(token, signal).await;
    let status = resp.status().as_u16();
    let result = body(resp).await;
    assert!(status == 200 || status == 201, "{status}: {result}");
    (status, result)
}

/// The victim's profile as the back office sees it, less what reading it
/// may not change.
async fn snapshot(app: &TestApp, id: &str) -> Value {
    let p = app.profile(id).await;
    json!({
        "version": p["version"],
        "identifiers": identifier_list(&p),
        "traits": p["traits"],
        "answers": p["answers"],
        "episodes": p["episodes"],
        "merged_ids": p["merged_ids"],
    })
}

/// The ids of the profiles `id` has an open suggestion with, and the evidence.
async fn suggestions(app: &TestApp, id: &str) -> Vec<(String, Value)> {
    let list = body(app.get(&format!("/v1/profiles/{id}/suggestions")).await).await;
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|s| (id_of(s), s["evidence"].clone()))
        .collect()
}

#[tokio::test]
async fn a_claimed_email_never_merges_the_claimants_cookie_into_the_customer() {
    let app = spawn_app().await;
    let vera = victim(&app).await;
    let before = snapshot(&app, &vera).await;
    let web = web_token(&app);
    let mallory = from_web(&app, &[("web_cookie", "atk-1")]).await;

    let mut claim = signal(
        "web",
        &[("email", "vera@example.com"), ("web_cookie", "atk-1")],
    );
    claim["traits"] = json!({"first_name": "Mallory"});
    claim["answers"] = json!([{"key": "order_number", "value": "A-6666"}]);
    let (status, result) = ingest_as(&app, &web, &claim).await;
    assert_eq!(status, 200);
    assert_eq!(result["customer_id"], mallory.as_str());
    assert_eq!(result["merged_ids"], json!([]));
    assert_eq!(result["conflicts"], json!([]));
    assert!(
        !result.to_string().contains(&vera),
        "the answer names nobody else: {result}"
    );

    // The cookie still leads to the attacker alone; the victim is untouched.
    assert_eq!(
        owner(&app, "web_cookie", "atk-1").await,
        Some(mallory.clone())
    );
    assert_eq!(
        owner(&app, "email", "vera@example.com").await,
        Some(vera.clone())
    );
    assert_eq!(snapshot(&app, &vera).await, before);
    // Through the cookie, the attacker writes only to their own profile.
    let mut rename = signal("web", &[("web_cookie", "atk-1")]);
    rename["traits"] = json!({"first_name": "Mallory", "vip": true});
    ingest_as(&app, &web, &rename).await;
    assert_eq!(snapshot(&app, &vera).await, before);
    let card = body(app.context_by("web_cookie", "atk-1").await).await;
    assert_eq!(card["customer_id"], mallory.as_str());
    assert!(!card.to_string().contains("A-7001"), "{card}");

    // The agent sees the claim as a suggestion on both sides, with its evidence.
    let evidence = json!([{"type": "email", "value": "vera@example.com"}]);
    assert_eq!(
        suggestions(&app, &vera).await,
        vec![(mallory.clone(), evidence.clone())]
    );
    assert_eq!(suggestions(&app, &mallory).await, vec![(vera, evidence)]);
}

#[tokio::test]
async fn a_claimed_email_never_lends_the_customers_card_to_a_new_phone() {
    let app = spawn_app().await;
    let vera = victim(&app).await;
    let before = snapshot(&app, &vera).await;
    let web = web_token(&app);

    let mut claim = signal(
        "web",
        &[("email", "vera@example.com"), ("phone", "06 4444 0001")],
    );
    claim["answers"] = json!([{"key": "reason_for_contact", "value": "refund"}]);
    let (status, result) = ingest_as(&app, &web, &claim).await;
    assert_eq!(status, 201, "a profile of the claimant's own: {result}");
    assert_ne!(result["customer_id"], vera.as_str());
    assert_eq!(result["conflicts"], json!([]));

    // The desk that looks up the attacker's phone never gets the victim,
    // nor the claimant: a value only ever claimed is held by nobody.
    let resp = app.context_by("phone", "06 4444 0001").await;
    assert_error(resp, 404, "profile_not_found").await;
    // The claimant's own card never shows the victim's memory either.
    let own = body(app.context(result["customer_id"].as_str().unwrap()).await).await;
    assert!(!own.to_string().contains("A-7001"), "{own}");
    assert!(!own.to_string().contains("Vera"), "{own}");
    assert_eq!(snapshot(&app, &vera).await, before);
    assert!(!identifier_list(&app.profile(&vera).await).contains(&"phone:+31644440001".into()));
}

#[tokio::test]
async fn two_strangers_emails_in_one_claim_merge_nobody() {
    let app = spawn_app().await;
    let vera = victim(&app).await;
    let other = id_of(
        &app.ingest(json!({"channel": "store",
                           "identifiers": [{"type": "email", "value": "otto@example.com"}],
                           "traits": {"first_name": "Otto"}}))
            .await,
    );
    let (vera_before, otto_before) = (snapshot(&app, &vera).await, snapshot(&app, &other).await);
    let web = web_token(&app);
    let (_, result) = ingest_as(
        &app,
        &web,
        &signal(
            "web",
            &[("email", "vera@example.com"), ("email", "otto@example.com")],
        ),
    )
    .await;
    assert_eq!(result["merged_ids"], json!([]));
    assert_ne!(result["customer_id"], vera.as_str());
    assert_ne!(result["customer_id"], other.as_str());
    assert_eq!(snapshot(&app, &vera).await, vera_before);
    assert_eq!(snapshot(&app, &other).await, otto_before);
    assert_eq!(owner(&app, "email", "otto@example.com").await, Some(other));
}

#[tokio::test]
async fn the_answer_to_a_claim_never_tells_whether_someone_owns_it() {
    let app = spawn_app().await;
    victim(&app).await;
    let web = web_token(&app);
    let shape = |(status, mut r): (u16, Value)| {
        r.as_object_mut().unwrap().remove("customer_id");
        (status, r)
    };
    for cookie in ["probe-1", "probe-2"] {
        let known = shape(
            ingest_as(
                &app,
                &web,
                &signal(
                    "web",
                    &[("email", "vera@example.com"), ("web_cookie", cookie)],
                ),
            )
            .await,
        );
        let unknown = shape(
            ingest_as(
                &app,
                &web,
                &signal(
                    "web",
                    &[
                        ("email", "nobody@example.com"),
                        ("web_cookie", &format!("{cookie}-x")),
                    ],
                ),
            )
            .await,
        );
        assert_eq!(
            known, unknown,
            "the same answer for a known and an unknown e-mail"
        );
    }
    // A claim alone, twice: a profile of its own each time, known or not.
    for email in ["vera@example.com", "nobody-2@example.com"] {
        for _ in 0..2 {
            let (status, r) = ingest_as(&app, &web, &signal("web", &[("email", email)])).await;
            assert_eq!(
                (status, r["created"].clone()),
                (201, json!(true)),
                "{email}: {r}"
            );
        }
    }
}

#[tokio::test]
async fn a_shared_landline_never_brings_a_newcomer_onto_the_customer() {
    let app = spawn_app().await;
    let ivr = app.token_as("ivr-1", &["signals:write"], Some("ivr"));
    let (_, anna) = ingest_as(
        &app,
        &ivr,
        &json!({"channel": "ivr",
                "identifiers": [{"type": "phone", "value": "020 123 4567"}],
                "traits": {"first_name": "Anna"}}),
    )
    .await;
    let anna = id_of(&anna);
    // The desk checked who she is, and vouches for the number: only then
    // does a shared number bring an e-mail onto her.
    let r = app
        .ingest(json!({"channel": "agent", "identifiers": [
            {"type": "phone", "value": "020 123 4567", "verified": true},
            {"type": "email", "value": "anna@example.com"}]}))
        .await;
    assert_eq!(id_of(&r), anna);
    let before = snapshot(&app, &anna).await;

    // Her son calls from the household landline (a caller id the network
    // verified) and gives his own e-mail and name.
    let (status, ben) = ingest_as(
        &app,
        &ivr,
        &json!({"channel": "ivr",
                "identifiers": [{"type": "phone", "value": "020 123 4567"},
                                {"type": "email", "value": "ben@example.com"}],
                "traits": {"first_name": "Ben"},
                "answers": [{"key": "reason_for_contact", "value": "billing"}]}),
    )
    .await;
    assert_eq!(status, 201, "{ben}");
    // Masked: the IVR's token may not read personal data.
    assert_eq!(
        ben["conflicts"],
        json!([{"type": "phone", "value": "+31****67", "reason": "merge_suggested"}])
    );
    let ben = id_of(&ben);
    assert_ne!(ben, anna);
    assert_eq!(snapshot(&app, &anna).await, before, "Anna is not renamed");
    assert_eq!(
        owner(&app, "email", "ben@example.com").await,
        None,
        "the IVR only claimed Ben's address: nobody holds it verified"
    );
    assert_eq!(
        app.profile(&ben).await["traits"]["first_name"]["value"],
        "Ben"
    );
    assert_eq!(
        suggestions(&app, &anna).await,
        vec![(ben, json!([{"type": "phone", "value": "+31201234567"}]))]
    );

    // A chat about the landline still joins her: a session names no person.
    let r = app
        .ingest(json!({"channel": "chat",
                       "identifiers": [{"type": "phone", "value": "+31 20 123 4567"},
                                       {"type": "chat_session", "value": "cs-anna"}],
                       "answers": [{"key": "order_number", "value": "A-1001"}]}))
        .await;
    assert_eq!(id_of(&r), anna);
    let card = body(app.context_by("phone", "0201234567").await).await;
    assert_eq!(card["answers"]["order_number"]["value"], "A-1001");
}

#[tokio::test]
async fn whoever_claims_an_email_first_gains_nothing_by_it() {
    let app = spawn_app().await;
    let web = web_token(&app);
    // The attacker claims an e-mail nobody holds yet, with a story.
    let mut squat = signal(
        "web",
        &[("web_cookie", "atk-2"), ("email", "new@example.com")],
    );
    squat["answers"] = json!([{"key": "reason_for_contact", "value": "change my address"}]);
    let (_, squat) = ingest_as(&app, &web, &squat).await;
    let squatter = id_of(&squat);
    let p = app.profile(&squatter).await;
    let email = p["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "email")
        .unwrap_or_else(|| panic!("{p}"));
    assert_eq!(email["claimed"], true, "shown as unconfirmed: {email}");
    // Read once, so a cache holds the claimant as its owner; a lookup
    // finds nobody all the same (the value was only claimed).
    assert_eq!(owner(&app, "email", "new@example.com").await, None);
    body(app.context_by("email", "new@example.com").await).await;

    // The real owner logs in: the account system verifies the e-mail. The
    // verification takes the e-mail back; nobody is merged.
    let r = app
        .ingest(json!({"channel": "app",
                       "identifiers": [{"type": "account_id", "value": "C-4242"},
                                       {"type": "email", "value": "new@example.com"}],
                       "traits": {"first_name": "Nina"}}))
        .await;
    let nina = id_of(&r);
    assert_ne!(nina, squatter);
    assert_eq!(r["merged_ids"], json!([]));
    assert_eq!(
        owner(&app, "email", "new@example.com").await,
        Some(nina.clone())
    );
    let card = body(app.context_by("email", "new@example.com").await).await;
    assert!(!card.to_string().contains("change my address"), "{card}");
    let card = body(app.context_by("web_cookie", "atk-2").await).await;
    assert_eq!(card["customer_id"], squatter.as_str());
    assert!(!card.to_string().contains("Nina"), "{card}");
    assert!(!card.to_string().contains("new@example.com"), "{card}");
    let history = body(app.get(&format!("/v1/profiles/{squatter}/history")).await).await;
    assert_eq!(
        history["events"][0]["kind"], "identifier_removed",
        "{history}"
    );
    // The agent can still tell the two might be one person.
    assert_eq!(
        suggestions(&app, &nina).await,
        vec![(
            squatter,
            json!([{"type": "email", "value": "new@example.com"}])
        )]
    );
}

#[tokio::test]
async fn a_verified_signal_confirms_the_claim_of_the_same_browser() {
    let app = spawn_app().await;
    let id = from_web(
        &app,
        &[("web_cookie", "ck-up"), ("email", "up@example.com")],
    )
    .await;
    // The login, vouched for by the back office, names the same browser.
    let login = app
        .ingest(json!({"channel": "web",
                       "identifiers": [{"type": "web_cookie", "value": "ck-up"},
                                       {"type": "email", "value": "up@example.com"}]}))
        .await;
    assert_eq!(id_of(&login), id);
    let p = app.profile(&id).await;
    assert_eq!(identifier_list(&p).len(), 2, "{p}");
    assert!(
        p["identifiers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i.get("claimed").is_none()),
        "{p}"
    );
}

#[tokio::test]
async fn a_channel_marked_as_verifying_merges_as_its_types_allow() {
    let app = spawn_app_with(|s| {
        s.trust
            .channels
            .entry("store".into())
            .or_default()
            .insert("email".into(), anamnesis::config::TrustLevel::Verify);
    })
    .await;
    let vera = victim(&app).await;
    let card = id_of(
        &app.ingest(signal("store", &[("loyalty_card", "LC-77")]))
            .await,
    );
    let web = web_token(&app);
    let till = app.token_as("till-1", &["signals:write"], Some("store"));
    let link = signal(
        "store",
        &[("loyalty_card", "LC-77"), ("email", "vera@example.com")],
    );
    // The same link from the web, re-labelled, is refused; from the till it merges.
    assert_error(
        app.post_signal_as(&web, &link).await,
        403,
        "channel_not_allowed",
    )
    .await;
    let (_, r) = ingest_as(&app, &till, &link).await;
    assert_eq!(id_of(&r), vera);
    assert_eq!(r["merged_ids"], json!([card]));
}

#[tokio::test]
async fn nobody_wins_by_claiming_the_future() {
    let app = spawn_app().await;
    let web = web_token(&app);
    let id = from_web(&app, &[("web_cookie", "ck-future")]).await;
    let ahead = (chrono::Utc::now() + chrono::Duration::seconds(290)).to_rfc3339();
    let mut pinned = signal("web", &[("web_cookie", "ck-future")]);
    pinned["occurred_at"] = json!(ahead);
    pinned["traits"] = json!({"favourite_colour": "pinned", "nickname": null});
    pinned["answers"] = json!([{"key": "reason_for_contact", "value": "pinned"}]);
    pinned["event"] = json!({"type": "page_view"});
    ingest_as(&app, &web, &pinned).await;

    // The agent, later, corrects all three: the agent's word stands.
    let resp = app
        .patch_traits(
            &id,
            &json!({"channel": "agent", "traits": {"favourite_colour": "teal", "nickname": "Tee"}}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let resp = app
        .post_answers(
            &id,
            &json!({"channel": "agent", "answers": [{"key": "reason_for_contact", "value": "delivery"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let p = app.profile(&id).await;
    assert_eq!(p["traits"]["favourite_colour"]["value"], "teal", "{p}");
    assert_eq!(p["traits"]["nickname"]["value"], "Tee", "{p}");
    assert_eq!(
        p["answers"]["reason_for_contact"]["value"], "delivery",
        "{p}"
    );
    // The interaction is dated when it was received, not in the future.
    let timeline = body(app.timeline(&id, &[]).await).await;
    let at: chrono::DateTime<chrono::Utc> = timeline["interactions"][0]["occurred_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(at <= chrono::Utc::now(), "{timeline}");
}

#[tokio::test]
async fn a_full_profile_still_takes_what_a_real_caller_brings() {
    let app = spawn_app_with(|s| {
        s.profiles.max_identifiers = 60;
        s.profiles.max_claimed_identifiers = 2;
    })
    .await;
    let cookies: Vec<Value> = (0..50)
        .map(|i| json!({"type": "web_cookie", "value": format!("fill-{i}")}))
        .collect();
    let id = id_of(
        &app.ingest(json!({"channel": "web", "identifiers": cookies}))
            .await,
    );
    let more: Vec<Value> = (49..60)
        .map(|i| json!({"type": "web_cookie", "value": format!("fill-{i}")}))
        .collect();
    app.ingest(json!({"channel": "web", "identifiers": more}))
        .await;

    // The IVR brings a new phone and an answer: the answer is kept, the
    // phone reported.
    let r = app
        .ingest(json!({"channel": "ivr",
                       "identifiers": [{"type": "web_cookie", "value": "fill-0"},
                                       {"type": "phone", "value": "06 5555 0001"}],
                       "answers": [{"key": "reason_for_contact", "value": "delivery"}],
                       "event": {"type": "call_started"}}))
        .await;
    assert_eq!(id_of(&r), id);
    assert_eq!(
        r["conflicts"],
        json!([{"type": "phone", "value": "+31655550001", "reason": "profile_cap"}])
    );
    let p = app.profile(&id).await;
    assert_eq!(p["answers"]["reason_for_contact"]["value"], "delivery");
    assert_eq!(p["channels"]["ivr"]["interactions"], 1);

    // Claims have a smaller cap of their own.
    let web = web_token(&app);
    let (_, anon) = ingest_as(&app, &web, &signal("web", &[("web_cookie", "claims")])).await;
    let (_, r) = ingest_as(
        &app,
        &web,
        &signal(
            "web",
            &[
                ("web_cookie", "claims"),
                ("email", "c1@example.com"),
                ("email", "c2@example.com"),
                ("email", "c3@example.com"),
            ],
        ),
    )
    .await;
    assert_eq!(r["customer_id"], anon["customer_id"]);
    assert_eq!(
        r["conflicts"],
        json!([]),
        "a claim is never reported on: {r}"
    );
    let p = app.profile(&id_of(&anon)).await;
    let emails: Vec<String> = identifier_list(&p)
        .into_iter()
        .filter(|i| i.starts_with("email:"))
        .collect();
    assert_eq!(
        emails,
        ["email:c1@example.com", "email:c2@example.com"],
        "{p}"
    );
}

#[tokio::test]
async fn a_claimed_session_never_lends_someone_elses_anonymous_profile() {
    let app = spawn_app().await;
    // A visitor's chat, anonymous so far.
    let chat = app.token_as("chatbot", &["signals:write"], Some("chat"));
    let (_, visitor) = ingest_as(
        &app,
        &chat,
        &json!({"channel": "chat", "identifiers": [{"type": "chat_session", "value": "cs-visitor"}],
                "event": {"type": "chat_started"}}),
    )
    .await;
    let visitor = id_of(&visitor);
    let before = snapshot(&app, &visitor).await;
    // The attacker names that chat session with a fresh cookie of their own.
    let web = web_token(&app);
    let (status, r) = ingest_as(
        &app,
        &web,
        &signal(
            "web",
            &[("chat_session", "cs-visitor"), ("web_cookie", "atk-3")],
        ),
    )
    .await;
    assert_eq!(status, 201, "a profile of the claimant's own: {r}");
    assert_ne!(id_of(&r), visitor);
    assert!(!r.to_string().contains(&visitor), "{r}");
    assert_eq!(snapshot(&app, &visitor).await, before);
    assert_eq!(owner(&app, "web_cookie", "atk-3").await, Some(id_of(&r)));

    // The visitor then tells the chatbot their name: it never reaches the
    // attacker's cookie.
    ingest_as(
        &app,
        &chat,
        &json!({"channel": "chat", "identifiers": [{"type": "chat_session", "value": "cs-visitor"}],
                "traits": {"first_name": "Vic"}}),
    )
    .await;
    let card = body(app.context_by("web_cookie", "atk-3").await).await;
    assert!(!card.to_string().contains("Vic"), "{card}");
}

#[tokio::test]
async fn a_session_claimed_first_goes_with_its_verified_sender() {
    let app = spawn_app().await;
    // The attacker claims a chat session nobody holds yet.
    let squatter = from_web(
        &app,
        &[("web_cookie", "atk-4"), ("chat_session", "cs-later")],
    )
    .await;
    // The chat frontend, which verifies its own sessions, then uses it.
    let chat = app.token_as("chatbot", &["signals:write"], Some("chat"));
    let (_, r) = ingest_as(
        &app,
        &chat,
        &json!({"channel": "chat", "identifiers": [{"type": "chat_session", "value": "cs-later"}],
                "traits": {"first_name": "Lea"}}),
    )
    .await;
    let lea = id_of(&r);
    assert_ne!(lea, squatter);
    assert_eq!(owner(&app, "chat_session", "cs-later").await, Some(lea));
    let card = body(app.context_by("web_cookie", "atk-4").await).await;
    assert!(!card.to_string().contains("Lea"), "{card}");
}

#[tokio::test]
async fn limits_never_tell_a_claimant_which_emails_are_taken() {
    let app = spawn_app().await;
    victim(&app).await;
    let web = web_token(&app);
    // Four e-mails of the attacker's own: one more fits under the limit of 5.
    let mut own = signal("web", &[("web_cookie", "atk-5")]);
    own["identifiers"]
        .as_array_mut()
        .unwrap()
        .extend((0..4).map(|i| json!({"type": "email", "value": format!("own{i}@example.com")})));
    ingest_as(&app, &web, &own).await;
    let probe = |first: &str| {
        json!({"channel": "web", "identifiers": [
            {"type": "web_cookie", "value": "atk-5"},
            {"type": "email", "value": first},
            {"type": "email", "value": "last@example.com"}]})
    };
    let resp = app
        .client
        .post(format!("{}/v1/signals/batch", app.address))
        .bearer_auth(&web)
        .json(&json!({"signals": [probe("vera@example.com"), probe("free@example.com")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut results = body(resp).await["results"].clone();
    for r in results.as_array_mut().unwrap() {
        assert_eq!(r["conflicts"], json!([]), "nothing said about a claim: {r}");
        r.as_object_mut().unwrap().remove("version");
    }
    assert_eq!(
        results[0], results[1],
        "a taken and a free e-mail answer alike"
    );
    // Nor does the next answer, whatever the first one stored.
    let (_, after) = ingest_as(&app, &web, &probe("next@example.com")).await;
    assert_eq!(after["conflicts"], json!([]), "{after}");
}

#[tokio::test]
async fn a_claimant_cannot_take_a_trusted_senders_signal_id_first() {
    let app = spawn_app().await;
    let web = web_token(&app);
    let mut body_ = signal(
        "web",
        &[("web_cookie", "ck-sid"), ("email", "sid@example.com")],
    );
    body_["signal_id"] = json!("crm-000042");
    ingest_as(&app, &web, &body_).await;
    // The back office sends the same id and body, verifying the e-mail: it
    // is told the id was taken, never handed the claim's result.
    assert_error(app.post_signal(&body_).await, 409, "signal_id_reused").await;
}

#[tokio::test]
async fn vouching_for_a_claimed_email_never_merges_the_claimant() {
    let app = spawn_app().await;
    let vera = victim(&app).await;
    let squatter = from_web(
        &app,
        &[("web_cookie", "atk-6"), ("email", "vera.new@example.com")],
    )
    .await;
    // The desk confirms Vera's new address, vouching for it.
    let r = app
        .ingest(json!({"channel": "agent", "identifiers": [
            {"type": "email", "value": "vera@example.com"},
            {"type": "email", "value": "vera.new@example.com", "verified": true}]}))
        .await;
    assert_eq!(id_of(&r), vera);
    assert_eq!(
        r["merged_ids"],
        json!([]),
        "the claimant is not merged in: {r}"
    );
    assert_eq!(
        owner(&app, "email", "vera.new@example.com").await,
        Some(vera.clone())
    );
    let card = body(app.context_by("web_cookie", "atk-6").await).await;
    assert_eq!(card["customer_id"], squatter.as_str());
    assert!(!card.to_string().contains("A-7001"), "{card}");
}
