//! The backup of the embedded store: what a backup directory holds, and the
//! stream the service sends it in (`GET /v1/admin/backup`).
//!
//! A backup directory holds two files:
//!
//! - `records.bin`: every record, in key order, each as a 4-byte big-endian
//!   key length, the key, a 4-byte big-endian value length and the value;
//!   the bytes exactly as the store keeps them.
//! - `manifest.json` ([`Manifest`]): the format version, the backup point,
//!   the number of records per kind, and the size and SHA-256 of
//!   `records.bin`. It is written last, and only once `records.bin` is
//!   complete and synced: a directory without it is not a backup.
//!
//! A restore reads the whole of `records.bin` against the manifest before
//! it writes anything, so a truncated, damaged or swapped file is refused.
//!
//! The stream is a sequence of frames, each a one-byte tag and a body:
//! `H` and a length-prefixed JSON [`BackupPoint`] first, then an `R` per
//! record (the body as in `records.bin`), then `E` and a length-prefixed
//! JSON [`StreamEnd`]. A stream cut short lacks its `E` frame, and the
//! client keeps nothing of it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::records::{kind_of, Entry};
use super::StoreError;

/// The version of the directory layout and the stream; a restore refuses
/// any other.
pub const FORMAT: u32 = 1;

pub const RECORDS_FILE: &str = "records.bin";
pub const MANIFEST_FILE: &str = "manifest.json";

/// The media type of the stream.
pub const STREAM_TYPE: &str = "application/vnd.anamnesis.backup";

/// The longest key or value a record may have (what the service writes is
/// far smaller): a length past it means the file is damaged.
const MAX_FIELD: u32 = 64 << 20;

/// The moment a backup is a copy of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupPoint {
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// The highest change-log position in the copy: it holds every change
    /// up to it and none after.
    pub last_change: u64,
    /// The highest change-log position the store had handed out by then
    /// (retention may have removed it from the log).
    pub positions_through: u64,
    /// Every sequence number in the copy is below this.
    pub sequences_below: u64,
}

/// What ends the stream: the checks of what came before.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamEnd {
    pub records: u64,
    /// SHA-256 (hex) of the record frames' bodies, as `records.bin` holds them.
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub point: BackupPoint,
    pub records: u64,
    /// Records per kind, as `anamnesis store-stats` names them.
    pub kinds: BTreeMap<String, u64>,
    /// Size of `records.bin`.
    pub bytes: u64,
    /// SHA-256 (hex) of `records.bin`.
    pub sha256: String,
    /// `service` (taken from the running service) or `offline`.
    pub taken_from: String,
}

fn io(context: &str, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{context}: {e}"))
}

fn damaged(why: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(format!("the backup is damaged: {why}"))
}

/// Appends a record's body (as in `records.bin`) to `out`.
pub fn encode_record(out: &mut Vec<u8>, k: &[u8], v: &[u8]) {
    out.extend_from_slice(&(k.len() as u32).to_be_bytes());
    out.extend_from_slice(k);
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

/// Appends a frame: its tag, and for `H` and `E` the JSON body with its length.
pub fn encode_frame<T: Serialize>(out: &mut Vec<u8>, tag: u8, body: &T) {
    let json = serde_json::to_vec(body).unwrap_or_default();
    out.push(tag);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
}

fn read_exact_or_end<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 if filled == 0 => return Ok(false),
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "cut short",
                ))
            }
            n => filled += n,
        }
    }
    Ok(true)
}

fn read_len<R: Read>(r: &mut R) -> Result<u32, StoreError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(damaged)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FIELD {
        return Err(damaged(format!("a length of {len} bytes")));
    }
    Ok(len)
}

fn read_field<R: Read>(r: &mut R) -> Result<Vec<u8>, StoreError> {
    let len = read_len(r)?;
    let mut field = vec![0u8; len as usize];
    r.read_exact(&mut field).map_err(damaged)?;
    Ok(field)
}

/// Reads one record body (as in `records.bin`), feeding its bytes to
/// `hash`; `None` at a clean end.
fn read_record<R: Read>(r: &mut R, hash: &mut Sha256) -> Result<Option<Entry>, StoreError> {
    let mut len = [0u8; 4];
    if !read_exact_or_end(r, &mut len).map_err(damaged)? {
        return Ok(None);
    }
    let klen = u32::from_be_bytes(len);
    if klen > MAX_FIELD {
        return Err(damaged(format!("a key of {klen} bytes")));
    }
    let mut k = vec![0u8; klen as usize];
    r.read_exact(&mut k).map_err(damaged)?;
    let v = read_field(r)?;
    hash.update(len);
    hash.update(&k);
    hash.update((v.len() as u32).to_be_bytes());
    hash.update(&v);
    Ok(Some((k, v)))
}

/// One frame of the stream.
pub enum Frame {
    Point(BackupPoint),
    Record(Entry),
    End(StreamEnd),
}

/// Reads the stream's frames, and checks the end against what came.
pub struct StreamReader<R: Read> {
    input: R,
    hash: Sha256,
    records: u64,
    ended: bool,
}

