//! Dovecot's maildir UID list (`dovecot-uidlist`) and its POP3 UIDL format, so a maildrop moved
//! from Dovecot keeps the UIDLs its clients already know (RFC 1939 section 7: a UIDL is
//! persistent across sessions; clients download again whatever UIDL they have not seen).
//!
//! `dovecot-uidlist`, versions 2 and 3 (Dovecot 1.1 and later):
//! ```text
//! 3 V1700000000 N4 G0123456789abcdef0123456789abcdef
//! 1 :1700000001.M1P1.host
//! 2 W1260 S1234 :1700000002.M2P2.host,S=1234,W=1260:2,S
//! 3 P0000abcd-legacy :1700000003.M3P3.host
//! ```
//! The header holds the version, then `V<uidvalidity>`, `N<next uid>` and more keyed fields; a
//! record is the UID, keyed extension fields (`P` is a POP3 UIDL Dovecot was told to keep, as
//! after a migration with `pop3_save_uidl`), then ` :` and the file name. Version 1 (Dovecot
//! 1.0) is `1 <uidvalidity> <nextuid>`, then `<uid> <file name>`. Records match maildir files by
//! their base name (the name up to `:2,`), since flags change the file name but not the message.
//!
//! The UIDL is Dovecot's `pop3_uidl_format`, by default `%08Xu%08Xv`: the UID and the UID
//! validity as 8 hex digits each, in lower case: Dovecot's `X` modifier prints with `%llx`
//! (`str_hex` in its lib/var-expand.c), so a real Dovecot 2.3 serves `000000016b08c30b`. The
//! end-to-end test `tests/e2e/dovecot.rs` compares with a running Dovecot.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context as _};

/// Dovecot's default `pop3_uidl_format`.
pub const DEFAULT_UIDL_FORMAT: &str = "%08Xu%08Xv";

/// File name of the UID list inside a maildir.
pub const UIDLIST_FILE: &str = "dovecot-uidlist";

/// A parsed `dovecot-uidlist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidList {
    pub uid_validity: u32,
    /// Records keyed by the base name of the message file.
    pub records: HashMap<String, Record>,
}

/// One message of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub uid: u32,
    /// The `P` extension: a POP3 UIDL Dovecot keeps for this message instead of the format's.
    pub pop3_uidl: Option<String>,
    /// The `G` extension: the message's GUID (`%g` in the format).
    pub guid: Option<String>,
}

/// The base name of a maildir file name: everything before the first `:`.
pub fn base_name(file_name: &str) -> &str {
    file_name.split(':').next().unwrap_or(file_name)
}

impl UidList {
    pub fn parse(text: &str) -> anyhow::Result<UidList> {
        let mut lines = text.lines().enumerate();
        let (_, header) = lines.next().ok_or_else(|| anyhow!("the file is empty"))?;
        let mut fields = header.split_ascii_whitespace();
        let version = fields.next().unwrap_or_default();
        let uid_validity = match version {
            "1" => fields.next().map(str::to_owned),
            "2" | "3" => fields.find_map(|f| f.strip_prefix('V').map(str::to_owned)),
            other => bail!("unsupported dovecot-uidlist version {other:?}"),
        };
        let uid_validity: u32 = uid_validity
            .ok_or_else(|| anyhow!("the header has no UID validity: {header:?}"))?
            .parse()
            .with_context(|| format!("the UID validity in the header {header:?}"))?;
        let mut records = HashMap::new();
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let (uid, record_name) = parse_record(line, version == "1")
                .with_context(|| format!("line {} of dovecot-uidlist: {line:?}", i + 1))?;
            let name = base_name(record_name.file).to_owned();
            let record = Record {
                uid,
                pop3_uidl: record_name.pop3_uidl,
                guid: record_name.guid,
            };
            if records.insert(name.clone(), record).is_some() {
                bail!("line {} of dovecot-uidlist: {name} is listed twice", i + 1);
            }
        }
        Ok(UidList {
            uid_validity,
            records,
        })
    }
}

/// The fields of a record line after its UID.
struct RecordFields<'a> {
    file: &'a str,
    pop3_uidl: Option<String>,
    guid: Option<String>,
}

