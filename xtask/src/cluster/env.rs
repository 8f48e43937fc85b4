//! The cluster under test: a throw-away PostgreSQL and the pop3d nodes on one of its
//! databases, what is done to them ([`Disruption`]), and the store's consistency check.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::node::Node;
use crate::faults::Servers;
use crate::harness::{self, try_login, Bins, Pop3d, Rng};

/// What [`Servers::disrupt`] does to the cluster in a round of [`ClusterEnv::rounds`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disruption {
    /// Restart PostgreSQL (immediate stop: every connection cut).
    Postgres,
    /// Restart the round's node: `popadm node drain`, SIGTERM, start, `popadm node up`.
    Rolling,
}

/// A PostgreSQL and the pop3d nodes on one of its databases.
pub struct ClusterEnv {
    pub pg: testbed::pg::Cluster,
    /// The binaries, `store` set to the current database.
    pub bins: Bins,
    pub root: PathBuf,
    pub nodes: Vec<Node>,
    /// The current database's name.
    pub db: String,
    /// What went wrong on the way that is no reason to stop (a node that did not exit 0 on
    /// SIGTERM in a rolling restart).
    pub problems: Vec<String>,
    /// The database in which the drain probe's account was made.
    probe_db: String,
}

impl ClusterEnv {
    /// Starts PostgreSQL and describes `n` nodes (started by [`ClusterEnv::fresh_database`]);
    /// `Ok(None)` when PostgreSQL is not installed.
    pub fn start(
        bins: &Bins,
        root: &Path,
        n: usize,
        rng: &mut Rng,
    ) -> Result<Option<ClusterEnv>, String> {
        let Some(pg) = testbed::pg::Cluster::start()? else {
            return Ok(None);
        };
        let mut nodes = Vec::with_capacity(n);
        let mut used = Vec::new();
        for i in 1..=n {
            let addr = free_port(rng, &used)?;
            used.push(addr);
            let proxy = free_port(rng, &used)?;
            used.push(proxy);
            nodes.push(Node::new(root, &format!("n{i}"), addr, proxy));
        }
        Ok(Some(ClusterEnv {
            pg,
            bins: bins.clone(),
            root: root.to_path_buf(),
            nodes,
            db: String::new(),
            problems: Vec::new(),
            probe_db: String::new(),
        }))
    }

    /// Stops the nodes, creates database `name`, and starts every node on it.
    pub fn fresh_database(&mut self, name: &str) -> Result<(), String> {
        let problems = self.stop_nodes();
        self.problems.extend(problems);
        self.pg.create_database(name)?;
        self.db = name.to_owned();
        self.bins.store = Some(self.pg.url(name));
        // The schema is made once, before nodes race to make it.
        self.popadm_ok(&["user", "list"], b"")?;
        self.ensure().map(drop)
    }

    /// The current database's URL.
    pub fn url(&self) -> String {
        self.pg.url(&self.db)
    }

    /// `popadm --store URL ARGS` with `stdin`, which must succeed.
    pub fn popadm_ok(&self, args: &[&str], stdin: &[u8]) -> Result<(), String> {
        self.bins
            .popadm_ok(&self.root.join("popadm-data"), args, stdin)
    }

    pub fn add_user(&self, user: &str, password: &str) -> Result<(), String> {
        self.popadm_ok(
            &["user", "add", user, "--password-stdin"],
            format!("{password}\n").as_bytes(),
        )
    }

