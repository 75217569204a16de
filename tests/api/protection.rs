//! Protection: per-subject rate limits, slow and idle clients cut off, one
//! audit line per destructive action, and no personal data in the logs, the
//! audit log or the answers of a caller without `pii:read`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anamnesis::auth::Scope;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};

use crate::binary::{bound_token_for, token_for, Binary};
use crate::helpers::{
    assert_error, body, id_of, identifier_list, signal, spawn_app, spawn_app_with, TestApp,
};

const NOBODY: &str = "cus_01ARZ3NDEKTSV4RRFFQ69G5FAV";

/// A request to the in-process app with `token` instead of the admin's.
fn with_token(app: &TestApp, token: &str, method: Method, path: &str) -> RequestBuilder {
    app.client
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(token)
}

fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

// ---------------------------------------------------------------------------
// Rate limits

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

// ---------------------------------------------------------------------------
// Slow and idle clients, over raw TCP: what an HTTP client library will not
// do is stall part-way through a request.

/// Reads on these connections give up after five seconds.
fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// One response as read off the wire.
struct Wire {
    status: u16,
    request_id: String,
    body: Value,
}

/// Reads one response with a `Content-Length` body; `None` when the server
/// closes the connection before answering.
fn read_response(stream: &mut TcpStream) -> Option<Wire> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) if head.is_empty() => return None,
            Ok(0) => panic!("closed mid-head: {}", String::from_utf8_lossy(&head)),
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!("no answer within 5 s ({e})"),
        }
    }
    let head = String::from_utf8(head).unwrap();
    let field = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let mut body = vec![0; field("content-length").map_or(0, |v| v.parse().unwrap())];
    stream.read_exact(&mut body).unwrap();
    Some(Wire {
        status: head.split(' ').nth(1).unwrap().parse().unwrap(),
        request_id: field("x-request-id").unwrap_or_else(|| panic!("no x-request-id: {head}")),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

/// Reads until the server closes the connection and returns what it sent;
/// fails when the connection is still open after five seconds.
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    match stream.read_to_end(&mut seen) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "the connection is still open after 5 s ({e}); got {:?}",
            String::from_utf8_lossy(&seen)
        ),
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The head of a JSON POST announcing `length` bytes of body.
fn post_head(path: &str, token: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// The body deadline answered in the envelope, neither early nor late.
fn assert_body_timeout(answer: &Wire, waited: Duration, what: &str) {
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(2),
        "{what}: answered after {waited:?}"
    );
    assert_eq!(answer.status, 408, "{what}: {}", answer.body);
    assert_eq!(
        answer.body,
        json!({ "error": {
            "code": "request_timeout",
            "message": "the body did not arrive within 500 ms",
            "request_id": answer.request_id,
        } }),
        "{what}"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_cut_off() {
    let app = spawn_app_with(|s| s.server.request_head_timeout_ms = 500).await;
    let port = app.port;
    let (answer, waited) = blocking(move || {
        let mut stream = connect(port);
        stream.write_all(b"GET /healthz HTT").unwrap();
        let started = Instant::now();
        (read_until_closed(&mut stream), started.elapsed())
    })
    .await;
    assert!(waited < Duration::from_secs(2), "closed after {waited:?}");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
}

/// Refusals the HTTP layer makes before a request reaches the service carry
/// the envelope and a request id like every other answer (src/conn.rs).
#[tokio::test]
async fn refusals_below_the_router_carry_the_envelope_and_a_request_id() {
    let app = spawn_app_with(|s| s.server.request_head_timeout_ms = 500).await;
    let port = app.port;
    // actix-http reads at most 128 KiB of head.
    let big = "a".repeat(200 * 1024);
    let cases = [
        (
            "a 200 KB token",
            format!("GET /v1/profiles/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {big}\r\n\r\n"),
            431,
            "headers_too_large",
        ),
        (
            "a 200 KB URL",
            format!("GET /v1/profiles/{big} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
            431,
            "headers_too_large",
        ),
        (
            "a request line that is not HTTP",
            "GET / HTTP/1.1 extra\r\nHost: 127.0.0.1\r\n\r\n".to_owned(),
            400,
            "malformed_request",
        ),
        (
            "a head that stops part-way",
            "GET /healthz HTTP/1.1\r\nHost: 12".to_owned(),
            408,
            "request_timeout",
        ),
    ];
    for (what, request, status, code) in cases {
        let answer = blocking(move || {
            let mut stream = connect(port);
            // The server may answer and close before it read everything.
            let _ = stream.write_all(request.as_bytes());
            read_response(&mut stream)
        })
        .await
        .unwrap_or_else(|| panic!("{what}: closed without an answer"));
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        assert_eq!(
            answer.body["error"]["code"], code,
            "{what}: {}",
            answer.body
        );
        assert_eq!(
            answer.body["error"]["request_id"], answer.request_id,
            "{what}: the id in the body is the header's"
        );
        assert_eq!(answer.request_id.len(), 26, "{what}: a minted ULID");
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {}",
            answer.body
        );
    }
    // The service is none the worse for it.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn a_client_that_stalls_in_its_next_request_head_is_cut_off() {
    // The keep-alive timeout is longer than the head timeout but far shorter
    // than the five seconds a read waits: whichever applies, the connection
    // must not stay open.
    let app = spawn_app_with(|s| {
        s.server.request_head_timeout_ms = 500;
        s.server.keep_alive_secs = 2;
    })
    .await;
    let port = app.port;
    let (answer, waited) = blocking(move || {
        let mut stream = connect(port);
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let first = read_response(&mut stream).expect("the first request is answered");
        assert_eq!(first.status, 200);
        stream.write_all(b"GET /healthz HTT").unwrap();
        let started = Instant::now();
        (read_until_closed(&mut stream), started.elapsed())
    })
    .await;
    // actix-http arms its own head timer for the first request only; the
    // second is cut off by the connection's deadline stream (src/conn.rs).
    assert!(waited < Duration::from_secs(3), "closed after {waited:?}");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_body_that_stops_short_of_its_content_length_gets_408() {
    let app = spawn_app_with(|s| s.server.body_timeout_ms = 500).await;
    for path in ["/v1/signals", "/v1/signals/batch"] {
        let (port, head) = (app.port, post_head(path, &app.admin, 100));
        let (answer, waited) = blocking(move || {
            let mut stream = connect(port);
            stream.write_all(head.as_bytes()).unwrap();
            // Ten of the hundred bytes announced.
            stream.write_all(br#"{"channel"#).unwrap();
            let started = Instant::now();
            let answer = read_response(&mut stream).expect("an answer, not a bare close");
            (answer, started.elapsed())
        })
        .await;
        assert_body_timeout(&answer, waited, path);
    }
}

#[tokio::test]
async fn a_body_dripped_in_byte_by_byte_does_not_reset_the_deadline() {
    let app = spawn_app_with(|s| s.server.body_timeout_ms = 500).await;
    let (port, head) = (app.port, post_head("/v1/signals", &app.admin, 100));
    let (answer, waited) = blocking(move || {
        let mut stream = connect(port);
        stream.write_all(head.as_bytes()).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let started = Instant::now();
        // A byte every 50 ms: never idle long, done only after 5 s.
        let drip = std::thread::spawn(move || {
            for _ in 0..100 {
                if writer.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let answer = read_response(&mut stream).expect("an answer, not a bare close");
        let waited = started.elapsed();
        stream.shutdown(Shutdown::Both).unwrap();
        drip.join().unwrap();
        (answer, waited)
    })
    .await;
    assert_body_timeout(&answer, waited, "dripped body");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = spawn_app_with(|s| s.server.keep_alive_secs = 1).await;
    let port = app.port;
    let (answer, idle) = blocking(move || {
        let mut stream = connect(port);
        // Two requests on one connection: it is kept alive.
        for i in 0..2 {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            let answer = read_response(&mut stream)
                .unwrap_or_else(|| panic!("request {i}: closed instead of answering"));
            assert_eq!(answer.status, 200, "request {i}");
        }
        let started = Instant::now();
        (read_until_closed(&mut stream), started.elapsed())
    })
    .await;
    assert!(idle < Duration::from_secs(3), "closed after {idle:?}");
    assert_eq!(answer, "", "nothing is sent on an idle close");
}

// ---------------------------------------------------------------------------
// The real binary: the audit log and the logs as an operator sees them.

/// Fails when `text` holds any of `needles`, compared case-insensitively.
fn assert_none_of(text: &str, needles: &[&str], what: &str) {
    let folded = text.to_lowercase();
    for needle in needles {
        assert!(
            !folded.contains(&needle.to_lowercase()),
            "{what} holds `{needle}`:\n{text}"
        );
    }
}

/// Sends one audited request and checks its answer (the error envelope, its
/// code being the audit outcome); returns `line` completed with the
/// response's request id.
async fn audited(request: RequestBuilder, status: u16, mut line: Value) -> Value {
    let resp = request.send().await.unwrap();
    line["request_id"] = json!(header(&resp, "x-request-id"));
    match line["outcome"].as_str().unwrap() {
        "ok" => assert_eq!(resp.status(), status, "{line}"),
        code => {
            assert_error(resp, status, code).await;
        }
    }
    line
}

/// The audit file's lines as JSON objects, each timestamp checked (and
/// taken out) against the window the test ran in.
fn audit_lines(path: &Path, since: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("the audit file exists");
    let until = chrono::Utc::now();
    text.lines()
        .map(|l| {
            let mut line: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            let stamp = line
                .as_object_mut()
                .unwrap_or_else(|| panic!("not an object: {l}"))
                .remove("timestamp")
                .unwrap_or_else(|| panic!("no timestamp: {l}"));
            let at: chrono::DateTime<chrono::Utc> = stamp
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("timestamp is not RFC 3339: {l}"));
            assert!(
                at >= since - chrono::Duration::seconds(1) && at <= until,
                "timestamp outside the test: {l}"
            );
            line
        })
        .collect()
}

/// What the audit test stores, written the ways it is sent and normalised.
const AUDIT_PII: &[&str] = &[
    "06 2468 1357",
    "0624681357",
    "624681357", // also inside +31624681357
    "06 3197 5286",
    "0631975286",
    "631975286",
    "fenna.audit", // any case, raw or lower-cased
    "fennaline",
    "joris.audit",
    "jorisander",
];

#[tokio::test]
async fn each_destructive_action_leaves_one_audit_line_without_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = Binary::start(
        &dir.path().join("data"),
        &[("ANAMNESIS__TELEMETRY__AUDIT_FILE", audit.to_str().unwrap())],
    );
    let since = chrono::Utc::now();
    let desk = token_for("desk-7", &[Scope::Admin]);
    let dpo = token_for("dpo-1", &[Scope::ProfilesErase]);
    let reader = token_for("reader-3", &[Scope::ProfilesRead]);

    let mut fenna = signal(
        "ivr",
        &[
            ("phone", "06 2468 1357"),
            ("email", " Fenna.Audit@Example.COM "),
        ],
    );
    fenna["traits"] = json!({ "first_name": "Fennaline" });
    let a = server.ingest(&desk, &fenna).await;
    let mut joris = signal(
        "web",
        &[
            ("phone", "06 3197 5286"),
            ("email", "Joris.Audit@Example.net"),
        ],
    );
    joris["traits"] = json!({ "first_name": "Jorisander" });
    let b = server.ingest(&desk, &joris).await;

    let merge = format!("/v1/profiles/{a}/merge");
    let unmerge = format!("/v1/profiles/{a}/unmerge");
    let line = |who: &str, action: &str, id: &str, outcome: &str| json!({ "who": who, "action": action, "customer_id": id, "outcome": outcome });
    let with = |mut line: Value, key: &str, value: &str| {
        line[key] = json!(value);
        line
    };
    let expected = vec![
        audited(
            server
                .request(&desk, Method::POST, &merge)
                .json(&json!({ "source_id": b })),
            200,
            with(line("desk-7", "merge", &a, "ok"), "other_id", &b),
        )
        .await,
        audited(
            server
                .request(&desk, Method::POST, &merge)
                .json(&json!({ "source_id": a })),
            422,
            with(line("desk-7", "merge", &a, "same_profile"), "other_id", &a),
        )
        .await,
        audited(
            server
                .request(&desk, Method::POST, &unmerge)
                .json(&json!({ "merged_id": b })),
            200,
            with(line("desk-7", "unmerge", &a, "ok"), "other_id", &b),
        )
        .await,
        audited(
            server
                .request(&desk, Method::POST, &unmerge)
                .json(&json!({ "merged_id": b })),
            409,
            with(
                line("desk-7", "unmerge", &a, "nothing_to_unmerge"),
                "other_id",
                &b,
            ),
        )
        .await,
        audited(
            server.request(
                &desk,
                Method::DELETE,
                &format!("/v1/profiles/{a}/identifiers/phone/0624681357"),
            ),
            200,
            with(
                line("desk-7", "remove_identifier", &a, "ok"),
                "identifier_type",
                "phone",
            ),
        )
        .await,
        audited(
            server.request(
                &desk,
                Method::DELETE,
                &format!("/v1/profiles/{a}/identifiers/email/joris.audit@example.net"),
            ),
            404,
            with(
                line("desk-7", "remove_identifier", &a, "identifier_not_found"),
                "identifier_type",
                "email",
            ),
        )
        .await,
        audited(
            server.request(&dpo, Method::DELETE, &format!("/v1/profiles/{b}")),
            204,
            line("dpo-1", "erase", &b, "ok"),
        )
        .await,
        audited(
            server.request(&dpo, Method::DELETE, &format!("/v1/profiles/{NOBODY}")),
            404,
            line("dpo-1", "erase", NOBODY, "profile_not_found"),
        )
        .await,
        // Refused for want of the scope: audited too, before any body is read.
        audited(
            server.request(&reader, Method::DELETE, &format!("/v1/profiles/{a}")),
            403,
            line("reader-3", "erase", &a, "insufficient_scope"),
        )
        .await,
        audited(
            server
                .request(&reader, Method::POST, &merge)
                .json(&json!({ "source_id": b })),
            403,
            line("reader-3", "merge", &a, "insufficient_scope"),
        )
        .await,
    ];
    // Reads and ingests are not audited.
    let resp = server
        .request(&desk, Method::GET, &format!("/v1/profiles/{a}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let output = server.stop().await;

    let actual = audit_lines(&audit, since);
    assert_eq!(actual, expected, "one line per action, in order");
    assert_none_of(
        &std::fs::read_to_string(&audit).unwrap(),
        AUDIT_PII,
        "the audit log",
    );
    assert!(
        !output.iter().any(|l| l.contains("\"action\"")),
        "with a file configured, no audit line goes to stdout: {output:#?}"
    );
}

#[tokio::test]
async fn a_merge_made_by_a_signal_is_audited_with_its_subject_and_channel() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    // The till checks e-mails at checkout: this deployment marks them verified.
    let server = Binary::start(
        &dir.path().join("data"),
        &[
            ("ANAMNESIS__TELEMETRY__AUDIT_FILE", audit.to_str().unwrap()),
            ("ANAMNESIS__TRUST__CHANNELS__STORE__EMAIL", "verify"),
        ],
    );
    let since = chrono::Utc::now();
    let desk = token_for("desk-7", &[Scope::Admin]);
    let till = bound_token_for("till-4", &[Scope::SignalsWrite], Some("store"));
    let a = server
        .ingest(
            &desk,
            &signal("ivr", &[("email", "sanne.audit@example.com")]),
        )
        .await;
    let b = server
        .ingest(&desk, &signal("store", &[("loyalty_card", "LC-AUDIT-1")]))
        .await;
    let mut link = signal(
        "store",
        &[
            ("loyalty_card", "LC-AUDIT-1"),
            ("email", "sanne.audit@example.com"),
        ],
    );
    link["signal_id"] = json!("till-4-0001");
    let resp = server.post_signal(&till, &link).await;
    let request_id = header(&resp, "x-request-id");
    let result = body(resp).await;
    assert_eq!(result["customer_id"], a.as_str(), "{result}");
    assert_eq!(result["merged_ids"], json!([b]), "{result}");
    // A retry answers the same and made no merge now: no second line.
    let resp = server.post_signal(&till, &link).await;
    assert_eq!(body(resp).await, result);
    // Ingest itself is not audited: only the identity change it made.
    let resp = server
        .post_signal(&till, &signal("store", &[("loyalty_card", "LC-AUDIT-1")]))
        .await;
    assert_eq!(resp.status(), 200);

    // The ledger names the same: who, through which channel, by which identifier.
    let history = body(
        server
            .get(&desk, &format!("/v1/profiles/{a}/history"))
            .await,
    )
    .await;
    let merged_in = &history["events"][0];
    assert_eq!(merged_in["kind"], "merged_in", "{history}");
    assert_eq!(merged_in["by"], "till-4");
    assert_eq!(merged_in["channel"], "store");
    assert_eq!(merged_in["other_id"], b.as_str());
    assert_eq!(
        merged_in["identifier"],
        json!({"type": "email", "value": "sanne.audit@example.com"})
    );
    // Not for a reader without `pii:read`.
    let reader = token_for("reader-3", &[Scope::ProfilesRead]);
    let refused = server
        .get(&reader, &format!("/v1/profiles/{a}/history"))
        .await;
    assert_error(refused, 403, "insufficient_scope").await;
    server.stop().await;

    let expected = vec![json!({
        "who": "till-4",
        "channel": "store",
        "action": "merge_by_signal",
        "customer_id": a,
        "other_id": b,
        "outcome": "ok",
        "request_id": request_id,
    })];
    assert_eq!(audit_lines(&audit, since), expected);
}

/// A subject that spends its lookup budget is refused and audited once
/// (not once per refusal), with no value it looked for; a channel token
/// refused a scope its channel may not carry is audited on audited actions.
#[tokio::test]
async fn a_spent_lookup_budget_and_a_refused_channel_scope_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = Binary::start(
        &dir.path().join("data"),
        &[
            ("ANAMNESIS__TELEMETRY__AUDIT_FILE", audit.to_str().unwrap()),
            ("ANAMNESIS__LIMITS__LOOKUP_MISSES_PER_HOUR", "60"),
            ("ANAMNESIS__LIMITS__LOOKUP_MISS_BURST", "3"),
        ],
    );
    let since = chrono::Utc::now();
    let desk = token_for("desk-7", &[Scope::Admin]);
    let a = server
        .ingest(&desk, &signal("ivr", &[("phone", "06 2468 1357")]))
        .await;
    let web = bound_token_for("web-frontend", &[Scope::ProfilesRead], Some("web"));
    let lookup = |n: usize| format!("/v1/profiles/lookup?type=phone&value=06246813{n:02}");
    for n in 0..3 {
        let resp = server.get(&web, &lookup(n)).await;
        assert_error(resp, 404, "profile_not_found").await;
    }
    let mut request_id = None;
    for n in 3..8 {
        let resp = server.get(&web, &lookup(n)).await;
        request_id.get_or_insert_with(|| header(&resp, "x-request-id"));
        assert_error(resp, 429, "lookup_budget_exhausted").await;
    }
    let greedy = bound_token_for(
        "web-frontend",
        &[Scope::ProfilesRead, Scope::IdentityWrite],
        Some("web"),
    );
    let resp = server
        .request(&greedy, Method::POST, &format!("/v1/profiles/{a}/unmerge"))
        .json(&json!({ "merged_id": a }))
        .send()
        .await
        .unwrap();
    let refused_id = header(&resp, "x-request-id");
    assert_error(resp, 403, "scope_not_allowed_for_channel").await;
    server.stop().await;

    let expected = vec![
        json!({
            "who": "web-frontend",
            "channel": "web",
            "action": "lookup",
            "outcome": "lookup_budget_exhausted",
            "request_id": request_id.unwrap(),
        }),
        json!({
            "who": "web-frontend",
            "channel": "web",
            "action": "unmerge",
            "customer_id": a,
            "outcome": "scope_not_allowed_for_channel",
            "request_id": refused_id,
        }),
    ];
    assert_eq!(audit_lines(&audit, since), expected);
    assert_none_of(
        &std::fs::read_to_string(&audit).unwrap(),
        &["24681357", "+31624681357", "0624681303"],
        "the audit log",
    );
}

#[tokio::test]
async fn an_identifier_value_sent_as_its_type_stays_out_of_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = Binary::start(
        &dir.path().join("data"),
        &[("ANAMNESIS__TELEMETRY__AUDIT_FILE", audit.to_str().unwrap())],
    );
    let since = chrono::Utc::now();
    let desk = token_for("desk-7", &[Scope::Admin]);
    let a = server
        .ingest(
            &desk,
            &signal("web", &[("email", "fenna.audit@example.com")]),
        )
        .await;
    // The segments swapped, an easy slip in a script: .../{value}/{type}.
    let resp = server
        .request(
            &desk,
            Method::DELETE,
            &format!("/v1/profiles/{a}/identifiers/fenna.audit@example.com/email"),
        )
        .send()
        .await
        .unwrap();
    assert_error(resp, 422, "unknown_identifier_type").await;
    server.stop().await;

    let lines = audit_lines(&audit, since);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["action"], "remove_identifier");
    assert_eq!(lines[0]["outcome"], "unknown_identifier_type");
    // The `{type}` segment here holds an e-mail address: only configured type
    // names may reach the audit line.
    assert_none_of(
        &std::fs::read_to_string(&audit).unwrap(),
        &["fenna.audit"],
        "the audit log",
    );
}

/// What the log test stores and sends, written the ways it is sent and
/// normalised.
const LOG_PII: &[&str] = &[
    "06 1357 2468",
    "0613572468",
    "613572468", // also inside +31613572468 and %2B31613572468
    "1357 24689",
    "zoe.quist", // any case, raw, lower-cased or URL-encoded
    "zephyrine",
    "quistlaan",
];

#[tokio::test]
async fn info_logs_carry_no_personal_data_in_either_format() {
    for format in ["json", "text"] {
        let dir = tempfile::tempdir().unwrap();
        let server = Binary::start(dir.path(), &[("ANAMNESIS__TELEMETRY__FORMAT", format)]);
        let token = token_for("desk-9", &[Scope::Admin]);
        let mut zoe = signal(
            "ivr",
            &[
                ("phone", "06 1357 2468"),
                ("email", " Zoe.Quist@Example.org "),
            ],
        );
        zoe["traits"] = json!({ "first_name": "Zephyrine" });
        zoe["answers"] = json!([{ "key": "reason_for_contact", "value": "moving to Quistlaan 9" }]);
        let id = server.ingest(&token, &zoe).await;

        let get = |path: &str, query: &[(&str, &str)]| {
            server
                .request(&token, Method::GET, path)
                .query(query)
                .send()
        };
        let reads = [
            get(&format!("/v1/profiles/{id}"), &[]).await.unwrap(),
            get(&format!("/v1/profiles/{id}/context"), &[])
                .await
                .unwrap(),
            get(
                "/v1/profiles/lookup",
                &[("type", "phone"), ("value", "06 1357 2468")],
            )
            .await
            .unwrap(),
            get(
                "/v1/context",
                &[("type", "email"), ("value", "ZOE.QUIST@example.org")],
            )
            .await
            .unwrap(),
        ];
        for resp in reads {
            assert_eq!(resp.status(), 200, "{format}: {}", resp.url());
        }

        let post = |signal: Value| {
            server
                .request(&token, Method::POST, "/v1/signals")
                .json(&signal)
                .send()
        };
        let invalid_phone = signal("ivr", &[("phone", "+31 6 1357 24689")]);
        assert_error(
            post(invalid_phone).await.unwrap(),
            422,
            "invalid_identifier",
        )
        .await;
        let mut unknown_field = signal("web", &[("email", "Zoe.Quist@Example.org")]);
        unknown_field["emial"] = json!("zoe.quist@example.org");
        assert_error(post(unknown_field).await.unwrap(), 422, "unknown_field").await;
        let unknown = get(
            "/v1/profiles/lookup",
            &[("type", "email"), ("value", "zoe.quist.old@example.org")],
        );
        assert_error(unknown.await.unwrap(), 404, "profile_not_found").await;
        let resp = server
            .request(&token, Method::DELETE, &format!("/v1/profiles/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);

        let output = server.stop().await;
        let text = output.join("\n");
        for expected in ["anamnesis listening", "anamnesis stopped", "\"erase\""] {
            assert!(
                text.contains(expected),
                "{format}: the capture lacks {expected}:\n{text}"
            );
        }
        assert_none_of(&text, LOG_PII, &format!("the {format} log"));
    }
}

// ---------------------------------------------------------------------------
// Masking in write answers and refusals (reads and single ingests: auth.rs).

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
