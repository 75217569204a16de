//! The audit log and the service's logs as an operator sees them, from the
//! real binary: one audit line per destructive action (and per spent budget
//! or refused channel scope), and no personal data in either log.

use std::path::Path;

use anamnesis::auth::Scope;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

use crate::helpers::binary::{bound_token_for, token_for, Binary};
use crate::helpers::{assert_error, assert_none_of, body, header, signal, NOBODY};

/// Sends one audited request and checks its answer (the error envelope, its
/// code being the audit outcome); returns `line` completed with the
/// response's request id.
async fn audited(request: RequestBuilder, status: u16, mut line: Value) -> Value {
    let resp = request.send().await.unwrap();
    line["request_id"] = json!(header(&resp, "x-request-id"));
    match line["outcome"].as_str().unwrap() {
        "ok" => assert_eq!(resp.status(), status, "{line}"),
        code => {
            assert_error(resp, status, code).await;
        }
    }
    line
}

/// The audit file's lines as JSON objects, each timestamp checked (and
/// taken out) against the window the test ran in.
fn audit_lines(path: &Path, since: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("the audit file exists");
    let until = chrono::Utc::now();
    text.lines()
        .map(|l| {
            let mut line: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            let stamp = line
                .as_object_mut()
                .unwrap_or_else(|| panic!("not an object: {l}"))
                .remove("timestamp")
                .unwrap_or_else(|| panic!("no timestamp: {l}"));
            let at: chrono::DateTime<chrono::Utc> = stamp
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("timestamp is not RFC 3339: {l}"));
            assert!(
                at >= since - chrono::Duration::seconds(1) && at <= until,
                "timestamp outside the test: {l}"
            );
            line
        })
        .collect()
}

/// What the audit test stores, written the ways it is sent and normalised.
const AUDIT_PII: &[&str] = &[
    "06 2468 1357",
    "0624681357",
    "624681357", // also inside +31624681357
    "06 3197 5286",
    "0631975286",
    "631975286",
    "fenna.audit", // any case, raw or lower-cased
    "fennaline",
    "joris.audit",
    "jorisander",
];

