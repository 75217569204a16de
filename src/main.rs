use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use anamnesis::auth::{default_secret, Authenticator, Scope};
use anamnesis::config::Settings;
use anamnesis::startup::Application;

/// Profiling showed glibc's malloc and free among the top costs of both the
/// read and the write path (many short-lived strings and vectors per
/// request, freed on other threads); mimalloc keeps per-thread heaps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// anamnesis: one memory of the customer across every channel.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file layered over the built-in defaults (also ANAMNESIS_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Print the OpenAPI document.
    Openapi,
    /// Mint a bearer token from the configured (or generated) secret.
    Token {
        /// Scopes, space- or comma-separated: profiles:read pii:read signals:write
        /// profiles:write identity:write profiles:erase changes:read admin.
        #[arg(long, default_value = "admin")]
        scope: String,
        /// Bind the token to one channel. A channel's tokens may carry only
        /// the sensitive scopes auth.channel_scopes allows it.
        #[arg(long)]
        channel: Option<String>,
        /// Bind the token to the customer holding this verified identifier,
        /// TYPE:VALUE (e.g. account_id:C-1001): it reads that customer's
        /// open episodes (GET /v1/me/episodes) and nothing else; --scope and
        /// --channel do not apply.
        #[arg(long, conflicts_with = "channel")]
        customer: Option<String>,
        /// The token's subject.
        #[arg(long, default_value = "cli")]
        subject: String,
        /// Lifetime, e.g. 1h, 30days.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
        /// Sign with the configured key of this `kid` (its secret or its
        /// private_key_file) instead of the default secret.
        #[arg(long)]
        kid: Option<String>,
    },
    /// Count what the store holds, per kind of record, with the bytes of keys
    /// and values, and the bytes its files take on disk. Opens the store
    /// exclusively: stop the service first.
    StoreStats,
    /// Check a configuration before a deploy: load it (defaults, --config
    /// file, ANAMNESIS__* environment), validate it and its key files, and
    /// print the configuration in effect as TOML, secrets hidden. Exits
    /// non-zero naming the first problem.
    CheckConfig,
    /// Load signals from a file through the same validation and resolution
    /// as POST /v1/signals: newline-delimited JSON (one signal per line), or
    /// CSV with a header line and a column mapping (--map). Refused lines go
    /// to a report with their reasons; the summary names the line to resume
    /// from. Opens the store exclusively: stop the service first.
    ///
    /// CSV example: --map email=identifier:email --map phone=identifier:phone
    /// --map first=trait:first_name --map id=signal_id --channel import
    Import {
        /// The NDJSON or CSV file.
        file: std::path::PathBuf,
        /// Read the file as CSV (also when it ends in .csv).
        #[arg(long)]
        csv: bool,
        /// CSV only, repeated: COLUMN=TARGET, where TARGET is signal_id,
        /// channel, occurred_at, identifier:TYPE, trait:NAME, answer:KEY,
        /// event.type, event.summary or property:NAME. Empty cells are left
        /// out; values are text.
        #[arg(long = "map", value_name = "COLUMN=TARGET")]
        map: Vec<String>,
        /// CSV only: the channel of rows without a channel column.
        #[arg(long, default_value = "import")]
        channel: String,
        /// Start at this line (1-based), e.g. the one a stopped import named.
        #[arg(long, default_value_t = 1)]
        from_line: u64,
        /// Signals per batch (each batch is durable before the next).
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Where refused lines go, one JSON object each (line, code,
        /// message, input); default FILE.rejects.ndjson.
        #[arg(long)]
        rejects: Option<std::path::PathBuf>,
    },
    /// Write every profile as NDJSON (one profile per line, as the API shows
    /// it with `pii:read`), to FILE or standard output. Opens the store
    /// exclusively: stop the service first.
    Export {
        /// Where to write (standard output when absent).
        #[arg(long, short)]
        out: Option<std::path::PathBuf>,
    },
    /// Normalise every stored identifier again with this build's rules,
    /// after an upgrade that changed them. A value whose canonical form
    /// differs moves to it; where another profile holds that form, the two
    /// merge when a signal's merge would (ledger cause `upgrade`), or else
    /// both stay and the collision is reported; a value the rules now refuse
    /// is reported and left for a person to remove. Prints one line per such
    /// identifier (outcome, type, customer ids, reason; never the value),
    /// then the counts. Ctrl-C stops between profiles, and the same command
    /// goes on from there; running it again changes nothing more. Opens the
    /// store exclusively: stop the service first.
    UpgradeIdentifiers {
        /// Report what a run would do; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Start from the first profile, not where an interrupted run stopped.
        #[arg(long)]
        from_start: bool,
    },
    /// Create or update the database schema of `storage.backend =
    /// "postgres"` to this build's version (safe to run from several
    /// instances at once; does nothing when it is current). The sled store
    /// needs no migration.
    Migrate,
    /// Copy an embedded store into a database (the schema is created or
    /// migrated first), so a pilot grows into a fleet with its memory: every
    /// record, in key order, in batches, with a progress bar. Ctrl-C stops
    /// between batches, and the same command goes on from there. At the end
    /// the records of both sides are counted per kind and compared (exit
    /// non-zero when they differ). Stop the service on the embedded store
    /// first; start the fleet on the database after.
    ///
    /// Example: --from sled:./data --to postgres://anamnesis@db:5432/anamnesis
    MigrateStore {
        /// `sled:PATH`, the data directory (`storage.path`) of the store to copy.
        #[arg(long)]
        from: String,
        /// `postgres://...` (or `postgresql://...`), the database to copy into.
        #[arg(long)]
        to: String,
        /// The schema to copy into (default: storage.postgres.schema).
        #[arg(long)]
        schema: Option<String>,
        /// Records per transaction.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        batch: u64,
    },
    /// Copy every record of the embedded store into DIR (a new or empty
    /// directory): records.bin and a manifest with the backup point, the
    /// counts and a SHA-256. By default the running service sends the copy
    /// (GET /v1/admin/backup, as of the moment it was asked) while it goes
    /// on serving and writing; --offline reads a stopped store instead. The
    /// auth secret is not included (see the README, Backup and restore).
    Backup {
        /// The directory to write the backup into.
        #[arg(long)]
        to: PathBuf,
        /// Read the store directly (stop the service first).
        #[arg(long)]
        offline: bool,
        /// The running service, http://HOST:PORT (default: server.listen).
        #[arg(long)]
        url: Option<String>,
        /// A token with the admin scope (default: one minted from the
        /// configured or generated secret).
        #[arg(long, env = "ANAMNESIS_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Bring a backup back into storage.path (stop the service first): the
    /// whole backup is checked against its manifest while it loads into a
    /// new store, which then replaces the old one; every customer the
    /// erasure log lists is erased again; the result is verified. Refuses a
    /// store that holds records unless --force (which keeps the replaced
    /// store beside it).
    Restore {
        /// The backup directory.
        #[arg(long)]
        from: PathBuf,
        /// Replace a store that holds records.
        #[arg(long)]
        force: bool,
    },
    /// Check the stopped store: every record decodes, every index entry
    /// points at a live record, identifiers and merged ids agree with the
    /// profiles. Exits non-zero naming each problem (the first 50).
    Verify,
    /// Exit 0 when the service at the configured address answers /healthz
    /// (for container health checks: no curl needed).
    Healthcheck {
        /// Address to probe; defaults to server.listen.
        #[arg(long)]
        addr: Option<String>,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the cause chain on one line; no backtrace noise.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings),
        Command::Openapi => {
            print!("{}", anamnesis::openapi::document(&settings));
            Ok(())
        }
        Command::Token {
            scope,
            channel,
            customer,
            subject,
            ttl,
            kid,
        } => {
            let scopes = scope
                .split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(|s| Scope::parse(s).with_context(|| format!("unknown scope `{s}`")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let ttl: std::time::Duration = ttl.into();
            if ttl.as_secs() > settings.auth.max_token_lifetime_secs {
                anyhow::bail!(
                    "--ttl {} is longer than auth.max_token_lifetime_secs ({} s); the service would refuse this token",
                    humantime::format_duration(ttl),
                    settings.auth.max_token_lifetime_secs
                );
            }
            let (secret, _) = default_secret(&settings.auth, &settings.storage.path)?;
            let mut auth = Authenticator::new(&settings.auth, secret.as_deref())?;
            if let Some(kid) = &kid {
                auth = auth.sign_with(kid)?;
            }
            let token = match &customer {
                Some(named) => {
                    let (kind, value) = named
                        .split_once(':')
                        .context("--customer takes TYPE:VALUE, e.g. account_id:C-1001")?;
                    auth.mint_for_customer(&subject, kind, value, ttl)?
                }
                None => {
                    if let Some(refused) = auth.refused_scope(&scopes, channel.as_deref()) {
                        anyhow::bail!(
                            "tokens bound to channel `{}` may not carry `{}` (auth.channel_scopes); the service would refuse this token",
                            channel.as_deref().unwrap_or_default(),
                            refused.as_str()
                        );
                    }
                    auth.mint(&subject, &scopes, channel.as_deref(), ttl)?
                }
            };
            println!("{token}");
            Ok(())
        }
        Command::StoreStats => store_stats(&settings),
        Command::CheckConfig => check_config(&settings),
        Command::Export { out } => export(&settings, out.as_deref()),
        Command::Import {
            file,
            csv,
            map,
            channel,
            from_line,
            batch,
            rejects,
        } => {
            let csv = csv
                || file
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
            let mapping = if csv {
                anyhow::ensure!(!map.is_empty(), "a CSV import needs --map COLUMN=TARGET");
                Some(parse_mapping(&map)?)
            } else {
                anyhow::ensure!(map.is_empty(), "--map is for CSV files (add --csv)");
                None
            };
            import(
                &settings, &file, mapping, &channel, from_line, batch, rejects,
            )
        }
        Command::UpgradeIdentifiers {
            dry_run,
            from_start,
        } => upgrade_identifiers(
            &settings,
            anamnesis::service::upgrade::UpgradeOptions {
                dry_run,
                from_start,
            },
        ),
        Command::Migrate => migrate(&settings),
        Command::MigrateStore {
            from,
            to,
            schema,
            batch,
        } => migrate_store(&settings, &from, &to, schema, batch as usize),
        Command::Backup {
            to,
            offline,
            url,
            token,
        } => backup(&settings, &to, offline, url, token),
        Command::Restore { from, force } => restore(&settings, &from, force),
        Command::Verify => verify(&settings),
        Command::Healthcheck { addr } => {
            healthcheck(addr.as_deref().unwrap_or(&settings.server.listen))
        }
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    anamnesis::telemetry::init(&settings.telemetry).with_context(|| {
        format!(
            "opening the audit log {}",
            settings
                .telemetry
                .audit_file
                .as_deref()
                .unwrap_or(std::path::Path::new("-"))
                .display()
        )
    })?;
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings)?;
        if let Some(banner) = app.banner() {
            println!("{banner}");
        }
        app.run_until_stopped().await
    })
}

