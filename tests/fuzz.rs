//! The served OpenAPI document against the service, by a fuzzer: schemathesis
//! runs every one of its checks (`--checks all`: server errors, status codes,
//! content types, response schemas and headers, schema-valid data accepted,
//! schema-invalid data refused, missing and ignored auth, unsupported
//! methods and `Allow`, use after free, ...) on every operation, with an
//! admin token, over a store seeded with profiles, a merge and a merge
//! suggestion, so that the generated requests also reach real ids.
//!
//! `tests/tools/schemathesis.sh` installs the pinned schemathesis under
//! `target/` when it is missing; when it cannot, this test fails saying so.
//! `tests/tools/schemathesis.toml` holds the configuration and the reasons
//! for it. Reports land in `target/tmp/fuzz/`.
//!
//! `FUZZ_EXAMPLES` and `FUZZ_SEED` override the examples per operation and
//! the seed, e.g. for a longer run by hand; `FUZZ_REPORT` the report formats
//! (`junit,har` also records every request and response).

#[path = "api/helpers/mod.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use helpers::{id_of, signal, spawn_app_with, TestApp};

/// Enough to cover every phase on every operation; the whole run stays
/// around a minute on two cores.
const EXAMPLES: u32 = 30;
const SEED: u64 = 20_261_122;
/// A run that takes longer than this is stuck, not slow.
const DEADLINE: Duration = Duration::from_secs(900);

/// What the run can reach: real customer ids (live and absorbed) and the
/// identifiers that resolve to them, as named dictionaries of values.
struct Seeded {
    dictionaries: Vec<(&'static str, Vec<String>)>,
}

impl Seeded {
    fn add(&mut self, name: &'static str, values: Vec<String>) {
        self.dictionaries.push((name, values));
    }

