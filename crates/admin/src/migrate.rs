//! `migrate pop3 NAME` and `uidl diff NAME`: moving a maildrop off a live POP3 server while
//! keeping the UIDL that server gave every message, and proving before cut-over that our UIDLs
//! equal the old server's, so no client downloads anything again (RFC 1939 section 7).
//!
//! `migrate` RETRs every message the account does not already hold (by UIDL, so running it again
//! right before cut-over fetches only what arrived since) and stores them in one
//! [`store::Store::import`]: all or nothing. It never sends DELE, and it ends the session
//! without QUIT, so the old server never enters the UPDATE state (RFC 1939 section 6) and can
//! neither delete nor mark as retrieved (RFC 2449 EXPIRE) anything because of the migration.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal as _;

use anyhow::{bail, Context as _};
use proto::Secret;
use store::{AccountName, ImportMessage, QuotaCheck, Store, StoreError, DEFAULT_MAX_MESSAGE_SIZE};

use crate::import::import_into;
use crate::output::print;
use crate::pop3::{Remote, Security, Session};
use crate::progress::Progress;
use crate::users::read_password_line;
use crate::{account_name, open_existing, Location, RemoteArgs};

pub fn migrate(
    location: &Location,
    args: RemoteArgs,
    name: &str,
    check: QuotaCheck,
) -> anyhow::Result<()> {
    let name = account_name(name)?;
    let store = open_existing(location)?;
    // Fail on a missing account before asking for a password or connecting.
    local_uids(&*store, &name)?;
    let remote = remote(args)?;
    let what = format!("{}:{}", remote.host, remote.port);
    let mut session = Session::login(&remote)?;
    let pulled = pull(&*store, &name, &mut session, &what, check)?;
    // No QUIT: the old server stays out of UPDATE (see the module documentation).
    drop(session);
    if pulled.size_mismatches > 0 {
        eprintln!(
            "popadm: note: {} messages differed in size from the server's LIST \
             (the server counts octets differently; the bytes are stored as RETR sent them)",
            pulled.size_mismatches
        );
    }
    print(&format!(
        "migrated {} messages from {what} into {name} ({} already present)\n",
        pulled.stored, pulled.present
    ))
}

/// What [`pull`] did.
struct Pulled {
    stored: usize,
    present: usize,
    size_mismatches: u64,
}

/// UIDL and LIST, then RETR of every message whose UIDL `name` does not hold yet, all stored in
/// one import with the server's UIDLs. Sends no DELE and no QUIT.
fn pull(
    store: &dyn Store,
    name: &AccountName,
    session: &mut Session,
    what: &str,
    check: QuotaCheck,
) -> anyhow::Result<Pulled> {
    let local: HashSet<String> = local_uids(store, name)?.into_iter().collect();
    let uidl = session.uidl()?;
    let sizes: HashMap<u32, u64> = session.list()?.into_iter().collect();
    check_unique(&uidl)?;
    let todo: Vec<&(u32, String)> = uidl.iter().filter(|(_, u)| !local.contains(u)).collect();
    let present = uidl.len() - todo.len();
    let mut size_mismatches = 0u64;
    let listed_octets = todo.iter().filter_map(|(n, _)| sizes.get(n)).sum();
    let mut progress = Progress::messages(what, Some(todo.len() as u64), Some(listed_octets));
    let mut fetch = todo.iter().map(|(n, uid)| {
        let listed = sizes.get(n).copied();
        let limit = listed
            .unwrap_or(0)
            .max(DEFAULT_MAX_MESSAGE_SIZE)
            .saturating_mul(2);
        let bytes = session.retr(*n, limit)?;
        if listed.is_some_and(|l| l != bytes.len() as u64) {
            size_mismatches += 1;
        }
        Ok(ImportMessage {
            bytes,
            uid: Some(uid.clone()),
            uid_claimed: false,
        })
    });
    let mut fetch = progress.count(&mut fetch);
    let stored = import_into(store, name, &mut fetch, what, check)?.len();
    drop(fetch);
    drop(progress);
    Ok(Pulled {
        stored,
        present,
        size_mismatches,
    })
}

pub fn diff(location: &Location, args: RemoteArgs, name: &str) -> anyhow::Result<()> {
    let name = account_name(name)?;
    let store = open_existing(location)?;
    let local = local_uids(&*store, &name)?;
    let remote = remote(args)?;
    let mut session = Session::login(&remote)?;
    let uidl = session.uidl()?;
    session.quit()?;
    let report = diff_report(&local, &uidl);
    print(&report.text)?;
    if report.identical {
        Ok(())
    } else {
        bail!("the UIDLs differ: clients would download the listed messages again")
    }
}

struct Report {
    text: String,
    identical: bool,
}

