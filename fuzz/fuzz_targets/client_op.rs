//! Fuzzes the JSON envelope parser (WebSocket ops, HTTP publish bodies) and
//! what the server encodes from what it parsed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast::fuzzing::client_op(data));
