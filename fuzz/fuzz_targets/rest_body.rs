//! REST write bodies: the input is a sequence of requests (method, table and id bytes, a
//! length, the body), run through what the POST/PUT/PATCH handlers do (see
//! `epicenter_server::fuzzing::rest_requests`).

#![no_main]

use epicenter_server::fuzzing::rest_requests_from_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rest_requests_from_bytes(data);
});
