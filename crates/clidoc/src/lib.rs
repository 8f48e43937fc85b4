//! `clidoc`: manual pages and shell completions generated from a clap [`Command`], shared by
//! `pop3d` and `popadm` so both binaries document themselves from the very definitions they
//! parse their arguments with (nothing is written twice, nothing drifts).
//!
//! The binaries call it from their own entry points (`popadm completions SHELL`,
//! `popadm generate-man DIR`, `pop3d --completions SHELL`, `pop3d --generate-man DIR`);
//! `cargo xtask man` runs those on the built binaries rather than linking the server and the
//! admin tool into xtask. It knows nothing of POP3, and does no I/O beyond the writer or
//! directory it is handed.
//!
//! A command's `after_help` becomes man page sections: every unindented line ending in `:`
//! (`Examples:`, `Files:`, `See also:`) opens a section of that name, and the lines under it
//! are kept as written (no filling), so `--help` and the page show the same examples.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::Command;
use clap_mangen::roff::{roman, Roff};
use clap_mangen::Man;

pub use clap_complete::Shell;

/// The manual of the pages' `.TH` lines.
const MANUAL: &str = "pop3d suite";

/// One rendered manual page: its file name (`popadm-user-add.8`) and roff source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub file_name: String,
    pub roff: String,
}

/// A page for `cmd` and one for every visible subcommand at any depth, named after clap's
/// display names (`popadm`, `popadm-user`, `popadm-user-add`), in manual `section`.
pub fn pages(cmd: Command, section: &str) -> Vec<Page> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    collect(&cmd, section, &mut out);
    out
}

fn collect(cmd: &Command, section: &str, out: &mut Vec<Page>) {
    out.push(page(cmd, section));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, section, out);
    }
}

fn page(cmd: &Command, section: &str) -> Page {
    let version = cmd.get_version().unwrap_or_default();
    let man = Man::new(cmd.clone()).section(section);
    // Writing to a Vec cannot fail; the sections come in man-pages(7) order.
    let mut roff = Vec::new();
    // clap_mangen leaves an empty date unquoted, which shifts the footer fields; no date is
    // written (pages are rebuilt from the binary, a date would only be the build's).
    let source = format!("{} {version}", cmd.get_name());
    let title = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    // Names and versions are plain ASCII words: nothing to escape.
    roff.extend_from_slice(
        format!(".TH {title} {section} \"\" \"{source}\" \"{MANUAL}\"\n").as_bytes(),
    );
    let _ = man.render_name_section(&mut roff);
    let _ = man.render_synopsis_section(&mut roff);
    let _ = man.render_description_section(&mut roff);
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        let _ = man.render_options_section(&mut roff);
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        let _ = man.render_subcommands_section(&mut roff);
    }
    if let Some(after) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        roff.extend_from_slice(after_help_sections(&after.to_string()).as_bytes());
    }
    if !version.is_empty() {
        let _ = man.render_version_section(&mut roff);
    }
    Page {
        file_name: man.get_filename(),
        roff: once_preamble(&String::from_utf8_lossy(&roff)),
    }
}

/// Every section rendered alone starts with the same two-line preamble (defining `\*(Aq`); one
/// at the top is enough.
fn once_preamble(roff: &str) -> String {
    const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";
    match roff.split_once(PREAMBLE) {
        Some((before, after)) => format!("{before}{PREAMBLE}{}", after.replace(PREAMBLE, "")),
        None => roff.to_owned(),
    }
}

/// `after_help` text as roff sections: `Heading:` lines become `.SH HEADING`, the lines under
/// them are kept unfilled. Text before the first heading goes under NOTES.
fn after_help_sections(text: &str) -> String {
    let mut roff = Roff::new();
    let mut open = false;
    for line in text.lines() {
        let heading = line
            .strip_suffix(':')
            .filter(|h| !h.is_empty() && !line.starts_with(char::is_whitespace));
        if let Some(h) = heading {
            if open {
                roff.control("fi", []);
            }
            roff.control("SH", [h.to_uppercase().as_str()]);
            roff.control("nf", []);
            open = true;
            continue;
        }
        if !open {
            roff.control("SH", ["NOTES"]);
            roff.control("nf", []);
            open = true;
        }
        roff.text([roman(line)]);
    }
    if open {
        roff.control("fi", []);
    }
    roff.to_roff()
}

