//! 1.7's `blockchain.outpoint.*`: whether an output exists and who spends it
//! (`status::outpoint_status`), once or as a subscription.

use std::sync::Arc;

use bitcoin::OutPoint;

use super::*;
use crate::status::outpoint_status;

/// `blockchain.outpoint.subscribe`: the status, and changes to it from now on.
pub async fn subscribe(state: &Arc<State>, s: &mut Session, op: OutPoint) -> Reply {
    if !s.outpoints.contains_key(&op) {
        s.room_for_subscription()?;
    }
    let st = state_of(state, op).await?;
    let status = st.status.clone();
    s.outpoints.insert(op, st);
    Ok(status)
}

/// `blockchain.outpoint.get_status`.
pub async fn status(state: &Arc<State>, op: OutPoint) -> Reply {
    Ok(state_of(state, op).await?.status)
}

async fn state_of(state: &Arc<State>, op: OutPoint) -> anyhow::Result<OutpointState> {
    let st = state.clone();
    state.read(move |i, m| outpoint_status(st.scripts(), i, m, &op)).await
}
