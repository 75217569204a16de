//! The database backend itself: its schema migrations, and several instances
//! over one database. Ignored in the sled pass; `tests/run.sh` runs them in
//! the PostgreSQL pass (`--include-ignored`), where `ANAMNESIS_TEST_POSTGRES`
//! names the server.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anamnesis::store::{migrate, PgOptions, PgStore, SCHEMA_VERSION};
use serde_json::{json, Value};

use crate::helpers::{body, schema_for, spawn_app_with, TestApp, TEST_POSTGRES};
use crate::live::EventClient;

const NEEDS_PG: &str = "needs ANAMNESIS_TEST_POSTGRES (tests/run.sh sets it)";

fn url() -> String {
    std::env::var(TEST_POSTGRES).expect(NEEDS_PG)
}

fn options(schema: &str) -> PgOptions {
    PgOptions {
        url: url(),
        schema: schema.to_owned(),
        pool_size: 2,
        statement_timeout: std::time::Duration::from_secs(5),
        connect_timeout: std::time::Duration::from_secs(2),
    }
}

fn fresh_schema(name: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("{}_{name}", schema_for(dir.path()));
    (dir, schema)
}

/// `n` instances over one database schema, as a fleet behind a load balancer.
async fn fleet(n: usize) -> (tempfile::TempDir, Vec<Arc<TestApp>>) {
    let (dir, schema) = fresh_schema("fleet");
    migrate(options(&schema)).unwrap();
    let mut apps = Vec::new();
    for _ in 0..n {
        let schema = schema.clone();
        apps.push(Arc::new(
            spawn_app_with(move |s| s.storage.postgres.schema = schema).await,
        ));
    }
    (dir, apps)
}

#[test]
#[ignore = "needs ANAMNESIS_TEST_POSTGRES (tests/run.sh sets it)"]
fn migrations_are_versioned_and_safe_to_run_from_several_instances_at_once() {
    let (_dir, schema) = fresh_schema("migrate");
    let refused = PgStore::open(options(&schema))
        .err()
        .expect("no schema yet");
    assert!(
        refused.to_string().contains("run `anamnesis migrate`"),
        "{refused}"
    );
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let options = options(&schema);
            std::thread::spawn(move || migrate(options))
        })
        .collect();
    let applied: Vec<_> = runs
        .into_iter()
        .flat_map(|r| r.join().unwrap().expect("every concurrent run succeeds"))
        .collect();
    assert_eq!(
        applied.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        (1..=SCHEMA_VERSION).collect::<Vec<_>>(),
        "each migration applied exactly once"
    );
    PgStore::open(options(&schema)).expect("the migrated schema opens");

    // The command says so, and changes nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_anamnesis"))
        .arg("migrate")
        .env("ANAMNESIS__STORAGE__BACKEND", "postgres")
        .env("ANAMNESIS__STORAGE__POSTGRES__URL", url())
        .env("ANAMNESIS__STORAGE__POSTGRES__SCHEMA", &schema)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("already current"), "{said}");
}

#[test]
#[ignore = "needs ANAMNESIS_TEST_POSTGRES (tests/run.sh sets it)"]
fn a_schema_newer_than_the_build_is_refused() {
    let (_dir, schema) = fresh_schema("newer");
    migrate(options(&schema)).unwrap();
    let out = Command::new("psql")
        .arg(url())
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!(
            "INSERT INTO \"{schema}\".schema_version (version, description) VALUES ({}, 'from the future')",
            SCHEMA_VERSION + 1
        ))
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = PgStore::open(options(&schema)).err().expect("refused");
    assert!(
        refused.to_string().contains("newer than this build"),
        "{refused}"
    );
}

