//! Tidy tests in the manner of rust-analyzer's: checks over the source tree itself, run by
//! `cargo test` (and so by `cargo xtask test`), that keep the documentation and the crate
//! graph honest.
//!
//! - Every module of every crate (and of xtask) is named in its section of
//!   docs/ARCHITECTURE.md.
//! - Every backticked path (`Type::member`, `crate::Type`, `Enum::{A, B}`) that
//!   docs/ARCHITECTURE.md mentions names something defined in the workspace, unless its first
//!   segment is an outside crate.
//! - The dependency rules: proto and store know nothing of each other or of tokio; auth knows
//!   no storage; admin does not depend on server.
//!
//! The checks read files as text (no parser): a definition is a name after `fn`, `struct`,
//! `enum`, `trait`, `type`, `const`, `static` or `mod`, a field (`name:`), an enum variant (a
//! line starting with the name), or a module file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Outside crates the document mentions without the workspace depending on them under that
/// name: rsasl (discussed, not used), md5 (the `md-5` package's library name).
const OUTSIDE: &[&str] = &["rsasl", "md5", "std", "core", "alloc"];

fn root() -> PathBuf {
    crate::workspace_root()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file below `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The workspace's own crates: directory under the root and crate name.
fn workspace_crates() -> Vec<(PathBuf, String)> {
    let mut crates: Vec<(PathBuf, String)> = std::fs::read_dir(root().join("crates"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .map(|p| {
            let name = package_name(&read(&p.join("Cargo.toml")));
            (p, name)
        })
        .collect();
    crates.push((root().join("xtask"), "xtask".to_owned()));
    crates.sort();
    crates
}

fn package_name(manifest: &str) -> String {
    section(manifest, "package")
        .find_map(|(key, value)| (key == "name").then(|| value.trim_matches('"').to_owned()))
        .unwrap_or_default()
}

/// The `key = value` lines of one `[table]` of a manifest.
fn section<'a>(manifest: &'a str, table: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
    let header = format!("[{table}]");
    manifest
        .lines()
        .skip_while(move |l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// The direct normal dependencies of a manifest, by the name the code uses (`md-5` -> `md5`
/// is not needed here: only names are compared). Dotted keys (`proto.workspace = true`) count.
fn dependencies(manifest: &str) -> BTreeSet<String> {
    section(manifest, "dependencies")
        .map(|(key, _)| key.split('.').next().unwrap_or(key).trim().to_owned())
        .collect()
}

/// The text of the `###` section of ARCHITECTURE.md whose heading names `what` in backticks.
fn doc_section<'a>(doc: &'a str, what: &str) -> Option<&'a str> {
    let needle = format!("`{what}`");
    let start = doc
        .match_indices("\n### ")
        .map(|(i, _)| i + 1)
        .find(|&i| doc[i..].lines().next().is_some_and(|h| h.contains(&needle)))?;
    let rest = &doc[start + 4..];
    let end = rest
        .find("\n## ")
        .into_iter()
        .chain(rest.find("\n### "))
        .min();
    Some(&rest[..end.unwrap_or(rest.len())])
}