/// Writes every page of [`pages`] into `dir` (created if missing); returns the files written.
pub fn write_man_pages(cmd: Command, section: &str, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for p in pages(cmd, section) {
        let path = dir.join(&p.file_name);
        std::fs::write(&path, p.roff.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

/// Writes `shell`'s completion script for `cmd` (named after its binary) to `out`.
pub fn completions(cmd: Command, shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = cmd;
    let name = cmd.get_name().to_owned();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut buf);
    out.write_all(&buf)
}

/// The text of a roff page as its reader sees the names in it: `\-` is `-`.
fn plain(roff: &str) -> String {
    roff.replace("\\-", "-")
}

/// Names `cmd` defines that `pages` do not document: for every visible command, its page must
/// exist, and must name each of its visible flags (`--long`, `-s`), positional values
/// (`NAME`), and subcommands. Returns one line per omission (empty when all is there).
pub fn undocumented(cmd: Command, pages: &[Page], section: &str) -> Vec<String> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let by_name: BTreeMap<&str, String> = pages
        .iter()
        .map(|p| (p.file_name.as_str(), plain(&p.roff)))
        .collect();
    let mut missing = Vec::new();
    check(&cmd, &by_name, section, &mut missing);
    missing
}

fn check(cmd: &Command, pages: &BTreeMap<&str, String>, section: &str, missing: &mut Vec<String>) {
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    let file = format!("{name}.{section}");
    let Some(text) = pages.get(file.as_str()) else {
        missing.push(format!("no page {file}"));
        return;
    };
    let mut want = Vec::new();
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if let Some(long) = arg.get_long() {
            want.push(format!("--{long}"));
        }
        if let Some(short) = arg.get_short() {
            want.push(format!("-{short}"));
        }
        if arg.is_positional() {
            if let Some(names) = arg.get_value_names() {
                want.extend(names.iter().map(|n| n.to_string()));
            }
        }
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        want.push(format!("{name}-{}", sub.get_name()));
        check(sub, pages, section, missing);
    }
    for w in want {
        if !text.contains(&w) {
            missing.push(format!("{file}: {w}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn tool(extra_flag: bool) -> Command {
        let mut add = Command::new("add")
            .about("Add a thing")
            .arg(Arg::new("name").value_name("NAME").required(true))
            .arg(
                Arg::new("yes")
                    .long("yes")
                    .short('y')
                    .action(ArgAction::SetTrue),
            );
        if extra_flag {
            add = add.arg(Arg::new("force").long("force").action(ArgAction::SetTrue));
        }
        Command::new("tool")
            .version("1.2.3")
            .about("A tool")
            .after_help("Examples:\n  tool add x --yes\n\nSee also:\n  other(8)")
            .arg(Arg::new("dir").long("data-dir").value_name("DIR"))
            .subcommand(Command::new("hidden").hide(true))
            .subcommand(add)
    }

    #[test]
    fn a_page_per_visible_command_with_every_name() {
        let pages = pages(tool(false), "8");
        let names: Vec<&str> = pages.iter().map(|p| p.file_name.as_str()).collect();
        assert_eq!(names, ["tool.8", "tool-add.8"]);
        assert!(undocumented(tool(false), &pages, "8").is_empty());
        let top = plain(&pages[0].roff);
        assert!(top.starts_with(".TH tool 8 \"\" \"tool 1.2.3\""), "{top}");
        assert!(
            top.contains(".SH EXAMPLES\n.nf\n  tool add x --yes\n"),
            "{top}"
        );
        assert!(
            top.contains(".SH \"SEE ALSO\"\n.nf\n  other(8)\n.fi"),
            "{top}"
        );
        assert!(!top.contains("hidden"), "{top}");
        assert_eq!(top.matches(".ds Aq").count(), 2, "one preamble: {top}");
    }

    #[test]
    fn omissions_are_reported() {
        // Pages of the tool without --force, checked against the tool with it.
        let old = pages(tool(false), "8");
        assert_eq!(undocumented(tool(true), &old, "8"), ["tool-add.8: --force"]);
        let mut partial = old.clone();
        partial.retain(|p| p.file_name != "tool-add.8");
        assert_eq!(
            undocumented(tool(false), &partial, "8"),
            ["no page tool-add.8"]
        );
        assert_eq!(undocumented(tool(false), &old, "1"), ["no page tool.1"]);
    }

    #[test]
    fn completion_scripts_name_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(tool(false), shell, &mut out).expect("generate");
            let text = String::from_utf8_lossy(&out);
            assert!(
                text.contains("add") && text.contains("data-dir"),
                "{shell}: {text}"
            );
        }
    }
}
