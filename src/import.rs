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
    /// Longest line taken, in bytes: the API's own body limit.
    max_line: usize,
}

impl<R: BufRead> Ndjson<R> {
    pub fn new(reader: R, max_line: usize) -> Ndjson<R> {
        Ndjson {
            reader,
            line: 0,
            read_bytes: 0,
            max_line,
        }
    }

    /// Reads up to the next newline, keeping at most `max_line + 1` bytes
    /// of it (a longer line is refused, never held whole); the bytes read
    /// and whether the line was cut.
    fn read_bounded(&mut self, into: &mut Vec<u8>) -> std::io::Result<(usize, bool)> {
        let mut read = 0;
        let mut cut = false;
        loop {
            let buffer = self.reader.fill_buf()?;
            if buffer.is_empty() {
                return Ok((read, cut));
            }
            let (chunk, found) = match buffer.iter().position(|b| *b == b'\n') {
                Some(at) => (&buffer[..=at], true),
                None => (buffer, false),
            };
            let room = (self.max_line + 1).saturating_sub(into.len());
            if chunk.len() > room {
                cut = true;
            }
            into.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = chunk.len();
            self.reader.consume(used);
            read += used;
            if found {
                return Ok((read, cut));
            }
        }
    }
}

impl<R: BufRead> Source for Ndjson<R> {
    fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        let mut bytes = Vec::new();
        let (n, cut) = self.read_bounded(&mut bytes)?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        self.read_bytes += n as u64;
        // A byte-order mark some editors write at the start of a file.
        if self.line == 1 && bytes.starts_with(b"\xef\xbb\xbf") {
            bytes.drain(..3);
        }
        let text = if cut || bytes.len() > self.max_line {
            Err(ApiError::PayloadTooLarge(self.max_line))
        } else {
            match String::from_utf8(bytes) {
                Ok(text) => Ok(text.trim().to_owned()),
                Err(_) => Err(ApiError::MalformedJson(
                    "the line is not UTF-8 text".to_owned(),
                )),
            }
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
                // Where the bad row starts, not where the reader stopped.
                line: e.position().map_or(line, csv::Position::line),
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
    // After a failure part-way, this names the line to go on from.
    let resume = |s: &Summary| format!("resume with --from-line {}", s.next_line);
    let mut read_bytes = 0u64;
    let mut done = false;
    while !done && !stop() {
        // (line number, the line, the parsed signal or why not)
        let mut batch: Vec<(u64, String, Result<SignalInput, ApiError>)> = Vec::new();
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
    summary.finished = done;
    rejects.flush()?;
    Ok(summary)
}
