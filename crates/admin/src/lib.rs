//! `popadm`: the administration tool of the POP3 suite, as a library with [`run`] plus a thin
//! `main`.
//!
//! It manages accounts (`user add|del|list|passwd`) and their RFC 2449 LOGIN-DELAY and EXPIRE
//! overrides and quotas (`user set`, `domain set`, `quota default`), shows a maildrop with its
//! use and last login (`stat`), delivers one
//! message for an MTA (`deliver`, exit codes after sysexits) and imports mailboxes from other
//! servers (`import mbox|maildir`, all or nothing, keeping qpopper `X-UIDL:` UIDs). It works
//! through the `store` crate's [`store::Store`] trait and hashes passwords with `auth`; it knows
//! nothing of the POP3 wire, and it never takes a password from the command line.

mod bearer;
mod deliver;
mod domains;
mod exit;
mod import;
mod migrate;
mod nodes;
mod output;
mod policy;
mod pop3;
mod progress;
mod quota;
mod users;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{ArgGroup, Parser, Subcommand};
use store::{
    AccountName, Expire, Limit, QuotaCheck, SqliteStore, Store, DB_FILE, DEFAULT_MAX_MESSAGE_SIZE,
};

pub use exit::{EX_DATAERR, EX_NOPERM, EX_NOUSER, EX_TEMPFAIL, EX_USAGE};
pub use import::maildir::{FoundUid, MaildirEntry, UidSource, XUidlHeader};
// The importers' parsers, for the fuzz targets (fuzz/targets/bodies.rs).
pub use import::mbox::Mbox;
pub use import::uidl::UidlPolicy;
pub use import::{stored_size, x_uidl};
pub use policy::Override;

/// Data directory used when neither `--data-dir` nor `POP3D_DATA_DIR` is given (the same default
/// as the pop3d server).
pub const DEFAULT_DATA_DIR: &str = "./pop3d-data";
/// Environment variable naming the data directory when `--data-dir` is absent.
pub const DATA_DIR_ENV: &str = "POP3D_DATA_DIR";
/// Environment variable naming a PostgreSQL store when `--store` is absent (pop3d's too).
pub const STORE_ENV: &str = "POP3D_STORE";

/// What `popadm --help` and popadm(8) show after the commands: worked examples, the files, and
/// where to read on. Headings ending in `:` become man page sections (see the `clidoc` crate).
const AFTER_HELP: &str = "\
Examples:
  # The first account; the password is asked twice (--password-stdin reads one line)
  popadm --data-dir /var/lib/pop3d user add alice@example.org

  # Deliver one message as an MTA does (Postfix master.cf pipe transport:
  #   argv=/usr/local/bin/popadm --data-dir /var/lib/pop3d deliver -f ${sender} ${recipient})
  popadm deliver -f bob@example.net alice@example.org < message.eml

  # Move a user from Dovecot keeping its UIDLs, so no client downloads anything again
  popadm import maildir /var/vmail/example.org/alice/Maildir alice@example.org

  # Or copy from any live POP3 server, then prove the UIDLs match before the cut-over
  popadm migrate pop3 --host pop.old.example --tls --user alice --password-stdin alice@example.org
  popadm uidl diff --host pop.old.example --tls --user alice --password-stdin alice@example.org

  # A rolling restart: drain a node, restart it once `node list` shows 0 sessions, bring it back
  popadm --store postgres://popadm@db/pop3d node drain pop1
  popadm --store postgres://popadm@db/pop3d node up pop1

  # Quotas: 1 GiB for everyone, 5 GiB for one domain, no limit for one account
  popadm quota default --quota-octets 1G
  popadm domain set example.org --quota-octets 5G
  popadm user set boss@example.org --quota-octets none

  # Single sign-on: which account does this OAuth 2.0 token log in as, or why not?
  popadm oauth2 check --config /etc/pop3d/pop3d.toml --token-stdin < token.txt

  # A consistent copy of the database while pop3d runs
  popadm backup /var/backups/pop3d-$(date +%F).sqlite3

