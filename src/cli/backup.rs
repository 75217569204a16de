//! The store's safety net on the command line: `anamnesis backup`,
//! `restore` and `verify` (the embedded store; a database backend is backed
//! up with the database's own tools).
//!
//! - `backup --to DIR` asks the running service for its backup stream
//!   (`GET /v1/admin/backup`, an admin token minted from the configured or
//!   generated secret unless one is given) and writes the backup directory
//!   (`store::backup`), keeping nothing when the stream is cut short or does
//!   not check out. `--offline` reads a stopped store itself.
//! - `restore --from DIR` (service stopped) checks the whole backup against
//!   its manifest while loading it into a new store beside the old one,
//!   swaps them, erases again everyone the erasure log lists, and verifies
//!   the result (`service::backup`).
//! - `verify` checks a stopped store's records and indexes.
//!
//! The generated auth secret is not in a backup: it is a credential, kept
//! in `storage.path` beside the store, not in it. Keep it (or the
//! configured keys) in the secret store; a restore onto a new machine needs
//! it copied there, or every token minted before is refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::BackupArgs;
use crate::auth::{default_secret, Authenticator, Scope};
use crate::config::{Backend, Settings};
use crate::service::backup::{mark_restored, verify as verify_store, ErasuresReapplied, Verified};
use crate::service::erasures::ErasureLog;
use crate::service::journal;
use crate::service::Services;
use crate::store::backup::{
    BackupPoint, BackupRecords, BackupWriter, Frame, Manifest, StreamReader, MANIFEST_FILE,
    RECORDS_FILE,
};
use crate::store::{SledStore, Store};

/// Lifetime of the admin token minted for one backup.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// How long the backup client waits for the next bytes of the stream.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Problems `verify` lists (it counts them all).
const MAX_LISTED: usize = 50;

