//! The indexer's integration tests, one binary (RocksDB is linked once): the bulk pass and the
//! follower, each against real regtest nodes.

mod bulk;
mod faults;
mod follow;
mod long_lists;
mod silent;
