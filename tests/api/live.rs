//! Live context: the event stream of a profile (Server-Sent Events) and the
//! change feed, against the real server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::{Method, Response};
use serde_json::{json, Value};

use crate::helpers::{assert_error, body, id_of, spawn_app, spawn_app_with, TestApp};

/// One block of an event stream.
#[derive(Debug, Clone, Default)]
pub struct Sse {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<Value>,
    pub comments: Vec<String>,
}

/// A reader of an event stream.
pub struct EventClient {
    resp: Response,
    buf: String,
    pub ended: bool,
}

impl EventClient {
    pub async fn open(app: &TestApp, id: &str, last_event_id: Option<&str>) -> EventClient {
        let mut request = app.request(Method::GET, &format!("/v1/profiles/{id}/events"));
        if let Some(last) = last_event_id {
            request = request.header("Last-Event-ID", last);
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 200, "stream of {id}");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        EventClient {
            resp,
            buf: String::new(),
            ended: false,
        }
    }

    /// The next block (an event or comments only), or `None` when nothing
    /// came within `wait` or the stream ended.
    pub async fn block(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut sse = Sse::default();
                for line in raw.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        sse.comments.push(c.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        sse.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        sse.event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        sse.data = Some(serde_json::from_str(v).expect("event data is JSON"));
                    }
                }
                return Some(sse);
            }
            if self.ended {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(_) => self.ended = true,
                Err(_) => return None,
            }
        }
    }

    /// The next event (skipping comment-only blocks).
    pub async fn event(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let block = self.block(left).await?;
            if block.event.is_some() {
                return Some(block);
            }
        }
    }

    /// Events until one of `kind` arrives (which is included).
    pub async fn until(&mut self, kind: &str, wait: Duration) -> Vec<Sse> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(e) = self.event(left).await else {
                panic!("no {kind} within {wait:?}; saw {seen:#?}");
            };
            let done = e.event.as_deref() == Some(kind);
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

const WAIT: Duration = Duration::from_secs(5);

/// The positions of `id`'s changes in a page of the change feed.
fn positions_of(page: &Value, id: &str) -> Vec<u64> {
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["customer_id"] == id)
        .map(|c| c["seq"].as_u64().unwrap())
        .collect()
}

fn kinds(events: &[Sse]) -> Vec<String> {
    events.iter().filter_map(|e| e.event.clone()).collect()
}

async fn new_customer(app: &TestApp, phone: &str) -> String {
    id_of(
        &app.ingest(json!({
            "channel": "ivr",
            "identifiers": [{"type": "phone", "value": phone}],
            "traits": {"first_name": "Anna"}
        }))
        .await,
    )
}

