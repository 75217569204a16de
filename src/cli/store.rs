//! Administering the store: `store-stats` (what it holds and what it takes
//! on disk), `upgrade-identifiers` (normalise what is stored again after the
//! rules changed), `migrate` (the database schema) and `migrate-store`
//! (an embedded store copied into a database). All but `migrate` open the
//! store exclusively: the service must be stopped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use super::interrupt::Interrupt;
use super::MigrateStoreArgs;
use crate::config::{Backend, Settings};
use crate::service::upgrade::UpgradeOptions;
use crate::service::Services;
use crate::store::{PgStore, SledStore};

pub fn stats(settings: &Settings) -> anyhow::Result<()> {
    let store = crate::store::open(&settings.storage, false)?;
    let kinds = store.record_stats()?;
    let live: u64 = kinds.iter().map(|k| k.key_bytes + k.value_bytes).sum();
    let disk = store.size_on_disk()?;
    println!(
        "{:<26} {:>12} {:>14} {:>14}",
        "records", "count", "key bytes", "value bytes"
    );
    for k in &kinds {
        println!(
            "{:<26} {:>12} {:>14} {:>14}",
            k.kind, k.records, k.key_bytes, k.value_bytes
        );
    }
    println!(
        "live data: {live} bytes; on disk: {disk} bytes ({:.2}x)",
        disk as f64 / live.max(1) as f64
    );
    Ok(())
}

pub fn upgrade_identifiers(settings: &Settings, options: UpgradeOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    // Caught from here on: an interrupt stops between profiles.
    let interrupt = Interrupt::catch()?;
    let summary = super::block_on(async {
        let store = crate::store::open(&settings.storage, false)?;
        let services = Services::new(settings, store)?;
        if options.dry_run {
            println!("dry run: nothing is changed");
        }
        let summary = services
            .upgrade_identifiers(options, &mut |finding| println!("{finding}"), &|| {
                interrupt.caught()
            })
            .await?;
        anyhow::Ok(summary)
    })??;
    if let Some(after) = summary.resumed_after {
        println!(
            "went on after {after}, where an interrupted run stopped (--from-start to scan all)"
        );
    }
    println!(
        "{}{summary} in {:.1} s",
        if options.dry_run { "dry run: " } else { "" },
        started.elapsed().as_secs_f64()
    );
    if !summary.finished {
        println!("interrupted: what was done is kept; run the same command again to go on");
        anyhow::bail!("interrupted");
    }
    Ok(())
}

pub fn migrate(settings: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.storage.backend == Backend::Postgres,
        "storage.backend is \"sled\": the embedded store needs no migration"
    );
    let options = settings.storage.postgres.options()?;
    let schema = options.schema.clone();
    let applied =
        crate::store::migrate(options).with_context(|| format!("migrating schema `{schema}`"))?;
    for (version, what) in &applied {
        println!("applied migration {version}: {what}");
    }
    println!(
        "schema `{schema}` is at version {}{}",
        crate::store::SCHEMA_VERSION,
        if applied.is_empty() {
            " (already current)"
        } else {
            ""
        }
    );
    Ok(())
}

pub fn migrate_store(settings: &Settings, args: MigrateStoreArgs) -> anyhow::Result<()> {
    let MigrateStoreArgs {
        from,
        to,
        schema,
        batch,
    } = args;
    let path = from
        .strip_prefix("sled:")
        .context("--from must be sled:PATH (the data directory)")?;
    anyhow::ensure!(
        to.starts_with("postgres://") || to.starts_with("postgresql://"),
        "--to must be a postgres://... URL"
    );
    let mut postgres = settings.storage.postgres.clone();
    postgres.url = Some(to.clone());
    if let Some(schema) = schema {
        postgres.schema = schema;
    }
    let mut checked = settings.clone();
    checked.storage.postgres = postgres.clone();
    checked.validate()?;
    let options = postgres.options()?;
    let schema = options.schema.clone();

    let db = Path::new(path).join("db");
    anyhow::ensure!(db.exists(), "no store at {}", db.display());
    let source = SledStore::open_with(&db, settings.storage.cache_bytes)
        .with_context(|| format!("opening the store in {path} (is the service running?)"))?;
    crate::store::migrate(options.clone())
        .with_context(|| format!("migrating schema `{schema}`"))?;
    let target = PgStore::open(options)?;
    let changes_through = crate::service::journal::pruned_through(&source)?;

    // Ctrl-C stops between batches.
    let interrupt = Interrupt::catch()?;
    let total = source.record_count();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} records {per_sec} {eta} left",
        )
        .context("progress bar style")?,
    );
    let started = Instant::now();
    let outcome = crate::store::copy::sled_to_postgres(
        &source,
        &target,
        batch as usize,
        changes_through,
        &mut |n| bar.set_position(n),
        &|| interrupt.caught(),
    );
    bar.finish_and_clear();
    drop(interrupt);
    let Some(report) = outcome.context("copying")? else {
        anyhow::bail!("interrupted: what was copied is kept; run the same command again to go on");
    };
    eprintln!(
        "copied {} records into schema `{schema}` in {:.1} s{}",
        report.copied,
        started.elapsed().as_secs_f64(),
        if report.resumed {
            " (going on from an interrupted run)"
        } else {
            ""
        }
    );
    println!("{:<26} {:>12} {:>12}", "records", "source", "target");
    let target_counts: BTreeMap<&str, u64> =
        report.target.iter().map(|k| (k.kind, k.records)).collect();
    for k in &report.source {
        println!(
            "{:<26} {:>12} {:>12}",
            k.kind,
            k.records,
            target_counts.get(k.kind).copied().unwrap_or(0)
        );
    }
    anyhow::ensure!(
        report.matches(),
        "the target does not hold the same records as the source (counts or bytes differ)"
    );
    println!("verified: both hold the same records, kind by kind (counts and bytes)");
    Ok(())
}
