//! The command line an operator uses beside the service: checking a
//! configuration before a deploy, exporting every profile.

use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::helpers::binary::{token_for, Binary};
use crate::helpers::{backend_env, body, SECRET};
use anamnesis::auth::Scope;

/// Runs the binary with `args` and `env` (nothing of the caller's
/// `ANAMNESIS_*` environment leaks in).
pub fn anamnesis(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_anamnesis"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ANAMNESIS") {
            command.env_remove(key);
        }
    }
    command.args(args).envs(env.iter().copied());
    command.output().expect("the binary runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The rejects report at `path`: (line, code) of each refused line, after
/// checking every entry names a reason.
fn refused_lines(path: &std::path::Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
            (
                r["line"].as_u64().unwrap(),
                r["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `check-config` prints the configuration in effect (file and environment
/// layered over the defaults) as TOML that loads again, with every secret
/// hidden, and says it is valid.
#[test]
fn check_config_prints_the_effective_configuration_with_secrets_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("production.toml");
    std::fs::write(
        &file,
        r#"
[server]
listen = "0.0.0.0:9090"

[redis]
url = "redis://anamnesis:redis-password-123@cache.internal:6379/0"

[[auth.keys]]
kid = "bots-2026"
alg = "HS256"
secret = "a-shared-secret-of-at-least-32-bytes-xyz"

[follow_ups]
delay = "1day"

[trust.channels.web]
account_id = "verify"

[auth.channel_scopes]
store = ["pii:read"]
"#,
    )
    .unwrap();
    let out = anamnesis(
        &["--config", file.to_str().unwrap(), "check-config"],
        &[
            (
                "ANAMNESIS__AUTH__HS256_SECRET",
                "the-default-secret-of-at-least-32-bytes",
            ),
            ("ANAMNESIS__LIMITS__BURST", "7"),
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("configuration is valid"), "{stderr}");
    for secret in [
        "redis-password-123",
        "a-shared-secret-of-at-least-32-bytes-xyz",
        "the-default-secret-of-at-least-32-bytes",
    ] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
    let effective: toml::Table = stdout.parse().expect("the output is TOML");
    assert_eq!(effective["server"]["listen"].as_str(), Some("0.0.0.0:9090"));
    assert_eq!(
        effective["limits"]["burst"].as_integer(),
        Some(7),
        "environment layered"
    );
    assert_eq!(effective["follow_ups"]["delay"].as_str(), Some("1day"));
    assert_eq!(
        effective["redis"]["url"].as_str(),
        Some("redis://<hidden>@cache.internal:6379/0")
    );
    assert_eq!(effective["auth"]["hs256_secret"].as_str(), Some("<hidden>"));
    assert_eq!(
        effective["auth"]["keys"][0]["secret"].as_str(),
        Some("<hidden>")
    );
    // Built-in defaults are there too.
    assert_eq!(effective["phone"]["default_region"].as_str(), Some("NL"));

    // The trust table in effect, one caller a line, the file's row layered
    // over the default one.
    let row = |caller: &str| -> Vec<String> {
        let line = stdout
            .lines()
            .find(|l| l.trim_start_matches('#').trim_start().starts_with(caller))
            .unwrap_or_else(|| panic!("no row for {caller}:\n{stdout}"));
        line.trim_start_matches('#')
            .trim_start()
            .trim_start_matches(caller)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let header = row("caller");
    let level = |caller: &str, kind: &str| {
        let column = header.iter().position(|h| h == kind).unwrap();
        row(caller)[column].clone()
    };
    assert_eq!(level("web ", "account_id"), "verify");
    assert_eq!(level("web ", "web_cookie"), "verify");
    assert_eq!(level("web ", "email"), "claim");
    assert_eq!(level("ivr ", "phone"), "verify");
    assert_eq!(level("ivr ", "email"), "claim");
    assert_eq!(level("(no channel claim)", "email"), "verify");

    // The sensitive scopes each channel's tokens may carry, after the trust
    // table: the file's allowance beside the default one.
    let allowances = stdout
        .split("# Sensitive scopes")
        .nth(1)
        .unwrap_or_else(|| panic!("no channel scope table:\n{stdout}"));
    let allowed = |channel: &str| -> Vec<String> {
        allowances
            .lines()
            .map(|l| {
                l.trim_start_matches('#')
                    .split_whitespace()
                    .collect::<Vec<_>>()
            })
            .find(|words| words.first() == Some(&channel))
            .unwrap_or_else(|| panic!("no allowance row for {channel}:\n{allowances}"))[1..]
            .iter()
            .map(|w| w.to_string())
            .collect()
    };
    assert_eq!(allowed("agent"), ["pii:read", "identity:write"]);
    assert_eq!(allowed("store"), ["pii:read"]);
    assert_eq!(allowed("web"), ["none"]);
    assert_eq!(allowed("chatbot"), ["none"]);
}

/// Minting refuses a channel token with a scope its channel may not carry
/// (the service would refuse it on every request), and mints a customer's
/// own token.
#[test]
fn token_refuses_what_the_service_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let env = [
        ("ANAMNESIS__STORAGE__PATH", data),
        ("ANAMNESIS__AUTH__HS256_SECRET", SECRET),
    ];
    for scope in ["pii:read", "profiles:read identity:write", "admin"] {
        let out = anamnesis(&["token", "--channel", "web", "--scope", scope], &env);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{scope} was minted for web");
        assert!(stderr.contains("auth.channel_scopes"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    let out = anamnesis(
        &[
            "token",
            "--channel",
            "agent",
            "--scope",
            "profiles:read pii:read identity:write",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = anamnesis(&["token", "--customer", "account_id:C-1001"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = anamnesis(&["token", "--customer", "C-1001"], &env);
    assert!(text(&out.stderr).contains("TYPE:VALUE"));
}

/// A bad configuration exits non-zero naming what is wrong, before any
/// deploy: a bad value, an unknown key, a key file that cannot be read.
#[test]
fn check_config_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[server]\nlisen = \"0.0.0.0:1\"\n", "lisen"),
        (
            "[[auth.keys]]\nkid = \"desk\"\nalg = \"RS256\"\npublic_key_file = \"/nonexistent/desk.pem\"\n",
            "/nonexistent/desk.pem",
        ),
        (
            "[offers.ghost]\ntitle = \"Boo\"\nsegments = [\"nobody\"]\n",
            "offers.ghost.segments",
        ),
    ];
    for (i, (body, named)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&file, body).unwrap();
        let out = anamnesis(&["--config", file.to_str().unwrap(), "check-config"], &[]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{body} was accepted");
        assert!(stderr.contains(named), "{body}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "nothing printed for a bad configuration"
        );
    }
}

/// `export` writes every profile, as the API shows it with `pii:read`, one
/// JSON object per line, from the store of a stopped service; with the
/// service running it refuses and says why.
#[tokio::test]
async fn export_writes_every_profile_as_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let service = Binary::start(dir.path(), &[]);
    let admin = token_for("cli-test", &[Scope::Admin]);
    let mut ids = Vec::new();
    for i in 0..5 {
        let signal = json!({
            "channel": "web",
            "identifiers": [{"type": "email", "value": format!("person{i}@example.com")},
                            {"type": "phone", "value": format!("06 1234 56{i:02}")}],
            "traits": {"first_name": format!("Person {i}")},
        });
        ids.push(service.ingest(&admin, &signal).await);
    }
    // One more signal joins two of them: four profiles remain.
    let joining = json!({
        "channel": "chat",
        "identifiers": [{"type": "email", "value": "person0@example.com"},
                        {"type": "account_id", "value": "C-1"},
                        {"type": "email", "value": "person1@example.com"}],
    });
    service.ingest(&admin, &joining).await;
    let mut expected: Vec<Value> = Vec::new();
    for id in &ids {
        // A merged-away id leads to the survivor: keep each profile once.
        let p = body(service.get(&admin, &format!("/v1/profiles/{id}")).await).await;
        if !expected
            .iter()
            .any(|e| e["customer_id"] == p["customer_id"])
        {
            expected.push(p);
        }
    }
    assert_eq!(expected.len(), 4);
    let data = dir.path().to_str().unwrap();
    let backend = backend_env(dir.path());
    let mut env = vec![
        ("ANAMNESIS__STORAGE__PATH", data),
        ("ANAMNESIS__AUTH__HS256_SECRET", SECRET),
    ];
    env.extend(backend.iter().map(|(k, v)| (*k, v.as_str())));
    let beside = anamnesis(&["export"], &env);
    if backend.is_empty() {
        assert!(!beside.status.success(), "the store is in use");
        assert!(
            text(&beside.stderr).contains("is the service running?"),
            "{}",
            text(&beside.stderr)
        );
    } else {
        // A shared store has no owner: the export runs beside the service.
        assert!(beside.status.success(), "{}", text(&beside.stderr));
        assert_eq!(text(&beside.stdout).lines().count(), 4);
    }
    service.stop().await;

    let file = dir.path().join("profiles.ndjson");
    let out = anamnesis(&["export", "--out", file.to_str().unwrap()], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("exported 4 profiles"),
        "{}",
        text(&out.stderr)
    );
    let written = std::fs::read_to_string(&file).unwrap();
    let mut exported: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    let key = |p: &Value| p["customer_id"].as_str().unwrap().to_owned();
    exported.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(exported, expected);
    assert!(written.contains("+31612345600"), "phone numbers in clear");
    // To standard output when no file is given.
    let out = anamnesis(&["export"], &env);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), written);
}

/// The profiles in the store of `data`, through `anamnesis export`.
fn exported(env: &[(&str, &str)]) -> Vec<Value> {
    let out = anamnesis(&["export"], env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `import` loads NDJSON signals through the API's validation and
/// resolution: good lines become profiles (merging where they link), every
/// refused line is reported with its number and the API's error code, and
/// `--from-line` resumes part-way.
#[test]
fn import_loads_signals_reports_refusals_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let file = dir.path().join("crm.ndjson");
    let lines = [
        r#"{"signal_id": "crm-1", "channel": "import", "identifiers": [{"type": "email", "value": "Anna@Example.com"}], "traits": {"first_name": "Anna"}}"#,
        r#"{"signal_id": "crm-2", "channel": "import", "identifiers": [{"type": "phone", "value": "06 1234 5678"}, {"type": "email", "value": "anna@example.com"}]}"#,
        r#"{"signal_id": "crm-3", "channel": "import", "identifiers": [{"type": "email", "value": "bob@example.com"}]"#,
        "",
        r#"{"signal_id": "crm-5", "channel": "import", "identifiers": [{"type": "phone", "value": "12"}]}"#,
        r#"{"signal_id": "crm-6", "channel": "import", "colour": "red", "identifiers": [{"type": "email", "value": "carol@example.com"}]}"#,
        r#"{"signal_id": "crm-7", "channel": "import", "identifiers": [{"type": "email", "value": "dave@example.com"}], "event": {"type": "order_placed", "episode": {"id": "o-7", "status": "resolved"}}}"#,
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let data_path = data.to_str().unwrap();
    let env = [
        ("ANAMNESIS__STORAGE__PATH", data_path),
        ("ANAMNESIS__AUTH__HS256_SECRET", SECRET),
    ];
    // The store does not exist yet: the import makes it.
    let out = anamnesis(&["import", file.to_str().unwrap(), "--batch", "2"], &env);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("3 signals imported"), "{stdout}");
    assert!(
        stdout.contains("2 created a profile, 1 joined one"),
        "{stdout}"
    );
    assert!(stdout.contains("3 lines refused"), "{stdout}");
    let report = std::fs::read_to_string(dir.path().join("crm.ndjson.rejects.ndjson")).unwrap();
    let refused: Vec<(u64, String)> = report
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
            assert!(
                r["input"].as_str().is_some_and(|i| i.starts_with('{')),
                "{r}"
            );
            (
                r["line"].as_u64().unwrap(),
                r["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        [
            (3, "malformed_json".to_owned()),
            (5, "invalid_identifier".to_owned()),
            (6, "unknown_field".to_owned()),
        ]
    );
    let profiles = exported(&env);
    assert_eq!(profiles.len(), 2, "anna (email and phone) and dave");
    let anna = profiles
        .iter()
        .find(|p| p["traits"]["first_name"]["value"] == "Anna")
        .expect("anna imported");
    assert_eq!(anna["identifiers"].as_array().unwrap().len(), 2);
    let dave = profiles.iter().find(|p| p != &anna).unwrap();
    assert_eq!(dave["episodes"][0]["status"], "resolved");

    // Resuming on a fresh store from line 5 leaves the first lines out.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let fresh_env = [
        ("ANAMNESIS__STORAGE__PATH", fresh.to_str().unwrap()),
        ("ANAMNESIS__AUTH__HS256_SECRET", SECRET),
    ];
    let rejects = dir.path().join("second.rejects");
    let out = anamnesis(
        &[
            "import",
            file.to_str().unwrap(),
            "--from-line",
            "5",
            "--rejects",
            rejects.to_str().unwrap(),
        ],
        &fresh_env,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("1 signals imported"), "{stdout}");
    let profiles = exported(&fresh_env);
    assert_eq!(profiles.len(), 1, "only dave, from line 7");
    assert_eq!(
        std::fs::read_to_string(&rejects).unwrap().lines().count(),
        2
    );
}

/// An import interrupted (Ctrl-C) stops between batches, says which line to
/// go on from, and going on from there ends with every signal imported once.
#[test]
fn an_interrupted_import_says_where_to_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.ndjson");
    let total = 8000;
    let lines: Vec<String> = (0..total)
        .map(|i| {
            json!({"signal_id": format!("m-{i}"), "channel": "import",
                   "identifiers": [{"type": "email", "value": format!("m{i}@example.com")}]})
            .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let data = dir.path().join("data");
    let env = [
        ("ANAMNESIS__STORAGE__PATH", data.to_str().unwrap()),
        ("ANAMNESIS__AUTH__HS256_SECRET", SECRET),
    ];
    // Interrupted once the import is under way. An interrupt that lands
    // before the first batch is answered "go on with --from-line 1" (nothing
    // imported, which is also right); then the import is started again and
    // given longer, until one was interrupted midway.
    let mut wait = std::time::Duration::from_millis(500);
    let (next, stdout) = loop {
        let child = Command::new(env!("CARGO_BIN_EXE_anamnesis"))
            .args(["import", file.to_str().unwrap(), "--batch", "100"])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(wait);
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        let stdout = text(&out.stdout);
        assert!(
            !out.status.success(),
            "interrupted is not success: {stdout}"
        );
        let next: u64 = stdout
            .split("go on with --from-line ")
            .nth(1)
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("no line to go on from: {stdout}"));
        if next > 1 || wait > std::time::Duration::from_secs(30) {
            break (next, stdout);
        }
        assert_eq!(exported(&env).len(), 0, "nothing is in before line 1");
        wait *= 2;
    };
    assert!(next > 1 && next <= total, "{stdout}");
    assert_eq!((next - 1) % 100, 0, "a whole number of batches: {stdout}");
    let done = exported(&env).len() as u64;
    assert_eq!(done, next - 1, "exactly the lines before it are in");

    let out = anamnesis(
        &[
            "import",
            file.to_str().unwrap(),
            "--from-line",
            &next.to_string(),
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(exported(&env).len() as u64, total);
}

/// A CSV export of a CRM imports with a column mapping: identifiers,
/// traits and answers from named columns, empty cells left out, and a row
/// that identifies nobody or holds a bad phone number refused with the
/// API's code and its line.
#[test]
fn a_csv_imports_through_a_column_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crm.csv");
    std::fs::write(
        &file,
        "id,E-mail,phone,first,reason,internal\n\
         c-1,anna@example.com,06 1234 5678,Anna,delivery,x\n\
         c-2,,0612345678,,,y\n\
         c-3,bob@example.com,12,Bob,,z\n\
         c-4,,,Nobody,,w\n\
         \"c-5\",\"carol@example.com\",,\"Carol, Jr.\",,v\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let env = [
        ("ANAMNESIS__STORAGE__PATH", data.to_str().unwrap()),
        ("ANAMNESIS__AUTH__HS256_SECRET", SECRET),
    ];
    let map = [
        "--map",
        "id=signal_id",
        "--map",
        "E-mail=identifier:email",
        "--map",
        "phone=identifier:phone",
        "--map",
        "first=trait:first_name",
        "--map",
        "reason=answer:reason_for_contact",
    ];
    let mut args = vec!["import", file.to_str().unwrap(), "--channel", "store"];
    args.extend(map);
    let out = anamnesis(&args, &env);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("3 signals imported"), "{stdout}");
    assert!(
        stdout.contains("2 created a profile, 1 joined one"),
        "{stdout}"
    );
    let refused = refused_lines(&dir.path().join("crm.csv.rejects.ndjson"));
    assert_eq!(
        refused,
        [
            (4, "invalid_identifier".to_owned()),
            (5, "no_identifiers".to_owned())
        ]
    );
    let profiles = exported(&env);
    assert_eq!(profiles.len(), 2, "anna (two rows, one phone) and carol");
    let anna = profiles
        .iter()
        .find(|p| p["traits"]["first_name"]["value"] == "Anna")
        .unwrap();
    assert_eq!(anna["answers"]["reason_for_contact"]["value"], "delivery");
    assert!(
        anna["channels"]["store"]["first_seen"].is_string(),
        "the --channel of the rows"
    );
    assert!(profiles
        .iter()
        .any(|p| p["traits"]["first_name"]["value"] == "Carol, Jr."));

    // A mapping that names a column the file does not have, or a target
    // that does not exist, stops at once.
    for (mapping, said) in [
        ("mail=identifier:email", "no column `mail`"),
        ("phone=identifiers:phone", "is not a target"),
    ] {
        let out = anamnesis(&["import", file.to_str().unwrap(), "--map", mapping], &env);
        assert!(!out.status.success(), "{mapping}");
        assert!(text(&out.stderr).contains(said), "{}", text(&out.stderr));
    }
}

/// Every command explains itself with `--help`, and the top level lists them all.
#[test]
fn every_command_has_help() {
    let commands = [
        "serve",
        "openapi",
        "token",
        "check-config",
        "import",
        "export",
        "store-stats",
        "upgrade-identifiers",
        "healthcheck",
    ];
    let top = anamnesis(&["--help"], &[]);
    assert!(top.status.success());
    let listed = text(&top.stdout);
    for command in commands {
        assert!(
            listed.contains(command),
            "`{command}` not listed:\n{listed}"
        );
        let out = anamnesis(&[command, "--help"], &[]);
        let help = text(&out.stdout);
        assert!(
            out.status.success(),
            "{command} --help: {}",
            text(&out.stderr)
        );
        assert!(help.contains("Usage:"), "{command} --help:\n{help}");
    }
    let import = text(&anamnesis(&["import", "--help"], &[]).stdout);
    for option in ["--from-line", "--map", "--rejects", "--csv", "--batch"] {
        assert!(import.contains(option), "import --help lacks {option}");
    }
}

/// Awkward files: a byte-order mark, a line that is not UTF-8, a line far
/// over the API's body limit (refused without being held whole), Windows
/// line endings. Each bad line is reported and the rest goes in; a resumed
/// run adds to the earlier report instead of wiping it.
#[test]
fn awkward_lines_are_refused_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("awkward.ndjson");
    let good = |i: u32| {
        json!({"signal_id": format!("a-{i}"), "channel": "import",
               "identifiers": [{"type": "email", "value": format!("a{i}@example.com")}]})
        .to_string()
    };
    let mut bytes = b"\xef\xbb\xbf".to_vec();
    bytes.extend(good(1).as_bytes());
    bytes.extend(b"\r\n");
    bytes.extend(b"{\"channel\": \"import\", \"identifiers\": [{\"type\": \"email\", \"value\": \"caf\xe9@example.com\"}]}\r\n");
    bytes.extend(
        format!(
            "{{\"channel\": \"import\", \"traits\": {{\"x\": \"{}\"}}}}\n",
            "y".repeat(200_000)
        )
        .as_bytes(),
    );
    bytes.extend(good(4).as_bytes());
    std::fs::write(&file, bytes).unwrap();
    let data = dir.path().join("data");
    let env = [
        ("ANAMNESIS__STORAGE__PATH", data.to_str().unwrap()),
        ("ANAMNESIS__AUTH__HS256_SECRET", SECRET),
    ];
    let out = anamnesis(&["import", file.to_str().unwrap()], &env);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("2 signals imported"), "{stdout}");
    let report_path = dir.path().join("awkward.ndjson.rejects.ndjson");
    let first = refused_lines(&report_path);
    assert_eq!(
        first,
        [
            (2, "malformed_json".to_owned()),
            (3, "payload_too_large".to_owned())
        ]
    );
    assert_eq!(exported(&env).len(), 2);
    // Going on from line 3 reports line 3 again, after what was there.
    let out = anamnesis(
        &["import", file.to_str().unwrap(), "--from-line", "3"],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut expected = first.clone();
    expected.push((3, "payload_too_large".to_owned()));
    assert_eq!(refused_lines(&report_path), expected);
}
