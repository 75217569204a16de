//! Look-alike identities and ambiguous bodies, tried as an attacker holding
//! what a public web frontend holds: a token bound to channel `web` with
//! `signals:write profiles:read`. A spelling that looks like a customer's
//! identifier either is that identifier or is refused; a body that says
//! two things about one key is refused whole.

use reqwest::{Method, Response};
use serde_json::{json, Value};

use crate::helpers::{assert_error, body, id_of, identifier_list, signal, spawn_app, TestApp};

/// A customer the back office knows: e-mail, phone, a name.
async fn customer(app: &TestApp) -> String {
    id_of(
        &app.ingest(json!({
            "channel": "store",
            "identifiers": [{"type": "email", "value": "vera@example.com"},
                            {"type": "phone", "value": "06 1111 2222"}],
            "traits": {"first_name": "Vera"},
        }))
        .await,
    )
}

/// What a public web frontend holds.
fn web_token(app: &TestApp) -> String {
    app.token_as(
        "web-frontend",
        &["signals:write", "profiles:read"],
        Some("web"),
    )
}

/// What the desk holds: reads, bound to no channel.
fn desk_token(app: &TestApp) -> String {
    app.token_as("desk", &["profiles:read"], None)
}

/// Whom `type:value` resolves to for the desk, if anyone.
async fn owner(app: &TestApp, kind: &str, value: &str) -> Option<String> {
    let resp = app
        .client
        .get(format!("{}/v1/profiles/lookup", app.address))
        .bearer_auth(desk_token(app))
        .query(&[("type", kind), ("value", value)])
        .send()
        .await
        .unwrap();
    match resp.status().as_u16() {
        200 => Some(id_of(&body(resp).await)),
        404 => None,
        other => panic!("lookup {kind}: {other}: {}", body(resp).await),
    }
}