fn contains_word(text: &str, word: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// Module names of a crate's `src`: file stems, and directory names for `mod.rs`; the crate
/// roots (`lib.rs`, `main.rs`) are the crate itself.
fn modules(src: &Path) -> Vec<(String, PathBuf)> {
    rust_files(src)
        .into_iter()
        .filter_map(|path| {
            let stem = path.file_stem()?.to_str()?.to_owned();
            let name = match stem.as_str() {
                "lib" | "main" if path.parent() == Some(src) => return None,
                "mod" => path.parent()?.file_name()?.to_str()?.to_owned(),
                _ => stem,
            };
            Some((name, path))
        })
        .collect()
}

/// Modules of `crates` (directory, section name) that `doc` does not name in their section.
fn unnamed_modules(doc: &str, crates: &[(PathBuf, String)]) -> Vec<String> {
    let mut missing = Vec::new();
    for (dir, _) in crates {
        let rel = dir
            .strip_prefix(root())
            .unwrap_or(dir)
            .to_string_lossy()
            .into_owned();
        let Some(text) = doc_section(doc, &rel) else {
            missing.push(format!("{rel}: no `### `{rel}`` section"));
            continue;
        };
        for (name, path) in modules(&dir.join("src")) {
            if !contains_word(text, &name) {
                let file = path
                    .strip_prefix(root())
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                missing.push(format!(
                    "{file}: module `{name}` is not named in its section"
                ));
            }
        }
    }
    missing
}

/// Every name the workspace defines (see the module comment), plus crate and module names.
fn definitions() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut files = Vec::new();
    for (dir, name) in workspace_crates() {
        names.insert(name.replace('-', "_"));
        files.extend(rust_files(&dir));
    }
    files.extend(rust_files(&root().join("tests")));
    files.extend(rust_files(&root().join("fuzz")));
    const KEYWORDS: &[&str] = &[
        "fn", "struct", "enum", "trait", "type", "const", "static", "mod",
    ];
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for file in files {
        if let Some(stem) = file.file_stem().and_then(|s| s.to_str()) {
            names.insert(stem.to_owned());
        }
        for line in read(&file).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            for pair in words.windows(2) {
                if KEYWORDS.contains(&pair[0]) {
                    let name = ident(pair[1]);
                    if !name.is_empty() {
                        names.insert(name);
                    }
                }
            }
            // A field (`name: Type`, `pub name: Type`) or a variant (`Name,` `Name {` `Name(`).
            let trimmed = line.trim_start();
            let trimmed = trimmed
                .strip_prefix("pub(crate) ")
                .or_else(|| trimmed.strip_prefix("pub "))
                .unwrap_or(trimmed);
            let name = ident(trimmed);
            let after = trimmed[name.len()..].trim_start();
            let field = after.starts_with(':') && !after.starts_with("::");
            let variant = after.is_empty()
                || [",", " {", "{", "(", " ="]
                    .iter()
                    .any(|p| after.starts_with(p.trim()));
            if !name.is_empty() && (field || variant) {
                names.insert(name);
            }
        }
    }
    names
}

/// Outside crates: every package of Cargo.lock that is not the workspace's, by library name.
fn outside_crates() -> BTreeSet<String> {
    let ours: BTreeSet<String> = workspace_crates()
        .into_iter()
        .map(|(_, n)| n)
        .chain(["e2e".to_owned()])
        .collect();
    read(&root().join("Cargo.lock"))
        .lines()
        .filter_map(|l| l.strip_prefix("name = "))
        .map(|n| n.trim_matches('"').to_owned())
        .filter(|n| !ours.contains(n))
        .map(|n| n.replace('-', "_"))
        .chain(OUTSIDE.iter().map(|s| (*s).to_owned()))
        .collect()
}

/// The paths in backticked spans of `doc`: `a::b::C`, with `a::{B, C}` expanded.
fn doc_paths(doc: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for (i, span) in doc.split('`').enumerate() {
        if i % 2 == 0 {
            continue; // outside backticks
        }
        let chars: Vec<char> = span.chars().collect();
        let mut at = 0;
        while at < chars.len() {
            let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
            if !(chars[at].is_ascii_alphabetic() || chars[at] == '_')
                || (at > 0 && (is_ident(chars[at - 1]) || chars[at - 1] == ':'))
            {
                at += 1;
                continue;
            }
            let mut segments = vec![String::new()];
            let mut j = at;
            let mut braces = None;
            loop {
                while j < chars.len() && is_ident(chars[j]) {
                    if let Some(s) = segments.last_mut() {
                        s.push(chars[j]);
                    }
                    j += 1;
                }
                if chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':') {
                    j += 2;
                    if chars.get(j) == Some(&'{') {
                        let close = chars[j..].iter().position(|&c| c == '}').map(|p| j + p);
                        if let Some(close) = close {
                            braces = Some(chars[j + 1..close].iter().collect::<String>());
                            j = close + 1;
                        }
                        break;
                    }
                    segments.push(String::new());
                } else {
                    break;
                }
            }
            match braces {
                Some(list) => {
                    for item in list.split(',') {
                        let item: String =
                            item.trim().chars().take_while(|&c| is_ident(c)).collect();
                        if !item.is_empty() {
                            let mut p = segments.clone();
                            p.push(item);
                            paths.push(p);
                        }
                    }
                }
                None if segments.len() > 1 && segments.iter().all(|s| !s.is_empty()) => {
                    paths.push(segments);
                }
                None => {}
            }
            at = j.max(at + 1);
        }
    }
    paths
}

