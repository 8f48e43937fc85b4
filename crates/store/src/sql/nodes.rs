//! The node table (`popadm node`), for both backends. Heartbeat times are the backend's
//! ([`Sql::HEARTBEAT_NOW`]).

use super::rows::{node_info, node_select};
use super::Sql;
use crate::common::{node_changed, node_state, to_i64};
use crate::{NodeInfo, NodeState, Result, StoreError};

/// Records a heartbeat of node `id`; its state is left as an operator set it, and returned.
pub fn heartbeat<S: Sql>(tx: &mut S, id: &str, address: &str, sessions: u64) -> Result<NodeState> {
    let sql = format!(
        "INSERT INTO nodes (id, address, sessions, heartbeat_at) VALUES ($1, $2, $3, {})
         ON CONFLICT (id) DO UPDATE SET address = excluded.address,
             sessions = excluded.sessions, heartbeat_at = excluded.heartbeat_at
         RETURNING state",
        S::HEARTBEAT_NOW
    );
    let state: String = tx
        .value(&sql, &[&id, &address, &to_i64(sessions)])?
        .ok_or_else(|| StoreError::Backend("a heartbeat returned no state".into()))?;
    node_state(&state)
}

pub fn list<S: Sql>(tx: &mut S) -> Result<Vec<NodeInfo>> {
    tx.rows(&node_select::<S>(), &[], |row| node_info(row))
}

pub fn set_state<S: Sql>(tx: &mut S, id: &str, state: NodeState) -> Result<()> {
    let n = tx.execute(
        "UPDATE nodes SET state = $2 WHERE id = $1",
        &[&id, &state.as_str()],
    )?;
    node_changed(id, n, state.as_str())
}

pub fn remove<S: Sql>(tx: &mut S, id: &str) -> Result<()> {
    let n = tx.execute("DELETE FROM nodes WHERE id = $1", &[&id])?;
    node_changed(id, n, "removed")
}
