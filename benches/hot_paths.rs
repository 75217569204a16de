//! What every request pays for: normalising identifiers, validating a signal,
//! reconciling traits, building a context card, verifying a token, and resolving
//! a signal end to end against a store of 10,000 profiles.
//!
//! `cargo bench --bench hot_paths`; each benchmark measures for a few seconds
//! only, so the whole run takes a few minutes on two cores.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anamnesis::auth::{Authenticator, Scope};
use anamnesis::config::Settings;
use anamnesis::domain::TimelinePosition;
use anamnesis::domain::{
    Answer, AnswerInput, CustomerId, EpisodeInput, EpisodeReport, EpisodeStatus, EventInput,
    Identifier, IdentifierInput, IdentifierRules, Interaction, NormaliseOutcome, Profile, Signal,
    SignalInput, SignalRules, TraitValue,
};
use anamnesis::routes::extract::parse_json;
use anamnesis::service::views;
use anamnesis::service::{Access, BatchItem, Caller, FieldRules, Masking, Services};
use anamnesis::store::SledStore;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode};
use serde_json::{json, Value};

/// Profiles in the store the end-to-end benchmarks resolve against.
const POPULATION: u64 = 10_000;

fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 9, 0, 0).unwrap() + TimeDelta::minutes(minutes)
}

fn identifier(rules: &IdentifierRules, kind: &str, raw: &str) -> Identifier {
    match rules.normalise(kind, raw) {
        Ok(NormaliseOutcome::Usable(id)) => id,
        Ok(NormaliseOutcome::Ignored(r)) => panic!("{kind}:{raw} ignored: {r}"),
        Err(e) => panic!("{kind}:{raw}: {e}"),
    }
}

fn normalise(c: &mut Criterion) {
    let settings = Settings::defaults();
    let rules = settings.signal_rules().expect("valid rules").identifiers;
    let mut group = c.benchmark_group("normalise");
    for (kind, raw) in [
        ("phone", "06 1234 5678"),
        ("phone", "+31 6 12345678"),
        ("phone", "0031612345678"),
        ("phone", "(06) 12345678"),
        ("phone", "+44 20 7946 0958"),
        ("email", " Anna.Bakker@Example.COM "),
        ("web_cookie", " 9f1c2e7a-3b44-4c1e-9d1a-5e6f7a8b9c0d "),
    ] {
        group.bench_with_input(BenchmarkId::new(kind, raw.trim()), &raw, |b, raw| {
            b.iter(|| rules.normalise(kind, black_box(raw)))
        });
    }
    // Phone spellings repeat in practice and are remembered (the cases above
    // measure that); a spelling seen for the first time pays the parse and
    // validation. 200,000 distinct spellings are more than are remembered.
    let fresh: Vec<String> = (0..200_000u64)
        .map(|i| format!("06 {:04} {:04}", 1000 + i / 10_000, i % 10_000))
        .collect();
    let mut next = 0;
    group.bench_function("phone/first sight", |b| {
        b.iter(|| {
            next = (next + 1) % fresh.len();
            rules.normalise("phone", black_box(&fresh[next]))
        })
    });
    group.finish();
}

