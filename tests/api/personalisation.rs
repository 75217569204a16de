//! Personalisation: segments computed from what a profile did and holds,
//! offers ranked for the segments it is in, both only with its consent; and
//! the start-up checks of segments, offers and journey rules, which refuse a
//! bad one and name where it is.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anamnesis::config::{OfferSettings, SegmentSettings, Settings};
use chrono::{DateTime, Utc};
use reqwest::Response;
use serde_json::{json, Value};

use crate::helpers::binary::free_port;
use crate::helpers::{
    assert_error, event_at, field_list, get_query, get_query_as, grant_personalization, id_of,
    now_s, ok, page_view, put_consent, rfc, segment, shift, signal, spawn_app_with, TestApp, DAY,
    HOUR, MINUTE, NOBODY, SECRET,
};

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
