//! Consent: each decision keeps its history beside the current one. How
//! consent turns personalisation off and on is in `personalisation.rs`;
//! consents across merges in `suggestions.rs`.

use std::time::Duration;

use chrono::DateTime;
use serde_json::{json, Value};

use crate::helpers::{assert_error, body, id_of, put_consent, signal, spawn_app};

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
