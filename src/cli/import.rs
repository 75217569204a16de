//! `anamnesis import`: newline-delimited JSON signals, one per line, or the
//! rows of a CSV file turned into signals by a column mapping, through the
//! same validation and resolution as `POST /v1/signals/batch`.
//!
//! Lines go to the committer in batches; a batch is acknowledged once it is
//! durable, so after an interruption everything before the first line of the
//! unacknowledged batch is in the store, and `--from-line` resumes there.
//! Signals that carry a `signal_id` may be sent again without harm (a replay
//! returns the first result); signals without one would be counted twice.
//!
//! A refused line goes to the rejects report with the code the API answers
//! the same fault with, and the summary names the line to go on from.

mod source;

use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use self::source::{Csv, Ndjson, Source, Target};
use super::interrupt::Interrupt;
use super::ImportArgs;
use crate::config::Settings;
use crate::domain::json::{self, JsonError};
use crate::domain::SignalInput;
use crate::service::{BatchItem, ServiceError, Services};

/// The API's code for what the service refuses (`signal_id_reused`,
/// `invalid_identifier`, ...), which the report promises to use. That table
/// is the HTTP layer's (its `error` module), which the commands do not use: the
/// binary hands it to [`super::run`].
pub type RefusalCode = fn(ServiceError) -> &'static str;

/// Why a line was not imported.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not JSON (nor text, nor a CSV row), or not the shape of a signal.
    #[error(transparent)]
    Json(JsonError),
    /// Longer than the API's body limit (`server.max_body_bytes`).
    #[error("the body is larger than the limit of {0} bytes")]
    TooLong(usize),
    /// What the service refused: a rule of signals, or a `signal_id` used
    /// for another signal before.
    #[error(transparent)]
    Service(ServiceError),
}

impl Refusal {
    fn malformed(why: impl Into<String>) -> Refusal {
        Refusal::Json(JsonError::Malformed(why.into()))
    }

    /// The code the API answers the same fault with: its own for what the
    /// import finds in a line, `service_code` for what the service refuses.
    fn code(self, service_code: RefusalCode) -> &'static str {
        match self {
            Refusal::Json(JsonError::Malformed(_)) => "malformed_json",
            Refusal::Json(JsonError::UnknownField(_)) => "unknown_field",
            Refusal::Json(JsonError::MissingField(_)) => "missing_field",
            Refusal::Json(JsonError::InvalidField(_)) => "invalid_field",
            Refusal::Json(JsonError::DuplicateKey(_)) => "duplicate_key",
            Refusal::TooLong(_) => "payload_too_large",
            Refusal::Service(refused) => service_code(refused),
        }
    }
}

