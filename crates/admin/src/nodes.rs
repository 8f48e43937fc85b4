//! `popadm node list|drain|up|remove`: the node table of pop3d processes started with
//! `--node-id`, for rolling restarts. A node reads its state back at each heartbeat, so a drain
//! takes effect within one heartbeat interval.

use std::time::Duration;

use anyhow::Context as _;
use store::{NodeInfo, NodeState, Store};

use crate::output::print;
use crate::{open_existing, Location, NodeCommand};

/// Heartbeats a node may miss before `node list` calls it dead.
pub const MISSED_HEARTBEATS: u32 = 3;

pub fn run(location: &Location, cmd: NodeCommand) -> anyhow::Result<()> {
    let store = open_existing(location)?;
    print(&execute(&*store, cmd)?)
}

/// Runs `cmd` on `store` and returns what to print.
fn execute(store: &dyn Store, cmd: NodeCommand) -> anyhow::Result<String> {
    match cmd {
        NodeCommand::List { heartbeat } => {
            let nodes = store.list_nodes().context("listing nodes")?;
            Ok(list_text(&nodes, Duration::from_secs(heartbeat)))
        }
        NodeCommand::Drain { id } => set_state(
            store,
            &id,
            NodeState::Draining,
            "no new logins from its next heartbeat on; its sessions finish",
        ),
        NodeCommand::Up { id } => set_state(
            store,
            &id,
            NodeState::Up,
            "takes logins from its next heartbeat on",
        ),
        NodeCommand::Remove { id } => {
            store
                .remove_node(&id)
                .with_context(|| format!("removing node {id}"))?;
            Ok(format!(
                "{id}: removed (a node still running adds itself again at its next heartbeat)\n"
            ))
        }
    }
}

/// `node drain|up`: sets the state and says what follows.
fn set_state(
    store: &dyn Store,
    id: &str,
    state: NodeState,
    effect: &str,
) -> anyhow::Result<String> {
    store
        .set_node_state(id, state)
        .with_context(|| format!("setting node {id} {state}"))?;
    Ok(format!("{id}: {state}: {effect}\n"))
}

/// `node list`: a header line, then one tab-separated line per node: id, address, state,
/// sessions, seconds since the last heartbeat (one decimal), and `live` or `dead` (dead after
/// [`MISSED_HEARTBEATS`] heartbeat intervals without one).
fn list_text(nodes: &[NodeInfo], heartbeat: Duration) -> String {
    let mut out = String::from("NODE\tADDRESS\tSTATE\tSESSIONS\tHEARTBEAT-AGE\tSTATUS\n");
    for n in nodes {
        let status = if n.heartbeat_age <= heartbeat * MISSED_HEARTBEATS {
            "live"
        } else {
            "dead"
        };
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{:.1}s\t{status}\n",
            n.id,
            n.address,
            n.state,
            n.sessions,
            n.heartbeat_age.as_secs_f64()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{admin_code, EX_NOUSER};
    use store::SqliteStore;
    use testbed::TempDir;

    fn node(id: &str, state: NodeState, age_ms: u64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            address: format!("{id}.example.org:1100"),
            state,
            sessions: 4,
            heartbeat_age: Duration::from_millis(age_ms),
        }
    }

    #[test]
    fn list_judges_live_and_dead_by_three_heartbeats() {
        let nodes = [
            node("pop1", NodeState::Up, 1_234),
            node("pop2", NodeState::Draining, 15_000),
            node("pop3", NodeState::Up, 15_001),
        ];
        assert_eq!(
            list_text(&nodes, Duration::from_secs(5)),
            "NODE\tADDRESS\tSTATE\tSESSIONS\tHEARTBEAT-AGE\tSTATUS\n\
             pop1\tpop1.example.org:1100\tup\t4\t1.2s\tlive\n\
             pop2\tpop2.example.org:1100\tdraining\t4\t15.0s\tlive\n\
             pop3\tpop3.example.org:1100\tup\t4\t15.0s\tdead\n"
        );
        // A longer interval makes the same age live.
        assert!(list_text(&nodes[2..], Duration::from_secs(10)).ends_with("\tlive\n"));
        assert_eq!(
            list_text(&[], Duration::from_secs(5)),
            "NODE\tADDRESS\tSTATE\tSESSIONS\tHEARTBEAT-AGE\tSTATUS\n"
        );
    }

    #[test]
    fn drain_up_remove_and_unknown_ids() {
        let dir = TempDir::new("nodes");
        let store = SqliteStore::open(dir.path()).expect("store");
        store
            .node_heartbeat("pop1", "10.0.0.1:1100", 2)
            .expect("heartbeat");
        let id = || "pop1".to_string();
        let out = execute(&store, NodeCommand::Drain { id: id() }).expect("drain");
        assert!(out.starts_with("pop1: draining"), "{out}");
        let listed = execute(&store, NodeCommand::List { heartbeat: 5 }).expect("list");
        let row: Vec<&str> = listed.lines().nth(1).expect("a row").split('\t').collect();
        assert_eq!(
            [row[0], row[1], row[2], row[3], row[5]],
            ["pop1", "10.0.0.1:1100", "draining", "2", "live"],
            "{listed}"
        );
        // The state the node reads at its next heartbeat.
        let state = || {
            store
                .node_heartbeat("pop1", "10.0.0.1:1100", 0)
                .expect("hb")
        };
        assert_eq!(state(), NodeState::Draining);
        execute(&store, NodeCommand::Up { id: id() }).expect("up");
        assert_eq!(state(), NodeState::Up);
        execute(&store, NodeCommand::Remove { id: id() }).expect("remove");
        assert!(store.list_nodes().expect("list").is_empty());
        // Unknown ids: an error naming the node, exit code 67 like an unknown account.
        for cmd in [
            NodeCommand::Drain { id: id() },
            NodeCommand::Up { id: id() },
            NodeCommand::Remove { id: id() },
        ] {
            let e = execute(&store, cmd).expect_err("unknown node");
            assert!(format!("{e:#}").contains("no such node: pop1"), "{e:#}");
            assert_eq!(admin_code(&e), EX_NOUSER);
        }
    }
}
