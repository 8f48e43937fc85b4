//! Progress of the long commands (`import mbox|maildir|passwd`, `migrate pop3`, `backup`): a
//! bar on stderr (messages, octets, rate, time left; the `indicatif` crate) while stderr is a
//! terminal, and nothing at all otherwise, so scripts, MTAs and tests see only the final
//! summary the command prints on stdout.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use store::ImportMessage;

/// How often a bar is redrawn at most, and a spinner ticks.
const TICK: Duration = Duration::from_millis(100);

/// The progress of one command: a bar on a terminal, else nothing.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// What is counted in messages (the bar's own position counts octets, or accounts).
    messages: u64,
    total_messages: Option<u64>,
}

impl Progress {
    /// A bar for copying messages: `total_messages` and `total_octets` where known (the octets
    /// of the source, which are about what is stored). Hidden unless stderr is a terminal.
    pub fn messages(what: &str, total_messages: Option<u64>, total_octets: Option<u64>) -> Self {
        let style = match total_octets {
            Some(_) => {
                "{prefix} [{wide_bar}] {msg} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
            }
            None => "{spinner} {prefix} {msg} {bytes} {bytes_per_sec} {elapsed}",
        };
        Progress::new(what, total_octets, style, total_messages)
    }

    /// A bar counting `total` accounts (`import passwd`, whose time goes into hashing).
    pub fn accounts(what: &str, total: u64) -> Self {
        let style = "{prefix} [{wide_bar}] {pos}/{len} accounts {per_sec} eta {eta}";
        Progress::new(what, Some(total), style, None)
    }

    /// A spinner with the time spent, for a step of unknown progress (`backup`: SQLite copies
    /// the whole database in one step, so that writers never make it start again).
    pub fn spinner(what: &str) -> Self {
        Progress::new(what, None, "{spinner} {prefix} {elapsed}", None)
    }

    fn new(what: &str, length: Option<u64>, template: &str, total_messages: Option<u64>) -> Self {
        let bar = Progress::wanted().then(|| {
            let bar = ProgressBar::with_draw_target(length, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(what.to_owned());
            bar.enable_steady_tick(TICK);
            bar
        });
        let progress = Progress {
            bar,
            messages: 0,
            total_messages,
        };
        progress.show_messages();
        progress
    }

    /// Whether a bar is drawn (stderr is a terminal).
    #[cfg(test)]
    pub fn visible(&self) -> bool {
        self.bar.is_some()
    }

    /// Whether a bar would be drawn: worth computing totals for.
    pub fn wanted() -> bool {
        std::io::stderr().is_terminal()
    }

    fn show_messages(&self) {
        let Some(bar) = &self.bar else {
            return;
        };
        let text = match self.total_messages {
            Some(total) => format!("{}/{total} messages", self.messages),
            None => format!("{} messages", self.messages),
        };
        bar.set_message(text);
    }

    /// One more message of `octets` octets read.
    pub fn message(&mut self, octets: u64) {
        self.messages += 1;
        if let Some(bar) = &self.bar {
            bar.inc(octets);
        }
        self.show_messages();
    }

    /// One more account done.
    pub fn step(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// `source` with every message it yields counted.
    pub fn count<'a>(
        &'a mut self,
        source: &'a mut dyn Iterator<Item = anyhow::Result<ImportMessage>>,
    ) -> impl Iterator<Item = anyhow::Result<ImportMessage>> + 'a {
        source.inspect(move |m| {
            if let Ok(m) = m {
                self.message(m.bytes.len() as u64);
            }
        })
    }
}

impl Drop for Progress {
    /// The bar goes away whole once the command is done (or failed): only the summary stays.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a terminal (as under `cargo test`, stderr captured) nothing is drawn, and the
    /// counting still passes every message through.
    #[test]
    fn hidden_without_a_terminal_and_transparent() {
        if std::io::stderr().is_terminal() {
            return;
        }
        let mut progress = Progress::messages("test", Some(2), Some(10));
        assert!(!progress.visible());
        let mut source = (0..2).map(|i| {
            Ok(ImportMessage {
                bytes: vec![b'x'; 5],
                uid: Some(format!("u{i}")),
                uid_claimed: false,
            })
        });
        let passed: Vec<_> = progress.count(&mut source).collect();
        assert_eq!(passed.len(), 2);
        assert_eq!(progress.messages, 2);
        assert!(!Progress::accounts("a", 3).visible());
        assert!(!Progress::spinner("b").visible());
    }
}
