//! What the server counts, for Prometheus: one [`Metrics`] per server, shared by every session
//! through `Shared`, encoded in Prometheus' text format (version 0.0.4) by the `/metrics`
//! endpoint (`http`). Store calls are timed by a decorator around the store (`store`), so the
//! `store` crate knows nothing of it.
//!
//! The hot path costs atomic additions only: every label set a session touches per command
//! (the command counters, one per POP3 keyword plus `unknown`) is made once, here, and kept as
//! a handle; a label never carries what a client sent. Logins, refusals and TLS failures look
//! their label set up in a map under a read lock, which is cheap next to an argon2 run or a
//! handshake.

pub(crate) mod http;
pub(crate) mod store;

use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry, Unit};
use proto::Keyword;

pub use self::store::TimedStore;

/// A label set of one label; names and values are static, so a lookup allocates nothing.
type Label1 = [(&'static str, &'static str); 1];
/// A label set of two labels.
type Label2 = [(&'static str, &'static str); 2];
type HistogramFamily = Family<Label1, Histogram, fn() -> Histogram>;

/// The label of a command line whose keyword is none of POP3's.
const UNKNOWN_COMMAND: &str = "unknown";

/// How a login attempt ended (`pop3d_logins_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginResult {
    /// Logged in: TRANSACTION started.
    Success,
    /// Wrong credentials or an unknown user (`-ERR [AUTH]`).
    Failure,
    /// Good credentials, but the maildrop is in another session (`-ERR [IN-USE]`).
    InUse,
    /// Good credentials, refused by policy: LOGIN-DELAY, or the node is draining.
    Refused,
    /// The login could not be completed (the store failed).
    Error,
}

impl LoginResult {
    fn label(self) -> &'static str {
        match self {
            LoginResult::Success => "success",
            LoginResult::Failure => "failure",
            LoginResult::InUse => "in_use",
            LoginResult::Refused => "refused",
            LoginResult::Error => "error",
        }
    }
}

/// Why a connection was closed at accept, before any session (`pop3d_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` reached.
    MaxConnections,
    /// `max_connections_per_ip` reached for the client's address.
    MaxConnectionsPerIp,
    /// A proxied listener's peer that is not a trusted proxy.
    UntrustedProxy,
    /// A proxied connection without a valid PROXY header in time.
    ProxyHeader,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::MaxConnections,
        Refusal::MaxConnectionsPerIp,
        Refusal::UntrustedProxy,
        Refusal::ProxyHeader,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerIp => "max_connections_per_ip",
            Refusal::UntrustedProxy => "untrusted_proxy",
            Refusal::ProxyHeader => "proxy_header",
        }
    }
}

/// What became of one recipient of an LMTP transaction (RFC 2033 section 4.2: one reply per
/// recipient after DATA), for `pop3d_lmtp_deliveries_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LmtpDelivery {
    /// Stored (`250`).
    Delivered,
    /// No such account (`550 5.1.1`).
    UnknownRecipient,
    /// The account is over its quota (`552 5.2.2` or `452 4.2.2`).
    OverQuota,
    /// The message is over the size limit (`552 5.3.4`).
    TooLarge,
    /// The store failed; the sender tries again (`451 4.3.0`).
    TempFailure,
    /// The store refused the message itself (`554 5.6.0`).
    Invalid,
}

impl LmtpDelivery {
    const ALL: [LmtpDelivery; 6] = [
        LmtpDelivery::Delivered,
        LmtpDelivery::UnknownRecipient,
        LmtpDelivery::OverQuota,
        LmtpDelivery::TooLarge,
        LmtpDelivery::TempFailure,
        LmtpDelivery::Invalid,
    ];

    fn label(self) -> &'static str {
        match self {
            LmtpDelivery::Delivered => "delivered",
            LmtpDelivery::UnknownRecipient => "unknown_recipient",
            LmtpDelivery::OverQuota => "over_quota",
            LmtpDelivery::TooLarge => "too_large",
            LmtpDelivery::TempFailure => "temp_failure",
            LmtpDelivery::Invalid => "invalid_message",
        }
    }
}

/// The counters of one listener, made when its accept loop starts.
#[derive(Debug, Clone)]
pub(crate) struct ListenerMetrics {
    accepted: Counter,
    refused: [Counter; Refusal::ALL.len()],
}