    fn add_str(&mut self, name: &'static str, values: &[&str]) {
        self.add(name, values.iter().map(|v| v.to_string()).collect());
    }
}

async fn seed(app: &TestApp) -> Seeded {
    // Profiles with a bit of everything, which reads and writes reach.
    let mut rich = Vec::new();
    for (i, (phone, email)) in [
        ("06 1234 5671", "anna@example.com"),
        ("06 1234 5672", "ben@example.com"),
        ("06 1234 5673", "carla@example.com"),
    ]
    .into_iter()
    .enumerate()
    {
        let result = app
            .ingest(json!({
                "signal_id": format!("fuzz-seed-{i}"),
                "channel": "ivr",
                "identifiers": [
                    {"type": "phone", "value": phone},
                    {"type": "email", "value": email},
                    {"type": "web_cookie", "value": format!("cookie-{i}")},
                ],
                "traits": {"first_name": "Anna", "preferred_language": "nl"},
                "answers": [{"key": "reason_for_contact", "value": "delivery", "question": "Why are you calling?"}],
                "event": {"type": "call_started", "summary": "Caller chose deliveries",
                          "episode": {"id": format!("order-A-{i}"), "title": "Delivery", "status": "open"},
                          "journey_stage": "service", "properties": {"menu_path": "2-1"}},
            }))
            .await;
        rich.push(id_of(&result));
    }

    // A merge: the absorbed id answers 308, and there is something to unmerge.
    let survivor = id_of(&app.ingest(signal("web", &[("account_id", "C-1001")])).await);
    let absorbed = id_of(&app.ingest(signal("web", &[("device_id", "dev-1")])).await);
    let merged = app.merge(&survivor, &absorbed).await;
    assert_eq!(merged.status(), 200, "seeding a merge");

    // A merge suggestion: a landline shared by two known customers.
    let shared = id_of(
        &app.ingest(signal(
            "store",
            &[("loyalty_card", "L-1"), ("phone", "020 123 4567")],
        ))
        .await,
    );
    let other = id_of(
        &app.ingest(signal("store", &[("email", "dora@example.com")]))
            .await,
    );
    let suggested = app
        .ingest(signal(
            "ivr",
            &[("phone", "+31201234567"), ("email", "dora@example.com")],
        ))
        .await;
    assert_eq!(
        suggested["conflicts"][0]["reason"], "merge_suggested",
        "seeding a suggestion: {suggested}"
    );

    // Profiles only merges and erasure use up, so the others stay reachable.
    let mut spare = Vec::new();
    for i in 0..4 {
        let cookie = format!("spare-{i}");
        spare.push(id_of(
            &app.ingest(signal("app", &[("web_cookie", &cookie)])).await,
        ));
    }

    let mut seeded = Seeded {
        dictionaries: Vec::new(),
    };
    let ids = |list: &[&String]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    seeded.add(
        "customer_ids",
        ids(&[
            &rich[0], &rich[1], &rich[2], &survivor, &absorbed, &shared, &other,
        ]),
    );
    seeded.add("with_cookie", ids(&[&rich[0]]));
    seeded.add("survivor", ids(&[&survivor]));
    seeded.add("absorbed", ids(&[&absorbed]));
    seeded.add("suggested", ids(&[&shared]));
    seeded.add("suggested_other", ids(&[&other]));
    seeded.add("mergeable", ids(&[&spare[0], &spare[1]]));
    seeded.add("erasable", ids(&[&spare[2], &spare[3]]));
    seeded.add_str("cookie_type", &["web_cookie"]);
    seeded.add_str("its_cookie", &["cookie-0"]);
    seeded.add_str(
        "identifier_types",
        &["phone", "email", "web_cookie", "account_id", "device_id"],
    );
    seeded.add_str(
        "identifier_values",
        &[
            "0612345671",
            "+31 6 12345672",
            "ben@example.com",
            "cookie-2",
            "C-1001",
            "dev-1",
        ],
    );
    // For new signals: types whose normaliser takes any plain text, values
    // that are no placeholder, times in the past.
    seeded.add_str(
        "plain_types",
        &["web_cookie", "device_id", "chat_session", "loyalty_card"],
    );
    seeded.add_str(
        "plain_values",
        &["fuzz-cookie-1", "fuzz-device-2", "cs-3", "L-4", "cookie-0"],
    );
    seeded.add_str(
        "past_times",
        &["2025-06-01T12:00:00Z", "2020-02-29T23:59:59.999+01:00"],
    );
    seeded
}

/// Which parameters draw (half of the time) from which dictionary: everywhere
/// (operation `None`), or for one operation, so that the pairs an operation
/// needs (a survivor and what it absorbed, the two sides of a suggestion, a
/// profile and its own identifier) meet, and merges and erasure spend
/// profiles of their own.
const BINDINGS: &[(Option<&str>, &str, &str)] = &[
    (None, "path.customer_id", "customer_ids"),
    (None, "path.target_id", "customer_ids"),
    (None, "path.other_id", "customer_ids"),
    (None, "body.source_id", "customer_ids"),
    (None, "body.merged_id", "customer_ids"),
    (None, "path.type", "identifier_types"),
    (None, "query.type", "identifier_types"),
    (None, "path.value", "identifier_values"),
    (None, "query.value", "identifier_values"),
    (Some("ingest"), "body.identifiers[*].type", "plain_types"),
    (Some("ingest"), "body.identifiers[*].value", "plain_values"),
    (Some("ingest"), "body.occurred_at", "past_times"),
    (
        Some("ingest_batch"),
        "body.signals[*].identifiers[*].type",
        "plain_types",
    ),
    (
        Some("ingest_batch"),
        "body.signals[*].identifiers[*].value",
        "plain_values",
    ),
    (
        Some("ingest_batch"),
        "body.signals[*].occurred_at",
        "past_times",
    ),
    (Some("merge"), "path.target_id", "mergeable"),
    (Some("merge"), "body.source_id", "mergeable"),
    (Some("erase"), "path.customer_id", "erasable"),
    (Some("unmerge"), "path.customer_id", "survivor"),
    (Some("unmerge"), "body.merged_id", "absorbed"),
    (Some("dismiss_suggestion"), "path.customer_id", "suggested"),
    (
        Some("dismiss_suggestion"),
        "path.other_id",
        "suggested_other",
    ),
    (Some("remove_identifier"), "path.customer_id", "with_cookie"),
    (Some("remove_identifier"), "path.type", "cookie_type"),
    (Some("remove_identifier"), "path.value", "its_cookie"),
];

/// The committed configuration, plus dictionaries of what was seeded, bound
/// to the parameters that name a profile or an identifier.
fn config(seeded: &Seeded) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = std::fs::read_to_string(root.join("tests/tools/schemathesis.toml"))
        .expect("tests/tools/schemathesis.toml is readable");
    let binding = |parameter: &str, dictionary: &str| {
        format!("\"{parameter}\" = {{ dictionary = \"{dictionary}\", probability = 0.5 }}\n")
    };
    let mut text = base;
    text.push_str("\n# Appended by tests/fuzz.rs: what it seeded.\n");
    for (name, values) in &seeded.dictionaries {
        text.push_str(&format!(
            "[dictionaries.{name}]\nvalues = {}\n\n",
            Value::from(values.clone())
        ));
    }
    text.push_str("[parameters]\n");
    for (_, parameter, dictionary) in BINDINGS.iter().filter(|b| b.0.is_none()) {
        text.push_str(&binding(parameter, dictionary));
    }
    let mut operations: Vec<&str> = BINDINGS.iter().filter_map(|b| b.0).collect();
    operations.dedup();
    for operation in operations {
        text.push_str(&format!(
            "\n[[operations]]\ninclude-operation-id = \"{operation}\"\n[operations.parameters]\n"
        ));
        for (_, parameter, dictionary) in BINDINGS.iter().filter(|b| b.0 == Some(operation)) {
            text.push_str(&binding(parameter, dictionary));
        }
    }
    text
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_keeps_every_promise_of_its_openapi_document() {
    // Event streams end after a second, so schemathesis reads whole responses;
    // its thousands of made-up identifiers would spend the lookup budget
    // within seconds and leave every later lookup a 429.
    let app = spawn_app_with(|s| {
        s.events.max_stream_secs = 1;
        s.limits.lookup_misses_per_hour = 0;
    })
    .await;
    let seeded = seed(&app).await;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("creating target/tmp/fuzz");
    let config_path = work.join("schemathesis.toml");
    std::fs::write(&config_path, config(&seeded)).expect("writing the fuzz configuration");
    let log_path = work.join("output.txt");
    let log = std::fs::File::create(&log_path).expect("creating the fuzz log");

    let examples: u32 = env_or("FUZZ_EXAMPLES", EXAMPLES);
    let seed: u64 = env_or("FUZZ_SEED", SEED);
    let mut command = Command::new("bash");
    command
        .arg(root.join("tests/tools/schemathesis.sh"))
        .arg("--config-file")
        .arg(&config_path)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{}/openapi.json", app.address))
        .args(["--checks", "all"])
        .args(["--max-examples", &examples.to_string()])
        .args(["--seed", &seed.to_string()])
        // Hypothesis would otherwise keep failing examples in a database in
        // the working directory and replay them: every run starts clean.
        .args(["--generation-database", "none"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", app.admin))
        .arg("--report")
        .arg(std::env::var("FUZZ_REPORT").unwrap_or_else(|_| "junit".into()))
        .arg("--report-dir")
        .arg(work.join("report"))
        .env(
            "SCHEMATHESIS_HOOKS",
            root.join("tests/tools/schemathesis_hooks.py"),
        )
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .expect("bash runs tests/tools/schemathesis.sh");
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for schemathesis") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis did not finish within {DEADLINE:?}; output so far:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    // A run that tested fewer operations than the document has proves less
    // than it seems to: every one must have been selected and tested.
    let operations: usize = anamnesis::openapi::api_doc(&app.settings)["paths"]
        .as_object()
        .map_or(0, |paths| {
            paths
                .values()
                .filter_map(Value::as_object)
                .map(|item| item.len())
                .sum()
        });
    assert!(
        status.success(),
        "schemathesis found failures (or could not be installed or run): {status}\n\
         configuration: {}\nreports: {}\n\n{output}",
        config_path.display(),
        work.join("report").display(),
    );
    for line in [
        format!("Selected: {operations}/{operations}"),
        format!("Tested: {operations}"),
    ] {
        assert!(
            output.contains(&line),
            "expected `{line}` in the schemathesis summary:\n{output}"
        );
    }
    println!(
        "schemathesis passed in {:.0?} ({examples} examples per operation, seed {seed}):\n{output}",
        started.elapsed()
    );
}
