//! The server's integration tests, one binary (RocksDB is linked once): real regtest nodes, the
//! indexer and server binaries, Debian's Electrum wallet and the `electrum-client` crate.

mod common;

mod admin;
mod attacks;
mod batches;
mod big_mempool;
mod electrum;
mod electrum_wallet;
mod every_method;
mod haproxy;
mod in_process;
mod limits;
mod no_node;
mod node_faults;
mod peers;
mod reorg_notifications;
mod silent_payments;
mod tls_material;
mod transports;
mod versions;