async fn post_answer(app: &TestApp, id: &str, key: &str, value: &str) {
    let resp = app
        .request(Method::POST, &format!("/v1/profiles/{id}/answers"))
        .json(&json!({"channel": "chat", "answers": [{"key": key, "value": value}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn an_answer_captured_elsewhere_reaches_the_desk_within_100_ms() {
    let app = spawn_app().await;
    let id = new_customer(&app, "+31612345001").await;
    let mut desk = EventClient::open(&app, &id, None).await;
    let hello = desk.block(WAIT).await.expect("the stream opens at once");
    assert!(hello.comments.contains(&"connected".to_owned()));

    // How long after the chatbot's write is acknowledged the desk holds the
    // event (the event goes out before the acknowledgement, so usually
    // nothing); the write's own time is the store's (see benches/).
    let mut worst = Duration::ZERO;
    let mut slowest_total = Duration::ZERO;
    for round in 0..5 {
        let started = Instant::now();
        let value = format!("delivery {round}");
        let (acked, (seen, events)) = tokio::join!(
            async {
                post_answer(&app, &id, "reason_for_contact", &value).await;
                Instant::now()
            },
            async {
                let events = desk.until("answer.captured", WAIT).await;
                (Instant::now(), events)
            }
        );
        worst = worst.max(seen.saturating_duration_since(acked));
        slowest_total = slowest_total.max(seen - started);
        let answer = events.last().unwrap();
        let data = answer.data.as_ref().unwrap();
        assert_eq!(data["customer_id"], id.as_str());
        assert_eq!(data["key"], "reason_for_contact");
        assert_eq!(data["data"]["value"], value);
        assert_eq!(data["data"]["channel"], "chat");
        // The write's version follows on the same stream.
        let updated = desk.until("profile.updated", WAIT).await;
        let version = updated.last().unwrap().data.as_ref().unwrap()["version"]
            .as_u64()
            .unwrap();
        let now = app.profile(&id).await;
        assert_eq!(now["version"].as_u64().unwrap(), version);
    }
    eprintln!("event after the acknowledgement: at most {worst:?}; from sending the write: at most {slowest_total:?}");
    assert!(worst < Duration::from_millis(100), "took {worst:?}");
}

#[tokio::test]
async fn every_kind_of_change_is_streamed_with_ids_in_order() {
    let app = spawn_app().await;
    let anna = new_customer(&app, "+31612345002").await;
    let other = new_customer(&app, "+31612345003").await;
    let mut desk = EventClient::open(&app, &anna, None).await;
    let mut old_desk = EventClient::open(&app, &other, None).await;

    app.ingest(json!({
        "channel": "web",
        "identifiers": [{"type": "phone", "value": "+31612345002"}],
        "event": {"type": "order_placed", "summary": "Ordered a bike",
                  "episode": {"id": "order-1", "title": "Bike order", "status": "open"}}
    }))
    .await;
    let seen = desk.until("profile.updated", WAIT).await;
    let kinds_seen = kinds(&seen);
    assert!(
        kinds_seen.contains(&"episode.updated".to_owned()),
        "{kinds_seen:?}"
    );
    assert!(
        kinds_seen.contains(&"interaction.added".to_owned()),
        "{kinds_seen:?}"
    );
    let interaction = seen
        .iter()
        .find(|e| e.event.as_deref() == Some("interaction.added"))
        .unwrap();
    assert_eq!(
        interaction.data.as_ref().unwrap()["data"]["summary"],
        "Ordered a bike"
    );

    // A merge: both streams hear it, naming the survivor; the absorbed
    // profile's stream then carries the survivor's events.
    let resp = app.merge(&anna, &other).await;
    assert_eq!(resp.status(), 200);
    let on_survivor = desk.until("profile.merged", WAIT).await;
    let merged = on_survivor.last().unwrap().data.clone().unwrap();
    assert_eq!(merged["survivor_id"], anna.as_str());
    assert_eq!(merged["merged_id"], other.as_str());
    let on_absorbed = old_desk.until("profile.merged", WAIT).await;
    let merged = on_absorbed.last().unwrap().data.clone().unwrap();
    assert_eq!(merged["customer_id"], other.as_str());
    assert_eq!(merged["survivor_id"], anna.as_str());
    post_answer(&app, &anna, "mood", "happy").await;
    let followed = old_desk.until("answer.captured", WAIT).await;
    assert_eq!(
        followed.last().unwrap().data.as_ref().unwrap()["customer_id"],
        anna.as_str()
    );

    let resp = app.unmerge(&anna, &other).await;
    assert_eq!(resp.status(), 200);
    let unmerged = desk.until("profile.unmerged", WAIT).await;
    assert_eq!(
        unmerged.last().unwrap().data.as_ref().unwrap()["merged_id"],
        other.as_str()
    );

    let resp = app.erase(&anna).await;
    assert_eq!(resp.status(), 204);
    let last = desk.until("profile.erased", WAIT).await;
    assert_eq!(
        last.last().unwrap().data.as_ref().unwrap()["customer_id"],
        anna.as_str()
    );
    assert!(
        desk.event(WAIT).await.is_none(),
        "the stream ends after an erasure"
    );
    assert!(desk.ended);

    // Every event id is a position that only grows.
    let mut ids = Vec::new();
    let mut replay = EventClient::open(&app, &other, Some("0")).await;
    while let Some(e) = replay.event(Duration::from_millis(500)).await {
        ids.push(e.id.unwrap().parse::<u64>().unwrap());
    }
    assert!(ids.len() >= 3, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

#[tokio::test]
async fn last_event_id_resumes_without_gaps() {
    let app = spawn_app().await;
    let id = new_customer(&app, "+31612345004").await;
    let mut desk = EventClient::open(&app, &id, None).await;
    post_answer(&app, &id, "step", "one").await;
    let first = desk.until("profile.updated", WAIT).await;
    let last_id = first.last().unwrap().id.clone().unwrap();
    drop(desk);

    // Missed while away.
    for step in ["two", "three", "four"] {
        post_answer(&app, &id, "step", step).await;
    }
    let mut back = EventClient::open(&app, &id, Some(&last_id)).await;
    let mut values = Vec::new();
    let mut ids = Vec::new();
    while let Some(e) = back.event(Duration::from_millis(700)).await {
        ids.push(e.id.clone().unwrap().parse::<u64>().unwrap());
        if e.event.as_deref() == Some("answer.captured") {
            values.push(e.data.unwrap()["key"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(values.len(), 3, "each missed answer once: {ids:?}");
    assert!(ids[0] > last_id.parse::<u64>().unwrap());
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    // The same ids, in the same order, as the change feed holds for it.
    let feed = body(
        app.get(&format!("/v1/changes?after={last_id}&limit=1000"))
            .await,
    )
    .await;
    let feed_ids = positions_of(&feed, &id);
    assert_eq!(ids, feed_ids);

    // And then live again, on the resumed stream.
    post_answer(&app, &id, "step", "five").await;
    let live = back.until("answer.captured", WAIT).await;
    assert!(
        live.last()
            .unwrap()
            .id
            .as_ref()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > *ids.last().unwrap()
    );
}

#[tokio::test]
async fn idle_streams_get_heartbeats() {
    let app = spawn_app_with(|s| s.events.heartbeat_secs = 1).await;
    let id = new_customer(&app, "+31612345005").await;
    let mut desk = EventClient::open(&app, &id, None).await;
    desk.block(WAIT).await.expect("connected");
    let started = Instant::now();
    let beat = desk
        .block(Duration::from_secs(3))
        .await
        .expect("a heartbeat");
    assert_eq!(beat.comments, vec!["heartbeat".to_owned()]);
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn streams_refuse_bad_requests_clearly() {
    let app = spawn_app().await;
    let id = new_customer(&app, "+31612345006").await;
    let resp = app
        .get("/v1/profiles/cus_01HZX3M4Q7R8S9T0V1W2X3Y4Z5/events")
        .await;
    assert_error(resp, 404, "profile_not_found").await;
    let resp = app.get("/v1/profiles/nope/events").await;
    assert_error(resp, 400, "invalid_customer_id").await;
    let resp = app
        .request(Method::GET, &format!("/v1/profiles/{id}/events"))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "invalid_cursor").await;
    let writer = app.token(&["signals:write"], None);
    let resp = app
        .get_as(&writer, &format!("/v1/profiles/{id}/events"))
        .await;
    assert_error(resp, 403, "insufficient_scope").await;
}

#[tokio::test]
async fn a_stuck_consumer_is_dropped_without_slowing_anyone() {
    // Room for one batch's events (an interaction and an update per signal),
    // so that only a consumer that stops reading falls behind.
    // One writer sends 4,000 signals as fast as it can: no signal budget.
    let app = spawn_app_with(|s| {
        s.events.buffer = 600;
        s.limits.signals_per_second = 0;
    })
    .await;
    let id = new_customer(&app, "+31612345007").await;
    // Opened, then never read while the writes go on.
    let mut stuck = EventClient::open(&app, &id, None).await;
    let mut reader = EventClient::open(&app, &id, None).await;
    let reading = tokio::spawn(async move {
        let mut answers = 0;
        while let Some(e) = reader.event(Duration::from_secs(20)).await {
            if e.event.as_deref() == Some("interaction.added") {
                answers += 1;
                if answers == 4000 {
                    break;
                }
            }
        }
        answers
    });
    let filler = "x".repeat(3000);
    let started = Instant::now();
    for batch in 0..20 {
        let signals: Vec<Value> = (0..200)
            .map(|i| {
                json!({
                    "channel": "web",
                    "identifiers": [{"type": "phone", "value": "+31612345007"}],
                    "event": {"type": "page_viewed", "properties": {"n": batch * 200 + i, "blob": filler}}
                })
            })
            .collect();
        let resp = app.post_batch(signals).await;
        assert_eq!(resp.status(), 200);
    }
    let writing = started.elapsed();
    assert_eq!(
        reading.await.unwrap(),
        4000,
        "the reading stream got every interaction"
    );

    // The stuck one gets what was queued, then a last event saying where to resume.
    let mut last = None;
    while let Some(e) = stuck.event(Duration::from_secs(5)).await {
        last = Some(e);
    }
    let last = last.expect("events, then the end");
    assert_eq!(last.event.as_deref(), Some("stream.dropped"), "{last:?}");
    let data = last.data.unwrap();
    assert_eq!(data["reason"], "slow_consumer");
    let resume = data["resume_after"].as_str().unwrap().to_owned();
    // Resuming from there delivers the rest.
    let mut again = EventClient::open(&app, &id, Some(&resume)).await;
    let first = again.event(WAIT).await.expect("the rest");
    assert!(first.id.unwrap().parse::<u64>().unwrap() > resume.parse::<u64>().unwrap());
    eprintln!("4000 interactions written in {writing:?} with a stuck stream open");
}

/// Replays the whole feed, a page at a time.
async fn replay_feed(app: &TestApp, page: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/changes?after={c}&limit={page}"),
            None => format!("/v1/changes?limit={page}"),
        };
        let resp = app.get(&path).await;
        assert_eq!(resp.status(), 200);
        let b = body(resp).await;
        let changes = b["changes"].as_array().unwrap().clone();
        let next = b["next_cursor"].as_str().unwrap().to_owned();
        if changes.is_empty() {
            assert_eq!(
                cursor.as_deref().unwrap_or("0"),
                next,
                "an empty page keeps the cursor"
            );
            return all;
        }
        all.extend(changes);
        cursor = Some(next);
    }
}

#[tokio::test]
async fn the_change_feed_replayed_from_the_start_matches_the_store() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(new_customer(&app, &format!("+3161234510{n}")).await);
    }
    // 1 into 0, 2 into 0, then 0 into 3 (a chain); 4 erased; 5 into 6 and back.
    for (target, source) in [(0, 1), (0, 2), (3, 0), (6, 5)] {
        assert_eq!(app.merge(&ids[target], &ids[source]).await.status(), 200);
    }
    assert_eq!(app.unmerge(&ids[6], &ids[5]).await.status(), 200);
    assert_eq!(app.erase(&ids[4]).await.status(), 204);
    // An automatic merge by a signal carrying two people's identifiers.
    app.ingest(json!({
        "channel": "store",
        "identifiers": [{"type": "phone", "value": "+31612345107", "verified": true},
                        {"type": "email", "value": "x7@example.com"}]
    }))
    .await;

    let feed = replay_feed(&app, 7).await;
    let seqs: Vec<u64> = feed.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ordered: {seqs:?}");

    let mut exists: BTreeSet<String> = BTreeSet::new();
    let mut merged_into: BTreeMap<String, String> = BTreeMap::new();
    let mut erased: BTreeSet<String> = BTreeSet::new();
    for c in &feed {
        let who = c["customer_id"].as_str().unwrap().to_owned();
        match c["type"].as_str().unwrap() {
            "profile.created" => {
                exists.insert(who);
            }
            "profile.merged" if c["merged_id"] == who.as_str() => {
                exists.remove(&who);
                merged_into.insert(who, c["survivor_id"].as_str().unwrap().to_owned());
            }
            "profile.unmerged" if c["merged_id"] == who.as_str() => {
                merged_into.remove(&who);
                exists.insert(who);
            }
            "profile.erased" => {
                exists.remove(&who);
                erased.insert(who);
            }
            _ => {}
        }
    }
    // Follow chains to where each merged id lives now.
    let root = |mut id: String| {
        while let Some(next) = merged_into.get(&id) {
            id = next.clone();
        }
        id
    };
    for id in &ids {
        let resp = app.get_profile(id).await;
        match resp.status().as_u16() {
            200 => assert!(
                exists.contains(id),
                "{id} exists but the feed does not say so"
            ),
            308 => {
                let to = resp.headers()["canonical-customer-id"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                assert_eq!(root(id.clone()), to, "{id} merged into {to} per the store");
            }
            404 => assert!(
                erased.contains(id),
                "{id} is gone but the feed does not say so"
            ),
            other => panic!("{id}: {other}"),
        }
    }
    assert_eq!(erased.len(), 1);
    assert!(merged_into.contains_key(&ids[1]));
    assert_eq!(root(ids[1].clone()), ids[3]);
    assert!(exists.contains(&ids[5]) && exists.contains(&ids[6]));
    // No personal data in the feed.
    let text = serde_json::to_string(&feed).unwrap();
    assert!(!text.contains("Anna") && !text.contains("+3161234510") && !text.contains("x7@"));
}

#[tokio::test]
async fn the_change_feed_needs_its_scope_and_sane_cursors() {
    let app = spawn_app().await;
    new_customer(&app, "+31612345201").await;
    let reader = app.token(&["profiles:read"], None);
    assert_error(
        app.get_as(&reader, "/v1/changes").await,
        403,
        "insufficient_scope",
    )
    .await;
    let integration = app.token(&["changes:read"], None);
    let resp = app.get_as(&integration, "/v1/changes").await;
    assert_eq!(resp.status(), 200);
    let b = body(resp).await;
    assert_eq!(b["changes"][0]["type"], "profile.created");
    assert_error(app.get("/v1/changes?after=x").await, 400, "invalid_cursor").await;
    assert_error(app.get("/v1/changes?limit=0").await, 400, "invalid_query").await;
    assert_error(
        app.get("/v1/changes?limit=1001").await,
        400,
        "invalid_query",
    )
    .await;
    assert_error(app.get("/v1/changes?since=1").await, 400, "invalid_query").await;
}

#[tokio::test]
async fn changes_older_than_the_retention_are_removed_and_old_cursors_refused() {
    let app = spawn_app_with(|s| s.changes.retention_secs = 1).await;
    new_customer(&app, "+31612345301").await;
    let first = replay_feed(&app, 100).await;
    assert!(!first.is_empty());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // Pruning runs between writes.
    new_customer(&app, "+31612345302").await;
    new_customer(&app, "+31612345303").await;
    let resp = app.get("/v1/changes?after=0").await;
    assert_error(resp, 410, "cursor_expired").await;
    let now = replay_feed(&app, 100).await;
    let oldest = now[0]["seq"].as_u64().unwrap();
    assert!(
        oldest > first.last().unwrap()["seq"].as_u64().unwrap(),
        "{now:?}"
    );
}

#[tokio::test]
async fn an_unmerge_takes_the_survivor_out_of_the_stream_live_and_replayed() {
    let app = spawn_app().await;
    let anna = new_customer(&app, "+31612345401").await;
    let team = new_customer(&app, "+31612345402").await;
    let mut desk = EventClient::open(&app, &anna, None).await;
    let before = desk.block(WAIT).await.unwrap();
    assert!(before.event.is_none());
    let start = body(app.get("/v1/changes?limit=1000").await).await["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();

    assert_eq!(app.merge(&team, &anna).await.status(), 200);
    post_answer(&app, &team, "during", "merged").await;
    assert_eq!(app.unmerge(&team, &anna).await.status(), 200);
    post_answer(&app, &team, "after", "apart").await;
    post_answer(&app, &anna, "mine", "again").await;

    let live = desk.until("answer.captured", WAIT).await;
    assert_eq!(live.last().unwrap().data.as_ref().unwrap()["key"], "during");
    let rest = desk.until("profile.unmerged", WAIT).await;
    assert!(!rest.is_empty());
    let next = desk.until("answer.captured", WAIT).await;
    let keys: Vec<&Value> = next
        .iter()
        .filter_map(|e| e.data.as_ref().map(|d| &d["key"]))
        .collect();
    assert_eq!(
        next.last().unwrap().data.as_ref().unwrap()["key"],
        "mine",
        "{keys:?}"
    );
    assert!(!next
        .iter()
        .any(|e| e.data.as_ref().unwrap()["key"] == "after"));

    // The same story replayed from before the merge.
    let mut replay = EventClient::open(&app, &anna, Some(&start)).await;
    let mut answered = Vec::new();
    while let Some(e) = replay.event(Duration::from_millis(700)).await {
        if e.event.as_deref() == Some("answer.captured") {
            answered.push(e.data.unwrap()["key"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(answered, ["during", "mine"]);
}

#[tokio::test]
async fn positions_are_never_reused_even_when_retention_emptied_the_log() {
    use crate::helpers::binary::{token_for, Binary};
    use anamnesis::auth::Scope;
    let dir = tempfile::tempdir().unwrap();
    let env = [("ANAMNESIS__CHANGES__RETENTION_SECS", "1")];
    let admin = token_for("ops", &[Scope::Admin]);
    let signal =
        |phone: &str| json!({"channel": "ivr", "identifiers": [{"type": "phone", "value": phone}]});
    let first_seq = {
        let server = Binary::start(dir.path(), &env);
        server.ingest(&admin, &signal("+31612345501")).await;
        let feed = body(server.get(&admin, "/v1/changes").await).await;
        let last = feed["next_cursor"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2200)).await;
        // A write that changes nothing still lets retention run: the log empties.
        let resp = server
            .request(
                &admin,
                Method::POST,
                "/v1/profiles/cus_01HZX3M4Q7R8S9T0V1W2X3Y4Z5/answers",
            )
            .json(&json!({"channel": "chat", "answers": [{"key": "k", "value": "v"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        let feed = body(server.get(&admin, "/v1/changes").await).await;
        assert_eq!(feed["changes"], json!([]), "retention emptied the log");
        server.stop().await;
        last
    };
    let server = Binary::start(dir.path(), &env);
    let id = server.ingest(&admin, &signal("+31612345503")).await;
    let feed = body(server.get(&admin, "/v1/changes").await).await;
    let mine = positions_of(&feed, &id);
    assert!(
        !mine.is_empty() && mine.iter().all(|s| *s > first_seq),
        "{mine:?} after {first_seq}"
    );
}

#[tokio::test]
async fn a_stream_ends_after_its_longest_life_saying_where_to_resume() {
    let app = spawn_app_with(|s| s.events.max_stream_secs = 1).await;
    let id = new_customer(&app, "+31612345601").await;
    let mut desk = EventClient::open(&app, &id, None).await;
    post_answer(&app, &id, "reason", "late").await;
    let seen = desk.until("stream.closed", Duration::from_secs(3)).await;
    let last_answer = seen
        .iter()
        .rev()
        .find_map(|e| e.id.clone())
        .expect("the answer's events came first");
    let closed = seen.last().unwrap().data.clone().unwrap();
    assert_eq!(closed["reason"], "max_duration");
    assert_eq!(closed["resume_after"], last_answer.as_str());
    assert!(desk.event(Duration::from_millis(500)).await.is_none());
    assert!(desk.ended, "the response is complete");
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let app = spawn_app_with(|s| s.auth.leeway_secs = 0).await;
    let id = new_customer(&app, "+31612345701").await;
    let auth = anamnesis::auth::Authenticator::new(
        &app.settings.auth,
        Some(crate::helpers::SECRET.as_bytes()),
    )
    .unwrap();
    let short = auth
        .mint(
            "desk",
            &[anamnesis::auth::Scope::ProfilesRead],
            None,
            Duration::from_secs(2),
        )
        .unwrap();
    let mut resp = app
        .client
        .get(format!("{}/v1/profiles/{id}/events", app.address))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let mut text = String::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .unwrap_or(Ok(None))
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: stream.closed"), "{text}");
    assert!(text.contains("\"reason\":\"token_expired\""), "{text}");
    assert!(started.elapsed() < Duration::from_secs(4));
}
