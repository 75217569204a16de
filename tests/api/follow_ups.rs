//! Follow-ups: a resolved episode owes one, due `follow_ups.delay` after its
//! resolution, until the customer's feedback arrives; reopening withdraws
//! it, merges move it and erasure removes it; the list pages by due time.

use std::time::Duration;

use anamnesis::config::Settings;
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::helpers::{
    assert_error, body, card, episode, episode_at, episodes, event_at, field_list, follow_ups,
    get_query_as, id_of, now_s, ok, rfc, shift, signal, spawn_app_with, TestApp, HOUR, MINUTE,
};

/// A `due_before` later than every follow-up.
const FAR: &str = "2999-01-01T00:00:00Z";

/// One hour between resolution and follow-up.
fn one_hour_follow_ups(s: &mut Settings) {
    s.follow_ups.delay = Duration::from_secs(3600);
}

/// Opens `episode` for `who` at `opened`, resolves it at `resolved`; returns the customer id.
async fn resolved_episode(
    app: &TestApp,
    who: (&str, &str),
    episode: &str,
    opened: DateTime<Utc>,
    resolved: DateTime<Utc>,
) -> String {
    let id = id_of(
        &app.ingest(episode_at(
            "chat",
            who,
            opened,
            "order_placed",
            json!({"id": episode, "title": format!("Order {episode}"), "status": "open"}),
        ))
        .await,
    );
    app.ingest(episode_at(
        "web",
        who,
        resolved,
        "delivered",
        json!({"id": episode, "status": "resolved"}),
    ))
    .await;
    id
}

/// The follow-ups due before `due_before` (one page of 200).
async fn due_before(app: &TestApp, due_before: &str) -> Vec<Value> {
    let page = ok(
        follow_ups(app, &[("due_before", due_before), ("limit", "200")]).await,
        "follow-ups",
    )
    .await;
    assert!(page["next_cursor"].is_null(), "one page: {page}");
    page["follow_ups"].as_array().unwrap().clone()
}