/// The backticked paths of `doc` whose segments are not all defined in the workspace.
fn unknown_paths(doc: &str) -> Vec<String> {
    let defined = definitions();
    let outside = outside_crates();
    let mut unknown = BTreeSet::new();
    for path in doc_paths(doc) {
        if outside.contains(&path[0]) && !defined.contains(&path[0]) {
            continue;
        }
        // `postgres::Client` is the outside crate of that name, not the store's module.
        if outside.contains(&path[0]) && path[1..].iter().any(|s| !defined.contains(s)) {
            continue;
        }
        if let Some(missing) = path.iter().find(|s| !defined.contains(*s)) {
            unknown.insert(format!(
                "`{}`: `{missing}` is defined nowhere",
                path.join("::")
            ));
        }
    }
    unknown.into_iter().collect()
}

/// The dependency rules of docs/ARCHITECTURE.md, as (crate, forbidden direct dependencies).
const RULES: &[(&str, &[&str])] = &[
    ("proto", &["store", "tokio", "auth", "server"]),
    ("store", &["proto", "tokio", "server", "auth"]),
    (
        "auth",
        &["store", "rusqlite", "postgres", "tokio", "server"],
    ),
    ("admin", &["server"]),
    ("lmtp", &["store", "tokio", "proto", "auth", "server"]),
    ("oauth2", &["store", "server", "tokio", "proto"]),
];

fn broken_rules() -> Vec<String> {
    let mut broken = Vec::new();
    for (name, forbidden) in RULES {
        let manifest = read(&root().join("crates").join(name).join("Cargo.toml"));
        let deps = dependencies(&manifest);
        for f in *forbidden {
            if deps.contains(*f) {
                broken.push(format!("{name} depends on {f}"));
            }
        }
    }
    broken
}

#[test]
fn architecture_names_every_module() {
    let doc = read(&root().join("docs/ARCHITECTURE.md"));
    let missing = unnamed_modules(&doc, &workspace_crates());
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md does not name:\n{}",
        missing.join("\n")
    );
}

#[test]
fn architecture_paths_exist() {
    let doc = read(&root().join("docs/ARCHITECTURE.md"));
    let unknown = unknown_paths(&doc);
    assert!(
        unknown.is_empty(),
        "docs/ARCHITECTURE.md mentions what the code does not define:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn dependencies_point_one_way() {
    let broken = broken_rules();
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The checks themselves fail when they should: a made-up path, a missing module, a
/// forbidden dependency.
#[test]
fn the_checks_can_fail() {
    let unknown = unknown_paths("see `Shared::hash_slots` and `server::run` and `std::net`");
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(unknown[0].contains("hash_slots"));
    let expanded = doc_paths("`Step::{Challenge, NeedCredentials}` and `a::b::C`");
    assert_eq!(
        expanded,
        vec![
            vec!["Step".to_owned(), "Challenge".to_owned()],
            vec!["Step".to_owned(), "NeedCredentials".to_owned()],
            vec!["a".to_owned(), "b".to_owned(), "C".to_owned()],
        ]
    );
    let proto = root().join("crates/proto");
    let missing = unnamed_modules(
        "\n### `crates/proto`\nonly `decoder` here\n",
        &[(proto, "proto".into())],
    );
    assert!(
        missing.iter().any(|m| m.contains("`multiline`")),
        "{missing:?}"
    );
    assert!(
        !missing.iter().any(|m| m.contains("`decoder`")),
        "{missing:?}"
    );
    let deps = dependencies("[package]\nname = \"x\"\n[dependencies]\ntokio.workspace = true\nstore = { path = \"s\" }\n[dev-dependencies]\nrusqlite = \"1\"\n");
    assert_eq!(
        deps,
        BTreeSet::from(["store".to_owned(), "tokio".to_owned()])
    );
}