fn check_config(settings: &Settings) -> anyhow::Result<()> {
    // Key files are read now, as at start-up. Without a configured secret
    // the service generates one on first start: stand in for it here
    // rather than write one.
    let stand_in = [7u8; 32];
    let secret = settings
        .auth
        .hs256_secret
        .is_none()
        .then_some(stand_in.as_slice());
    let auth = Authenticator::new(&settings.auth, secret).context("checking the auth keys")?;
    print!("{}", settings.effective_toml()?);
    // The trust table as the service applies it, one caller a line (as
    // comments, so the output stays a configuration file).
    let rules = anamnesis::domain::TrustRules::new(&settings.trust);
    let types: Vec<&str> = settings
        .identifiers
        .types
        .keys()
        .map(String::as_str)
        .collect();
    let mut channels = settings.channels.priority.clone();
    channels.extend(
        settings
            .trust
            .channels
            .keys()
            .filter(|c| !settings.channels.priority.contains(c))
            .cloned(),
    );
    println!("\n# Trust table (verify: may merge and attach; claim: never does):");
    for line in rules.describe(&channels, &types).lines() {
        println!("#   {line}");
    }
    let unlisted: Vec<String> = settings
        .auth
        .channel_scopes
        .keys()
        .filter(|c| !channels.contains(c))
        .cloned()
        .collect();
    channels.extend(unlisted);
    println!(
        "\n# Sensitive scopes a channel's tokens may carry (any other is refused; tokens without a channel are not limited):"
    );
    for line in auth.describe_channel_scopes(&channels).lines() {
        println!("#   {line}");
    }
    eprintln!("configuration is valid");
    Ok(())
}

