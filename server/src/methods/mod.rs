//! The Electrum methods, for the negotiated protocol version (1.0 to 1.7): a request parsed into
//! a `call::Call` (what `protocol::METHODS` has in that version, its arguments checked), then one
//! exhaustive match on it; the handlers shape their replies by version where the protocol changed them.
//! Confirmed data comes from the index, unconfirmed data from the tracked mempool, fees and
//! broadcast from the node; without one (`--no-node`), the calls that need it are refused
//! before they start (`Call::needs_node`). A client that never sends `server.version` is served as 1.4.2.

mod fees;
mod headers;
mod outpoints;
mod scripts;
mod server_info;
mod silent;
mod transactions;
mod verbose;

use std::collections::HashMap;
use std::sync::Arc;

use bitcoin::{OutPoint, Txid};
use serde_json::{json, Value};

use blkindex_shared::ScriptHash;

pub use crate::call::HeaderForm;
use crate::call::{Call, Named};
use crate::protocol::{
    push_txid, version_string, ServerError, Version, PROTOCOL_MAX, PROTOCOL_MIN, UNNEGOTIATED,
};
use crate::state::State;
use crate::status::OutpointState;

pub use headers::header_json;
pub use server_info::features;

pub type Reply = Result<Value, ServerError>;

/// A method's result: a JSON value, or JSON text written directly (long lists, where a tree of
/// values would cost more than the data).
pub enum Answer {
    Value(Value),
    Text(String),
}

impl Answer {
    pub fn write_to(&self, out: &mut String) {
        match self {
            Answer::Value(v) => out.push_str(&v.to_string()),
            Answer::Text(t) => out.push_str(t),
        }
    }
}

/// A subscribed script: the status last sent, and the names it was subscribed under (the
/// notification method and its first parameter: a script hash or an address).
#[derive(Default)]
pub struct ScriptSub {
    pub status: Option<String>,
    pub names: Vec<(&'static str, String)>,
}

/// What a session remembers between requests.
#[derive(Default)]
pub struct Session {
    pub version: Option<Version>,
    /// Subscribed to new tips, and in which shape.
    pub headers: Option<HeaderForm>,
    /// Subscribed to `blockchain.numblocks.subscribe` (1.0).
    pub numblocks: bool,
    pub scripts: HashMap<ScriptHash, ScriptSub>,
    /// Subscribed outpoints (1.7) and the state last sent.
    pub outpoints: HashMap<OutPoint, OutpointState>,
    /// Set when the session must end after this reply, with why.
    pub close: Option<&'static str>,
    /// Most subscriptions (scripts and outpoints together): `--max-subscriptions`.
    pub max_subscriptions: usize,
    /// The client's address (`server.add_peer` verifies that the announced host resolves to it).
    pub peer_addr: Option<std::net::SocketAddr>,
    /// `server.add_peer` calls so far.
    pub add_peer_calls: u32,
    /// The client's name from `server.version` (cut to `MAX_CLIENT_NAME` bytes).
    pub client: Option<String>,
    /// Silent-payment subscriptions, each with its scan (which holds the wallet's keys).
    pub silent: crate::silent::Subs,
    /// Requests answered, and the time spent answering them.
    pub requests: u64,
    pub busy: std::time::Duration,
}

/// Longest client name kept: it is only shown to the operator.
pub const MAX_CLIENT_NAME: usize = 64;

impl Session {
    /// The version this session speaks.
    pub fn version(&self) -> Version {
        self.version.unwrap_or(UNNEGOTIATED)
    }