fn parse_record(line: &str, version1: bool) -> anyhow::Result<(u32, RecordFields<'_>)> {
    let (uid, rest) = line
        .split_once(' ')
        .ok_or_else(|| anyhow!("no file name"))?;
    let uid: u32 = uid.parse().context("the UID")?;
    if uid == 0 {
        bail!("UID 0");
    }
    if version1 {
        return Ok((
            uid,
            RecordFields {
                file: rest.trim(),
                pop3_uidl: None,
                guid: None,
            },
        ));
    }
    // Extensions, then " :" and the file name (which may itself hold ':').
    let (extensions, file) = match rest.strip_prefix(':') {
        Some(file) => ("", file),
        None => rest
            .split_once(" :")
            .ok_or_else(|| anyhow!("no ' :' before the file name"))?,
    };
    if file.is_empty() {
        bail!("empty file name");
    }
    let mut fields = RecordFields {
        file,
        pop3_uidl: None,
        guid: None,
    };
    for ext in extensions.split_ascii_whitespace() {
        let (key, value) = ext.split_at(ext.chars().next().map_or(0, char::len_utf8));
        match key {
            "P" if !value.is_empty() => fields.pop3_uidl = Some(value.to_owned()),
            "G" if !value.is_empty() => fields.guid = Some(value.to_owned()),
            _ => {} // sizes (S, W), POP3 order (O) and others do not make the UIDL
        }
    }
    Ok((uid, fields))
}

/// A Dovecot `pop3_uidl_format`: `%u` UID, `%v` UID validity, `%g` GUID, `%f` file base name,
/// `%%`. As in Dovecot's variable expansion, `u` and `v` take a width (`%08u` pads with zeros
/// to 8, `%4u` keeps the first 4 characters) and then modifiers applied in order: `X` lower-case
/// hex, `U` upper case, `L` lower case (`%08Xu`; `%08XUu` gives upper-case hex). `x` is taken as
/// `X` too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidlFormat(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Number {
        which: Number,
        width: usize,
        /// `%0N`: pad with zeros to N; `%N` without the 0: the first N characters.
        zero_pad: bool,
        /// `X` (or `x`), `U`, `L`, in the order written.
        modifiers: Vec<char>,
    },
    Guid,
    FileName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Number {
    Uid,
    UidValidity,
}

