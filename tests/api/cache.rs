//! The Redis hot-profile cache and event bus, against a private redis-server
//! that the tests start, kill and restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::redis_server::{RedisCluster, RedisServer, TestRedis};
use crate::helpers::{body, id_of, spawn_app_with, TestApp};
use crate::live::EventClient;

async fn app_with(redis: &impl TestRedis) -> TestApp {
    app_with_layer(redis, true).await
}

/// With or without the in-process layer in front of Redis; no rate limit
/// (the loads below are one subject's).
async fn app_with_layer(redis: &impl TestRedis, local: bool) -> TestApp {
    let app = spawn_app_with(|s| {
        redis.configure(s);
        s.limits.rate_per_second = 0;
        if !local {
            s.cache.local_bytes = 0;
        }
    })
    .await;
    wait_for_redis(&app, "ok").await;
    app
}

/// Waits until `/readyz` reports Redis in `state`.
async fn wait_for_redis(app: &TestApp, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = app.get("/readyz").await;
        assert_eq!(resp.status(), 200, "ready whatever Redis does");
        let b = body(resp).await;
        if b["redis"] == state {
            assert_eq!(b["status"], "ready");
            return;
        }
        assert!(Instant::now() < deadline, "redis never {state}: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cache key of `id`'s card (the store's id is part of every key).
fn card_key(redis: &impl TestRedis, id: &str) -> String {
    let found = redis.keys(&format!("anamnesis:*:card:{id}"));
    let keys: Vec<&str> = found.lines().filter(|l| !l.is_empty()).collect();
    match keys.as_slice() {
        [one] => (*one).to_owned(),
        [] => format!("anamnesis:?:card:{id}"),
        more => panic!("one store, one key: {more:?}"),
    }
}

/// Reads `path` until its card is cached with a body, then swaps `from` for
/// `to` in the cached copy: a read that shows `to` was served by Redis (with
/// the in-process layer on, that layer answers first, and the read shows `from`).
async fn cache_and_tag(
    app: &TestApp,
    redis: &impl TestRedis,
    id: &str,
    path: &str,
    from: &str,
    to: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(app.get(path).await.status(), 200);
        let key = card_key(redis, id);
        let raw = redis.run(&["GET", &key]);
        let raw = raw.trim_end_matches('\n');
        let mut parts = raw.splitn(3, ':');
        let (g, s, rest) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
        if rest.contains(from) {
            let tagged = format!("{}:{}:{}", g.unwrap(), s.unwrap(), rest.replace(from, to));
            assert_eq!(redis.run(&["SET", &key, &tagged]).trim(), "OK");
            let seen = body(app.get(path).await).await.to_string();
            if app.settings.cache.local_bytes == 0 {
                assert!(seen.contains(to), "the tagged copy is served: {seen}");
            } else {
                assert!(seen.contains(from), "the in-process copy is served: {seen}");
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the card was never cached: {raw}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn new_customer(app: &TestApp, phone: &str, name: &str) -> String {
    id_of(
        &app.ingest(json!({
            "channel": "ivr",
            "identifiers": [{"type": "phone", "value": phone}],
            "traits": {"first_name": name}
        }))
        .await,
    )
}

async fn write(app: &TestApp, method: Method, path: &str, body: Value) -> u16 {
    app.request(method, path)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn hot_cards_come_from_redis_and_no_write_is_followed_by_a_stale_read() {
    no_stale_reads(false).await;
}

#[tokio::test]
async fn the_in_process_layer_never_serves_a_stale_read_either() {
    no_stale_reads(true).await;
}

/// The same over a Redis Cluster: a merge or an unmerge marks two
/// customers' entries, most often in two slots on two nodes.
#[tokio::test]
async fn a_redis_cluster_caches_and_no_write_is_followed_by_a_stale_read() {
    let cluster = RedisCluster::start();
    no_stale_reads_on(&cluster, false).await;
    // 256 buckets, each its own slot with its own generation, spread over
    // every node.
    let mut buckets = 0;
    for node in &cluster.nodes {
        let held = node
            .cli(&["KEYS", "anamnesis:*:generation"])
            .lines()
            .count();
        assert!(held > 30, "every node holds its share: {held}");
        buckets += held;
    }
    assert_eq!(buckets, 256);
}

async fn no_stale_reads(local: bool) {
    no_stale_reads_on(&RedisServer::start(), local).await;
}

async fn no_stale_reads_on(redis: &impl TestRedis, local: bool) {
    let app = app_with_layer(redis, local).await;
    let id = new_customer(&app, "+31611110001", "Anna").await;
    let context = format!("/v1/profiles/{id}/context");
    let profile = format!("/v1/profiles/{id}");

    // A hit after the first read.
    cache_and_tag(&app, redis, &id, &context, "Anna", "Cached").await;
    let b = body(app.get(&profile).await).await;
    let expected = if local { "Anna" } else { "Cached" };
    assert_eq!(
        b["traits"]["first_name"]["value"], expected,
        "profile reads share the entry"
    );

    // Each kind of write, then an immediate read: never the old copy.
    let steps: Vec<(&str, Method, String, Value, &str)> = vec![
        (
            "traits",
            Method::PATCH,
            format!("/v1/profiles/{id}/traits"),
            json!({"channel": "agent", "traits": {"first_name": "Bea"}}),
            "Bea",
        ),
        (
            "answers",
            Method::POST,
            format!("/v1/profiles/{id}/answers"),
            json!({"channel": "chat", "answers": [{"key": "reason", "value": "refund-42"}]}),
            "refund-42",
        ),
        (
            "consent",
            Method::PUT,
            format!("/v1/profiles/{id}/consents/marketing"),
            json!({"granted": true, "channel": "web"}),
            "\"marketing\"",
        ),
        (
            "signal",
            Method::POST,
            "/v1/signals".into(),
            json!({"channel": "web", "identifiers": [{"type": "phone", "value": "+31611110001"}],
                "traits": {"city": "Utrecht"}}),
            "Utrecht",
        ),
    ];
    for (what, method, path, payload, expect) in steps {
        cache_and_tag(&app, redis, &id, &context, "first_name", "first_nome").await;
        let status = write(&app, method, &path, payload).await;
        assert!((200..300).contains(&status), "{what}: {status}");
        for read in [&context, &profile] {
            let seen = body(app.get(read).await).await.to_string();
            assert!(
                !seen.contains("first_nome"),
                "stale read after {what}: {seen}"
            );
            // The card shows no consents; the profile shows everything.
            if read == &profile || what != "consent" {
                assert!(
                    seen.contains(expect),
                    "{what} not visible in {read}: {seen}"
                );
            }
        }
    }

    // Identifier lookups are cached, and follow ownership.
    let other = new_customer(&app, "+31611110002", "Carl").await;
    let by_phone = "/v1/context?type=phone&value=0611110002";
    for _ in 0..3 {
        let b = body(app.get(by_phone).await).await;
        assert_eq!(b["customer_id"], other.as_str());
    }
    assert_eq!(app.merge(&id, &other).await.status(), 200);
    let b = body(app.get(by_phone).await).await;
    assert_eq!(
        b["customer_id"],
        id.as_str(),
        "the phone moved with the merge"
    );
    let resp = app.get(&format!("/v1/profiles/{other}")).await;
    assert_eq!(resp.status(), 308, "the absorbed id redirects at once");

    let resp = app.unmerge(&id, &other).await;
    assert_eq!(resp.status(), 200);
    let b = body(app.get(by_phone).await).await;
    assert_eq!(
        b["customer_id"],
        other.as_str(),
        "and back with the unmerge"
    );
    let b = body(app.get(&format!("/v1/profiles/{other}/context")).await).await;
    assert_eq!(b["customer_id"], other.as_str());

    let resp = app
        .request(
            Method::DELETE,
            &format!("/v1/profiles/{other}/identifiers/phone/0611110002"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.get(by_phone).await.status(),
        404,
        "a removed identifier leads nowhere"
    );

    cache_and_tag(&app, redis, &id, &context, "first_name", "first_nome").await;
    assert_eq!(app.erase(&id).await.status(), 204);
    assert_eq!(
        app.get(&context).await.status(),
        404,
        "erased means gone from the cache too"
    );
    assert_eq!(app.get(&profile).await.status(), 404);
    assert_eq!(
        app.get("/v1/context?type=phone&value=0611110001")
            .await
            .status(),
        404
    );

    // No phone number appears in a key.
    let keys = redis.keys("*");
    assert!(!keys.contains("611110"), "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_load_costs_nothing_and_comes_back_by_itself() {
    killed_mid_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_load_with_the_in_process_layer() {
    killed_mid_load(true).await;
}

/// A Redis Cluster that loses a node (a third of the slots) does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_a_cluster_node_mid_load_costs_nothing_and_it_comes_back() {
    killed_mid_load_on(&mut RedisCluster::start(), false).await;
}

async fn killed_mid_load(local: bool) {
    killed_mid_load_on(&mut RedisServer::start(), local).await;
}

async fn killed_mid_load_on(redis: &mut impl TestRedis, local: bool) {
    let app = Arc::new(app_with_layer(redis, local).await);
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(new_customer(&app, &format!("+3161111020{n}"), "Anna").await);
    }
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    // (customer, answer value) acknowledged, in order per customer.
    let acknowledged = Arc::new(Mutex::new(Vec::<(usize, u64)>::new()));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));

    let writer = {
        let (app, ids, stop, acknowledged) =
            (app.clone(), ids.clone(), stop.clone(), acknowledged.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let who = (n % 10) as usize;
                let status = write(
                    &app,
                    Method::POST,
                    &format!("/v1/profiles/{}/answers", ids[who]),
                    json!({"channel": "chat", "answers": [{"key": "counter", "value": n}]}),
                )
                .await;
                assert_eq!(status, 200, "a write failed while Redis was away");
                acknowledged.lock().unwrap().push((who, n));
                n += 1;
            }
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (app, ids, stop, slowest, acknowledged) = (
                app.clone(),
                ids.clone(),
                stop.clone(),
                slowest.clone(),
                acknowledged.clone(),
            );
            tokio::spawn(async move {
                let mut n = r;
                while !stop.load(Ordering::SeqCst) {
                    let who = n % 10;
                    // Acknowledged before this read began: it must show.
                    let at_least = acknowledged
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|(w, _)| *w == who)
                        .map(|(_, v)| *v)
                        .max();
                    let started = Instant::now();
                    let resp = app.get(&format!("/v1/profiles/{}/context", ids[who])).await;
                    assert_eq!(resp.status(), 200, "a read failed while Redis was away");
                    let took = started.elapsed();
                    let seen = body(resp).await["answers"]["counter"]["value"].as_u64();
                    assert!(
                        seen >= at_least,
                        "a stale card: counter {seen:?} after {at_least:?} was acknowledged"
                    );
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                    n += 1;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(700)).await;
    // Off the runtime's threads: a cluster takes seconds to heal, and the
    // readers' timings must not include the harness's waits.
    tokio::task::block_in_place(|| redis.lose());
    wait_for_redis(&app, "degraded").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("anamnesis_cache_fallbacks_total"),
        "fallbacks are counted"
    );
    let during = acknowledged.lock().unwrap().len();
    tokio::task::block_in_place(|| redis.bring_back());
    wait_for_redis(&app, "ok").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    for r in readers {
        r.await.unwrap();
    }
    let written = acknowledged.lock().unwrap().clone();
    assert!(
        during > 0 && written.len() > during,
        "writes went on throughout"
    );

    // Nothing acknowledged is lost, nothing stale is served: every card shows
    // the last acknowledged answer of its customer, twice (the second from
    // the cache, refilled after the restart).
    for (who, id) in ids.iter().enumerate() {
        let Some(last) = written
            .iter()
            .filter(|(w, _)| *w == who)
            .map(|(_, n)| *n)
            .max()
        else {
            continue;
        };
        for _ in 0..2 {
            let b = body(app.get(&format!("/v1/profiles/{id}/context")).await).await;
            let answers = b["answers"].to_string();
            assert!(
                answers.contains(&format!("\"value\":{last}")),
                "{id}: want {last}, got {answers}"
            );
        }
    }
    // The hit ratio recovers: the cache serves again. (A write first: with
    // the in-process layer, a card it kept while Redis was away would
    // otherwise answer every read until it expires.)
    let status = write(
        &app,
        Method::PATCH,
        &format!("/v1/profiles/{}/traits", ids[0]),
        json!({"channel": "agent", "traits": {"city": "Delft"}}),
    )
    .await;
    assert_eq!(status, 200);
    cache_and_tag(
        &app,
        redis,
        &ids[0],
        &format!("/v1/profiles/{}/context", ids[0]),
        "Anna",
        "Cached",
    )
    .await;
    let slowest = *slowest.lock().unwrap();
    eprintln!(
        "slowest read while Redis died and came back (in-process layer {local}): {slowest:?}"
    );
    assert!(
        slowest < Duration::from_millis(500),
        "a read waited {slowest:?}"
    );
}

#[tokio::test]
async fn a_redis_restored_from_an_old_snapshot_serves_nothing_stale() {
    let mut redis = RedisServer::start();
    let app = app_with(&redis).await;
    let id = new_customer(&app, "+31611110301", "Anna").await;
    let context = format!("/v1/profiles/{id}/context");
    cache_and_tag(&app, &redis, &id, &context, "Anna", "Anna").await;
    // The snapshot holds the cached card as it is now.
    assert_eq!(redis.cli(&["SAVE"]).trim(), "OK");
    redis.kill();
    // Written while Redis is away: its marker cannot be written.
    rename(&app, &id, "Bea").await;
    // Back, with the old card in it.
    redis.restart();
    assert!(
        redis.cli(&["GET", &card_key(&redis, &id)]).contains("Anna"),
        "the old copy is back in Redis"
    );
    wait_for_redis(&app, "ok").await;
    reads_show(&app, &context, "Bea").await;
}

/// A Redis that restarts between two requests from a snapshot taken before
/// an acknowledged write (its marker lost, the old card back) serves
/// nothing stale: the next call fails on the dropped connection, and Redis
/// is used again only under a new generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_restarts_from_a_snapshot_between_requests_serves_nothing_stale() {
    restarted_from_a_snapshot(&mut RedisServer::start()).await;
}

/// The same for a cluster node (the one holding the card), which the
/// cluster client would reconnect to without a word if it retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_node_that_restarts_from_a_snapshot_serves_nothing_stale() {
    restarted_from_a_snapshot(&mut RedisCluster::start()).await;
}

async fn restarted_from_a_snapshot(redis: &mut impl TestRedis) {
    let app = app_with_layer(redis, false).await;
    let id = new_customer(&app, "+31611110311", "Anna").await;
    let context = format!("/v1/profiles/{id}/context");
    cache_and_tag(&app, redis, &id, &context, "Anna", "Anna").await;
    let key = card_key(redis, &id);
    tokio::task::block_in_place(|| redis.snapshot());
    rename(&app, &id, "Bea").await;
    assert!(
        !redis.run(&["GET", &key]).contains("Anna"),
        "the write marked the card"
    );
    tokio::task::block_in_place(|| redis.restart_holding(&key));
    assert!(
        redis.run(&["GET", &key]).contains("Anna"),
        "the old card is back in Redis"
    );
    reads_show(&app, &context, "Bea").await;
    wait_for_redis(&app, "ok").await;
    reads_show(&app, &context, "Bea").await;
}

/// A cluster whose primary fails over to its replica: the instance stops
/// using the cluster on the first failed call (the old primary's
/// connection, or a redirect to the new one), serves the store meanwhile,
/// and uses the cluster again, under new generations, once every slot
/// answers. The write made while the primary was gone is never hidden by
/// the replica's copy of the card.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_that_fails_over_to_a_replica_serves_nothing_stale() {
    let mut cluster = RedisCluster::with_replicas(1);
    let app = app_with_layer(&cluster, false).await;
    let id = new_customer(&app, "+31611110321", "Anna").await;
    let context = format!("/v1/profiles/{id}/context");
    cache_and_tag(&app, &cluster, &id, &context, "Anna", "Anna").await;
    let key = card_key(&cluster, &id);
    tokio::task::block_in_place(|| cluster.fail_over(&key));
    assert!(
        cluster.run(&["GET", &key]).contains("Anna"),
        "the replica holds the card as it was"
    );
    rename(&app, &id, "Bea").await;
    reads_show(&app, &context, "Bea").await;
    wait_for_redis(&app, "ok").await;
    reads_show(&app, &context, "Bea").await;
    // And the cluster caches again.
    cache_and_tag(&app, &cluster, &id, &context, "Bea", "Bea").await;
}

#[tokio::test]
async fn events_travel_between_instances_through_redis() {
    let redis = RedisServer::start();
    let a = app_with(&redis).await;
    let b = app_with(&redis).await;
    let on_b = new_customer(&b, "+31611110401", "Dora").await;
    let mut desk = EventClient::open(&b, &on_b, None).await;

    // What instance A publishes for its own writes reaches the bus...
    // Both instances listen on this server, and the listener.
    let text = created_on_the_bus(&a, "+31611110402", redis.port, 3).await;
    assert!(
        !text.contains("Emil") && !text.contains("611110402"),
        "no PII in created events: {text}"
    );

    // ...and what arrives on the bus reaches the streams of every instance.
    let message = bus_answer(&on_b, 999999, "from A");
    let published = redis.cli(&["PUBLISH", "anamnesis:events", &message]);
    assert_eq!(published.trim(), "2", "both instances listen");
    let got = desk.until("answer.captured", Duration::from_secs(5)).await;
    let event = got.last().unwrap();
    assert_eq!(event.id.as_deref(), Some("999999"));
    assert_eq!(event.data.as_ref().unwrap()["data"]["value"], "from A");
}

/// Creates a customer named Emil with `phone` through `app` while a
/// redis-cli listens on the bus at `port` (where `subscribers` listen in
/// all, the listener included), checks that the listener saw the
/// `profile.created` event, and returns what it printed.
async fn created_on_the_bus(app: &TestApp, phone: &str, port: u16, subscribers: u32) -> String {
    let mut listener = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "SUBSCRIBE", "anamnesis:events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_subscribers(port, subscribers).await;
    let created = new_customer(app, phone, "Emil").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = listener.kill();
    let out = listener.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&created) && text.contains("profile.created"),
        "{text}"
    );
    text
}

/// Until `at_least` subscribers (instances and a redis-cli just started)
/// listen on the node at `port`.
async fn wait_for_subscribers(port: u16, at_least: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &port.to_string(),
                "PUBSUB",
                "NUMSUB",
                "anamnesis:events",
            ])
            .output()
            .unwrap();
        let counts = String::from_utf8_lossy(&out.stdout).into_owned();
        let listening = counts
            .lines()
            .nth(1)
            .and_then(|n| n.trim().parse::<u32>().ok());
        if listening >= Some(at_least) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the listener never subscribed: {counts}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sets the first name of `id` (200 expected).
