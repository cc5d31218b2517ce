#![no_main]
//! Control-protocol frames from the network (docs/architecture.md, security
//! model): parsing never panics, and whatever parses survives a round trip
//! unchanged.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = postern_model::protocol::fuzz_one(data);
});
