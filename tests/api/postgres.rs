//! The database backend itself: its schema migrations, and several instances
//! over one database. Ignored in the sled pass; `tests/run.sh` runs them in
//! the PostgreSQL pass (`--include-ignored`), where `ANAMNESIS_TEST_POSTGRES`
//! names the server.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anamnesis::auth::Scope;
use anamnesis::store::{copy, migrate, PgOptions, PgStore, SledStore, SCHEMA_VERSION};
use serde_json::{json, Value};

use crate::helpers::binary::{token_for, Binary};
use crate::helpers::redis_server::{RedisCluster, RedisServer, TestRedis};
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
    fleet_with(n, None).await
}

/// A fleet sharing one Redis too, when given.
async fn fleet_with(
    n: usize,
    redis: Option<&dyn TestRedis>,
) -> (tempfile::TempDir, Vec<Arc<TestApp>>) {
    let (dir, schema) = fresh_schema("fleet");
    migrate(options(&schema)).unwrap();
    let mut apps = Vec::new();
    for _ in 0..n {
        let schema = schema.clone();
        apps.push(Arc::new(
            spawn_app_with(move |s| {
                s.storage.postgres.schema = schema;
                if let Some(redis) = redis {
                    redis.configure(s);
                }
            })
            .await,
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

/// Three instances at once take signals that link overlapping people,
/// manual merges and then unmerges of them; every instance then agrees on
/// who is who, each identifier is on exactly one live profile, every
/// acknowledged signal's own trait is on exactly one, and every merged id
/// redirects to the profile that lists it. Nothing answered 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ANAMNESIS_TEST_POSTGRES (tests/run.sh sets it)"]
async fn signals_merges_and_unmerges_at_once_through_three_instances_stay_consistent() {
    const PEOPLE: usize = 8;
    const COOKIES: usize = 13;
    let (_dir, apps) = fleet(3).await;
    let device = |p: usize| format!("dev-{p}");
    for p in 0..PEOPLE {
        let resp = apps[p % 3]
            .post_signal(&json!({"channel": "web",
                "identifiers": [{"type": "device_id", "value": device(p)}]}))
            .await;
        assert_eq!(resp.status(), 201);
    }
    let owner = |app: Arc<TestApp>, kind: &'static str, value: String| async move {
        let resp = app.lookup(kind, &value).await;
        assert!(resp.status().as_u16() < 500, "lookup: {}", resp.status());
        body(resp).await["customer_id"].as_str().map(str::to_owned)
    };

    // Signals linking people through shared cookies, and manual merges.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let app = apps[i % 3].clone();
        tasks.spawn(async move {
            let resp = app
                .post_signal(&json!({"channel": "web", "signal_id": format!("sig-{i}"),
                    "identifiers": [{"type": "device_id", "value": format!("dev-{}", i % PEOPLE)},
                                    {"type": "web_cookie", "value": format!("ck-{}", i % COOKIES)}],
                    "traits": {format!("s{i}"): i}}))
                .await;
            let status = resp.status().as_u16();
            assert!(status < 500, "signal {i}: {status} {}", body(resp).await);
            (status < 300).then_some(i)
        });
    }
    for m in 0..12 {
        let app = apps[m % 3].clone();
        let (a, b) = (device(m % PEOPLE), device((m * 3 + 1) % PEOPLE));
        tasks.spawn(async move {
            let (Some(target), Some(source)) = (
                owner(app.clone(), "device_id", a).await,
                owner(app.clone(), "device_id", b).await,
            ) else {
                return None;
            };
            let status = app.merge(&target, &source).await.status().as_u16();
            assert!(status < 500, "merge {m}: {status}");
            None
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        acknowledged.extend(joined.unwrap());
    }
    assert!(
        acknowledged.len() >= 30,
        "most signals went in: {acknowledged:?}"
    );

    // Every merged id of every live profile, unmerged at once.
    let mut live = BTreeSet::new();
    for p in 0..PEOPLE {
        live.extend(owner(apps[0].clone(), "device_id", device(p)).await);
    }
    let mut unmerges = tokio::task::JoinSet::new();
    let mut n = 0;
    for id in &live {
        let profile = apps[0].profile(id).await;
        for merged in profile["merged_ids"].as_array().unwrap() {
            let (app, id, merged) = (
                apps[n % 3].clone(),
                id.clone(),
                merged.as_str().unwrap().to_owned(),
            );
            n += 1;
            unmerges.spawn(async move {
                let status = app.unmerge(&id, &merged).await.status().as_u16();
                assert!(status < 500, "unmerge: {status}");
            });
        }
    }
    assert!(n >= PEOPLE / 2, "people were merged: {n} merged ids");
    while let Some(joined) = unmerges.join_next().await {
        joined.unwrap();
    }

    // Every instance agrees on every identifier's owner...
    let identifiers: Vec<(&str, String)> = (0..PEOPLE)
        .map(|p| ("device_id", device(p)))
        .chain((0..COOKIES).map(|c| ("web_cookie", format!("ck-{c}"))))
        .collect();
    let mut owners = BTreeSet::new();
    for (kind, value) in &identifiers {
        let mut seen = BTreeSet::new();
        for app in &apps {
            seen.insert(owner(app.clone(), kind, value.clone()).await);
        }
        assert_eq!(seen.len(), 1, "{kind}:{value} owned by {seen:?}");
        if let Some(Some(id)) = seen.into_iter().next() {
            owners.insert(id);
        }
    }
    // ...each identifier is on exactly one live profile, each acknowledged
    // signal's trait too, and merged ids redirect to who lists them.
    let mut held = Vec::new();
    let mut traits = Vec::new();
    for id in &owners {
        let profile = apps[1].profile(id).await;
        assert_eq!(
            apps[2].profile(id).await,
            profile,
            "instances differ on {id}"
        );
        for i in profile["identifiers"].as_array().unwrap() {
            held.push(format!(
                "{}:{}",
                i["type"].as_str().unwrap(),
                i["value"].as_str().unwrap()
            ));
        }
        traits.extend(profile["traits"].as_object().unwrap().keys().cloned());
        for merged in profile["merged_ids"].as_array().unwrap() {
            let resp = apps[0].get_profile(merged.as_str().unwrap()).await;
            assert_eq!(resp.status(), 308, "{merged} redirects");
            let to = resp.headers()["location"].to_str().unwrap().to_owned();
            assert!(
                to.contains(id.as_str()),
                "{merged} redirects to {to}, not {id}"
            );
        }
    }
    let distinct: BTreeSet<&String> = held.iter().collect();
    assert_eq!(
        distinct.len(),
        held.len(),
        "an identifier on two profiles: {held:?}"
    );
    for (kind, value) in &identifiers {
        let wanted = format!("{kind}:{value}");
        let seen_in_a_signal = kind == &"device_id"
            || acknowledged
                .iter()
                .any(|i| format!("ck-{}", i % COOKIES) == *value);
        assert_eq!(distinct.contains(&wanted), seen_in_a_signal, "{wanted}");
    }
    for i in &acknowledged {
        let name = format!("s{i}");
        let on = traits.iter().filter(|t| **t == name).count();
        assert_eq!(on, 1, "signal {i}'s trait is on {on} profiles");
    }
}

/// A write acknowledged by one instance is what the next read through any
/// other instance shows, in-process layers included; and the change feed
/// of every instance lists it, in one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ANAMNESIS_TEST_POSTGRES (tests/run.sh sets it)"]
async fn a_write_through_one_instance_is_never_followed_by_a_stale_read_through_another() {
    let (_dir, apps) = fleet(3).await;
    writes_are_read_everywhere_at_once(&apps).await;
}

/// The same with the fleet's Redis caching cards and lookups.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ANAMNESIS_TEST_POSTGRES (tests/run.sh sets it)"]
async fn with_a_shared_redis_no_read_is_stale_either() {
    no_stale_read_through_a_fleet_sharing(&RedisServer::start()).await;
}

/// And with a Redis Cluster of three nodes as the fleet's cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ANAMNESIS_TEST_POSTGRES (tests/run.sh sets it)"]
async fn with_a_redis_cluster_no_read_is_stale_either() {
    no_stale_read_through_a_fleet_sharing(&RedisCluster::start()).await;
}

async fn no_stale_read_through_a_fleet_sharing(redis: &dyn TestRedis) {
    let (_dir, apps) = fleet_with(3, Some(redis)).await;
    writes_are_read_everywhere_at_once(&apps).await;
    // Reads went through Redis: it holds the cards they filled.
    let cards = redis.keys("anamnesis:*:card:*");
    assert!(!cards.trim().is_empty(), "Redis holds no card");
}

async fn writes_are_read_everywhere_at_once(apps: &[Arc<TestApp>]) {
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
    // Another instance's feed shows a write once its tail has read it from
    // the log (every `storage.postgres.poll_ms`).
    let mut feeds = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        let started = std::time::Instant::now();
        loop {
            let page: Value = body(app.get("/v1/changes?limit=1000").await).await;
            let seqs: Vec<u64> = page["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["seq"].as_u64().unwrap())
                .collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
            if seqs.len() == 31 {
                feeds.push(seqs);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "instance {i}: one change per write: {page}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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

/// A pilot on the embedded store moves to the database: `migrate-store`
/// copies everything and verifies the counts, and the service on the
/// database answers exactly as it did on sled, then goes on writing after
/// the copied positions. A copy stopped part-way goes on where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ANAMNESIS_TEST_POSTGRES (tests/run.sh sets it)"]
async fn migrate_store_moves_a_pilot_into_the_database_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let admin = token_for("migrate-test", &[Scope::Admin]);
    let on_sled = [("ANAMNESIS__STORAGE__BACKEND", "sled")];
    let pilot = Binary::start(dir.path(), &on_sled);
    let mut ids = BTreeSet::new();
    for i in 0..12 {
        let signal = json!({
            "signal_id": format!("pilot-{i}"), "channel": if i % 2 == 0 { "ivr" } else { "chat" },
            "identifiers": [{"type": "phone", "value": format!("06 2222 33{:02}", i / 2)},
                            {"type": "web_cookie", "value": format!("ck-{i}")}],
            "traits": {"n": i},
            "answers": [{"key": "reason_for_contact", "value": format!("r{i}")}],
            "event": {"type": "call_started", "episode": {"id": format!("ep-{}", i / 2), "status": "open"}}
        });
        ids.insert(pilot.ingest(&admin, &signal).await);
    }
    assert_eq!(ids.len(), 6, "two signals per person");
    let read_all = |server: &Binary| {
        let ids = ids.clone();
        let admin = admin.clone();
        let base = server.base.clone();
        async move {
            let client = reqwest::Client::new();
            let mut out = Vec::new();
            for id in &ids {
                for path in [
                    format!("/v1/profiles/{id}"),
                    format!("/v1/profiles/{id}/timeline"),
                    format!("/v1/profiles/{id}/episodes"),
                    format!("/v1/profiles/{id}/history"),
                ] {
                    let resp = client
                        .get(format!("{base}{path}"))
                        .bearer_auth(&admin)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200, "{path}");
                    out.push(resp.json::<Value>().await.unwrap());
                }
            }
            let feed = client
                .get(format!("{base}/v1/changes?limit=1000"))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap();
            out.push(feed.json::<Value>().await.unwrap());
            out
        }
    };
    let before = read_all(&pilot).await;
    pilot.stop().await;

    // The command, in batches of 7 records.
    let (_schema_dir, schema) = fresh_schema("moved");
    let out = Command::new(env!("CARGO_BIN_EXE_anamnesis"))
        .args(["migrate-store", "--from"])
        .arg(format!("sled:{}", dir.path().display()))
        .args(["--to", &url(), "--schema", &schema, "--batch", "7"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("verified"), "{said}");

    let moved = Binary::start(
        dir.path(),
        &[
            ("ANAMNESIS__STORAGE__BACKEND", "postgres"),
            ("ANAMNESIS__STORAGE__POSTGRES__SCHEMA", schema.as_str()),
        ],
    );
    let after = read_all(&moved).await;
    assert_eq!(
        before, after,
        "the database answers as the embedded store did"
    );
    let last_seq = before.last().unwrap()["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    let one = ids.iter().next().unwrap();
    let resp = moved
        .request(
            &admin,
            reqwest::Method::POST,
            &format!("/v1/profiles/{one}/answers"),
        )
        .json(&json!({"channel": "chat", "answers": [{"key": "order_number", "value": "A-1"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let feed: Value = body(
        moved
            .get(&admin, &format!("/v1/changes?after={last_seq}"))
            .await,
    )
    .await;
    assert!(
        feed["changes"].as_array().is_some_and(|c| !c.is_empty()),
        "new changes come after the copied ones: {feed}"
    );
    moved.stop().await;

    // Stopped after two batches, then run again: the same records.
    let source = SledStore::open(&dir.path().join("db")).unwrap();
    let (_again_dir, again) = fresh_schema("resumed");
    migrate(options(&again)).unwrap();
    let target = PgStore::open(options(&again)).unwrap();
    let batches = std::cell::Cell::new(0);
    let stopped = copy::sled_to_postgres(&source, &target, 5, 0, &mut |_| {}, &|| {
        batches.set(batches.get() + 1);
        batches.get() > 2
    })
    .unwrap();
    assert!(stopped.is_none(), "stopped between batches");
    let refused = PgStore::open(options(&again))
        .err()
        .expect("half a store is refused");
    assert!(refused.to_string().contains("unfinished"), "{refused}");
    let report = copy::sled_to_postgres(&source, &target, 5, 0, &mut |_| {}, &|| false)
        .unwrap()
        .expect("finished");
    assert!(report.resumed);
    assert!(report.matches(), "{report:?}");
    let total: u64 = report.source.iter().map(|k| k.records).sum();
    assert_eq!(
        report.copied,
        total - 10,
        "the first two batches were not copied again"
    );
}

/// A private PostgreSQL server of one test, stopped when dropped.
struct OwnServer {
    dir: tempfile::TempDir,
    url: String,
}

impl OwnServer {
    fn start() -> OwnServer {
        let dir = tempfile::tempdir().unwrap();
        let url = OwnServer::run(dir.path(), None);
        OwnServer { dir, url }
    }

    /// Starts the cluster in `dir` (on `port`, else a free one); its URL.
    fn run(dir: &std::path::Path, port: Option<&str>) -> String {
        // The server runs as the postgres user when the test is root.
        let mut perms = std::fs::metadata(dir).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(dir, perms).unwrap();
        let mut command = Command::new("bash");
        command
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/tools/postgres.sh"
            ))
            .arg("start")
            .arg(dir.join("data"))
            // Stopped the hard way (`-m immediate`): what it committed must
            // survive, as on a real server.
            .env("PG_DURABLE", "1");
        if let Some(port) = port {
            command.env("PG_PORT", port);
        }
        let out = command.output().expect("tests/tools/postgres.sh runs");
        assert!(
            out.status.success(),
            "starting a private PostgreSQL failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn stop(&self) {
        let status = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/tools/postgres.sh"
            ))
            .arg("stop")
            .arg(self.dir.path().join("data"))
            .status()
            .unwrap();
        assert!(status.success(), "stopping the private PostgreSQL failed");
    }

    /// Starts it again at the same address.
    fn restart(&self) {
        let port = self
            .url
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let url = OwnServer::run(self.dir.path(), Some(port));
        assert_eq!(url, self.url);
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/tools/postgres.sh"
            ))
            .arg("stop")
            .arg(self.dir.path().join("data"))
            .status();
    }
}

/// The database goes away under a running instance: `/readyz` says so, with
/// the reason, and writes are refused; once it is back the instance
/// reconnects by itself and is ready, with what it acknowledged before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL installed (tests/run.sh's PostgreSQL pass)"]
async fn readiness_follows_the_database_going_away_and_coming_back() {
    let server = OwnServer::start();
    let schema = "outage".to_owned();
    migrate(PgOptions {
        url: server.url.clone(),
        schema: schema.clone(),
        pool_size: 2,
        statement_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap();
    let url = server.url.clone();
    let app = spawn_app_with(move |s| {
        s.storage.backend = anamnesis::config::Backend::Postgres;
        s.storage.postgres.url = Some(url);
        s.storage.postgres.schema = schema;
        s.storage.postgres.connect_timeout_ms = 1000;
    })
    .await;
    let readyz = || async {
        let resp = app
            .client
            .get(format!("{}/readyz", app.address))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), body(resp).await)
    };
    let signal = |i: usize| {
        json!({"signal_id": format!("outage-{i}"), "channel": "web",
               "identifiers": [{"type": "account_id", "value": format!("O-{i}")}],
               "traits": {"n": i}})
    };
    let before = app.ingest(signal(0)).await;
    assert_eq!(readyz().await.0, 200);

    server.stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let down = loop {
        let (status, ready) = readyz().await;
        if status == 503 {
            break ready;
        }
        assert!(std::time::Instant::now() < deadline, "still ready: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(down["store"], "unavailable", "{down}");
    assert!(
        down["reason"]
            .as_str()
            .is_some_and(|r| r.contains("database")),
        "the reason names the database: {down}"
    );
    assert_eq!(app.post_signal(&signal(1)).await.status(), 503);

    server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, ready) = readyz().await;
        let write = app.post_signal(&signal(2)).await.status();
        if status == 200 && write == 201 {
            assert!(ready.get("reason").is_none(), "{ready}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not back by itself: {status} {ready}, a write {write}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let id = crate::helpers::id_of(&before);
    assert_eq!(app.profile(&id).await["traits"]["n"]["value"], 0);
}
