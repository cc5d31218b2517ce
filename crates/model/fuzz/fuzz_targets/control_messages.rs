#![no_main]
//! Control-protocol frames from the network (DESIGN.md section 6): parsing
//! never panics, and whatever parses survives a round trip unchanged.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = postern_model::protocol::fuzz_one(data);
});