Files:
  DATA_DIR/maildrops.sqlite3   every account and message; DATA_DIR is --data-dir, else
                               $POP3D_DATA_DIR, else ./pop3d-data (pop3d's default too)
  --store URL, $POP3D_STORE     a PostgreSQL store instead (postgres://USER@HOST/DB), in a
                               build with the `postgres` feature

See also:
  pop3d(8), popadm-user(8), popadm-deliver(8), popadm-import(8), popadm-migrate(8): install
  them with `popadm generate-man /usr/local/share/man/man8` and `pop3d --generate-man
  /usr/local/share/man/man8`. The administrator's guide: docs/admin-guide.md in the source,
  /usr/share/doc/pop3d/admin-guide.md when installed. Completion scripts: popadm completions
  bash|zsh|fish";

/// Manage the accounts and mail of the pop3d POP3 server: accounts and domains, local
/// delivery for an MTA, imports and migrations that keep UIDLs, backups.
#[derive(Debug, Parser)]
#[command(name = "popadm", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    /// Data directory of the maildrop store [env: POP3D_DATA_DIR] [default: ./pop3d-data]
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// A PostgreSQL maildrop store instead of the data directory's SQLite database:
    /// postgres://USER@HOST:PORT/DB (wins over --data-dir) [env: POP3D_STORE]
    #[arg(long, value_name = "URL", global = true)]
    pub store: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `popadm`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add, delete, list accounts; change passwords and per-account POP3 policies
    #[command(subcommand)]
    User(UserCommand),
    /// Add, delete, list domains (`user@domain` accounts; `user+domain` logs in too)
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Store one message from stdin in an account, as an MTA's local delivery agent
    ///
    /// Adds `Return-Path:` and `Delivered-To:` on top and removes a leading mbox `From ` line.
    /// Exit codes follow sysexits: 0 delivered, 65 bad message, name or sender, 67 no such
    /// user, 75 try again later, 77 mailbox full (over its quota; the MTA bounces).
    Deliver {
        /// Account name (`local` or `local@domain`)
        name: String,
        /// Envelope sender for `Return-Path:` (default: $SENDER, else the `From ` line's; `""`
        /// for the null sender of a bounce). With none of these, no `Return-Path:` is written.
        /// An address (`local@domain` or a bare local part, one pair of `<>` allowed), else
        /// exit 65
        #[arg(
            short = 'f',
            long = "from",
            value_name = "SENDER",
            allow_hyphen_values = true
        )]
        from: Option<String>,
        /// Store the message exactly as read: no headers added, no `From ` line removed
        #[arg(long, conflicts_with = "from")]
        no_lda_headers: bool,
        /// Refuse messages larger than this many octets (K, M, G suffixes: powers of 1024)
        #[arg(long, value_name = "SIZE", default_value_t = DEFAULT_MAX_MESSAGE_SIZE,
              value_parser = quota::parse_max_size)]
        max_size: u64,
        /// A full mailbox (over its quota) is a temporary failure (exit 75: the MTA keeps
        /// the message queued and retries) instead of a bounce (exit 77)
        #[arg(long)]
        quota_full_temporary: bool,
    },
    /// Import mail (mbox, maildir) keeping its UIDLs, or accounts from a Dovecot passwd-file
    #[command(subcommand)]
    Import(ImportCommand),
    /// Copy a maildrop from a live POP3 server, keeping the UIDLs it gave
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Compare an account's UIDLs with a live POP3 server's before a cut-over
    #[command(subcommand)]
    Uidl(UidlCommand),
    /// Write a consistent copy of the maildrop database to FILE while pop3d runs
    ///
    /// Uses SQLite's online backup API: safe while pop3d serves sessions and mail is
    /// delivered. FILE must not exist; to restore, stop pop3d and put the copy in place of
    /// DATA_DIR/maildrops.sqlite3.
    Backup {
        /// The new database file
        file: PathBuf,
    },
    /// List the pop3d nodes sharing the store; drain one for a restart, bring it back up
    ///
    /// Nodes are pop3d processes started with --node-id: each keeps its row with a heartbeat
    /// and reads its state back from it, so a drain or up takes effect within one heartbeat.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Show or set the global default quota (accounts and domains without their own)
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Check OAuth 2.0 bearer tokens as pop3d would (OAUTHBEARER, XOAUTH2)
    #[command(subcommand)]
    Oauth2(Oauth2Command),
    /// Show an account's message count, size, quota, lock, policy overrides and last login
    Stat {
        /// Account name (`local` or `local@domain`)
        name: String,
        /// One JSON object instead (the fields of `user list --json`)
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script to stdout
    ///
    /// bash: `popadm completions bash > /etc/bash_completion.d/popadm`;
    /// zsh: `popadm completions zsh > "${fpath[1]}/_popadm"`;
    /// fish: `popadm completions fish > ~/.config/fish/completions/popadm.fish`.
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clidoc::Shell,
    },
    /// Write popadm's manual pages (section 8) into DIR (`cargo xtask man` runs it). Hidden
    /// from the command list (it would give itself a page), named in `--help`'s See also.
    #[command(hide = true)]
    GenerateMan {
        /// Directory for the pages (created if missing)
        dir: PathBuf,
    },
}