/// The race of the concurrency suite, across instances: 48 signals about
/// one new person, spread over three instances, make one profile with
/// every trait, answer and interaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ANAMNESIS_TEST_POSTGRES (tests/run.sh sets it)"]
async fn signals_about_one_new_person_through_three_instances_make_one_profile() {
    let (_dir, apps) = fleet(3).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..48 {
        let app = apps[i % 3].clone();
        tasks.spawn(async move {
            let phone = if i % 2 == 0 {
                "06 1234 5678"
            } else {
                "+31612345678"
            };
            let resp = app
                .post_signal(&json!({
                    "channel": "web",
                    "identifiers": [{"type": "phone", "value": phone},
                                    {"type": "web_cookie", "value": format!("ck-{i}")}],
                    "traits": {format!("t{i}"): i},
                    "answers": [{"key": format!("q{i}"), "value": i}],
                    "event": {"type": "touch"}
                }))
                .await;
            let status = resp.status().as_u16();
            (status, body(resp).await)
        });
    }
    let mut ids = BTreeSet::new();
    let mut created = 0;
    while let Some(joined) = tasks.join_next().await {
        let (status, result) = joined.unwrap();
        assert!(status == 200 || status == 201, "{status}: {result}");
        created += usize::from(status == 201);
        ids.insert(result["customer_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one person, one profile: {ids:?}");
    assert_eq!(created, 1, "exactly one signal created the profile");
    let id = ids.into_iter().next().unwrap();
    // Every instance reads the same, complete profile at once.
    for app in &apps {
        let p = app.profile(&id).await;
        assert_eq!(p["version"], 48, "every signal applied once");
        assert_eq!(p["traits"].as_object().unwrap().len(), 48, "no trait lost");
        assert_eq!(
            p["answers"].as_object().unwrap().len(),
            48,
            "no answer lost"
        );
        let t = body(app.timeline(&id, &[("limit", "200")]).await).await;
        assert_eq!(t["interactions"].as_array().unwrap().len(), 48);
    }
}

/// A write acknowledged by one instance is what the next read through any
/// other instance shows, in-process layers included; and the change feed
/// of every instance lists it, in one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ANAMNESIS_TEST_POSTGRES (tests/run.sh sets it)"]
async fn a_write_through_one_instance_is_never_followed_by_a_stale_read_through_another() {
    let (_dir, apps) = fleet(3).await;
    let first = apps[0]
        .ingest(
            json!({"channel": "agent", "identifiers": [{"type": "account_id", "value": "C-9"}],
                       "traits": {"n": 0}}),
        )
        .await;
    let id = first["customer_id"].as_str().unwrap().to_owned();
    for n in 1..=30 {
        let writer = &apps[n % 3];
        let resp = writer
            .patch_traits(&id, &json!({"channel": "agent", "traits": {"n": n}}))
            .await;
        assert_eq!(resp.status(), 200, "{}", body(resp).await);
        for (i, reader) in apps.iter().enumerate() {
            // Warm every layer with the current version, then check it moved.
            let card: Value = body(reader.context(&id).await).await;
            assert_eq!(card["traits"]["n"], n, "instance {i} after write {n}");
            let profile: Value = reader.profile(&id).await;
            assert_eq!(
                profile["traits"]["n"]["value"], n,
                "instance {i} after write {n}"
            );
        }
    }
    let mut feeds = Vec::new();
    for app in &apps {
        let page: Value = body(app.get("/v1/changes?limit=1000").await).await;
        let seqs: Vec<u64> = page["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["seq"].as_u64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(seqs.len(), 31, "one change per write: {page}");
        feeds.push(seqs);
    }
    assert!(feeds.windows(2).all(|w| w[0] == w[1]), "{feeds:?}");
}

/// A desk's event stream on one instance shows what a chatbot posts through
/// another, in log order, with the answer itself; a second desk that
/// resumes after the first event misses nothing and repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ANAMNESIS_TEST_POSTGRES (tests/run.sh sets it)"]
async fn a_stream_on_one_instance_shows_writes_through_the_others_in_order() {
    let (_dir, apps) = fleet(3).await;
    let first = apps[0]
        .ingest(
            json!({"channel": "ivr", "identifiers": [{"type": "phone", "value": "0611112222"}]}),
        )
        .await;
    let id = first["customer_id"].as_str().unwrap().to_owned();
    let mut desk = EventClient::open(&apps[1], &id, None).await;
    for (n, app) in apps.iter().enumerate() {
        let resp = app
            .post_answers(
                &id,
                &json!({"channel": "chatbot", "answers": [{"key": format!("q{n}"), "value": n}]}),
            )
            .await;
        assert_eq!(resp.status(), 200, "{}", body(resp).await);
    }
    let mut seen = Vec::new();
    let mut first_id = None;
    while seen.len() < 3 {
        let event = desk
            .event(Duration::from_secs(10))
            .await
            .expect("an event in time");
        if event.event.as_deref() == Some("answer.captured") {
            let data = event.data.unwrap();
            first_id.get_or_insert(event.id.clone().unwrap());
            seen.push((data["key"].clone(), data["data"]["value"].clone()));
        }
    }
    assert_eq!(
        seen,
        (0..3)
            .map(|n| (json!(format!("q{n}")), json!(n)))
            .collect::<Vec<_>>(),
        "every instance's answer, in order, with its value"
    );
    let mut resumed = EventClient::open(&apps[2], &id, first_id.as_deref()).await;
    let mut keys = Vec::new();
    while keys.len() < 2 {
        let event = resumed
            .event(Duration::from_secs(10))
            .await
            .expect("an event in time");
        if event.event.as_deref() == Some("answer.captured") {
            keys.push(event.data.unwrap()["key"].clone());
        }
    }
    assert_eq!(keys, [json!("q1"), json!("q2")]);
}
