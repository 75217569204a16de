//! The agent console end to end, in headless Chromium driven over
//! WebDriver (chromedriver): paste a token, look a caller up by a phone
//! number written another way, see the card, and watch an answer a chatbot
//! posts appear without a reload. `tests/run.sh` installs Chromium and
//! chromedriver when missing. The screenshot lands in
//! `target/console-screenshot.png`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::helpers::binary::free_port;
use crate::helpers::{body, id_of, spawn_app};

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    driver: Child,
    base: String,
    client: reqwest::Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// chromedriver on a free port and one headless Chromium session.
    async fn start() -> (Browser, String) {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (tests/run.sh installs chromium and chromium-driver)");
        let browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = browser
                .client
                .get(format!("{}/status", browser.base))
                .send()
                .await;
            if status.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromium is installed");
        let session = browser
            .call(
                "POST",
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1280,1100"]
                    }
                }}}),
            )
            .await;
        let id = session["sessionId"].as_str().expect("a session").to_owned();
        (browser, id)
    }

    async fn call(&self, method: &str, path: &str, payload: Value) -> Value {
        let url = format!("{}{}", self.base, path);
        let request = match method {
            "POST" => self.client.post(url).json(&payload),
            "DELETE" => self.client.delete(url),
            _ => self.client.get(url),
        };
        let resp = request.send().await.expect("chromedriver answers");
        let status = resp.status();
        let v: Value = resp.json().await.expect("JSON from chromedriver");
        assert!(status.is_success(), "{method} {path}: {v}");
        v["value"].clone()
    }

    async fn element(&self, session: &str, css: &str) -> String {
        let found = self
            .call(
                "POST",
                &format!("/session/{session}/element"),
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().expect("element found").to_owned()
    }

    async fn type_into(&self, session: &str, css: &str, text: &str) {
        let element = self.element(session, css).await;
        self.call(
            "POST",
            &format!("/session/{session}/element/{element}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn script(&self, session: &str, script: &str) -> Value {
        self.call(
            "POST",
            &format!("/session/{session}/execute/sync"),
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Asserts that every resource the page loaded came from `origin`.
    async fn assert_only_from(&self, session: &str, origin: &str) {
        let elsewhere = self
            .script(
                session,
                &format!(
                    "return performance.getEntriesByType('resource').map(e => e.name)\
                     .filter(n => !n.startsWith('{origin}')).join(' ')"
                ),
            )
            .await;
        assert_eq!(elsewhere, "", "requests beyond the service");
    }

    /// Waits until `script` returns a string containing `wanted`.
    async fn wait_for(&self, session: &str, script: &str, wanted: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.script(session, script).await;
            let got = got.as_str().unwrap_or_default().to_owned();
            if got.contains(wanted) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "`{wanted}` did not appear; last: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Enter, as WebDriver types it.
const ENTER: &str = "\u{E007}";

#[tokio::test]
async fn an_agent_finds_the_caller_and_sees_a_chatbot_answer_arrive_live() {
    let app = spawn_app().await;
    let created = app
        .ingest(json!({
            "channel": "ivr",
            "identifiers": [{"type": "phone", "value": "+31 6 1234 5678"}],
            "traits": {"first_name": "Anna", "last_name": "Jansen", "preferred_language": "nl"},
            "answers": [{"key": "reason_for_contact", "value": "delivery",
                         "question": "Why are you calling?"}],
            "event": {"type": "call_started", "summary": "Chose 'deliveries'",
                      "episode": {"id": "order-A-1001", "title": "Delivery of order A-1001",
                                  "status": "open", "public_status": "Out for delivery"}}
        }))
        .await;
    let id = id_of(&created);
    let desk = app.token(&["profiles:read"], None);

    let (browser, session) = Browser::start().await;
    browser
        .call(
            "POST",
            &format!("/session/{session}/url"),
            json!({"url": format!("{}/console", app.address)}),
        )
        .await;
    browser
        .type_into(&session, "#token", &format!("{desk}{ENTER}"))
        .await;
    // The same number as the IVR sent, written as a person would type it.
    browser
        .type_into(&session, "#lookup", &format!("06-12345678{ENTER}"))
        .await;
    let name = "return (document.getElementById('customer-name') || {}).textContent || ''";
    // The desk's token has no pii:read: the name and the number are masked.
    browser.wait_for(&session, name, "An**** Ja****").await;
    let card = "return document.getElementById('card').textContent";
    let shown = browser.wait_for(&session, card, "Out for delivery").await;
    for expected in [
        "delivery",
        "Out for delivery",
        "service",
        "call_started",
        "ivr",
        "+31****78",
    ] {
        assert!(
            shown.contains(expected),
            "`{expected}` not on the card: {shown}"
        );
    }

    // A chatbot captures the order number: it appears without a reload.
    let marker = "return String(performance.getEntriesByType('navigation').length) + ':' + document.readyState";
    let before = browser.script(&session, marker).await;
    let resp = app
        .request(reqwest::Method::POST, &format!("/v1/profiles/{id}/answers"))
        .json(&json!({"channel": "chatbot", "answers": [
            {"key": "order_number", "value": "A-1001", "question": "What is your order number?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", body(resp).await);
    let answers = "return (document.getElementById('answers') || {}).textContent || ''";
    browser.wait_for(&session, answers, "A-1001").await;
    assert_eq!(browser.script(&session, marker).await, before, "no reload");

    // Nothing was fetched from anywhere but this service.
    browser.assert_only_from(&session, &app.address).await;

    let png = browser
        .call("GET", &format!("/session/{session}/screenshot"), json!({}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().expect("a screenshot"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::write(target.join("console-screenshot.png"), png).expect("screenshot written");
    browser
        .call("DELETE", &format!("/session/{session}"), json!({}))
        .await;
}

/// The interactive API docs come from the binary: the page renders the
/// served OpenAPI document and asks nothing of any other host.
#[tokio::test]
async fn the_api_docs_render_from_the_service_alone() {
    let app = spawn_app().await;
    let (browser, session) = Browser::start().await;
    browser
        .call(
            "POST",
            &format!("/session/{session}/url"),
            json!({"url": format!("{}/docs", app.address)}),
        )
        .await;
    let page = "return document.body.innerText";
    let shown = browser.wait_for(&session, page, "/v1/signals").await;
    assert!(shown.contains("anamnesis"), "{shown}");
    // Swagger UI loads its parts after the page: give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    browser.assert_only_from(&session, &app.address).await;
    browser
        .call("DELETE", &format!("/session/{session}"), json!({}))
        .await;
}