async fn rename(app: &TestApp, id: &str, name: &str) {
    let status = write(
        app,
        Method::PATCH,
        &format!("/v1/profiles/{id}/traits"),
        json!({"channel": "agent", "traits": {"first_name": name}}),
    )
    .await;
    assert_eq!(status, 200);
}

/// Three reads of the card at `path` in a row, each showing `name`.
async fn reads_show(app: &TestApp, path: &str, name: &str) {
    for _ in 0..3 {
        let b = body(app.get(path).await).await;
        assert_eq!(b["traits"]["first_name"], name, "{b}");
    }
}

/// An answer event as another instance sends it over the bus.
fn bus_answer(customer: &str, seq: u64, value: &str) -> String {
    json!({
        "origin": "another-instance",
        "events": [{"change": {"seq": seq, "at": "2026-11-22T10:00:00Z", "type": "answer.captured",
                               "customer_id": customer, "key": "reason"},
                    "data": {"answer": {"value": value, "question": null, "channel": "chat",
                                        "captured_at": "2026-11-22T10:00:00Z", "expires_at": null,
                                        "signal_id": null}}}]
    })
    .to_string()
}

/// Over a cluster, an event published through any node reaches every
/// instance, whichever node it subscribed through; an instance whose node
/// is lost subscribes through its next seed.
#[tokio::test]
async fn events_travel_between_instances_through_a_redis_cluster() {
    let mut cluster = RedisCluster::start();
    let a = app_with(&cluster).await;
    // B subscribes through the last node, then (when that is lost) the middle one.
    let mut seeds = cluster.seeds();
    seeds.reverse();
    let b = spawn_app_with(|s| {
        s.redis.cluster_nodes = seeds;
        s.redis.timeout_ms = 250;
        s.limits.rate_per_second = 0;
    })
    .await;
    wait_for_redis(&b, "ok").await;
    let on_b = new_customer(&b, "+31611110411", "Dora").await;
    let mut desk = EventClient::open(&b, &on_b, None).await;

    // A's own write goes out through the cluster: a subscriber on the
    // middle node, which neither instance subscribed through, sees it.
    // Neither instance subscribed through this node: the listener alone.
    created_on_the_bus(&a, "+31611110412", cluster.nodes[1].port, 1).await;

    // Published on the first node, received by B through the last.
    cluster.nodes[0].cli(&[
        "PUBLISH",
        "anamnesis:events",
        &bus_answer(&on_b, 999998, "one"),
    ]);
    let got = desk.until("answer.captured", Duration::from_secs(5)).await;
    assert_eq!(got.last().unwrap().id.as_deref(), Some("999998"));

    // B's node is lost; B subscribes through the next seed, and the bus
    // reaches it again once the cluster is whole.
    cluster.nodes[2].kill();
    wait_for_redis(&b, "degraded").await;
    cluster.nodes[2].restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        cluster.nodes[0].cli(&[
            "PUBLISH",
            "anamnesis:events",
            &bus_answer(&on_b, 999999, "two"),
        ]);
        if let Some(event) = desk.event(Duration::from_millis(300)).await {
            if event.id.as_deref() == Some("999999") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "B never heard the bus again");
    }
    wait_for_redis(&b, "ok").await;
}

