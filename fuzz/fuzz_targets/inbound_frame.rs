//! Inbound sync frames: the input is a flag byte and length-prefixed frames, run through
//! what a sync connection does with them (see `epicenter_server::fuzzing::inbound_frames`).

#![no_main]

use epicenter_server::fuzzing::{inbound_frames_from_bytes, let_yrs_panics_unwind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The server catches the panics yrs's decoders raise on bad input (debug builds).
    let_yrs_panics_unwind();
    inbound_frames_from_bytes(data);
});
