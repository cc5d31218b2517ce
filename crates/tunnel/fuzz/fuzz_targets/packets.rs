#![no_main]
//! Raw packets into the client and the gateway (docs/architecture.md, security
//! model).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern_tunnel::fuzzing::fuzz_one(data);
});