#[tokio::test]
async fn each_destructive_action_leaves_one_audit_line_without_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = Binary::start(
        &dir.path().join("data"),
        &[("ANAMNESIS__TELEMETRY__AUDIT_FILE", audit.to_str().unwrap())],
    );
    let since = chrono::Utc::now();
    let desk = token_for("desk-7", &[Scope::Admin]);
    let dpo = token_for("dpo-1", &[Scope::ProfilesErase]);
    let reader = token_for("reader-3", &[Scope::ProfilesRead]);

    let mut fenna = signal(
        "ivr",
        &[
            ("phone", "06 2468 1357"),
            ("email", " Fenna.Audit@Example.COM "),
        ],
    );
    fenna["traits"] = json!({ "first_name": "Fennaline" });
    let a = server.ingest(&desk, &fenna).await;
    let mut joris = signal(
        "web",
        &[
            ("phone", "06 3197 5286"),
            ("email", "Joris.Audit@Example.net"),
        ],
    );
    joris["traits"] = json!({ "first_name": "Jorisander" });
    let b = server.ingest(&desk, &joris).await;

    let merge = format!("/v1/profiles/{a}/merge");
    let unmerge = format!("/v1/profiles/{a}/unmerge");
    let line = |who: &str, action: &str, id: &str, outcome: &str| json!({ "who": who, "action": action, "customer_id": id, "outcome": outcome });
    let with = |mut line: Value, key: &str, value: &str| {
        line[key] = json!(value);
        line
    };
    let expected = vec![
        audited(
            server
                .request(&desk, Method::POST, &merge)
                .json(&json!({ "source_id": b })),
            200,
            with(line("desk-7", "merge", &a, "ok"), "other_id", &b),
        )
        .await,
        audited(
            server
                .request(&desk, Method::POST, &merge)
                .json(&json!({ "source_id": a })),
            422,
            with(line("desk-7", "merge", &a, "same_profile"), "other_id", &a),
        )
        .await,
        audited(
            server
                .request(&desk, Method::POST, &unmerge)
                .json(&json!({ "merged_id": b })),
            200,
            with(line("desk-7", "unmerge", &a, "ok"), "other_id", &b),
        )
        .await,
        audited(
            server
                .request(&desk, Method::POST, &unmerge)
                .json(&json!({ "merged_id": b })),
            409,
            with(
                line("desk-7", "unmerge", &a, "nothing_to_unmerge"),
                "other_id",
                &b,
            ),
        )
        .await,
        audited(
            server.request(
                &desk,
                Method::DELETE,
                &format!("/v1/profiles/{a}/identifiers/phone/0624681357"),
            ),
            200,
            with(
                line("desk-7", "remove_identifier", &a, "ok"),
                "identifier_type",
                "phone",
            ),
        )
        .await,
        audited(
            server.request(
                &desk,
                Method::DELETE,
                &format!("/v1/profiles/{a}/identifiers/email/joris.audit@example.net"),
            ),
            404,
            with(
                line("desk-7", "remove_identifier", &a, "identifier_not_found"),
                "identifier_type",
                "email",
            ),
        )
        .await,
        audited(
            server.request(&dpo, Method::DELETE, &format!("/v1/profiles/{b}")),
            204,
            line("dpo-1", "erase", &b, "ok"),
        )
        .await,
        audited(
            server.request(&dpo, Method::DELETE, &format!("/v1/profiles/{NOBODY}")),
            404,
            line("dpo-1", "erase", NOBODY, "profile_not_found"),
        )
        .await,
        // Refused for want of the scope: audited too, before any body is read.
        audited(
            server.request(&reader, Method::DELETE, &format!("/v1/profiles/{a}")),
            403,
            line("reader-3", "erase", &a, "insufficient_scope"),
        )
        .await,
        audited(
            server
                .request(&reader, Method::POST, &merge)
                .json(&json!({ "source_id": b })),
            403,
            line("reader-3", "merge", &a, "insufficient_scope"),
        )
        .await,
    ];
    // Reads and ingests are not audited.
    let resp = server
        .request(&desk, Method::GET, &format!("/v1/profiles/{a}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let output = server.stop().await;

    let actual = audit_lines(&audit, since);
    assert_eq!(actual, expected, "one line per action, in order");
    assert_none_of(
        &std::fs::read_to_string(&audit).unwrap(),
        AUDIT_PII,
        "the audit log",
    );
    assert!(
        !output.iter().any(|l| l.contains("\"action\"")),
        "with a file configured, no audit line goes to stdout: {output:#?}"
    );
}

#[tokio::test]
async fn a_merge_made_by_a_signal_is_audited_with_its_subject_and_channel() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    // The till checks e-mails at checkout: this deployment marks them verified.
    let server = Binary::start(
        &dir.path().join("data"),
        &[
            ("ANAMNESIS__TELEMETRY__AUDIT_FILE", audit.to_str().unwrap()),
            ("ANAMNESIS__TRUST__CHANNELS__STORE__EMAIL", "verify"),
        ],
    );
    let since = chrono::Utc::now();
    let desk = token_for("desk-7", &[Scope::Admin]);
    let till = bound_token_for("till-4", &[Scope::SignalsWrite], Some("store"));
    let a = server
        .ingest(
            &desk,
            &signal("ivr", &[("email", "sanne.audit@example.com")]),
        )
        .await;
    let b = server
        .ingest(&desk, &signal("store", &[("loyalty_card", "LC-AUDIT-1")]))
        .await;
    let mut link = signal(
        "store",
        &[
            ("loyalty_card", "LC-AUDIT-1"),
            ("email", "sanne.audit@example.com"),
        ],
    );
    link["signal_id"] = json!("till-4-0001");
    let resp = server.post_signal(&till, &link).await;
    let request_id = header(&resp, "x-request-id");
    let result = body(resp).await;
    assert_eq!(result["customer_id"], a.as_str(), "{result}");
    assert_eq!(result["merged_ids"], json!([b]), "{result}");
    // A retry answers the same and made no merge now: no second line.
    let resp = server.post_signal(&till, &link).await;
    assert_eq!(body(resp).await, result);
    // Ingest itself is not audited: only the identity change it made.
    let resp = server
        .post_signal(&till, &signal("store", &[("loyalty_card", "LC-AUDIT-1")]))
        .await;
    assert_eq!(resp.status(), 200);

    // The ledger names the same: who, through which channel, by which identifier.
    let history = body(
        server
            .get(&desk, &format!("/v1/profiles/{a}/history"))
            .await,
    )
    .await;
    let merged_in = &history["events"][0];
    assert_eq!(merged_in["kind"], "merged_in", "{history}");
    assert_eq!(merged_in["by"], "till-4");
    assert_eq!(merged_in["channel"], "store");
    assert_eq!(merged_in["other_id"], b.as_str());
    assert_eq!(
        merged_in["identifier"],
        json!({"type": "email", "value": "sanne.audit@example.com"})
    );
    // Not for a reader without `pii:read`.
    let reader = token_for("reader-3", &[Scope::ProfilesRead]);
    let refused = server
        .get(&reader, &format!("/v1/profiles/{a}/history"))
        .await;
    assert_error(refused, 403, "insufficient_scope").await;
    server.stop().await;

    let expected = vec![json!({
        "who": "till-4",
        "channel": "store",
        "action": "merge_by_signal",
        "customer_id": a,
        "other_id": b,
        "outcome": "ok",
        "request_id": request_id,
    })];
    assert_eq!(audit_lines(&audit, since), expected);
}