/// `anamnesis backup`: from the running service, or `--offline` from the
/// stopped store.
pub fn backup(settings: &Settings, args: BackupArgs) -> anyhow::Result<()> {
    let BackupArgs {
        to,
        offline,
        url,
        token,
    } = args;
    let started = Instant::now();
    let manifest = if offline {
        take_offline(settings, &to)?
    } else {
        let token = match token {
            Some(token) => token,
            None => {
                let (secret, _) = default_secret(&settings.auth, &settings.storage.path)?;
                Authenticator::new(&settings.auth, secret.as_deref())?
                    .mint("cli:backup", &[Scope::Admin], None, TOKEN_TTL)
                    .context("minting an admin token (or give one with --token)")?
            }
        };
        let url = url.unwrap_or_else(|| format!("http://{}", settings.server.listen));
        from_service(&url, &token, &to)?
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

/// `anamnesis restore`: what [`restore_store`] did, then the verification.
pub fn restore(settings: &Settings, from: &Path, force: bool) -> anyhow::Result<()> {
    let r = restore_store(settings, from, force)?;
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

/// `anamnesis verify`: the stopped store in `storage.path`.
pub fn verify(settings: &Settings) -> anyhow::Result<()> {
    ensure_embedded(settings)?;
    let store = crate::store::open(&settings.storage, false)?;
    report_verified(&verify_store(&*store, MAX_LISTED)?)
}

/// Prints each problem found; fails when there is one.
fn report_verified(v: &Verified) -> anyhow::Result<()> {
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

fn ensure_embedded(settings: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.storage.backend == Backend::Sled,
        "storage.backend is \"postgres\": back the database up with its own tools (pg_dump, base backups)"
    );
    Ok(())
}

/// Removes what a failed backup left in `dir` (never a complete backup:
/// the manifest is written last).
fn discard(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(RECORDS_FILE));
    let _ = std::fs::remove_file(dir.join(format!("{MANIFEST_FILE}.tmp")));
    let _ = std::fs::remove_dir(dir);
}

/// Writes the frames of a backup stream into `dir`.
fn write_stream(input: impl Read, dir: &Path) -> anyhow::Result<Manifest> {
    let mut frames = StreamReader::new(input);
    let point = match frames.next_frame()? {
        Some(Frame::Point(point)) => point,
        _ => bail!("the service's answer does not start like a backup"),
    };
    let mut writer = BackupWriter::create(dir)?;
    let written: anyhow::Result<()> = (|| loop {
        match frames.next_frame()? {
            Some(Frame::Record((k, v))) => writer.write(&k, &v)?,
            Some(Frame::End(_)) => return Ok(()),
            Some(Frame::Point(_)) | None => bail!("the backup stream is out of order"),
        }
    })();
    if let Err(e) = written {
        drop(writer);
        discard(dir);
        return Err(e);
    }
    Ok(writer.finish(point, "service")?)
}

/// `http://host:port` (no path), as `server.listen` or `--url` give it.
fn host_port(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    anyhow::ensure!(
        !url.starts_with("https://"),
        "--url: the backup client speaks plain HTTP to a service on this machine or network; give http://HOST:PORT"
    );
    let host = rest.trim_end_matches('/');
    anyhow::ensure!(
        !host.contains('/') && host.contains(':'),
        "--url must be http://HOST:PORT, not {url}"
    );
    Ok(host.replace("0.0.0.0", "127.0.0.1"))
}

/// Takes a backup from the running service at `url` into `dir`.
fn from_service(url: &str, token: &str, dir: &Path) -> anyhow::Result<Manifest> {
    let host = host_port(url)?;
    let stream = TcpStream::connect(&host).with_context(|| {
        format!(
            "connecting to the service at {host} (is it running? --offline reads a stopped store)"
        )
    })?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut request = stream.try_clone()?;
    write!(
        request,
        "GET /v1/admin/backup HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nUser-Agent: anamnesis-backup\r\nConnection: close\r\n\r\n"
    )?;
    let mut input = BufReader::with_capacity(1 << 20, stream);
    let mut status = String::new();
    input.read_line(&mut status)?;
    let code = status.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut chunked = false;
    let mut length: Option<u64> = None;
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if name == "content-length" {
                length = value.parse().ok();
            }
        }
    }
    let body: Box<dyn Read> = match (chunked, length) {
        (true, _) => Box::new(Chunked::new(input)),
        (false, Some(n)) => Box::new(input.take(n)),
        (false, None) => Box::new(input),
    };
    if code != "200" {
        let mut text = String::new();
        let _ = body.take(64 << 10).read_to_string(&mut text);
        let why = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                let e = v.get("error")?;
                Some(format!(
                    "{}: {}",
                    e.get("code")?.as_str()?,
                    e.get("message")?.as_str()?
                ))
            })
            .unwrap_or(text);
        bail!("the service refused the backup ({}): {why}", status.trim());
    }
    write_stream(body, dir)
}

