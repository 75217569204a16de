//! Black-box test harness: a real server on port 0 over a sled store in a temp
//! directory, and typed helpers per call; the real binary as a process of its
//! own (`binary`) and private Redis servers (`redis_server`).

#![allow(dead_code)]

pub mod binary;
pub mod redis_server;

use std::time::Duration;

use anamnesis::auth::{Authenticator, Scope};
use anamnesis::config::{SegmentSettings, Settings};
use anamnesis::startup::Application;
use chrono::{DateTime, SecondsFormat, SubsecRound, TimeDelta, Utc};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};

pub const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub settings: Settings,
    /// A token with every scope.
    pub admin: String,
    auth: Authenticator,
    _dir: tempfile::TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server with the default configuration changed by `adjust`.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::defaults();
    settings.server.listen = "127.0.0.1:0".into();
    settings.server.workers = 2;
    settings.storage.path = dir.path().to_path_buf();
    use_test_backend(&mut settings);
    settings.auth.hs256_secret = Some(SECRET.into());
    settings.telemetry.level = "warn".into();
    adjust(&mut settings);
    settings.validate().expect("test settings are valid");
    let app = Application::build(settings.clone()).expect("application builds");
    let port = app.port();
    tokio::spawn(app.run_until_stopped());
    let auth = Authenticator::new(&settings.auth, Some(SECRET.as_bytes())).expect("keys load");
    let admin = auth
        .mint(
            "test-admin",
            &[Scope::Admin],
            None,
            Duration::from_secs(3600),
        )
        .expect("minted");
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        settings,
        admin,
        auth,
        _dir: dir,
    }
}

/// The server `tests/run.sh` starts for the second pass of this suite (a
/// URL); unset, the tests run on sled.
pub const TEST_POSTGRES: &str = "ANAMNESIS_TEST_POSTGRES";

/// The schema of the store kept under `data`: its own per data directory,
/// and the same one again when a test restarts the service over it.
pub fn schema_for(data: &std::path::Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    format!("t_{:016x}", h.finish())
}

/// With [`TEST_POSTGRES`] set, the store is a schema of that database
/// (migrated here) instead of sled in `storage.path`.
pub fn use_test_backend(settings: &mut Settings) {
    let Ok(url) = std::env::var(TEST_POSTGRES) else {
        return;
    };
    let pg = &mut settings.storage.postgres;
    settings.storage.backend = anamnesis::config::Backend::Postgres;
    pg.url = Some(url);
    pg.schema = schema_for(&settings.storage.path);
    pg.pool_size = 4;
    anamnesis::store::migrate(pg.options().expect("a url")).expect("the test schema migrates");
}

/// The environment that points a process of the binary at the store of
/// `data`: nothing on sled; on the test database, its backend, URL and
/// schema (migrated here).
pub fn backend_env(data: &std::path::Path) -> Vec<(&'static str, String)> {
    let Ok(url) = std::env::var(TEST_POSTGRES) else {
        return Vec::new();
    };
    let mut settings = Settings::defaults();
    settings.storage.path = data.to_path_buf();
    use_test_backend(&mut settings);
    vec![
        ("ANAMNESIS__STORAGE__BACKEND", "postgres".to_owned()),
        ("ANAMNESIS__STORAGE__POSTGRES__URL", url),
        (
            "ANAMNESIS__STORAGE__POSTGRES__SCHEMA",
            settings.storage.postgres.schema,
        ),
    ]
}

/// Parses a response body as JSON (panics with the text when it is not JSON).
pub async fn body(resp: Response) -> Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts the whole error envelope: status, stable code, a message, and the
/// request id matching the `x-request-id` header. Returns the body.
pub async fn assert_error(resp: Response, status: u16, code: &str) -> Value {
    let actual = resp.status().as_u16();
    let header = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .expect("every response carries x-request-id");
    let body = body(resp).await;
    assert_eq!(actual, status, "status for {body}");
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error envelope: {body}"));
    assert_eq!(
        error.len(),
        3,
        "envelope has exactly code, message, request_id: {body}"
    );
    assert_eq!(error["code"], code, "code in {body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message in {body}"
    );
    assert_eq!(error["request_id"], header.as_str(), "request id in {body}");
    body
}

