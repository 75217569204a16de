//! `anamnesis upgrade-identifiers` over a store that holds identifiers an
//! earlier release accepted and the current rules spell otherwise or
//! refuse: planted through the crate's store API, as that release left them.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{TimeDelta, Utc};
use serde_json::{json, Value};

use reqwest::Method;

use crate::cli::{anamnesis, text};
use crate::helpers::binary::{token_for, Binary};
use crate::helpers::{backend_env, body, use_test_backend, SECRET};
use anamnesis::auth::Scope;
use anamnesis::config::Settings;
use anamnesis::domain::{CustomerId, Identifier, Profile, TraitValue};
use anamnesis::service::upgrade::CHECKPOINT;

/// One profile as an earlier release stored it.
struct Planted {
    /// Days before now it was created (older profiles survive merges).
    age_days: i64,
    identifiers: &'static [&'static str],
    first_name: Option<&'static str>,
}

/// The settings of the store under `data` (sled there, or the test database).
fn settings_for(data: &Path) -> Settings {
    let mut settings = Settings::defaults();
    settings.storage.path = data.to_path_buf();
    use_test_backend(&mut settings);
    settings
}

/// Writes each profile and its index entries, as they are (no normalising),
/// and returns their ids; ids ascend in the order given, which is the order
/// the upgrade scans them in.
fn plant(data: &Path, profiles: &[Planted], checkpoint: Option<usize>) -> Vec<CustomerId> {
    let settings = settings_for(data);
    let rules = settings.signal_rules().unwrap();
    let mut ids: Vec<CustomerId> = (0..profiles.len())
        .map(|_| CustomerId::generate())
        .collect();
    ids.sort();
    let store = anamnesis::startup::open_store(&settings, true).unwrap();
    let mut built = Vec::new();
    for (planted, id) in profiles.iter().zip(&ids) {
        let at = Utc::now() - TimeDelta::days(planted.age_days);
        let mut p = Profile::new(*id, at);
        p.version = 1;
        for key in planted.identifiers {
            let identifier = Identifier::from_key(key.as_bytes()).unwrap();
            p.see_identifier(&identifier, "import", at, false, &rules.channels);
        }
        if let Some(name) = planted.first_name {
            let value = TraitValue {
                value: Some(json!(name)),
                channel: "import".into(),
                observed_at: at,
                signal_id: None,
            };
            p.set_trait("first_name", value, &rules.channels);
        }
        built.push(p);
    }
    store
        .write(&mut |tx| {
            for p in &built {
                tx.put_profile(p).unwrap();
                for r in &p.identifiers {
                    tx.set_owner(&r.identifier, p.customer_id);
                }
            }
            if let Some(i) = checkpoint {
                tx.put_meta(CHECKPOINT, ids[i].to_string().into_bytes());
            }
            true
        })
        .unwrap();
    store.flush().unwrap();
    ids
}

/// The binary's environment for the store under `data`.
fn env_for(data: &Path) -> Vec<(&'static str, String)> {
    let mut env = vec![
        (
            "ANAMNESIS__STORAGE__PATH",
            data.to_str().unwrap().to_owned(),
        ),
        ("ANAMNESIS__AUTH__HS256_SECRET", SECRET.to_owned()),
    ];
    env.extend(backend_env(data));
    env
}

/// Runs the binary; returns its standard output (it must succeed).
fn run(data: &Path, args: &[&str]) -> String {
    let env = env_for(data);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = anamnesis(args, &env);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Every profile in the store, by id, through `anamnesis export`.
fn profiles(data: &Path) -> BTreeMap<String, Value> {
    run(data, &["export"])
        .lines()
        .map(|l| {
            let p: Value = serde_json::from_str(l).unwrap();
            (p["customer_id"].as_str().unwrap().to_owned(), p)
        })
        .collect()
}

fn identifiers(p: &Value) -> Vec<String> {
    let mut list: Vec<String> = p["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["type"].as_str().unwrap(),
                i["value"].as_str().unwrap()
            )
        })
        .collect();
    list.sort();
    list
}