    /// Refuses a new subscription past `max_subscriptions`.
    fn room_for_subscription(&self) -> Result<(), ServerError> {
        let n = self.scripts.len() + self.outpoints.len();
        match n < self.max_subscriptions {
            true => Ok(()),
            false => Err(ServerError::ExcessiveUsage(format!(
                "too many subscriptions: at most {} per session",
                self.max_subscriptions
            ))),
        }
    }
}

pub async fn call(
    state: &Arc<State>,
    s: &mut Session,
    method: &str,
    params: &Value,
) -> Result<Answer, ServerError> {
    let v = s.version();
    let call = Call::parse(method, params, v, state.settings().net)?;
    if call.needs_node() && !state.has_node() {
        return Err(ServerError::NoNode);
    }
    let value = match call {
        Call::ServerVersion { client_name, min, max } => server_info::version(s, client_name, min, max),
        Call::ServerBanner => Ok(json!(state.settings().info.banner)),
        Call::ServerDonationAddress => Ok(json!(state.settings().info.donation_address)),
        Call::ServerPeersSubscribe => Ok(state.peers().list()),
        Call::ServerAddPeer { features } => Ok(server_info::add_peer(state, s, features.as_ref())),
        Call::ServerFeatures => {
            let (genesis, hosts) =
                (state.settings().net.genesis_hash().to_string(), &state.settings().info.hosts);
            Ok(features(&genesis, hosts, v, state.tweaks().start().is_some()))
        }
        Call::ServerPing { pong_len: None } => Ok(Value::Null),
        // `Call::parse` has bounded the length (`MAX_PONG`) before anything is allocated.
        Call::ServerPing { pong_len: Some(len) } => Ok(json!({"data": "0".repeat(len as usize)})),

        Call::HeadersSubscribe { form } => headers::subscribe(state, s, form),
        Call::NumblocksSubscribe => headers::numblocks_subscribe(state, s),
        Call::BlockGetHeader { height } => headers::get_header(state, height).await,
        Call::BlockGetChunk { start } => headers::get_chunk(state, start).await,
        Call::BlockHeader { height, cp_height } => headers::block_header(state, height, cp_height).await,
        Call::BlockHeaders { start, count, cp_height } => {
            headers::block_headers(state, start, count, cp_height, v).await
        }

        Call::GetHistory(script) => return scripts::history(state, v, &script).await,
        Call::GetMempool(script) => return scripts::mempool(state, v, &script).await,
        Call::GetBalance(script) => scripts::balance(state, &script).await,
        Call::ListUnspent(script) => return scripts::unspent(state, v, &script).await,
        Call::Subscribe(script) => scripts::subscribe(state, s, script).await,
        Call::Unsubscribe(script) => Ok(scripts::unsubscribe(s, &script)),
        Call::UtxoGetAddress { outpoint } => scripts::utxo_address(state, outpoint).await,

        Call::OutpointSubscribe { outpoint } => outpoints::subscribe(state, s, outpoint).await,
        Call::OutpointUnsubscribe { outpoint } => Ok(json!(s.outpoints.remove(&outpoint).is_some())),
        Call::OutpointGetStatus { outpoint } => outpoints::status(state, outpoint).await,

        Call::TransactionGet { txid, verbose } => transactions::get(state, txid, verbose).await,
        Call::TransactionGetMerkle { txid, height } => transactions::get_merkle(state, txid, height).await,
        Call::TransactionIdFromPos { height, pos, merkle } => {
            transactions::id_from_pos(state, height, pos, merkle).await
        }
        Call::TransactionBroadcast { raw_tx } => transactions::broadcast(state, raw_tx, v).await,
        Call::TransactionBroadcastPackage { raw_txs, verbose } => {
            transactions::broadcast_package(state, raw_txs, verbose).await
        }
        Call::TransactionTestMempoolAccept { raw_txs } => {
            transactions::test_mempool_accept(state, raw_txs).await
        }

        Call::EstimateFee { target, mode } => fees::estimate(state, target, mode).await,
        Call::RelayFee => fees::relay_fee(state).await,
        Call::FeeHistogram => fees::histogram(state).await,
        Call::MempoolInfo => fees::mempool_info(state).await,
        Call::MempoolRecent => fees::recent(state).await,

        Call::SilentSubscribe { keys, start, labels } => {
            return silent::subscribe(state, s, keys, start, labels).await
        }
        Call::SilentUnsubscribe { keys } => silent::unsubscribe(state, s, keys),
        Call::SilentTweaks { start, count } => return silent::tweaks(state, start, count).await,
    };
    value.map(Answer::Value)
}
