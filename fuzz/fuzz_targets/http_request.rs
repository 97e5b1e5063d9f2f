//! Request heads and chunked bodies: `weir_proxy::http::fuzz_request` holds the invariants
//! (no panic, consumed ≤ input, prefix consistency, re-serialised heads parse the same).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weir_proxy::http::fuzz_request(data);
});
