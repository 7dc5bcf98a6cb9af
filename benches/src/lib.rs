//! Benchmark support: a generator of realistic regtest chains, and a wallet's request mix.

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