impl<R: Read> StreamReader<R> {
    pub fn new(input: R) -> StreamReader<R> {
        StreamReader {
            input,
            hash: Sha256::new(),
            records: 0,
            ended: false,
        }
    }

    /// The next frame; an error when the stream is cut short or damaged,
    /// or its end does not match the records that came.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, StoreError> {
        if self.ended {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        if !read_exact_or_end(&mut self.input, &mut tag).map_err(damaged)? {
            return Err(damaged(
                "the stream ended before its last frame (the service stopped or failed part-way)",
            ));
        }
        match tag[0] {
            b'H' => {
                let body = read_field(&mut self.input)?;
                let point = serde_json::from_slice(&body).map_err(damaged)?;
                Ok(Some(Frame::Point(point)))
            }
            b'R' => match read_record(&mut self.input, &mut self.hash)? {
                Some(entry) => {
                    self.records += 1;
                    Ok(Some(Frame::Record(entry)))
                }
                None => Err(damaged("a record frame without a record")),
            },
            b'E' => {
                let body = read_field(&mut self.input)?;
                let end: StreamEnd = serde_json::from_slice(&body).map_err(damaged)?;
                let sha = hex(&std::mem::take(&mut self.hash).finalize());
                if end.records != self.records || end.sha256 != sha {
                    return Err(damaged(format!(
                        "the service sent {} records (SHA-256 {}), {} arrived (SHA-256 {sha})",
                        end.records, end.sha256, self.records
                    )));
                }
                self.ended = true;
                Ok(Some(Frame::End(end)))
            }
            other => Err(damaged(format!("a frame tagged {other}"))),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a backup directory: the records, then the manifest.
pub struct BackupWriter {
    dir: PathBuf,
    out: BufWriter<File>,
    hash: Sha256,
    records: u64,
    bytes: u64,
    kinds: BTreeMap<String, u64>,
    buf: Vec<u8>,
}

impl BackupWriter {
    /// Creates `dir` (it must not exist, or be empty).
    pub fn create(dir: &Path) -> Result<BackupWriter, StoreError> {
        if dir.exists() {
            let mut entries =
                std::fs::read_dir(dir).map_err(|e| io(&format!("reading {}", dir.display()), e))?;
            if entries.next().is_some() {
                return Err(StoreError::Engine(format!(
                    "{} is not empty: back up into a new directory",
                    dir.display()
                )));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| io(&format!("creating {}", dir.display()), e))?;
        let path = dir.join(RECORDS_FILE);
        let file =
            File::create(&path).map_err(|e| io(&format!("creating {}", path.display()), e))?;
        Ok(BackupWriter {
            dir: dir.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            records: 0,
            bytes: 0,
            kinds: BTreeMap::new(),
            buf: Vec::new(),
        })
    }

    pub fn write(&mut self, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        self.buf.clear();
        encode_record(&mut self.buf, k, v);
        self.out
            .write_all(&self.buf)
            .map_err(|e| io("writing the records", e))?;
        self.hash.update(&self.buf);
        self.records += 1;
        self.bytes += self.buf.len() as u64;
        *self.kinds.entry(kind_of(k).to_owned()).or_default() += 1;
        Ok(())
    }

    /// Syncs the records, then writes and syncs the manifest (under a
    /// temporary name first, so that it appears whole or not at all).
    pub fn finish(self, point: BackupPoint, taken_from: &str) -> Result<Manifest, StoreError> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| io("writing the records", e.into_error()))?;
        file.sync_all().map_err(|e| io("syncing the records", e))?;
        let manifest = Manifest {
            format: FORMAT,
            point,
            records: self.records,
            kinds: self.kinds,
            bytes: self.bytes,
            sha256: hex(&self.hash.finalize()),
            taken_from: taken_from.to_owned(),
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| StoreError::Engine(format!("encoding the manifest: {e}")))?;
        let tmp = self.dir.join(format!("{MANIFEST_FILE}.tmp"));
        let mut f = File::create(&tmp).map_err(|e| io("writing the manifest", e))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(|e| io("writing the manifest", e))?;
        std::fs::rename(&tmp, self.dir.join(MANIFEST_FILE))
            .map_err(|e| io("writing the manifest", e))?;
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(manifest)
    }
}

/// Reads a backup directory's manifest (and checks its format).
pub fn read_manifest(dir: &Path) -> Result<Manifest, StoreError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(|e| {
        StoreError::Engine(format!(
            "{} is not a backup (no readable {MANIFEST_FILE}: {e}); an interrupted backup has none",
            dir.display()
        ))
    })?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| damaged(format!("{MANIFEST_FILE} does not decode: {e}")))?;
    if manifest.format != FORMAT {
        return Err(StoreError::Engine(format!(
            "the backup is of format {}, this build reads format {FORMAT}",
            manifest.format
        )));
    }
    Ok(manifest)
}

/// The records of a backup directory, read in order; the last read checks
/// the count, the size and the checksum against the manifest.
pub struct BackupRecords {
    input: BufReader<File>,
    hash: Sha256,
    manifest: Manifest,
    records: u64,
    bytes: u64,
    done: bool,
}

