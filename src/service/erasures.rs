//! The erasure log of the embedded store (`storage.erasure_log`): one JSON
//! line per erasure, naming the erased profile, the ids it had absorbed,
//! and when. Nothing else: no identifier, no trait.
//!
//! A backup is a copy of the store as it was; restored, it would bring back
//! every customer erased since it was taken. `anamnesis restore` reads this
//! log and erases every customer it lists again (an erasure the backup
//! already holds finds nothing to erase), so the log must outlive the store:
//! keep it on other storage or back it up apart from the store's backups.
//!
//! **Order.** The line is appended and synced inside the erasure's write,
//! before that write is flushed and long before the erasure is
//! acknowledged. A crash can so leave a logged erasure that never
//! committed (the caller, unanswered, asked for it and will ask again; a
//! restore honours it), but never an acknowledged erasure that is not
//! logged. When the line cannot be written, the erasure is refused with
//! `503 store_unavailable` and nothing of it is applied.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::CustomerId;

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Erasure {
    pub at: DateTime<Utc>,
    /// The profile the erasure named (live then).
    pub customer_id: CustomerId,
    /// The ids it had absorbed, erased with it: a restore of a backup taken
    /// before they were merged finds them as profiles of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_ids: Vec<CustomerId>,
}

pub struct ErasureLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl ErasureLog {
    /// Opens the log for appending, creating it (and syncing its directory)
    /// when it is not there: from the first start on, a missing log means
    /// it was lost, which `restore` then says.
    pub fn open(path: &Path) -> std::io::Result<ErasureLog> {
        let existed = path.exists();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if !existed {
            file.sync_all()?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok(ErasureLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one erasure and syncs it to the disk.
    pub fn append(&self, erasure: &Erasure) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(erasure).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)?;
        file.sync_data()
    }

    /// Every erasure the log at `path` holds, oldest first. A last line cut
    /// short (a crash while it was written) is left out; a damaged line
    /// anywhere else is an error naming it.
    pub fn read(path: &Path) -> std::io::Result<Vec<Erasure>> {
        let file = File::open(path)?;
        let lines: Vec<String> = BufReader::new(file).lines().collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(lines.len());
        for (n, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(line) {
                Ok(erasure) => out.push(erasure),
                Err(_) if n + 1 == lines.len() => {
                    tracing::warn!(
                        line = n + 1,
                        "the erasure log ends in a line cut short; left out"
                    );
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} line {}: {e}", path.display(), n + 1),
                    ))
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erasures_read_back_and_a_torn_last_line_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("erasures.log");
        let log = ErasureLog::open(&path).unwrap();
        let first = Erasure {
            at: Utc::now(),
            customer_id: CustomerId::generate(),
            merged_ids: vec![CustomerId::generate()],
        };
        let second = Erasure {
            at: Utc::now(),
            customer_id: CustomerId::generate(),
            merged_ids: vec![],
        };
        log.append(&first).unwrap();
        log.append(&second).unwrap();
        assert_eq!(
            ErasureLog::read(&path).unwrap(),
            vec![first.clone(), second]
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("phone") && text.lines().count() == 2);
        // A crash while the second line was written.
        let cut = text.len() - 10;
        std::fs::write(&path, &text[..cut]).unwrap();
        assert_eq!(ErasureLog::read(&path).unwrap(), vec![first]);
        // Damage before the last line is an error.
        std::fs::write(&path, format!("{{oops\n{text}")).unwrap();
        assert!(ErasureLog::read(&path).is_err());
    }
}
