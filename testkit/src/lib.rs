//! Real bitcoind (Bitcoin Knots) regtest nodes on 127.0.0.1 with free ports, and chains built
//! through them, for blkindex's integration tests and benchmarks.

pub mod chain;
pub mod expect;
pub mod node;
pub mod proxy;
pub mod verify;

pub use node::{Node, NodeOptions};