/// A subject that spends its lookup budget is refused and audited once
/// (not once per refusal), with no value it looked for; a channel token
/// refused a scope its channel may not carry is audited on audited actions.
#[tokio::test]
async fn a_spent_lookup_budget_and_a_refused_channel_scope_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = Binary::start(
        &dir.path().join("data"),
        &[
            ("ANAMNESIS__TELEMETRY__AUDIT_FILE", audit.to_str().unwrap()),
            ("ANAMNESIS__LIMITS__LOOKUP_MISSES_PER_HOUR", "60"),
            ("ANAMNESIS__LIMITS__LOOKUP_MISS_BURST", "3"),
        ],
    );
    let since = chrono::Utc::now();
    let desk = token_for("desk-7", &[Scope::Admin]);
    let a = server
        .ingest(&desk, &signal("ivr", &[("phone", "06 2468 1357")]))
        .await;
    let web = bound_token_for("web-frontend", &[Scope::ProfilesRead], Some("web"));
    let lookup = |n: usize| format!("/v1/profiles/lookup?type=phone&value=06246813{n:02}");
    for n in 0..3 {
        let resp = server.get(&web, &lookup(n)).await;
        assert_error(resp, 404, "profile_not_found").await;
    }
    let mut request_id = None;
    for n in 3..8 {
        let resp = server.get(&web, &lookup(n)).await;
        request_id.get_or_insert_with(|| header(&resp, "x-request-id"));
        assert_error(resp, 429, "lookup_budget_exhausted").await;
    }
    let greedy = bound_token_for(
        "web-frontend",
        &[Scope::ProfilesRead, Scope::IdentityWrite],
        Some("web"),
    );
    let resp = server
        .request(&greedy, Method::POST, &format!("/v1/profiles/{a}/unmerge"))
        .json(&json!({ "merged_id": a }))
        .send()
        .await
        .unwrap();
    let refused_id = header(&resp, "x-request-id");
    assert_error(resp, 403, "scope_not_allowed_for_channel").await;
    server.stop().await;

    let expected = vec![
        json!({
            "who": "web-frontend",
            "channel": "web",
            "action": "lookup",
            "outcome": "lookup_budget_exhausted",
            "request_id": request_id.unwrap(),
        }),
        json!({
            "who": "web-frontend",
            "channel": "web",
            "action": "unmerge",
            "customer_id": a,
            "outcome": "scope_not_allowed_for_channel",
            "request_id": refused_id,
        }),
    ];
    assert_eq!(audit_lines(&audit, since), expected);
    assert_none_of(
        &std::fs::read_to_string(&audit).unwrap(),
        &["24681357", "+31624681357", "0624681303"],
        "the audit log",
    );
}