/// The proof: an order episode over three channels is resolved, its
/// follow-up falls due `follow_ups.delay` later, shows on the list and the
/// card, and goes away when the customer's feedback arrives, which the
/// episode and the profile's `nps` trait then hold.
#[tokio::test]
async fn a_resolved_episode_owes_a_follow_up_until_feedback_arrives() {
    let app = spawn_app_with(one_hour_follow_ups).await;
    let t = now_s();
    let who = ("email", "follow-up@example.com");
    let order = "order-B-2002";
    let id = id_of(
        &app.ingest(episode_at(
            "chat",
            who,
            shift(t, -5 * HOUR),
            "order_placed",
            json!({"id": order, "title": "Order B-2002", "status": "open", "public_status": "We received your order"}),
        ))
        .await,
    );
    app.ingest(episode_at(
        "web",
        who,
        shift(t, -4 * HOUR),
        "delivery_tracked",
        json!({"id": order, "status": "waiting_on_us", "public_status": "On its way"}),
    ))
    .await;
    assert_eq!(
        due_before(&app, FAR).await,
        Vec::<Value>::new(),
        "not resolved yet"
    );
    assert_eq!(
        episode(&app, &id, order).await["follow_up_due_at"],
        Value::Null
    );

    app.ingest(episode_at(
        "ivr",
        who,
        shift(t, -3 * HOUR),
        "call_started",
        json!({"id": order, "status": "resolved", "public_status": "Delivered"}),
    ))
    .await;
    let resolved = json!({
        "id": order, "title": "Order B-2002", "status": "resolved", "public_status": "Delivered",
        "opened_at": rfc(shift(t, -5 * HOUR)), "updated_at": rfc(shift(t, -3 * HOUR)),
        "channels": ["chat", "ivr", "web"], "last_channel": "ivr",
        "resolved_at": rfc(shift(t, -3 * HOUR)), "feedback": null,
        "follow_up_due_at": rfc(shift(t, -2 * HOUR)),
    });
    assert_eq!(episode(&app, &id, order).await, resolved);
    assert_eq!(app.profile(&id).await["episodes"], json!([resolved]));

    // Due at resolved_at + delay: listed by default (due before now)...
    let entry = json!({
        "customer_id": id, "episode_id": order, "title": "Order B-2002",
        "resolved_at": rfc(shift(t, -3 * HOUR)), "due_at": rfc(shift(t, -2 * HOUR)),
        "channels": ["chat", "ivr", "web"], "last_channel": "ivr",
    });
    let page = ok(follow_ups(&app, &[]).await, "follow-ups").await;
    assert_eq!(page, json!({"follow_ups": [entry], "next_cursor": null}));
    assert_eq!(due_before(&app, FAR).await, std::slice::from_ref(&entry));
    // ...but not before it is due.
    assert_eq!(
        due_before(&app, &rfc(shift(t, -2 * HOUR - 1))).await,
        Vec::<Value>::new()
    );

    let c = card(&app, &id).await;
    assert_eq!(
        c["follow_ups"],
        json!([{"episode_id": order, "title": "Order B-2002", "due_at": rfc(shift(t, -2 * HOUR))}])
    );
    assert_eq!(field_list(&c["episodes"], "id"), [order]);
    assert_eq!(c["open_episodes"], json!([]));

    // The customer answers the survey.
    app.ingest(json!({
        "signal_id": "fb-1",
        "channel": "web",
        "occurred_at": rfc(shift(t, -HOUR)),
        "identifiers": [{"type": who.0, "value": who.1}],
        "event": {"type": "survey_answered", "episode": {"id": order,
                  "feedback": {"nps": 9, "comment": "Quick and friendly"}}},
    }))
    .await;
    assert_eq!(due_before(&app, FAR).await, Vec::<Value>::new());
    assert_eq!(
        ok(follow_ups(&app, &[]).await, "follow-ups").await,
        json!({"follow_ups": [], "next_cursor": null})
    );
    assert_eq!(card(&app, &id).await["follow_ups"], json!([]));
    let answered = episode(&app, &id, order).await;
    assert_eq!(
        answered["feedback"],
        json!({"nps": 9, "ces": null, "comment": "Quick and friendly", "channel": "web", "at": rfc(shift(t, -HOUR))})
    );
    assert_eq!(answered["status"], "resolved");
    assert_eq!(answered["resolved_at"], rfc(shift(t, -3 * HOUR)));
    assert_eq!(answered["follow_up_due_at"], Value::Null);
    let p = app.profile(&id).await;
    assert_eq!(
        p["traits"]["nps"],
        json!({"value": 9, "channel": "web", "observed_at": rfc(shift(t, -HOUR)), "signal_id": "fb-1"})
    );
    assert!(p["traits"].get("ces").is_none(), "{p}");
    // A customer effort score lands as its own trait.
    app.ingest(event_at(
        "chat",
        who,
        shift(t, -30 * MINUTE),
        json!({"type": "survey_answered", "episode": {"id": order, "feedback": {"ces": 2}}}),
    ))
    .await;
    assert_eq!(app.profile(&id).await["traits"]["ces"]["value"], 2);
    assert_eq!(app.profile(&id).await["traits"]["nps"]["value"], 9);
}

/// Feedback out of range, empty, or about no episode is refused with a
/// stable code, and changes nothing: the follow-up stays due.
#[tokio::test]
async fn bad_feedback_is_refused_and_the_follow_up_stays() {
    let app = spawn_app_with(one_hour_follow_ups).await;
    let t = now_s();
    let who = ("email", "bad-feedback@example.com");
    let id = resolved_episode(&app, who, "o-1", shift(t, -5 * HOUR), shift(t, -3 * HOUR)).await;
    let with_feedback = |feedback: Value| {
        event_at(
            "web",
            who,
            shift(t, -HOUR),
            json!({"type": "survey_answered", "episode": {"id": "o-1", "feedback": feedback}}),
        )
    };
    for feedback in [
        json!({"nps": 11}),
        json!({"ces": 0}),
        json!({"ces": 8}),
        json!({"nps": 10, "ces": 8}),
        json!({}),
        json!({"comment": "no score at all"}),
    ] {
        let resp = app.post_signal(&with_feedback(feedback.clone())).await;
        let b = assert_error(resp, 422, "invalid_feedback").await;
        assert!(
            b["error"]["message"].as_str().unwrap().contains("feedback"),
            "{feedback}: {b}"
        );
    }
    // Not even an integer: refused (as a bad feedback or a bad field type).
    for feedback in [json!({"nps": -1}), json!({"nps": 9.5}), json!({"nps": "9"})] {
        let resp = app.post_signal(&with_feedback(feedback.clone())).await;
        assert_eq!(resp.status(), 422, "{feedback}");
        let b = body(resp).await;
        let code = b["error"]["code"].as_str().unwrap_or_default();
        assert!(
            code == "invalid_feedback" || code == "invalid_field",
            "{feedback}: {b}"
        );
    }
    // Feedback is about an episode: it has no place outside one.
    let no_episode = event_at(
        "web",
        who,
        shift(t, -HOUR),
        json!({"type": "survey_answered", "feedback": {"nps": 9}}),
    );
    assert_error(app.post_signal(&no_episode).await, 422, "unknown_field").await;
    let long_status = episode_at(
        "web",
        who,
        shift(t, -HOUR),
        "status_update",
        json!({"id": "o-1", "public_status": "x".repeat(2001)}),
    );
    assert_error(app.post_signal(&long_status).await, 422, "text_too_long").await;

    let listed = due_before(&app, FAR).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["customer_id"], id.as_str());
    assert_eq!(listed[0]["due_at"], rfc(shift(t, -2 * HOUR)));
    let e = episode(&app, &id, "o-1").await;
    assert_eq!(e["feedback"], Value::Null);
    assert_eq!(e["public_status"], Value::Null);
    let p = app.profile(&id).await;
    assert!(p["traits"].get("nps").is_none(), "{p}");
    assert!(p["traits"].get("ces").is_none(), "{p}");
}