/// The report's lines about identifiers (all but the summary), sorted.
fn findings(stdout: &str) -> Vec<String> {
    let mut lines: Vec<String> = stdout
        .lines()
        .filter(|l| l.contains(" type="))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// The legacy store: every outcome at least once.
fn legacy() -> Vec<Planted> {
    let p = |age_days, identifiers, first_name| Planted {
        age_days,
        identifiers,
        first_name,
    };
    vec![
        // 0: a fullwidth spelling nobody else holds: rekeyed.
        p(
            30,
            &["email:ａｎｎａ＠ｅｘａｍｐｌｅ．ｃｏｍ"],
            Some("Anna"),
        ),
        // 1: a punycode domain: rekeyed to the Unicode spelling.
        p(30, &["email:bob@xn--mnchen-3ya.de"], None),
        // 2, 3: one address twice; the older profile survives the merge.
        p(20, &["email:carol@example.com"], None),
        p(10, &["email:ｃａｒｏｌ@example.com"], Some("Carol")),
        // 4, 5: the older profile holds the legacy spelling and absorbs the
        // other, whose own legacy account id then comes along and is rekeyed.
        p(20, &["email:ｄａｖｅ@example.com"], None),
        p(
            10,
            &["email:dave@example.com", "account_id:Ｅ-１"],
            Some("Dave"),
        ),
        // 6, 7: a phone only suggests: a collision.
        p(20, &["phone:+31611112222"], None),
        p(10, &["phone:０６ １１１１ ２２２２"], None),
        // 8, 9: one account id a profile: merging would break the limit.
        p(20, &["account_id:I-1", "email:frank@example.com"], None),
        p(
            10,
            &["account_id:J-1", "email:ｆｒａｎｋ@example.com"],
            None,
        ),
        // 10, 11: refused now: look-alikes.
        p(10, &["email:v\u{435}ra@example.com"], None),
        p(10, &["email:ve\u{200b}ra@example.com"], None),
    ]
}

/// The lines a run over the legacy store reports. A dry run reports the
/// same, except that it names a profile as it is, not as an earlier merge
/// of the run would have left it.
fn expected_findings(ids: &[CustomerId], dry_run: bool) -> Vec<String> {
    let dave = if dry_run { ids[5] } else { ids[4] };
    let mut lines = vec![
        format!("rekeyed type=email customer={}", ids[0]),
        format!("rekeyed type=email customer={}", ids[1]),
        format!(
            "merged type=email customer={} survivor={} absorbed={}",
            ids[3], ids[2], ids[3]
        ),
        format!(
            "merged type=email customer={} survivor={} absorbed={}",
            ids[4], ids[4], ids[5]
        ),
        format!("rekeyed type=account_id customer={dave}"),
        format!(
            "collision type=phone customer={} other={} reason=\"the type's merge policy does not merge profiles\"",
            ids[7], ids[6]
        ),
        format!(
            "collision type=email customer={} other={} reason=\"together the profiles would hold more identifiers of one type than its limit\"",
            ids[9], ids[8]
        ),
        format!(
            "refused type=email customer={} reason=\"mixes scripts in one part\"",
            ids[10]
        ),
        format!(
            "refused type=email customer={} reason=\"contains invisible characters\"",
            ids[11]
        ),
    ];
    lines.sort();
    lines
}

#[tokio::test]
async fn upgrade_identifiers_rekeys_merges_and_reports_and_a_second_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let ids = plant(data, &legacy(), None);
    let before = profiles(data);
    assert_eq!(before.len(), 12);

    // A dry run says what a run would do, and changes nothing.
    let dry = run(data, &["upgrade-identifiers", "--dry-run"]);
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(findings(&dry), expected_findings(&ids, true), "{dry}");
    assert_eq!(profiles(data), before);

    let stdout = run(data, &["upgrade-identifiers"]);
    assert_eq!(
        findings(&stdout),
        expected_findings(&ids, false),
        "{stdout}"
    );
    assert!(
        stdout.contains("3 rekeyed, 2 merged, 2 collisions, 2 refused"),
        "{stdout}"
    );
    // The report names types and customers, never a value.
    for value in [
        "anna",
        "ａｎｎａ",
        "bob",
        "carol",
        "ｃａｒｏｌ",
        "dave",
        "+316",
        "１１１１",
        "frank",
        "ra@",
        "Ｅ-１",
        "E-1",
    ] {
        assert!(!stdout.contains(value), "{value} in\n{stdout}");
    }

    let after = profiles(data);
    let of = |i: usize| &after[&ids[i].to_string()];
    assert_eq!(identifiers(of(0)), ["email:anna@example.com"]);
    assert_eq!(identifiers(of(1)), ["email:bob@münchen.de"]);
    // Carol's two profiles are one, the older; what the other brought is there.
    assert_eq!(identifiers(of(2)), ["email:carol@example.com"]);
    assert_eq!(of(2)["merged_ids"], json!([ids[3].to_string()]));
    assert_eq!(of(2)["traits"]["first_name"]["value"], "Carol");
    assert!(!after.contains_key(&ids[3].to_string()));
    assert_eq!(
        identifiers(of(4)),
        ["account_id:E-1", "email:dave@example.com"]
    );
    assert_eq!(of(4)["merged_ids"], json!([ids[5].to_string()]));
    assert!(!after.contains_key(&ids[5].to_string()));
    // Collisions and refusals are left as they were, for a person to decide.
    for i in [6, 7, 8, 9, 10, 11] {
        assert_eq!(of(i), &before[&ids[i].to_string()], "profile {i}");
    }
    assert_eq!(after.len(), 10);

    // The ledger says the upgrade did it.
    let settings = settings_for(data);
    let store = anamnesis::startup::open_store(&settings, false).unwrap();
    let causes = |id: CustomerId| -> Vec<(String, String)> {
        store
            .history(id, None, 50)
            .unwrap()
            .into_iter()
            .map(|(_, e)| (format!("{:?}", e.kind), e.cause))
            .collect()
    };
    let merged_in = causes(ids[2]);
    assert!(
        merged_in.contains(&("MergedIn".into(), "upgrade".into())),
        "{merged_in:?}"
    );
    let rekeyed = causes(ids[0]);
    assert!(
        rekeyed.contains(&("IdentifierRemoved".into(), "upgrade".into()))
            && rekeyed.contains(&("IdentifierAdded".into(), "upgrade".into())),
        "{rekeyed:?}"
    );
    // The index leads to the canonical spellings only.
    let owner = |key: &str| {
        store
            .owner(&Identifier::from_key(key.as_bytes()).unwrap())
            .unwrap()
    };
    assert_eq!(owner("email:anna@example.com"), Some(ids[0]));
    assert_eq!(owner("email:ａｎｎａ＠ｅｘａｍｐｌｅ．ｃｏｍ"), None);
    assert_eq!(owner("email:ｃａｒｏｌ@example.com"), None);
    assert_eq!(owner("account_id:E-1"), Some(ids[4]));
    drop(store);

    // Again: nothing left to do but what only a person can decide.
    let again = run(data, &["upgrade-identifiers"]);
    let mut left: Vec<String> = expected_findings(&ids, false)
        .into_iter()
        .filter(|l| l.starts_with("collision") || l.starts_with("refused"))
        .collect();
    left.sort();
    assert_eq!(findings(&again), left, "{again}");
    assert!(
        again.contains("0 rekeyed, 0 merged, 2 collisions, 2 refused"),
        "{again}"
    );
    assert_eq!(profiles(data), after);

    // A merge the upgrade made comes apart like any other: each side gets
    // back what it brought, under its canonical spelling.
    let service = Binary::start(data, &[]);
    let admin = token_for("upgrade-test", &[Scope::Admin]);
    let (dave, absorbed) = (ids[4].to_string(), ids[5].to_string());
    let resp = service
        .request(
            &admin,
            Method::POST,
            &format!("/v1/profiles/{dave}/unmerge"),
        )
        .json(&json!({ "merged_id": absorbed }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", body(resp).await);
    let restored = body(
        service
            .get(&admin, &format!("/v1/profiles/{absorbed}"))
            .await,
    )
    .await;
    assert_eq!(
        identifiers(&restored),
        ["account_id:E-1", "email:dave@example.com"]
    );
    assert_eq!(restored["traits"]["first_name"]["value"], "Dave");
    service.stop().await;
}

/// A run that was interrupted left a checkpoint: the next goes on after
/// it, says so, and clears it once it is through, so the one after that
/// scans everything again. `--from-start` ignores it.
#[test]
fn an_interrupted_upgrade_goes_on_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("resumed");
    let ids = plant(&data, &legacy(), Some(5));
    let resumed = run(&data, &["upgrade-identifiers"]);
    assert!(
        resumed.contains(&format!("went on after {}", ids[5])),
        "{resumed}"
    );
    let later: Vec<String> = expected_findings(&ids, false)
        .into_iter()
        .filter(|l| {
            ids[6..]
                .iter()
                .any(|id| l.contains(&format!("customer={id}")))
        })
        .collect();
    assert_eq!(findings(&resumed), later, "{resumed}");
    let rest = run(&data, &["upgrade-identifiers"]);
    assert!(!rest.contains("went on after"), "{rest}");
    assert!(
        rest.contains("3 rekeyed, 2 merged, 2 collisions, 2 refused"),
        "{rest}"
    );

    let data = dir.path().join("from-start");
    let ids = plant(&data, &legacy(), Some(5));
    let all = run(&data, &["upgrade-identifiers", "--from-start"]);
    assert_eq!(findings(&all), expected_findings(&ids, false), "{all}");
}
