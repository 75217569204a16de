//! `anamnesis import`: newline-delimited JSON signals, one per line, through
//! the same validation and resolution as `POST /v1/signals/batch`.
//!
//! Lines go to the committer in batches; a batch is acknowledged once it is
//! durable, so after an interruption everything before the first line of the
//! unacknowledged batch is in the store, and `--from-line` resumes there.
//! Signals that carry a `signal_id` may be sent again without harm (a replay
//! returns the first result); signals without one would be counted twice.

use std::io::{BufRead, Write};

use serde::Serialize;

use crate::domain::SignalInput;
use crate::error::ApiError;
use crate::routes::extract::parse_json;
use crate::service::{BatchItem, ServiceError, Services};

/// Longest line taken (a signal is at most 64 KiB in the API; a line may
/// carry more whitespace).
pub const MAX_LINE_BYTES: usize = 1 << 20;

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
}

fn reject(
    rejects: &mut dyn Write,
    line: u64,
    error: &ApiError,
    input: &str,
) -> std::io::Result<()> {
    let clipped: String = input.chars().take(1000).collect();
    let rejection = Rejection {
        line,
        code: error.status_and_code().1,
        message: error.to_string(),
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
    input: &mut dyn BufRead,
    rejects: &mut dyn Write,
    options: &Options,
    progress: &mut dyn FnMut(u64, &Summary),
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<Summary> {
    let mut summary = Summary {
        next_line: options.from_line.max(1),
        ..Summary::default()
    };
    let mut read_bytes = 0u64;
    let mut text = String::new();
    let mut done = false;
    while !done && !stop() {
        // (line number, the line, the parsed signal or why not)
        let mut batch: Vec<(u64, String, Result<SignalInput, ApiError>)> = Vec::new();
        while batch.len() < options.batch {
            text.clear();
            let n = input.read_line(&mut text)?;
            if n == 0 {
                done = true;
                break;
            }
            read_bytes += n as u64;
            summary.lines += 1;
            let number = summary.lines;
            if number < options.from_line {
                summary.skipped += 1;
                continue;
            }
            let line = text.trim();
            if line.is_empty() {
                summary.blank += 1;
                continue;
            }
            let parsed = if n > MAX_LINE_BYTES {
                Err(ApiError::PayloadTooLarge(MAX_LINE_BYTES))
            } else {
                parse_json::<SignalInput>(line.as_bytes()).and_then(|s| {
                    s.check_shape(services.rules())
                        .map_err(|e| ApiError::Service(ServiceError::Signal(e)))?;
                    Ok(s)
                })
            };
            batch.push((number, line.to_owned(), parsed));
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
        let outcomes = services.ingest_batch(items).await.map_err(|e| {
            anyhow::anyhow!(
                "the store refused a batch ({e}); everything before line {} is imported: \
                 resume with --from-line {}",
                summary.next_line,
                summary.next_line
            )
        })?;
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
                Err(error) => {
                    let error = match error {
                        Ok(api) => api,
                        Err(service) => ApiError::Service(service),
                    };
                    summary.rejected += 1;
                    reject(rejects, *number, &error, line)?;
                }
            }
        }
        summary.next_line = last_line + 1;
        progress(read_bytes, &summary);
    }
    rejects.flush()?;
    Ok(summary)
}
