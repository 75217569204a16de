//! The command line: `anamnesis [--config FILE] COMMAND`. The clap
//! definitions and the dispatch are here; each command or family of
//! commands has its own module.
//!
//! Only `serve` and `openapi` reach the HTTP layer (routes, start-up, the
//! error envelope, the OpenAPI document). The data commands (import, export,
//! tokens, store administration, backups) call the service and store layers
//! directly, as a handler would, and print for an operator.

mod backup;
mod config;
mod export;
mod health;
mod import;
mod interrupt;
mod openapi;
mod serve;
mod store;
mod token;

use std::future::Future;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::Settings;

pub use import::RefusalCode;

/// anamnesis: one memory of the customer across every channel.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
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
    Token(TokenArgs),
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
    Import(ImportArgs),
    /// Write every profile as NDJSON (one profile per line, as the API shows
    /// it with `pii:read`), to FILE or standard output. Opens the store
    /// exclusively: stop the service first.
    Export {
        /// Where to write (standard output when absent).
        #[arg(long, short)]
        out: Option<PathBuf>,
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
    MigrateStore(MigrateStoreArgs),
    /// Copy every record of the embedded store into DIR (a new or empty
    /// directory): records.bin and a manifest with the backup point, the
    /// counts and a SHA-256. By default the running service sends the copy
    /// (GET /v1/admin/backup, as of the moment it was asked) while it goes
    /// on serving and writing; --offline reads a stopped store instead. The
    /// auth secret is not included (see docs/operations.md, Backup and restore).
    Backup(BackupArgs),
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

// The options of `token` (no doc comment here: the command's is its help).
#[derive(Args)]
struct TokenArgs {
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
}

// The options of `import`.
#[derive(Args)]
struct ImportArgs {
    /// The NDJSON or CSV file.
    file: PathBuf,
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
    rejects: Option<PathBuf>,
}

// The options of `migrate-store`.
#[derive(Args)]
struct MigrateStoreArgs {
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
}

// The options of `backup`.
#[derive(Args)]
struct BackupArgs {
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
}

/// Runs the command `cli` names (`serve` when it names none) with the
/// configuration it points at. `refusal_code` is the API's code table for
/// what the service refuses (see [`RefusalCode`]); the binary passes it in.
pub fn run(cli: Cli, refusal_code: RefusalCode) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve::run(settings),
        Command::Openapi => openapi::run(&settings),
        Command::Token(args) => token::run(&settings, args),
        Command::StoreStats => store::stats(&settings),
        Command::CheckConfig => config::check(&settings),
        Command::Import(args) => import::run(&settings, args, refusal_code),
        Command::Export { out } => export::run(&settings, out.as_deref()),
        Command::UpgradeIdentifiers {
            dry_run,
            from_start,
        } => store::upgrade_identifiers(
            &settings,
            crate::service::upgrade::UpgradeOptions {
                dry_run,
                from_start,
            },
        ),
        Command::Migrate => store::migrate(&settings),
        Command::MigrateStore(args) => store::migrate_store(&settings, args),
        Command::Backup(args) => backup::backup(&settings, args),
        Command::Restore { from, force } => backup::restore(&settings, &from, force),
        Command::Verify => backup::verify(&settings),
        Command::Healthcheck { addr } => {
            health::check(addr.as_deref().unwrap_or(&settings.server.listen))
        }
    }
}

/// Drives the service's async use cases to the end on this thread. They
/// wait on the committer's answers and on tokio timers, but need no HTTP
/// server and no actix system: a current-thread tokio runtime is enough.
fn block_on<F: Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(future))
}