impl ListenerMetrics {
    /// A connection got a session.
    pub fn accepted(&self) {
        self.accepted.inc();
    }

    /// A connection was closed at accept (or before its session began).
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].inc();
    }
}

/// Every metric of the server, registered once. Cloned handles share their values.
pub struct Metrics {
    registry: Registry,
    accepted: Family<Label1, Counter>,
    refused: Family<Label2, Counter>,
    sessions: Gauge,
    logins: Family<Label2, Counter>,
    penalties: Counter,
    /// Indexed by `Keyword as usize`; the last one is `unknown`.
    commands: Vec<Counter>,
    sent_octets: Counter,
    retrieved: Counter,
    deleted: Counter,
    updates_committed: Counter,
    updates_failed: Counter,
    in_use: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    hash_wait: Histogram,
    hash_time: Histogram,
    store_calls: HistogramFamily,
    tls_failures: Family<Label1, Counter>,
    lmtp: Family<Label1, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Buckets of the hashing pool's histograms: 1 ms to about 16 s, doubling.
fn hash_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Buckets of the store call latency: 50 µs to about 13 s, by factors of four.
fn store_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric registered under the `pop3d_` prefix, with the label sets known in
    /// advance made (so they are exported as 0 before the first event).
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pop3d");
        let r = &mut registry;
        let accepted = add(
            r,
            "connections_accepted",
            "Connections that got a session, by listener",
            Family::default(),
        );
        let refused = add(
            r,
            "connections_refused",
            "Connections closed before a session, by listener and reason",
            Family::default(),
        );
        let sessions = add(
            r,
            "sessions_active",
            "POP3 sessions now open",
            Gauge::default(),
        );
        let logins = add(
            r,
            "logins",
            "Login attempts, by mechanism (USER, APOP, TICKET or the SASL mechanism) and result",
            Family::default(),
        );
        let penalties = add(
            r,
            "auth_penalties",
            "Failed logins whose reply was delayed by the penalty",
            Counter::default(),
        );
        let command_family: Family<Label1, Counter> = add(
            r,
            "commands",
            "POP3 command lines received, by keyword (unknown: none of POP3's)",
            Family::default(),
        );
        let mut commands = vec![Counter::default(); Keyword::ALL.len() + 1];
        for k in Keyword::ALL {
            commands[k as usize] = command_family.get_or_create_owned(&[("command", k.as_str())]);
        }
        commands[Keyword::ALL.len()] =
            command_family.get_or_create_owned(&[("command", UNKNOWN_COMMAND)]);
        let sent_octets = add(
            r,
            "sent_octets",
            "Octets written to POP3 clients",
            Counter::default(),
        );
        let retrieved = add(
            r,
            "messages_retrieved",
            "RETR commands answered +OK (messages retrieved)",
            Counter::default(),
        );
        let deleted = add(
            r,
            "messages_deleted",
            "Messages removed by a committed UPDATE",
            Counter::default(),
        );
        let updates: Family<Label1, Counter> = add(
            r,
            "updates",
            "QUITs in TRANSACTION (UPDATE state), by result: committed or failed",
            Family::default(),
        );
        let updates_committed = updates.get_or_create_owned(&[("result", "committed")]);
        let updates_failed = updates.get_or_create_owned(&[("result", "failed")]);
        let in_use = add(
            r,
            "in_use_refusals",
            "Logins refused with [IN-USE]: the maildrop was in another session",
            Counter::default(),
        );
        let cache_hits = add(
            r,
            "credential_cache_hits",
            "Password checks answered by the credential cache, without argon2",
            Counter::default(),
        );
        let cache_misses = add(
            r,
            "credential_cache_misses",
            "Password checks of a known account the credential cache could not answer",
            Counter::default(),
        );
        let hash_wait = add_seconds(
            r,
            "hash_queue_wait",
            "Time a password check waited for a hashing thread",
            hash_buckets(),
        );
        let hash_time = add_seconds(
            r,
            "hash_duration",
            "Time a password check took on a hashing thread",
            hash_buckets(),
        );
        let store_calls = add_seconds(
            r,
            "store_call_duration",
            "Time of maildrop store calls, by operation",
            HistogramFamily::new_with_constructor(store_buckets),
        );
        let tls_failures = add(
            r,
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out (implicit TLS or STLS), by listener",
            Family::default(),
        );
        let lmtp: Family<Label1, Counter> = add(
            r,
            "lmtp_deliveries",
            "LMTP recipients by result (unknown ones at RCPT, the others after DATA)",
            Family::default(),
        );
        for d in LmtpDelivery::ALL {
            lmtp.get_or_create_owned(&[("result", d.label())]);
        }
        let version = Info::new([("version", env!("CARGO_PKG_VERSION"))]);
        r.register("build", "The running pop3d", version);
        Metrics {
            registry,
            accepted,
            refused,
            sessions,
            logins,
            penalties,
            commands,
            sent_octets,
            retrieved,
            deleted,
            updates_committed,
            updates_failed,
            in_use,
            cache_hits,
            cache_misses,
            hash_wait,
            hash_time,
            store_calls,
            tls_failures,
            lmtp,
        }
    }

    /// Every metric in Prometheus' text format, version 0.0.4.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// The counters of a listener named `listener` (`ListenerKind::name`).
    pub(crate) fn listener(&self, listener: &'static str) -> ListenerMetrics {
        ListenerMetrics {
            accepted: self.accepted.get_or_create_owned(&[("listener", listener)]),
            refused: Refusal::ALL.map(|r| {
                self.refused
                    .get_or_create_owned(&[("listener", listener), ("reason", r.label())])
            }),
        }
    }

    /// A session began; it counts as active until the guard is dropped.
    pub(crate) fn session(&self) -> ActiveSession {
        self.sessions.inc();
        ActiveSession(self.sessions.clone())
    }

    /// One command line: its keyword, or `None` for one that names no POP3 command.
    pub(crate) fn command(&self, keyword: Option<Keyword>) {
        let i = keyword.map_or(Keyword::ALL.len(), |k| k as usize);
        if let Some(c) = self.commands.get(i) {
            c.inc();
        }
    }

    /// A login attempt ended.
    pub(crate) fn login(&self, mechanism: &'static str, result: LoginResult) {
        self.logins
            .get_or_create(&[("mechanism", mechanism), ("result", result.label())])
            .inc();
    }

    /// A failed login's reply was delayed.
    pub(crate) fn penalty(&self) {
        self.penalties.inc();
    }

    pub(crate) fn sent(&self, octets: usize) {
        self.sent_octets.inc_by(octets as u64);
    }

    pub(crate) fn retrieved(&self) {
        self.retrieved.inc();
    }

    /// UPDATE ended: committed with `deleted` messages removed, or failed (`None`).
    pub(crate) fn update(&self, deleted: Option<u64>) {
        match deleted {
            Some(n) => {
                self.updates_committed.inc();
                self.deleted.inc_by(n);
            }
            None => {
                self.updates_failed.inc();
            }
        }
    }

    pub(crate) fn in_use(&self) {
        self.in_use.inc();
    }

    /// The credential cache was asked about a known account's password.
    pub(crate) fn credential_cache(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    /// The hashing pool's histograms: queue wait and hash time.
    pub(crate) fn hash_timings(&self) -> crate::hashpool::Timings {
        crate::hashpool::Timings {
            wait: self.hash_wait.clone(),
            run: self.hash_time.clone(),
        }
    }

    /// A TLS handshake on a listener named `listener` failed or timed out.
    pub(crate) fn tls_failure(&self, listener: &'static str) {
        self.tls_failures
            .get_or_create(&[("listener", listener)])
            .inc();
    }

    /// One LMTP recipient's outcome after DATA.
    pub fn lmtp_delivery(&self, result: LmtpDelivery) {
        self.lmtp.get_or_create(&[("result", result.label())]).inc();
    }
}