#[tokio::test]
async fn instances_over_different_stores_never_read_each_others_entries() {
    let redis = RedisServer::start();
    let a = app_with(&redis).await;
    let b = app_with(&redis).await;
    let on_a = new_customer(&a, "+31611110501", "Anna").await;
    let on_b = new_customer(&b, "+31611110501", "Bert").await;
    for _ in 0..3 {
        for (app, me) in [(&a, &on_a), (&b, &on_b)] {
            let card = body(app.get("/v1/context?type=phone&value=0611110501").await).await;
            assert_eq!(card["customer_id"], me.as_str(), "{card}");
        }
    }
    for _ in 0..2 {
        assert_eq!(a.get(&format!("/v1/profiles/{on_b}")).await.status(), 404);
        assert_eq!(
            b.get(&format!("/v1/profiles/{on_a}/context"))
                .await
                .status(),
            404
        );
    }
}

/// `anamnesis_cache_requests_total{kind, result}` as /metrics shows it now
/// (the counter is process-wide: compare before and after).
async fn cache_count(app: &TestApp, kind: &str, result: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    let wanted = format!("anamnesis_cache_requests_total{{kind=\"{kind}\",result=\"{result}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn without_redis_the_in_process_layer_serves_hot_reads_and_forgets_every_write() {
    let app = spawn_app_with(|s| s.limits.rate_per_second = 0).await;
    let id = new_customer(&app, "+31611120001", "Anna").await;
    let context = format!("/v1/profiles/{id}/context");
    let by_phone = "/v1/context?type=phone&value=06 1112 0001";

    let (cards, owners) = (
        cache_count(&app, "card", "local").await,
        cache_count(&app, "owner", "local").await,
    );
    for _ in 0..5 {
        assert_eq!(
            body(app.get(&context).await).await["customer_id"],
            id.as_str()
        );
        assert_eq!(
            body(app.get(by_phone).await).await["customer_id"],
            id.as_str()
        );
    }
    // The first read of each fills the layer; the others are served from it
    // (reads by phone count a card hit too).
    assert!(cache_count(&app, "card", "local").await - cards >= 8.0);
    assert!(cache_count(&app, "owner", "local").await - owners >= 4.0);

    // Every kind of write is seen by the very next read.
    for (i, (method, path, payload, expect)) in [
        (
            Method::PATCH,
            format!("/v1/profiles/{id}/traits"),
            json!({"channel": "agent", "traits": {"first_name": "Bea"}}),
            "Bea",
        ),
        (
            Method::POST,
            format!("/v1/profiles/{id}/answers"),
            json!({"channel": "chat", "answers": [{"key": "reason", "value": "refund-42"}]}),
            "refund-42",
        ),
        (
            Method::POST,
            "/v1/signals".into(),
            json!({"channel": "web", "identifiers": [{"type": "phone", "value": "+31611120001"}],
                "traits": {"city": "Utrecht"}}),
            "Utrecht",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let status = write(&app, method, &path, payload).await;
        assert!((200..300).contains(&status), "write {i}: {status}");
        for read in [context.as_str(), by_phone] {
            let seen = body(app.get(read).await).await.to_string();
            assert!(
                seen.contains(expect),
                "write {i} not visible in {read}: {seen}"
            );
        }
    }

    // Lookups follow ownership through a merge and an unmerge.
    let other = new_customer(&app, "+31611120002", "Carl").await;
    let other_phone = "/v1/context?type=phone&value=0611120002";
    for _ in 0..3 {
        assert_eq!(
            body(app.get(other_phone).await).await["customer_id"],
            other.as_str()
        );
    }
    assert_eq!(app.merge(&id, &other).await.status(), 200);
    assert_eq!(
        body(app.get(other_phone).await).await["customer_id"],
        id.as_str()
    );
    assert_eq!(app.unmerge(&id, &other).await.status(), 200);
    assert_eq!(
        body(app.get(other_phone).await).await["customer_id"],
        other.as_str()
    );
}