/// The clap definition `popadm` parses its command line with, for manual pages and completion
/// scripts.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Manual section of the pages: system administration.
pub const MAN_SECTION: &str = "8";

/// `popadm oauth2 ...`
#[derive(Debug, Subcommand)]
pub enum Oauth2Command {
    /// Validate a token from stdin: the account it logs in as, or why pop3d refuses it
    ///
    /// Uses pop3d's own validation (the issuer's JWKS, or RFC 7662 introspection for opaque
    /// tokens) with the `[oauth2]` table of --config FILE, each --oauth2-* flag replacing its
    /// key, then looks the account up in the store. Exit codes: 0 the token logs in, 77 the
    /// token is refused, 67 it names no account, 75 the identity provider cannot be reached.
    Check {
        /// Read the token from stdin (one line; a leading `Bearer ` is dropped). Required:
        /// tokens are credentials and never go in argv
        #[arg(long, required = true)]
        token_stdin: bool,
        /// pop3d's configuration file, for its `[oauth2]` table and `default_domain`
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        oauth2: oauth2::Flags,
    },
}

/// `popadm domain ...`
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Add an empty domain
    Add {
        /// Domain name, e.g. example.org
        domain: String,
    },
    /// Delete a domain with all its accounts and their mail
    ///
    /// Asks first, naming the accounts, unless --yes.
    Del {
        /// Domain name
        domain: String,
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// List domains with their account counts (tab-separated, with a header line)
    List,
    /// Set the default quota of a domain's accounts (those whose own quota is `default`)
    #[command(group(ArgGroup::new("limits").required(true).multiple(true)
        .args(["quota_octets", "quota_messages"])))]
    Set {
        /// Domain name
        domain: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
}

/// `popadm quota ...`
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Show the global default quota, or set it with the options
    ///
    /// It applies to every account whose own quota and whose domain's are `default`. It is
    /// kept in the store, so pop3d's LMTP on every node, `popadm deliver` and `popadm import`
    /// all apply the same one.
    Default {
        #[command(flatten)]
        quota: QuotaArgs,
    },
}

/// The two limits of a quota, each left as it is when not given.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct QuotaArgs {
    /// Octets the maildrop may hold: a size (K, M, G suffixes: powers of 1024), `none` (no
    /// limit) or `default` (the domain's, else the global default)
    #[arg(long, value_name = "SIZE|none|default", value_parser = quota::parse_octets)]
    pub quota_octets: Option<Limit>,
    /// Messages the maildrop may hold: a count, `none` or `default`
    #[arg(long, value_name = "N|none|default", value_parser = quota::parse_messages)]
    pub quota_messages: Option<Limit>,
}

/// `popadm node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes (tab-separated, with a header line)
    ///
    /// Columns: id, address, state (up or draining), sessions, seconds since the last
    /// heartbeat, and live or dead (dead when 3 heartbeats were missed).
    List {
        /// The nodes' heartbeat interval in seconds (pop3d --heartbeat)
        #[arg(long, value_name = "SECS", default_value_t = 5,
              value_parser = clap::value_parser!(u64).range(1..))]
        heartbeat: u64,
    },
    /// Drain a node: it takes no new logins (-ERR [SYS/TEMP]); its sessions finish
    Drain {
        /// Node id (pop3d --node-id)
        id: String,
    },
    /// Let a drained node take logins again
    Up {
        /// Node id (pop3d --node-id)
        id: String,
    },
    /// Remove a node that is gone for good from the table
    ///
    /// A node still running adds itself again (up) at its next heartbeat.
    Remove {
        /// Node id (pop3d --node-id)
        id: String,
    },
}