fn migrate(settings: &Settings) -> anyhow::Result<()> {
    use anamnesis::config::Backend;
    anyhow::ensure!(
        settings.storage.backend == Backend::Postgres,
        "storage.backend is \"sled\": the embedded store needs no migration"
    );
    let options = settings.storage.postgres.options()?;
    let schema = options.schema.clone();
    let applied = anamnesis::store::migrate(options)
        .with_context(|| format!("migrating schema `{schema}`"))?;
    for (version, what) in &applied {
        println!("applied migration {version}: {what}");
    }
    println!(
        "schema `{schema}` is at version {}{}",
        anamnesis::store::SCHEMA_VERSION,
        if applied.is_empty() {
            " (already current)"
        } else {
            ""
        }
    );
    Ok(())
}

fn migrate_store(
    settings: &Settings,
    from: &str,
    to: &str,
    schema: Option<String>,
    batch: usize,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let path = from
        .strip_prefix("sled:")
        .context("--from must be sled:PATH (the data directory)")?;
    anyhow::ensure!(
        to.starts_with("postgres://") || to.starts_with("postgresql://"),
        "--to must be a postgres://... URL"
    );
    let mut postgres = settings.storage.postgres.clone();
    postgres.url = Some(to.to_owned());
    if let Some(schema) = schema {
        postgres.schema = schema;
    }
    let mut checked = settings.clone();
    checked.storage.postgres = postgres.clone();
    checked.validate()?;
    let options = postgres.options()?;
    let schema = options.schema.clone();

    let db = std::path::Path::new(path).join("db");
    anyhow::ensure!(db.exists(), "no store at {}", db.display());
    let source = anamnesis::store::SledStore::open_with(&db, settings.storage.cache_bytes)
        .with_context(|| format!("opening the store in {path} (is the service running?)"))?;
    anamnesis::store::migrate(options.clone())
        .with_context(|| format!("migrating schema `{schema}`"))?;
    let target = anamnesis::store::PgStore::open(options)?;
    let changes_through = anamnesis::service::journal::pruned_through(&source)?;

    // Ctrl-C stops between batches.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let flag = stop.clone();
    runtime.spawn(async move {
        if let Ok(mut interrupt) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        {
            if interrupt.recv().await.is_some() {
                flag.store(true, Ordering::SeqCst);
            }
        }
    });

    let total = source.record_count();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} records {per_sec} {eta} left",
        )
        .context("progress bar style")?,
    );
    let started = std::time::Instant::now();
    let outcome = anamnesis::store::copy::sled_to_postgres(
        &source,
        &target,
        batch,
        changes_through,
        &mut |n| bar.set_position(n),
        &|| stop.load(Ordering::SeqCst),
    );
    bar.finish_and_clear();
    runtime.shutdown_background();
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
    let target_counts: std::collections::BTreeMap<&str, u64> =
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

