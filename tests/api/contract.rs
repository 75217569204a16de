//! The served OpenAPI document is the committed one, and the operations
//! endpoints answer.

use crate::helpers::{assert_error, body, spawn_app};

#[tokio::test]
async fn served_openapi_matches_the_committed_file() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let served = body(resp).await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("openapi/openapi.json exists"))
            .expect("openapi/openapi.json is JSON");
    if served != committed {
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, anamnesis::openapi::document(&app.settings)).unwrap();
        }
        panic!(
            "openapi/openapi.json differs from the served document; regenerate with \
             `cargo run --release -- openapi > openapi/openapi.json` (or UPDATE_OPENAPI=1 cargo test)"
        );
    }
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    let app = spawn_app().await;
    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("x-request-id"));
    assert_eq!(body(health).await["status"], "ok");
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready = body(ready).await;
    assert_eq!(ready["store"], "ok");
    assert_eq!(ready["redis"], "not_configured");
}

#[tokio::test]
async fn metrics_expose_requests_signals_and_flushes() {
    let app = spawn_app().await;
    app.ingest(crate::helpers::signal(
        "web",
        &[("web_cookie", "metrics-cookie")],
    ))
    .await;
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "anamnesis_http_requests_total",
        "anamnesis_http_request_duration_seconds_bucket",
        "anamnesis_signals_ingested_total",
        "anamnesis_store_flush_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(
        text.contains("route=\"/v1/signals\""),
        "routes are labelled by pattern"
    );
}

#[tokio::test]
async fn docs_are_served() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(format!("{}/docs/", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.to_lowercase().contains("swagger"), "{html}");
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_envelope() {
    let app = spawn_app().await;
    assert_error(app.get("/v1/nothing-here").await, 404, "route_not_found").await;
    let resp = app
        .request(reqwest::Method::PUT, "/v1/signals")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers().get("allow").unwrap(), "POST");
    assert_error(resp, 405, "method_not_allowed").await;
}
