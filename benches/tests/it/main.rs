//! The benches crate's integration tests, one binary: the block-file generator end to end.

mod gen_blocks;
