//! This server as a node of a cluster: a heartbeat in the store's node table every
//! `NodeConfig::heartbeat`, with the number of sessions, and the state an operator set there
//! read back. While the node is draining, logins are refused with `-ERR [SYS/TEMP]` (after the
//! credentials were checked, see `session`) and the sessions already logged in go on to
//! finish.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use store::NodeState;
use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::reply::blocking;
use crate::{NodeConfig, Shared};

/// The shortest time between heartbeats, whatever the configuration says.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// Sends a heartbeat every `node.heartbeat`, forever (the caller aborts the task).
pub(crate) async fn heartbeat_forever(
    shared: Arc<Shared>,
    node: NodeConfig,
    slots: Arc<Semaphore>,
    max: usize,
) {
    let mut every = tokio::time::interval(node.heartbeat.max(MIN_HEARTBEAT));
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        heartbeat(&shared, &node, &slots, max).await;
    }
}

/// One heartbeat: records the node and its sessions (connections being served, from the
/// connection slots in use) and takes on the state the store returns. A failed heartbeat
/// keeps the state known before.
pub(crate) async fn heartbeat(shared: &Shared, node: &NodeConfig, slots: &Semaphore, max: usize) {
    let sessions = max.saturating_sub(slots.available_permits()) as u64;
    let store = shared.store.clone();
    let (id, address) = (node.id.clone(), node.advertise.clone());
    let state = match blocking(move || store.node_heartbeat(&id, &address, sessions)).await {
        Ok(state) => state,
        Err(e) => {
            warn!(node = %node.id, error = %e, "node heartbeat failed");
            return;
        }
    };
    let draining = state == NodeState::Draining;
    if shared.draining.swap(draining, Ordering::Relaxed) != draining {
        if draining {
            info!(node = %node.id, sessions, "node draining: new logins are refused");
        } else {
            info!(node = %node.id, "node up: logins are taken again");
        }
    }
}