#[tokio::test]
async fn an_identifier_value_sent_as_its_type_stays_out_of_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = Binary::start(
        &dir.path().join("data"),
        &[("ANAMNESIS__TELEMETRY__AUDIT_FILE", audit.to_str().unwrap())],
    );
    let since = chrono::Utc::now();
    let desk = token_for("desk-7", &[Scope::Admin]);
    let a = server
        .ingest(
            &desk,
            &signal("web", &[("email", "fenna.audit@example.com")]),
        )
        .await;
    // The segments swapped, an easy slip in a script: .../{value}/{type}.
    let resp = server
        .request(
            &desk,
            Method::DELETE,
            &format!("/v1/profiles/{a}/identifiers/fenna.audit@example.com/email"),
        )
        .send()
        .await
        .unwrap();
    assert_error(resp, 422, "unknown_identifier_type").await;
    server.stop().await;

    let lines = audit_lines(&audit, since);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["action"], "remove_identifier");
    assert_eq!(lines[0]["outcome"], "unknown_identifier_type");
    // The `{type}` segment here holds an e-mail address: only configured type
    // names may reach the audit line.
    assert_none_of(
        &std::fs::read_to_string(&audit).unwrap(),
        &["fenna.audit"],
        "the audit log",
    );
}

/// What the log test stores and sends, written the ways it is sent and
/// normalised.
const LOG_PII: &[&str] = &[
    "06 1357 2468",
    "0613572468",
    "613572468", // also inside +31613572468 and %2B31613572468
    "1357 24689",
    "zoe.quist", // any case, raw, lower-cased or URL-encoded
    "zephyrine",
    "quistlaan",
];

#[tokio::test]
async fn info_logs_carry_no_personal_data_in_either_format() {
    for format in ["json", "text"] {
        let dir = tempfile::tempdir().unwrap();
        let server = Binary::start(dir.path(), &[("ANAMNESIS__TELEMETRY__FORMAT", format)]);
        let token = token_for("desk-9", &[Scope::Admin]);
        let mut zoe = signal(
            "ivr",
            &[
                ("phone", "06 1357 2468"),
                ("email", " Zoe.Quist@Example.org "),
            ],
        );
        zoe["traits"] = json!({ "first_name": "Zephyrine" });
        zoe["answers"] = json!([{ "key": "reason_for_contact", "value": "moving to Quistlaan 9" }]);
        let id = server.ingest(&token, &zoe).await;

        let get = |path: &str, query: &[(&str, &str)]| {
            server
                .request(&token, Method::GET, path)
                .query(query)
                .send()
        };
        let reads = [
            get(&format!("/v1/profiles/{id}"), &[]).await.unwrap(),
            get(&format!("/v1/profiles/{id}/context"), &[])
                .await
                .unwrap(),
            get(
                "/v1/profiles/lookup",
                &[("type", "phone"), ("value", "06 1357 2468")],
            )
            .await
            .unwrap(),
            get(
                "/v1/context",
                &[("type", "email"), ("value", "ZOE.QUIST@example.org")],
            )
            .await
            .unwrap(),
        ];
        for resp in reads {
            assert_eq!(resp.status(), 200, "{format}: {}", resp.url());
        }

        let post = |signal: Value| {
            server
                .request(&token, Method::POST, "/v1/signals")
                .json(&signal)
                .send()
        };
        let invalid_phone = signal("ivr", &[("phone", "+31 6 1357 24689")]);
        assert_error(
            post(invalid_phone).await.unwrap(),
            422,
            "invalid_identifier",
        )
        .await;
        let mut unknown_field = signal("web", &[("email", "Zoe.Quist@Example.org")]);
        unknown_field["emial"] = json!("zoe.quist@example.org");
        assert_error(post(unknown_field).await.unwrap(), 422, "unknown_field").await;
        let unknown = get(
            "/v1/profiles/lookup",
            &[("type", "email"), ("value", "zoe.quist.old@example.org")],
        );
        assert_error(unknown.await.unwrap(), 404, "profile_not_found").await;
        let resp = server
            .request(&token, Method::DELETE, &format!("/v1/profiles/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);

        let output = server.stop().await;
        let text = output.join("\n");
        for expected in ["anamnesis listening", "anamnesis stopped", "\"erase\""] {
            assert!(
                text.contains(expected),
                "{format}: the capture lacks {expected}:\n{text}"
            );
        }
        assert_none_of(&text, LOG_PII, &format!("the {format} log"));
    }
}
