//! One client cannot hurt the others: signals are budgeted one by one
//! (a batch of N spends N), a subject holds a bounded share of the live
//! streams, a profile holds bounded data and says what it left out, and a
//! write that queued long is answered, never cut off, or withdrawn unapplied.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_error, body, id_of, signal, spawn_app_with, TestApp};

/// A signal about `phone` carrying `signal_id`.
fn identified(phone: &str, signal_id: &str) -> Value {
    let mut s = signal("web", &[("phone", phone)]);
    s["signal_id"] = json!(signal_id);
    s
}

/// `n` signals about new phones from `+316<first>0000000` on.
fn batch_of(prefix: &str, first: u8, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| identified(&format!("+316{first}{i:07}"), &format!("{prefix}-{i}")))
        .collect()
}

async fn post_batch_as(app: &TestApp, token: &str, signals: &[Value]) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/signals/batch", app.address))
        .bearer_auth(token)
        .json(&json!({ "signals": signals }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_batch_spends_one_unit_of_the_signal_budget_per_signal() {
    let app = spawn_app_with(|s| {
        s.server.max_batch_signals = 50;
        s.limits.signals_per_second = 1;
        s.limits.signal_burst = 50;
        s.limits.reject_delay_ms = 0;
    })
    .await;
    let importer = app.token_as("importer", &["signals:write"], None);
    let resp = post_batch_as(&app, &importer, &batch_of("first", 1, 50)).await;
    assert_eq!(resp.status(), 200, "{}", body(resp).await);

    // The request limit alone would let these through: the signals are spent.
    let resp = post_batch_as(&app, &importer, &batch_of("second", 2, 20)).await;
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Refused before its body is read, on what its size says it holds at
    // least (one signal per 128 bytes): some seconds at one a second.
    assert!((5..=20).contains(&retry_after), "Retry-After {retry_after}");
    let refusal = assert_error(resp, 429, "rate_limited").await;
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signals per second"),
        "{refusal}"
    );
    let resp = post_batch_as(&app, &importer, &batch_of("third", 3, 5)).await;
    assert_error(resp, 429, "rate_limited").await;
    // Nothing of a refused request was applied.
    for phone in ["+31620000000", "+31620000019", "+31630000004"] {
        let resp = app
            .request(Method::GET, "/v1/profiles/lookup")
            .query(&[("type", "phone"), ("value", phone)])
            .send()
            .await
            .unwrap();
        assert_error(resp, 404, "profile_not_found").await;
    }
    // Another subject has its own budget.
    let desk = app.token_as("desk", &["signals:write"], None);
    let resp = app
        .post_signal_as(&desk, &identified("+31619999998", "desk-1"))
        .await;
    assert_eq!(resp.status(), 201, "{}", body(resp).await);
}

#[tokio::test]
async fn one_subject_cannot_hold_every_live_stream() {
    // A stream whose client left is given back when the server next writes
    // to it: here its heartbeat, every second.
    let app = spawn_app_with(|s| {
        s.events.max_streams_per_subject = 2;
        s.events.heartbeat_secs = 1;
    })
    .await;
    let id = id_of(
        &app.ingest(signal("web", &[("phone", "+31612340001")]))
            .await,
    );
    let path = format!("/v1/profiles/{id}/events");
    let greedy = app.token_as("greedy", &["profiles:read"], None);
    let first = app.get_as(&greedy, &path).await;
    assert_eq!(first.status(), 200);
    let second = app.get_as(&greedy, &path).await;
    assert_eq!(second.status(), 200);
    let resp = app.get_as(&greedy, &path).await;
    assert!(resp.headers().contains_key("retry-after"));
    assert_error(resp, 429, "too_many_streams_for_subject").await;
    // The desk is served.
    let desk = app.token_as("desk", &["profiles:read"], None);
    let desk_stream = app.get_as(&desk, &path).await;
    assert_eq!(desk_stream.status(), 200);
    // A stream given back is a stream the subject may open again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = app.get_as(&greedy, &path).await;
        if resp.status() == 200 {
            break;
        }
        assert_eq!(resp.status(), 429);
        assert!(
            Instant::now() < deadline,
            "the closed stream was never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(second);
}

fn traits(prefix: &str, n: usize, value: &Value) -> Value {
    (0..n)
        .map(|i| (format!("{prefix}_{i}"), value.clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[tokio::test]
async fn a_full_profile_stores_what_fits_and_says_what_it_left_out() {
    let app = spawn_app_with(|s| {
        s.profiles.max_traits = 120;
        s.profiles.max_episodes = 2;
        s.profiles.max_profile_bytes = 64 * 1024;
    })
    .await;
    let phone = ("phone", "+31612340002");
    let mut s = signal("web", &[phone]);
    s["traits"] = traits("a", 100, &json!(1));
    let id = id_of(&app.ingest(s).await);

    // 30 new traits, 20 of which fit; an existing one is updated anyway.
    let mut s = signal("web", &[phone]);
    let mut more = traits("b", 30, &json!(2));
    more["a_0"] = json!("changed");
    s["traits"] = more;
    let result = app.ingest(s).await;
    let left_out = result["not_stored"].as_array().unwrap();
    assert_eq!(left_out.len(), 10, "{result}");
    assert!(
        left_out.iter().all(|n| n["reason"] == "max_traits"),
        "{result}"
    );
    let profile = app.profile(&id).await;
    assert_eq!(profile["traits"].as_object().unwrap().len(), 120);
    assert_eq!(profile["traits"]["a_0"]["value"], "changed");

    // Episodes: two fit; the third is left out, its event is still recorded.
    for (n, episode) in ["ep-1", "ep-2", "ep-3"].iter().enumerate() {
        let mut s = signal("web", &[phone]);
        s["event"] =
            json!({ "type": "case_opened", "episode": { "id": episode, "title": "Order" } });
        let result = app.ingest(s).await;
        let expected = if n < 2 {
            json!([])
        } else {
            json!([{"item": "episodes.ep-3", "reason": "max_episodes"}])
        };
        assert_eq!(result["not_stored"], expected, "{episode}");
    }
    let timeline = body(app.timeline(&id, &[]).await).await;
    assert_eq!(timeline["interactions"].as_array().unwrap().len(), 3);

    // Size: values of 4 KB fill the 64 KiB profile; then nothing grows it,
    // while a removal still goes through.
    let big = json!("x".repeat(4000));
    let mut reason = None;
    for round in 0..30 {
        let mut s = signal("web", &[phone]);
        s["traits"] = json!({ format!("a_{round}"): big });
        let result = app.ingest(s).await;
        if let Some(n) = result["not_stored"].as_array().unwrap().first() {
            reason = Some(n["reason"].clone());
            break;
        }
    }
    assert_eq!(reason, Some(json!("max_profile_bytes")));
    // A direct write is all or nothing.
    let resp = app
        .patch_traits(&id, &json!({ "channel": "web", "traits": { "b_1": big } }))
        .await;
    let refusal = assert_error(resp, 409, "profile_cap_exceeded").await;
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bytes"),
        "{refusal}"
    );
    assert_eq!(app.profile(&id).await["traits"]["b_1"]["value"], 2);

    let mut s = signal("web", &[phone]);
    s["traits"] = json!({ "a_0": null });
    let result = app.ingest(s).await;
    assert_eq!(result["not_stored"], json!([]), "{result}");

    // Two profiles that together pass the size cap are not merged.
    let mut s = signal("web", &[("phone", "+31612340003")]);
    s["traits"] = traits("z", 12, &big);
    let other = id_of(&app.ingest(s).await);
    let resp = app.merge(&id, &other).await;
    assert_error(resp, 409, "profile_cap_exceeded").await;
}

#[tokio::test]
async fn a_write_that_queued_long_is_answered_or_withdrawn_unapplied() {
    // The connection's own body limit (body_timeout + 1 s) is far shorter
    // than the time these batches queue behind each other.
    let app = spawn_app_with(|s| {
        s.server.body_timeout_ms = 300;
        s.storage.write_deadline_ms = 1500;
        s.limits.signals_per_second = 0;
    })
    .await;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = app.client.clone();
            let url = format!("{}/v1/signals/batch", app.address);
            let token = app.admin.clone();
            let signals: Vec<Value> = (0..1000)
                .map(|i| identified(&format!("+3161{w}{i:06}"), &format!("w{w}-{i}")))
                .collect();
            tokio::spawn(async move {
                let resp = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({ "signals": signals }))
                    .send()
                    .await
                    .expect("every write is answered, none cut off");
                let status = resp.status().as_u16();
                let retry = resp.headers().get("retry-after").cloned();
                (w, status, retry, body(resp).await)
            })
        })
        .collect();
    let mut applied = 0;
    let mut withdrawn = Vec::new();
    for writer in writers {
        let (w, status, retry, answer) = writer.await.unwrap();
        match status {
            200 => {
                let results = answer["results"].as_array().unwrap();
                for (i, r) in results.iter().enumerate() {
                    match r["status"].as_u64() {
                        Some(200 | 201) => applied += 1,
                        Some(503) => {
                            assert_eq!(r["error"]["code"], "store_busy", "{r}");
                            withdrawn.push(format!("+3161{w}{i:06}"));
                        }
                        other => panic!("item {i}: {other:?} {r}"),
                    }
                }
            }
            503 => {
                assert_eq!(answer["error"]["code"], "store_busy", "{answer}");
                assert!(retry.is_some(), "Retry-After on store_busy");
                withdrawn.extend((0..1000).map(|i| format!("+3161{w}{i:06}")));
            }
            other => panic!("writer {w}: {other} {answer}"),
        }
    }
    assert!(applied > 0, "some writes were applied");
    // What was withdrawn was never applied.
    for phone in withdrawn.iter().step_by(97) {
        let resp = app
            .request(Method::GET, "/v1/profiles/lookup")
            .query(&[("type", "phone"), ("value", phone)])
            .send()
            .await
            .unwrap();
        assert_error(resp, 404, "profile_not_found").await;
    }
}
