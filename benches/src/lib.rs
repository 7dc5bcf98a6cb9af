//! Benchmark support: generators of realistic regtest chains, through a node (`chaingen`) or
//! straight into block files (`blockgen`), and a wallet's request mix (`wallet_mix`).

pub mod blockgen;
pub mod chaingen;
pub mod wallet_mix;

/// The node the bench tools talk to.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// host:port of the node's RPC.
    #[arg(long)]
    pub rpc_addr: String,
    /// The node's RPC cookie file.
    #[arg(long)]
    pub cookie: std::path::PathBuf,
}

impl NodeArgs {
    pub fn rpc(&self) -> blkindex_shared::rpc::Rpc {
        blkindex_shared::rpc::Rpc::new(
            &self.rpc_addr,
            blkindex_shared::rpc::Auth::Cookie(self.cookie.clone()),
        )
    }
}