/// What differs between our UIDLs (in maildrop order) and the server's `(number, uidl)`s.
fn diff_report(local: &[String], remote: &[(u32, String)]) -> Report {
    let local_set: HashSet<&str> = local.iter().map(String::as_str).collect();
    let remote_set: HashSet<&str> = remote.iter().map(|(_, u)| u.as_str()).collect();
    let mut text = String::new();
    let mut remote_only = 0;
    for (n, uid) in remote {
        if !local_set.contains(uid.as_str()) {
            text.push_str(&format!("remote-only {uid} (message {n} there)\n"));
            remote_only += 1;
        }
    }
    let mut local_only = 0;
    for uid in local {
        if !remote_set.contains(uid.as_str()) {
            text.push_str(&format!("local-only {uid}\n"));
            local_only += 1;
        }
    }
    let identical = remote_only == 0 && local_only == 0;
    if identical {
        text.push_str(&format!("uidl: identical ({} messages)\n", local.len()));
    } else {
        text.push_str(&format!(
            "uidl: {remote_only} remote-only, {local_only} local-only, {} in both\n",
            local.len() - local_only
        ));
    }
    Report { text, identical }
}

/// The UIDs of an existing account, in maildrop order.
fn local_uids(store: &dyn Store, name: &AccountName) -> anyhow::Result<Vec<String>> {
    let account = store
        .account(name)
        .context("looking the account up")?
        .ok_or_else(|| StoreError::NoSuchAccount(name.to_string()))?;
    Ok(store
        .list_messages(account.id)
        .context("listing the maildrop")?
        .into_iter()
        .map(|m| m.uid)
        .collect())
}

/// RFC 1939 section 7: a UIDL is unique in the maildrop; a server that breaks that cannot be
/// migrated faithfully.
fn check_unique(uidl: &[(u32, String)]) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    for (n, uid) in uidl {
        if !seen.insert(uid.as_str()) {
            bail!("the server gives UIDL {uid:?} to more than one message (again at {n})");
        }
    }
    Ok(())
}

/// The connection options, with the password read from stdin or the terminal.
fn remote(args: RemoteArgs) -> anyhow::Result<Remote> {
    let security = match (args.tls, args.starttls) {
        (true, _) => Security::Implicit,
        (false, true) => Security::StartTls,
        (false, false) => Security::Plain,
    };
    let port = args.port.unwrap_or(match security {
        Security::Implicit => 995,
        _ => 110,
    });
    let password = if args.password_stdin {
        read_password_line(&mut std::io::stdin().lock())
            .context("reading the password from stdin")?
    } else {
        if !std::io::stdin().is_terminal() {
            bail!("no terminal to ask for the password: use --password-stdin");
        }
        rpassword::prompt_password(format!("password of {} on {}: ", args.user, args.host))
            .context("reading the password from the terminal")?
            .into_bytes()
    };
    Ok(Remote {
        host: args.host,
        port,
        security,
        cafile: args.cafile,
        insecure: args.insecure,
        user: args.user,
        password: Secret::new(password),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pop3::tests::logged_in;
    use store::SqliteStore;
    use testbed::TempDir;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn diff_reports() {
        let r = diff_report(
            &strings(&["a", "b"]),
            &[(1, "a".to_owned()), (2, "b".to_owned())],
        );
        assert!(r.identical);
        assert_eq!(r.text, "uidl: identical (2 messages)\n");
        let r = diff_report(
            &strings(&["a", "c"]),
            &[(1, "a".to_owned()), (2, "b".to_owned())],
        );
        assert!(!r.identical);
        assert_eq!(
            r.text,
            "remote-only b (message 2 there)\nlocal-only c\nuidl: 1 remote-only, 1 local-only, 1 in both\n"
        );
        assert!(diff_report(&[], &[]).identical);
    }

    #[test]
    fn duplicate_remote_uidls_are_refused() {
        assert!(check_unique(&[(1, "a".into()), (2, "b".into())]).is_ok());
        assert!(check_unique(&[(1, "a".into()), (2, "a".into())]).is_err());
    }

    /// The fetch loop against a scripted server: messages already present (by UIDL) are not
    /// fetched, the rest is stored with the server's UIDLs, and no DELE or QUIT is sent.
    #[test]
    fn migrates_what_is_missing_without_dele_or_quit() {
        let dir = TempDir::new("migrate");
        let store = SqliteStore::open(dir.path()).expect("open");
        let name = AccountName::parse("m").expect("name");
        store.create_account(&name, "$argon2id$x").expect("create");
        store
            .import(
                &name,
                &mut std::iter::once(ImportMessage {
                    bytes: b"S: old\r\n\r\n".to_vec(),
                    uid: Some("uid-1".into()),
                    uid_claimed: false,
                }),
            )
            .expect("seed");
        let (mut session, server) = logged_in(vec![
            ("UIDL", "+OK\r\n1 uid-1\r\n2 uid-2\r\n.\r\n".into()),
            ("LIST", "+OK\r\n1 10\r\n2 13\r\n.\r\n".into()),
            ("RETR 2", "+OK\r\nS: 2\r\n\r\n..x\r\n.\r\n".into()),
        ]);
        let pulled = pull(&store, &name, &mut session, "test", QuotaCheck::Enforce).expect("pull");
        assert_eq!((pulled.stored, pulled.present), (1, 1));
        // LIST said 13 octets; RETR sent 10 after unstuffing.
        assert_eq!(pulled.size_mismatches, 1);
        drop(session);
        let seen = server.join().expect("server");
        assert!(!seen.iter().any(|c| c.starts_with("DELE") || c == "QUIT"));
        assert_eq!(
            local_uids(&store, &name).expect("local"),
            strings(&["uid-1", "uid-2"])
        );
    }
}
