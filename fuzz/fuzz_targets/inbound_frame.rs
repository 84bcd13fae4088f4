//! Inbound sync frames: the input is a flag byte and length-prefixed frames, run through
//! what a sync connection does with them (see `epicenter_server::fuzzing::inbound_frames`).

#![no_main]

use epicenter_server::fuzzing::{inbound_frames_from_bytes, let_yrs_panics_unwind, Tolerate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The server catches the panics yrs's decoders raise on bad input (debug builds).
    let_yrs_panics_unwind();
    // Known problems are tolerated so the fuzzer looks past them; use `Tolerate::NOTHING`
    // to check a fix.
    inbound_frames_from_bytes(data, Tolerate::KNOWN);
});
