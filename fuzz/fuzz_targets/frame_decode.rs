//! Fuzzes the frame decoder: any bytes as a client's stream, decoded at once
//! and in pieces (they must agree), then re-encoded and decoded again (the
//! round trip must give the same events). See `shardcast_wire::fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast_wire::fuzzing::frame_decode(data));