impl TestApp {
    /// Mints a token with these scopes (and optionally a channel binding).
    pub fn token(&self, scopes: &[&str], channel: Option<&str>) -> String {
        self.token_as("test", scopes, channel)
    }

    /// Mints a token for `subject` with these scopes and channel binding.
    pub fn token_as(&self, subject: &str, scopes: &[&str], channel: Option<&str>) -> String {
        let scopes: Vec<Scope> = scopes
            .iter()
            .map(|s| Scope::parse(s).expect("known scope"))
            .collect();
        self.auth
            .mint(subject, &scopes, channel, Duration::from_secs(3600))
            .expect("minted")
    }

    /// Posts a signal with another token than the admin's.
    pub async fn post_signal_as(&self, token: &str, signal: &Value) -> Response {
        self.client
            .post(format!("{}/v1/signals", self.address))
            .bearer_auth(token)
            .json(signal)
            .send()
            .await
            .unwrap()
    }

    /// A request with the admin token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.address, path))
            .bearer_auth(&self.admin)
    }

    pub async fn post_signal(&self, signal: &Value) -> Response {
        self.request(Method::POST, "/v1/signals")
            .json(signal)
            .send()
            .await
            .unwrap()
    }

    /// Posts a signal that must succeed; returns the result body.
    pub async fn ingest(&self, signal: Value) -> Value {
        let resp = self.post_signal(&signal).await;
        let status = resp.status();
        let body = body(resp).await;
        assert!(
            status == StatusCode::OK || status == StatusCode::CREATED,
            "{status}: {body}"
        );
        assert_eq!(
            body["created"].as_bool().unwrap(),
            status == StatusCode::CREATED,
            "{body}"
        );
        body
    }

    pub async fn post_batch(&self, signals: Vec<Value>) -> Response {
        self.request(Method::POST, "/v1/signals/batch")
            .json(&json!({ "signals": signals }))
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.unwrap()
    }

    /// A GET with another token than the admin's.
    pub async fn get_as(&self, token: &str, path: &str) -> Response {
        self.client
            .get(format!("{}{}", self.address, path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn unmerge(&self, id: &str, merged: &str) -> Response {
        self.request(Method::POST, &format!("/v1/profiles/{id}/unmerge"))
            .json(&json!({ "merged_id": merged }))
            .send()
            .await
            .unwrap()
    }

    pub async fn get_profile(&self, id: &str) -> Response {
        self.get(&format!("/v1/profiles/{id}")).await
    }

    /// Reads a profile that must exist.
    pub async fn profile(&self, id: &str) -> Value {
        let resp = self.get_profile(id).await;
        assert_eq!(resp.status(), 200, "profile {id}");
        body(resp).await
    }

    pub async fn lookup(&self, kind: &str, value: &str) -> Response {
        self.request(Method::GET, "/v1/profiles/lookup")
            .query(&[("type", kind), ("value", value)])
            .send()
            .await
            .unwrap()
    }

    pub async fn context(&self, id: &str) -> Response {
        self.get(&format!("/v1/profiles/{id}/context")).await
    }

    pub async fn context_by(&self, kind: &str, value: &str) -> Response {
        self.request(Method::GET, "/v1/context")
            .query(&[("type", kind), ("value", value)])
            .send()
            .await
            .unwrap()
    }

    pub async fn timeline(&self, id: &str, query: &[(&str, &str)]) -> Response {
        self.request(Method::GET, &format!("/v1/profiles/{id}/timeline"))
            .query(query)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch_traits(&self, id: &str, patch: &Value) -> Response {
        self.request(Method::PATCH, &format!("/v1/profiles/{id}/traits"))
            .json(patch)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_answers(&self, id: &str, answers: &Value) -> Response {
        self.request(Method::POST, &format!("/v1/profiles/{id}/answers"))
            .json(answers)
            .send()
            .await
            .unwrap()
    }

    pub async fn merge(&self, target: &str, source: &str) -> Response {
        self.request(Method::POST, &format!("/v1/profiles/{target}/merge"))
            .json(&json!({ "source_id": source }))
            .send()
            .await
            .unwrap()
    }

    pub async fn erase(&self, id: &str) -> Response {
        self.request(Method::DELETE, &format!("/v1/profiles/{id}"))
            .send()
            .await
            .unwrap()
    }
}

/// Whom a lookup of `type:value` answers, if anyone (a miss must be the
/// whole `profile_not_found` envelope).
pub async fn owner(app: &TestApp, kind: &str, value: &str) -> Option<String> {
    let resp = app.lookup(kind, value).await;
    match resp.status().as_u16() {
        200 => Some(id_of(&body(resp).await)),
        404 => {
            assert_error(resp, 404, "profile_not_found").await;
            None
        }
        other => panic!("lookup {kind}:{value}: {other} {}", body(resp).await),
    }
}

/// The `customer_id` of an ingest result or a profile.
pub fn id_of(result: &Value) -> String {
    result["customer_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no customer_id in {result}"))
        .to_owned()
}

/// A profile's identifiers as `type:value`, in the order it lists them.
pub fn identifier_list(p: &Value) -> Vec<String> {
    p["identifiers"]
        .as_array()
        .unwrap_or_else(|| panic!("no identifiers in {p}"))
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["type"].as_str().unwrap(),
                i["value"].as_str().unwrap()
            )
        })
        .collect()
}