/// `popadm user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account (asks for the password twice on the terminal)
    Add {
        /// Account name (`local` or `local@domain`)
        name: String,
        /// Read the password as one line from stdin instead of the terminal
        #[arg(long)]
        password_stdin: bool,
        /// Also keep the password-equivalent secret APOP and CRAM-MD5 need (see
        /// docs/authentication.md for the trade-off)
        #[arg(long)]
        legacy_auth: bool,
        /// Create the account's domain if the store has other domains but not this one (a
        /// typo would otherwise make a new domain; `domain add` does the same explicitly)
        #[arg(long)]
        new_domain: bool,
    },
    /// Delete an account and all its messages
    Del {
        /// Account name (`local` or `local@domain`)
        name: String,
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// List accounts (tab-separated, with a header line)
    List {
        /// One JSON array of objects instead (times RFC 3339, a missing value `null`)
        #[arg(long)]
        json: bool,
    },
    /// Set an account's LOGIN-DELAY and EXPIRE overrides (RFC 2449) and its quota
    ///
    /// `default` clears one so that the server's setting (for a quota: the domain's, else the
    /// global default) applies. Options not given are left as they are.
    #[command(group(ArgGroup::new("policy").required(true).multiple(true)
        .args(["login_delay", "expire", "quota_octets", "quota_messages"])))]
    Set {
        /// Account name (`local` or `local@domain`)
        name: String,
        /// Minimum seconds between two logins, or `default`
        #[arg(long, value_name = "SECS|default",
              value_parser = policy::parse_login_delay, allow_hyphen_values = true)]
        login_delay: Option<Override<u32>>,
        /// Days a retrieved message is kept (0: removed at the end of the session that
        /// retrieved it), `never`, or `default`
        #[arg(long, value_name = "DAYS|never|default",
              value_parser = policy::parse_expire, allow_hyphen_values = true)]
        expire: Option<Override<Expire>>,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Change an account's password (asks twice on the terminal)
    ///
    /// APOP and CRAM-MD5 stay enabled only with --legacy-auth.
    Passwd {
        /// Account name (`local` or `local@domain`)
        name: String,
        /// Read the password as one line from stdin instead of the terminal
        #[arg(long)]
        password_stdin: bool,
        /// Also keep the password-equivalent secret APOP and CRAM-MD5 need
        #[arg(long)]
        legacy_auth: bool,
    },
}

/// `popadm import ...`
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Import accounts from a Dovecot passwd-file, all or nothing
    ///
    /// Reads `user:{SCHEME}hash:...` lines: {ARGON2ID} and {ARGON2I} hashes as they are,
    /// {CRAM-MD5} states for CRAM-MD5 only, {PLAIN} and {CLEAR} hashed with argon2id. Every
    /// line is checked first, then all accounts are written in one transaction, or none.
    Passwd {
        /// The passwd-file
        file: PathBuf,
        /// Domain for user names without one (`tim` becomes `tim@DOMAIN`)
        #[arg(long)]
        domain: Option<String>,
        /// Check the file and say what would be done; write nothing
        #[arg(long)]
        dry_run: bool,
        /// Replace the password of accounts that already exist (their mail stays); without it
        /// an existing account fails the whole import
        #[arg(long)]
        update: bool,
        /// Leave out users whose scheme is not supported (SHA512-CRYPT, ...) instead of
        /// failing
        #[arg(long)]
        skip_unsupported: bool,
        /// Keep {PLAIN}/{CLEAR} passwords for APOP and CRAM-MD5 (see docs/authentication.md)
        #[arg(long)]
        legacy_auth: bool,
    },
    /// Import an mbox file (mboxrd quoting undone; `X-UIDL:` headers kept as UIDs)
    Mbox {
        /// The mbox file
        file: PathBuf,
        /// Account name (`local` or `local@domain`)
        name: String,
        /// Import even if the account goes over its quota (without it, such an import is
        /// refused whole)
        #[arg(long)]
        ignore_quota: bool,
    },
    /// Import a maildir (Dovecot, qpopper), keeping the UIDLs its clients know
    ///
    /// Reads `cur/` and `new/` in delivery order and keeps Dovecot's UIDLs (from
    /// `dovecot-uidlist`) or qpopper's (`X-UIDL:` headers).
    Maildir {
        /// The maildir (the directory holding `cur/` and `new/`)
        dir: PathBuf,
        /// Account name (`local` or `local@domain`)
        name: String,
        /// Which UIDLs of the old server to keep
        #[arg(long, value_enum, default_value_t = UidlPolicy::Auto)]
        uidl_format: UidlPolicy,
        /// Dovecot's `pop3_uidl_format`, if it was configured (%u UID, %v UID validity, %g
        /// GUID, %f file name; widths, X for lower-case hex, U and L, as Dovecot expands them)
        #[arg(long, value_name = "FORMAT", default_value = import::dovecot::DEFAULT_UIDL_FORMAT)]
        dovecot_uidl_format: String,
        /// File of `file-name uidl` lines; its UIDLs come before every other source
        #[arg(long, value_name = "FILE")]
        uidl_map: Option<PathBuf>,
        /// Import even if the account goes over its quota (without it, such an import is
        /// refused whole)
        #[arg(long)]
        ignore_quota: bool,
    },
}

