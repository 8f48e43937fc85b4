//! Cluster nodes: heartbeats, the operator's state, age, and leaving.

use std::time::Duration;

use super::{Fixture, TestStore};
use crate::{NodeInfo, NodeState, StoreError};

pub(super) fn nodes_heartbeat_keep_the_operators_state_age_and_go(f: &dyn Fixture) {
    let store = f.open();
    assert!(store.list_nodes().unwrap().is_empty());
    assert_eq!(
        store.node_heartbeat("node-b", "10.0.0.2:110", 3).unwrap(),
        NodeState::Up
    );
    assert_eq!(
        store.node_heartbeat("node-a", "10.0.0.1:110", 0).unwrap(),
        NodeState::Up
    );
    let listed = store.list_nodes().unwrap();
    let ids: Vec<&str> = listed.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["node-a", "node-b"]);
    assert_eq!(
        (
            listed[1].address.as_str(),
            listed[1].state,
            listed[1].sessions
        ),
        ("10.0.0.2:110", NodeState::Up, 3)
    );

    // An operator drains node-b: its heartbeats (from this store or another process's, as
    // after a restart) keep that state and report it back, while address and count follow.
    store.set_node_state("node-b", NodeState::Draining).unwrap();
    let restarted = f.open();
    assert_eq!(
        restarted
            .node_heartbeat("node-b", "10.0.0.9:1110", 7)
            .unwrap(),
        NodeState::Draining
    );
    let b = node(&*store, "node-b");
    assert_eq!(
        (b.address.as_str(), b.state, b.sessions),
        ("10.0.0.9:1110", NodeState::Draining, 7)
    );
    assert_eq!(node(&*store, "node-a").state, NodeState::Up);

    // The age grows by the clock and a heartbeat resets it.
    std::thread::sleep(Duration::from_millis(300));
    let old = node(&*store, "node-a").heartbeat_age;
    assert!(old >= Duration::from_millis(250), "{old:?}");
    assert!(old < Duration::from_secs(30), "{old:?}");
    store.node_heartbeat("node-a", "10.0.0.1:110", 1).unwrap();
    let fresh = node(&*store, "node-a").heartbeat_age;
    assert!(fresh < old, "{fresh:?} {old:?}");

    store.set_node_state("node-b", NodeState::Up).unwrap();
    assert_eq!(
        store.node_heartbeat("node-b", "10.0.0.2:110", 0).unwrap(),
        NodeState::Up
    );

    // Unknown nodes are errors, and nothing is created by them.
    assert!(matches!(
        store.set_node_state("node-x", NodeState::Draining),
        Err(StoreError::NoSuchNode(id)) if id == "node-x"
    ));
    assert!(matches!(
        store.remove_node("node-x"),
        Err(StoreError::NoSuchNode(_))
    ));
    assert_eq!(store.list_nodes().unwrap().len(), 2);

    // Removed, a node is gone until its next heartbeat, which brings it back Up.
    store.set_node_state("node-a", NodeState::Draining).unwrap();
    store.remove_node("node-a").unwrap();
    let ids: Vec<String> = store
        .list_nodes()
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, ["node-b"]);
    assert!(matches!(
        store.remove_node("node-a"),
        Err(StoreError::NoSuchNode(_))
    ));
    assert_eq!(
        store.node_heartbeat("node-a", "10.0.0.1:110", 0).unwrap(),
        NodeState::Up
    );
}

fn node(store: &dyn TestStore, id: &str) -> NodeInfo {
    let nodes = store.list_nodes().unwrap();
    nodes.into_iter().find(|n| n.id == id).unwrap()
}
