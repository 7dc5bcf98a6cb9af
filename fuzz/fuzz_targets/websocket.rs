#![no_main]
// The server's parsing files, compiled here as they are (the server crate links RocksDB).
#![allow(dead_code)]

#[path = "../../server/src/call.rs"]
mod call;
#[path = "../../server/src/fuzzing.rs"]
mod fuzzing;
#[path = "../../server/src/protocol.rs"]
mod protocol;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::websocket(data));