/// `popadm migrate ...`
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Copy every message of a POP3 maildrop into an account, keeping its UIDLs
    ///
    /// All or nothing, each message with the UIDL the server gave it. Messages whose UIDL the account already holds are skipped,
    /// so a second run fetches only what is new. Nothing is deleted on the server: no DELE is
    /// sent and the session ends without QUIT (no UPDATE state, RFC 1939 section 6).
    Pop3 {
        #[command(flatten)]
        remote: RemoteArgs,
        /// Local account name (`local` or `local@domain`)
        name: String,
        /// Copy even if the account goes over its quota (without it, such a copy is refused
        /// whole)
        #[arg(long)]
        ignore_quota: bool,
    },
}

/// `popadm uidl ...`
#[derive(Debug, Subcommand)]
pub enum UidlCommand {
    /// List UIDLs found only on the server or only here
    ///
    /// Lines are `remote-only UIDL` or `local-only UIDL`; exit 0 and `uidl: identical (N
    /// messages)` when they are the same, 1 when they differ.
    Diff {
        #[command(flatten)]
        remote: RemoteArgs,
        /// Local account name (`local` or `local@domain`)
        name: String,
    },
}

/// How to reach and log in to another POP3 server (USER/PASS).
#[derive(Debug, clap::Args)]
pub struct RemoteArgs {
    /// Server host name or address (also the TLS server name)
    #[arg(long)]
    pub host: String,
    /// Server port [default: 110, or 995 with --tls]
    #[arg(long)]
    pub port: Option<u16>,
    /// Implicit TLS from the first byte (POP3S, RFC 8314)
    #[arg(long, conflicts_with = "starttls")]
    pub tls: bool,
    /// STLS after the greeting (RFC 2595)
    #[arg(long)]
    pub starttls: bool,
    /// PEM file of the CA (or the server's own certificate) to trust [default: the system
    /// bundle /etc/ssl/certs/ca-certificates.crt]
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub cafile: Option<PathBuf>,
    /// Do not verify the server's certificate (a known server on a trusted network only)
    #[arg(long)]
    pub insecure: bool,
    /// User name on the server
    #[arg(long)]
    pub user: String,
    /// Read the password as one line from stdin instead of the terminal
    #[arg(long)]
    pub password_stdin: bool,
}

/// Parses the command line. Clap's usage errors are printed and give [`EX_USAGE`]; `--help` and
/// `--version` print and give success. `main` exits with the code in `Err`.
pub fn parse<I, T>(args: I) -> Result<Cli, ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => Ok(cli),
        Err(e) => {
            // Printing help or an error to a closed pipe is not worth a panic.
            let _ = e.print();
            if e.use_stderr() {
                Err(ExitCode::from(EX_USAGE))
            } else {
                Err(ExitCode::SUCCESS)
            }
        }
    }
}

