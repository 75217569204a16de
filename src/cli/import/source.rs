//! Where the signals of an import come from: the lines of an NDJSON file,
//! or the rows of a CSV file made into signals by a column mapping. Each
//! record keeps its line number and the bytes read up to its end, so that
//! the summary can name the line to go on from and the bar can show
//! progress.

use std::io::BufRead;

use super::Refusal;

/// One record of the input: its line number, the input bytes read up to
/// its end, and the signal as JSON text (or why the record cannot be one).
pub struct Record {
    pub line: u64,
    pub read_bytes: u64,
    pub text: Result<String, Refusal>,
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
            Err(Refusal::TooLong(self.max_line))
        } else {
            match String::from_utf8(bytes) {
                Ok(text) => Ok(text.trim().to_owned()),
                Err(_) => Err(Refusal::malformed("the line is not UTF-8 text")),
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
                text: Err(Refusal::malformed(format!("not a CSV row: {e}"))),
            })),
        }
    }
}
