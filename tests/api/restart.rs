//! Durability: what was acknowledged survives `kill -9`, and a graceful stop
//! flushes and exits cleanly. These run the real binary.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anamnesis::auth::Scope;
use serde_json::json;

use crate::helpers::binary::{token_for, wait_until_gone, Binary};

fn admin_token() -> String {
    token_for("restart-test", &[Scope::Admin])
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    let token = admin_token();
    let server = Binary::start(dir.path(), &[]);
    let mut ids = Vec::new();
    for i in 0..20 {
        let resp = server
            .post_signal(
                &token,
                &json!({"signal_id": format!("k9-{i}"), "channel": "ivr",
                          "identifiers": [{"type": "account_id", "value": format!("C-{i}")}],
                          "traits": {"n": i}, "event": {"type": "call_started"}}),
            )
            .await;
        assert_eq!(resp.status(), 201);
        ids.push(
            resp.json::<serde_json::Value>().await.unwrap()["customer_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // The moment after the last acknowledgement: no graceful anything.
    server.kill().await;

    let server = Binary::start(dir.path(), &[]);
    for (i, id) in ids.iter().enumerate() {
        let resp = server.get(&token, &format!("/v1/profiles/{id}")).await;
        assert_eq!(resp.status(), 200, "profile {i} lost");
        let p: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(p["traits"]["n"]["value"], i);
        assert_eq!(p["channels"]["ivr"]["interactions"], 1);
    }
    // Idempotency survives too.
    let resp = server
        .post_signal(
            &token,
            &json!({"signal_id": "k9-3", "channel": "ivr",
                      "identifiers": [{"type": "account_id", "value": "C-3"}],
                      "traits": {"n": 3}, "event": {"type": "call_started"}}),
        )
        .await;
    assert_eq!(resp.status(), 201, "the replay answers like the first call");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["customer_id"],
        ids[3].as_str()
    );
    server.kill().await;
}

#[tokio::test]
async fn sigterm_stops_gracefully_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let token = admin_token();
    let mut server = Binary::start(dir.path(), &[]);
    let resp = server
        .post_signal(
            &token,
            &json!({"channel": "web", "identifiers": [{"type": "web_cookie", "value": "term"}]}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    // The container health check probes /healthz without curl.
    let addr = server.base.trim_start_matches("http://").to_owned();
    let healthy = Command::new(env!("CARGO_BIN_EXE_anamnesis"))
        .args(["healthcheck", "--addr", &addr])
        .status()
        .unwrap();
    assert!(healthy.success(), "healthcheck passes while serving");
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_until_gone(&mut server.child).await;
    assert!(exit.success(), "graceful stop exits 0, got {exit:?}");
    let unhealthy = Command::new(env!("CARGO_BIN_EXE_anamnesis"))
        .args(["healthcheck", "--addr", &addr])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !unhealthy.success(),
        "healthcheck fails when nothing serves"
    );
    let server = Binary::start(dir.path(), &[]);
    let resp = server
        .get(&token, "/v1/profiles/lookup?type=web_cookie&value=term")
        .await;
    assert_eq!(resp.status(), 200);
    server.kill().await;
}

/// The change feed and a stream's replay serve what an earlier run wrote
/// from the first request after a restart, before any new write.
#[tokio::test]
async fn the_change_feed_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let token = admin_token();
    let server = Binary::start(dir.path(), &[]);
    let id = server
        .ingest(
            &token,
            &json!({"signal_id": "feed-1", "channel": "web",
                      "identifiers": [{"type": "web_cookie", "value": "feed"}]}),
        )
        .await;
    server.stop().await;

    let server = Binary::start(dir.path(), &[]);
    let resp = server.get(&token, "/v1/changes").await;
    assert_eq!(resp.status(), 200);
    let feed: serde_json::Value = resp.json().await.unwrap();
    let customers: Vec<&str> = feed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["customer_id"].as_str())
        .collect();
    assert_eq!(customers, [id.as_str()], "{feed}");
    server.kill().await;
}

#[tokio::test]
async fn first_start_without_a_secret_prints_a_working_admin_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start_without_secret(dir.path());
    let mut token = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while token.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = server
            .lines
            .recv_timeout(left)
            .expect("banner with a token");
        let trimmed = line.trim();
        if trimmed.starts_with("eyJ") {
            token = Some(trimmed.to_owned());
        }
    }
    let token = token.unwrap();
    let client = reqwest::Client::new();
    let resp = server
        .post_signal(
            &token,
            &json!({"channel": "web", "identifiers": [{"type": "web_cookie", "value": "first"}]}),
        )
        .await;
    assert_eq!(resp.status(), 201, "the printed token works");
    let unauthenticated = client
        .get(format!(
            "{}/v1/profiles/lookup?type=web_cookie&value=first",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        unauthenticated.status(),
        401,
        "never unauthenticated by default"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("auth.secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the secret is readable by its owner only"
        );
    }
    server.kill().await;

    // Second start: same secret, so the old token still works, and no banner.
    let server = Binary::start_without_secret(dir.path());
    let resp = server
        .get(&token, "/v1/profiles/lookup?type=web_cookie&value=first")
        .await;
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let printed: Vec<String> = server.lines.try_iter().collect();
    assert!(
        !printed.iter().any(|l| l.trim().starts_with("eyJ")),
        "the token is printed only once: {printed:?}"
    );
    server.kill().await;
}
