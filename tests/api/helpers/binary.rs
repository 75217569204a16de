//! The real `anamnesis` binary on a free port, for the tests that need a
//! process of their own: durability across kill -9 and restarts, the first
//! start's banner, the audit log and the logs as an operator sees them.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use anamnesis::auth::{Authenticator, Scope};
use anamnesis::config::Settings;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

use crate::helpers::{body, id_of, SECRET};

/// A token for `subject` signed with the test secret: budgets and audit
/// lines are per subject, and `TestApp::token` always says "test".
pub fn token_for(subject: &str, scopes: &[Scope]) -> String {
    bound_token_for(subject, scopes, None)
}

/// A token for `subject` bound to `channel` (its `channel` claim).
pub fn bound_token_for(subject: &str, scopes: &[Scope], channel: Option<&str>) -> String {
    Authenticator::new(&Settings::defaults().auth, Some(SECRET.as_bytes()))
        .and_then(|auth| auth.mint(subject, scopes, channel, Duration::from_secs(600)))
        .expect("minted")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary, its stdout and stderr captured line by line.
pub struct Binary {
    pub child: Child,
    pub base: String,
    client: reqwest::Client,
    /// Every line printed after the "listening" line.
    pub lines: Receiver<String>,
    /// Lines read while waiting for the server to listen.
    seen: Vec<String>,
}

/// Forwards each line of `pipe` (lossily decoded) until it closes.
fn forward(pipe: impl Read + Send + 'static, tx: Sender<String>) {
    std::thread::spawn(move || {
        let mut pipe = BufReader::new(pipe);
        let mut line = Vec::new();
        while pipe.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            if tx.send(text).is_err() {
                return;
            }
            line.clear();
        }
    });
}

impl Binary {
    /// Starts the service on a free port over `data`, with the test secret
    /// and telemetry level `info`, changed by `env`.
    pub fn start(data: &Path, env: &[(&str, &str)]) -> Binary {
        Binary::spawn(data, Some(SECRET), env)
    }

    /// Starts the service with no configured secret, as on a first start:
    /// it uses (or generates) the secret in `data`.
    pub fn start_without_secret(data: &Path) -> Binary {
        Binary::spawn(data, None, &[])
    }

    fn spawn(data: &Path, secret: Option<&str>, env: &[(&str, &str)]) -> Binary {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_anamnesis"));
        command
            .env("ANAMNESIS__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("ANAMNESIS__STORAGE__PATH", data)
            .env("ANAMNESIS__TELEMETRY__LEVEL", "info")
            .env_remove("ANAMNESIS__AUTH__HS256_SECRET")
            // RUST_LOG would win over the configured level.
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(secret) = secret {
            command.env("ANAMNESIS__AUTH__HS256_SECRET", secret);
        }
        command.envs(crate::helpers::backend_env(data));
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("the binary starts");
        let (tx, lines) = mpsc::channel();
        forward(child.stdout.take().unwrap(), tx.clone());
        forward(child.stderr.take().unwrap(), tx);
        // Wait for the "listening" line so the tests do not race the bind.
        let mut seen: Vec<String> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen
            .last()
            .is_some_and(|l| l.contains("anamnesis listening"))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the server did not report listening: {seen:#?}"));
            seen.push(line);
        }
        Binary {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            lines,
            seen,
        }
    }

    pub fn request(&self, token: &str, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
    }

    pub async fn get(&self, token: &str, path: &str) -> Response {
        self.request(token, Method::GET, path).send().await.unwrap()
    }

    pub async fn post_signal(&self, token: &str, signal: &Value) -> Response {
        self.request(token, Method::POST, "/v1/signals")
            .json(signal)
            .send()
            .await
            .unwrap()
    }

    /// Ingests a signal that must succeed; returns the customer id.
    pub async fn ingest(&self, token: &str, signal: &Value) -> String {
        let resp = self.post_signal(token, signal).await;
        assert!(resp.status().is_success(), "{}", resp.status());
        id_of(&body(resp).await)
    }

    /// `kill -9`, and wait until the process is gone.
    pub async fn kill(mut self) {
        self.child.kill().unwrap();
        wait_until_gone(&mut self.child).await;
    }

    /// SIGTERM, then every line it printed, read to the end.
    pub async fn stop(mut self) -> Vec<String> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let exit = wait_until_gone(&mut self.child).await;
        assert!(exit.success(), "graceful stop exits 0, got {exit:?}");
        let mut lines = std::mem::take(&mut self.seen);
        // Both pipes close with the process, which ends this iteration.
        lines.extend(self.lines.iter());
        lines
    }
}

impl Drop for Binary {
    // A failed assertion must not leave a server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn wait_until_gone(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
