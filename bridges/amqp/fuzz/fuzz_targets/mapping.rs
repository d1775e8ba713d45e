//! Arbitrary bytes as a delivery's payload: decoded as the message a sender link receives, mapped to
//! the record it becomes, and that record (as the log would store it) mapped back to the message a
//! receiver link sends. Nothing may panic, and what the mapping promises must hold (see `roundtrip`).

#![no_main]

use courier_amqp_fuzz::{known_bugs, message, roundtrip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Bugs already reported (see `known_bugs`): skipped so that fuzzing goes on past them.
    if known_bugs::in_encoded(data) {
        return;
    }
    // What the gateway's frame guard refuses never reaches the mapping (and serde_amqp misreads
    // some of it into allocations of gigabytes, bug 2).
    if !courier_amqp::mapping::passes_frame_checks(data) {
        return;
    }
    if let Some(message) = message::decode(data) {
        roundtrip::check(message);
    }
});
