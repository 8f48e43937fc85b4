//! [`SqliteStore::backup_to`]: a consistent copy of the live database with SQLite's online
//! backup API, safe while pop3d serves sessions and MTAs deliver.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::SqliteStore;
use crate::{Result, StoreError};

impl SqliteStore {
    /// Copies the whole database to a new file at `path`, which must not exist yet. The copy
    /// is one snapshot (the source is read in a single step under a WAL read transaction, so
    /// writers go on and the copy never restarts), written to `path` + `.partial`, synced, then
    /// renamed into place: `path` either does not exist or holds a complete database. Maildrop
    /// locks are not copied (they belong to the running server's sessions).
    pub fn backup_to(&self, path: &Path) -> Result<()> {
        if path.exists() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already exists", path.display()),
            )));
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let _ = std::fs::remove_file(&partial);
        // The copy holds password hashes: created 0600 whatever the umask, before SQLite
        // opens it (SQLite keeps an existing file's mode).
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)
                .map_err(StoreError::Io)?;
        }
        let result = self.with_conn(|src| {
            let mut dst = Connection::open_with_flags(
                &partial,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            )?;
            {
                let backup = Backup::new(src, &mut dst)?;
                // -1: every page in one step; a busy or locked step is retried after a pause,
                // for at most the store's busy timeout.
                let deadline = std::time::Instant::now() + super::BUSY_TIMEOUT;
                loop {
                    match backup.step(-1)? {
                        StepResult::Done => break,
                        StepResult::More | StepResult::Busy | StepResult::Locked
                            if std::time::Instant::now() < deadline =>
                        {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        _ => return Err(StoreError::Busy),
                    }
                }
            }
            // Maildrop locks belong to the sessions of the running server, not to the copy: a
            // restored copy must not keep a maildrop locked until the lease runs out.
            dst.execute("DELETE FROM locks", [])?;
            // The copy is a self-contained file: no WAL beside it.
            dst.pragma_update(None, "journal_mode", "DELETE")?;
            drop(dst);
            std::fs::File::open(&partial)
                .and_then(|f| f.sync_all())
                .map_err(StoreError::Io)?;
            std::fs::rename(&partial, path).map_err(StoreError::Io)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccountName, Store};

    #[test]
    fn a_backup_is_a_complete_database() {
        let dir = std::env::temp_dir().join(format!("store-backup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir).expect("open");
        let name = AccountName::parse("bea").expect("name");
        store.create_account(&name, "$argon2id$x").expect("create");
        store
            .deliver(&name, &mut &b"Subject: x\r\n\r\nx\r\n"[..], 1 << 20)
            .expect("deliver");
        let account = store.account(&name).expect("lookup").expect("exists").id;
        store
            .lock_maildrop(account, "pop3d@elsewhere:1#1", Duration::from_secs(600))
            .expect("lock");
        let copy = dir.join("copy.sqlite3");
        store.backup_to(&copy).expect("backup");
        assert!(!dir.join("copy.sqlite3.partial").exists());
        // A second backup to the same file is refused; the first is untouched.
        assert!(store.backup_to(&copy).is_err());
        let restored = SqliteStore::open_file(&copy).expect("open copy");
        let summary = restored.account_summary(&name).expect("summary");
        assert_eq!(summary.messages, 1);
        assert_eq!(summary.lock, None, "locks are not copied");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
