//! Episodes: a case's public status kept across channels, the list of a
//! profile's episodes (unresolved first, latest update first) and its status
//! filters, and the redirect from a merged-away profile. The follow-ups a
//! resolved episode owes are in `follow_ups.rs`.

use serde_json::{json, Value};

use crate::helpers::{
    assert_error, card, episode_at, episodes, field_list, follow_ups, id_of, now_s, ok, rfc, shift,
    signal, spawn_app, TestApp, DAY, HOUR, NOBODY,
};

/// The episode ids of `GET /v1/profiles/{id}/episodes?status=...`, in order.
async fn episode_ids(app: &TestApp, id: &str, status: Option<&str>) -> Vec<String> {
    let list = ok(episodes(app, id, status).await, "episodes").await;
    assert_eq!(list["customer_id"], id, "{list}");
    field_list(&list["episodes"], "id")
}

/// Episodes keep a public status across channels; the list puts unresolved
/// ones first (latest update first) and then resolved ones (newest first),
/// filters by one status or a comma list, and refuses unknown statuses; the
/// card shows them in the same order.
#[tokio::test]
async fn episodes_are_listed_unresolved_first_and_filtered_by_status() {
    let app = spawn_app().await;
    let t = now_s();
    let who = ("email", "episodes@example.com");
    let id = id_of(
        &app.ingest(episode_at(
            "chat",
            who,
            shift(t, -6 * HOUR),
            "complaint",
            json!({"id": "case-1", "title": "Broken screen", "status": "open"}),
        ))
        .await,
    );
    for s in [
        episode_at(
            "web",
            who,
            shift(t, -5 * HOUR),
            "order_placed",
            json!({"id": "order-1", "title": "Order 1", "status": "open", "public_status": "Order received"}),
        ),
        episode_at(
            "email",
            who,
            shift(t, -2 * HOUR),
            "email_sent",
            json!({"id": "order-1", "status": "waiting_on_customer", "public_status": "Please send a photo of the label"}),
        ),
        episode_at(
            "web",
            who,
            shift(t, -4 * HOUR),
            "order_placed",
            json!({"id": "order-2", "title": "Order 2", "status": "open", "public_status": "Packed"}),
        ),
        episode_at(
            "store",
            who,
            shift(t, -3 * HOUR),
            "picked_up",
            json!({"id": "order-2", "status": "resolved"}),
        ),
        episode_at(
            "web",
            who,
            shift(t, -7 * HOUR),
            "order_placed",
            json!({"id": "order-3", "title": "Order 3", "status": "open"}),
        ),
        episode_at(
            "chat",
            who,
            shift(t, -HOUR),
            "chat_message",
            json!({"id": "order-3", "status": "resolved", "public_status": "Refunded"}),
        ),
    ] {
        app.ingest(s).await;
    }

    let list = ok(episodes(&app, &id, None).await, "episodes").await;
    assert_eq!(list["customer_id"], id.as_str());
    assert_eq!(
        field_list(&list["episodes"], "id"),
        ["order-1", "case-1", "order-3", "order-2"]
    );
    assert_eq!(
        list["episodes"][0],
        json!({
            "id": "order-1", "title": "Order 1", "status": "waiting_on_customer",
            "public_status": "Please send a photo of the label",
            "opened_at": rfc(shift(t, -5 * HOUR)), "updated_at": rfc(shift(t, -2 * HOUR)),
            "channels": ["email", "web"], "last_channel": "email",
            "resolved_at": null, "feedback": null, "follow_up_due_at": null,
        })
    );
    // A report without a public status keeps the last one; the default delay is two days.
    assert_eq!(
        list["episodes"][3],
        json!({
            "id": "order-2", "title": "Order 2", "status": "resolved", "public_status": "Packed",
            "opened_at": rfc(shift(t, -4 * HOUR)), "updated_at": rfc(shift(t, -3 * HOUR)),
            "channels": ["store", "web"], "last_channel": "store",
            "resolved_at": rfc(shift(t, -3 * HOUR)), "feedback": null,
            "follow_up_due_at": rfc(shift(t, -3 * HOUR + 2 * DAY)),
        })
    );
    assert_eq!(list["episodes"][2]["public_status"], "Refunded");
    assert_eq!(list["episodes"][2]["resolved_at"], rfc(shift(t, -HOUR)));
    assert_eq!(list["episodes"][1]["public_status"], Value::Null);
    // The profile holds the same views.
    let profile_episodes = app.profile(&id).await["episodes"].clone();
    let order_1 = profile_episodes
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "order-1")
        .cloned();
    assert_eq!(order_1.as_ref(), Some(&list["episodes"][0]));

    assert_eq!(episode_ids(&app, &id, Some("open")).await, ["case-1"]);
    assert_eq!(
        episode_ids(&app, &id, Some("open,waiting_on_customer")).await,
        ["order-1", "case-1"]
    );
    assert_eq!(
        episode_ids(&app, &id, Some("resolved")).await,
        ["order-3", "order-2"]
    );
    assert_eq!(
        episode_ids(&app, &id, Some("waiting_on_us")).await,
        Vec::<String>::new()
    );
    for bad in ["closed", "open,nope", "open;resolved"] {
        assert_error(episodes(&app, &id, Some(bad)).await, 400, "invalid_query").await;
    }
    assert_error(episodes(&app, NOBODY, None).await, 404, "profile_not_found").await;

    let c = card(&app, &id).await;
    assert_eq!(
        field_list(&c["episodes"], "id"),
        ["order-1", "case-1", "order-3", "order-2"]
    );
    assert_eq!(c["episodes"][0], list["episodes"][0]);
    assert_eq!(field_list(&c["open_episodes"], "id"), ["order-1", "case-1"]);
    // Both resolved episodes await feedback, due two days after resolution: soonest first.
    assert_eq!(
        c["follow_ups"],
        json!([
            {"episode_id": "order-2", "title": "Order 2", "due_at": rfc(shift(t, -3 * HOUR + 2 * DAY))},
            {"episode_id": "order-3", "title": "Order 3", "due_at": rfc(shift(t, -HOUR + 2 * DAY))},
        ])
    );
    // Neither is due yet.
    assert_eq!(
        ok(follow_ups(&app, &[]).await, "follow-ups").await["follow_ups"],
        json!([])
    );
}

/// A merged-away id answers the episodes list with a redirect to the survivor.
#[tokio::test]
async fn episodes_of_a_merged_away_profile_redirect_to_the_survivor() {
    let app = spawn_app().await;
    let t = now_s();
    let anon = id_of(
        &app.ingest(episode_at(
            "web",
            ("web_cookie", "ck-ep"),
            shift(t, -HOUR),
            "return_requested",
            json!({"id": "return-1", "title": "Return", "status": "open"}),
        ))
        .await,
    );
    let known = id_of(&app.ingest(signal("store", &[("account_id", "C-55")])).await);
    let login = app
        .ingest(signal(
            "web",
            &[("web_cookie", "ck-ep"), ("account_id", "C-55")],
        ))
        .await;
    assert_eq!(login["merged_ids"], json!([anon]));
    let resp = episodes(&app, &anon, Some("open")).await;
    assert_eq!(
        resp.headers().get("canonical-customer-id").unwrap(),
        known.as_str()
    );
    assert_error(resp, 308, "profile_merged").await;
    assert_eq!(episode_ids(&app, &known, Some("open")).await, ["return-1"]);
}
