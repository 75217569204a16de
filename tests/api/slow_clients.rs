//! Slow and idle clients are cut off, over raw TCP: what an HTTP client
//! library will not do is stall part-way through a request. Also the
//! refusals the HTTP layer makes below the router (oversized or malformed
//! heads), which only raw TCP can send.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::spawn_app_with;

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