/// `COLUMN=TARGET` pairs of `--map`.
fn parse_mapping(map: &[String]) -> anyhow::Result<Vec<(String, anamnesis::import::Target)>> {
    map.iter()
        .map(|m| {
            let (column, target) = m
                .split_once('=')
                .with_context(|| format!("--map `{m}` is not COLUMN=TARGET"))?;
            let target = target
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--map `{m}`: {e}"))?;
            Ok((column.trim().to_owned(), target))
        })
        .collect()
}

fn import(
    settings: &Settings,
    file: &std::path::Path,
    mapping: Option<Vec<(String, anamnesis::import::Target)>>,
    channel: &str,
    from_line: u64,
    batch: usize,
    rejects: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    anyhow::ensure!(
        (1..=settings.server.max_batch_signals).contains(&batch),
        "--batch must be 1 to {} (server.max_batch_signals)",
        settings.server.max_batch_signals
    );
    let input = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let size = input.metadata().map(|m| m.len()).unwrap_or(0);
    let rejects_path = rejects.unwrap_or_else(|| {
        let mut name = file.as_os_str().to_owned();
        name.push(".rejects.ndjson");
        name.into()
    });
    // A resumed run adds to the report of the run it continues.
    let existed = rejects_path.exists();
    let mut rejects_file = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(from_line > 1)
            .truncate(from_line <= 1)
            .open(&rejects_path)
            .with_context(|| format!("creating {}", rejects_path.display()))?,
    );
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta} left  {msg}",
        )
        .context("progress bar style")?,
    );
    let options = anamnesis::import::Options { from_line, batch };
    let started = std::time::Instant::now();
    let summary = actix_web::rt::System::new().block_on(async {
        // Caught from here on, before the store opens: an interrupt stops
        // between batches, and names the line to go on from.
        let interrupted = catch_interrupt()?;
        let store = anamnesis::startup::open_store(settings, true)?;
        let services = anamnesis::service::Services::new(settings, store)?;
        let reader = std::io::BufReader::new(input);
        let mut source: Box<dyn anamnesis::import::Source> = match &mapping {
            Some(mapping) => Box::new(anamnesis::import::Csv::new(reader, mapping, channel)?),
            None => Box::new(anamnesis::import::Ndjson::new(
                reader,
                settings.server.max_body_bytes,
            )),
        };
        let result = anamnesis::import::import(
            &services,
            &mut *source,
            &mut rejects_file,
            &options,
            &mut |bytes, s| {
                bar.set_position(bytes);
                bar.set_message(format!(
                    "{} created, {} attached, {} rejected",
                    s.created, s.attached, s.rejected
                ));
            },
            &|| interrupted.load(Ordering::SeqCst),
        )
        .await;
        bar.finish_and_clear();
        result.map(|s| {
            let stopped = !s.finished;
            (s, stopped)
        })
    })?;
    let (summary, interrupted) = summary;
    if summary.rejected == 0 && (from_line <= 1 || !existed) {
        // Nothing to report: leave no empty file behind (a report an
        // earlier run wrote stays).
        let _ = std::fs::remove_file(&rejects_path);
    }
    let imported = summary.created + summary.attached;
    println!(
        "{imported} signals imported in {:.1} s: {} created a profile, {} joined one, {} profiles merged; {} lines refused{}",
        started.elapsed().as_secs_f64(),
        summary.created,
        summary.attached,
        summary.merged,
        summary.rejected,
        if summary.rejected > 0 {
            format!(" (reasons in {})", rejects_path.display())
        } else {
            String::new()
        },
    );
    if interrupted {
        println!(
            "interrupted: lines before {} are imported; go on with --from-line {}",
            summary.next_line, summary.next_line
        );
        anyhow::bail!("interrupted");
    }
    Ok(())
}