/// `anamnesis import`: the file of `args` into the configured store
/// (created when there is none), with a progress bar and a summary.
pub fn run(settings: &Settings, args: ImportArgs, service_code: RefusalCode) -> anyhow::Result<()> {
    let ImportArgs {
        file,
        csv,
        map,
        channel,
        from_line,
        batch,
        rejects,
    } = args;
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
    anyhow::ensure!(
        (1..=settings.server.max_batch_signals).contains(&batch),
        "--batch must be 1 to {} (server.max_batch_signals)",
        settings.server.max_batch_signals
    );
    let input =
        std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
    let size = input.metadata().map(|m| m.len()).unwrap_or(0);
    let rejects_path = rejects.unwrap_or_else(|| {
        let mut name = file.as_os_str().to_owned();
        name.push(".rejects.ndjson");
        PathBuf::from(name)
    });
    // A resumed run adds to the report of the run it continues.
    let existed = rejects_path.exists();
    let mut rejects_file = BufWriter::new(
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
    let options = Options {
        from_line,
        batch,
        service_code,
    };
    let started = Instant::now();
    // Caught from here on, before the store opens: an interrupt stops
    // between batches, and names the line to go on from.
    let interrupt = Interrupt::catch()?;
    let summary = super::block_on(async {
        let store = crate::store::open(&settings.storage, true)?;
        let services = Services::new(settings, store)?;
        let reader = BufReader::new(input);
        let mut source: Box<dyn Source> = match &mapping {
            Some(mapping) => Box::new(Csv::new(reader, mapping, &channel)?),
            None => Box::new(Ndjson::new(reader, settings.server.max_body_bytes)),
        };
        let result = import(
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
            &|| interrupt.caught(),
        )
        .await;
        bar.finish_and_clear();
        result
    })??;
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
    if !summary.finished {
        println!(
            "interrupted: lines before {} are imported; go on with --from-line {}",
            summary.next_line, summary.next_line
        );
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// `COLUMN=TARGET` pairs of `--map`.
fn parse_mapping(map: &[String]) -> anyhow::Result<Vec<(String, Target)>> {
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

/// How an import ran.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Lines read, blank ones and those before `from_line` included.
    pub lines: u64,
    /// Lines left out because they come before `from_line`.
    pub skipped: u64,
    pub blank: u64,
    /// Signals that created a profile.
    pub created: u64,
    /// Signals that joined an existing profile.
    pub attached: u64,
    /// Profiles merged into others by the imported signals.
    pub merged: u64,
    /// Lines refused, each written to the rejects report.
    pub rejected: u64,
    /// The line to pass as `--from-line` to go on after this run.
    pub next_line: u64,
    /// Whether the whole input was read (not stopped early).
    pub finished: bool,
}

/// One refused line, as the rejects report writes it.
#[derive(Debug, Serialize)]
struct Rejection<'a> {
    line: u64,
    code: &'static str,
    message: String,
    /// The line as read (its first 1,000 characters).
    input: &'a str,
}

/// What to import and how.
pub struct Options {
    /// The first line to import (1-based); earlier ones are skipped.
    pub from_line: u64,
    /// Signals per batch (1 to `server.max_batch_signals`).
    pub batch: usize,
    /// The API's codes for what the service refuses.
    pub service_code: RefusalCode,
}

fn reject(
    rejects: &mut dyn Write,
    line: u64,
    refusal: Refusal,
    service_code: RefusalCode,
    input: &str,
) -> std::io::Result<()> {
    let clipped: String = input.chars().take(1000).collect();
    let message = refusal.to_string();
    let rejection = Rejection {
        line,
        code: refusal.code(service_code),
        message,
        input: &clipped,
    };
    serde_json::to_writer(&mut *rejects, &rejection)?;
    rejects.write_all(b"\n")
}

/// Imports the signals of `input`. `progress` hears the bytes read so far
/// after each batch; `stop` is asked between batches whether to stop early
/// (an interrupt). Fails only when the store does: the summary up to the
/// last acknowledged batch is then in the error's context.
pub async fn import(
    services: &Services,
    input: &mut dyn Source,
    rejects: &mut dyn Write,
    options: &Options,
    progress: &mut dyn FnMut(u64, &Summary),
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<Summary> {
    let mut summary = Summary {
        next_line: options.from_line.max(1),
        ..Summary::default()
    };
    // After a failure part-way, this names the line to go on from.
    let resume = |s: &Summary| format!("resume with --from-line {}", s.next_line);
    let mut read_bytes = 0u64;
    let mut done = false;
    while !done && !stop() {
        // (line number, the line, the parsed signal or why not)
        let mut batch: Vec<(u64, String, Result<SignalInput, Refusal>)> = Vec::new();
        while batch.len() < options.batch {
            let read = input.next_record().map_err(|e| {
                anyhow::anyhow!("reading the input failed ({e}); {}", resume(&summary))
            })?;
            let Some(record) = read else {
                done = true;
                break;
            };
            read_bytes = record.read_bytes;
            summary.lines += 1;
            let number = record.line;
            if number < options.from_line {
                summary.skipped += 1;
                continue;
            }
            let (line, parsed) = match record.text {
                Ok(line) if line.is_empty() => {
                    summary.blank += 1;
                    continue;
                }
                Ok(line) => {
                    let parsed = json::parse::<SignalInput>(line.as_bytes())
                        .map_err(Refusal::Json)
                        .and_then(|s| {
                            s.check_shape(services.rules())
                                .map_err(|e| Refusal::Service(ServiceError::Signal(e)))?;
                            Ok(s)
                        });
                    (line, parsed)
                }
                Err(e) => (String::new(), Err(e)),
            };
            batch.push((number, line, parsed));
        }
        if batch.is_empty() {
            continue;
        }
        let last_line = batch.last().map_or(summary.next_line, |(n, _, _)| *n);
        let mut lines = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        for (number, line, parsed) in batch {
            lines.push((number, line));
            items.push(match parsed {
                Ok(signal) => BatchItem::Signal(Box::new(signal)),
                Err(e) => BatchItem::Rejected(e),
            });
        }
        // The operator running an import is the back office: the table's
        // `unbound` row judges what the file asserts.
        let caller = crate::service::Caller::unbound("cli:import");
        let outcomes = services
            .ingest_batch_unlimited(items, caller)
            .await
            .map_err(|e| {
                anyhow::anyhow!("the store refused a batch ({e}); {}", resume(&summary))
            })?;
        // The store failing is no fault of the line: stop, and resume from
        // this batch (lines with a signal_id replay without harm).
        let store_failed = outcomes.iter().find_map(|o| match o {
            Err(Err(
                e
                @ (ServiceError::Store(_) | ServiceError::NotDurable | ServiceError::ShuttingDown),
            )) => Some(e.to_string()),
            _ => None,
        });
        if let Some(e) = store_failed {
            rejects.flush()?;
            anyhow::bail!("the store failed ({e}); {}", resume(&summary));
        }
        for ((number, line), outcome) in lines.iter().zip(outcomes) {
            match outcome {
                Ok(result) => {
                    if result.created {
                        summary.created += 1;
                    } else {
                        summary.attached += 1;
                    }
                    summary.merged += result.merged_ids.len() as u64;
                }
                Err(refused) => {
                    let refusal = match refused {
                        Ok(refusal) => refusal,
                        Err(service) => Refusal::Service(service),
                    };
                    summary.rejected += 1;
                    reject(rejects, *number, refusal, options.service_code, line)?;
                }
            }
        }
        summary.next_line = last_line + 1;
        progress(read_bytes, &summary);
    }
    summary.finished = done;
    rejects.flush()?;
    Ok(summary)
}
