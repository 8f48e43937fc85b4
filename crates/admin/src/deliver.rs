//! `deliver NAME`: one message from stdin into a maildrop, for an MTA (Postfix `mailbox_command`,
//! Exim pipe transport, procmail-style). Silent on success; exit codes follow sysexits (see
//! [`crate::exit::deliver_code`]). The message is streamed into the store, never held whole here.

use std::io::BufRead;
use std::path::Path;

use anyhow::Context as _;
use store::{Store, StoreError};

use crate::{account_name, open_existing, require_account};

pub fn run(data_dir: &Path, name: &str, max_size: u64) -> anyhow::Result<()> {
    let name = account_name(name)?;
    // A missing database is not created: it means a wrong data directory (an MTA's environment
    // lacking POP3D_DATA_DIR, say), and bouncing every message as "no such user" would lose
    // mail that a fixed configuration could still deliver. Exit 75 keeps it queued.
    let store = open_existing(data_dir)?;
    // Look the account up before reading anything, so an unknown user costs no I/O.
    require_account(&store, &name)?;
    let mut stdin = std::io::stdin().lock();
    // Peeking keeps the bytes in stdin's buffer: the store still reads the whole message.
    let empty = stdin
        .fill_buf()
        .map_err(StoreError::Input)
        .context("reading the message from stdin")?
        .is_empty();
    if empty {
        return Err(StoreError::InvalidMessage("the message is empty").into());
    }
    store
        .deliver(&name, &mut stdin, max_size)
        .with_context(|| format!("delivering to {name}"))?;
    Ok(())
}
