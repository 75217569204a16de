//! Several instances of the service over one PostgreSQL schema, as a fleet
//! behind a load balancer: what the property tests run against in the
//! PostgreSQL pass of `tests/run.sh`, which sets `ANAMNESIS_TEST_POSTGRES`.

use anamnesis::config::{Backend, Settings};
use anamnesis::service::Services;

pub const NEEDS_PG: &str = "needs ANAMNESIS_TEST_POSTGRES (tests/run.sh sets it)";

/// `n` instances over a new schema of their own, configured by `adjust`,
/// and their data directory (to be dropped after them).
pub fn fleet(n: usize, adjust: impl Fn(&mut Settings)) -> (Vec<Services>, tempfile::TempDir) {
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
            let store = anamnesis::startup::open_store(&settings, false).expect("the store opens");
            Services::new(&settings, store).expect("the instance starts")
        })
        .collect();
    (instances, dir)
}
