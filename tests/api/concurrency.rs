//! Many writers at once: one person stays one profile and nothing is lost.

use serde_json::json;

use crate::helpers::{body, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_signals_about_one_new_person_make_one_profile() {
    let app = std::sync::Arc::new(spawn_app().await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let app = app.clone();
        tasks.spawn(async move {
            // Different spellings and different extra identifiers, same phone.
            let phone = if i % 2 == 0 { "06 1234 5678" } else { "+31612345678" };
            let resp = app
                .post_signal(&json!({
                    "channel": if i % 3 == 0 { "chat" } else { "web" },
                    "identifiers": [{"type": "phone", "value": phone}, {"type": "web_cookie", "value": format!("ck-{i}")}],
                    "traits": {format!("t{i}"): i},
                    "answers": [{"key": format!("q{i}"), "value": i}],
                    "event": {"type": "touch", "properties": {"i": i}}
                }))
                .await;
            let status = resp.status().as_u16();
            (status, body(resp).await)
        });
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut created = 0;
    while let Some(joined) = tasks.join_next().await {
        let (status, result) = joined.unwrap();
        assert!(status == 200 || status == 201, "{status}: {result}");
        if status == 201 {
            created += 1;
        }
        ids.insert(result["customer_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one person, one profile: {ids:?}");
    assert_eq!(created, 1, "exactly one signal created the profile");
    let id = ids.into_iter().next().unwrap();
    let p = app.profile(&id).await;
    assert_eq!(p["version"], 64, "every signal was applied once");
    assert_eq!(p["traits"].as_object().unwrap().len(), 64, "no trait lost");
    assert_eq!(
        p["answers"].as_object().unwrap().len(),
        64,
        "no answer lost"
    );
    assert_eq!(
        p["identifiers"].as_array().unwrap().len(),
        65,
        "one phone and 64 cookies"
    );
    let t = body(app.timeline(&id, &[("limit", "200")]).await).await;
    assert_eq!(
        t["interactions"].as_array().unwrap().len(),
        64,
        "no interaction lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_one_profile_lose_nothing() {
    let app = std::sync::Arc::new(spawn_app().await);
    let first = app
        .ingest(
            json!({"channel": "agent", "identifiers": [{"type": "account_id", "value": "C-1"}]}),
        )
        .await;
    let id = first["customer_id"].as_str().unwrap().to_owned();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..48 {
        let app = app.clone();
        let id = id.clone();
        tasks.spawn(async move {
            let resp = match i % 3 {
                0 => app.patch_traits(&id, &json!({"channel": "agent", "traits": {format!("p{i}"): i}})).await,
                1 => app.post_answers(&id, &json!({"channel": "chat", "answers": [{"key": format!("a{i}"), "value": i}]})).await,
                _ => app.post_signal(&json!({"channel": "web", "identifiers": [{"type": "account_id", "value": "C-1"}],
                                             "traits": {format!("s{i}"): i}})).await,
            };
            assert_eq!(resp.status().as_u16() / 100, 2);
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let p = app.profile(&id).await;
    assert_eq!(p["version"], 49);
    assert_eq!(p["traits"].as_object().unwrap().len(), 32);
    assert_eq!(p["answers"].as_object().unwrap().len(), 16);
}
