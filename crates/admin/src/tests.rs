use super::*;
use clap::CommandFactory as _;

#[test]
fn verify_cli() {
    Cli::command().debug_assert();
}

#[test]
fn man_pages_name_every_command_and_flag() {
    let pages = clidoc::pages(command(), MAN_SECTION);
    assert_eq!(
        clidoc::undocumented(command(), &pages, MAN_SECTION),
        Vec::<String>::new()
    );
    let names: Vec<&str> = pages.iter().map(|p| p.file_name.as_str()).collect();
    for name in ["popadm.8", "popadm-user-add.8", "popadm-import-maildir.8"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.contains("generate-man")),
        "{names:?}"
    );
    let top = &pages[0].roff;
    assert!(top.contains(".SH EXAMPLES"), "{top}");
}

#[test]
fn help_teaches() {
    let help = command().render_help().to_string();
    for example in [
        "user add alice",
        "deliver -f",
        "import maildir",
        "migrate pop3",
        "popadm backup",
        "quota default --quota-octets",
        "oauth2 check",
    ] {
        assert!(help.contains(example), "{example}: {help}");
    }
    // Every visible command at every depth has a one-line description.
    fn one_liners(cmd: &clap::Command) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(
                !about.is_empty() && !about.contains('\n') && about.len() <= 90,
                "{}: {about:?}",
                sub.get_name()
            );
            one_liners(sub);
        }
    }
    one_liners(&command());
}

#[test]
fn data_dir_precedence() {
    let flag = Some(PathBuf::from("/flag"));
    let env = Some(OsString::from("/env"));
    assert_eq!(
        named_data_dir(flag.clone(), env.clone()).0,
        PathBuf::from("/flag")
    );
    assert_eq!(named_data_dir(None, env).0, PathBuf::from("/env"));
    assert_eq!(
        named_data_dir(None, Some(OsString::new())).0,
        PathBuf::from(DEFAULT_DATA_DIR)
    );
    assert_eq!(
        named_data_dir(None, None).0,
        PathBuf::from(DEFAULT_DATA_DIR)
    );
}

#[test]
fn store_location_precedence() {
    let url = || Some("postgres://u@h/db".to_owned());
    let dir = || Some(PathBuf::from("/flag"));
    let pg = Location::Postgres("postgres://u@h/db".into());
    // --store beats everything, --data-dir beats $POP3D_STORE, which beats the default.
    assert_eq!(resolve_location(dir(), url(), None, None), pg);
    assert_eq!(
        resolve_location(dir(), None, None, url()),
        Location::Dir(PathBuf::from("/flag"), Named::Yes)
    );
    assert_eq!(resolve_location(None, None, None, url()), pg);
    assert_eq!(
        resolve_location(None, None, Some("/env".into()), Some(String::new())),
        Location::Dir(PathBuf::from("/env"), Named::Yes)
    );
    assert_eq!(
        resolve_location(None, None, None, None),
        Location::Dir(PathBuf::from(DEFAULT_DATA_DIR), Named::Default)
    );
    let cli = parse(["popadm", "user", "list", "--store", "postgres://u@h/db"]).expect("parses");
    assert_eq!(cli.store.as_deref(), Some("postgres://u@h/db"));
}

#[test]
fn usage_errors_and_help() {
    assert!(parse(["popadm", "user", "add", "bob", "secret"]).is_err());
    assert!(parse(["popadm", "user", "add", "bob", "--password-stdin"]).is_ok());
    assert!(parse(["popadm", "deliver", "bob", "--max-size", "0"]).is_err());
    let cli = parse(["popadm", "deliver", "bob"]).expect("parses");
    assert!(matches!(
        cli.command,
        Command::Deliver { max_size, .. } if max_size == DEFAULT_MAX_MESSAGE_SIZE
    ));
    let cli = parse(["popadm", "deliver", "-f", "a@b", "bob"]).expect("parses");
    assert!(matches!(cli.command, Command::Deliver { from: Some(f), .. } if f == "a@b"));
    let cli = parse(["popadm", "deliver", "--from=", "bob"]).expect("parses");
    assert!(matches!(cli.command, Command::Deliver { from: Some(f), .. } if f.is_empty()));
    let cli = parse(["popadm", "stat", "bob", "--data-dir", "/x"]).expect("parses");
    assert_eq!(cli.data_dir, Some(PathBuf::from("/x")));
}