/// An open session, counted in `pop3d_sessions_active` until dropped.
#[derive(Debug)]
pub(crate) struct ActiveSession(Gauge);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Registers `metric` as `name` (after the `pop3d_` prefix; a counter gains `_total`) and
/// hands back a handle to it.
fn add<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// [`add`] for a metric in seconds (its name gains `_seconds`).
fn add_seconds<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register_with_unit(name, help, Unit::Seconds, metric.clone());
    metric
}

/// A duration in seconds, as the histograms take it.
fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ::store::{AccountName, SqliteStore, Store};

    use super::*;

    /// The value of the sample `series` (name and labels as encoded), if exported.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counters_are_encoded_in_the_text_format_with_the_prefix_and_units() {
        let m = Metrics::new();
        let text = m.encode();
        // Known label sets are exported before their first event.
        assert_eq!(
            sample(&text, r#"pop3d_commands_total{command="RETR"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, r#"pop3d_commands_total{command="unknown"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, r#"pop3d_lmtp_deliveries_total{result="over_quota"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, r#"pop3d_updates_total{result="failed"}"#),
            Some(0.0)
        );
        let version = format!(
            r#"pop3d_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&text, &version), Some(1.0));
        assert!(
            text.contains("# TYPE pop3d_commands_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE pop3d_sessions_active gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE pop3d_hash_duration_seconds histogram\n"),
            "{text}"
        );

        m.command(Some(Keyword::Retr));
        m.command(Some(Keyword::Retr));
        m.command(None);
        m.login("USER", LoginResult::Success);
        m.login("PLAIN", LoginResult::Failure);
        m.sent(100);
        m.sent(23);
        m.update(Some(2));
        m.update(None);
        m.credential_cache(true);
        m.lmtp_delivery(LmtpDelivery::TooLarge);
        let l = m.listener("pop3");
        l.accepted();
        l.refused(Refusal::MaxConnectionsPerIp);
        m.tls_failure("pop3s");
        let t = m.hash_timings();
        t.wait.observe(0.0015);
        let active = m.session();
        let text = m.encode();
        let want = [
            (r#"pop3d_commands_total{command="RETR"}"#, 2.0),
            (r#"pop3d_commands_total{command="unknown"}"#, 1.0),
            (r#"pop3d_commands_total{command="DELE"}"#, 0.0),
            (
                r#"pop3d_logins_total{mechanism="USER",result="success"}"#,
                1.0,
            ),
            (
                r#"pop3d_logins_total{mechanism="PLAIN",result="failure"}"#,
                1.0,
            ),
            ("pop3d_sent_octets_total", 123.0),
            (r#"pop3d_updates_total{result="committed"}"#, 1.0),
            (r#"pop3d_updates_total{result="failed"}"#, 1.0),
            ("pop3d_messages_deleted_total", 2.0),
            ("pop3d_credential_cache_hits_total", 1.0),
            ("pop3d_credential_cache_misses_total", 0.0),
            (r#"pop3d_lmtp_deliveries_total{result="too_large"}"#, 1.0),
            (r#"pop3d_connections_accepted_total{listener="pop3"}"#, 1.0),
            (
                r#"pop3d_connections_refused_total{listener="pop3",reason="max_connections_per_ip"}"#,
                1.0,
            ),
            (
                r#"pop3d_connections_refused_total{listener="pop3",reason="max_connections"}"#,
                0.0,
            ),
            (
                r#"pop3d_tls_handshake_failures_total{listener="pop3s"}"#,
                1.0,
            ),
            ("pop3d_sessions_active", 1.0),
            (r#"pop3d_hash_queue_wait_seconds_bucket{le="0.001"}"#, 0.0),
            (r#"pop3d_hash_queue_wait_seconds_bucket{le="0.002"}"#, 1.0),
            ("pop3d_hash_queue_wait_seconds_count", 1.0),
        ];
        for (series, value) in want {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        drop(active);
        assert_eq!(sample(&m.encode(), "pop3d_sessions_active"), Some(0.0));
    }

    /// Store calls are timed by operation, through the decorator alone.
    #[test]
    fn the_timed_store_records_each_call_under_its_method_name() {
        let dir = testbed::TempDir::new("timedstore");
        let inner: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).expect("store"));
        let m = Metrics::new();
        let store = TimedStore::new(inner, &m);
        let name = AccountName::parse("alice").expect("name");
        assert!(store.account(&name).expect("lookup").is_none());
        store.create_account(&name, "$argon2id$x").expect("create");
        assert!(store.account(&name).expect("lookup").is_some());
        let text = m.encode();
        let count = |op: &str| {
            sample(
                &text,
                &format!(r#"pop3d_store_call_duration_seconds_count{{operation="{op}"}}"#),
            )
        };
        assert_eq!(count("account"), Some(2.0), "{text}");
        assert_eq!(count("create_account"), Some(1.0), "{text}");
        // Operations never called are not exported.
        assert_eq!(count("read_chunk"), None, "{text}");
    }
}