/// Reopening an episode withdraws its follow-up; resolving it again owes a
/// new one, from the new resolution, which feedback given before that
/// resolution (even arriving late) does not settle.
#[tokio::test]
async fn reopening_withdraws_the_follow_up_and_only_later_feedback_settles_it() {
    let app = spawn_app_with(one_hour_follow_ups).await;
    let t = now_s();
    let who = ("email", "reopen@example.com");
    let id = resolved_episode(&app, who, "o-2", shift(t, -6 * HOUR), shift(t, -5 * HOUR)).await;
    assert_eq!(due_before(&app, FAR).await.len(), 1);

    app.ingest(episode_at(
        "chat",
        who,
        shift(t, -4 * HOUR),
        "complaint",
        json!({"id": "o-2", "status": "open", "public_status": "Looking into it again"}),
    ))
    .await;
    assert_eq!(due_before(&app, FAR).await, Vec::<Value>::new());
    let e = episode(&app, &id, "o-2").await;
    assert_eq!(e["status"], "open");
    assert_eq!(e["resolved_at"], Value::Null);
    assert_eq!(e["follow_up_due_at"], Value::Null);
    assert_eq!(card(&app, &id).await["follow_ups"], json!([]));

    app.ingest(episode_at(
        "chat",
        who,
        shift(t, -2 * HOUR),
        "chat_message",
        json!({"id": "o-2", "status": "resolved"}),
    ))
    .await;
    let listed = due_before(&app, FAR).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["resolved_at"], rfc(shift(t, -2 * HOUR)));
    assert_eq!(listed[0]["due_at"], rfc(shift(t, -HOUR)));

    // Feedback from before this resolution arrives late: still due.
    app.ingest(event_at(
        "web",
        who,
        shift(t, -3 * HOUR),
        json!({"type": "survey_answered", "episode": {"id": "o-2", "feedback": {"nps": 3}}}),
    ))
    .await;
    assert_eq!(due_before(&app, FAR).await.len(), 1);
    assert_eq!(
        episode(&app, &id, "o-2").await["follow_up_due_at"],
        rfc(shift(t, -HOUR))
    );
    // Feedback at the resolution's instant or later settles it.
    app.ingest(event_at(
        "web",
        who,
        shift(t, -2 * HOUR),
        json!({"type": "survey_answered", "episode": {"id": "o-2", "feedback": {"nps": 8}}}),
    ))
    .await;
    assert_eq!(due_before(&app, FAR).await, Vec::<Value>::new());
    assert_eq!(app.profile(&id).await["traits"]["nps"]["value"], 8);
}

