//! What the property-test binaries share (`tests/property.rs`,
//! `tests/merge_property.rs`, `tests/rules.rs`; each says `mod support;`):
//! their proptest configuration, the service over a fresh sled store or a
//! fleet of instances over one PostgreSQL schema, reads of a whole profile,
//! and the vocabulary and clock their generated signals draw from, with the
//! order that decides which observation wins.
//!
//! Each binary uses part of this, so unused items are no warning here.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::Arc;

use anamnesis::config::{Backend, Settings};
use anamnesis::domain::CustomerId;
use anamnesis::service::views::{InteractionView, ProfileView};
use anamnesis::service::{Access, Services, TimelineQuery};
use anamnesis::store::SledStore;
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;
use tokio::runtime::Runtime;

/// Why the fleet properties are ignored in the first pass of `tests/run.sh`.
pub const NEEDS_PG: &str = "needs ANAMNESIS_TEST_POSTGRES (tests/run.sh sets it)";

/// `cases` unless `PROPTEST_CASES` asks for another number.
pub fn config(cases: u32) -> ProptestConfig {
    let from_env = std::env::var("PROPTEST_CASES").is_ok();
    ProptestConfig {
        cases: if from_env {
            ProptestConfig::default().cases
        } else {
            cases
        },
        // Keep the tree clean: a failure prints its minimal case instead of
        // writing a regressions file next to the test.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Without Redis the reads never wait: their futures are ready at once.
pub fn ready<F: std::future::Future>(f: F) -> F::Output {
    futures_util::FutureExt::now_or_never(f).expect("a read without Redis is ready at once")
}

pub fn fail(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

/// The service over a fresh store: one instance over sled, or several over
/// one database.
pub struct World {
    pub instances: Vec<Services>,
    // Dropped after the instances.
    _dir: tempfile::TempDir,
}

impl World {
    /// One instance over a fresh sled store in its own temp directory,
    /// configured by `adjust`.
    pub fn sled(adjust: impl Fn(&mut Settings)) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings::defaults();
        settings.storage.path = dir.path().to_path_buf();
        adjust(&mut settings);
        let store = SledStore::open(&settings.storage.path.join("db")).expect("sled opens");
        World {
            instances: vec![Services::new(&settings, Arc::new(store)).expect("services start")],
            _dir: dir,
        }
    }

    /// `n` instances over a new schema of their own on the server
    /// `ANAMNESIS_TEST_POSTGRES` names, configured by `adjust`: a fleet
    /// behind a load balancer, as the PostgreSQL pass of `tests/run.sh`
    /// runs the properties against.
    pub fn fleet(n: usize, adjust: impl Fn(&mut Settings)) -> World {
        let url = std::env::var("ANAMNESIS_TEST_POSTGRES").expect(NEEDS_PG);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings::defaults();
        adjust(&mut settings);
        settings.storage.path = dir.path().to_path_buf();
        settings.storage.backend = Backend::Postgres;
        let pg = &mut settings.storage.postgres;
        pg.url = Some(url);
        pg.schema = format!("prop_{}", ulid::Ulid::new().to_string().to_lowercase());
        pg.pool_size = 2;
        anamnesis::store::migrate(pg.options().expect("a url")).expect("the schema migrates");
        let instances = (0..n)
            .map(|_| {
                let store =
                    anamnesis::startup::open_store(&settings, false).expect("the store opens");
                Services::new(&settings, store).expect("the instance starts")
            })
            .collect();
        World {
            instances,
            _dir: dir,
        }
    }

    /// The first (with sled, the only) instance.
    pub fn one(&self) -> &Services {
        &self.instances[0]
    }
}

/// A profile's identifiers as `type:value`.
pub fn held(view: &ProfileView) -> BTreeSet<String> {
    view.identifiers
        .iter()
        .map(|i| format!("{}:{}", i.kind, i.value))
        .collect()
}

/// A profile's whole timeline, which the generators keep within one page.
pub fn whole_timeline(
    services: &Services,
    id: CustomerId,
) -> Result<Vec<InteractionView>, TestCaseError> {
    let query = TimelineQuery {
        limit: Some(200),
        cursor: None,
        channel: None,
    };
    let page = services
        .timeline(id, &query, Access { pii: true })
        .map_err(|e| fail(format!("timeline of {id}: {e}")))?;
    prop_assert!(page.next_cursor.is_none(), "timeline longer than a page");
    Ok(page.interactions)
}

/// The channels, event types and episodes generated signals draw from.
pub const CHANNELS: &[&str] = &["ivr", "chat", "web", "store", "agent"];
pub const EVENT_TYPES: &[&str] = &["page_view", "call_started", "order_placed"];
pub const EPISODES: &[&str] = &["order-A-1001", "case-7"];

/// Few distinct times (`i` < 4), so equal times (ties) are common.
pub fn time(i: usize) -> DateTime<Utc> {
    let base = Utc.with_ymd_and_hms(2025, 3, 1, 9, 0, 0).unwrap();
    base + chrono::TimeDelta::minutes([0, 0, 5, 60][i])
}

/// The order in which observations of one field win, as `domain::profile`
/// documents it: the later time, then the channel earlier in the priority
/// list (`rank` is its position), then the greater signal id, then the
/// greater value as JSON text; a deletion (`null`) below every value.
pub fn latest_wins_key(
    at: DateTime<Utc>,
    rank: usize,
    signal_id: Option<String>,
    value: &Value,
) -> (
    DateTime<Utc>,
    Reverse<usize>,
    Option<String>,
    Option<String>,
) {
    let text = (!value.is_null()).then(|| value.to_string());
    (at, Reverse(rank), signal_id, text)
}
