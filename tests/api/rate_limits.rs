//! Rate limits per subject: a subject over its rate waits its `Retry-After`
//! while others are served, a refusal goes out only after the reject delay,
//! and with the limit off nobody is refused. (Lookup budgets: `access.rs`.)

use std::time::{Duration, Instant};

use anamnesis::auth::Scope;
use reqwest::Method;

use crate::helpers::binary::token_for;
use crate::helpers::{assert_error, header, id_of, signal, spawn_app_with, with_token};

#[tokio::test]
async fn a_subject_over_its_rate_waits_its_retry_after_while_others_are_served() {
    let app = spawn_app_with(|s| {
        s.limits.rate_per_second = 5;
        s.limits.burst = 5;
        // The pause before a 429 would earn budget back; timed separately.
        s.limits.reject_delay_ms = 0;
    })
    .await;
    // Set-up spends the admin subject's budget, not the desk's.
    let id = id_of(
        &app.ingest(signal("web", &[("web_cookie", "rl-known")]))
            .await,
    );
    let profile = format!("/v1/profiles/{id}");
    let desk = token_for("desk", &[Scope::ProfilesRead]);

    let started = Instant::now();
    let mut served = 0;
    let refused = loop {
        let resp = app.get_as(&desk, &profile).await;
        if resp.status() == 429 {
            break resp;
        }
        assert_eq!(resp.status(), 200, "request {served}");
        served += 1;
        assert!(served < 20, "never refused");
    };
    // Another token of the same subject shares its budget: its write is refused.
    let desk_writer = token_for("desk", &[Scope::SignalsWrite]);
    let write = with_token(&app, &desk_writer, Method::POST, "/v1/signals")
        .json(&signal("web", &[("web_cookie", "rl-refused")]))
        .send()
        .await
        .unwrap();
    // Another subject, at the same moment, is served.
    let bot = token_for("bot", &[Scope::ProfilesRead]);
    assert_eq!(app.get_as(&bot, &profile).await.status(), 200);
    let elapsed = started.elapsed();

    // The burst at once; every 200 ms that passed meanwhile earns one more.
    let earned = 5 + (elapsed.as_millis() / 200) as usize;
    assert!(
        (5..=earned).contains(&served),
        "{served} served in {elapsed:?}"
    );
    // One request costs 200 ms of budget, rounded up to whole seconds.
    let retry_after: u64 = header(&refused, "retry-after").parse().unwrap();
    assert_eq!(retry_after, 1);
    assert_error(refused, 429, "rate_limited").await;
    assert_eq!(header(&write, "retry-after"), "1");
    assert_error(write, 429, "rate_limited").await;
    assert_error(
        app.lookup("web_cookie", "rl-refused").await,
        404,
        "profile_not_found",
    )
    .await;

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        app.get_as(&desk, &profile).await.status(),
        200,
        "served again after Retry-After"
    );
}

#[tokio::test]
async fn a_refusal_goes_out_only_after_the_reject_delay() {
    let app = spawn_app_with(|s| {
        s.limits.rate_per_second = 1;
        s.limits.burst = 1;
        s.limits.reject_delay_ms = 1000;
    })
    .await;
    let id = id_of(
        &app.ingest(signal("web", &[("web_cookie", "rl-delay")]))
            .await,
    );
    let profile = format!("/v1/profiles/{id}");
    let desk = token_for("desk", &[Scope::ProfilesRead]);
    let started = Instant::now();
    assert_eq!(app.get_as(&desk, &profile).await.status(), 200);
    let served_in = started.elapsed();
    // A refusal is held 0.5 to 1.5 times the delay, at random.
    let started = Instant::now();
    let refused = app.get_as(&desk, &profile).await;
    let held = started.elapsed();
    assert_error(refused, 429, "rate_limited").await;
    assert!(
        served_in < Duration::from_millis(500),
        "served in {served_in:?}"
    );
    assert!(
        (Duration::from_millis(500)..Duration::from_millis(2500)).contains(&held),
        "refusal held {held:?}"
    );
}

#[tokio::test]
async fn with_the_rate_limit_off_a_subject_is_never_refused() {
    let app = spawn_app_with(|s| {
        s.limits.rate_per_second = 0;
        s.limits.burst = 1;
    })
    .await;
    let id = id_of(&app.ingest(signal("web", &[("web_cookie", "rl-off")])).await);
    let profile = format!("/v1/profiles/{id}");
    let desk = token_for("desk", &[Scope::ProfilesRead]);
    for i in 0..200 {
        assert_eq!(
            app.get_as(&desk, &profile).await.status(),
            200,
            "request {i}"
        );
    }
}
