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
    if let Some(message) = message::decode(data) {
        roundtrip::check(message);
    }
});
