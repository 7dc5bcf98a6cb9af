//! Benchmark support: a generator of realistic regtest chains.

pub mod chaingen;