/// Runs one command. Errors are printed once, as `popadm: ...` with their causes, on stderr.
pub fn run(cli: Cli) -> ExitCode {
    let location = resolve_location(
        cli.data_dir,
        cli.store,
        std::env::var_os(DATA_DIR_ENV),
        std::env::var(STORE_ENV).ok(),
    );
    let (result, code_for) = match cli.command {
        Command::User(cmd) => (users::run(&location, cmd), exit::admin_code as fn(_) -> u8),
        Command::Domain(cmd) => (domains::run(&location, cmd), exit::admin_code as _),
        Command::Node(cmd) => (nodes::run(&location, cmd), exit::admin_code as _),
        Command::Quota(QuotaCommand::Default { quota: q }) => (
            quota::default(&location, q.quota_messages, q.quota_octets),
            exit::admin_code as _,
        ),
        Command::Stat { name, json } => {
            (users::stat(&location, &name, json), exit::admin_code as _)
        }
        Command::Oauth2(Oauth2Command::Check {
            token_stdin: _,
            config,
            oauth2,
        }) => (
            bearer::check(
                &location,
                bearer::Check {
                    config,
                    flags: oauth2,
                },
                std::io::stdin().lock(),
            )
            .map(|report| print!("{report}")),
            exit::admin_code as _,
        ),
        Command::Import(cmd) => (import::run(&location, cmd), exit::admin_code as _),
        Command::Backup { file } => (backup(&location, &file), exit::admin_code as _),
        Command::Completions { shell } => (
            clidoc::completions(command(), shell, &mut std::io::stdout().lock())
                .context("writing the completion script"),
            exit::admin_code as _,
        ),
        Command::GenerateMan { dir } => (generate_man(&dir), exit::admin_code as _),
        Command::Migrate(MigrateCommand::Pop3 {
            remote,
            name,
            ignore_quota,
        }) => (
            migrate::migrate(&location, remote, &name, quota_check(ignore_quota)),
            exit::admin_code as _,
        ),
        Command::Uidl(UidlCommand::Diff { remote, name }) => (
            migrate::diff(&location, remote, &name),
            exit::admin_code as _,
        ),
        Command::Deliver {
            name,
            max_size,
            from,
            no_lda_headers,
            quota_full_temporary,
        } => (
            deliver::run(&location, &name, max_size, from, !no_lda_headers),
            match quota_full_temporary {
                true => exit::deliver_code_quota_temporary as _,
                false => exit::deliver_code as _,
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("popadm: {e:#}");
            ExitCode::from(code_for(&e))
        }
    }
}

/// `--ignore-quota` as the store takes it.
fn quota_check(ignore_quota: bool) -> QuotaCheck {
    match ignore_quota {
        true => QuotaCheck::Ignore,
        false => QuotaCheck::Enforce,
    }
}

/// `backup FILE`.
fn backup(location: &Location, file: &Path) -> anyhow::Result<()> {
    let Location::Dir(data_dir, _) = location else {
        anyhow::bail!(
            "popadm backup copies a SQLite database; back a PostgreSQL store up with \
             PostgreSQL's own tools (pg_dump, or base backups with WAL archiving)"
        );
    };
    let store = open_existing_sqlite(data_dir)?;
    let progress = progress::Progress::spinner("backup");
    store
        .backup_to(file)
        .with_context(|| format!("backing the database up to {}", file.display()))?;
    drop(progress);
    let octets = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    output::print(&format!(
        "backup written to {} ({octets} octets)\n",
        file.display()
    ))
}

/// `generate-man DIR`: the pages, and their names on stdout.
fn generate_man(dir: &Path) -> anyhow::Result<()> {
    let written = clidoc::write_man_pages(command(), MAN_SECTION, dir)
        .with_context(|| format!("writing manual pages into {}", dir.display()))?;
    let names: String = written
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    output::print(&names)
}

/// Where the maildrop store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The SQLite database in this data directory, and whether it was named (`--data-dir` or
    /// `POP3D_DATA_DIR`) or is the default: only a named one is ever created.
    Dir(PathBuf, Named),
    /// A PostgreSQL database (its URL).
    Postgres(String),
}

/// `--store`, else `--data-dir`, else a non-empty `POP3D_STORE`, else the data directory of
/// [`named_data_dir`]: a flag always beats the environment.
fn resolve_location(
    dir_flag: Option<PathBuf>,
    store_flag: Option<String>,
    dir_env: Option<OsString>,
    store_env: Option<String>,
) -> Location {
    if let Some(url) = store_flag {
        return Location::Postgres(url);
    }
    if dir_flag.is_none() {
        if let Some(url) = store_env.filter(|v| !v.is_empty()) {
            return Location::Postgres(url);
        }
    }
    let (dir, named) = named_data_dir(dir_flag, dir_env);
    Location::Dir(dir, named)
}

/// Whether a data directory was named by the operator or is [`DEFAULT_DATA_DIR`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// `--data-dir` or `POP3D_DATA_DIR`.
    Yes,
    /// The default, `./pop3d-data` wherever popadm happens to run.
    Default,
}

