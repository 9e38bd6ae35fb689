//! Fuzzes HTTP request-head parsing and routing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast::fuzzing::http_request(data));
