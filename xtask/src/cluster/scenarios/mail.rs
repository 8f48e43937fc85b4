//! The cluster behind nginx's mail proxy: the scenarios of `cargo xtask cluster-test` that
//! need nginx in front of the nodes.
//!
//! Every node gets a proxied listener trusting loopback (nginx's address here), the cluster
//! secret and a one-second heartbeat; node 1 also serves the `auth_http` endpoint. nginx runs
//! the `mail` block that `pop3d --print-nginx-config` prints for that configuration, and a
//! `stream` block (an L4 balancer with PROXY protocol) in front of node 1's proxied listener.
//! Then:
//!
//! - every login method through nginx reaches a node and sees the user's mail: USER/PASS,
//!   APOP, SASL PLAIN, LOGIN and CRAM-MD5 (mpop, GNU SASL), wrong passwords get `-ERR [AUTH]`;
//! - SCRAM-SHA-256, which nginx's mail proxy cannot carry, works through the stream proxy;
//! - a user always lands on the same node; draining a node, killing it (its heartbeat stops)
//!   and bringing it back moves only that node's users; a login through nginx is served by
//!   the node the endpoint named;
//! - `[IN-USE]` across nodes: a maildrop open directly on one node is refused through nginx
//!   with the node's own `-ERR [IN-USE]`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use testbed::nginx::Dist;

use crate::cluster::{free_port, nginx, ClusterEnv};
use crate::harness::{try_login, Rng};

/// Users of the routing checks.
const USERS: usize = 30;
/// Heartbeat of the nodes in seconds; a node is dead after three missed.
const HEARTBEAT: u64 = 1;

/// The node flags and the nginx configuration of the scenarios.
struct Front {
    /// nginx's mail listener.
    mail: SocketAddr,
    /// nginx's stream listener (to node 1's proxied listener, PROXY protocol on).
    stream: SocketAddr,
    auth_http: SocketAddr,
    /// The `X-Pop3d-Key` value.
    key: String,
    /// Each node's proxied listener, by node index.
    proxied: Vec<SocketAddr>,
}

/// Runs the scenarios on a database of their own, the nodes started with the cluster flags;
/// their own flags are theirs again afterwards, for the scenarios after these.
pub fn run(env: &mut ClusterEnv, dist: &Dist, violations: &mut Vec<String>) -> Result<(), String> {
    let own: Vec<Vec<String>> = env.nodes.iter().map(|n| n.extra.clone()).collect();
    let result = behind_nginx(env, dist, violations);
    for (node, extra) in env.nodes.iter_mut().zip(own) {
        node.extra = extra;
    }
    result
}

fn behind_nginx(
    env: &mut ClusterEnv,
    dist: &Dist,
    violations: &mut Vec<String>,
) -> Result<(), String> {
    let mut rng = Rng::new(crate::harness::clock_seed());
    let secret = env.root.join("cluster.key");
    std::fs::write(
        &secret,
        format!("{:032x}{:032x}\n", rng.next_u64(), rng.next_u64()),
    )
    .map_err(|e| format!("{}: {e}", secret.display()))?;
    let proxied: Vec<SocketAddr> = env.nodes.iter().map(|n| n.proxy_addr).collect();
    let mut used: Vec<SocketAddr> = env.nodes.iter().map(|n| n.addr).collect();
    used.extend(&proxied);
    let auth_http = free_port(&mut rng, &used)?;
    used.push(auth_http);
    let mail = free_port(&mut rng, &used)?;
    used.push(mail);
    let stream = free_port(&mut rng, &used)?;
    for (i, node) in env.nodes.iter_mut().enumerate() {
        node.extra = cluster_flags(&secret, proxied[i]);
        if i == 0 {
            node.extra
                .extend(["--auth-http".to_owned(), auth_http.to_string()]);
        }
    }
    env.fresh_database("nginxmail")?;
    // The nginx configuration as pop3d prints it for node 1's configuration.
    let mail_conf = testbed::nginx::mail_block(&env.bins.pop3d, &env.nodes[0].extra, mail)?;
    let key = mail_conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("auth_http_header X-Pop3d-Key \""))
        .and_then(|rest| rest.strip_suffix("\";"))
        .ok_or_else(|| format!("no endpoint key in the printed configuration:\n{mail_conf}"))?
        .to_owned();
    let conf = format!(
        "{mail_conf}\nstream {{\n  server {{\n    listen {stream};\n    proxy_pass {};\n    \
         proxy_protocol on;\n  }}\n}}\n",
        proxied[0]
    );
    let front = Front {
        mail,
        stream,
        auth_http,
        key,
        proxied,
    };
    for i in 0..USERS {
        env.add_user(&user(i), &password(i))?;
        env.deliver(&user(i), i as u64 + 1, 300 + i)?;
    }
    env.popadm_ok(
        &[
            "user",
            "add",
            "legacy@example.org",
            "--password-stdin",
            "--legacy-auth",
        ],
        b"old secret\n",
    )?;
    env.deliver("legacy@example.org", 1000, 500)?;
    wait_for_nodes(&front, env.nodes.len())?;

    let mut nginx = nginx::start(dist, &env.root.join("nginx-mail"), &conf)?;
    let before = violations.len();
    let t = Instant::now();
    methods(&front, violations);
    println!(
        "xtask cluster-test: nginx login methods {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    routing(env, &front, violations)?;
    println!(
        "xtask cluster-test: nginx routing {:.1} s",
        t.elapsed().as_secs_f64()
    );
    in_use(env, &front, violations)?;
    nginx.stop();
    if violations.len() > before {
        violations.push(format!("nginx error log:\n{}", nginx.error_log()));
    }
    Ok(())
}