/// A signal with the given channel and identifiers (`("phone", "06 1234 5678")`).
pub fn signal(channel: &str, identifiers: &[(&str, &str)]) -> Value {
    json!({
        "channel": channel,
        "identifiers": identifiers
            .iter()
            .map(|(t, v)| json!({ "type": t, "value": v }))
            .collect::<Vec<_>>(),
    })
}

/// Seconds since the epoch, as JWT claims count time.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Valid admin claims for `subject`, to be spoiled one at a time by the
/// token tests.
pub fn admin_claims(subject: &str) -> Value {
    json!({
        "exp": now() + 3600,
        "iat": now(),
        "aud": "anamnesis",
        "sub": subject,
        "scope": "admin",
    })
}

// ---------------------------------------------------------------------------
// Requests with another token than the admin's, and what their answers must
// not hold.

/// A request with `token` (or none) instead of the admin token.
pub async fn send(
    app: &TestApp,
    token: Option<&str>,
    method: Method,
    path: &str,
    json: Option<&Value>,
) -> Response {
    let mut request = app
        .client
        .request(method, format!("{}{}", app.address, path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(json) = json {
        request = request.json(json);
    }
    request.send().await.unwrap()
}

/// A request to the in-process app with `token` instead of the admin's.
pub fn with_token(app: &TestApp, token: &str, method: Method, path: &str) -> RequestBuilder {
    app.client
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(token)
}

/// The value of header `name`, which the response must carry.
pub fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Fails when `text` holds any of `needles`, compared case-insensitively.
pub fn assert_none_of(text: &str, needles: &[&str], what: &str) {
    let folded = text.to_lowercase();
    for needle in needles {
        assert!(
            !folded.contains(&needle.to_lowercase()),
            "{what} holds `{needle}`:\n{text}"
        );
    }
}

/// A well-formed customer id nobody has.
pub const NOBODY: &str = "cus_01ARZ3NDEKTSV4RRFFQ69G5FAV";

// ---------------------------------------------------------------------------
// Times. Segment windows are relative to now, so every `occurred_at` the
// tests of the profile's memory send is too, to the whole second, so that
// times sent in come back spelled the same.

/// Seconds in a minute, an hour and a day, for [`shift`].
pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;

/// Now, to the whole second.
pub fn now_s() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

/// `base` moved by `secs` seconds (negative: earlier).
pub fn shift(base: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    base + TimeDelta::seconds(secs)
}

/// RFC 3339 as the service writes whole seconds: `2026-11-22T09:15:00Z`.
pub fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A signal from `channel` for one identifier, at `at`, with `event`.
pub fn event_at(channel: &str, who: (&str, &str), at: DateTime<Utc>, event: Value) -> Value {
    json!({
        "channel": channel,
        "occurred_at": rfc(at),
        "identifiers": [{"type": who.0, "value": who.1}],
        "event": event,
    })
}

/// A page view from `channel` with these properties.
pub fn page_view(channel: &str, who: (&str, &str), at: DateTime<Utc>, properties: Value) -> Value {
    event_at(
        channel,
        who,
        at,
        json!({"type": "page_view", "properties": properties}),
    )
}

/// A signal that reports on an episode (`episode` is the `event.episode` object).
pub fn episode_at(
    channel: &str,
    who: (&str, &str),
    at: DateTime<Utc>,
    kind: &str,
    episode: Value,
) -> Value {
    event_at(channel, who, at, json!({"type": kind, "episode": episode}))
}

// ---------------------------------------------------------------------------
// Typed calls for the profile's memory: the card, episodes, follow-ups,
// consent and segments.

/// A GET with the admin token and these query parameters.
pub async fn get_query(app: &TestApp, path: &str, query: &[(&str, &str)]) -> Response {
    app.request(Method::GET, path)
        .query(query)
        .send()
        .await
        .unwrap()
}

/// A GET with `token` and these query parameters.
pub async fn get_query_as(
    app: &TestApp,
    token: &str,
    path: &str,
    query: &[(&str, &str)],
) -> Response {
    app.client
        .get(format!("{}{path}", app.address))
        .bearer_auth(token)
        .query(query)
        .send()
        .await
        .unwrap()
}

/// The body of a response that must be 200.
pub async fn ok(resp: Response, what: &str) -> Value {
    let status = resp.status();
    let b = body(resp).await;
    assert_eq!(status, 200, "{what}: {b}");
    b
}

/// `field` of each object of a JSON array, in order.
pub fn field_list(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|e| {
            e[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field} in {e}"))
                .to_owned()
        })
        .collect()
}

/// The context card of profile `id`, which must answer 200.
pub async fn card(app: &TestApp, id: &str) -> Value {
    ok(app.context(id).await, "context").await
}

/// `GET /v1/profiles/{id}/episodes`, filtered by `status` when given.
pub async fn episodes(app: &TestApp, id: &str, status: Option<&str>) -> Response {
    let query: Vec<(&str, &str)> = status.map(|s| ("status", s)).into_iter().collect();
    get_query(app, &format!("/v1/profiles/{id}/episodes"), &query).await
}

/// The one episode `episode` of profile `id`, from the episodes list.
pub async fn episode(app: &TestApp, id: &str, episode: &str) -> Value {
    let list = ok(episodes(app, id, None).await, "episodes").await;
    list["episodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == episode)
        .unwrap_or_else(|| panic!("no episode {episode} in {list}"))
        .clone()
}

/// `GET /v1/follow-ups` with these query parameters.
pub async fn follow_ups(app: &TestApp, query: &[(&str, &str)]) -> Response {
    get_query(app, "/v1/follow-ups", query).await
}

/// Records a consent decision for `purpose`, as given on `channel`.
pub async fn put_consent(
    app: &TestApp,
    id: &str,
    purpose: &str,
    granted: bool,
    channel: &str,
) -> Response {
    app.request(
        Method::PUT,
        &format!("/v1/profiles/{id}/consents/{purpose}"),
    )
    .json(&json!({"granted": granted, "channel": channel}))
    .send()
    .await
    .unwrap()
}

/// Grants the consent personalisation needs (on the web).
pub async fn grant_personalization(app: &TestApp, id: &str) {
    let resp = put_consent(app, id, "personalization", true, "web").await;
    assert_eq!(resp.status(), 200, "consent granted");
}

/// A segment definition with these `when` predicates.
pub fn segment(when: Value) -> SegmentSettings {
    serde_json::from_value(json!({ "when": when })).expect("segment settings")
}