fn upgrade_identifiers(
    settings: &Settings,
    options: anamnesis::service::upgrade::UpgradeOptions,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let started = std::time::Instant::now();
    let summary = actix_web::rt::System::new().block_on(async {
        // Caught from here on: an interrupt stops between profiles.
        let interrupted = catch_interrupt()?;
        let store = anamnesis::startup::open_store(settings, false)?;
        let services = anamnesis::service::Services::new(settings, store)?;
        if options.dry_run {
            println!("dry run: nothing is changed");
        }
        let summary = services
            .upgrade_identifiers(options, &mut |finding| println!("{finding}"), &|| {
                interrupted.load(Ordering::SeqCst)
            })
            .await?;
        anyhow::Ok(summary)
    })?;
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

fn export(settings: &Settings, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let store = anamnesis::startup::open_store(settings, false)?;
    let mut sink: Box<dyn std::io::Write> = match out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let started = std::time::Instant::now();
    let mut last_report = started;
    let written =
        anamnesis::service::engagement::export_profiles(&*store, settings, &mut sink, &mut |n| {
            if last_report.elapsed() >= std::time::Duration::from_secs(1) {
                last_report = std::time::Instant::now();
                eprint!("\rexported {n} profiles");
            }
        })?;
    eprintln!(
        "\rexported {written} profiles in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn store_stats(settings: &Settings) -> anyhow::Result<()> {
    let store = anamnesis::startup::open_store(settings, false)?;
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

fn backup(
    settings: &Settings,
    to: &std::path::Path,
    offline: bool,
    url: Option<String>,
    token: Option<String>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let manifest = if offline {
        anamnesis::backup::offline(settings, to)?
    } else {
        let token = match token {
            Some(token) => token,
            None => {
                let (secret, _) = default_secret(&settings.auth, &settings.storage.path)?;
                Authenticator::new(&settings.auth, secret.as_deref())?
                    .mint(
                        "cli:backup",
                        &[Scope::Admin],
                        None,
                        Duration::from_secs(3600),
                    )
                    .context("minting an admin token (or give one with --token)")?
            }
        };
        let url = url.unwrap_or_else(|| format!("http://{}", settings.server.listen));
        anamnesis::backup::from_service(&url, &token, to)?
    };
    println!(
        "backed up {} records ({} bytes) into {} in {:.1} s; backup point: change {} at {}",
        manifest.records,
        manifest.bytes,
        to.display(),
        started.elapsed().as_secs_f64(),
        manifest.point.last_change,
        manifest.point.at.to_rfc3339(),
    );
    Ok(())
}

fn restore(settings: &Settings, from: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let r = anamnesis::backup::restore(settings, from, force)?;
    println!(
        "restored {} records from {} (backup point: change {} at {}) in {:.1} s",
        r.manifest.records,
        from.display(),
        r.manifest.point.last_change,
        r.manifest.point.at.to_rfc3339(),
        r.elapsed.as_secs_f64()
    );
    if let Some(aside) = &r.replaced {
        println!(
            "the store it replaced is in {}; remove it once the restore is checked",
            aside.display()
        );
    }
    let e = &r.erasures;
    println!(
        "erasure log {}: {} profiles erased again, {} already gone, {} split off a merge and erased",
        settings.storage.erasure_log_path().display(),
        e.erased,
        e.gone,
        e.split_off
    );
    for (id, whole) in &e.whole {
        println!(
            "erased {whole} whole: it holds {id}, which was erased and could not be split off"
        );
    }
    report_verified(&r.verified)
}

fn verify(settings: &Settings) -> anyhow::Result<()> {
    report_verified(&anamnesis::backup::verify(settings)?)
}

fn report_verified(v: &anamnesis::service::backup::Verified) -> anyhow::Result<()> {
    for problem in &v.problems {
        println!("problem: {problem}");
    }
    if v.problem_count == 0 {
        println!("verified {} records: no problems", v.records);
        return Ok(());
    }
    anyhow::bail!(
        "{} problems in {} records{}",
        v.problem_count,
        v.records,
        if v.problem_count as usize > v.problems.len() {
            format!(" (the first {} listed)", v.problems.len())
        } else {
            String::new()
        }
    )
}

fn healthcheck(addr: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let addr = addr.replace("0.0.0.0", "127.0.0.1");
    let mut stream =
        std::net::TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if response.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        anyhow::bail!(
            "unhealthy: {}",
            response.lines().next().unwrap_or("no answer")
        )
    }
}

/// Notes Ctrl-C in the flag it returns, for a long command that stops
/// between steps rather than midway. Must run inside the actix system.
fn catch_interrupt() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("catching Ctrl-C")?;
    let interrupted = std::sync::Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    actix_web::rt::spawn(async move {
        if interrupt.recv().await.is_some() {
            flag.store(true, Ordering::SeqCst);
        }
    });
    Ok(interrupted)
}