/// `--data-dir`, else a non-empty `POP3D_DATA_DIR`, else [`DEFAULT_DATA_DIR`].
fn named_data_dir(flag: Option<PathBuf>, env: Option<OsString>) -> (PathBuf, Named) {
    match flag.or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from)) {
        Some(dir) => (dir, Named::Yes),
        None => (PathBuf::from(DEFAULT_DATA_DIR), Named::Default),
    }
}

/// Parses an account name given on the command line.
fn account_name(name: &str) -> anyhow::Result<AccountName> {
    Ok(AccountName::parse(name)?)
}

/// Opens (and creates if needed) the store: only `user add` creates a data directory.
/// Fails with `NoSuchAccount` unless `name` exists.
fn require_account(store: &dyn store::Store, name: &AccountName) -> anyhow::Result<()> {
    if store
        .account(name)
        .context("looking the account up")?
        .is_none()
    {
        return Err(store::StoreError::NoSuchAccount(name.to_string()).into());
    }
    Ok(())
}

/// Opens the store, creating the SQLite database (and its data directory) if needed, or
/// migrating the PostgreSQL one: only commands that add accounts or domains create a store.
fn open_or_create(location: &Location) -> anyhow::Result<Box<dyn Store>> {
    match location {
        Location::Dir(dir, Named::Yes) => {
            if !store_exists(dir)? {
                eprintln!(
                    "popadm: creating a new maildrop database in {}",
                    dir.display()
                );
            }
            Ok(Box::new(open_or_create_sqlite(dir)?))
        }
        // The default directory is relative to wherever popadm runs: a database is made only
        // where the operator said so, never by accident in the current directory.
        Location::Dir(dir, Named::Default) => match existing_sqlite(dir)? {
            Some(store) => Ok(Box::new(store)),
            None => anyhow::bail!(
                "no maildrop database in {} (the default, relative to the current directory); \
                 name the data directory with --data-dir DIR (or {DATA_DIR_ENV}) to create one \
                 there, or run popadm where pop3d keeps its data",
                dir.display()
            ),
        },
        Location::Postgres(url) => open_postgres(url),
    }
}

fn open_or_create_sqlite(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    SqliteStore::open(data_dir)
        .with_context(|| format!("opening the maildrop store in {}", data_dir.display()))
}

/// popadm takes no leases, so it opens a PostgreSQL store without a node id (clearing none).
fn open_postgres(url: &str) -> anyhow::Result<Box<dyn Store>> {
    if !store::is_postgres_url(url) {
        anyhow::bail!("--store takes a postgres:// or postgresql:// URL");
    }
    store::open_postgres(url, None).context("opening the PostgreSQL maildrop store")
}

/// Opens the store only if it already exists: every command but `user add` and `domain add`
/// needs an account, so none of them creates a data directory. (A PostgreSQL database exists
/// by definition: its schema is brought up to date.)
fn open_existing(location: &Location) -> anyhow::Result<Box<dyn Store>> {
    match location {
        Location::Dir(dir, _) => Ok(Box::new(open_existing_sqlite(dir)?)),
        Location::Postgres(url) => open_postgres(url),
    }
}

fn open_existing_sqlite(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    match existing_sqlite(data_dir)? {
        Some(store) => Ok(store),
        None => anyhow::bail!(
            "no maildrop database in {} (wrong --data-dir or {DATA_DIR_ENV}? \
             `popadm user add` creates it)",
            data_dir.display()
        ),
    }
}

/// The store if it exists, `None` if it does not (nothing is created).
fn existing_store(location: &Location) -> anyhow::Result<Option<Box<dyn Store>>> {
    match location {
        Location::Dir(dir, _) => Ok(existing_sqlite(dir)?.map(|s| Box::new(s) as Box<dyn Store>)),
        Location::Postgres(url) => open_postgres(url).map(Some),
    }
}

fn existing_sqlite(data_dir: &Path) -> anyhow::Result<Option<SqliteStore>> {
    if !store_exists(data_dir)? {
        return Ok(None);
    }
    open_or_create_sqlite(data_dir).map(Some)
}

/// Whether the data directory holds a database.
fn store_exists(data_dir: &Path) -> anyhow::Result<bool> {
    match std::fs::metadata(data_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => anyhow::bail!("{} is not a directory", data_dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the data directory {}", data_dir.display()))
        }
    }
    let db = data_dir.join(DB_FILE);
    match std::fs::metadata(&db) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading {}", db.display())),
    }
}

#[cfg(test)]
mod tests;