impl BackupRecords {
    pub fn open(dir: &Path) -> Result<BackupRecords, StoreError> {
        let manifest = read_manifest(dir)?;
        let path = dir.join(RECORDS_FILE);
        let file = File::open(&path).map_err(|e| damaged(format!("{}: {e}", path.display())))?;
        Ok(BackupRecords {
            input: BufReader::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            manifest,
            records: 0,
            bytes: 0,
            done: false,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Up to `max` more records; an empty batch at the end, once the whole
    /// file was found to match the manifest.
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<Entry>, StoreError> {
        let mut batch = Vec::new();
        while batch.len() < max && !self.done {
            match read_record(&mut self.input, &mut self.hash)? {
                Some((k, v)) => {
                    self.records += 1;
                    self.bytes += 8 + k.len() as u64 + v.len() as u64;
                    batch.push((k, v));
                }
                None => {
                    self.done = true;
                    let sha = hex(&std::mem::take(&mut self.hash).finalize());
                    let m = &self.manifest;
                    if (self.records, self.bytes) != (m.records, m.bytes) || sha != m.sha256 {
                        return Err(damaged(format!(
                            "{RECORDS_FILE} holds {} records in {} bytes (SHA-256 {sha}); the manifest says {} records in {} bytes (SHA-256 {})",
                            self.records, self.bytes, m.records, m.bytes, m.sha256
                        )));
                    }
                }
            }
        }
        Ok(batch)
    }
}

/// Reads a whole backup directory and checks it against its manifest,
/// writing nothing.
pub fn check(dir: &Path) -> Result<Manifest, StoreError> {
    let mut records = BackupRecords::open(dir)?;
    while !records.next_batch(4096)?.is_empty() {}
    Ok(records.manifest.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point() -> BackupPoint {
        BackupPoint {
            at: Utc::now(),
            last_change: 7,
            positions_through: 9,
            sequences_below: 100,
        }
    }

    #[test]
    fn a_backup_reads_back_and_any_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("b");
        let mut w = BackupWriter::create(&backup).unwrap();
        let records: Vec<Entry> = (0..1000u32)
            .map(|i| {
                (
                    format!("p{i:05}").into_bytes(),
                    vec![i as u8; (i % 50) as usize],
                )
            })
            .collect();
        for (k, v) in &records {
            w.write(k, v).unwrap();
        }
        let manifest = w.finish(point(), "offline").unwrap();
        assert_eq!(manifest.records, 1000);
        assert_eq!(manifest.kinds["profiles"], 1000);
        assert_eq!(check(&backup).unwrap().sha256, manifest.sha256);
        let mut read = BackupRecords::open(&backup).unwrap();
        let mut back = Vec::new();
        loop {
            let batch = read.next_batch(300).unwrap();
            if batch.is_empty() {
                break;
            }
            back.extend(batch);
        }
        assert_eq!(back, records);

        let file = backup.join(RECORDS_FILE);
        let bytes = std::fs::read(&file).unwrap();
        // One byte changed.
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 1;
        std::fs::write(&file, &flipped).unwrap();
        assert!(check(&backup).unwrap_err().to_string().contains("damaged"));
        // Cut short, at a record's end and in the middle of one.
        for len in [bytes.len() - (8 + 6 + 49), bytes.len() - 3] {
            std::fs::write(&file, &bytes[..len]).unwrap();
            assert!(check(&backup).unwrap_err().to_string().contains("damaged"));
        }
        std::fs::write(&file, &bytes).unwrap();
        check(&backup).unwrap();
        // No manifest: not a backup.
        std::fs::remove_file(backup.join(MANIFEST_FILE)).unwrap();
        assert!(check(&backup)
            .unwrap_err()
            .to_string()
            .contains("not a backup"));
        // A non-empty directory is not written into.
        assert!(BackupWriter::create(&backup).is_err());
    }

    #[test]
    fn a_stream_cut_short_or_altered_is_refused() {
        let mut stream = Vec::new();
        encode_frame(&mut stream, b'H', &point());
        let records_start = stream.len();
        let mut hash = Sha256::new();
        for i in 0..10u8 {
            let mut body = Vec::new();
            encode_record(&mut body, &[b'p', i], &[i; 3]);
            hash.update(&body);
            stream.push(b'R');
            stream.extend_from_slice(&body);
        }
        let end = StreamEnd {
            records: 10,
            sha256: hex(&hash.finalize()),
        };
        encode_frame(&mut stream, b'E', &end);
        let frames = |bytes: &[u8]| -> Result<usize, StoreError> {
            let mut r = StreamReader::new(bytes);
            let mut n = 0;
            while r.next_frame()?.is_some() {
                n += 1;
            }
            Ok(n)
        };
        assert_eq!(frames(&stream).unwrap(), 12);
        assert!(frames(&stream[..stream.len() - 20]).is_err());
        let mut altered = stream.clone();
        altered[records_start + 7] ^= 1;
        assert!(frames(&altered).is_err());
    }
}