    /// Delivers ledger message `id` (`size` octets) to `user`; it must be acknowledged.
    pub fn deliver(&self, user: &str, id: u64, size: usize) -> Result<(), String> {
        let bytes = harness::message(id, size);
        match harness::deliver(
            &self.bins,
            &self.root.join("popadm-data"),
            user,
            bytes,
            None,
        )? {
            harness::Delivery::Acked => Ok(()),
            other => Err(format!("delivering message {id} to {user}: {other:?}")),
        }
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Stops every node with SIGTERM; what went wrong.
    pub fn stop_nodes(&mut self) -> Vec<String> {
        self.nodes
            .iter_mut()
            .filter_map(|node| node.stop(Duration::from_secs(10)).err())
            .collect()
    }

    /// Lease rows in the current database.
    pub fn leases(&self) -> Result<u64, String> {
        let n = self.pg.psql(&self.db, "SELECT count(*) FROM locks")?;
        n.parse().map_err(|_| format!("count of locks: {n:?}"))
    }

    /// `popadm node ARGS`, which must succeed: a missing or broken `popadm node` fails the
    /// run rather than skipping the drain.
    fn node_command(&self, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["node"];
        full.extend_from_slice(args);
        self.popadm_ok(&full, b"")
    }

    /// A login on node `i` with an account of its own (no ledger is touched): PASS's reply.
    fn probe(&mut self, i: usize) -> Result<String, String> {
        const PROBE: (&str, &str) = ("drainprobe", "drain probe pw");
        if self.probe_db != self.db {
            self.add_user(PROBE.0, PROBE.1)?;
            self.probe_db = self.db.clone();
        }
        let (mut c, reply) = try_login(self.nodes[i].addr, PROBE.0, PROBE.1)?;
        let _ = c.cmd("QUIT");
        Ok(reply)
    }

    /// A new login on drained node `i` must be refused with `-ERR [SYS/TEMP]`.
    fn probe_drained(&mut self, i: usize) -> Result<(), String> {
        let reply = self.probe(i)?;
        if !reply.starts_with("-ERR [SYS/TEMP]") {
            self.problems.push(format!(
                "drained node {} answered a new login with {reply:?}",
                self.nodes[i].id
            ));
        }
        Ok(())
    }

    /// After `popadm node up`, node `i` takes logins again at its next heartbeat (every
    /// second): waits for that, up to 10 s.
    fn await_up(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = self.probe(i)?;
            if reply.starts_with("+OK") {
                return Ok(());
            }
            if !reply.starts_with("-ERR [SYS/TEMP]") || Instant::now() > deadline {
                self.problems.push(format!(
                    "node {} after popadm node up answered a new login with {reply:?}",
                    self.nodes[i].id
                ));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Restarts node `i` as a rolling restart does: drain, SIGTERM, wait, start, up again.
    /// What was done.
    pub fn rolling_restart(&mut self, i: usize) -> Result<String, String> {
        let id = self.nodes[i].id.clone();
        self.node_command(&["drain", &id])?;
        // The node sees the state at its next heartbeat (every second); sessions in progress
        // finish, new logins go elsewhere.
        std::thread::sleep(Duration::from_millis(1500));
        self.probe_drained(i)?;
        let (bins, url) = (self.bins.clone(), self.url());
        if let Some(e) = self.nodes[i].restart(&bins, &url, Duration::from_secs(15))? {
            self.problems.push(format!("rolling restart: {e}"));
        }
        self.node_command(&["up", &id])?;
        self.await_up(i)?;
        Ok(format!("node {id} restarted (drained, SIGTERM, up)"))
    }

    /// Starts every node that is not running; their addresses.
    pub fn ensure(&mut self) -> Result<Vec<SocketAddr>, String> {
        let (bins, url) = (self.bins.clone(), self.url());
        for node in &mut self.nodes {
            if !node.alive() {
                node.start(&bins, &url)?;
            }
        }
        Ok(self.addrs())
    }

    /// Stops every node; what went wrong, what the store's check finds, and any lease left
    /// (every session ended and every node stopped on SIGTERM: none may be).
    pub fn finish(&mut self) -> Vec<String> {
        let mut problems = self.stop_nodes();
        if let Err(e) = self.check_messages() {
            problems.push(format!("after the last round: {e}"));
        }
        match self.leases() {
            Ok(0) => {}
            Ok(n) => problems.push(format!("{n} leases left after every node stopped")),
            Err(e) => problems.push(e),
        }
        problems
    }

    /// The consistency check of the current database, PostgreSQL's counterpart of the
    /// `PRAGMA integrity_check` the SQLite rounds run: [`ClusterEnv::check_messages`], and
    /// no lease row is left of a process that is gone (a node restarted with its id clears
    /// its old process's rows at start; a live process's rows are released or expire).
    pub fn check(&mut self) -> Result<(), String> {
        let mut found = self.check_messages().err().into_iter().collect::<Vec<_>>();
        let rows = self.pg.psql(
            &self.db,
            "SELECT format('%s %s', coalesce(node, '-'), holder) FROM locks ORDER BY account_id",
        )?;
        for row in rows.lines().filter(|l| !l.is_empty()) {
            let (node, holder) = row.split_once(' ').unwrap_or((row, ""));
            let pid = holder_pid(holder);
            let running = self
                .nodes
                .iter_mut()
                .find(|n| n.id == node)
                .and_then(Node::pid);
            if pid.is_none() || pid != running {
                found.push(format!(
                    "lease row of node {node} held by {holder:?}, whose process is not running \
                     (node {node} runs pid {running:?})"
                ));
            }
        }
        if found.is_empty() {
            Ok(())
        } else {
            Err(format!("PostgreSQL check: {}", found.join("; ")))
        }
    }

    /// [`message_problems`] of the current database.
    pub fn check_messages(&self) -> Result<(), String> {
        let found = message_problems(&self.pg, &self.db)?;
        if found.is_empty() {
            Ok(())
        } else {
            Err(found.join("; "))
        }
    }

    /// The servers of [`faults::rounds_on`](crate::faults::rounds_on): these nodes, with
    /// `disruption` in each round of [`Mix::Disruptions`](crate::faults::Mix).
    pub fn rounds(&mut self, disruption: Option<Disruption>) -> Rounds<'_> {
        Rounds {
            env: self,
            disruption,
        }
    }
}

/// What is wrong with the messages of database `db` (at most 20 of each kind): a message
/// whose chunks are not numbered 0, 1, ... without a gap, as many as its row says, or whose
/// octets do not sum to its size (never 0; in wire form, byte-stuffed, at least its size and
/// at most twice it, its last chunk shorter than a full one, 128 KiB: `store::CHUNK_SIZE`); an
/// account with a UID twice.
fn message_problems(pg: &testbed::pg::Cluster, db: &str) -> Result<Vec<String>, String> {
    let chunks = pg.psql(
        db,
        "SELECT format('message %s: size %s in %s chunks, stored %s chunks (seq %s..%s) of \
         %s octets', m.id, m.size, m.chunks, count(c.seq), min(c.seq), max(c.seq), \
         coalesce(sum(octet_length(c.data)), 0)) \
         FROM messages m LEFT JOIN chunks c ON c.message_id = m.id \
         GROUP BY m.id, m.size, m.chunks, m.wire \
         HAVING m.size <= 0 OR count(c.seq) <> m.chunks \
             OR coalesce(min(c.seq), 0) <> 0 OR coalesce(max(c.seq), -1) <> m.chunks - 1 \
             OR (NOT m.wire AND coalesce(sum(octet_length(c.data)), 0) <> m.size) \
             OR (m.wire AND (coalesce(sum(octet_length(c.data)), 0) NOT BETWEEN m.size \
                             AND 2 * m.size \
                 OR coalesce(max(octet_length(c.data)) FILTER (WHERE c.seq = m.chunks - 1), \
                             0) >= 131072)) \
         ORDER BY m.id LIMIT 20",
    )?;
    let uids = pg.psql(
        db,
        "SELECT format('account %s has UID %s %s times', account_id, uid, count(*)) \
         FROM messages GROUP BY account_id, uid HAVING count(*) > 1 LIMIT 20",
    )?;
    Ok(chunks
        .lines()
        .chain(uids.lines())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The process id in a lock holder (`pop3d@HOST:PID#SESSION`).
fn holder_pid(holder: &str) -> Option<u32> {
    let (_, rest) = holder.split_once('@')?;
    let (_, rest) = rest.rsplit_once(':')?;
    let (pid, _) = rest.split_once('#')?;
    pid.parse().ok()
}

/// The cluster as [`Servers`] of the fault rounds.
pub struct Rounds<'a> {
    env: &'a mut ClusterEnv,
    disruption: Option<Disruption>,
}

impl Servers for Rounds<'_> {
    fn ensure(&mut self) -> Result<Vec<SocketAddr>, String> {
        self.env.ensure()
    }

    fn pid(&mut self, i: usize) -> Option<u32> {
        self.env.nodes[i].pid()
    }

    fn kill9(&mut self, i: usize) {
        self.env.nodes[i].kill9();
    }

    fn wait_exit(&mut self, i: usize, limit: Duration) {
        if let Some(p) = self.env.nodes[i].process.as_mut() {
            p.wait_exit(limit);
        }
    }

    fn disrupt(&mut self, i: usize, _: &mut Rng) -> Result<String, String> {
        match self.disruption {
            None => Err("rounds without a disruption were asked for one".into()),
            Some(Disruption::Postgres) => {
                let t = Instant::now();
                self.env.pg.restart()?;
                Ok(format!(
                    "PostgreSQL restarted in {:.1} s",
                    t.elapsed().as_secs_f64()
                ))
            }
            Some(Disruption::Rolling) => self.env.rolling_restart(i),
        }
    }

    fn describe(&mut self, i: usize) -> String {
        let node = &mut self.env.nodes[i];
        let status = node.process.as_mut().and_then(Pop3d::exit_status);
        format!(
            "node {} start {}, exit status {status:?}, log {}",
            node.id,
            node.starts,
            node.log().display()
        )
    }

    fn check(&mut self) -> Result<(), String> {
        self.env.check()
    }

    fn finish(&mut self) -> Vec<String> {
        self.env.finish()
    }
}

/// A free loopback port below the ephemeral range (so that no outgoing connection takes it
/// while its node is down), not one of `taken`.
pub fn free_port(rng: &mut Rng, taken: &[SocketAddr]) -> Result<SocketAddr, String> {
    for _ in 0..200 {
        let port = 20_000 + rng.below(12_000) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !taken.contains(&addr) && TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err("no free loopback port found in 200 tries".into())
}

#[cfg(test)]
mod tests {
    use super::{holder_pid, message_problems};

    /// The check finds a missing chunk, a size that is not the chunks' sum, an empty message
    /// and a UID twice (the store's own constraint on UIDs dropped here, to plant one), and
    /// nothing in whole messages; in wire form, stored octets under the size or a last chunk
    /// that is a full one, and nothing in a whole one longer than its size by its dots.
    /// Skipped, with a reason, without PostgreSQL.
    #[test]
    fn message_check_finds_broken_messages() {
        let pg = match testbed::pg::Cluster::start() {
            Ok(Some(pg)) => pg,
            Ok(None) => {
                eprintln!("skipped: PostgreSQL is not installed");
                return;
            }
            Err(e) => panic!("PostgreSQL: {e}"),
        };
        pg.create_database("check").expect("database");
        let sql = |q: &str| pg.psql("check", q).expect(q);
        sql(
            "CREATE TABLE messages (id bigint PRIMARY KEY, account_id bigint NOT NULL, \
             uid text NOT NULL, size bigint NOT NULL, chunks bigint NOT NULL, \
             wire boolean NOT NULL DEFAULT false)",
        );
        sql(
            "CREATE TABLE chunks (message_id bigint NOT NULL, seq bigint NOT NULL, \
             data bytea NOT NULL, PRIMARY KEY (message_id, seq))",
        );
        // 1 whole (two chunks), 2 a chunk short, 3 sizes disagree, 4 empty, 5 a UID of 1's.
        sql(
            "INSERT INTO messages VALUES (1, 7, 'a', 5, 2), (2, 7, 'b', 5, 2), \
             (3, 7, 'c', 9, 1), (4, 7, 'd', 0, 0), (5, 7, 'a', 1, 1)",
        );
        sql(
            "INSERT INTO chunks VALUES (1, 0, 'abc'), (1, 1, 'de'), (2, 0, 'abcde'), \
             (3, 0, 'abc'), (5, 0, 'x')",
        );
        // In wire form: 6 whole (a stuffed dot), 7 short of its size, 8 ending in a full chunk.
        sql(
            "INSERT INTO messages VALUES (6, 8, 'f', 3, 1, true), (7, 8, 'g', 9, 1, true), \
             (8, 8, 'h', 131072, 1, true)",
        );
        sql("INSERT INTO chunks VALUES (6, 0, '..ab'), (7, 0, 'abc'), \
             (8, 0, decode(repeat('78', 131072), 'hex'))");
        let found = message_problems(&pg, "check").expect("check");
        let has = |what: &str| found.iter().any(|f| f.starts_with(what));
        assert!(has("message 2:"), "{found:?}");
        assert!(has("message 3:"), "{found:?}");
        assert!(has("message 4:"), "{found:?}");
        assert!(has("account 7 has UID a 2 times"), "{found:?}");
        assert!(!has("message 1:") && !has("message 5:"), "{found:?}");
        assert!(
            has("message 7:") && has("message 8:") && !has("message 6:"),
            "{found:?}"
        );
        assert_eq!(found.len(), 6, "{found:?}");
    }

    #[test]
    fn holder_pids() {
        assert_eq!(holder_pid("pop3d@mx1:1234#7"), Some(1234));
        assert_eq!(holder_pid("pop3d@mx1.example.org:1#0"), Some(1));
        assert_eq!(holder_pid("pop3d@mx1:12a#7"), None);
        assert_eq!(holder_pid("pop3d mx1 12"), None);
        assert_eq!(holder_pid(""), None);
    }
}
