//! nginx's `stream` proxy in front of a node, with and without the PROXY protocol.

use std::net::SocketAddr;

use testbed::nginx::Dist;

use crate::cluster::{free_port, nginx, ClusterEnv};
use crate::harness::{self, try_login, Rng};

/// nginx serves: a `stream` proxy in front of node 1 carries a whole POP3 session (greeting,
/// login, STAT, QUIT); and a `stream` proxy with `proxy_protocol on` in front of its backend
/// listener does too, and node 1 logs the session under the
/// client's own address from the PROXY header, not nginx's.
pub fn nginx_stream(
    env: &ClusterEnv,
    dist: &Dist,
    violations: &mut Vec<String>,
) -> Result<(), String> {
    let (user, pass) = ("viastream", "stream pw");
    env.add_user(user, pass)?;
    env.deliver(user, 1, 400)?;
    let mut rng = Rng::new(harness::clock_seed());
    let mut used: Vec<SocketAddr> = env.nodes.iter().map(|n| n.addr).collect();
    used.extend(env.nodes.iter().map(|n| n.proxy_addr));
    let front = free_port(&mut rng, &used)?;
    used.push(front);
    let front_proxied = free_port(&mut rng, &used)?;
    let node = &env.nodes[0];
    let conf = format!(
        "stream {{\n  server {{\n    listen {front};\n    proxy_pass {};\n  }}\n  \
         server {{\n    listen {front_proxied};\n    proxy_pass {};\n    \
         proxy_protocol on;\n  }}\n}}\n",
        node.addr, node.proxy_addr
    );
    let session = |addr: SocketAddr| -> Result<SocketAddr, String> {
        let (mut c, reply) = try_login(addr, user, pass)?;
        if !reply.starts_with("+OK") {
            return Err(format!("PASS answered {reply:?}"));
        }
        let stat = c.ok("STAT").map_err(|e| e.to_string())?;
        if !stat.starts_with("+OK 1 ") {
            return Err(format!("STAT answered {stat:?}, one message expected"));
        }
        let local = c.local_addr().map_err(|e| e.to_string())?;
        c.ok("QUIT").map_err(|e| e.to_string())?;
        Ok(local)
    };
    let mut nginx = nginx::start(dist, &env.root.join("nginx-stream"), &conf)?;
    let mut found = Vec::new();
    if let Err(e) = session(front) {
        found.push(format!("nginx stream proxy to node 1: {e}"));
    }
    match session(front_proxied) {
        Ok(client) => {
            let log = std::fs::read_to_string(node.log()).unwrap_or_default();
            if log.contains(&format!("peer={client} ")) {
                eprintln!(
                    "xtask cluster-test: nginx with proxy_protocol on: node 1 logged the \
                     session as the client's {client}"
                );
            } else {
                found.push(format!(
                    "nginx stream proxy with proxy_protocol on: node 1's log ({}) has no \
                     session of the client's address {client}",
                    node.log().display()
                ));
            }
        }
        Err(e) => found.push(format!(
            "nginx stream proxy with proxy_protocol on to node 1: {e}"
        )),
    }
    nginx.stop();
    if !found.is_empty() {
        found.push(format!("nginx log:\n{}", nginx.error_log()));
    }
    violations.extend(found);
    Ok(())
}
