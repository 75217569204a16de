//! `anamnesis import`: newline-delimited JSON signals, one per line, or the
//! rows of a CSV file turned into signals by a column mapping, through the
//! same validation and resolution as `POST /v1/signals/batch`.
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

/// One record of the input: its line number, the input bytes read up to
/// its end, and the signal as JSON text (or why the record cannot be one).
pub struct Record {
    pub line: u64,
    pub read_bytes: u64,
    pub text: Result<String, ApiError>,
}

/// Where records come from.
pub trait Source {
    /// The next record, `None` at the end.
    fn next_record(&mut self) -> std::io::Result<Option<Record>>;
}

/// Newline-delimited JSON: a signal per line.
pub struct Ndjson<R> {
    reader: R,
    line: u64,
    read_bytes: u64,
}

impl<R: BufRead> Ndjson<R> {
    pub fn new(reader: R) -> Ndjson<R> {
        Ndjson {
            reader,
            line: 0,
            read_bytes: 0,
        }
    }
}

impl<R: BufRead> Source for Ndjson<R> {
    fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        let mut text = String::new();
        let n = self.reader.read_line(&mut text)?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        self.read_bytes += n as u64;
        let text = if n > MAX_LINE_BYTES {
            Err(ApiError::PayloadTooLarge(MAX_LINE_BYTES))
        } else {
            Ok(text.trim().to_owned())
        };
        Ok(Some(Record {
            line: self.line,
            read_bytes: self.read_bytes,
            text,
        }))
    }
}

/// Where a CSV column goes in the signal.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    SignalId,
    Channel,
    OccurredAt,
    /// `identifier:TYPE`
    Identifier(String),
    /// `trait:NAME`
    Trait(String),
    /// `answer:KEY`
    Answer(String),
    /// `event.type`, `event.summary`
    EventType,
    EventSummary,
    /// `property:NAME`: a property of the event.
    Property(String),
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        let with = |prefix: &str| {
            s.strip_prefix(prefix)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
        };
        Ok(match s {
            "signal_id" => Target::SignalId,
            "channel" => Target::Channel,
            "occurred_at" => Target::OccurredAt,
            "event.type" => Target::EventType,
            "event.summary" => Target::EventSummary,
            _ => {
                if let Some(t) = with("identifier:") {
                    Target::Identifier(t)
                } else if let Some(t) = with("trait:") {
                    Target::Trait(t)
                } else if let Some(k) = with("answer:") {
                    Target::Answer(k)
                } else if let Some(p) = with("property:") {
                    Target::Property(p)
                } else {
                    return Err(format!(
                        "`{s}` is not a target: signal_id, channel, occurred_at, identifier:TYPE, \
                         trait:NAME, answer:KEY, event.type, event.summary or property:NAME"
                    ));
                }
            }
        })
    }
}

/// CSV rows with a header line, made into signals by a column mapping.
/// Empty cells are left out; every value is taken as text.
pub struct Csv<R> {
    reader: csv::Reader<R>,
    /// (column index, target)
    columns: Vec<(usize, Target)>,
    channel: String,
}

impl<R: std::io::Read> Csv<R> {
    /// `mapping`: (column name, target). Fails naming a column the header
    /// does not have.
    pub fn new(input: R, mapping: &[(String, Target)], channel: &str) -> anyhow::Result<Csv<R>> {
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
        let header = reader.headers()?.clone();
        let columns = mapping
            .iter()
            .map(|(name, target)| {
                header
                    .iter()
                    .position(|h| h.trim() == name)
                    .map(|i| (i, target.clone()))
                    .ok_or_else(|| anyhow::anyhow!("the CSV header has no column `{name}`"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            columns
                .iter()
                .any(|(_, t)| matches!(t, Target::Identifier(_))),
            "the mapping names no identifier column (identifier:TYPE): rows would identify nobody"
        );
        Ok(Csv {
            reader,
            columns,
            channel: channel.to_owned(),
        })
    }

    fn signal(&self, row: &csv::StringRecord) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let mut signal = Map::new();
        signal.insert("channel".into(), json!(self.channel));
        let mut identifiers = Vec::new();
        let mut traits = Map::new();
        let mut answers = Vec::new();
        let mut event = Map::new();
        let mut properties = Map::new();
        for (i, target) in &self.columns {
            let Some(cell) = row.get(*i).map(str::trim).filter(|c| !c.is_empty()) else {
                continue;
            };
            let cell = Value::String(cell.to_owned());
            match target {
                Target::SignalId => _ = signal.insert("signal_id".into(), cell),
                Target::Channel => _ = signal.insert("channel".into(), cell),
                Target::OccurredAt => _ = signal.insert("occurred_at".into(), cell),
                Target::Identifier(t) => identifiers.push(json!({"type": t, "value": cell})),
                Target::Trait(n) => _ = traits.insert(n.clone(), cell),
                Target::Answer(k) => answers.push(json!({"key": k, "value": cell})),
                Target::EventType => _ = event.insert("type".into(), cell),
                Target::EventSummary => _ = event.insert("summary".into(), cell),
                Target::Property(n) => _ = properties.insert(n.clone(), cell),
            }
        }
        signal.insert("identifiers".into(), Value::Array(identifiers));
        if !traits.is_empty() {
            signal.insert("traits".into(), Value::Object(traits));
        }
        if !answers.is_empty() {
            signal.insert("answers".into(), Value::Array(answers));
        }
        if !properties.is_empty() {
            event.insert("properties".into(), Value::Object(properties));
        }
        // An event needs its type; properties without one are refused with
        // the API's own message (`missing field type`).
        if !event.is_empty() {
            signal.insert("event".into(), Value::Object(event));
        }
        Value::Object(signal)
    }
}

impl<R: std::io::Read> Source for Csv<R> {
    fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        let mut row = csv::StringRecord::new();
        let read = self.reader.read_record(&mut row);
        let position = self.reader.position();
        let (line, read_bytes) = (position.line(), position.byte());
        match read {
            Ok(false) => Ok(None),
            Ok(true) => {
                let line = row.position().map_or(line, csv::Position::line);
                Ok(Some(Record {
                    line,
                    read_bytes,
                    text: Ok(self.signal(&row).to_string()),
                }))
            }
            Err(e) if e.is_io_error() => Err(std::io::Error::other(e.to_string())),
            Err(e) => Ok(Some(Record {
                line,
                read_bytes,
                text: Err(ApiError::MalformedJson(format!("not a CSV row: {e}"))),
            })),
        }
    }
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
    let mut read_bytes = 0u64;
    let mut done = false;
    while !done && !stop() {
        // (line number, the line, the parsed signal or why not)
        let mut batch: Vec<(u64, String, Result<SignalInput, ApiError>)> = Vec::new();
        while batch.len() < options.batch {
            let Some(record) = input.next_record()? else {
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
                    let parsed = parse_json::<SignalInput>(line.as_bytes()).and_then(|s| {
                        s.check_shape(services.rules())
                            .map_err(|e| ApiError::Service(ServiceError::Signal(e)))?;
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