/// Sends `text` as a JSON body, as written (a `Value` cannot hold a key twice).
async fn send_raw(app: &TestApp, method: Method, path: &str, token: &str, text: &str) -> Response {
    app.client
        .request(method, format!("{}{}", app.address, path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(text.to_owned())
        .send()
        .await
        .unwrap()
}

/// Asserts the whole error body and its message; returns the message.
async fn assert_refused(resp: Response, status: u16, code: &str, message: &str) -> String {
    let error = assert_error(resp, status, code).await;
    assert_eq!(error["error"]["message"], message, "{error}");
    message.to_owned()
}

#[tokio::test]
async fn look_alike_emails_are_refused_without_echoing_them() {
    let app = spawn_app().await;
    let vera = customer(&app).await;
    let before = app.profile(&vera).await;
    let web = web_token(&app);
    for (i, (spelling, reason)) in [
        // A Cyrillic `е` in a Latin name.
        ("v\u{435}ra@example.com", "mixes scripts in one part"),
        ("vera@\u{435}xample.com", "mixes scripts in one part"),
        ("ve\u{200b}ra@example.com", "contains invisible characters"),
        ("vera\u{200d}@example.com", "contains invisible characters"),
        // A right-to-left override, and an isolate.
        ("vera\u{202e}@example.com", "contains invisible characters"),
        (
            "\u{2066}vera@example.com\u{2069}",
            "contains invisible characters",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let cookie = format!("ck-lookalike-{i}");
        let attempt = signal("web", &[("web_cookie", &cookie), ("email", spelling)]);
        let message = assert_refused(
            app.post_signal_as(&web, &attempt).await,
            422,
            "invalid_identifier",
            &format!("identifiers[1]: email value is not valid: {reason}"),
        )
        .await;
        assert!(!message.contains("vera"), "{message}");
        // Nothing was written: the cookie leads nowhere.
        assert_eq!(
            owner(&app, "web_cookie", &cookie).await,
            None,
            "{spelling:?}"
        );
        // The desk cannot be led astray by it either.
        assert_error(
            app.lookup("email", spelling).await,
            422,
            "invalid_identifier",
        )
        .await;
    }
    assert_eq!(app.profile(&vera).await, before);
}

#[tokio::test]
async fn a_fullwidth_spelling_is_the_customer_it_looks_like() {
    let app = spawn_app().await;
    let vera = customer(&app).await;
    let fullwidth = "ｖｅｒａ＠ｅｘａｍｐｌｅ．ｃｏｍ";
    assert_eq!(owner(&app, "email", fullwidth).await, Some(vera.clone()));
    assert_eq!(
        owner(&app, "email", "VERA@EXAMPLE.COM").await,
        Some(vera.clone())
    );

    // From the web it is a claim on Vera's e-mail like any other spelling:
    // it lands on the frontend's own profile, holds no e-mail there, and
    // leaves a suggestion with the desk. It never is a second identity.
    let web = web_token(&app);
    let resp = app
        .post_signal_as(
            &web,
            &signal("web", &[("web_cookie", "ck-wide"), ("email", fullwidth)]),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let claimant = id_of(&body(resp).await);
    assert_ne!(claimant, vera);
    assert_eq!(
        identifier_list(&app.profile(&claimant).await),
        ["web_cookie:ck-wide"]
    );
    assert_eq!(owner(&app, "email", fullwidth).await, Some(vera.clone()));
    let suggestions = body(app.get(&format!("/v1/profiles/{vera}/suggestions")).await).await;
    let with: Vec<String> = suggestions.as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(with, [claimant], "{suggestions}");

    // The back office, which verifies, reaches Vera by it.
    let r = app
        .ingest(signal(
            "store",
            &[("email", fullwidth), ("loyalty_card", "LC-wide")],
        ))
        .await;
    assert_eq!(id_of(&r), vera);
    let ids = identifier_list(&app.profile(&vera).await);
    assert_eq!(
        ids.iter().filter(|i| i.starts_with("email:")).count(),
        1,
        "{ids:?}"
    );
}

#[tokio::test]
async fn punycode_and_unicode_domains_are_one_customer() {
    let app = spawn_app().await;
    let anna = id_of(
        &app.ingest(signal("store", &[("email", "anna@münchen.de")]))
            .await,
    );
    assert_eq!(
        owner(&app, "email", "anna@xn--mnchen-3ya.de").await,
        Some(anna.clone())
    );
    assert_eq!(
        owner(&app, "email", "Anna@MÜNCHEN.DE").await,
        Some(anna.clone())
    );
    let p = app.profile(&anna).await;
    assert_eq!(identifier_list(&p), ["email:anna@münchen.de"]);
    // An address in one script of its own is an address like any other.
    let ivan = id_of(
        &app.ingest(signal("store", &[("email", "Иван@Пример.РФ")]))
            .await,
    );
    assert_eq!(
        owner(&app, "email", "иван@пример.рф").await,
        Some(ivan.clone())
    );
    assert_ne!(ivan, anna);
}

/// A signal for `cookie` with `extra` spliced in after the identifiers.
fn raw_signal(cookie: &str, extra: &str) -> String {
    format!(
        r#"{{"channel": "web", "identifiers": [{{"type": "web_cookie", "value": "{cookie}"}}]{extra}}}"#
    )
}

#[tokio::test]
async fn a_key_named_twice_anywhere_refuses_the_body_and_writes_nothing() {
    let app = spawn_app().await;
    let web = web_token(&app);
    for (cookie, extra, message) in [
        (
            "ck-dup-traits",
            r#", "traits": {"first_name": "Vera", "first_name": "Mallory"}"#,
            "traits: duplicate key `first_name`",
        ),
        (
            "ck-dup-escaped",
            r#", "traits": {"tier": "gold", "t\u0069er": "basic"}"#,
            "traits: duplicate key `tier`",
        ),
        (
            "ck-dup-properties",
            r#", "event": {"type": "page_viewed", "properties": {"path": "/a", "path": "/b"}}"#,
            "event.properties: duplicate key `path`",
        ),
        (
            "ck-dup-nested",
            r#", "traits": {"address": {"city": "Utrecht", "zip": {"a": 1, "a": 2}}}"#,
            "traits.address.zip: duplicate key `a`",
        ),
        (
            "ck-dup-answer",
            r#", "answers": [{"key": "order_number", "value": {"id": "A-1", "id": "A-2"}}]"#,
            "answers[0].value: duplicate key `id`",
        ),
        (
            "ck-dup-top",
            r#", "channel": "agent""#,
            "duplicate key `channel`",
        ),
    ] {
        let resp = send_raw(
            &app,
            Method::POST,
            "/v1/signals",
            &web,
            &raw_signal(cookie, extra),
        )
        .await;
        let said = assert_refused(resp, 422, "duplicate_key", message).await;
        for value in ["Mallory", "basic", "/b", "A-2", "agent"] {
            assert!(!said.contains(value), "{said}");
        }
        assert_eq!(owner(&app, "web_cookie", cookie).await, None, "{cookie}");
    }

    // A batch is refused whole: its good first item is not written either.
    let batch = format!(
        r#"{{"signals": [{}, {}]}}"#,
        raw_signal("ck-batch-good", ""),
        raw_signal(
            "ck-batch-bad",
            r#", "traits": {"tier": "gold", "tier": "basic"}"#
        ),
    );
    let resp = send_raw(&app, Method::POST, "/v1/signals/batch", &web, &batch).await;
    assert_refused(
        resp,
        422,
        "duplicate_key",
        "signals[1].traits: duplicate key `tier`",
    )
    .await;
    for cookie in ["ck-batch-good", "ck-batch-bad"] {
        assert_eq!(owner(&app, "web_cookie", cookie).await, None, "{cookie}");
    }

    // The desk's writes to a profile the same way.
    let vera = customer(&app).await;
    let before = app.profile(&vera).await;
    let path = format!("/v1/profiles/{vera}/traits");
    let patch = r#"{"channel": "agent", "traits": {"tier": "gold", "tier": "basic"}}"#;
    let resp = send_raw(&app, Method::PATCH, &path, &app.admin, patch).await;
    assert_refused(resp, 422, "duplicate_key", "traits: duplicate key `tier`").await;
    let path = format!("/v1/profiles/{vera}/answers");
    let answers = r#"{"channel": "agent", "answers": [{"key": "delivery", "value": {"slot": "am", "slot": "pm"}}]}"#;
    let resp = send_raw(&app, Method::POST, &path, &app.admin, answers).await;
    assert_refused(
        resp,
        422,
        "duplicate_key",
        "answers[0].value: duplicate key `slot`",
    )
    .await;
    assert_eq!(app.profile(&vera).await, before);
}

#[tokio::test]
async fn the_same_key_in_different_objects_is_no_duplicate() {
    let app = spawn_app().await;
    let text = raw_signal(
        "ck-apart",
        r#", "traits": {"home": {"city": "Utrecht"}, "work": {"city": "Amsterdam"}, "city": "Utrecht"},
             "event": {"type": "page_viewed", "properties": {"items": [{"id": 1}, {"id": 2}]}}"#,
    );
    let resp = send_raw(&app, Method::POST, "/v1/signals", &web_token(&app), &text).await;
    assert_eq!(resp.status(), 201, "{}", body(resp).await);
    let id = owner(&app, "web_cookie", "ck-apart")
        .await
        .expect("written");
    let p: Value = app.profile(&id).await;
    assert_eq!(p["traits"]["work"]["value"]["city"], "Amsterdam");
}
