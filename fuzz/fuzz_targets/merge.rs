#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blkindex_shared::fuzzing::merge(data));
