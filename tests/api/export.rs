//! The export of one profile (`GET /v1/profiles/{id}/export`): everything
//! the service holds about the customer in one attachment. The command-line
//! export of every profile is in `cli.rs`.

use chrono::DateTime;
use serde_json::{json, Value};

use crate::helpers::{
    assert_error, body, field_list, grant_personalization, id_of, now_s, ok, page_view, rfc,
    segment, shift, spawn_app_with, MINUTE, NOBODY,
};

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