fn user(i: usize) -> String {
    format!("u{i:02}@example.org")
}

fn password(i: usize) -> String {
    format!("password of user {i}")
}

/// A node's cluster flags ([`testbed::nginx::node_flags`], whose `--auth-http-cleartext
/// always` lets this test's clients log in through nginx without STLS), APOP and CRAM-MD5
/// on (`--legacy-auth`: the endpoint refuses them otherwise).
fn cluster_flags(secret: &std::path::Path, proxied: SocketAddr) -> Vec<String> {
    let mut flags = testbed::nginx::node_flags(proxied, secret, HEARTBEAT);
    flags.push("--legacy-auth".into());
    flags
}

/// One request to the endpoint, as nginx makes it; the response's headers (names lower-case).
fn ask(
    front: &Front,
    user: &str,
    pass: &str,
    client: &str,
) -> Result<BTreeMap<String, String>, String> {
    let req = format!(
        "GET /auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\nAuth-User: {user}\r\n\
         Auth-Pass: {}\r\nAuth-Protocol: pop3\r\nAuth-Login-Attempt: 1\r\nClient-IP: {client}\r\n\
         X-Pop3d-Key: {}\r\n\r\n",
        pass.replace('%', "%25").replace(' ', "%20"),
        front.key
    );
    let mut s = TcpStream::connect_timeout(&front.auth_http, Duration::from_secs(5))
        .map_err(|e| format!("auth_http: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes())
        .map_err(|e| format!("auth_http: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("auth_http: {e}"))?;
    Ok(out
        .split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect())
}

/// The node index the endpoint sends `user` to, or the status it answered instead.
fn home(front: &Front, i: usize) -> Result<Result<usize, String>, String> {
    let h = ask(front, &user(i), &password(i), "192.0.2.1")?;
    if h.get("auth-status").map(String::as_str) != Some("OK") {
        return Ok(Err(format!("{h:?}")));
    }
    let port: u16 = h
        .get("auth-port")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no Auth-Port in {h:?}"))?;
    match front.proxied.iter().position(|a| a.port() == port) {
        Some(n) => Ok(Ok(n)),
        None => Err(format!("Auth-Port {port} is no node's")),
    }
}

/// Every user's node, as the endpoint answers now.
fn homes(front: &Front) -> Result<Vec<Result<usize, String>>, String> {
    (0..USERS).map(|i| home(front, i)).collect()
}

/// Waits (at most 30 s) until the endpoint sends users to all `n` nodes.
fn wait_for_nodes(front: &Front, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: std::collections::BTreeSet<usize> =
            homes(front)?.into_iter().filter_map(Result::ok).collect();
        if seen.len() == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "after 30 s the endpoint uses nodes {seen:?} of {n}"
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits (at most `limit`) until `homes` satisfies `done`; the last answer either way.
fn homes_until(
    front: &Front,
    limit: Duration,
    done: impl Fn(&[Result<usize, String>]) -> bool,
) -> Result<(Vec<Result<usize, String>>, bool), String> {
    let deadline = Instant::now() + limit;
    loop {
        let h = homes(front)?;
        if done(&h) {
            return Ok((h, true));
        }
        if Instant::now() > deadline {
            return Ok((h, false));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// mpop (GNU SASL) through nginx: log in with `auth`, STAT, QUIT.
fn mpop(addr: SocketAddr, auth: &str, user: &str, pass: &str) -> Result<String, String> {
    let out = testbed::mpop_status("127.0.0.1", addr.port(), auth, user, Some(pass))
        .output()
        .map_err(|e| format!("running mpop: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("mpop --auth={auth} {user}: {}: {text}", out.status))
    }
}

/// Every login method through nginx (and SCRAM through the stream proxy).
fn methods(front: &Front, violations: &mut Vec<String>) {
    let have_mpop = Command::new("mpop").arg("--version").output().is_ok();
    if !have_mpop {
        violations.push("mpop is not installed (cargo xtask deps installs it)".into());
        return;
    }
    let cases = [
        ("user", user(1), password(1), front.mail),
        ("plain", user(2), password(2), front.mail),
        ("login", user(3), password(3), front.mail),
        (
            "apop",
            "legacy@example.org".to_owned(),
            "old secret".to_owned(),
            front.mail,
        ),
        (
            "cram-md5",
            "legacy@example.org".to_owned(),
            "old secret".to_owned(),
            front.mail,
        ),
        ("scram-sha-256", user(4), password(4), front.stream),
        ("plain", user(5), password(5), front.stream),
    ];
    for (auth, user, pass, addr) in cases {
        let via = if addr == front.stream {
            "stream"
        } else {
            "mail"
        };
        match mpop(addr, auth, &user, &pass) {
            // mpop reports the maildrop it saw: one message for each of these users.
            Ok(text) if text.contains("1 message") => {}
            Ok(text) => violations.push(format!("{auth} via nginx {via}: unexpected {text:?}")),
            Err(e) => violations.push(format!("{auth} via nginx {via}: {e}")),
        }
    }
    // A wrong password: nginx passes the endpoint's [AUTH] status on (RFC 3206 section 4).
    match try_login(front.mail, &user(6), "wrong") {
        Ok((_, reply)) if reply.starts_with("-ERR [AUTH]") => {}
        Ok((_, reply)) => violations.push(format!("wrong password via nginx: {reply:?}")),
        Err(e) => violations.push(format!("wrong password via nginx: {e}")),
    }
}

/// Which node served `user`'s last login: the node whose current log names it last.
fn served_by(env: &ClusterEnv, user: &str) -> Option<usize> {
    let needle = format!("user={user}");
    env.nodes.iter().position(|n| {
        std::fs::read_to_string(n.log())
            .map(|log| {
                log.lines()
                    .any(|l| l.contains(&needle) && l.contains("logged in"))
            })
            .unwrap_or(false)
    })
}

/// Stickiness and movement: stable homes; a drained, a dead, a returning node moves only
/// its own users; a login through nginx is served where the endpoint says.
fn routing(
    env: &mut ClusterEnv,
    front: &Front,
    violations: &mut Vec<String>,
) -> Result<(), String> {
    let first = homes(front)?;
    if first.iter().any(Result::is_err) {
        violations.push(format!("endpoint refused users: {first:?}"));
        return Ok(());
    }
    let again = homes(front)?;
    if again != first {
        violations.push(format!(
            "homes changed without a node change: {first:?} vs {again:?}"
        ));
    }
    // Through nginx: the node the endpoint named serves the session.
    for i in [7, 8, 9, 10, 11, 12] {
        match try_login(front.mail, &user(i), &password(i)) {
            Ok((mut c, reply)) if reply.starts_with("+OK") => {
                let _ = c.ok("QUIT");
                let want = first[i].clone().ok();
                let got = served_by(env, &user(i));
                if want != got {
                    violations.push(format!(
                        "{}: endpoint said node {want:?}, served by {got:?}",
                        user(i)
                    ));
                }
            }
            Ok((_, reply)) => violations.push(format!("login {} via nginx: {reply:?}", user(i))),
            Err(e) => violations.push(format!("login {} via nginx: {e}", user(i))),
        }
    }
    let moved_only =
        |name: &str, gone: usize, now: &[Result<usize, String>], violations: &mut Vec<String>| {
            for (i, (was, is)) in first.iter().zip(now).enumerate() {
                let (Ok(was), Ok(is)) = (was, is) else {
                    violations.push(format!("{name}: {} refused: {is:?}", user(i)));
                    continue;
                };
                if *was == gone && *is == gone {
                    violations.push(format!(
                        "{name}: {} still sent to node {}",
                        user(i),
                        gone + 1
                    ));
                }
                if *was != gone && is != was {
                    violations.push(format!(
                        "{name}: {} moved from live node {} to {}",
                        user(i),
                        was + 1,
                        is + 1
                    ));
                }
            }
        };
    let back_home = |h: &[Result<usize, String>]| h == first.as_slice();
    // Drained: no new logins for node 2's users there; everyone else stays.
    env.popadm_ok(&["node", "drain", &env.nodes[1].id.clone()], b"")?;
    let (now, _) = homes_until(front, Duration::from_secs(5), |h| {
        h.iter().all(|r| r.as_ref().is_ok_and(|n| *n != 1))
    })?;
    moved_only("drain node 2", 1, &now, violations);
    env.popadm_ok(&["node", "up", &env.nodes[1].id.clone()], b"")?;
    let (_, ok) = homes_until(front, Duration::from_secs(5), back_home)?;
    if !ok {
        violations.push("after `node up` node 2's users did not come back".into());
    }
    // Dead: node 3 killed; after three missed heartbeats only its users move.
    env.nodes[2].kill9();
    let (now, _) = homes_until(front, Duration::from_secs(10 * HEARTBEAT + 5), |h| {
        h.iter().all(|r| r.as_ref().is_ok_and(|n| *n != 2))
    })?;
    moved_only("node 3 killed", 2, &now, violations);
    let store = env.url();
    let bins = env.bins.clone();
    env.nodes[2].start(&bins, &store)?;
    let (_, ok) = homes_until(front, Duration::from_secs(10 * HEARTBEAT + 5), back_home)?;
    if !ok {
        violations.push("after node 3 restarted its users did not come back".into());
    }
    Ok(())
}

/// `[IN-USE]` across nodes: open directly on a node that is not the user's home, then log in
/// through nginx (which goes to the home node).
fn in_use(env: &mut ClusterEnv, front: &Front, violations: &mut Vec<String>) -> Result<(), String> {
    let i = 13;
    let Ok(home) = home(front, i)? else {
        violations.push(format!("{} has no home node", user(i)));
        return Ok(());
    };
    let other = (home + 1) % env.nodes.len();
    let (mut direct, reply) = try_login(env.nodes[other].addr, &user(i), &password(i))?;
    if !reply.starts_with("+OK") {
        violations.push(format!("direct login on node {}: {reply:?}", other + 1));
        return Ok(());
    }
    match try_login(front.mail, &user(i), &password(i)) {
        Ok((_, reply)) if reply.starts_with("-ERR [IN-USE]") => {}
        Ok((_, reply)) => violations.push(format!(
            "login through nginx while open on node {}: {reply:?}, -ERR [IN-USE] expected",
            other + 1
        )),
        Err(e) => violations.push(format!("login through nginx while open elsewhere: {e}")),
    }
    let _ = direct.ok("QUIT");
    match try_login(front.mail, &user(i), &password(i)) {
        Ok((mut c, reply)) if reply.starts_with("+OK") => {
            let _ = c.ok("QUIT");
        }
        Ok((_, reply)) => violations.push(format!("login through nginx after QUIT: {reply:?}")),
        Err(e) => violations.push(format!("login through nginx after QUIT: {e}")),
    }
    Ok(())
}
