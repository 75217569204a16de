//! Access: bearer tokens are verified (signature, expiry, audience), each route
//! demands its scope, channel-bound tokens write only for their channel, and PII
//! is masked for callers without `pii:read`: in reads, in write answers, and
//! in refusals and error messages, which never echo a stored or sent value.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{
    admin_claims, assert_error, assert_none_of, body, id_of, identifier_list, now, send, signal,
    spawn_app, with_token, TestApp, NOBODY, SECRET,
};

fn claims() -> Value {
    admin_claims("forger")
}

fn forge(claims: &Value, secret: &str, algorithm: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing with an in-memory key")
}

fn forge_with(change: impl FnOnce(&mut Value)) -> String {
    let mut c = claims();
    change(&mut c);
    forge(&c, SECRET, Algorithm::HS256)
}

async fn customer(app: &TestApp, signal: Value) -> String {
    app.ingest(signal).await["customer_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every protected route once, with a valid body, against `id`.
fn routes(id: &str, other: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (
            Method::POST,
            "/v1/signals".into(),
            Some(signal("chat", &[("web_cookie", "auth-route-cookie")])),
        ),
        (
            Method::POST,
            "/v1/signals/batch".into(),
            Some(json!({ "signals": [signal("chat", &[("web_cookie", "auth-batch-cookie")])] })),
        ),
        (Method::GET, format!("/v1/profiles/{id}"), None),
        (
            Method::GET,
            "/v1/profiles/lookup?type=web_cookie&value=auth-cookie".into(),
            None,
        ),
        (Method::GET, format!("/v1/profiles/{id}/context"), None),
        (
            Method::GET,
            "/v1/context?type=web_cookie&value=auth-cookie".into(),
            None,
        ),
        (Method::GET, format!("/v1/profiles/{id}/timeline"), None),
        (
            Method::PATCH,
            format!("/v1/profiles/{id}/traits"),
            Some(json!({ "channel": "agent", "traits": { "nickname": "Annie" } })),
        ),
        (
            Method::POST,
            format!("/v1/profiles/{id}/answers"),
            Some(
                json!({ "channel": "chat", "answers": [{ "key": "order_number", "value": "A-1" }] }),
            ),
        ),
        (
            Method::POST,
            format!("/v1/profiles/{id}/merge"),
            Some(json!({ "source_id": other })),
        ),
        (Method::DELETE, format!("/v1/profiles/{id}"), None),
    ]
}

#[tokio::test]
async fn every_protected_route_needs_a_token() {
    let app = spawn_app().await;
    let id = customer(&app, signal("web", &[("web_cookie", "auth-cookie")])).await;
    let other = customer(&app, signal("web", &[("web_cookie", "auth-other")])).await;
    let before = app.profile(&id).await;
    for (method, path, json) in routes(&id, &other) {
        let resp = send(&app, None, method.clone(), &path, json.as_ref()).await;
        assert_eq!(
            resp.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{method} {path}"
        );
        assert_error(resp, 401, "missing_token").await;
    }
    assert_eq!(app.profile(&id).await, before);
    assert_eq!(app.profile(&other).await["version"], 1);
    assert_error(
        app.lookup("web_cookie", "auth-route-cookie").await,
        404,
        "profile_not_found",
    )
    .await;
    // Authentication comes before existence: no oracle for customer ids.
    let resp = send(
        &app,
        None,
        Method::GET,
        &format!("/v1/profiles/{NOBODY}"),
        None,
    )
    .await;
    assert_error(resp, 401, "missing_token").await;
    let reader = app.token(&["signals:write"], None);
    let resp = send(
        &app,
        Some(&reader),
        Method::GET,
        &format!("/v1/profiles/{NOBODY}"),
        None,
    )
    .await;
    assert_error(resp, 403, "insufficient_scope").await;
    // The operations endpoints stay open.
    let health = send(&app, None, Method::GET, "/healthz", None).await;
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_code_naming_the_fault() {
    let app = spawn_app().await;
    let id = customer(&app, signal("web", &[("web_cookie", "auth-bad-token")])).await;
    let path = format!("/v1/profiles/{id}");

    // The forger is right when it means to be: a well-formed token works.
    let good = forge(&claims(), SECRET, Algorithm::HS256);
    let resp = send(&app, Some(&good), Method::GET, &path, None).await;
    assert_eq!(resp.status(), 200);

    let cases: Vec<(&str, &str, String)> = vec![
        ("garbage", "invalid_token", "not-a-token".into()),
        ("three garbage parts", "invalid_token", "aaa.bbb.ccc".into()),
        (
            "wrong signature",
            "token_signature_invalid",
            forge(
                &claims(),
                "another-secret-that-is-long-enough",
                Algorithm::HS256,
            ),
        ),
        ("tampered payload", "token_signature_invalid", {
            let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
            let other = forge_with(|c| c["sub"] = json!("mallory"));
            parts[1] = other.split('.').nth(1).unwrap().to_owned();
            parts.join(".")
        }),
        (
            "expired",
            "token_expired",
            forge_with(|c| c["exp"] = json!(now() - 600)),
        ),
        (
            "not yet valid",
            "token_not_yet_valid",
            forge_with(|c| c["nbf"] = json!(now() + 600)),
        ),
        (
            "wrong audience",
            "token_audience_mismatch",
            forge_with(|c| c["aud"] = json!("someone-else")),
        ),
        (
            "no audience",
            "token_claim_missing",
            forge_with(|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        (
            "no expiry",
            "token_claim_missing",
            forge_with(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "HS512",
            "token_algorithm_not_allowed",
            forge(&claims(), SECRET, Algorithm::HS512),
        ),
        ("unsigned", "token_algorithm_not_allowed", {
            let payload = good.split('.').nth(1).unwrap();
            // {"alg":"none","typ":"JWT"}
            format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")
        }),
    ];
    for (name, code, token) in cases {
        let resp = send(&app, Some(&token), Method::GET, &path, None).await;
        assert_eq!(
            resp.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{name}"
        );
        // Shown with the failure, which assert_error reports without the name.
        println!("case {name}");
        assert_error(resp, 401, code).await;
    }

    // Not a bearer scheme at all.
    for header in ["Basic YWRtaW46YWRtaW4=", &good, "Bearer", "Bearer "] {
        let resp = app
            .client
            .get(format!("{}{path}", app.address))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_error(resp, 401, "invalid_token").await;
    }

    // A rejected token writes nothing.
    let expired = forge_with(|c| c["exp"] = json!(now() - 600));
    let resp = send(
        &app,
        Some(&expired),
        Method::POST,
        "/v1/signals",
        Some(&signal("chat", &[("web_cookie", "auth-expired-write")])),
    )
    .await;
    assert_error(resp, 401, "token_expired").await;
    assert_error(
        app.lookup("web_cookie", "auth-expired-write").await,
        404,
        "profile_not_found",
    )
    .await;
}

#[tokio::test]
async fn an_audience_list_naming_the_service_is_accepted() {
    let app = spawn_app().await;
    let id = customer(&app, signal("web", &[("web_cookie", "auth-aud-list")])).await;
    let path = format!("/v1/profiles/{id}");
    let token = forge_with(|c| c["aud"] = json!(["crm", "anamnesis"]));
    let resp = send(&app, Some(&token), Method::GET, &path, None).await;
    assert_eq!(resp.status(), 200, "{}", body(resp).await);
    let token = forge_with(|c| c["aud"] = json!(["crm", "billing"]));
    let resp = send(&app, Some(&token), Method::GET, &path, None).await;
    assert_error(resp, 401, "token_audience_mismatch").await;
}

#[tokio::test]
async fn each_route_demands_its_scope() {
    let app = spawn_app().await;
    let id = customer(&app, signal("web", &[("web_cookie", "auth-cookie")])).await;
    let other = customer(&app, signal("web", &[("web_cookie", "auth-other")])).await;
    let before = app.profile(&id).await;
    let needs = [
        "signals:write",
        "signals:write",
        "profiles:read",
        "profiles:read",
        "profiles:read",
        "profiles:read",
        "profiles:read",
        "profiles:write",
        "profiles:write",
        "identity:write",
        "profiles:erase",
    ];
    let routes = routes(&id, &other);
    assert_eq!(routes.len(), needs.len());
    let all = [
        "profiles:read",
        "pii:read",
        "signals:write",
        "profiles:write",
        "identity:write",
        "profiles:erase",
    ];
    for ((method, path, json), needed) in routes.iter().zip(needs) {
        // Every scope but the needed one is not enough, even all together.
        let others: Vec<&str> = all.iter().copied().filter(|s| *s != needed).collect();
        let mut tokens = vec![app.token(&others, None)];
        tokens.extend(others.iter().map(|s| app.token(&[s], None)));
        tokens.push(forge_with(|c| {
            c["scope"] = json!("superuser profiles:readwrite")
        }));
        tokens.push(forge_with(|c| c["scope"] = json!("")));
        for token in &tokens {
            let resp = send(&app, Some(token), method.clone(), path, json.as_ref()).await;
            let error = assert_error(resp, 403, "insufficient_scope").await;
            let message = error["error"]["message"].as_str().unwrap();
            assert!(message.contains(needed), "{method} {path}: {message}");
        }
    }
    // Nothing was written by the refused requests.
    assert_eq!(app.profile(&id).await, before);
    assert_eq!(app.profile(&other).await["version"], 1);
    for cookie in ["auth-route-cookie", "auth-batch-cookie"] {
        assert_error(
            app.lookup("web_cookie", cookie).await,
            404,
            "profile_not_found",
        )
        .await;
    }

    // The needed scope alone is enough (erase last: it removes the profile).
    for ((method, path, json), needed) in routes.iter().zip(needs) {
        let token = app.token(&[needed], None);
        let resp = send(&app, Some(&token), method.clone(), path, json.as_ref()).await;
        let status = resp.status().as_u16();
        let expected: &[u16] = match (method.as_str(), path.as_str()) {
            ("POST", "/v1/signals") => &[201],
            ("DELETE", _) => &[204],
            _ => &[200],
        };
        assert!(
            expected.contains(&status),
            "{needed}: {method} {path}: {status} {}",
            resp.text().await.unwrap()
        );
    }
}

#[tokio::test]
async fn admin_implies_every_scope() {
    let app = spawn_app().await;
    let id = customer(&app, signal("web", &[("web_cookie", "auth-cookie")])).await;
    let other = customer(&app, signal("web", &[("web_cookie", "auth-other")])).await;
    let token = app.token(&["admin"], None);
    for (method, path, json) in routes(&id, &other) {
        let resp = send(&app, Some(&token), method.clone(), &path, json.as_ref()).await;
        let status = resp.status().as_u16();
        assert!(
            [200, 201, 204].contains(&status),
            "{method} {path}: {status} {}",
            resp.text().await.unwrap()
        );
    }
    // The erase went through: the profile is gone.
    assert_error(app.get_profile(&id).await, 404, "profile_not_found").await;
}

#[tokio::test]
async fn a_channel_bound_token_writes_only_for_its_channel() {
    let app = spawn_app().await;
    let writer = app.token(&["signals:write"], Some("chat"));

    let resp = send(
        &app,
        Some(&writer),
        Method::POST,
        "/v1/signals",
        Some(&signal("chat", &[("chat_session", "auth-chat-1")])),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let id = body(resp).await["customer_id"].as_str().unwrap().to_owned();

    let resp = send(
        &app,
        Some(&writer),
        Method::POST,
        "/v1/signals",
        Some(&signal("ivr", &[("phone", "06 1234 5678")])),
    )
    .await;
    let error = assert_error(resp, 403, "channel_not_allowed").await;
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("chat") && message.contains("ivr"),
        "{message}"
    );
    assert_error(
        app.lookup("phone", "0612345678").await,
        404,
        "profile_not_found",
    )
    .await;

    // In a batch the foreign-channel item alone is refused.
    let resp = send(
        &app,
        Some(&writer),
        Method::POST,
        "/v1/signals/batch",
        Some(&json!({ "signals": [
            signal("ivr", &[("phone", "06 8765 4321")]),
            signal("chat", &[("chat_session", "auth-chat-1"), ("email", "bound@example.com")]),
        ] })),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let results = body(resp).await["results"].clone();
    assert_eq!(results[0]["status"], 403, "{results}");
    assert_eq!(
        results[0]["error"]["code"], "channel_not_allowed",
        "{results}"
    );
    assert_eq!(results[1]["status"], 200, "{results}");
    assert_eq!(results[1]["customer_id"], id.as_str());
    assert_error(
        app.lookup("phone", "0687654321").await,
        404,
        "profile_not_found",
    )
    .await;

    // Trait and answer writes are bound the same way.
    let editor = app.token(&["profiles:write"], Some("chat"));
    let before = app.profile(&id).await;
    let resp = send(
        &app,
        Some(&editor),
        Method::PATCH,
        &format!("/v1/profiles/{id}/traits"),
        Some(&json!({ "channel": "agent", "traits": { "nickname": "Annie" } })),
    )
    .await;
    assert_error(resp, 403, "channel_not_allowed").await;
    let resp = send(
        &app,
        Some(&editor),
        Method::POST,
        &format!("/v1/profiles/{id}/answers"),
        Some(&json!({ "channel": "ivr", "answers": [{ "key": "order_number", "value": "A-1" }] })),
    )
    .await;
    assert_error(resp, 403, "channel_not_allowed").await;
    assert_eq!(app.profile(&id).await, before);

    let resp = send(
        &app,
        Some(&editor),
        Method::PATCH,
        &format!("/v1/profiles/{id}/traits"),
        Some(&json!({ "channel": "chat", "traits": { "nickname": "Annie" } })),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body(resp).await["traits"]["nickname"]["channel"], "chat");

    // An unbound token writes for any channel.
    let unbound = app.token(&["signals:write"], None);
    let resp = send(
        &app,
        Some(&unbound),
        Method::POST,
        "/v1/signals",
        Some(&signal("ivr", &[("phone", "06 1234 5678")])),
    )
    .await;
    assert_eq!(resp.status(), 201);
}

const PHONE: &str = "+31612345678";
const EMAIL: &str = "anna@example.com";

/// The PII values of the masking test, and how each must look masked.
fn assert_masked(view: &Value, what: &str) {
    let text = view.to_string();
    for secret in [PHONE, EMAIL, "Anna", "Vries"] {
        assert!(!text.contains(secret), "{what} leaks {secret}: {view}");
    }
    let identifiers = identifier_values(view);
    assert!(
        identifiers.contains(&("phone".into(), "+31****78".into())),
        "{what}: {view}"
    );
    assert!(
        identifiers.contains(&("email".into(), "***@example.com".into())),
        "{what}: {view}"
    );
    assert!(
        identifiers.contains(&("account_id".into(), "C-1001".into())),
        "{what}: {view}"
    );
    assert_eq!(trait_value(view, "first_name"), "An****", "{what}: {view}");
    assert_eq!(trait_value(view, "last_name"), "de****", "{what}: {view}");
    assert_eq!(
        trait_value(view, "preferred_language"),
        "nl",
        "{what}: {view}"
    );
}

fn assert_clear(view: &Value, what: &str) {
    let identifiers = identifier_values(view);
    assert!(
        identifiers.contains(&("phone".into(), PHONE.into())),
        "{what}: {view}"
    );
    assert!(
        identifiers.contains(&("email".into(), EMAIL.into())),
        "{what}: {view}"
    );
    assert_eq!(trait_value(view, "first_name"), "Anna", "{what}: {view}");
    assert_eq!(trait_value(view, "last_name"), "de Vries", "{what}: {view}");
    assert!(!view.to_string().contains("****"), "{what}: {view}");
}

fn identifier_values(view: &Value) -> Vec<(String, String)> {
    view["identifiers"]
        .as_array()
        .unwrap_or_else(|| panic!("no identifiers: {view}"))
        .iter()
        .map(|i| {
            (
                i["type"].as_str().unwrap().to_owned(),
                i["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A trait's value in a profile (`{value, ...}`) or a context card (the value).
fn trait_value(view: &Value, name: &str) -> Value {
    let t = &view["traits"][name];
    match t.get("value") {
        Some(v) if t.get("observed_at").is_some() => v.clone(),
        _ => t.clone(),
    }
}

#[tokio::test]
async fn pii_is_masked_without_pii_read_on_every_read() {
    let app = spawn_app().await;
    let mut s = signal(
        "ivr",
        &[
            ("phone", "06 1234 5678"),
            ("email", " Anna@Example.com "),
            ("account_id", "C-1001"),
        ],
    );
    s["traits"] =
        json!({ "first_name": "Anna", "last_name": "de Vries", "preferred_language": "nl" });
    let id = customer(&app, s).await;

    let reader = app.token(&["profiles:read"], None);
    let pii_reader = app.token(&["profiles:read", "pii:read"], None);
    let reads = [
        format!("/v1/profiles/{id}"),
        "/v1/profiles/lookup?type=phone&value=0612345678".into(),
        format!("/v1/profiles/lookup?type=email&value={EMAIL}"),
        format!("/v1/profiles/{id}/context"),
        "/v1/context?type=phone&value=%2B31612345678".into(),
    ];
    for path in &reads {
        let resp = send(&app, Some(&reader), Method::GET, path, None).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_masked(&body(resp).await, path);

        for token in [&pii_reader, &app.admin] {
            let resp = send(&app, Some(token), Method::GET, path, None).await;
            assert_eq!(resp.status(), 200, "{path}");
            assert_clear(&body(resp).await, path);
        }
    }

    // Writes answer with the profile, masked the same way.
    let editor = app.token(&["profiles:write"], None);
    let resp = send(
        &app,
        Some(&editor),
        Method::PATCH,
        &format!("/v1/profiles/{id}/traits"),
        Some(&json!({ "channel": "agent", "traits": { "nickname": "Annie" } })),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_masked(&body(resp).await, "PATCH traits");
}

#[tokio::test]
async fn ingest_results_mask_conflicting_identifiers_without_pii_read() {
    let app = spawn_app().await;
    customer(
        &app,
        signal("store", &[("account_id", "C-1"), ("email", EMAIL)]),
    )
    .await;
    customer(
        &app,
        signal("ivr", &[("account_id", "C-2"), ("phone", "06 1234 5678")]),
    )
    .await;
    // Both emails' and phones' owners hold an account id: they may not merge.
    let both = signal("chat", &[("email", EMAIL), ("phone", "06 1234 5678")]);

    let writer = app.token(&["signals:write"], None);
    let resp = send(
        &app,
        Some(&writer),
        Method::POST,
        "/v1/signals",
        Some(&both),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let result = body(resp).await;
    let conflicts = result["conflicts"].as_array().unwrap();
    assert!(!conflicts.is_empty(), "{result}");
    let text = result.to_string();
    assert!(!text.contains(PHONE) && !text.contains(EMAIL), "{result}");
    for c in conflicts {
        let value = c["value"].as_str().unwrap();
        assert!(
            ["+31****78", "***@example.com"].contains(&value),
            "{result}"
        );
    }

    // The same signal again shows them in clear to a PII reader.
    let pii_writer = app.token(&["signals:write", "pii:read"], None);
    let resp = send(
        &app,
        Some(&pii_writer),
        Method::POST,
        "/v1/signals",
        Some(&both),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let result = body(resp).await;
    for c in result["conflicts"].as_array().unwrap() {
        let value = c["value"].as_str().unwrap();
        assert!([PHONE, EMAIL].contains(&value), "{result}");
    }
}

// ---------------------------------------------------------------------------
// Masking in write answers, refusals and error messages.

#[tokio::test]
async fn writes_without_pii_read_answer_masked_and_refusals_echo_no_stored_pii() {
    let app = spawn_app().await;
    let mut mila = signal(
        "agent",
        &[
            ("account_id", "C-71"),
            ("email", "mila@example.com"),
            ("phone", "06 2222 3333"),
        ],
    );
    mila["traits"] = json!({ "first_name": "Mila" });
    let a = id_of(&app.ingest(mila).await);
    let b = id_of(
        &app.ingest(signal(
            "web",
            &[("account_id", "C-72"), ("email", "noor@example.com")],
        ))
        .await,
    );
    let c = id_of(&app.ingest(signal("web", &[("web_cookie", "mask-c")])).await);
    let stored = [
        "mila@example.com",
        "+31622223333",
        "Mila",
        "noor@example.com",
    ];
    let no_stored_pii = |v: &Value, what: &str| assert_none_of(&v.to_string(), &stored, what);
    let editor = app.token(&["profiles:write", "identity:write"], None);
    let merge = format!("/v1/profiles/{a}/merge");

    // Two account ids cannot share a profile: refused, naming no value.
    let resp = with_token(&app, &editor, Method::POST, &merge)
        .json(&json!({ "source_id": b }))
        .send()
        .await
        .unwrap();
    no_stored_pii(
        &assert_error(resp, 409, "merge_conflict").await,
        "merge_conflict",
    );

    // Accepted writes answer with the profile masked.
    let resp = with_token(&app, &editor, Method::POST, &merge)
        .json(&json!({ "source_id": c }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let merged = body(resp).await;
    no_stored_pii(&merged, "merge");
    let identifiers = identifier_list(&merged);
    assert!(
        identifiers.contains(&"phone:+31****33".to_owned())
            && identifiers.contains(&"email:***@example.com".to_owned()),
        "{merged}"
    );
    assert_eq!(merged["traits"]["first_name"]["value"], "Mi****");

    let resp = with_token(
        &app,
        &editor,
        Method::POST,
        &format!("/v1/profiles/{a}/unmerge"),
    )
    .json(&json!({ "merged_id": c }))
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let unmerged = body(resp).await;
    no_stored_pii(&unmerged, "unmerge");
    assert_eq!(
        unmerged["survivor"]["traits"]["first_name"]["value"],
        "Mi****"
    );

    let identifier = |value: &str| format!("/v1/profiles/{a}/identifiers/email/{value}");
    let resp = with_token(
        &app,
        &editor,
        Method::DELETE,
        &identifier("mila@example.com"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let removed = body(resp).await;
    no_stored_pii(&removed, "remove_identifier");
    assert!(
        identifier_list(&removed).contains(&"phone:+31****33".to_owned()),
        "{removed}"
    );
    // Another customer's address is not on this profile; the refusal does not
    // say whose it is.
    let resp = with_token(
        &app,
        &editor,
        Method::DELETE,
        &identifier("noor@example.com"),
    )
    .send()
    .await
    .unwrap();
    no_stored_pii(
        &assert_error(resp, 404, "identifier_not_found").await,
        "identifier_not_found",
    );

    // A batch item's conflicts are masked like a single ingest's.
    let writer = app.token(&["signals:write"], None);
    let resp = with_token(&app, &writer, Method::POST, "/v1/signals/batch")
        .json(&json!({ "signals": [
            signal("chat", &[("email", "noor@example.com"), ("phone", "06 2222 3333")]),
        ] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let batch = body(resp).await;
    no_stored_pii(&batch, "batch");
    let conflicts = batch["results"][0]["conflicts"].as_array().unwrap();
    assert!(!conflicts.is_empty(), "{batch}");
    for conflict in conflicts {
        let value = conflict["value"].as_str().unwrap();
        assert!(["+31****33", "***@example.com"].contains(&value), "{batch}");
    }
}

#[tokio::test]
async fn namespaced_pii_traits_are_masked_and_errors_do_not_echo_values() {
    let app = spawn_app().await;
    let r = app
        .ingest(json!({"channel": "agent", "identifiers": [{"type": "account_id", "value": "C-55"}],
                       "traits": {"address.street": "Main 1", "address": "Main 1, Utrecht", "tier": "gold"}}))
        .await;
    let id = r["customer_id"].as_str().unwrap();
    let reader = app.token(&["profiles:read"], None);
    let resp = app.get_as(&reader, &format!("/v1/profiles/{id}")).await;
    let p = body(resp).await;
    assert_eq!(p["traits"]["address.street"]["value"], "Ma****");
    assert_eq!(p["traits"]["address"]["value"], "Ma****");
    assert_eq!(p["traits"]["tier"]["value"], "gold");

    let resp = app
        .post_signal(
            &json!({"channel": "ivr", "identifiers": [{"type": "phone", "value": 612345678}]}),
        )
        .await;
    let err = assert_error(resp, 422, "invalid_field").await;
    let message = err["error"]["message"].as_str().unwrap();
    assert!(!message.contains("612345678"), "{message}");
    assert!(message.contains("identifiers[0].value"), "{message}");
}