/// A signal as an IVR-then-chatbot hand-over sends it: three identifiers,
/// traits, answers and an event with an episode.
fn full_signal(signal_id: Option<String>, phone: &str, cookie: &str) -> SignalInput {
    let mut properties = serde_json::Map::new();
    properties.insert("menu_path".into(), json!("2-1"));
    properties.insert("queue".into(), json!("deliveries"));
    SignalInput {
        signal_id,
        channel: "chat".into(),
        occurred_at: Some(Utc::now() - TimeDelta::seconds(1)),
        identifiers: vec![
            IdentifierInput {
                kind: "phone".into(),
                value: phone.into(),
                verified: false,
            },
            IdentifierInput {
                kind: "web_cookie".into(),
                value: cookie.into(),
                verified: false,
            },
            IdentifierInput {
                kind: "chat_session".into(),
                value: format!("chat-{cookie}"),
                verified: false,
            },
        ],
        traits: [
            ("preferred_language", json!("nl")),
            ("first_name", json!("Anna")),
            ("tier", json!("gold")),
            ("newsletter", json!(true)),
            ("nickname", Value::Null),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        answers: vec![
            AnswerInput {
                key: "reason_for_contact".into(),
                value: json!("delivery"),
                question: Some("Why are you contacting us?".into()),
                expires_at: None,
            },
            AnswerInput {
                key: "order_number".into(),
                value: json!("A-1001"),
                question: None,
                expires_at: None,
            },
        ],
        event: Some(EventInput {
            kind: "call_started".into(),
            summary: Some("Caller chose 'deliveries'".into()),
            episode: Some(EpisodeInput {
                id: "order-A-1001".into(),
                title: Some("Delivery of order A-1001".into()),
                status: Some(EpisodeStatus::Open),
                public_status: Some("Out for delivery".into()),
                feedback: None,
            }),
            journey_stage: None,
            properties,
        }),
    }
}

fn parse_signal(c: &mut Criterion) {
    let settings = Settings::defaults();
    let rules = settings.signal_rules().expect("valid rules");
    let input = full_signal(Some("chat-1".into()), "06 1234 5678", "ck-1");
    c.bench_function("signal/parse", |b| {
        b.iter_batched(
            || input.clone(),
            |input| Signal::parse(input, &rules, Utc::now()).expect("valid"),
            BatchSize::SmallInput,
        )
    });
    // The body of that signal as it arrives, read as every JSON body is
    // read (strictly, with the JSON path of any fault).
    let body = serde_json::to_vec(&json!({
        "signal_id": "chat-1",
        "channel": "chat",
        "occurred_at": "2025-03-01T09:00:00Z",
        "identifiers": [
            {"type": "phone", "value": "06 1234 5678"},
            {"type": "web_cookie", "value": "ck-1"},
            {"type": "chat_session", "value": "chat-ck-1"},
        ],
        "traits": {
            "preferred_language": "nl", "first_name": "Anna", "tier": "gold",
            "newsletter": true, "nickname": null,
        },
        "answers": [
            {"key": "reason_for_contact", "value": "delivery",
             "question": "Why are you contacting us?"},
            {"key": "order_number", "value": "A-1001"},
        ],
        "event": {
            "type": "call_started",
            "summary": "Caller chose 'deliveries'",
            "episode": {"id": "order-A-1001", "title": "Delivery of order A-1001",
                        "status": "open", "public_status": "Out for delivery"},
            "properties": {"menu_path": "2-1", "queue": "deliveries"},
        },
    }))
    .expect("serialises");
    c.bench_function("signal/json", |b| {
        b.iter(|| parse_json::<SignalInput>(black_box(&body)).expect("valid"))
    });
    // The typed parse alone, as `parse_json` was before it refused
    // duplicate keys: what that check costs, measured in the same run.
    c.bench_function("signal/json_typed_only", |b| {
        b.iter(|| {
            let mut de = serde_json::Deserializer::from_slice(black_box(&body));
            let input: SignalInput = serde_path_to_error::deserialize(&mut de).expect("valid");
            de.end().expect("one document");
            input
        })
    });
}

fn trait_value(value: Value, channel: &str, minutes: i64, signal: &str) -> TraitValue {
    TraitValue {
        value: Some(value),
        channel: channel.into(),
        observed_at: at(minutes),
        signal_id: Some(signal.into()),
    }
}

/// A profile with `traits` traits (half of them overlapping with a profile
/// built with the other `offset`), ten identifiers, answers, channels, episodes.
fn rich_profile(rules: &SignalRules, traits: usize, offset: i64, tag: &str) -> Profile {
    let channels = &rules.channels;
    let mut p = Profile::new(CustomerId::generate(), at(0));
    for i in 0..10 {
        let id = identifier(&rules.identifiers, "web_cookie", &format!("{tag}-ck-{i}"));
        p.see_identifier(&id, "web", at(i), false, channels);
    }
    for i in 0..traits {
        // Alternate which side holds the later value, so absorb both keeps and replaces.
        let minutes = (i as i64 % 2) * offset + i as i64;
        let name = if i % 2 == 0 {
            format!("shared.trait_{i}")
        } else {
            format!("{tag}.trait_{i}")
        };
        p.set_trait(
            &name,
            trait_value(json!(format!("{tag}-{i}")), "web", minutes, tag),
            channels,
        );
    }
    for key in ["reason_for_contact", "order_number"] {
        p.set_answer(
            key,
            Answer {
                value: json!(format!("{tag}-{key}")),
                question: None,
                channel: "chat".into(),
                captured_at: at(offset),
                expires_at: None,
                signal_id: None,
            },
            channels,
        );
    }
    for (i, channel) in ["web", "chat", "ivr"].into_iter().enumerate() {
        p.touch_channel(channel, at(offset + i as i64), 3);
    }
    p.upsert_episode(
        "order-A-1001",
        EpisodeReport {
            title: Some("Delivery of order A-1001"),
            status: Some(EpisodeStatus::Open),
            ..EpisodeReport::default()
        },
        "chat",
        at(offset),
        channels,
    );
    p
}

fn reconcile(c: &mut Criterion) {
    let settings = Settings::defaults();
    let rules = settings.signal_rules().expect("valid rules");
    let channels = &rules.channels;
    let mut group = c.benchmark_group("reconcile");

    let base = rich_profile(&rules, 100, 0, "a");
    let newer = trait_value(json!("en"), "agent", 500, "sig-new");
    let older = trait_value(json!("de"), "web", -500, "sig-old");
    group.bench_function("set_trait/wins", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |p| p.set_trait("shared.trait_50", newer.clone(), channels),
            BatchSize::SmallInput,
        )
    });
    let mut p = base.clone();
    group.bench_function("set_trait/loses", |b| {
        b.iter(|| p.set_trait("shared.trait_50", black_box(older.clone()), channels))
    });

    let survivor = rich_profile(&rules, 100, 0, "a");
    let absorbed = rich_profile(&rules, 100, 7, "b");
    group.bench_function("absorb/100_traits_each", |b| {
        b.iter_batched_ref(
            || survivor.clone(),
            |s| s.absorb(black_box(&absorbed), channels),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn card_profile(rules: &SignalRules) -> (Profile, Vec<Interaction>) {
    let channels = &rules.channels;
    let ids = &rules.identifiers;
    let mut p = Profile::new(CustomerId::generate(), at(0));
    let raw = [
        ("account_id", "C-1001".to_owned()),
        ("email", "anna@example.com".to_owned()),
        ("email", "a.bakker@work.example.org".to_owned()),
        ("phone", "06 1234 5678".to_owned()),
        ("phone", "020 123 4567".to_owned()),
        ("loyalty_card", "LC-0001".to_owned()),
    ];
    let more = (0..14).map(|i| {
        let kind = ["device_id", "chat_session", "web_cookie"][i % 3];
        (kind, format!("{kind}-{i:04}"))
    });
    for (i, (kind, value)) in raw.into_iter().chain(more).enumerate() {
        p.see_identifier(
            &identifier(ids, kind, &value),
            "web",
            at(i as i64),
            false,
            channels,
        );
    }
    for (i, (name, value)) in [
        ("first_name", json!("Anna")),
        ("last_name", json!("Bakker")),
        ("date_of_birth", json!("1987-04-12")),
        ("postal_code", json!("1011AB")),
        ("preferred_language", json!("nl")),
        ("tier", json!("gold")),
        ("newsletter", json!(true)),
        ("lifetime_value", json!(1234.5)),
    ]
    .into_iter()
    .chain((0..12).map(|i| (["pref.a", "pref.b", "pref.c"][i % 3], json!(i))))
    .enumerate()
    {
        let name = if name.starts_with("pref.") {
            format!("{name}_{i}")
        } else {
            name.to_owned()
        };
        p.set_trait(
            &name,
            trait_value(value, "agent", i as i64, "sig"),
            channels,
        );
    }
    for (key, value) in [
        ("reason_for_contact", "delivery"),
        ("order_number", "A-1001"),
    ] {
        p.set_answer(
            key,
            Answer {
                value: json!(value),
                question: Some("Why are you calling?".into()),
                channel: "ivr".into(),
                captured_at: Utc::now(),
                expires_at: Some(Utc::now() + TimeDelta::days(1)),
                signal_id: Some("ivr-1".into()),
            },
            channels,
        );
    }
    for (i, ep) in ["order-A-1001", "case-7", "case-8"].into_iter().enumerate() {
        let status = [
            EpisodeStatus::Open,
            EpisodeStatus::WaitingOnUs,
            EpisodeStatus::Resolved,
        ][i];
        p.upsert_episode(
            ep,
            EpisodeReport {
                title: Some("An episode"),
                status: Some(status),
                ..EpisodeReport::default()
            },
            "chat",
            at(i as i64),
            channels,
        );
    }
    let recent: Vec<Interaction> = (0..10u64)
        .rev()
        .map(|i| {
            let channel = ["ivr", "chat", "web", "store"][i as usize % 4];
            p.touch_channel(channel, at(i as i64), 1);
            let mut properties = serde_json::Map::new();
            properties.insert("menu_path".into(), json!("2-1"));
            Interaction {
                id: TimelinePosition {
                    millis: at(i as i64).timestamp_millis() as u64,
                    seq: i,
                }
                .to_id(),
                channel: channel.into(),
                kind: "call_started".into(),
                occurred_at: at(i as i64),
                summary: Some("Caller chose 'deliveries'".into()),
                episode_id: Some("order-A-1001".into()),
                journey_stage: Some("service".into()),
                properties,
                signal_id: Some(format!("sig-{i}")),
                received_at: None,
            }
        })
        .collect();
    (p, recent)
}

fn context_card(c: &mut Criterion) {
    let settings = Settings::defaults();
    let rules = settings.signal_rules().expect("valid rules");
    let (profile, recent) = card_profile(&rules);
    let fields = FieldRules::new(&settings);
    let mut group = c.benchmark_group("context_card");
    for pii in [true, false] {
        let masking = Masking::new(Access { pii }, &rules, &fields);
        let name = if pii {
            "build+json/pii"
        } else {
            "build+json/masked"
        };
        group.bench_function(name, |b| {
            b.iter_batched(
                || recent.clone(),
                |recent| {
                    let card = views::context_card(&profile, recent, &masking, Utc::now());
                    serde_json::to_vec(&card).expect("serialises")
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// Verifying a token per algorithm, the first time (signature and claims
/// checked) and again (served by the verified-token cache).
fn verify_jwt(c: &mut Criterion) {
    use anamnesis::config::{KeyAlgorithm, KeySettings};
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
    let mut settings = Settings::defaults();
    settings.auth.keys = [
        ("rs", KeyAlgorithm::RS256, "rsa"),
        ("es", KeyAlgorithm::ES256, "ec"),
        ("ed", KeyAlgorithm::EdDSA, "ed"),
    ]
    .into_iter()
    .map(|(kid, alg, file)| KeySettings {
        kid: kid.into(),
        alg,
        secret: None,
        public_key_file: Some(keys.join(format!("{file}.pub"))),
        private_key_file: Some(keys.join(format!("{file}.key"))),
    })
    .collect();
    let secret: &[u8] = b"bench-secret-that-is-long-enough-for-hs256";
    let mut group = c.benchmark_group("auth/verify");
    for (name, kid) in [
        ("HS256", None),
        ("RS256", Some("rs")),
        ("ES256", Some("es")),
        ("EdDSA", Some("ed")),
    ] {
        for cached in [false, true] {
            settings.auth.token_cache_entries = if cached { 10_000 } else { 0 };
            let mut auth = Authenticator::new(&settings.auth, Some(secret)).expect("keys load");
            if let Some(kid) = kid {
                auth = auth.sign_with(kid).expect("the private key loads");
            }
            let token = auth
                .mint(
                    "agent-desk-7",
                    &[Scope::ProfilesRead, Scope::PiiRead, Scope::SignalsWrite],
                    Some("agent"),
                    Duration::from_secs(3600),
                )
                .expect("minted");
            let label = if cached { "cached" } else { "uncached" };
            group.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter(|| auth.verify(black_box(&token)).expect("valid token"))
            });
        }
    }
    group.finish();
}

fn phone_of(i: u64) -> String {
    format!("+316{:08}", 10_000_000 + i)
}

/// Resolves signals through `Services::ingest` (committer thread, sled, one
/// flush per signal) against a store holding `POPULATION` profiles.
fn ingest_end_to_end(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::defaults();
    settings.storage.path = dir.path().to_path_buf();
    let store = SledStore::open(&dir.path().join("db")).expect("sled opens");
    let services = Services::new(&settings, Arc::new(store)).expect("services start");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    // Kept to replay them later: a replay must be the same signal, time included.
    let seeds: Vec<SignalInput> = (0..POPULATION)
        .map(|i| {
            let mut input = full_signal(
                Some(format!("seed-{i}")),
                &phone_of(i),
                &format!("seed-ck-{i}"),
            );
            input.identifiers.push(IdentifierInput {
                kind: "email".into(),
                value: format!("customer{i}@example.com"),
                verified: false,
            });
            input
        })
        .collect();
    for chunk in seeds.chunks(1000) {
        let items: Vec<BatchItem<()>> = chunk
            .iter()
            .map(|input| BatchItem::Signal(Box::new(input.clone())))
            .collect();
        let results = rt
            .block_on(services.ingest_batch(items, Caller::unbound("bench")))
            .expect("seeded");
        assert!(results.iter().all(|r| r.as_ref().is_ok_and(|r| r.created)));
    }

    let mut group = c.benchmark_group("ingest");
    group.sampling_mode(SamplingMode::Flat);
    let n = AtomicU64::new(0);
    // A known caller on a new channel cookie: attach to one existing profile.
    group.bench_function("attach_to_existing", |b| {
        b.iter(|| {
            let i = n.fetch_add(1, Ordering::Relaxed);
            let local = format!("06{:08}", 10_000_000 + i % POPULATION);
            let input = full_signal(None, &local, &format!("bench-ck-{i}"));
            let r = rt
                .block_on(services.ingest(input, Caller::unbound("bench")))
                .expect("ingested");
            assert!(!r.created);
        })
    });
    // Nobody known: a new profile.
    group.bench_function("create_new", |b| {
        b.iter(|| {
            let i = n.fetch_add(1, Ordering::Relaxed);
            let mut input = full_signal(None, "", &format!("new-ck-{i}"));
            // No phone: only new identifiers.
            input.identifiers.remove(0);
            let r = rt
                .block_on(services.ingest(input, Caller::unbound("bench")))
                .expect("ingested");
            assert!(r.created);
        })
    });
    // A channel retrying a signal it already sent: answered from the record.
    group.bench_function("replay_by_signal_id", |b| {
        b.iter_batched(
            || {
                let i = n.fetch_add(1, Ordering::Relaxed) % POPULATION;
                seeds[i as usize].clone()
            },
            |input| {
                let r = rt
                    .block_on(services.ingest(input, Caller::unbound("bench")))
                    .expect("replayed");
                assert!(r.created, "the first result comes back");
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    drop(services);
}

criterion_group! {
    name = hot_paths;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = normalise, parse_signal, reconcile, context_card, verify_jwt, ingest_end_to_end
}
criterion_main!(hot_paths);