impl UidlFormat {
    pub fn parse(format: &str) -> anyhow::Result<UidlFormat> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = format.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                text.push(c);
                continue;
            }
            let mut width = String::new();
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                width.push(d);
            }
            let mut modifiers = Vec::new();
            while let Some(m) = chars.next_if(|c| matches!(c, 'X' | 'x' | 'U' | 'L')) {
                modifiers.push(m);
            }
            let piece = match chars.next() {
                Some('%') if width.is_empty() && modifiers.is_empty() => {
                    text.push('%');
                    continue;
                }
                Some(v @ ('u' | 'v')) => Piece::Number {
                    which: if v == 'u' {
                        Number::Uid
                    } else {
                        Number::UidValidity
                    },
                    zero_pad: width.starts_with('0'),
                    width: if width.is_empty() {
                        0
                    } else {
                        width.parse().context("the width")?
                    },
                    modifiers,
                },
                Some('g') => Piece::Guid,
                Some('f') => Piece::FileName,
                Some(other) => bail!(
                    "%{other} in the UIDL format {format:?} is not supported \
                     (supported: %u %v %g %f %%, with widths and X, U, L for u and v)"
                ),
                None => bail!("the UIDL format {format:?} ends with '%'"),
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(piece);
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(UidlFormat(pieces))
    }

    /// The UIDL of a message with this record, in a list of this UID validity.
    pub fn render(
        &self,
        record: &Record,
        uid_validity: u32,
        file_base: &str,
    ) -> anyhow::Result<String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Number {
                    which,
                    width,
                    zero_pad,
                    modifiers,
                } => {
                    let n = match which {
                        Number::Uid => record.uid,
                        Number::UidValidity => uid_validity,
                    };
                    let mut s = n.to_string();
                    for m in modifiers {
                        s = match m {
                            // Dovecot's str_hex: the value as a decimal number, then "%llx".
                            'X' | 'x' => format!("{:x}", s.parse::<u64>().unwrap_or(0)),
                            'U' => s.to_uppercase(),
                            _ => s.to_lowercase(),
                        };
                    }
                    match (*zero_pad, s.len() < *width) {
                        (true, true) => out.push_str(&format!("{s:0>width$}")),
                        (false, _) if *width > 0 => out.extend(s.chars().take(*width)),
                        _ => out.push_str(&s),
                    }
                }
                Piece::Guid => out.push_str(
                    record
                        .guid
                        .as_deref()
                        .ok_or_else(|| anyhow!("%g: the record has no GUID"))?,
                ),
                Piece::FileName => out.push_str(file_base),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Hand-written after Dovecot 2.3's maildir-uidlist.c output.
    pub(crate) const FIXTURE: &str = "3 V1700000000 N5 G6f1ab2c3d4e5f60718293a4b5c6d7e8f\n\
        1 :1700000001.M1P1.host\n\
        2 W1260 S1234 :1700000002.M2P2.host,S=1234,W=1260:2,S\n\
        3 P0000abcd-legacy O3 :1700000003.M3P3.host\n\
        \n\
        4 G00112233445566778899aabbccddeeff :1700000004.M4P4.host:2,RS\n";

    #[test]
    fn parses_version_3() {
        let list = UidList::parse(FIXTURE).expect("parses");
        assert_eq!(list.uid_validity, 1_700_000_000);
        assert_eq!(list.records.len(), 4);
        let r = |n: &str| list.records.get(n).cloned().expect(n);
        assert_eq!(r("1700000001.M1P1.host").uid, 1);
        // The base name keeps Dovecot's ,S= and ,W= fields and drops the flags.
        assert_eq!(r("1700000002.M2P2.host,S=1234,W=1260").uid, 2);
        assert_eq!(
            r("1700000003.M3P3.host").pop3_uidl.as_deref(),
            Some("0000abcd-legacy")
        );
        assert_eq!(
            r("1700000004.M4P4.host").guid.as_deref(),
            Some("00112233445566778899aabbccddeeff")
        );
    }

    #[test]
    fn parses_version_1() {
        let list = UidList::parse("1 1234 3\n1 100.a.host\n2 200.b.host:2,S\n").expect("v1");
        assert_eq!(list.uid_validity, 1234);
        assert_eq!(list.records.get("200.b.host").map(|r| r.uid), Some(2));
    }

    #[test]
    fn refuses_broken_lists() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("4 V1 N1\n", "unsupported dovecot-uidlist version"),
            ("3 N1\n", "no UID validity"),
            ("3 Vx N1\n", "UID validity"),
            ("3 V1 N2\nx :a\n", "line 2"),
            ("3 V1 N2\n1 W1 a\n", "no ' :'"),
            ("3 V1 N2\n0 :a\n", "UID 0"),
            ("3 V1 N2\n1 :\n", "empty file name"),
            ("3 V1 N3\n1 :a\n2 :a:2,S\n", "listed twice"),
        ];
        for (text, want) in cases {
            let err = UidList::parse(text).expect_err(text);
            assert!(format!("{err:#}").contains(want), "{text:?}: {err:#}");
        }
    }

    #[test]
    fn uidl_formats() {
        let record = Record {
            uid: 0x2a,
            pop3_uidl: None,
            guid: Some("abc".into()),
        };
        let cases: &[(&str, &str)] = &[
            // Dovecot's default pop3_uidl_format: X is lower-case hex in Dovecot.
            (DEFAULT_UIDL_FORMAT, "0000002a6553f100"),
            ("%08xu%08xv", "0000002a6553f100"),
            ("%08XUu%08XUv", "0000002A6553F100"),
            // Modifiers apply in order: upper-casing digits, then hex, is lower-case hex.
            ("%UXu", "2a"),
            ("%Xu", "2a"),
            ("%2v", "17"),
            ("%u.%v", "42.1700000000"),
            ("%v-%u", "1700000000-42"),
            ("%g", "abc"),
            ("%f", "1.a.host"),
            ("100%%-%u", "100%-42"),
            ("%04u", "0042"),
            ("%4u", "42"),
        ];
        let render = |format: &str| {
            let f = UidlFormat::parse(format).expect(format);
            f.render(&record, 1_700_000_000, "1.a.host").expect(format)
        };
        for (format, want) in cases {
            assert_eq!(render(format), *want, "{format}");
        }
        for bad in ["%m", "%", "%08Xq"] {
            assert!(UidlFormat::parse(bad).is_err(), "{bad}");
        }
        let no_guid = Record {
            guid: None,
            ..record
        };
        let f = UidlFormat::parse("%g").expect("parses");
        assert!(f.render(&no_guid, 1, "x").is_err());
    }
}
