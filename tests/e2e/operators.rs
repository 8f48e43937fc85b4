//! What an operator installs besides the binaries: the manual pages and shell completion
//! scripts the built `pop3d` and `popadm` generate from their own clap definitions
//! (`cargo xtask man` runs the same entry points).

use std::path::Path;
use std::process::Command;

use e2e::{bin, TempDir};

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The pages in `dir`, as `clidoc` represents them.
fn read_pages(dir: &Path) -> Vec<clidoc::Page> {
    let mut pages: Vec<clidoc::Page> = std::fs::read_dir(dir)
        .expect("read man dir")
        .map(|e| e.expect("entry").path())
        .map(|p| clidoc::Page {
            file_name: p.file_name().expect("name").to_string_lossy().into_owned(),
            roff: std::fs::read_to_string(&p).expect("read page"),
        })
        .collect();
    pages.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    pages
}

/// Every long flag (`--name`) a `--help` text shows.
fn help_flags(help: &str) -> Vec<String> {
    let mut flags: Vec<String> = help
        .split(|c: char| c.is_whitespace() || ",[]=".contains(c))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_owned()
        })
        .collect();
    flags.sort();
    flags.dedup();
    flags
}

#[test]
fn man_pages_document_every_command_and_flag() {
    let dir = TempDir::new("man");
    let popadm_dir = dir.path().join("popadm");
    let pop3d_dir = dir.path().join("pop3d");
    run_ok(
        Command::new(bin("popadm"))
            .arg("generate-man")
            .arg(&popadm_dir),
    );
    run_ok(
        Command::new(bin("pop3d"))
            .arg("--generate-man")
            .arg(&pop3d_dir),
    );

    // popadm: a page per command, each naming its flags, arguments and subcommands, checked
    // against the clap definition the binary parses with.
    let written = read_pages(&popadm_dir);
    let mut want: Vec<String> = clidoc::pages(admin::command(), admin::MAN_SECTION)
        .into_iter()
        .map(|p| p.file_name)
        .collect();
    want.sort();
    let got: Vec<&str> = written.iter().map(|p| p.file_name.as_str()).collect();
    assert_eq!(got, want);
    assert!(got.contains(&"popadm-user-add.8") && got.contains(&"popadm.8"));
    assert_eq!(
        clidoc::undocumented(admin::command(), &written, admin::MAN_SECTION),
        Vec::<String>::new()
    );

    // pop3d (no library to ask): every flag its --help shows is in the page.
    let pages = read_pages(&pop3d_dir);
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].file_name, "pop3d.8");
    let page = pages[0].roff.replace("\\-", "-");
    let help =
        String::from_utf8_lossy(&run_ok(Command::new(bin("pop3d")).arg("--help"))).into_owned();
    let flags = help_flags(&help);
    assert!(flags.len() > 20, "{flags:?}");
    for flag in &flags {
        assert!(page.contains(flag.as_str()), "pop3d.8 lacks {flag}");
    }

    // man(1) renders every page without a warning.
    if !e2e::client_available("man", "--version") {
        return;
    }
    for page in written
        .iter()
        .map(|p| popadm_dir.join(&p.file_name))
        .chain([pop3d_dir.join("pop3d.8")])
    {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&page)
            .env("MANWIDTH", "80")
            .output()
            .expect("run man");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{}: {stderr}",
            page.display()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
    }
}

#[test]
fn help_flags_parses_clap_help() {
    assert_eq!(
        help_flags("  -h, --help   Print\n      --data-dir <DIR>  x [default: ./a]\n--x-y=Z"),
        ["--data-dir", "--help", "--x-y"]
    );
}

#[test]
fn completion_scripts_are_valid_shell() {
    let dir = TempDir::new("completions");
    for (program, flag) in [("popadm", "completions"), ("pop3d", "--completions")] {
        for (shell, check) in [("bash", "-n"), ("zsh", "-n"), ("fish", "--no-execute")] {
            let script = run_ok(Command::new(bin(program)).args([flag, shell]));
            let text = String::from_utf8_lossy(&script);
            assert!(text.contains(program), "{program} {shell}: {text}");
            if program == "popadm" {
                for sub in ["user", "deliver", "import", "backup"] {
                    assert!(text.contains(sub), "{program} {shell} lacks {sub}");
                }
            } else {
                assert!(text.contains("listen-tls"), "{program} {shell}");
            }
            let file = dir.path().join(format!("{program}.{shell}"));
            std::fs::write(&file, &script).expect("write script");
            // bash is always there; zsh and fish only where installed.
            let available = Command::new(shell)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !available {
                assert_ne!(
                    shell, "bash",
                    "bash is needed to check the completion script"
                );
                eprintln!("SKIPPED: {shell} is not installed; its script is not syntax-checked");
                continue;
            }
            let out = Command::new(shell)
                .arg(check)
                .arg(&file)
                .output()
                .expect("run shell");
            assert!(
                out.status.success(),
                "{shell} {check} {program}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The bash script works when sourced: it registers the completion function.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && complete -p popadm",
            dir.path().join("popadm.bash").display()
        ))
        .output()
        .expect("run bash");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("popadm"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