/// HTTP/1.1 chunked transfer coding, undone.
struct Chunked<R: BufRead> {
    input: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn new(input: R) -> Chunked<R> {
        Chunked {
            input,
            left: 0,
            done: false,
        }
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        while self.left == 0 && !self.done {
            let mut line = String::new();
            if self.input.read_line(&mut line)? == 0 {
                // Cut short: the reader above says so.
                return Ok(0);
            }
            let size = line.trim().split(';').next().unwrap_or("");
            if size.is_empty() {
                // The line ending the previous chunk's data.
                continue;
            }
            self.left = u64::from_str_radix(size, 16).map_err(|_| bad("a chunk size"))?;
            if self.left == 0 {
                self.done = true;
            }
        }
        if self.done {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = self.input.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Takes a backup of the stopped store in `storage.path` into `dir`.
fn take_offline(settings: &Settings, dir: &Path) -> anyhow::Result<Manifest> {
    ensure_embedded(settings)?;
    let store = crate::store::open(&settings.storage, false)?;
    let mut reader = store.begin_backup()?;
    let last_change = store.last_change()?;
    let point = BackupPoint {
        at: chrono::Utc::now(),
        last_change,
        positions_through: last_change
            .max(journal::pruned_through(&*store)?)
            .max(journal::positions_floor(&*store)?),
        sequences_below: reader.sequences_below(),
    };
    let mut writer = BackupWriter::create(dir)?;
    let written: anyhow::Result<()> = (|| {
        while let Some(records) = reader.next_records(4096)? {
            for (k, v) in &records {
                writer.write(k, v)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = written {
        drop(writer);
        discard(dir);
        return Err(e);
    }
    Ok(writer.finish(point, "offline")?)
}

/// What a restore did.
struct Restored {
    manifest: Manifest,
    /// Where the store it replaced was moved (with `--force`).
    replaced: Option<PathBuf>,
    erasures: ErasuresReapplied,
    verified: Verified,
    elapsed: Duration,
}

/// Restores the backup in `from` into `storage.path` (the service stopped).
fn restore_store(settings: &Settings, from: &Path, force: bool) -> anyhow::Result<Restored> {
    ensure_embedded(settings)?;
    let started = Instant::now();
    let data = &settings.storage.path;
    let db = data.join("db");
    let log = settings.storage.erasure_log_path();
    let erasures = ErasureLog::read(&log).with_context(|| {
        format!(
            "reading the erasure log {} (a restore erases again every customer it lists, so that \
             nobody erased after the backup comes back: put the log there from where it is kept, \
             or create an empty file if this store never erased anyone)",
            log.display()
        )
    })?;
    if db.exists() {
        let existing =
            SledStore::open_with(&db, settings.storage.cache_bytes).with_context(|| {
                format!(
                    "opening the store in {} (is the service running? stop it first)",
                    db.display()
                )
            })?;
        let holds = !existing.records_after(None, 1)?.is_empty();
        drop(existing);
        anyhow::ensure!(
            !holds || force,
            "{} holds a store with records; a restore replaces it: add --force to do so (the store it replaces is kept beside it)",
            db.display()
        );
    }
    let staging = data.join("db.restoring");
    if staging.exists() {
        // What an interrupted restore left.
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    let mut records = BackupRecords::open(from)?;
    let manifest = records.manifest().clone();
    let loaded: anyhow::Result<()> = (|| {
        let store = SledStore::open_with(&staging, settings.storage.cache_bytes)?;
        let bar = indicatif::ProgressBar::new(manifest.records);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} records {per_sec} {eta} left",
            )
            .context("progress bar style")?,
        );
        loop {
            // The last batch checks the whole file against the manifest.
            let batch = records.next_batch(1000)?;
            if batch.is_empty() {
                break;
            }
            bar.inc(batch.len() as u64);
            store.put_records(batch)?;
        }
        bar.finish_and_clear();
        mark_restored(&store, &manifest.point)?;
        Ok(())
    })();
    if let Err(e) = loaded {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e.context(format!(
            "restoring from {}: nothing was changed",
            from.display()
        )));
    }
    let replaced = match db.exists() {
        true => {
            let aside = data.join(format!(
                "db.replaced-{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
            ));
            std::fs::rename(&db, &aside)
                .with_context(|| format!("moving {} aside", db.display()))?;
            Some(aside)
        }
        false => None,
    };
    std::fs::rename(&staging, &db)
        .with_context(|| format!("moving the restored store to {}", db.display()))?;
    if let Ok(dir) = std::fs::File::open(data) {
        let _ = dir.sync_all();
    }

    // Erased again, through the use case, with the service's rules; no
    // Redis: the restored store has an id of its own, nothing cached for it.
    let mut offline = settings.clone();
    offline.redis.url = None;
    offline.redis.cluster_nodes.clear();
    let (erasures, verified) = super::block_on(async {
        let store = crate::store::open(&offline.storage, false)?;
        let services = Services::new(&offline, store.clone())?;
        let report = services.reapply_erasures(&erasures).await?;
        services.sync().await?;
        let verified = verify_store(&*store, MAX_LISTED)?;
        anyhow::Ok((report, verified))
    })??;
    Ok(Restored {
        manifest,
        replaced,
        erasures,
        verified,
        elapsed: started.elapsed(),
    })
}
