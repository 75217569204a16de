//! A full disk under the embedded store: writes are refused while it lasts,
//! `/readyz` says why, reads never answer with a write's error, and once
//! there is room again the store takes writes by itself, without a restart,
//! with every acknowledged write still there.
//!
//! The disk is a small tmpfs mounted by the test (it runs as root here and
//! in CI), grown later with a remount. sled only: `tests/run.sh` skips it in
//! the PostgreSQL pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{body, id_of, spawn_app_with, TestApp};

/// A tmpfs of its own, unmounted when dropped (also when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running mount failed: {e}"));
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (it runs as root in CI): mount said {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn grow(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "remounting bigger failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the service may still hold its files open; the mount goes
        // once they are closed.
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// A signal of about 2 KB, so that a few megabytes fill up quickly.
fn signal(i: usize) -> Value {
    json!({
        "signal_id": format!("disk-{i}"),
        "channel": "web",
        "identifiers": [{"type": "account_id", "value": format!("D-{i}")}],
        "traits": {"n": i, "note": "x".repeat(2000)},
        "event": {"type": "page_view"},
    })
}

async fn readyz(app: &TestApp) -> (StatusCode, Value) {
    let resp = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    (resp.status(), body(resp).await)
}

#[tokio::test]
async fn after_a_full_disk_writes_come_back_by_themselves_and_nothing_acknowledged_is_lost() {
    let disk = Tmpfs::mount("3m");
    let data: PathBuf = disk.path().to_path_buf();
    let app = spawn_app_with(move |s| {
        // The embedded store, whatever the pass.
        s.storage.backend = anamnesis::config::Backend::Sled;
        s.storage.path = data;
    })
    .await;

    // Fill the disk: every acknowledged write is remembered.
    let mut acknowledged: Vec<(usize, String)> = Vec::new();
    let started = Instant::now();
    let refused = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "3 MB never filled up: {} writes acknowledged",
            acknowledged.len()
        );
        let i = acknowledged.len();
        let resp = app.post_signal(&signal(i)).await;
        match resp.status() {
            StatusCode::CREATED => acknowledged.push((i, id_of(&body(resp).await))),
            StatusCode::SERVICE_UNAVAILABLE => break resp,
            other => panic!("signal {i}: {other}: {}", body(resp).await),
        }
    };
    assert!(
        acknowledged.len() > 10,
        "the disk was full after {} writes",
        acknowledged.len()
    );
    assert!(refused.headers().contains_key("retry-after"));
    let refused = body(refused).await;
    assert_eq!(refused["error"]["code"], "store_unavailable", "{refused}");

    // Not ready, and why. Further writes are refused at once.
    let (status, ready) = readyz(&app).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["status"], "unavailable", "{ready}");
    assert_eq!(ready["store"], "unavailable", "{ready}");
    let reason = ready["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("No space left on device"),
        "the reason names the full disk: {ready}"
    );
    let resp = app.post_signal(&signal(1_000_000)).await;
    assert_eq!(resp.status(), 503);

    // Reads of what was acknowledged: the profile, or a read's error.
    for (i, id) in acknowledged.iter().rev().take(20) {
        let resp = app.get_profile(id).await;
        match resp.status() {
            StatusCode::OK => assert_eq!(body(resp).await["traits"]["n"]["value"], *i),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(resp.headers().contains_key("retry-after"));
                let b = body(resp).await;
                assert_eq!(b["error"]["code"], "store_unavailable", "{b}");
                let message = b["error"]["message"].as_str().unwrap();
                assert!(
                    !message.contains("write"),
                    "a read answered with a write's error: {b}"
                );
            }
            other => panic!("profile {i}: {other}: {}", body(resp).await),
        }
    }

    // Room again: no restart, the store takes writes by itself.
    disk.grow("64m");
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(30);
    let mut tries = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "writes did not come back within 30 s; /readyz: {:?}",
            readyz(&app).await
        );
        tries += 1;
        let resp = app.post_signal(&signal(2_000_000 + tries)).await;
        if resp.status() == StatusCode::CREATED {
            break;
        }
        assert_eq!(resp.status(), 503, "{}", body(resp).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back_after = healed.elapsed();
    let (status, ready) = readyz(&app).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["store"], "ok", "{ready}");
    assert!(ready.get("reason").is_none(), "{ready}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("anamnesis_store_reopens_total") && !l.ends_with(" 0")),
        "the reopen is counted"
    );

    // Every acknowledged write is there, and its signal_id replays it.
    for (i, id) in &acknowledged {
        let p = app.profile(id).await;
        assert_eq!(p["traits"]["n"]["value"], *i, "{id}");
    }
    for (i, id) in acknowledged.iter().step_by(7) {
        let resp = app.post_signal(&signal(*i)).await;
        assert_eq!(resp.status(), 201, "the replay of signal {i}");
        assert_eq!(id_of(&body(resp).await), *id);
    }
    eprintln!(
        "{} writes acknowledged before the disk was full; writable again {} ms after it grew",
        acknowledged.len(),
        back_after.as_millis()
    );
}
