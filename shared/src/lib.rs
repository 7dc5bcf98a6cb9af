//! What the indexer and the server share: the network's constants, bitcoind's block files and how to
//! read them, the index schema and its RocksDB store, the queries the index answers, configuration
//! and the node's RPC client.
//!
//! Data flow: `blkfile` (framing, xor) → `parse` (zero-copy blocks) + `undo` (rev records) →
//! `schema` (rows and keys) → `bucket` (values) → `store` (RocksDB) → `query` (answers).
//! `store`, `chain` and `query` are the `store` feature (default); `fuzzing` holds the fuzz targets' bodies.

pub mod blkfile;
pub mod bucket;
#[cfg(feature = "store")]
pub mod chain;
pub mod config;
pub mod fuzzing;
pub mod hashes;
pub mod merkle;
pub mod network;
pub mod nodelock;
pub mod parse;
#[cfg(feature = "store")]
pub mod query;
pub mod rpc;
pub mod schema;
pub mod service;
pub mod silent;
#[cfg(feature = "store")]
pub mod store;
pub mod undo;
pub mod varint;
pub mod zmq;

pub use hashes::ScriptHash;
pub use network::Net;
