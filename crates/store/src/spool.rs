//! Spool files: where a message waits, whole, before the short write transaction that stores
//! it (`popadm deliver` and the LMTP listener), so a slow sender never holds the database's
//! write lock.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// A new file in `dir` that only this process can reach: created exclusively with mode 0600
/// (named after `tag`) and removed at once, so nothing is left behind whatever happens to the
/// process.
pub fn unlinked_file(dir: &Path, tag: &str) -> std::io::Result<File> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let mut attempt = 0u32;
    loop {
        let path = dir.join(format!(
            ".{tag}-{}-{nanos}-{attempt}.spool",
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1;
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("creating a spool file in {}: {e}", dir.display()),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Seek as _, SeekFrom, Write as _};

    /// The file works and leaves nothing in its directory.
    #[test]
    fn spool_files_are_unlinked_at_once() {
        let dir = testbed::TempDir::new("spool-file");
        let mut f = super::unlinked_file(dir.path(), "test").expect("file");
        f.write_all(b"kept").expect("write");
        f.seek(SeekFrom::Start(0)).expect("seek");
        let mut back = String::new();
        f.read_to_string(&mut back).expect("read");
        assert_eq!(back, "kept");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