/// A follow-up follows its episode into the survivor of a merge (listed
/// once, under the survivor), and leaves with an erased profile.
#[tokio::test]
async fn follow_ups_move_with_a_merge_and_leave_with_an_erasure() {
    let app = spawn_app_with(one_hour_follow_ups).await;
    let t = now_s();
    let known = id_of(
        &app.ingest(signal(
            "store",
            &[("account_id", "C-7"), ("email", "fiona@example.com")],
        ))
        .await,
    );
    let anon = resolved_episode(
        &app,
        ("web_cookie", "ck-f"),
        "return-9",
        shift(t, -5 * HOUR),
        shift(t, -3 * HOUR),
    )
    .await;
    assert_ne!(anon, known);
    let listed = due_before(&app, FAR).await;
    assert_eq!(
        field_list(&Value::from(listed.clone()), "customer_id"),
        [anon.as_str()]
    );

    let login = app
        .ingest(json!({
            "channel": "web",
            "occurred_at": rfc(shift(t, -MINUTE)),
            "identifiers": [{"type": "web_cookie", "value": "ck-f"}, {"type": "account_id", "value": "C-7"}],
            "event": {"type": "login"},
        }))
        .await;
    assert_eq!(id_of(&login), known);
    assert_eq!(login["merged_ids"], json!([anon]));
    let listed = due_before(&app, FAR).await;
    assert_eq!(listed.len(), 1, "listed once: {listed:?}");
    assert_eq!(listed[0]["customer_id"], known.as_str());
    assert_eq!(listed[0]["episode_id"], "return-9");
    assert_eq!(listed[0]["due_at"], rfc(shift(t, -2 * HOUR)));
    assert_eq!(
        card(&app, &known).await["follow_ups"],
        json!([{"episode_id": "return-9", "title": "Order return-9", "due_at": rfc(shift(t, -2 * HOUR))}])
    );

    assert_eq!(app.erase(&known).await.status(), 204);
    assert_eq!(due_before(&app, FAR).await, Vec::<Value>::new());
    assert_error(episodes(&app, &known, None).await, 404, "profile_not_found").await;
}

/// The list is ordered by due time, pages with `limit` and `next_cursor`,
/// reads `due_before` with any offset, and refuses bad queries and tokens
/// without `profiles:read`.
#[tokio::test]
async fn follow_ups_page_by_due_time() {
    let app = spawn_app_with(one_hour_follow_ups).await;
    let t = now_s();
    // Resolved 3, 5 and 4 hours ago: due 2, 4 and 3 hours ago.
    let mut ids = Vec::new();
    for (n, resolved) in [(1, 3), (2, 5), (3, 4)] {
        let email = format!("page-{n}@example.com");
        ids.push(
            resolved_episode(
                &app,
                ("email", email.as_str()),
                // Characters a URL would need escaped: the cursor must not.
                &format!("o+{n}&#%"),
                shift(t, -6 * HOUR),
                shift(t, -resolved * HOUR),
            )
            .await,
        );
    }
    let expected = [ids[1].clone(), ids[2].clone(), ids[0].clone()];

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..4 {
        let mut query = vec![("due_before", FAR.to_owned()), ("limit", "1".to_owned())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = ok(follow_ups(&app, &query).await, "follow-ups page").await;
        let entries = page["follow_ups"].as_array().unwrap();
        assert!(entries.len() <= 1, "{page}");
        seen.extend(field_list(&page["follow_ups"], "customer_id"));
        match page["next_cursor"].as_str() {
            Some(c) => {
                let url_safe = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
                assert!(c.bytes().all(url_safe), "{c}");
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(seen, expected);
    assert!(cursor.is_some(), "the first pages pointed further");
    let all = due_before(&app, FAR).await;
    assert_eq!(
        field_list(&Value::from(all.clone()), "due_at"),
        [
            rfc(shift(t, -4 * HOUR)),
            rfc(shift(t, -3 * HOUR)),
            rfc(shift(t, -2 * HOUR))
        ]
    );

    // Half an hour after the first is due, written in +02:00.
    let plus_two = FixedOffset::east_opt(2 * 3600).unwrap();
    let cut = shift(t, -4 * HOUR + 30 * MINUTE)
        .with_timezone(&plus_two)
        .to_rfc3339_opts(SecondsFormat::Secs, false);
    assert!(cut.ends_with("+02:00"), "{cut}");
    assert_eq!(
        field_list(&Value::from(due_before(&app, &cut).await), "customer_id"),
        [ids[1].as_str()]
    );

    for query in [
        [("limit", "0")],
        [("limit", "201")],
        [("due_before", "tomorrow")],
        [("due_before", "2026-13-01T00:00:00Z")],
    ] {
        assert_error(follow_ups(&app, &query).await, 400, "invalid_query").await;
    }
    let writer = app.token(&["signals:write"], None);
    assert_error(
        get_query_as(&app, &writer, "/v1/follow-ups", &[]).await,
        403,
        "insufficient_scope",
    )
    .await;
    let reader = app.token(&["profiles:read"], None);
    let page = ok(
        get_query_as(&app, &reader, "/v1/follow-ups", &[("due_before", FAR)]).await,
        "reader",
    )
    .await;
    assert_eq!(page["follow_ups"].as_array().unwrap().len(), 3);
}
