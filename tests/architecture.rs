//! The arrows between the layers point one way: `routes → service →
//! {domain, store, cache, events}`, the domain imports nothing above it,
//! and the command line's data commands never reach the HTTP layer. This
//! test reads `src/` and fails on any reference that breaks a rule (a
//! `use`, a `pub use` or an inline `crate::…` path), naming the file, the
//! edge and the rule. `docs/architecture.md` draws the same picture.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Modules of the HTTP edge: only `routes`, `startup` and the `serve` and
/// `openapi` commands may build on them. (`auth` holds keys and tokens as
/// well as the request extractors: the `token` and `backup` commands mint
/// with it, so it is below the command line but above the service.)
const HTTP: &[&str] = &[
    "routes",
    "startup",
    "openapi",
    "error",
    "middleware",
    "conn",
    "audit",
];

/// Crates of the storage engines and the web framework.
const ENGINES: &[&str] = &["actix_web", "actix_http", "sled", "redis", "tokio_postgres"];

/// One rule: files of `from` (a top-level module, or `cli` minus the
/// commands allowed the HTTP layer) may not refer to these modules or crates.
struct Rule {
    from: &'static str,
    why: &'static str,
    modules: Vec<&'static str>,
    crates: &'static [&'static str],
}

fn rules() -> Vec<Rule> {
    let above_lower = [
        "service",
        "routes",
        "cli",
        "startup",
        "openapi",
        "error",
        "middleware",
        "conn",
        "audit",
        "auth",
        "backup",
        "import",
    ];
    let mut rules = vec![
        Rule {
            from: "domain",
            why: "the domain is pure: it imports nothing from the crate outside itself, and no engine",
            modules: vec![
                "config", "store", "cache", "events", "service", "routes", "cli", "startup",
                "openapi", "error", "middleware", "conn", "audit", "auth", "telemetry", "backup",
                "import",
            ],
            crates: ENGINES,
        },
        Rule {
            from: "config",
            why: "settings are read, not acted on: config builds on the domain only",
            modules: vec![
                "store", "cache", "events", "service", "routes", "cli", "startup", "openapi",
                "error", "middleware", "conn", "audit", "auth", "telemetry",
            ],
            crates: &["actix_web", "actix_http", "sled"],
        },
        Rule {
            from: "telemetry",
            why: "logging sits below every layer that logs",
            modules: above_lower.iter().chain(&["store", "cache", "events"]).copied().collect(),
            crates: &[],
        },
        Rule {
            from: "service",
            why: "the use cases know nothing of HTTP: routes call the service, never the reverse",
            modules: HTTP.iter().chain(&["auth", "cli", "backup", "import"]).copied().collect(),
            crates: &["actix_web", "actix_http"],
        },
        Rule {
            from: "routes",
            why: "handlers go through the service, never straight to the store or the command line",
            modules: vec!["store", "cli", "startup"],
            crates: &[],
        },
        Rule {
            from: "cli",
            why: "the data commands call the service and the store; only serve and openapi touch HTTP",
            modules: HTTP.to_vec(),
            crates: &["actix_web", "actix_http"],
        },
    ];
    for lower in ["store", "cache", "events"] {
        rules.push(Rule {
            from: lower,
            why: "the store, the cache and the event bus sit below the use cases",
            modules: above_lower.to_vec(),
            crates: &["actix_web", "actix_http"],
        });
    }
    rules
}

/// The commands of `cli` that serve HTTP or describe it.
const CLI_ALLOWED_HTTP: &[&str] = &["cli/serve.rs", "cli/openapi.rs"];

/// Every broken rule under `src`, one line each.
fn violations(src: &Path) -> Vec<String> {
    let rules = rules();
    let mut found = Vec::new();
    for file in rust_files(src) {
        let relative = file
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let layer = relative
            .split(['/', '.'])
            .next()
            .unwrap_or_default()
            .to_owned();
        if CLI_ALLOWED_HTTP.contains(&relative.as_str()) {
            continue;
        }
        let text = without_comments(&std::fs::read_to_string(&file).unwrap());
        let modules = crate_references(&text);
        for rule in rules.iter().filter(|r| r.from == layer) {
            for module in &modules {
                if rule.modules.contains(&module.as_str()) {
                    found.push(format!("{relative}: {layer} -> {module} ({})", rule.why));
                }
            }
            for engine in rule.crates {
                if mentions_crate(&text, engine) {
                    found.push(format!("{relative}: {layer} -> {engine} ({})", rule.why));
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The text without `//` comments (doc comments included: they name other
/// modules in prose and links, which is no dependency). A `//` inside a
/// string (`"redis://"`) is kept: only one after white space or at the
/// start of a line begins a comment.
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            let bytes = line.as_bytes();
            let cut = (0..bytes.len().saturating_sub(1)).find(|&i| {
                bytes[i] == b'/'
                    && bytes[i + 1] == b'/'
                    && (i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t')
                    && line[..i].matches('"').count() % 2 == 0
            });
            match cut {
                Some(i) => &line[..i],
                None => line,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a text names through `crate::`, also inside a
/// group (`use crate::{a::X, b::{Y, Z}}`).
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let preceded = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        // `anamnesis_crate::` or a longer word ending in "crate" is not ours.
        if preceded.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && c == ',' {
                    modules.insert(first_segment(&item));
                    item.clear();
                } else {
                    item.push(c);
                }
            }
            modules.insert(first_segment(&item));
        } else {
            modules.insert(first_segment(rest));
        }
    }
    modules.remove("");
    modules
}

fn first_segment(path: &str) -> String {
    path.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Whether `name::` appears as a path start (not as the tail of a longer word).
fn mentions_crate(text: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    text.match_indices(&needle).any(|(at, _)| {
        !text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

#[test]
fn the_arrows_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "references that break the layering:\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn a_forbidden_edge_is_found_and_named() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/architecture/src");
    let found = violations(&fixture);
    let expected = [
        "domain/rules.rs: domain -> config",
        "domain/rules.rs: domain -> sled",
        "domain/rules.rs: domain -> store",
        "store/mod.rs: store -> service",
        "cli/import.rs: cli -> routes",
        "service/mod.rs: service -> actix_web",
    ];
    for edge in expected {
        assert!(
            found.iter().any(|f| f.starts_with(edge)),
            "{edge} not found in {found:#?}"
        );
    }
    // What the fixture does within the rules is not reported: the domain's
    // own modules, the serve command's HTTP, what comments mention.
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn grouped_and_inline_paths_are_read() {
    let refs = crate_references(
        "use crate::{domain::{A, B}, store::Store};\nlet x = crate::cache::get();\nmy_crate::no();",
    );
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["cache", "domain", "store"]
    );
    assert_eq!(
        without_comments("let u = \"redis://x\"; // crate::routes\n/// crate::cli"),
        "let u = \"redis://x\"; \n"
    );
}
