//! `Idempotency-Key` on every write: a retry never applies a write twice,
//! a key names one request, and a key belongs to its subject. A signal's
//! own `signal_id` likewise names one signal: reused for another, refused.

use std::time::{Duration, Instant};

use reqwest::{Method, Response};
use serde_json::{json, Value};

use crate::helpers::{assert_error, body, id_of, signal, spawn_app, spawn_app_with, TestApp};

async fn keyed(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> Response {
    let mut request = app
        .client
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(token)
        .header("Idempotency-Key", key);
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

/// Sends a keyed request; see [`answered`].
async fn call(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> (u16, bool, Value) {
    answered(keyed(app, token, method, path, key, body).await).await
}

/// Status, whether it was a replay, and the body.
async fn answered(resp: Response) -> (u16, bool, Value) {
    let status = resp.status().as_u16();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let text = resp.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, replayed, value)
}

async fn interactions(app: &TestApp, id: &str) -> usize {
    body(app.timeline(id, &[]).await).await["interactions"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_retried_write_is_answered_again_and_applied_once() {
    let app = spawn_app().await;
    let admin = app.admin.clone();
    // A signal without a signal_id: only the key keeps it from counting twice.
    let mut s = signal("ivr", &[("phone", "+31612000001")]);
    s["event"] = json!({ "type": "call_started" });
    let first = call(&app, &admin, Method::POST, "/v1/signals", "k-1", Some(&s)).await;
    assert_eq!((first.0, first.1), (201, false), "{}", first.2);
    let again = call(&app, &admin, Method::POST, "/v1/signals", "k-1", Some(&s)).await;
    assert_eq!(
        again,
        (201, true, first.2.clone()),
        "the first answer, replayed"
    );
    let id = id_of(&first.2);
    assert_eq!(interactions(&app, &id).await, 1, "applied once");

    // The same key with another body names another request.
    let mut other = s.clone();
    other["event"] = json!({ "type": "call_ended" });
    let resp = keyed(
        &app,
        &admin,
        Method::POST,
        "/v1/signals",
        "k-1",
        Some(&other),
    )
    .await;
    assert_error(resp, 422, "idempotency_key_reused").await;
    // ... and so does the same body on another path.
    let resp = keyed(
        &app,
        &admin,
        Method::POST,
        "/v1/signals/batch",
        "k-1",
        Some(&json!({"signals": [s.clone()]})),
    )
    .await;
    assert_error(resp, 422, "idempotency_key_reused").await;
    assert_eq!(interactions(&app, &id).await, 1);

    // A key belongs to its subject: another subject's k-1 is its own.
    let bot = app.token_as("bot", &["signals:write"], None);
    let theirs = call(&app, &bot, Method::POST, "/v1/signals", "k-1", Some(&s)).await;
    assert_eq!((theirs.0, theirs.1), (200, false), "{}", theirs.2);
    assert_eq!(interactions(&app, &id).await, 2);

    // Without a key, a retry is a second write.
    let resp = app.post_signal(&s).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(interactions(&app, &id).await, 3);

    // Malformed keys are refused before anything happens.
    for bad in ["", "has space", &"k".repeat(256)] {
        let resp = keyed(&app, &admin, Method::POST, "/v1/signals", bad, Some(&s)).await;
        assert_error(resp, 400, "invalid_idempotency_key").await;
    }
    assert_eq!(interactions(&app, &id).await, 3);
}

#[tokio::test]
async fn identity_and_profile_writes_are_not_applied_twice() {
    let app = spawn_app().await;
    let admin = app.admin.clone();
    let a = id_of(
        &app.ingest(signal("web", &[("email", "anna@example.com")]))
            .await,
    );
    let b = id_of(
        &app.ingest(signal("web", &[("phone", "+31612000002")]))
            .await,
    );
    let merge = json!({ "source_id": b });
    let path = format!("/v1/profiles/{a}/merge");
    let first = call(&app, &admin, Method::POST, &path, "merge-1", Some(&merge)).await;
    assert_eq!(first.0, 200, "{}", first.2);
    let unmerge = json!({ "merged_id": b });
    let path = format!("/v1/profiles/{a}/unmerge");
    let undone = call(
        &app,
        &admin,
        Method::POST,
        &path,
        "unmerge-1",
        Some(&unmerge),
    )
    .await;
    assert_eq!(undone.0, 200, "{}", undone.2);
    // The retry of the unmerge is its answer again, not a second unmerge
    // (which would be 409 nothing_to_unmerge).
    let retry = call(
        &app,
        &admin,
        Method::POST,
        &path,
        "unmerge-1",
        Some(&unmerge),
    )
    .await;
    assert_eq!(retry, (200, true, undone.2.clone()));
    assert_error(app.unmerge(&a, &b).await, 409, "nothing_to_unmerge").await;
    // The retry of the merge, after the unmerge, merges nothing again.
    let path = format!("/v1/profiles/{a}/merge");
    let retry = call(&app, &admin, Method::POST, &path, "merge-1", Some(&merge)).await;
    assert_eq!(retry, (200, true, first.2.clone()));
    assert_eq!(
        app.get_profile(&b).await.status(),
        200,
        "b is on its own still"
    );

    // Answers, consents and traits alike.
    let answers = json!({ "channel": "chat", "answers": [{ "key": "reason_for_contact", "value": "refund" }] });
    let path = format!("/v1/profiles/{a}/answers");
    let one = call(
        &app,
        &admin,
        Method::POST,
        &path,
        "answers-1",
        Some(&answers),
    )
    .await;
    let two = call(
        &app,
        &admin,
        Method::POST,
        &path,
        "answers-1",
        Some(&answers),
    )
    .await;
    assert_eq!((two.0, two.1, &two.2), (one.0, true, &one.2));
    let version = app.profile(&a).await["version"].clone();
    let consent = json!({ "granted": false, "channel": "web" });
    let path = format!("/v1/profiles/{a}/consents/marketing");
    for replay in [false, true] {
        let (status, replayed, _) = call(
            &app,
            &admin,
            Method::PUT,
            &path,
            "consent-1",
            Some(&consent),
        )
        .await;
        assert_eq!((status, replayed), (200, replay));
    }
    let after = app.profile(&a).await["version"].as_u64().unwrap();
    assert_eq!(after, version.as_u64().unwrap() + 1, "one consent write");

    // An erasure retried is its 204 again.
    let path = format!("/v1/profiles/{b}");
    for replay in [false, true] {
        let (status, replayed, _) =
            call(&app, &admin, Method::DELETE, &path, "erase-1", None).await;
        assert_eq!((status, replayed), (204, replay));
    }
}

#[tokio::test]
async fn erasing_a_customer_drops_the_answers_kept_about_them() {
    let app = spawn_app().await;
    let admin = app.admin.clone();
    let s = signal("web", &[("email", "bram@example.com")]);
    let first = call(
        &app,
        &admin,
        Method::POST,
        "/v1/signals",
        "k-erase",
        Some(&s),
    )
    .await;
    let id = id_of(&first.2);
    assert_eq!(app.erase(&id).await.status(), 204);
    let resp = keyed(
        &app,
        &admin,
        Method::POST,
        "/v1/signals",
        "k-erase",
        Some(&s),
    )
    .await;
    let gone = assert_error(resp, 410, "profile_erased").await;
    assert!(
        !gone.to_string().contains(&id),
        "the refusal names nobody: {gone}"
    );
    // The key stays used: the erased customer is not created again by it.
    let resp = app.lookup("email", "bram@example.com").await;
    assert_error(resp, 404, "profile_not_found").await;
}

#[tokio::test]
async fn a_retry_while_the_first_request_is_served_is_told_to_wait() {
    let app = spawn_app_with(|s| s.limits.signals_per_second = 0).await;
    let admin = app.admin.clone();
    // A batch heavy enough to hold the committer a while: whichever twin
    // comes second finds the first still being served.
    let signals: Vec<Value> = (0..1000)
        .map(|i| {
            let mut s = signal("web", &[("phone", &format!("+316130{i:05}"))]);
            s["event"] = json!({ "type": "page_viewed" });
            s
        })
        .collect();
    let batch = json!({ "signals": signals });
    let twin = {
        let client = app.client.clone();
        let url = format!("{}/v1/signals/batch", app.address);
        let (token, batch) = (admin.clone(), batch.clone());
        tokio::spawn(async move {
            answered(
                client
                    .post(url)
                    .bearer_auth(token)
                    .header("Idempotency-Key", "k-twin")
                    .json(&batch)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut told_to_wait = 0;
    let ours = loop {
        let answer = call(
            &app,
            &admin,
            Method::POST,
            "/v1/signals/batch",
            "k-twin",
            Some(&batch),
        )
        .await;
        if answer.0 != 409 {
            break answer;
        }
        assert_eq!(answer.2["error"]["code"], "idempotency_key_in_flight");
        told_to_wait += 1;
        assert!(
            Instant::now() < deadline,
            "the first request never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let theirs = twin.await.unwrap();
    if theirs.0 == 409 {
        told_to_wait += 1;
        assert_eq!((ours.0, ours.1), (200, false), "ours was the first");
    } else {
        assert_eq!((theirs.0, theirs.1), (200, false), "theirs was the first");
        assert_eq!(ours, (200, true, theirs.2.clone()), "ours is its replay");
    }
    assert!(told_to_wait > 0, "the twins never met in flight");
    // Applied once: one event per customer.
    let first = if theirs.0 == 409 { &ours.2 } else { &theirs.2 };
    for i in [0, 499, 999] {
        assert_eq!(
            first["results"][i]["status"], 201,
            "{}",
            first["results"][i]
        );
        let id = id_of(&body(app.lookup("phone", &format!("+316130{i:05}")).await).await);
        assert_eq!(interactions(&app, &id).await, 1);
    }
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
