//! Backup, restore and verify of the embedded store, through the real
//! binary: a backup taken from the running service while it writes holds
//! exactly the writes up to its point; a restore brings back exactly that,
//! less whoever was erased since; a damaged backup is refused; `verify`
//! finds what is wrong with a store. sled only: `tests/run.sh` skips these
//! in the PostgreSQL pass.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anamnesis::auth::Scope;
use anamnesis::store::backup::{Manifest, RECORDS_FILE};
use anamnesis::store::{SledStore, Store};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::binary::{token_for, Binary};
use crate::helpers::{body, id_of, SECRET};

const ON_SLED: [(&str, &str); 1] = [("ANAMNESIS__STORAGE__BACKEND", "sled")];

/// Runs a command of the binary over the store in `data`.
fn cli(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anamnesis"))
        .args(args)
        .env("ANAMNESIS__STORAGE__PATH", data)
        .env("ANAMNESIS__STORAGE__BACKEND", "sled")
        .env("ANAMNESIS__AUTH__HS256_SECRET", SECRET)
        .env("ANAMNESIS__TELEMETRY__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn signal(tag: &str, i: usize) -> Value {
    json!({
        "signal_id": format!("{tag}-{i}"),
        "channel": "web",
        "identifiers": [{"type": "account_id", "value": format!("{tag}-{i}")}],
        "traits": {"n": i, "tag": tag},
        "event": {"type": "page_view"},
    })
}

/// Every change of the feed, by position.
async fn feed(server: &Binary, token: &str) -> BTreeMap<u64, Value> {
    let mut all = BTreeMap::new();
    let mut after = String::new();
    loop {
        let path = match after.is_empty() {
            true => "/v1/changes?limit=1000".to_owned(),
            false => format!("/v1/changes?limit=1000&after={after}"),
        };
        let page = body(server.get(token, &path).await).await;
        let changes = page["changes"].as_array().unwrap();
        if changes.is_empty() {
            return all;
        }
        for c in changes {
            all.insert(c["seq"].as_u64().unwrap(), c.clone());
        }
        after = page["next_cursor"].as_str().unwrap().to_owned();
    }
}

/// A backup taken while four writers keep writing, then more writes and an
/// erasure, then a restore: the restored store holds every write up to the
/// backup point and none after, less the erased customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_exactly_the_writes_before_its_point_less_erasures() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = token_for("backup-test", &[Scope::Admin]);
    let server = Binary::start(&data, &ON_SLED);

    // A store big enough that the copy takes a while: 3,000 profiles.
    for b in 0..6 {
        let signals: Vec<Value> = (0..500).map(|i| signal("pre", b * 500 + i)).collect();
        let resp = server
            .request(&token, Method::POST, "/v1/signals/batch")
            .json(&json!({ "signals": signals }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    // Writers that go on through the backup: every acknowledged signal is kept.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (base, token, acked, stop) = (
            server.base.clone(),
            token.clone(),
            acked.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let tag = format!("w{w}");
                let resp = client
                    .post(format!("{base}/v1/signals"))
                    .bearer_auth(&token)
                    .json(&signal(&tag, i))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201);
                let id = id_of(&body(resp).await);
                acked.lock().unwrap().push((format!("{tag}-{i}"), id));
                i += 1;
            }
        }));
    }
    while acked.lock().unwrap().len() < 40 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let backup = dir.path().join("backup");
    let out = tokio::task::spawn_blocking({
        let (data, backup, base) = (data.clone(), backup.clone(), server.base.clone());
        move || {
            cli(
                &data,
                &["backup", "--to", backup.to_str().unwrap(), "--url", &base],
            )
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "backup: {}", text(&out));
    let during = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < during + 40 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    let point = manifest.point.last_change;

    // Which write came before the point: the position of its profile's creation.
    let before_restore = feed(&server, &token).await;
    let created: BTreeMap<String, u64> = before_restore
        .iter()
        .filter(|(_, c)| c["type"] == "profile.created")
        .map(|(seq, c)| (c["customer_id"].as_str().unwrap().to_owned(), *seq))
        .collect();
    let acked = acked.lock().unwrap().clone();
    let (kept, later): (Vec<_>, Vec<_>) = acked.iter().partition(|(_, id)| created[id] <= point);
    assert!(
        !kept.is_empty() && !later.is_empty(),
        "writes on both sides of the point"
    );

    // Erased after the point: one customer the backup holds.
    let (erased_signal, erased) = kept[0].clone();
    let resp = server
        .request(&token, Method::DELETE, &format!("/v1/profiles/{erased}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    server.stop().await;

    // A store with records is not replaced without --force.
    let out = cli(&data, &["restore", "--from", backup.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--force"), "{}", text(&out));
    let out = cli(
        &data,
        &["restore", "--from", backup.to_str().unwrap(), "--force"],
    );
    assert!(out.status.success(), "restore: {}", text(&out));
    let report = text(&out);
    assert!(report.contains("1 profiles erased again"), "{report}");
    assert!(report.contains("no problems"), "{report}");

    let server = Binary::start(&data, &ON_SLED);
    let restored = feed(&server, &token).await;
    // The change log up to the point, exactly; then only the erasure again,
    // at a position past every one the old store handed out.
    let upto: BTreeMap<u64, Value> = before_restore
        .range(..=point)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    assert_eq!(restored.range(..=point).count(), upto.len());
    assert_eq!(
        restored
            .range(..=point)
            .map(|(k, v)| (*k, v.clone()))
            .collect::<BTreeMap<_, _>>(),
        upto
    );
    let after: Vec<&Value> = restored.range(point + 1..).map(|(_, v)| v).collect();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["type"], "profile.erased");
    assert_eq!(after[0]["customer_id"], erased.as_str());
    assert!(after[0]["seq"].as_u64().unwrap() > *before_restore.keys().last().unwrap());

    // Every write before the point is there, none after, the erased one not.
    for (signal_id, id) in &kept {
        let resp = server.get(&token, &format!("/v1/profiles/{id}")).await;
        if *id == erased {
            assert_eq!(resp.status(), 404, "{signal_id} was erased");
            continue;
        }
        assert_eq!(resp.status(), 200, "{signal_id} is lost");
        assert_eq!(
            body(resp).await["traits"]["tag"]["value"],
            signal_id.split('-').next().unwrap()
        );
    }
    for (signal_id, id) in &later {
        let resp = server.get(&token, &format!("/v1/profiles/{id}")).await;
        assert_eq!(resp.status(), 404, "{signal_id} came after the point");
    }
    // The erased customer's signal is still answered as erased, not replayed.
    let parts: Vec<&str> = erased_signal.rsplitn(2, '-').collect();
    let resp = server
        .post_signal(&token, &signal(parts[1], parts[0].parse().unwrap()))
        .await;
    assert_eq!(resp.status(), 410);
    let profiles: BTreeSet<&String> = kept.iter().map(|(_, id)| id).collect();
    assert_eq!(profiles.len(), kept.len());
    server.stop().await;
}

/// A backup whose records were altered or cut short is refused, and the
/// store stays as it was.
#[tokio::test]
async fn a_damaged_backup_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = token_for("backup-test", &[Scope::Admin]);
    let server = Binary::start(&data, &ON_SLED);
    let first = server.ingest(&token, &signal("d", 1)).await;
    server.stop().await;

    let backup = dir.path().join("backup");
    let out = cli(
        &data,
        &["backup", "--offline", "--to", backup.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Into a directory that holds something: refused.
    let out = cli(
        &data,
        &["backup", "--offline", "--to", backup.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("not empty"), "{}", text(&out));

    let server = Binary::start(&data, &ON_SLED);
    let second = server.ingest(&token, &signal("d", 2)).await;
    server.stop().await;

    let records = backup.join(RECORDS_FILE);
    let good = std::fs::read(&records).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    for damaged in [flipped, good[..good.len() - 7].to_vec()] {
        std::fs::write(&records, &damaged).unwrap();
        let out = cli(
            &data,
            &["restore", "--from", backup.to_str().unwrap(), "--force"],
        );
        assert!(!out.status.success());
        assert!(text(&out).contains("damaged"), "{}", text(&out));
        assert!(text(&out).contains("nothing was changed"), "{}", text(&out));
    }
    // Both profiles still there: the refused restores changed nothing.
    let server = Binary::start(&data, &ON_SLED);
    for id in [&first, &second] {
        let resp = server.get(&token, &format!("/v1/profiles/{id}")).await;
        assert_eq!(resp.status(), 200);
    }
    // Only an admin takes a backup.
    let reader = token_for("backup-reader", &[Scope::ProfilesRead]);
    let resp = server.get(&reader, "/v1/admin/backup").await;
    assert_eq!(resp.status(), 403);
    assert_eq!(body(resp).await["error"]["code"], "insufficient_scope");
    server.stop().await;
}

/// `verify` passes on a sound store and names each planted inconsistency.
#[tokio::test]
async fn verify_names_what_is_wrong_with_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = token_for("verify-test", &[Scope::Admin]);
    let server = Binary::start(&data, &ON_SLED);
    let a = server
        .ingest(
            &token,
            &json!({"channel": "web", "identifiers": [{"type": "web_cookie", "value": "ck-v1"}]}),
        )
        .await;
    let b = server
        .ingest(
            &token,
            &json!({"channel": "web", "identifiers": [
                {"type": "account_id", "value": "v-2"}, {"type": "web_cookie", "value": "ck-v2"}]}),
        )
        .await;
    let c = server
        .ingest(
            &token,
            &json!({"channel": "web", "identifiers": [{"type": "email", "value": "v3@example.com"}]}),
        )
        .await;
    let resp = server
        .request(&token, Method::POST, &format!("/v1/profiles/{c}/merge"))
        .json(&json!({ "source_id": a }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", body(resp).await);
    server.stop().await;

    let out = cli(&data, &["verify"]);
    assert!(out.status.success(), "a sound store: {}", text(&out));
    assert!(text(&out).contains("no problems"), "{}", text(&out));

    // Planted: an identifier of b's loses its owner entry, and a merged id
    // points to a profile that does not exist.
    {
        let store = SledStore::open(&data.join("db")).unwrap();
        let b_id = anamnesis::domain::CustomerId::parse(&b).unwrap();
        let ghost = anamnesis::domain::CustomerId::generate();
        let cookie = store
            .profile(b_id)
            .unwrap()
            .unwrap()
            .identifiers
            .iter()
            .find(|r| r.identifier.kind() == "web_cookie")
            .unwrap()
            .identifier
            .clone();
        store
            .write(&mut |tx| {
                tx.remove_owner(&cookie);
                tx.put_alias(anamnesis::domain::CustomerId::generate(), ghost);
                true
            })
            .unwrap();
        store.flush().unwrap();
    }
    let out = cli(&data, &["verify"]);
    assert!(!out.status.success());
    let report = text(&out);
    assert!(
        report.contains(&format!(
            "profile {b} holds a web_cookie identifier nobody owns"
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!("points to {}", "cus_")) && report.contains("not a live profile"),
        "{report}"
    );
    assert!(report.contains("2 problems"), "{report}");
    assert!(
        !report.contains("ck-v2"),
        "identifier values never print: {report}"
    );
}
