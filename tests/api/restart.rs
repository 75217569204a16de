//! Durability: what was acknowledged survives `kill -9`, and a graceful stop
//! flushes and exits cleanly. These run the real binary.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::SECRET;

struct Server {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(data: &std::path::Path) -> Server {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_anamnesis"))
        .env("ANAMNESIS__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("ANAMNESIS__STORAGE__PATH", data)
        .env("ANAMNESIS__AUTH__HS256_SECRET", SECRET)
        .env("ANAMNESIS__TELEMETRY__LEVEL", "info")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    // Wait for the "listening" line so we do not race the bind.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("anamnesis listening") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("server reported listening");
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

fn admin_token() -> String {
    let settings = anamnesis::config::Settings::defaults();
    anamnesis::auth::Authenticator::new(&settings.auth, SECRET.as_bytes()).mint(
        "restart-test",
        &[anamnesis::auth::Scope::Admin],
        None,
        Duration::from_secs(600),
    )
}

async fn wait_until_gone(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    let token = admin_token();
    let client = reqwest::Client::new();
    let mut server = start(dir.path());
    let mut ids = Vec::new();
    for i in 0..20 {
        let resp = client
            .post(format!("{}/v1/signals", server.base))
            .bearer_auth(&token)
            .json(&json!({"signal_id": format!("k9-{i}"), "channel": "ivr",
                          "identifiers": [{"type": "account_id", "value": format!("C-{i}")}],
                          "traits": {"n": i}, "event": {"type": "call_started"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        ids.push(
            resp.json::<serde_json::Value>().await.unwrap()["customer_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // The moment after the last acknowledgement: no graceful anything.
    server.child.kill().unwrap();
    wait_until_gone(&mut server.child).await;

    let mut server = start(dir.path());
    for (i, id) in ids.iter().enumerate() {
        let resp = client
            .get(format!("{}/v1/profiles/{id}", server.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "profile {i} lost");
        let p: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(p["traits"]["n"]["value"], i);
        assert_eq!(p["channels"]["ivr"]["interactions"], 1);
    }
    // Idempotency survives too.
    let resp = client
        .post(format!("{}/v1/signals", server.base))
        .bearer_auth(&token)
        .json(&json!({"signal_id": "k9-3", "channel": "ivr",
                      "identifiers": [{"type": "account_id", "value": "C-3"}],
                      "traits": {"n": 3}, "event": {"type": "call_started"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "the replay answers like the first call");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["customer_id"],
        ids[3].as_str()
    );
    server.child.kill().unwrap();
    wait_until_gone(&mut server.child).await;
}

#[tokio::test]
async fn sigterm_stops_gracefully_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let token = admin_token();
    let client = reqwest::Client::new();
    let mut server = start(dir.path());
    let resp = client
        .post(format!("{}/v1/signals", server.base))
        .bearer_auth(&token)
        .json(&json!({"channel": "web", "identifiers": [{"type": "web_cookie", "value": "term"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_until_gone(&mut server.child).await;
    assert!(exit.success(), "graceful stop exits 0, got {exit:?}");
    let mut server = start(dir.path());
    let resp = client
        .get(format!(
            "{}/v1/profiles/lookup?type=web_cookie&value=term",
            server.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.child.kill().unwrap();
    wait_until_gone(&mut server.child).await;
}
