//! Any datagram into the STUN/ChannelData parsers and the relay and client
//! cores: `cargo fuzz run turn_datagram crates/turn/fuzz/seeds` from
//! crates/turn.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    postern_turn::fuzzing::fuzz_one(data);
});
