//! 1.7's `blockchain.outpoint.*`: whether an output exists and who spends it
//! (`status::outpoint_status`), once or as a subscription.

use std::sync::Arc;

use bitcoin::OutPoint;

use super::*;
use crate::status::outpoint_status;

/// `blockchain.outpoint.subscribe`: the status, and changes to it from now on.
pub async fn subscribe(state: &Arc<State>, s: &mut Session, op: OutPoint) -> Reply {
    let status = status(state, op).await?;
    s.outpoints.insert(op, status.clone());
    Ok(status)
}

/// `blockchain.outpoint.get_status`.
pub async fn status(state: &Arc<State>, op: OutPoint) -> Reply {
    let st = state.clone();
    Ok(state.read(move |i, m| outpoint_status(st.scripts(), i, m, &op)).await?)
}
